# The exported model API: fit, edit, encode, save, load. All numerics run in Python.

# `...` -> a named list of keyword options for Python. Whole numbers become integers (R's `5`
# is a double; Python options such as epochs or hidden_dim must be int).
.py_options <- function(...) {
  opts <- list(...)
  if (length(opts) && (is.null(names(opts)) || any(!nzchar(names(opts))))) {
    stop("every option in `...` must be named, e.g. epochs = 5.", call. = FALSE)
  }
  lapply(opts, .py_scalar)
}

.py_scalar <- function(x) {
  if (is.null(x)) return(NULL)
  if (is.factor(x)) x <- as.character(x)
  if (is.numeric(x) && !is.integer(x) && length(x) == 1L && !is.na(x) && is.finite(x) &&
      x == round(x) && abs(x) < .Machine$integer.max) {
    return(as.integer(x))
  }
  if (is.atomic(x) && length(x) == 1L) return(x)
  if (is.atomic(x)) return(.np1(x))
  if (is.list(x)) return(lapply(x, .py_scalar))
  x
}

.new_model <- function(py) {
  info <- .r(.py_call(.bridge()$model_info(py)))
  structure(list(py = py, name = info$name, concepts = .chr(info$concepts),
                 concept_names = .chr(info$concept_names), genes = .chr(info$genes),
                 input_kind = info$input_kind, groupby = info$groupby,
                 description = info$description),
            class = "sccbgm_model")
}

# The data object comes first (Bioconductor / pipe convention). A call written in the Python
# API's order (model, object) is an error that names the right order: never silently swapped.
.object_and_model <- function(object, model, fun) {
  if (inherits(object, "sccbgm_model")) .wrong_order(fun)
  .check_model(model)
  .check_object(object)
  list(object = object, model = model)
}

.wrong_order <- function(fun) {
  stop("`", fun, "()` takes the data object first: ", fun, "(object, model, ...). The model came ",
       "first (the Python order, sccbgm.", sub("^sccbgm_", "", fun), "(model, adata, ...)); swap ",
       "the first two arguments.", call. = FALSE)
}

# The S4 fallback of the exported generics: the first argument is neither a Seurat nor a
# SingleCellExperiment object (a model there is the Python argument order).
.not_an_object <- function(fun, object) {
  if (inherits(object, "sccbgm_model")) .wrong_order(fun)
  .check_object(object)
}

setOldClass("sccbgm_model")

.check_model <- function(model) {
  if (!inherits(model, "sccbgm_model")) {
    stop("`model` must be an sccbgm model from sccbgm_fit() or sccbgm_load(), not ",
         .class_name(model), ".", call. = FALSE)
  }
  if (!reticulate::py_available(initialize = FALSE) || reticulate::py_is_null_xptr(model$py)) {
    stop("`model` refers to a Python object of an earlier R session; save models with ",
         "sccbgm_save() and read them back with sccbgm_load().", call. = FALSE)
  }
  invisible(model)
}

#' @export
print.sccbgm_model <- function(x, ...) {
  cat("<sccbgm model>", x$description, "\n")
  cat("  concepts (metadata columns):", paste(x$concepts, collapse = ", "), "\n")
  cat("  concept dimensions:", length(x$concept_names), "\n")
  cat("  genes:", length(x$genes), "\n")
  if (!is.null(x$input_kind)) cat("  input:", x$input_kind, "\n")
  if (!is.null(x$groupby)) cat("  group calibration by:", x$groupby, "(sccbgm_group_responses())\n")
  invisible(x)
}

