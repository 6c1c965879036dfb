# Ensembles: the per-cell uncertainty of an edit comes back as assays on Seurat and SCE objects.

ensemble_of <- function(object, concepts) {
  fit_small(object, concepts, n_members = 3)
}

test_that("an ensemble's edit adds edit_sd / edit_lower / edit_upper assays to an SCE", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- ensemble_of(sce, c("stim", "flag"))
  expect_output(print(model), "ensemble of 3")
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"))
  expect_identical(SummarizedExperiment::assayNames(edited),
                   c("counts", "sccbgm", "sccbgm_edit_sd", "sccbgm_edit_lower", "sccbgm_edit_upper"))
  x <- SummarizedExperiment::assay(edited, "sccbgm")
  sd <- SummarizedExperiment::assay(edited, "sccbgm_edit_sd")
  lower <- SummarizedExperiment::assay(edited, "sccbgm_edit_lower")
  upper <- SummarizedExperiment::assay(edited, "sccbgm_edit_upper")
  expect_true(is.matrix(sd) && is.double(sd))
  expect_identical(dimnames(sd), dimnames(sce))
  expect_true(all(sd >= 0) && mean(sd) > 0)
  expect_true(all(lower <= x + 1e-6) && all(x <= upper + 1e-6))
  record <- S4Vectors::metadata(edited)$sccbgm
  expect_identical(record$n_members, 3L)
  expect_equal(record$uncertainty_level, 0.9)
  # a count model's default edit: the predictive interval of the count-space edit
  expect_match(record$uncertainty_interval, "count-space edit")
  # same numbers as the Python edit
  py_edit <- bridge()$edit(model$py, sccbgm:::.engine_spec(sce, NULL, "counts", model$concepts),
                           sccbgm:::.set_spec(list(stim = "STIM"), ncol(sce)))
  py_unc <- sccbgm:::.r(py_edit)$uncertainty
  expect_equal(unname(sd), unname(sccbgm:::.matrix_from_spec(py_unc$edit_sd)), tolerance = 1e-6)
  expect_equal(unname(lower), unname(sccbgm:::.matrix_from_spec(py_unc$edit_lower)), tolerance = 1e-6)
  expect_equal(unname(upper), unname(sccbgm:::.matrix_from_spec(py_unc$edit_upper)), tolerance = 1e-6)
  # an additive edit keeps the interval mean -/+ z * scale * sd where it is not clipped at 0
  additive <- sccbgm_edit(sce, model, set = list(stim = "STIM"), count_edit = "none", shift_unknown = FALSE)
  a_sd <- SummarizedExperiment::assay(additive, "sccbgm_edit_sd")
  a_lower <- SummarizedExperiment::assay(additive, "sccbgm_edit_lower")
  a_upper <- SummarizedExperiment::assay(additive, "sccbgm_edit_upper")
  wide <- a_lower > 0
  expect_equal((a_upper - a_lower)[wide], (2 * record$uncertainty_z * record$uncertainty_scale * a_sd)[wide],
               tolerance = 1e-5)
  expect_match(S4Vectors::metadata(additive)$sccbgm$uncertainty_interval, "mean -/\\+ z")
  # a single model adds none of them
  single <- sccbgm_edit(sce, sce_model(), set = list(stim = "STIM"))
  expect_false(any(grepl("edit_sd", SummarizedExperiment::assayNames(single))))
})

test_that("an ensemble's uncertainty goes to the altExp with the edit, and to Seurat assays", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- ensemble_of(sce[1:40, ], c("stim", "flag"))
  edited <- sccbgm_edit(sce, model, set = list(flag = 1), cells = 1:25)
  alt <- SingleCellExperiment::altExp(edited, "sccbgm")
  expect_identical(SummarizedExperiment::assayNames(alt),
                   c("logcounts", "edit_sd", "edit_lower", "edit_upper"))
  expect_identical(dim(SummarizedExperiment::assay(alt, "edit_sd")), c(40L, 25L))

  obj <- tiny_seurat()
  smodel <- ensemble_of(obj, c("stim", "flag"))
  sedited <- sccbgm_edit(obj, smodel, set = list(stim = "STIM"), name = "cf")
  expect_true(all(c("cf", "cf_edit_sd", "cf_edit_lower", "cf_edit_upper") %in% SeuratObject::Assays(sedited)))
  sd <- as.matrix(layer_data(sedited, "data", "cf_edit_sd"))
  expect_identical(dim(sd), dim(obj))
  expect_true(mean(sd) > 0)
  x <- as.matrix(layer_data(sedited, "data", "cf"))
  upper <- as.matrix(layer_data(sedited, "data", "cf_edit_upper"))
  expect_true(all(x <= upper + 1e-6))
  expect_identical(SeuratObject::Misc(sedited, "cf")$n_members, 3L)
})

