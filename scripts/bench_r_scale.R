# Real-size data from R (issue 11): does sccbgm_fit() complete on a Seurat object of 30,000 genes
# x 20,000 cells, and does sccbgm_edit() of 100,000 cells return an HDF5-backed DelayedArray
# without R ever holding the dense edit?
#
#   R_LIBS=.rlib SCCBGM_PYTHON=.venv/bin/python Rscript scripts/bench_r_scale.R [out.md]
#
# Sizes by environment variable (defaults = the issue's): FIT_GENES=30000 FIT_CELLS=20000
# EDIT_GENES=3000 EDIT_CELLS=100000 EPOCHS=3 DENSITY=0.05 (fraction of non-zero counts, a
# typical raw 10x matrix), PARTS=fit,edit (either or both). The data are simulated in R as sparse counts (dgCMatrix): two
# conditions shifting 200 genes, three cell types shifting 300 genes each.
#
# Reported: wall time and CPU time of the process (all threads: on a shared machine the wall time
# is mostly waiting); R's own peak heap growth during the step ("max used" of gc(), reset
# before the step, minus what was in use then: where a densified matrix would show up) next to the size the dense matrix
# would have in R; and the peak resident memory of the whole process (VmHWM: R + the embedded
# Python, which does the numerics and holds the data once more as a scipy CSR matrix).

suppressPackageStartupMessages({
  library(sccbgm)
  library(Matrix)
})

env_num <- function(name, default) as.numeric(Sys.getenv(name, default))
fit_genes <- env_num("FIT_GENES", 30000)
fit_cells <- env_num("FIT_CELLS", 20000)
edit_genes <- env_num("EDIT_GENES", 3000)
edit_cells <- env_num("EDIT_CELLS", 100000)
epochs <- env_num("EPOCHS", 3)
density <- env_num("DENSITY", 0.05)
parts <- strsplit(Sys.getenv("PARTS", "fit,edit"), ",")[[1]]
out_md <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(out_md)) out_md <- NULL
stopifnot(isTRUE(sccbgm_available()), requireNamespace("HDF5Array", quietly = TRUE))
invisible(reticulate::import("torch")) # start-up cost outside the timings

gb <- function(bytes) sprintf("%.2f GB", bytes / 1e9)
vm_hwm <- function() {
  line <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) * 1024
}
# R heap in bytes: "used" (columns 2) or "max used" since gc(reset = TRUE) (column 6), in Mb
r_heap <- function(g, column) sum(g[, column]) * 2^20
step <- function(label, expr) {
  base <- r_heap(gc(reset = TRUE), 2L)
  t0 <- proc.time()
  value <- force(expr)
  t1 <- proc.time()
  list(label = label, value = value, seconds = t1[["elapsed"]] - t0[["elapsed"]],
       cpu = sum(t1[c("user.self", "sys.self")]) - sum(t0[c("user.self", "sys.self")]),
       r_peak = r_heap(gc(), 6L) - base, process_peak = vm_hwm())
}