#' Group calibration of a model: which groups' edits are corrected, and by how much
#'
#' A model fitted with `groupby` ([sccbgm_fit()]) corrects the count-space edit of each group's
#' cells: by the group's own observed response where its training cells hold both states of the
#' edited concept, and, for a group seen in one state only, by the part of the measured groups'
#' corrections they share (shrunk to nothing where each group's correction is its own; empirical
#' Bayes both times). The Python `model.group_responses.summary()` does the work.
#'
#' @param model A model from [sccbgm_fit()] or [sccbgm_load()], fitted with `groupby`.
#' @return A `data.frame` with one row per concept edit (`concept`, `from`, `to`) and group:
#'   the group's training cells in each state (`n_from`, `n_to`), where its correction comes
#'   from (`source`: `"own"`, `"pooled"` or `"none"`), the empirical-Bayes variances `tau2`
#'   (spread of the groups' own deviations from the model) and `pooled_mu2` (spread of the
#'   shared part over genes), the mean absolute correction over genes (`mean_abs_shift`, in log
#'   rate; 0: the model's edit is kept) and its mean posterior sd (`mean_sd`).
#' @seealso [sccbgm_fit()], [sccbgm_edit()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 400, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, "concept_0", groupby = "cell_type", seed = 1, epochs = 3,
#'                       hidden_dim = 32, latent_dim = 8, unknown_dim = 8, n_pcs = 10)
#'   sccbgm_group_responses(model)
#' }
sccbgm_group_responses <- function(model) {
  .check_model(model)
  .tool_table(.r(.py_call(.bridge()$group_responses(model$py))))
}

#' Fit a concept bottleneck generative model
#'
#' Fits an scCBGM on the cells of a Seurat or SingleCellExperiment object. The concepts are
#' cell metadata columns: a factor or character column gives one binary concept per category,
#' a logical or 0/1 column one binary concept, an integer column with at most 20 distinct values
#' (cluster ids) one concept per value (with a warning), any other numeric column one continuous
#' concept;
#' `NA` marks a missing label (the cell still trains the rest of the model).
#'
#' The expression matrix (`layer`) holds raw counts (non-negative integers: library-size
#' normalised and log1p-transformed inside) or log-normalised values (used as they are); which
#' one is detected. The fit runs in Python ([sccbgm_available()]). The matrix may be an
#' in-memory `matrix` / `dgCMatrix` or a `DelayedArray` (e.g. an `HDF5Array` on disk), which
#' crosses to Python in blocks of cells, never densified whole in R.
#'
#' @param object A `Seurat` or `SingleCellExperiment` object.
#' @param concepts Character vector of cell metadata columns (Seurat `meta.data`, SCE `colData`)
#'   to use as concepts.
#' @param ... Further options of the Python `sccbgm.fit()`, named: module options
#'   (`hidden_dim`, `n_layers`, `latent_dim`, `unknown_dim`, `dropout`, `concept_weight`,
#'   `cross_cov_weight`, `kl_weight`, ...), training options (`batch_size`, `lr`, ...) and
#'   `representation`, `n_pcs`, `input_kind`, `residual`, `device`, and `groupby`: a metadata
#'   column (e.g. the cell types) whose groups' own observed responses calibrate the count-space
#'   edit by empirical Bayes, where a group was seen in both states of the edited concept; a group
#'   seen in one state only gets the part of the others' corrections they share (see
#'   [sccbgm_edit()]). Whole numbers are passed as Python integers.
#' @param assay Seurat only: the assay (default: the default assay).
#' @param layer The expression matrix: a Seurat slot / layer (`"counts"`, `"data"`) or an SCE
#'   assay name (`"counts"`, `"logcounts"`). `NULL` (default): the raw counts when the object
#'   has them, else the log-normalised values (Seurat `data`, SCE `logcounts`).
#' @param model Model family, `"sccbgm"`.
#' @param seed Integer seed (weight initialisation and minibatch order); the same seed gives the
#'   same model on CPU. `NULL` draws one.
#' @param preset `"cpu"` (default, small network) or `"paper"` (the paper's settings).
#' @param epochs Number of training epochs; `NULL` uses the preset's.
#' @param n_members Ensemble size K; `NULL` uses the preset's (`"cpu"`: 2 for `model = "sccbgm"`,
#'   1 otherwise). `K > 1` trains K models (seeds `seed`, `seed + 1`, ...)
#'   that share the input transform, and [sccbgm_edit()] then returns their mean edit with a
#'   per-cell uncertainty (the `_edit_sd`, `_edit_lower`, `_edit_upper` assays). K times the
#'   fit time.
#' @param progress Show a progress bar (default: only in interactive sessions).
#' @return An `sccbgm_model`: a list with `concepts` (metadata columns), `concept_names` (the
#'   concept dimensions, e.g. `"stim=STIM"`), `genes`, and `py`, the Python model.
#' @seealso [sccbgm_edit()], [sccbgm_encode()], [sccbgm_save()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 200, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, c("concept_0", "cell_type"), seed = 1, epochs = 3,
#'                       hidden_dim = 32, latent_dim = 8, unknown_dim = 8, n_pcs = 10)
#'   model
#' }
setGeneric("sccbgm_fit", function(object, concepts, ..., assay = NULL, layer = NULL,
                                  model = "sccbgm", seed = NULL, preset = "cpu", epochs = NULL,
                                  n_members = NULL, progress = interactive())
  standardGeneric("sccbgm_fit"), signature = "object")

