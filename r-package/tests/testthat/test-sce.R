# SingleCellExperiment in, SingleCellExperiment out.

test_that("fit and edit on an SCE add an assay, reducedDims and colData", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  expect_identical(model$concept_names, c("stim=ctrl", "stim=STIM", "flag", "dose"))
  edited <- sccbgm_edit(sce, model, set = list(stim = "STIM", dose = 0.9))
  expect_s4_class(edited, "SingleCellExperiment")
  expect_identical(dimnames(edited), dimnames(sce))
  expect_identical(SummarizedExperiment::assayNames(edited), c("counts", "sccbgm"))
  m <- SummarizedExperiment::assay(edited, "sccbgm")
  expect_true(is.matrix(m) && is.double(m))
  expect_identical(dimnames(m), dimnames(sce))
  expect_identical(SummarizedExperiment::assay(edited, "counts"),
                   SummarizedExperiment::assay(sce, "counts"))
  expect_identical(SingleCellExperiment::reducedDimNames(edited),
                   c("sccbgm_concepts", "sccbgm_concepts_factual", "sccbgm_unknown"))
  conc <- SingleCellExperiment::reducedDim(edited, "sccbgm_concepts")
  expect_identical(colnames(conc), model$concept_names)
  # concept scale: the training range of `dose` mapped to [0, 1]
  scaled <- (0.9 - min(sce$dose)) / diff(range(sce$dose))
  expect_equal(unname(conc[, "dose"]), rep(scaled, ncol(sce)), tolerance = 1e-6)
  expect_identical(edited$sccbgm_stim,
                   factor(rep("STIM", ncol(sce)), levels = c("ctrl", "STIM", "unused")))
  expect_equal(edited$sccbgm_dose, rep(0.9, ncol(sce)), tolerance = 1e-6)
  expect_identical(edited$stim, sce$stim) # factual column (with its NAs) untouched
  expect_identical(S4Vectors::metadata(edited)$sccbgm$expression, "log1p-normalised")
})

test_that("genes differing from the model's go to an altExp", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- fit_small(sce[1:40, ], c("stim", "flag"))
  edited <- sccbgm_edit(sce, model, set = list(flag = 1), cells = 1:25)
  expect_identical(colnames(edited), colnames(sce)[1:25])
  expect_identical(SummarizedExperiment::assayNames(edited), "counts")
  alt <- SingleCellExperiment::altExp(edited, "sccbgm")
  expect_identical(dimnames(alt), list(rownames(sce)[1:40], colnames(sce)[1:25]))
  expect_identical(SummarizedExperiment::assayNames(alt), "logcounts")
  expect_identical(edited$sccbgm_flag, rep(1L, 25))
  err <- expect_error(sccbgm_edit(sce[5:60, ], model, set = list(flag = 1)),
                      class = "sccbgm_error")
  expect_match(conditionMessage(err), "the data lack 4 of the model's 40 genes")
})

test_that("a model saved and loaded gives the same edit; encode works on SCE", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  path <- tempfile(fileext = ".sccbgm")
  on.exit(unlink(path))
  expect_identical(sccbgm_save(model, path), normalizePath(path))
  loaded <- sccbgm_load(path)
  expect_identical(loaded$concept_names, model$concept_names)
  expect_identical(loaded$genes, model$genes)
  a <- sccbgm_edit(sce, model, set = list(flag = 1))
  b <- sccbgm_edit(sce, loaded, set = list(flag = 1))
  expect_equal(SummarizedExperiment::assay(b, "sccbgm"), SummarizedExperiment::assay(a, "sccbgm"),
               tolerance = 1e-6)
  enc <- sccbgm_encode(sce, loaded, name = "enc")
  expect_identical(colnames(SingleCellExperiment::reducedDim(enc, "enc_concepts")),
                   model$concept_names)
  expect_identical(nrow(SingleCellExperiment::reducedDim(enc, "enc_latent")), ncol(sce))
  expect_error(sccbgm_load(tempfile()), "no model file at", class = "sccbgm_error")
})

test_that("simulated data come back as an SCE with integer counts and factor metadata", {
  skip_if_no_sccbgm()
  sce <- sccbgm_simulate(n_cells = 60, n_genes = 30, n_concepts = 2, seed = 3)
  expect_s4_class(sce, "SingleCellExperiment")
  expect_identical(dim(sce), c(30L, 60L))
  expect_identical(storage.mode(SummarizedExperiment::assay(sce, "counts")), "integer")
  expect_true(is.factor(sce$cell_type))
  expect_true(all(c("concept_0", "concept_1") %in% colnames(SummarizedExperiment::colData(sce))))
  again <- sccbgm_simulate(n_cells = 60, n_genes = 30, n_concepts = 2, seed = 3)
  expect_identical(again, sce)
})

