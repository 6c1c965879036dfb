# Shared helpers for the tests: the Python skip rule, tiny data sets and one cached model per
# data set (fits are the slow part: a few epochs of a small network).

# Skip only when the Python side is truly unavailable. When SCCBGM_PYTHON is set (as `make test`
# and CI do), a missing Python sccbgm is a failure, not a skip.
skip_if_no_sccbgm <- function() {
  ok <- sccbgm_available()
  if (isTRUE(ok)) return(invisible(TRUE))
  reason <- attr(ok, "reason")
  if (nzchar(Sys.getenv("SCCBGM_PYTHON"))) {
    testthat::fail(paste0("SCCBGM_PYTHON is set but Python sccbgm is unusable: ", reason))
  }
  testthat::skip(paste0("Python sccbgm not available: ", reason))
}

bridge <- function() reticulate::import("sccbgm.bridge", convert = FALSE)

# small network, few epochs: a fit takes a few seconds on 2 cores
fit_small <- function(object, concepts, ...) {
  sccbgm_fit(object, concepts, seed = 1, epochs = 4, hidden_dim = 32, latent_dim = 8,
             unknown_dim = 4, n_pcs = 10, batch_size = 64, progress = FALSE, ...)
}

.cache <- new.env(parent = emptyenv())

# 240 cells x 80 genes of integer counts, a categorical (with an unused level and NAs), a binary
# and a continuous concept; sparse counts.
tiny_sce <- function() {
  if (!is.null(.cache$sce)) return(.cache$sce)
  set.seed(42)
  n <- 240
  g <- 80
  stim <- factor(rep(c("ctrl", "STIM"), length.out = n), levels = c("ctrl", "STIM", "unused"))
  flag <- rep(c(0L, 1L), each = n / 2)
  dose <- round(runif(n), 3)
  base <- matrix(rexp(g, 0.5), g, n)
  effect <- outer(c(rep(3, 10), rep(1, g - 10)), ifelse(stim == "STIM", 1, 0.3))
  counts <- matrix(rpois(g * n, base * effect), g, n)
  dimnames(counts) <- list(paste0("Gene", seq_len(g)), paste0("cell", seq_len(n)))
  counts <- methods::as(counts, "CsparseMatrix")
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = counts))
  stim[c(3, 10)] <- NA
  sce$stim <- stim
  sce$flag <- flag
  sce$dose <- dose
  .cache$sce <- sce
  sce
}

tiny_seurat <- function() {
  if (!is.null(.cache$seurat)) return(.cache$seurat)
  obj <- SeuratObject::pbmc_small
  obj$stim <- factor(ifelse(obj$groups == "g1", "ctrl", "STIM"), levels = c("ctrl", "STIM"))
  obj$flag <- as.integer(obj$letter.idents == "A")
  .cache$seurat <- obj
  obj
}

sce_model <- function() {
  if (is.null(.cache$sce_model)) .cache$sce_model <- fit_small(tiny_sce(), c("stim", "flag", "dose"))
  .cache$sce_model
}

seurat_model <- function() {
  if (is.null(.cache$seurat_model)) .cache$seurat_model <- fit_small(tiny_seurat(), c("stim", "flag"))
  .cache$seurat_model
}