.fit_object <- function(object, concepts, ..., assay = NULL, layer = NULL,
                        model = "sccbgm", seed = NULL, preset = "cpu", epochs = NULL,
                        n_members = NULL, progress = interactive()) {
  .check_columns(object, concepts)
  .check_string(model, "model", null_ok = FALSE)
  .check_string(preset, "preset", null_ok = FALSE)
  options <- .py_options(...)
  if (!is.null(epochs)) {
    if (!is.numeric(epochs) || length(epochs) != 1L || is.na(epochs) || epochs < 1) {
      stop("`epochs` must be a positive whole number.", call. = FALSE)
    }
    options$epochs <- as.integer(epochs)
  }
  if (!is.null(n_members)) {
    if (!is.numeric(n_members) || length(n_members) != 1L || is.na(n_members) || n_members < 1 ||
        n_members != round(n_members)) {
      stop("`n_members` must be a positive whole number or NULL.", call. = FALSE)
    }
    options$n_members <- as.integer(n_members)
  }
  groupby <- options$groupby
  if (!is.null(groupby)) {
    .check_string(groupby, "groupby", null_ok = FALSE)
    .check_columns(object, groupby, arg = "groupby", what = "groupby")
  }
  spec <- .engine_spec(object, assay, .default_layer(object, layer, assay = assay),
                       unique(c(concepts, groupby)))
  bridge <- .bridge()
  py <- .py_call(bridge$fit(spec, .np_chr(concepts), model = model, seed = .py_scalar(seed),
                            preset = preset, progress = isTRUE(progress), options = options))
  .new_model(py)
}

#' @rdname sccbgm_fit
setMethod("sccbgm_fit", "SingleCellExperiment", .fit_object)
#' @rdname sccbgm_fit
setMethod("sccbgm_fit", "Seurat", .fit_object)
setMethod("sccbgm_fit", "ANY", function(object, concepts, ..., assay = NULL, layer = NULL,
                                        model = "sccbgm", seed = NULL, preset = "cpu", epochs = NULL,
                                        n_members = NULL, progress = interactive()) {
  .check_object(object)
})

# `set` (named list) -> list of set entries for bridge.set_from_spec
.set_spec <- function(set, n_cells) {
  if (!is.list(set) || !length(set) || is.null(names(set)) || any(!nzchar(names(set)))) {
    stop("`set` must be a named list {concept column = new value}, e.g. ",
         "list(stim = \"STIM\").", call. = FALSE)
  }
  lapply(names(set), function(column) {
    value <- set[[column]]
    if (is.factor(value)) value <- as.character(value)
    if (!is.atomic(value) || !length(value) || !is.null(dim(value))) {
      stop("set$", column, " must be a single value or a vector with one value per edited cell.",
           call. = FALSE)
    }
    if (anyNA(value)) stop("set$", column, " contains NA.", call. = FALSE)
    if (length(value) != 1L && length(value) != n_cells) {
      stop("set$", column, " has ", length(value), " values but ", n_cells, " cells are edited; ",
           "give one value or one per edited cell.", call. = FALSE)
    }
    type <- if (is.character(value)) "character" else if (is.logical(value)) "logical" else
      if (is.integer(value)) "integer" else "double"
    if (!(is.character(value) || is.numeric(value) || is.logical(value))) {
      stop("set$", column, " must be character, numeric or logical.", call. = FALSE)
    }
    list(column = column, kind = if (length(value) == 1L) "scalar" else "array", type = type,
         values = .np1(value))
  })
}

