# The explicit R <-> Python data movement (R/convert.R + python/sccbgm/bridge.py), path by path.

roundtrip_matrix <- function(m) {
  b <- bridge()
  py <- b$matrix_from_spec(.matrix_spec(m))
  back <- .matrix_from_spec(.r(b$matrix_to_spec(py)), rownames(m), colnames(m))
  list(py = py, back = back)
}

py_value <- function(x) reticulate::py_to_r(x)

test_that("dense double matrices cross transposed and come back identical", {
  skip_if_no_sccbgm()
  m <- matrix(c(0.5, 1, 2, 3.25, 4, 5), nrow = 2, dimnames = list(c("g1", "g2"), c("a", "b", "c")))
  rt <- roundtrip_matrix(m)
  expect_identical(py_value(rt$py$shape), list(3L, 2L))
  expect_identical(py_value(rt$py$dtype$name), "float64")
  # Python cell 1 (b), gene 0 (g1) is R's m["g1", "b"]
  expect_identical(py_value(rt$py[1L]$tolist()), unname(m[, "b"]))
  expect_identical(rt$back, m)
})

test_that("integer matrices stay integer (int32 in Python)", {
  skip_if_no_sccbgm()
  m <- matrix(c(0L, 5L, 7L, 1L, 2L, 3L), nrow = 3, dimnames = list(paste0("g", 1:3), c("x", "y")))
  rt <- roundtrip_matrix(m)
  expect_identical(py_value(rt$py$dtype$name), "int32")
  expect_identical(storage.mode(rt$back), "integer")
  expect_identical(rt$back, m)
})

test_that("integer matrices with NA become double (NaN in Python)", {
  skip_if_no_sccbgm()
  m <- matrix(c(1L, NA, 3L, 4L), 2)
  rt <- roundtrip_matrix(m)
  expect_identical(py_value(rt$py$dtype$name), "float64")
  expect_true(is.na(rt$back[2, 1]))
  expect_equal(rt$back[-2], c(1, 3, 4))
})

test_that("dgCMatrix crosses as CSR slots and comes back as the same dgCMatrix", {
  skip_if_no_sccbgm()
  set.seed(1)
  m <- Matrix::rsparsematrix(50, 30, 0.1, rand.x = function(n) as.double(rpois(n, 4) + 1))
  dimnames(m) <- list(paste0("gene", 1:50), paste0("cell", 1:30))
  rt <- roundtrip_matrix(m)
  sp <- reticulate::import("scipy.sparse", convert = FALSE)
  expect_true(py_value(sp$issparse(rt$py)))
  expect_identical(py_value(rt$py$format), "csr")
  expect_identical(py_value(rt$py$shape), list(30L, 50L))
  expect_identical(py_value(rt$py$nnz), length(m@x))
  # Python's (cell j, gene i) is R's m[i, j]
  dense <- py_value(rt$py$toarray())
  expect_identical(dense, t(unname(as.matrix(m))))
  expect_s4_class(rt$back, "dgCMatrix")
  expect_identical(rt$back, m)
  # an all-zero sparse matrix
  z <- Matrix::Matrix(0, 4, 3, sparse = TRUE)
  expect_equal(as.matrix(roundtrip_matrix(z)$back), matrix(0, 4, 3))
})

test_that("other sparse classes and logical matrices are coerced to double", {
  skip_if_no_sccbgm()
  m <- Matrix::sparseMatrix(i = c(1, 3), j = c(2, 2), x = c(TRUE, TRUE), dims = c(3, 2))
  rt <- roundtrip_matrix(m)
  expect_equal(as.matrix(rt$back), matrix(c(0, 0, 0, 1, 0, 1), 3))
  l <- matrix(c(TRUE, FALSE, TRUE, TRUE), 2)
  expect_identical(roundtrip_matrix(l)$back, l + 0)
})

