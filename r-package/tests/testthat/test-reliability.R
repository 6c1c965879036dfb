# Reliability (issue 13): every bad input or odd object gives the right result or one clear R
# error condition (no Python traceback), and nothing ends the R session.

no_traceback <- function(err) {
  expect_no_match(conditionMessage(err), "Traceback|File \"")
  expect_length(strsplit(conditionMessage(err), "\n")[[1]], 1L)
}

test_that("dgTMatrix, dgRMatrix and DelayedArray assays give the dgCMatrix result", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  ref <- SummarizedExperiment::assay(sccbgm_edit(sce, model, set = list(stim = "STIM")), "sccbgm")
  counts <- SummarizedExperiment::assay(sce, "counts")
  as_assay <- list(
    dgTMatrix = function(m) methods::as(m, "TsparseMatrix"),
    dgRMatrix = function(m) methods::as(m, "RsparseMatrix"),
    dense = function(m) as.matrix(m)
  )
  if (requireNamespace("DelayedArray", quietly = TRUE)) {
    as_assay$DelayedArray <- function(m) DelayedArray::DelayedArray(m)
    as_assay$DelayedArray_dense <- function(m) DelayedArray::DelayedArray(as.matrix(m))
  }
  for (kind in names(as_assay)) {
    other <- sce
    SummarizedExperiment::assay(other, "counts", withDimnames = FALSE) <- as_assay[[kind]](counts)
    got <- SummarizedExperiment::assay(sccbgm_edit(other, model, set = list(stim = "STIM")), "sccbgm")
    expect_equal(as.matrix(got), as.matrix(ref), tolerance = 1e-6, info = kind)
  }
})

test_that("a Seurat object with several assays uses the active one, or the named one", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  counts <- layer_data(obj, "counts")
  alt <- counts[1:120, ]
  alt@x <- alt@x + 3  # other values, and not proportional (library-size normalisation)
  obj[["ALT"]] <- SeuratObject::CreateAssayObject(counts = alt)
  SeuratObject::DefaultAssay(obj) <- "ALT"
  model <- fit_small(obj, c("stim", "flag"))
  expect_identical(model$genes, rownames(alt))
  edited <- sccbgm_edit(obj, model, set = list(stim = "STIM"))
  expect_identical(SeuratObject::DefaultAssay(edited), "ALT")
  expect_identical(rownames(layer_data(edited, "data", assay = "sccbgm")), rownames(alt))
  # the same model on the RNA assay (a superset of its genes, other values): a different edit
  on_rna <- sccbgm_edit(obj, model, set = list(stim = "STIM"), assay = "RNA")
  expect_false(isTRUE(all.equal(as.matrix(layer_data(on_rna, "data", assay = "sccbgm")),
                                as.matrix(layer_data(edited, "data", assay = "sccbgm")))))
  rna_model <- fit_small(obj, "stim", assay = "RNA")
  expect_length(rna_model$genes, nrow(counts))
  err <- expect_error(sccbgm_edit(obj, rna_model, set = list(stim = "STIM")), class = "sccbgm_error")
  expect_match(conditionMessage(err), "the data lack 110 of the model's 230 genes")
  no_traceback(err)
})

test_that("NA in a concept column: a missing label when fitting and editing, an error in `set`", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  expect_true(anyNA(sce$stim))  # the model was fitted with missing stim labels
  sce$flag[1:5] <- NA
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"))
  expect_true(all(edited$sccbgm_stim == "STIM"))
  expect_error(sccbgm_edit(sce, model, set = list(stim = NA_character_)), "set\\$stim contains NA")
  sce$none <- NA_real_
  err <- expect_error(fit_small(sce, "none"), class = "sccbgm_error")
  expect_match(conditionMessage(err), "'none' has no labels")
})