#' Counterfactual editing of cells
#'
#' What would these cells look like if their concepts were different? `sccbgm_edit()` encodes
#' each cell (abduction), sets the named concepts to new values (action) and decodes (prediction).
#' It returns the input object with the edited expression added:
#'
#' * **Seurat**: a new assay `name` whose `data` slot (layer) holds the edited log-normalised
#'   expression (cells x the model's genes); DimReduc objects `<name>_concepts` (edited concept
#'   values), `<name>_concepts_factual` (the cells' inferred concepts) and `<name>_unknown`
#'   (unknown factors; the concept names are in `Misc(reduction)$dimension_names`); metadata
#'   columns `<name>_<column>` with the edited concept values.
#' * **SingleCellExperiment**: assay `name` when the model's genes are the object's genes (in
#'   order), otherwise an `altExp` `name` with a `logcounts` assay; `reducedDims` as above (with
#'   the concept names as column names); `colData` columns `<name>_<column>`.
#'
#' An ensemble model (`sccbgm_fit(..., n_members = K)`, K > 1) returns the members' mean edit
#' in `name` and its per-cell uncertainty as three more matrices (genes x cells, log-normalised
#' units): `<name>_edit_sd` (sd over members of the predicted change), `<name>_edit_lower` and
#' `<name>_edit_upper` (a 90\% interval of the edited expression; see the package's
#' docs/uncertainty.md for its calibration). Seurat: assays of those names (`data` slot); SCE:
#' assays of those names, or, when the edit went to an altExp, assays `edit_sd`, `edit_lower`,
#' `edit_upper` of that altExp. How they were computed is in the record (`uncertainty_*`).
#'
#' The factual metadata columns and the input assays are left unchanged. With `cells`, the
#' returned object holds the selected cells only.
#'
#' **Large edits** are not brought into R's memory: Python writes the edited expression to an
#' `.h5ad` file (a dense float32 cells x genes HDF5 dataset `X`, chunked by cells) and the new
#' assay is an HDF5-backed `DelayedArray` on it (`HDF5Array::HDF5Array(file, "X")`, the genes x
#' cells view of the same data, nothing copied). This happens when `out` is given, when
#' `backed = TRUE`, and by default when the edit has more than
#' `getOption("sccbgm.backed_threshold", 5e7)` values (edited cells x model genes; 5e7 doubles
#' are 400 MB as an R matrix), \pkg{HDF5Array} is installed and the object can hold such an
#' assay: a SingleCellExperiment, or a Seurat object with SeuratObject >= 5 (an `Assay5`;
#' Seurat 4 assays hold in-memory matrices only, so there the edit stays in memory, with a
#' message). Without `out` the file is a temporary file, deleted when the R session ends: pass
#' `out` to keep the object usable in a later session (`saveRDS()` stores the path, not the
#' values). The path is recorded in the edit record (`file`).
#'
#' @param object A `Seurat` or `SingleCellExperiment` with (at least) the model's genes, holding
#'   the same kind of values (counts or log-normalised) as at fit time.
#' @param model An `sccbgm_model` ([sccbgm_fit()], [sccbgm_load()]), the second argument:
#'   `sccbgm_edit(model, object)` (the Python API's order) is an error that says so.
#' @param set Named list `list(column = value)`: a category of a categorical concept
#'   (`list(stim = "STIM")`), 0/1 or `FALSE`/`TRUE` for a binary one, a number in the column's
#'   units for a continuous one, or a vector with one value per edited cell.
#' @param ... Further named options of the Python `sccbgm.edit()`, e.g. `count_edit = "none"`
#'   for the additive edit of log expression instead of the count-space edit (`"mean"`, the
#'   default of a scCBGM fitted on counts) or `count_edit = "sample"`, `shift_unknown = FALSE`,
#'   `group_calibration = FALSE` (a model fitted with `groupby`: skip its per-group correction;
#'   the record's `group_calibration_n_cells` says how many cells were corrected,
#'   `group_calibration_n_cells_pooled` how many of them by the pooled correction,
#'   `group_calibration_n_cells_unseen_group` how many cells have a group not in the training
#'   data, which keep the model's edit), `share_response = FALSE` (a model fitted with
#'   `groupby`: each cell keeps its own predicted rate ratio instead of its group's mean; or a
#'   metadata column whose groups share it; the record's `shared_response_n_cells` and
#'   `shared_response_n_groups` say how many cells and groups shared one).
#' @param residual `TRUE`: residual-preserving edit (the model's predicted change added to the
#'   observed cell); `FALSE`: the decoder output; `NULL`: the model's default.
#' @param cells Cells to edit: names, a logical vector or indices (default all).
#' @param assay,layer The expression matrix, as in [sccbgm_fit()]. `layer = NULL` (default)
#'   takes the kind the model was fitted on: `"counts"` for a model fitted on raw counts,
#'   `"data"` (Seurat) or `"logcounts"` (SCE) for one fitted on log-normalised values.
#' @param name Name of the new assay / altExp and prefix of the reductions and metadata columns.
#' @param backed `TRUE`: return the edited expression as an HDF5-backed `DelayedArray` (see
#'   Details); `FALSE`: as an in-memory matrix; `NULL` (default): backed above the size
#'   threshold when possible.
#' @param out Path of the `.h5ad` file to write the edit to (implies `backed = TRUE`); it must
#'   not exist. `NULL`: a temporary file when backed.
#' @return The object (subset to `cells`) with the edit added, see Details.
#' @seealso [sccbgm_fit()], [sccbgm_evaluate()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 200, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, c("concept_0", "cell_type"), seed = 1, epochs = 3,
#'                       hidden_dim = 32, latent_dim = 8, unknown_dim = 8, n_pcs = 10)
#'   edited <- sccbgm_edit(sce, model, set = list(concept_0 = 1))
#'   SummarizedExperiment::assayNames(edited)
#'   SingleCellExperiment::reducedDimNames(edited)
#' }
setGeneric("sccbgm_edit", function(object, model, set, ..., residual = NULL, cells = NULL,
                                   assay = NULL, layer = NULL, name = "sccbgm", backed = NULL,
                                   out = NULL)
  standardGeneric("sccbgm_edit"), signature = "object")

