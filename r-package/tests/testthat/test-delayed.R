# Real-size data from R: DelayedArray (HDF5Array) input crosses in blocks of cells; large edits
# come back as HDF5-backed DelayedArray assays.

hdf5_counts_sce <- function() {
  sce <- tiny_sce()
  counts <- SummarizedExperiment::assay(sce, "counts")
  path <- tempfile(fileext = ".h5")
  h5 <- HDF5Array::writeHDF5Array(as.matrix(counts), filepath = path, name = "counts",
                                  with.dimnames = TRUE)
  SummarizedExperiment::assay(sce, "counts", withDimnames = FALSE) <- h5
  sce
}

test_that("a DelayedArray crosses in blocks of cells and arrives exactly", {
  skip_if_no_sccbgm()
  skip_if_not_installed("HDF5Array")
  sce <- hdf5_counts_sce()
  m <- SummarizedExperiment::assay(sce, "counts")
  expect_s4_class(m, "DelayedMatrix")
  old <- DelayedArray::getAutoBlockSize()
  on.exit(suppressMessages(DelayedArray::setAutoBlockSize(old)))
  suppressMessages(DelayedArray::setAutoBlockSize(8 * 80 * 50)) # 50 cells of 80 genes per block
  spec <- sccbgm:::.matrix_spec(m * 1) # a delayed operation on the HDF5 seed
  expect_identical(spec$kind, "blocks")
  expect_length(spec$blocks, 5L) # 240 cells = 4 blocks of 50 + one of 40
  back <- reticulate::py_to_r(bridge()$matrix_to_spec(bridge()$matrix_from_spec(spec)))
  expect_identical(back$kind, "csr")
  dense <- as.matrix(SummarizedExperiment::assay(tiny_sce(), "counts"))
  rebuilt <- sccbgm:::.matrix_from_spec(back, rownames = rownames(dense), colnames = colnames(dense))
  expect_identical(as.matrix(rebuilt), dense * 1)
})

test_that("fit and edit on HDF5-backed counts equal those on the in-memory counts", {
  skip_if_no_sccbgm()
  skip_if_not_installed("HDF5Array")
  sce <- hdf5_counts_sce()
  model <- fit_small(sce, c("stim", "flag"))
  reference <- fit_small(tiny_sce(), c("stim", "flag"))
  a <- sccbgm_edit(sce, model, set = list(flag = 1), backed = FALSE)
  b <- sccbgm_edit(tiny_sce(), reference, set = list(flag = 1), backed = FALSE)
  expect_true(is.matrix(SummarizedExperiment::assay(a, "sccbgm")))
  expect_equal(SummarizedExperiment::assay(a, "sccbgm"), SummarizedExperiment::assay(b, "sccbgm"),
               tolerance = 1e-6)
})

test_that("a backed edit is an HDF5-backed DelayedArray equal to the in-memory edit", {
  skip_if_no_sccbgm()
  skip_if_not_installed("HDF5Array")
  sce <- tiny_sce()
  model <- sce_model()
  in_memory <- sccbgm_edit(sce, model, set = list(stim = "STIM"), backed = FALSE)
  out <- tempfile(fileext = ".h5ad")
  on.exit(unlink(out))
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"), out = out)
  m <- SummarizedExperiment::assay(edited, "sccbgm", withDimnames = FALSE)
  expect_s4_class(m, "DelayedMatrix")
  expect_identical(class(DelayedArray::seed(m))[1], "HDF5ArraySeed")
  expect_identical(normalizePath(DelayedArray::path(m)), normalizePath(out))
  expect_identical(dimnames(m), dimnames(sce))
  expect_identical(S4Vectors::metadata(edited)$sccbgm$file, normalizePath(out))
  # an ensemble's uncertainty layers are HDF5-backed too (the cpu preset fits 2 members)
  sd_assays <- grep("_edit_sd$", SummarizedExperiment::assayNames(edited), value = TRUE)
  expect_identical(sd_assays, grep("_edit_sd$", SummarizedExperiment::assayNames(in_memory), value = TRUE))
  for (a in sd_assays) {
    expect_s4_class(SummarizedExperiment::assay(edited, a, withDimnames = FALSE), "DelayedMatrix")
    expect_equal(as.matrix(SummarizedExperiment::assay(edited, a)),
                 SummarizedExperiment::assay(in_memory, a), tolerance = 1e-6)
  }
  # the file holds float32: equal to the float64 in-memory edit to float32 precision
  expect_equal(as.matrix(m), SummarizedExperiment::assay(in_memory, "sccbgm"), tolerance = 1e-6)
  expect_identical(SingleCellExperiment::reducedDim(edited, "sccbgm_concepts"),
                   SingleCellExperiment::reducedDim(in_memory, "sccbgm_concepts"))
  expect_identical(edited$sccbgm_stim, in_memory$sccbgm_stim)
  err <- expect_error(sccbgm_edit(sce, model, set = list(stim = "STIM"), out = out))
  expect_match(conditionMessage(err), "exists; remove it or choose another `out`")
  expect_error(sccbgm_edit(sce, model, set = list(stim = "STIM"), out = out, backed = FALSE),
               "cannot be combined")
})

test_that("above the size threshold the edit is backed by default", {
  skip_if_no_sccbgm()
  skip_if_not_installed("HDF5Array")
  sce <- tiny_sce()
  model <- sce_model()
  old <- options(sccbgm.backed_threshold = 80 * 100) # 240 cells x 80 genes is above
  on.exit(options(old))
  big <- sccbgm_edit(sce, model, set = list(flag = 1))
  expect_s4_class(SummarizedExperiment::assay(big, "sccbgm"), "DelayedMatrix")
  file <- S4Vectors::metadata(big)$sccbgm$file
  expect_true(startsWith(file, normalizePath(tempdir())) && file.exists(file))
  small <- sccbgm_edit(sce, model, set = list(flag = 1), cells = 1:50) # 50 x 80 is below
  expect_true(is.matrix(SummarizedExperiment::assay(small, "sccbgm")))
  expect_null(S4Vectors::metadata(small)$sccbgm$file)
})

test_that("Seurat: a backed edit needs SeuratObject 5; Seurat 4 says so and stays in memory", {
  skip_if_no_sccbgm()
  skip_if_not_installed("HDF5Array")
  obj <- tiny_seurat()
  model <- seurat_model()
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    edited <- sccbgm_edit(obj, model, set = list(flag = 1), backed = TRUE)
    m <- layer_data(edited, "data", assay = "sccbgm")
    expect_s4_class(m, "DelayedMatrix")
    expect_identical(dim(m), c(length(model$genes), ncol(obj)))
  } else {
    expect_error(sccbgm_edit(obj, model, set = list(flag = 1), backed = TRUE),
                 "Seurat 4 assays .* hold in-memory matrices only")
    old <- options(sccbgm.backed_threshold = 100)
    on.exit(options(old))
    expect_message(edited <- sccbgm_edit(obj, model, set = list(flag = 1)),
                   "is held in memory: Seurat 4 assays")
    expect_true(is.matrix(layer_data(edited, "data", assay = "sccbgm")))
  }
})
