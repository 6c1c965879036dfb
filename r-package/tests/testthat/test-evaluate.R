# sccbgm_evaluate(): the R inputs reach Python's sccbgm.evaluate() intact.

test_that("sccbgm_evaluate on matrices equals Python's evaluate on the same arrays", {
  skip_if_no_sccbgm()
  set.seed(3)
  genes <- paste0("g", 1:15)
  a <- matrix(rexp(15 * 40), 15, 40, dimnames = list(genes, paste0("a", 1:40)))
  b <- matrix(rexp(15 * 30, 0.7), 15, 30, dimnames = list(genes, paste0("b", 1:30)))
  res <- sccbgm_evaluate(a, b, metrics = c("mmd", "fid"), n_components = 5)
  expect_s3_class(res, "data.frame")
  expect_setequal(res$metric, c("mmd", "fid"))
  expect_type(attr(res, "settings"), "list")
  # the same numbers handed to Python directly (cells x genes arrays)
  cells_by_genes <- function(m) bridge()$matrix_from_spec(.matrix_spec(m))
  table <- reticulate::import("sccbgm.evaluation", convert = FALSE)$evaluate(
    cells_by_genes(a), cells_by_genes(b), metrics = list("mmd", "fid"), n_components = 5L)
  py <- .frame_from_spec(.r(bridge()$frame_to_spec(table)), c("1", "2"))
  expect_equal(res$value[match(c("mmd", "fid"), res$metric)],
               py$value[match(c("mmd", "fid"), py$metric)], tolerance = 1e-10)
  # a population compared with itself is at distance ~0, a shifted one is not
  same <- sccbgm_evaluate(a, a, metrics = "mmd", n_components = 5)
  expect_lt(abs(same$value), 1e-8)
  expect_gt(res$value[res$metric == "mmd"], 10 * abs(same$value))
})

test_that("sccbgm_evaluate takes Seurat / SCE inputs with per-input layers", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"), cells = which(sce$stim %in% "ctrl"))
  target <- sce[, which(sce$stim %in% "STIM")]
  SummarizedExperiment::assay(target, "logcounts") <- as.matrix(log1p(
    SummarizedExperiment::assay(target, "counts")))
  res <- sccbgm_evaluate(edited, target, layer = c(predicted = "sccbgm", target = "logcounts"),
                         metrics = "mmd", n_components = 5)
  expect_identical(res$metric, "mmd")
  expect_true(is.finite(res$value))
  expect_error(sccbgm_evaluate(list(), target), "must be a Seurat object, a SingleCellExperiment")
  expect_error(sccbgm_evaluate(unname(as.matrix(SummarizedExperiment::assay(sce))), target),
               "needs gene \\(row\\) names")
  expect_error(sccbgm_evaluate(edited, target, assay = "RNA", layer = "logcounts"),
               "applies to Seurat inputs only")
})