.edit_object <- function(object, model, set, ..., residual = NULL, cells = NULL, assay = NULL,
                         layer = NULL, name = "sccbgm", backed = NULL, out = NULL) {
  args <- .object_and_model(object, model, "sccbgm_edit")
  object <- args$object
  model <- args$model
  .check_string(name, "name", null_ok = FALSE)
  cells <- .cells_arg(object, cells)
  n_edit <- if (is.null(cells)) ncol(object) else length(cells)
  set_entries <- .set_spec(set, n_edit)
  out <- .backed_output(object, backed, out, n_edit, length(model$genes))
  options <- .py_options(...)
  options$residual <- if (is.null(residual)) NULL else isTRUE(residual)
  layer <- .default_layer(object, layer, model$input_kind, assay)
  share <- if (is.character(options$share_response)) options$share_response else NULL
  if (!is.null(share)) {
    .check_string(share, "share_response", null_ok = FALSE)
    .check_columns(object, share, arg = "share_response", what = "share_response")
  }
  spec <- .engine_spec(object, assay, layer, unique(c(model$concepts, model$groupby, share)))
  res <- .r(.py_call(.bridge()$edit(model$py, spec, set_entries,
                                    cells = if (is.null(cells)) NULL else .np_chr(cells),
                                    options = options, out = out)))
  out_cells <- .chr(res$obs_names)
  genes <- .chr(res$var_names)
  concept_names <- .chr(res$concept_names)
  object <- .subset_cells(object, out_cells)
  m <- if (identical(res$X$kind, "h5ad")) {
    .h5ad_matrix(res$X, rownames = genes, colnames = out_cells)
  } else {
    .matrix_from_spec(res$X, rownames = genes, colnames = out_cells)
  }
  object <- .add_expression(object, name, m)
  for (layer_name in names(res$uncertainty)) {
    u_spec <- res$uncertainty[[layer_name]]
    u <- if (identical(u_spec$kind, "h5ad")) {
      .h5ad_matrix(u_spec, rownames = genes, colnames = out_cells)
    } else {
      .matrix_from_spec(u_spec, rownames = genes, colnames = out_cells)
    }
    object <- .add_expression(object, name, u, layer_name)
  }
  object <- .add_embedding(object, paste0(name, "_concepts"),
                           .embedding_from_spec(res$concepts_edited, out_cells),
                           concept_names, "concepts", name)
  object <- .add_embedding(object, paste0(name, "_concepts_factual"),
                           .embedding_from_spec(res$concepts_factual, out_cells),
                           concept_names, "factual", name)
  unknown <- .embedding_from_spec(res$unknown, out_cells)
  object <- .add_embedding(object, paste0(name, "_unknown"), unknown,
                           paste0("unknown_", seq_len(ncol(unknown %||% matrix(0, 0, 0)))),
                           "unknown", name)
  edited <- .frame_from_spec(res$obs, out_cells)
  if (ncol(edited)) colnames(edited) <- paste0(name, "_", colnames(edited))
  object <- .add_meta(object, edited)
  record <- c(list(set = set, concept_names = concept_names, layer = layer, file = out), res$info)
  if (length(res$uncertainty_info)) {
    record <- c(record, stats::setNames(res$uncertainty_info, paste0("uncertainty_", names(res$uncertainty_info))))
  }
  .add_record(object, name, record)
}

