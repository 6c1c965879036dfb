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

# A Seurat assay's layer (Seurat 5) / slot (Seurat 4), whichever this SeuratObject has.
layer_data <- function(object, layer, assay = NULL) {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    getExportedValue("SeuratObject", "LayerData")(object, assay = assay, layer = layer)
  } else {
    SeuratObject::GetAssayData(object, assay = assay, slot = layer)
  }
}

# Run R code in a fresh R process (a new Python can only start in a fresh process) with the
# environment `env` (name = value; NA unsets); sccbgm is loaded as this test run has it (the
# source tree under devtools / testthat::test_local, else the installed package).
run_fresh_r <- function(code, env = character()) {
  pkg_root <- normalizePath(testthat::test_path("..", ".."), mustWork = FALSE)
  dev <- requireNamespace("pkgload", quietly = TRUE) && pkgload::is_dev_package("sccbgm") &&
    file.exists(file.path(pkg_root, "DESCRIPTION"))
  load <- if (dev) sprintf("pkgload::load_all(%s, quiet = TRUE)", deparse(pkg_root)) else
    "suppressPackageStartupMessages(library(sccbgm))"
  script <- tempfile(fileext = ".R")
  on.exit(unlink(script))
  writeLines(c(load, code), script)
  unset <- names(env)[is.na(env)]
  set <- env[!is.na(env)]
  old <- Sys.getenv(c(names(env), "R_LIBS"), unset = NA)
  on.exit({
    for (nm in names(old)) if (is.na(old[[nm]])) Sys.unsetenv(nm) else
      do.call(Sys.setenv, stats::setNames(list(old[[nm]]), nm))
  }, add = TRUE)
  Sys.setenv(R_LIBS = paste(.libPaths(), collapse = .Platform$path.sep))
  if (length(set)) do.call(Sys.setenv, as.list(set))
  if (length(unset)) Sys.unsetenv(unset)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), c("--vanilla", script),
                                  stdout = TRUE, stderr = TRUE))
  structure(out, status = attr(out, "status") %||% 0L)
}

# small network, few epochs, one member (the default ensemble's assays are tested in
# test-uncertainty.R): a fit takes a few seconds on 2 cores
fit_small <- function(object, concepts, ..., n_members = 1L) {
  sccbgm_fit(object, concepts, seed = 1, epochs = 4, hidden_dim = 32, latent_dim = 8,
             unknown_dim = 4, n_pcs = 10, batch_size = 64, progress = FALSE,
             n_members = n_members, ...)
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