test_that("data-frame columns keep types, factor levels (unused too) and NAs", {
  skip_if_no_sccbgm()
  df <- data.frame(
    f = factor(c("b", NA, "a", "b"), levels = c("b", "a", "never")),
    o = factor(c("lo", "hi", "hi", "lo"), levels = c("lo", "hi"), ordered = TRUE),
    s = c("x", NA, "NA", "\u00e9t\u00e9"),
    i = c(1L, NA, -3L, 2147483647L),
    d = c(0.5, NA, NaN, -Inf),
    l = c(TRUE, NA, FALSE, TRUE),
    l2 = c(TRUE, FALSE, FALSE, TRUE),
    i2 = 1:4,
    stringsAsFactors = FALSE, check.names = FALSE
  )
  df$d[3] <- 2 # NaN and NA are both "missing" in pandas; keep only NA here
  cells <- c("c1", "c2", "c\u00e43", "c 4")
  b <- bridge()
  pdf <- b$frame_from_spec(.frame_spec(df), .np_chr(cells))
  dtypes <- py_value(pdf$dtypes$astype("str")$tolist())
  expect_identical(dtypes, c("category", "category", "object", "Int32", "float64", "boolean",
                             "bool", "int32"))
  expect_identical(py_value(pdf$index$tolist()), cells)
  expect_identical(py_value(pdf[["f"]]$cat$categories$tolist()), c("b", "a", "never"))
  expect_true(py_value(pdf[["o"]]$cat$ordered))
  expect_identical(py_value(pdf$isna()$sum()$tolist()), c(1L, 0L, 1L, 1L, 1L, 1L, 0L, 0L))
  back <- .frame_from_spec(.r(b$frame_to_spec(pdf)), cells)
  expect_identical(back, `rownames<-`(df, cells))
})

test_that("unsupported columns are skipped with a warning, dates become character", {
  skip_if_no_sccbgm()
  df <- data.frame(d = as.Date(c("2024-01-01", NA)))
  df$m <- matrix(1:4, 2)
  expect_warning(spec <- .frame_spec(df), "not an atomic vector")
  pdf <- bridge()$frame_from_spec(spec, .np_chr(c("a", "b")))
  expect_identical(py_value(pdf$columns$tolist()), "d")
  expect_identical(.frame_from_spec(.r(bridge()$frame_to_spec(pdf)), c("a", "b"))$d,
                   c("2024-01-01", NA))
})

test_that("SingleCellExperiment -> AnnData -> SingleCellExperiment is loss-free", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()[1:20, 1:30]
  SummarizedExperiment::assay(sce, "logcounts") <- as.matrix(log1p(SummarizedExperiment::assay(sce, "counts")))
  SummarizedExperiment::assay(sce, "int") <- matrix(seq_len(600L), 20, 30, dimnames = dimnames(sce))
  SummarizedExperiment::rowData(sce)$symbol <- paste0("S", 1:20)
  SummarizedExperiment::rowData(sce)$len <- c(NA, 2:20)
  SingleCellExperiment::reducedDim(sce, "PCA") <- matrix(rnorm(60), 30, 2,
    dimnames = list(colnames(sce), c("PC1", "PC2")))
  adata <- sce_to_anndata(sce)
  expect_identical(py_value(adata$shape), list(30L, 20L))
  expect_identical(py_value(adata$obs_names$tolist()), colnames(sce))
  expect_identical(sort(py_value(reticulate::import_builtins(convert = FALSE)$list(adata$layers$keys()))),
                   c("int", "logcounts"))
  back <- anndata_to_sce(adata)
  expect_identical(SummarizedExperiment::assayNames(back), c("counts", "logcounts", "int"))
  for (a in SummarizedExperiment::assayNames(sce)) {
    expect_identical(SummarizedExperiment::assay(back, a), SummarizedExperiment::assay(sce, a))
  }
  expect_identical(SummarizedExperiment::colData(back), SummarizedExperiment::colData(sce))
  expect_identical(SummarizedExperiment::rowData(back), SummarizedExperiment::rowData(sce))
  expect_identical(SingleCellExperiment::reducedDims(back), SingleCellExperiment::reducedDims(sce))
  expect_identical(levels(back$stim), c("ctrl", "STIM", "unused"))
  expect_identical(dimnames(back), dimnames(sce))
})

test_that("Seurat -> AnnData -> Seurat keeps counts, data, meta.data and embeddings", {
  skip_if_no_sccbgm()
  obj <- SeuratObject::pbmc_small
  adata <- seurat_to_anndata(obj)
  expect_identical(py_value(adata$shape), list(80L, 230L))
  back <- anndata_to_seurat(adata)
  for (s in c("counts", "data")) {
    expect_identical(layer_data(back, s),
                     layer_data(obj, s))
  }
  expect_identical(back[[]], obj[[]])
  for (r in c("pca", "tsne")) {
    expect_identical(SeuratObject::Embeddings(back, r), SeuratObject::Embeddings(obj, r))
    expect_identical(SeuratObject::Key(back[[r]]), SeuratObject::Key(obj[[r]]))
  }
})

test_that("converters reject the wrong classes", {
  expect_error(sce_to_anndata(SeuratObject::pbmc_small), "must be a SingleCellExperiment")
  expect_error(seurat_to_anndata(matrix(1)), "must be a Seurat object")
  expect_error(anndata_to_sce(list()), "must be a Python AnnData")
})