#' @rdname sccbgm_edit
setMethod("sccbgm_edit", "SingleCellExperiment", .edit_object)
#' @rdname sccbgm_edit
setMethod("sccbgm_edit", "Seurat", .edit_object)
setMethod("sccbgm_edit", "ANY", function(object, model, set, ..., residual = NULL, cells = NULL,
                                         assay = NULL, layer = NULL, name = "sccbgm", backed = NULL,
                                         out = NULL) {
  .not_an_object("sccbgm_edit", object)
})

# Where a backed edit goes: NULL (in memory) or the .h5ad path (see sccbgm_edit, Details).
.backed_output <- function(object, backed, out, n_cells, n_genes) {
  if (!is.null(backed) && !(is.logical(backed) && length(backed) == 1L && !is.na(backed))) {
    stop("`backed` must be TRUE, FALSE or NULL.", call. = FALSE)
  }
  if (!is.null(out)) {
    .check_string(out, "out", null_ok = FALSE)
    if (isFALSE(backed)) {
      stop("`out` writes the edit to a file and returns it HDF5-backed; it cannot be combined ",
           "with backed = FALSE.", call. = FALSE)
    }
    if (file.exists(out)) {
      stop("'", out, "' exists; remove it or choose another `out` (an edit never overwrites ",
           "a file).", call. = FALSE)
    }
    backed <- TRUE
  }
  size <- as.numeric(n_cells) * n_genes
  if (is.null(backed)) {
    threshold <- getOption("sccbgm.backed_threshold", 5e7)
    if (size <= threshold) return(NULL)
    why <- .backed_problem(object)
    if (!is.null(why)) {
      message(sprintf(paste0("sccbgm_edit: the edit (%s cells x %s genes, %.1f GB as an R ",
                             "matrix) is held in memory: %s."),
                      format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
                      size * 8 / 1e9, why))
      return(NULL)
    }
    backed <- TRUE
  }
  if (!backed) return(NULL)
  why <- .backed_problem(object)
  if (!is.null(why)) stop("backed = TRUE is not possible: ", why, ".", call. = FALSE)
  normalizePath(out %||% tempfile("sccbgm-edit-", fileext = ".h5ad"), mustWork = FALSE)
}

# NULL when `object` can hold an HDF5-backed assay, else why not.
.backed_problem <- function(object) {
  if (!requireNamespace("HDF5Array", quietly = TRUE)) {
    return(paste0("HDF5-backed results need the Bioconductor package HDF5Array (Debian: ",
                  "apt install r-bioc-hdf5array; else BiocManager::install(\"HDF5Array\"))"))
  }
  if (.is_seurat(object) && !.seurat5()) {
    return(paste0("Seurat 4 assays (SeuratObject ", utils::packageVersion("SeuratObject"),
                  ") hold in-memory matrices only; SeuratObject >= 5 or a ",
                  "SingleCellExperiment (Seurat::as.SingleCellExperiment) can hold an ",
                  "HDF5-backed DelayedArray"))
  }
  NULL
}

