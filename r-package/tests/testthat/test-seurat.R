# Seurat in, Seurat out.

test_that("fit and edit on a Seurat object add an assay, reductions and metadata", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  model <- seurat_model()
  expect_s3_class(model, "sccbgm_model")
  expect_identical(model$concepts, c("stim", "flag"))
  expect_identical(model$concept_names, c("stim=ctrl", "stim=STIM", "flag"))
  expect_identical(model$genes, rownames(obj))
  expect_output(print(model), "concepts \\(metadata columns\\): stim, flag")

  edited <- sccbgm_edit(obj, model, set = list(stim = "STIM"))
  expect_s4_class(edited, "Seurat")
  expect_identical(colnames(edited), colnames(obj))
  expect_true("sccbgm" %in% SeuratObject::Assays(edited))
  data <- layer_data(edited, "data", "sccbgm")
  expect_identical(dim(data), dim(obj))
  expect_identical(dimnames(data), dimnames(layer_data(obj, "counts")))
  expect_true(all(is.finite(as.matrix(data))) && min(data) >= 0)
  # the input assay and the factual metadata are untouched
  expect_identical(layer_data(edited, "counts", "RNA"),
                   layer_data(obj, "counts"))
  expect_identical(edited$stim, obj$stim)
  expect_identical(edited$sccbgm_stim,
                   stats::setNames(factor(rep("STIM", ncol(obj)), levels = c("ctrl", "STIM")),
                                   colnames(obj)))
  red <- SeuratObject::Reductions(edited)
  expect_true(all(c("sccbgm_concepts", "sccbgm_concepts_factual", "sccbgm_unknown") %in% red))
  emb <- SeuratObject::Embeddings(edited, "sccbgm_concepts")
  expect_identical(dim(emb), c(ncol(obj), 3L))
  expect_identical(rownames(emb), colnames(obj))
  expect_identical(SeuratObject::Misc(edited[["sccbgm_concepts"]])$dimension_names,
                   model$concept_names)
  expect_true(all(emb[, 2] == 1 & emb[, 1] == 0 | obj$stim == "STIM"))
  expect_identical(ncol(SeuratObject::Embeddings(edited, "sccbgm_unknown")), 4L)
  expect_identical(SeuratObject::Misc(edited, "sccbgm")$set, list(stim = "STIM"))
})

test_that("edit a subset of cells, with another assay name and a per-cell target", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  model <- seurat_model()
  cells <- colnames(obj)[obj$flag == 0]
  target <- rep(c(0, 1), length.out = length(cells))
  edited <- sccbgm_edit(obj, model, set = list(flag = target), cells = cells, name = "cf",
                        residual = FALSE)
  expect_identical(colnames(edited), cells)
  expect_identical(dim(layer_data(edited, "data", "cf")),
                   c(nrow(obj), length(cells)))
  expect_identical(unname(edited$cf_flag), as.integer(target))
  expect_false(SeuratObject::Misc(edited, "cf")$residual)
  expect_true(all(c("cf_concepts", "cf_unknown") %in% SeuratObject::Reductions(edited)))
  # the same cells chosen by a logical vector
  by_mask <- sccbgm_edit(obj, model, set = list(flag = target), cells = obj$flag == 0,
                         name = "cf", residual = FALSE)
  expect_identical(layer_data(by_mask, "data", "cf"),
                   layer_data(edited, "data", "cf"))
})

test_that("encode adds concept, unknown and latent reductions", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  enc <- sccbgm_encode(obj, seurat_model())
  expect_true(all(c("sccbgm_concepts", "sccbgm_unknown", "sccbgm_latent") %in%
                    SeuratObject::Reductions(enc)))
  p <- SeuratObject::Embeddings(enc, "sccbgm_concepts")
  expect_identical(dim(p), c(ncol(obj), 3L))
  expect_true(all(p >= 0 & p <= 1))
  expect_identical(SeuratObject::DefaultAssay(enc[["sccbgm_latent"]]), "RNA")
})

test_that("log-normalised input (the data slot) works too, and is the default for its model", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  expect_identical(seurat_model()$input_kind, "counts")
  expect_identical(SeuratObject::Misc(sccbgm_edit(obj, seurat_model(), set = list(flag = 1)),
                                      "sccbgm")$layer, "counts")
  model <- fit_small(obj, "stim", layer = "data")
  expect_identical(model$input_kind, "lognorm")
  edited <- sccbgm_edit(obj, model, set = list(stim = "ctrl"), layer = "data")
  expect_identical(dim(layer_data(edited, "data", "sccbgm")),
                   dim(obj))
  # without `layer`, the model's own kind of input (the data slot) is used
  by_default <- sccbgm_edit(obj, model, set = list(stim = "ctrl"))
  expect_identical(SeuratObject::Misc(by_default, "sccbgm")$layer, "data")
  expect_identical(layer_data(by_default, "data", "sccbgm"), layer_data(edited, "data", "sccbgm"))
  # an object with log-normalised data only: fit takes `data` without being told
  assay <- SeuratObject::CreateAssayObject(data = layer_data(obj, "data"))
  SeuratObject::Key(assay) <- "rna_"
  data_only <- SeuratObject::CreateSeuratObject(assay, meta.data = obj[[]])
  expect_identical(fit_small(data_only, "stim")$input_kind, "lognorm")
  expect_error(sccbgm_edit(obj, model, set = list(stim = "ctrl"), layer = "nope"),
               "slot 'nope'|layer 'nope'")
})

test_that("bad input gives clear R errors", {
  skip_if_no_sccbgm()
  obj <- tiny_seurat()
  model <- seurat_model()
  expect_error(sccbgm_fit(as.matrix(layer_data(obj, "counts")), "stim"),
               "must be a Seurat or SingleCellExperiment object, not <matrix>")
  expect_error(sccbgm_fit(obj, c("stim", "treatment")),
               "concept column\\(s\\) 'treatment' not found in the meta.data")
  expect_error(sccbgm_fit(obj, "stim", assay = "ADT"), "assay 'ADT' not found")
  expect_error(sccbgm_fit(obj, "stim", epochs = 0), "`epochs` must be a positive")
  expect_error(sccbgm_fit(obj, "stim", 5), "must be named")
  err <- expect_error(sccbgm_fit(obj, "stim", not_an_option = 1), class = "sccbgm_error")
  expect_match(conditionMessage(err), "unknown option\\(s\\) \\['not_an_option'\\]")
  expect_no_match(conditionMessage(err), "Traceback")
  err <- expect_error(sccbgm_edit(obj, model, set = list(stim = "LPS")), class = "sccbgm_error")
  expect_match(conditionMessage(err), "unknown category \\['LPS'\\] for concept 'stim'")
  expect_error(sccbgm_edit(obj, model, set = list(dose = 1)), "not a concept of this model")
  expect_error(sccbgm_edit(obj, model, set = list("STIM")), "must be a named list")
  expect_error(sccbgm_edit(obj, model, set = list(stim = NA)), "contains NA")
  expect_error(sccbgm_edit(obj, model, set = list(flag = c(0, 1))), "has 2 values but 80 cells")
  expect_error(sccbgm_edit(obj, model, set = list(flag = 1), cells = "nope"),
               "`cells` not found")
  expect_error(sccbgm_edit(obj, list(), set = list(flag = 1)), "must be an sccbgm model")
  expect_error(sccbgm_edit(SingleCellExperiment::SingleCellExperiment(), model, set = list(flag = 1)),
               "assay 'counts' not found")
})