test_that("a factor level typo, an unseen level in an unedited column, duplicate cells", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  err <- expect_error(sccbgm_edit(sce, model, set = list(stim = factor("STMI"))), class = "sccbgm_error")
  expect_match(conditionMessage(err), "unknown category \\['STMI'\\] for concept 'stim'; known categories: \\['ctrl', 'STIM'\\]")
  no_traceback(err)
  # a level the model never saw, in a column that is not edited: scCBGM abducts it, no error
  ref <- SummarizedExperiment::assay(sccbgm_edit(sce, model, set = list(flag = 1)), "sccbgm")
  odd <- sce
  odd$stim <- factor(ifelse(is.na(odd$stim), "LPS", as.character(odd$stim)))
  got <- SummarizedExperiment::assay(sccbgm_edit(odd, model, set = list(flag = 1)), "sccbgm")
  expect_equal(as.matrix(got), as.matrix(ref))
  err <- expect_error(sccbgm_edit(sce, model, set = list(flag = 1), cells = c(1, 2, 1)),
                      class = "sccbgm_error")
  expect_match(conditionMessage(err), "more than once")
})

test_that("an integer-coded column is categorical in R too", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  sce$cluster <- rep(0:2, length.out = ncol(sce))
  expect_warning(model <- fit_small(sce, "cluster"), "holds 3 distinct integers", class = "sccbgm_warning")
  expect_identical(model$concept_names, c("cluster=0", "cluster=1", "cluster=2"))
  edited <- sccbgm_edit(sce, model, set = list(cluster = 2L))
  expect_true(all(as.character(edited$sccbgm_cluster) == "2"))
})

test_that("model files: missing folder, truncated and foreign files are clear R errors", {
  skip_if_no_sccbgm()
  model <- sce_model()
  dir <- tempfile()
  err <- expect_error(sccbgm_save(model, file.path(dir, "m.sccbgm")), class = "sccbgm_error")
  expect_match(conditionMessage(err), "does not exist")
  dir.create(dir)
  path <- file.path(dir, "m.sccbgm")
  sccbgm_save(model, path)
  sccbgm_save(model, path)  # replaces atomically
  expect_identical(list.files(dir, all.files = TRUE, no.. = TRUE), "m.sccbgm")
  bytes <- readBin(path, "raw", file.size(path))
  cut <- file.path(dir, "cut.sccbgm")
  writeBin(bytes[seq_len(length(bytes) %/% 2)], cut)
  err <- expect_error(sccbgm_load(cut), class = "sccbgm_error")
  expect_match(conditionMessage(err), "truncated / corrupt")
  no_traceback(err)
  writeLines("not a model", cut)
  expect_error(sccbgm_load(cut), class = "sccbgm_error")
  expect_error(sccbgm_save("model", path), "must be an sccbgm model")
})

test_that("inputs that would exhaust memory are refused with an R error, the session goes on", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  err <- expect_error(fit_small(sce, "stim", hidden_dim = 2e5), class = "sccbgm_error")
  expect_match(conditionMessage(err), "the network .* needs about .* GiB")
  err <- expect_error(fit_small(sce, "stim", kl_weight = "small"), class = "sccbgm_error")
  expect_match(conditionMessage(err), "option kl_weight must be a finite number")
  expect_true(sccbgm_available())
})

test_that("a 30,000-gene object fits and edits from R without ending the session", {
  skip_if_no_sccbgm()
  set.seed(3)
  n <- 80
  g <- 30000
  counts <- Matrix::rsparsematrix(g, n, density = 0.03, rand.x = function(k) rpois(k, 2) + 1)
  dimnames(counts) <- list(paste0("g", seq_len(g)), paste0("c", seq_len(n)))
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = counts))
  sce$stim <- factor(rep(c("ctrl", "STIM"), length.out = n))
  model <- fit_small(sce, "stim")
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"), cells = 1:10)
  expect_identical(dim(SummarizedExperiment::assay(edited, "sccbgm")), c(30000L, 10L))
  expect_true(all(is.finite(as.matrix(SummarizedExperiment::assay(edited, "sccbgm")))))
})