#' Concepts and unknown factors of cells
#'
#' Encodes cells with a fitted model and adds the predicted concepts (probabilities for binary
#' concepts, values scaled to \[0, 1\] for continuous ones), the unknown factors and the latent
#' representation as `<name>_concepts`, `<name>_unknown` and `<name>_latent`: DimReduc objects of
#' a Seurat object (concept names in `Misc(reduction)$dimension_names`) or `reducedDims` of a
#' SingleCellExperiment.
#'
#' @inheritParams sccbgm_edit
#' @param name Prefix of the reductions.
#' @return The object with the reductions added.
#' @seealso [sccbgm_edit()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 200, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, "concept_0", seed = 1, epochs = 3,
#'                       hidden_dim = 32, latent_dim = 8, unknown_dim = 8, n_pcs = 10)
#'   sce <- sccbgm_encode(sce, model)
#'   head(SingleCellExperiment::reducedDim(sce, "sccbgm_concepts"))
#' }
setGeneric("sccbgm_encode", function(object, model, assay = NULL, layer = NULL, name = "sccbgm")
  standardGeneric("sccbgm_encode"), signature = "object")

.encode_object <- function(object, model, assay = NULL, layer = NULL, name = "sccbgm") {
  args <- .object_and_model(object, model, "sccbgm_encode")
  object <- args$object
  model <- args$model
  .check_string(name, "name", null_ok = FALSE)
  layer <- .default_layer(object, layer, model$input_kind, assay)
  spec <- .engine_spec(object, assay, layer, character())
  res <- .r(.py_call(.bridge()$encode(model$py, spec)))
  cells <- .chr(res$obs_names)
  concepts <- .embedding_from_spec(res$concepts, cells)
  used <- .reduction_assay(object, assay)
  object <- .add_embedding(object, paste0(name, "_concepts"), concepts,
                           .chr(res$concept_names), "concepts", name, used)
  unknown <- .embedding_from_spec(res$unknown, cells)
  object <- .add_embedding(object, paste0(name, "_unknown"), unknown,
                           paste0("unknown_", seq_len(ncol(unknown))), "unknown", name, used)
  latent <- .embedding_from_spec(res$latent, cells)
  .add_embedding(object, paste0(name, "_latent"), latent,
                 paste0("latent_", seq_len(ncol(latent))), "latent", name, used)
}

#' @rdname sccbgm_encode
setMethod("sccbgm_encode", "SingleCellExperiment", .encode_object)
#' @rdname sccbgm_encode
setMethod("sccbgm_encode", "Seurat", .encode_object)
setMethod("sccbgm_encode", "ANY", function(object, model, assay = NULL, layer = NULL, name = "sccbgm") {
  .not_an_object("sccbgm_encode", object)
})

#' Save and load models
#'
#' `sccbgm_save()` writes a fitted model to one file (safetensors weights plus a JSON header, no
#' pickle); `sccbgm_load()` reads it. The file is the one `sccbgm.save()` / `sccbgm.load()`
#' write and read in Python, so models move freely between R and Python.
#'
#' @param model An `sccbgm_model`.
#' @param path File path.
#' @return `sccbgm_save()`: the normalised path, invisibly. `sccbgm_load()`: an `sccbgm_model`.
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 200, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, "concept_0", seed = 1, epochs = 3,
#'                       hidden_dim = 32, latent_dim = 8, unknown_dim = 8, n_pcs = 10)
#'   path <- tempfile(fileext = ".sccbgm")
#'   sccbgm_save(model, path)
#'   sccbgm_load(path)
#' }
sccbgm_save <- function(model, path) {
  .check_model(model)
  .check_string(path, "path", null_ok = FALSE)
  invisible(.r(.py_call(.bridge()$save(model$py, path.expand(path)))))
}

#' @rdname sccbgm_save
#' @export
sccbgm_load <- function(path) {
  .check_string(path, "path", null_ok = FALSE)
  .new_model(.py_call(.bridge()$load(path.expand(path))))
}
