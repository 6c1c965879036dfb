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

test_that("sccbgm_evaluate returns edist by default and the field's metrics with control", {
  skip_if_no_sccbgm()
  set.seed(5)
  genes <- paste0("g", 1:12)
  ctrl <- matrix(rexp(12 * 30), 12, 30, dimnames = list(genes, paste0("c", 1:30)))
  shift <- c(rep(1.5, 3), rep(0, 9))
  target <- ctrl[, 1:25] + shift
  colnames(target) <- paste0("t", 1:25)
  res <- sccbgm_evaluate(target, target, control = ctrl, n_components = 5)
  expect_true(all(c("mmd", "fid", "sd", "edist", "r2_mean", "r2_mean_deg", "pearson_delta",
                    "pearson_delta_deg", "response_share", "deg_direction_accuracy") %in% res$metric))
  value <- function(m) res$value[res$metric == m]
  # a perfect prediction: distance 0, R^2 1, correlation 1, every DEG moved the right way
  expect_lt(abs(value("edist")), 1e-8)
  expect_equal(value("r2_mean"), 1)
  expect_equal(value("pearson_delta"), 1)
  expect_equal(value("response_share"), 1)
  expect_equal(value("deg_direction_accuracy"), 1)
  # no edit: R^2 of the mean by hand (sklearn's r2_score of the gene means)
  none <- sccbgm_evaluate(ctrl, target, control = ctrl, metrics = "edist", n_components = 5)
  mr <- rowMeans(target)
  mp <- rowMeans(ctrl)
  expect_equal(none$value[none$metric == "r2_mean"], 1 - sum((mr - mp)^2) / sum((mr - mean(mr))^2),
               tolerance = 1e-6)
  expect_equal(none$value[none$metric == "deg_direction_accuracy"], 0)
  expect_error(sccbgm_evaluate(target, target, control = list()), "`control` must be a Seurat")
})