test_that("n_members must be a positive whole number", {
  skip_if_no_sccbgm()
  expect_error(fit_small(tiny_sce(), "stim", n_members = 0), "n_members")
  expect_error(fit_small(tiny_sce(), "stim", n_members = 1.5), "n_members")
})

test_that("a model fitted with groupby calibrates the edit per group, from R as from Python", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  expect_error(fit_small(sce, "stim", groupby = "nope"), "groupby column\\(s\\) 'nope' not found")
  model <- fit_small(sce, "stim", groupby = "flag", n_members = 2L)
  expect_identical(model$groupby, "flag")
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM"))
  record <- S4Vectors::metadata(edited)$sccbgm
  expect_identical(record$group_calibration_groupby, "flag")
  # every control cell with a label is corrected (both flag groups were seen ctrl and STIM)
  expect_identical(record$group_calibration_n_cells, sum(sce$stim == "ctrl", na.rm = TRUE))
  expect_identical(record$group_calibration_n_cells_pooled, 0L)  # no group was seen in one state only
  expect_identical(record$group_calibration_n_cells_unseen_group, 0L)
  plain <- sccbgm_edit(sce, model, set = list(stim = "STIM"), group_calibration = FALSE)
  expect_null(S4Vectors::metadata(plain)$sccbgm$group_calibration_n_cells)
  x <- SummarizedExperiment::assay(edited, "sccbgm")
  ctrl <- which(sce$stim == "ctrl")
  expect_gt(max(abs(x[, ctrl] - SummarizedExperiment::assay(plain, "sccbgm")[, ctrl])), 0.01)
  # the same numbers as the Python edit of the same cells, group column passed along
  spec <- sccbgm:::.engine_spec(sce, NULL, "counts", c("stim", "flag"))
  py <- sccbgm:::.r(bridge()$edit(model$py, spec, sccbgm:::.set_spec(list(stim = "STIM"), ncol(sce))))
  expect_equal(unname(x), unname(sccbgm:::.matrix_from_spec(py$X)), tolerance = 1e-6)
  # the cells of a flag group edited alike share one rate ratio (the default with groupby); off
  # from R as from Python, and by any metadata column
  expect_identical(record$shared_response_column, "flag")
  expect_true(record$shared_response_n_cells > 0L && record$shared_response_n_groups > 0L)
  own <- sccbgm_edit(sce, model, set = list(stim = "STIM"), share_response = FALSE)
  expect_null(S4Vectors::metadata(own)$sccbgm$shared_response_n_cells)
  py_own <- sccbgm:::.r(bridge()$edit(model$py, spec, sccbgm:::.set_spec(list(stim = "STIM"), ncol(sce)),
                                      options = list(share_response = FALSE)))
  expect_equal(unname(SummarizedExperiment::assay(own, "sccbgm")), unname(sccbgm:::.matrix_from_spec(py_own$X)),
               tolerance = 1e-6)
  expect_gt(max(abs(SummarizedExperiment::assay(own, "sccbgm")[, ctrl] - x[, ctrl])), 1e-3)
  by_stim <- sccbgm_edit(sce, model, set = list(stim = "STIM"), share_response = "stim")
  expect_identical(S4Vectors::metadata(by_stim)$sccbgm$shared_response_column, "stim")
  expect_error(sccbgm_edit(sce, model, set = list(stim = "STIM"), share_response = "nope"),
               "share_response column\\(s\\) 'nope' not found")
  # and the calibration survives a save / load round trip
  path <- tempfile(fileext = ".sccbgm")
  sccbgm_save(model, path)
  again <- sccbgm_edit(sce, sccbgm_load(path), set = list(stim = "STIM"))
  expect_equal(SummarizedExperiment::assay(again, "sccbgm"), x, tolerance = 1e-6)
  # the calibration table, as Python's summary(): both flag groups corrected by their own response
  tab <- sccbgm_group_responses(model)
  py_tab <- reticulate::py_to_r(model$py$group_responses$summary()$to_dict("list"))
  expect_identical(tab$group, unlist(py_tab$group))
  expect_identical(tab$source, rep("own", nrow(tab)))
  expect_equal(tab$mean_abs_shift, unlist(py_tab$mean_abs_shift), tolerance = 1e-12)
  expect_gt(min(tab$mean_abs_shift[tab$concept == "stim"]), 0)
  plain_model <- fit_small(sce, "stim")
  expect_error(sccbgm_group_responses(plain_model), "fitted without groupby")
})
