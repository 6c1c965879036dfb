# sccbgm_validate(), sccbgm_sweep(), sccbgm_search_concepts(): the R objects reach Python's
# sccbgm.validate / sweep / search_concepts intact, and the tables come back whole.
# (The biology -- JAK-STAT first for IFN-beta, ISGs rising with JAK-STAT -- is tested on the real
# Kang cells in python/tests/test_tools.py; here, tiny data keep the fits to seconds.)

tools_py <- function() reticulate::import("sccbgm.tools", convert = FALSE)
py_table <- function(table) {
  spec <- .r(bridge()$frame_to_spec(table))
  n <- as.integer(reticulate::py_to_r(table$shape[0]))
  out <- .frame_from_spec(spec, as.character(seq_len(n)))
  rownames(out) <- NULL
  out
}
small_fit <- list(epochs = 4L, hidden_dim = 32L, latent_dim = 8L, unknown_dim = 4L, n_pcs = 10L,
                  batch_size = 64L)

test_that("sccbgm_validate equals Python's validate on the same cells", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  # groupby: a fit option naming a column, which must travel to Python with the concepts
  res <- do.call(sccbgm_validate, c(list(sce, c("stim", "flag"), list(stim = "STIM"), "flag",
                                         min_cells = 20, progress = FALSE, groupby = "flag"), small_fit))
  expect_s3_class(res, "data.frame")
  expect_setequal(res$group, c("0", "1"))
  expect_equal(nrow(res), 2 * 3)
  expect_setequal(res$editor, c("scCBGM", "no edit", "mean shift (other types)"))
  expect_type(res$model_beats_floors, "logical")
  expect_match(attr(res, "verdict"), "groups")
  expect_length(attr(res, "skipped"), 0)
  # the same data handed to Python directly
  spec <- .engine_spec(sce, NULL, "counts", c("stim", "flag"))
  adata <- bridge()$anndata_from_spec(spec)
  py <- py_table(do.call(tools_py()$validate, c(list(adata, list("stim", "flag"), list(stim = "STIM"),
                                                      "flag", min_cells = 20L, progress = FALSE,
                                                      groupby = "flag"),
                                                 small_fit)))
  key <- function(d) d[order(d$group, d$editor), c("group", "editor", "rmmd", "mean_dist", "n_source")]
  expect_equal(key(res), key(py), tolerance = 1e-8, ignore_attr = TRUE)
})

test_that("sccbgm_validate reports ineligible groups and input errors", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  expect_error(sccbgm_validate(sce, "flag", list(stim = "STIM"), "flag"),
               "must be among the concepts")
  expect_error(sccbgm_validate(sce, c("stim", "flag"), list(stim = "STIM"), "nope"), "nope")
  expect_error(sccbgm_validate(sce, c("stim", "flag"), list(stim = "STIM"), "flag", groupby = "nope"), "nope")
  expect_error(sccbgm_validate(sce, c("stim", "flag"), list(stim = "STIM"), "flag",
                               min_cells = 10000), "nothing to validate")
  expect_error(sccbgm_validate(sce, c("stim", "flag"), "STIM", "flag"), "named list")
  expect_error(sccbgm_validate(sce, c("stim", "flag"), list(stim = "STIM"), "flag", min_cells = 1),
               "min_cells")
})

test_that("sccbgm_sweep tables the edits of every value", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  png <- tempfile(fileext = ".png")
  res <- sccbgm_sweep(sce, model, "dose", c(0, 0.5, 1), group = "flag", plot = png)
  expect_equal(nrow(res), 2 * 3 * nrow(sce))
  expect_type(res$value, "double")
  expect_setequal(res$group, c("0", "1"))
  expect_true(all(is.na(res$sd)))
  expect_length(attr(res, "top_genes"), 10)
  expect_true(file.size(png) > 1000)
  # the mean at dose = 1 is the mean of sccbgm_edit()'s output over the same cells
  edited <- sccbgm_edit(sce, model, set = list(dose = 1), cells = sce$flag == 0)
  by_hand <- Matrix::rowMeans(SummarizedExperiment::assay(edited, "sccbgm"))
  got <- res[res$group == "0" & res$value == 1, ]
  expect_equal(got$mean, unname(by_hand[got$gene]), tolerance = 1e-5)
  one <- sccbgm_sweep(sce, model, "stim", c("ctrl", "STIM"), cells = which(sce$flag == 1),
                      genes = c("Gene1", "Gene2"))
  expect_identical(one$value, c("ctrl", "ctrl", "STIM", "STIM"))
  expect_error(sccbgm_sweep(sce, model, "dose", 1), "at least two values")
  expect_error(sccbgm_sweep(sce, model, "nope", c(0, 1)), "not one of the model's concepts")
})

test_that("sccbgm_search_concepts ranks given activity columns", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  keep <- !is.na(sce$stim)
  sce <- sce[, keep]
  set.seed(7)
  # act_up: an activity that the STIM cells have high; act_noise: unrelated to stim
  sce$act_up <- ifelse(sce$stim == "STIM", 0.8, 0.2) + stats::rnorm(ncol(sce), 0, 0.05)
  sce$act_noise <- stats::runif(ncol(sce))
  png <- tempfile(fileext = ".png")
  res <- do.call(sccbgm_search_concepts, c(list(sce, list(stim = "ctrl"), list(stim = "STIM"),
                                                pathways = c("act_up", "act_noise"),
                                                concepts = "flag", n_pathways = 2, n_combine = 2,
                                                plot = png, progress = FALSE), small_fit))
  expect_identical(colnames(res)[1], "pathway")
  expect_setequal(res$pathway, c("act_up", "act_noise", "act_up + act_noise", "(no edit)"))
  expect_identical(res$rank, seq_len(4))
  sep <- attr(res, "separation")
  expect_s3_class(sep, "data.frame")
  expect_identical(sep$pathway[1], "act_up")
  expect_match(attr(res, "report"), "Best edit")
  expect_length(attr(res, "markers"), 50)
  expect_identical(dim(attr(res, "activities")), c(ncol(sce), 2L))
  expect_identical(rownames(attr(res, "activities")), colnames(sce))
  expect_equal(attr(res, "activities")$act_up, sce$act_up, tolerance = 1e-6)
  model <- attr(res, "model")
  expect_s3_class(model, "sccbgm_model")
  expect_setequal(model$concepts, c("flag", "act_up", "act_noise"))
  expect_true(file.size(png) > 1000)
  # logical masks select the same cells as the selectors
  again <- do.call(sccbgm_search_concepts, c(list(sce, sce$stim == "ctrl", sce$stim == "STIM",
                                                  pathways = c("act_up", "act_noise"),
                                                  concepts = "flag", n_pathways = 2,
                                                  n_combine = 2, progress = FALSE), small_fit))
  expect_equal(again[, c("pathway", "rmmd")], res[, c("pathway", "rmmd")], tolerance = 1e-8)
  expect_error(sccbgm_search_concepts(sce, list(stim = "ctrl"), list(stim = "ctrl"),
                                      pathways = "act_up"), "both `source` and `target`")
  expect_error(sccbgm_search_concepts(sce, list("ctrl"), list(stim = "STIM")), "must be named")
})