# Sparse counts, genes x cells: per cell ~ density * genes draws of a gene (with gene weights
# shifted by condition and cell type), counts = how often each gene was drawn.
simulate_counts <- function(n_genes, n_cells, density, seed) {
  set.seed(seed)
  stim <- factor(sample(c("ctrl", "STIM"), n_cells, replace = TRUE), levels = c("ctrl", "STIM"))
  type <- factor(sample(paste0("type", 1:3), n_cells, replace = TRUE))
  base <- rlnorm(n_genes, 0, 1.2)
  per_cell <- max(1L, round(density * n_genes * 1.1))
  i <- integer(0)
  j <- integer(0)
  groups <- split(seq_len(n_cells), interaction(stim, type, drop = TRUE))
  for (g in names(groups)) {
    cells <- groups[[g]]
    w <- base
    if (startsWith(g, "STIM")) w[1:200] <- w[1:200] * 4
    t <- as.integer(sub(".*type", "", g))
    shifted <- 200L + (t - 1L) * 300L + seq_len(300L)
    w[shifted[shifted <= n_genes]] <- w[shifted[shifted <= n_genes]] * 3
    i <- c(i, sample.int(n_genes, per_cell * length(cells), replace = TRUE, prob = w))
    j <- c(j, rep(cells, each = per_cell))
  }
  m <- sparseMatrix(i = i, j = j, x = 1, dims = c(n_genes, n_cells),
                    dimnames = list(paste0("Gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells))))
  list(counts = m, stim = stim, type = type)
}

lines <- c("# sccbgm from R at real size", "",
           sprintf("%s; R %s, SeuratObject %s, HDF5Array %s; %d CPU cores, load average %s at start.",
                   format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"), getRversion(),
                   utils::packageVersion("SeuratObject"), utils::packageVersion("HDF5Array"),
                   parallel::detectCores(), paste(readLines("/proc/loadavg"), collapse = "")), "")
report <- function(s, note = "") {
  row <- sprintf("| %s | %.0f s | %.0f s | %s | %s | %s |", s$label, s$seconds, s$cpu, gb(s$r_peak),
                 gb(s$process_peak), note)
  cat(row, "\n")
  lines <<- c(lines, row)
}
lines <- c(lines, "| step | wall | CPU (all threads) | R peak heap growth | process peak RSS so far | note |",
           "|---|---|---|---|---|---|")

# 1. fit on a Seurat object of fit_genes x fit_cells
if ("fit" %in% parts) {
sim <- simulate_counts(fit_genes, fit_cells, density, seed = 1)
obj <- SeuratObject::CreateSeuratObject(counts = sim$counts)
obj$stim <- sim$stim
obj$cell_type <- sim$type
rm(sim)
nnz <- length(SeuratObject::GetAssayData(obj, slot = "counts")@x)
s <- step(sprintf("sccbgm_fit, Seurat %s genes x %s cells (%s non-zeros), %d epochs",
                  formatC(fit_genes, format = "d", big.mark = ","), formatC(fit_cells, format = "d", big.mark = ","),
                  formatC(nnz, format = "d", big.mark = ","), epochs),
          sccbgm_fit(obj, c("stim", "cell_type"), seed = 0, epochs = epochs, progress = FALSE))
report(s, sprintf("dense counts would be %s in R", gb(8 * fit_genes * fit_cells)))
stopifnot(inherits(s$value, "sccbgm_model"), length(s$value$genes) == fit_genes)
rm(obj, s)
invisible(gc())
}

# 2. edit of edit_cells cells (SingleCellExperiment: Seurat 4 assays cannot be HDF5-backed)
if ("edit" %in% parts) {
sim <- simulate_counts(edit_genes, edit_cells, density * 2, seed = 2)
sce <- SingleCellExperiment::SingleCellExperiment(list(counts = sim$counts))
sce$stim <- sim$stim
sce$cell_type <- sim$type
rm(sim)
train <- seq_len(min(20000, edit_cells))
model <- sccbgm_fit(sce[, train], c("stim", "cell_type"), seed = 0, epochs = epochs, progress = FALSE)
ctrl <- which(sce$stim == "ctrl")
# the default (backed = NULL) decides at real size; smaller test runs ask for it
backed <- if (edit_cells * edit_genes > getOption("sccbgm.backed_threshold", 5e7)) NULL else TRUE
s <- step(sprintf("sccbgm_edit, SCE %s cells x %s genes -> backed assay",
                  formatC(edit_cells, format = "d", big.mark = ","), formatC(edit_genes, format = "d", big.mark = ",")),
          sccbgm_edit(sce, model, set = list(stim = "STIM"), backed = backed))
edited <- s$value
m <- SummarizedExperiment::assay(edited, "sccbgm", withDimnames = FALSE)
stopifnot(methods::is(m, "DelayedMatrix"), methods::is(DelayedArray::seed(m), "HDF5ArraySeed"),
          identical(dim(m), c(as.integer(edit_genes), as.integer(edit_cells))))
dense_bytes <- 8 * edit_genes * edit_cells
report(s, sprintf("%s (%s seed, file %s); the dense edit would be %s in R",
                  class(m)[1], class(DelayedArray::seed(m))[1],
                  gb(file.size(S4Vectors::metadata(edited)$sccbgm$file)), gb(dense_bytes)))
if (dense_bytes > 1e9) stopifnot(s$r_peak < dense_bytes / 2) # R never held the dense edit
# the backed values are the in-memory edit's (spot check on 1,000 control cells)
some <- ctrl[seq_len(min(1000, length(ctrl)))]
small <- sccbgm_edit(sce[, some], model, set = list(stim = "STIM"), backed = FALSE)
diff <- max(abs(as.matrix(m[, some]) - SummarizedExperiment::assay(small, "sccbgm")))
lines <- c(lines, "", sprintf(paste0("Backed values vs an in-memory edit of %d of the cells: ",
                                    "max |difference| %.2g (float32 on disk)."), length(some), diff))
cat(tail(lines, 1), "\n")
stopifnot(diff < 1e-4)
}
if (!is.null(out_md)) writeLines(lines, out_md)
