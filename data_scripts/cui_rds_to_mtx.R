# Convert one Immune Dictionary Seurat object (ligands-seurat-<cell type>.RDS) to plain files:
# matrix.mtx (genes x cells raw counts), genes.txt, barcodes.txt and metadata.csv (meta.data).
# Usage: Rscript cui_rds_to_mtx.R input.RDS output_dir
# Needs R with the Matrix and SeuratObject packages; called by prepare_cui.py.
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 2L) stop("usage: Rscript cui_rds_to_mtx.R input.RDS output_dir")
if (!requireNamespace("SeuratObject", quietly = TRUE)) {
  stop("the R package SeuratObject is needed to read the Immune Dictionary .RDS files")
}
suppressPackageStartupMessages(library(Matrix))
obj <- readRDS(args[[1]])
if (!inherits(obj, "Seurat")) stop(args[[1]], " is not a Seurat object")
obj <- tryCatch(suppressMessages(SeuratObject::UpdateSeuratObject(obj)), error = function(e) obj)
exports <- getNamespaceExports("SeuratObject")
counts <- if ("LayerData" %in% exports) {
  SeuratObject::LayerData(obj, assay = "RNA", layer = "counts")
} else {
  SeuratObject::GetAssayData(obj, assay = "RNA", slot = "counts")
}
counts <- as(counts, "CsparseMatrix")
if (ncol(counts) == 0L || nrow(counts) == 0L) stop(args[[1]], ": the RNA counts are empty")
out <- args[[2]]
dir.create(out, recursive = TRUE, showWarnings = FALSE)
invisible(Matrix::writeMM(counts, file.path(out, "matrix.mtx")))
writeLines(rownames(counts), file.path(out, "genes.txt"))
writeLines(colnames(counts), file.path(out, "barcodes.txt"))
meta <- obj@meta.data[colnames(counts), , drop = FALSE]
utils::write.csv(meta, file.path(out, "metadata.csv"))
cat(sprintf("%s: %d genes x %d cells\n", basename(args[[1]]), nrow(counts), ncol(counts)))