test_that("simulate adds exact counterfactual counts on request", {
  skip_if_no_sccbgm()
  sce <- sccbgm_simulate(n_cells = 80, n_genes = 100, seed = 3, concept_sd = 0.4,
                         counterfactual = list(concept_0 = 1))
  expect_identical(SummarizedExperiment::assayNames(sce), c("counts", "counterfactual_counts"))
  expect_identical(sce$counterfactual_concept_0, rep(1L, 80))
  counts <- SummarizedExperiment::assay(sce, "counts")
  truth <- SummarizedExperiment::assay(sce, "counterfactual_counts")
  expect_identical(storage.mode(truth), "integer")
  on <- sce$concept_0 == 1
  expect_true(any(on) && any(!on))
  # cells that already have concept_0 = 1 are their own counterfactual; the others change
  expect_identical(truth[, on], counts[, on])
  expect_gt(mean(truth[, !on] != counts[, !on]), 0.05)
  # the factual data are those of the plain simulation
  plain <- sccbgm_simulate(n_cells = 80, n_genes = 100, seed = 3, concept_sd = 0.4)
  expect_identical(SummarizedExperiment::assay(plain, "counts"), counts)
  expect_error(sccbgm_simulate(n_cells = 10, counterfactual = list(1)), "must be a named list")
})

test_that("SCE-specific argument errors", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  expect_error(sccbgm_fit(sce, "stim", assay = "RNA"), "applies to Seurat objects only")
  expect_error(sccbgm_fit(sce, "stim", layer = "logcounts"), "assay 'logcounts' not found")
  expect_error(sccbgm_fit(sce, "missing_col"), "not found in the colData")
})

test_that("an SCE with logcounts only is fitted on them, and its model edits them by default", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  logcounts <- as.matrix(log1p(SummarizedExperiment::assay(sce, "counts")))
  lsce <- SingleCellExperiment::SingleCellExperiment(list(logcounts = logcounts),
                                                     colData = SummarizedExperiment::colData(sce))
  model <- fit_small(lsce, c("stim", "flag"))
  expect_identical(model$input_kind, "lognorm")
  edited <- sccbgm_edit(lsce, model, set = list(flag = 0))
  expect_identical(S4Vectors::metadata(edited)$sccbgm$layer, "logcounts")
  expect_identical(SummarizedExperiment::assayNames(edited), c("logcounts", "sccbgm"))
  # residual edit toward each cell's own flag changes little; toward the other flag, more
  own <- sccbgm_edit(lsce, model, set = list(flag = lsce$flag))
  moved <- abs(SummarizedExperiment::assay(edited, "sccbgm") - logcounts)
  kept <- abs(SummarizedExperiment::assay(own, "sccbgm") - logcounts)
  flipped <- lsce$flag == 1
  expect_lt(mean(kept[, flipped]), mean(moved[, flipped]))
})

test_that("edit, encode and sweep take the object first; the Python order is a clear error", {
  skip_if_no_sccbgm()
  sce <- tiny_sce()
  model <- sce_model()
  piped <- sce |> sccbgm_encode(model)
  expect_identical(SingleCellExperiment::reducedDim(piped, "sccbgm_concepts"),
                   SingleCellExperiment::reducedDim(sccbgm_encode(sce, model), "sccbgm_concepts"))
  expect_error(sccbgm_edit(model, sce, set = list(flag = 1)),
               "sccbgm_edit\\(\\)` takes the data object first: sccbgm_edit\\(object, model, ...\\)")
  expect_error(sccbgm_encode(model, sce), "swap the first two arguments")
  expect_error(sccbgm_sweep(model, sce, "flag", c(0, 1)), "sccbgm_sweep\\(object, model, ...\\)")
  expect_error(sccbgm_fit(list(), "flag"), "must be a Seurat or SingleCellExperiment object, not <list>")
  expect_error(sccbgm_edit(matrix(0, 2, 2), model, set = list(flag = 1)),
               "must be a Seurat or SingleCellExperiment object")
  # dispatch is on the class: a method for each container, a fallback that only explains errors
  expect_true(methods::existsMethod("sccbgm_edit", "SingleCellExperiment"))
  expect_true(methods::existsMethod("sccbgm_edit", "Seurat"))
  expect_true(methods::existsMethod("sccbgm_fit", "Seurat"))
})
