# The tools: validate (trust report), sweep (dose response), search_concepts (pathway search).
# Thin wrappers: the data go to Python as plain arrays, the numerics run in sccbgm.tools.

# a tool's table spec -> data.frame with the text attributes
.tool_table <- function(res) {
  out <- .frame_from_spec(res, .chr(res$row_names))
  rownames(out) <- NULL
  for (nm in names(res$texts)) attr(out, nm) <- as.character(res$texts[[nm]])
  for (nm in names(res$frames)) {
    frame <- .frame_from_spec(res$frames[[nm]]$spec, as.character(seq_len(res$frames[[nm]]$n)))
    rownames(frame) <- NULL
    attr(out, nm) <- frame
  }
  out
}

.check_plot_path <- function(plot) {
  if (is.null(plot)) return(NULL)
  .check_string(plot, "plot", null_ok = FALSE)
  path.expand(plot)
}

.check_count <- function(x, arg, min = 1L) {
  if (!is.numeric(x) || length(x) != 1L || is.na(x) || x < min || x != round(x)) {
    stop("`", arg, "` must be a whole number >= ", min, ".", call. = FALSE)
  }
  as.integer(x)
}

#' Trust report: does the model beat the trivial editors on your own data?
#'
#' For every group (e.g. each cell type) in which both the source state and the edited state of
#' `edit` are observed with at least `min_cells` cells, `sccbgm_validate()` holds that group's
#' edited-state cells out, fits a model on every other cell, edits the group's source cells and
#' scores them against the real held-out cells, next to two trivial floors: *no edit* and the
#' *mean shift seen in the other groups*. Scores (lower is better): `rmmd`, `rfid`, `rsd`
#' (distance to the real cells over the distance of the closest training population, on 50
#' principal components) and `mean_dist` (distance of the mean profiles over the log-normalised
#' genes); `pearson_delta` (higher is better) is the correlation of the predicted and real mean change,
#' `response_share` the share of the real mean change the edit reproduces (1 = in full).
#' The Python function `sccbgm.validate()` does the work.
#'
#' @param object A `Seurat` or `SingleCellExperiment` object.
#' @param concepts Metadata columns to fit on; must include the columns of `edit`.
#' @param edit Named list `list(column = edited value)`, e.g. `list(condition = "stim")`.
#' @param group Metadata column whose values are validated one at a time, e.g. `"cell_type"`.
#' @param ... Further options of `sccbgm.fit()`, e.g. `epochs = 30`, `n_pcs = 32`,
#'   `groupby = "cell_type"`: pass the options you fit with, so that the report scores the edit
#'   you use (on raw counts: the default count-space edit; see [sccbgm_fit()]).
#' @param source Named list of the source state (default: the one other value of each edited
#'   column).
#' @param groups Only these values of `group` (default: every eligible one).
#' @param min_cells Minimum source and edited-state cells of an eligible group.
#' @param seed Integer seed of the fits.
#' @param assay,layer The expression matrix, as in [sccbgm_fit()].
#' @param plot Optional path of a PNG file for the bar plot of the scores.
#' @param progress Print a line per group.
#' @return A `data.frame` with one row per eligible group x editor (`"scCBGM"`, `"no edit"`,
#'   `"mean shift (other types)"`) and columns `group`, `editor`, `n_source`, `n_target`, `rmmd`,
#'   `rfid`, `rsd`, `mean_dist`, `pearson_delta`, `response_share`, `closest_mmd`, `fit_seconds`,
#'   `model_beats_floors`.
#'   `attr(, "verdict")` says in words on which groups the model beat both floors;
#'   `attr(, "skipped")` lists the groups that were not eligible and why.
#' @seealso [sccbgm_sweep()], [sccbgm_search_concepts()], [sccbgm_evaluate()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 400, n_genes = 60, seed = 1)
#'   res <- sccbgm_validate(sce, c("concept_0", "cell_type"), list(concept_0 = 1), "cell_type",
#'                          groups = "celltype_0", epochs = 3, n_pcs = 10)
#'   res[, c("group", "editor", "rmmd", "mean_dist")]
#'   cat(attr(res, "verdict"), "\n")
#' }
sccbgm_validate <- function(object, concepts, edit, group, ..., source = NULL, groups = NULL,
                            min_cells = 10L, seed = 0L, assay = NULL, layer = NULL, plot = NULL,
                            progress = interactive()) {
  .check_object(object)
  .check_string(group, "group", null_ok = FALSE)
  .check_columns(object, c(concepts, group), "concepts")
  edit_spec <- .set_spec(edit, 1L)
  source_spec <- if (is.null(source)) NULL else .set_spec(source, 1L)
  .check_columns(object, names(edit), "edit")
  options <- .py_options(...)
  options$groups <- if (is.null(groups)) NULL else .np_chr(groups)
  options$min_cells <- .check_count(min_cells, "min_cells", 2L)
  options$seed <- .py_scalar(seed)
  options$plot <- .check_plot_path(plot)
  options$progress <- isTRUE(progress)
  groupby <- list(...)$groupby  # a fit option that names a column: it travels with the concepts
  if (!is.null(groupby)) .check_columns(object, groupby, "groupby")
  spec <- .engine_spec(object, assay, .default_layer(object, layer, assay = assay),
                       unique(c(concepts, group, names(edit), groupby)))
  res <- .r(.py_call(.bridge()$validate(spec, .np_chr(concepts), edit_spec, group,
                                        source_spec = source_spec, options = options)))
  out <- .tool_table(res)
  skipped <- attr(out, "skipped")
  attr(out, "skipped") <- stats::setNames(as.character(skipped$reason), as.character(skipped$group))
  out
}

#' Dose response: edit cells along one concept
#'
#' `sccbgm_sweep()` edits the cells to each value of `values` of one concept (for example a
#' pathway activity between 0 and 1) and returns, per group and gene, the mean edited
#' log-normalised expression (`mean`) and its change from the unedited cells (`change`). When the
#' model's edits carry an ensemble's per-cell uncertainty, `sd` is its mean over the group's
#' cells (else `NA`). The Python function `sccbgm.sweep()` does the work.
#'
#' @param object A `Seurat` or `SingleCellExperiment` with the model's genes.
#' @param model An `sccbgm_model` ([sccbgm_fit()], [sccbgm_load()]).
#' @param concept The concept (metadata column) to sweep.
#' @param values At least two values in the column's units (numbers, 0/1, or categories).
#' @param ... Further options of `sccbgm.sweep()`.
#' @param group Optional metadata column: one curve per value of it.
#' @param cells Cells to edit: names, a logical vector or indices (default all).
#' @param genes Only these genes in the table (default all of the model's genes).
#' @param residual As in [sccbgm_edit()].
#' @param n_top How many of the most responsive genes `attr(, "top_genes")` (and the plot) hold.
#' @param assay,layer The expression matrix, as in [sccbgm_edit()].
#' @param plot Optional path of a PNG file for the response curves of the top genes.
#' @return A `data.frame` with one row per group x value x gene: `group`, `value`, `gene`, `mean`,
#'   `change`, `sd`, `n_cells`; `attr(, "top_genes")`: the genes responding most.
#' @seealso [sccbgm_validate()], [sccbgm_edit()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 300, n_genes = 60, seed = 1)
#'   model <- sccbgm_fit(sce, c("concept_0", "cell_type"), seed = 1, epochs = 3, n_pcs = 10)
#'   res <- sccbgm_sweep(sce, model, "concept_0", c(0, 1), group = "cell_type")
#'   head(res)
#'   attr(res, "top_genes")
#' }
sccbgm_sweep <- function(object, model, concept, values, ..., group = NULL, cells = NULL,
                         genes = NULL, residual = NULL, n_top = 10L, assay = NULL, layer = NULL,
                         plot = NULL) {
  args <- .object_and_model(object, model, "sccbgm_sweep")
  object <- args$object
  model <- args$model
  .check_string(concept, "concept", null_ok = FALSE)
  .check_string(group, "group")
  if (is.factor(values)) values <- as.character(values)
  if (!is.atomic(values) || length(values) < 2L || anyNA(values)) {
    stop("`values` must be a vector of at least two values (no NA).", call. = FALSE)
  }
  if (!is.null(group)) .check_columns(object, group, "group")
  cells <- .cells_arg(object, cells)
  options <- .py_options(...)
  options$group <- group
  options$genes <- if (is.null(genes)) NULL else .np_chr(genes)
  options$residual <- if (is.null(residual)) NULL else isTRUE(residual)
  options$n_top <- .check_count(n_top, "n_top")
  options$plot <- .check_plot_path(plot)
  layer <- .default_layer(object, layer, model$input_kind, assay)
  spec <- .engine_spec(object, assay, layer, unique(c(model$concepts, group)))
  py_values <- if (is.character(values)) .np_chr(values) else .np1(as.double(values))
  res <- .r(.py_call(.bridge()$sweep(model$py, spec, concept, py_values,
                                     cells = if (is.null(cells)) NULL else .np_chr(cells),
                                     options = options)))
  out <- .tool_table(res)
  attr(out, "top_genes") <- .chr(res$top_genes)
  out
}

# source / target of sccbgm_search_concepts -> selection spec for bridge._cells_selection
.selection_spec <- function(object, x, arg) {
  if (is.list(x) && !is.data.frame(x)) {
    if (!length(x) || is.null(names(x)) || any(!nzchar(names(x))) ||
        any(vapply(x, function(v) !is.atomic(v) || length(v) != 1L || is.na(v), logical(1)))) {
      stop("`", arg, "` as a list must be named, one value per metadata column, e.g. ",
           "list(condition = \"ctrl\").", call. = FALSE)
    }
    .check_columns(object, names(x), arg)
    return(list(kind = "selector", columns = .np_chr(names(x)),
                values = .np_chr(vapply(x, as.character, character(1)))))
  }
  if (is.null(x)) stop("`", arg, "` is required.", call. = FALSE)
  list(kind = "cells", names = .np_chr(.cells_arg(object, x)))
}

#' Which pathway edits move source cells toward target cells?
#'
#' The paper's case study (section 5.3), automated. `sccbgm_search_concepts()` scores PROGENy
#' pathway activities on all cells (decoupler), ranks the pathways that separate the `source`
#' cells from the `target` cells, fits a model with the top pathways as continuous concepts (plus
#' `concepts`), edits the source cells along the top pathways singly and in combination (each to
#' the target cells' mean activity) and ranks the edits by how close the edited cells come to the
#' target cells: `rmmd` (lower is better) and `marker_recovered` / `marker_r` (the share of the
#' marker genes' mean difference reproduced, and the correlation of the changes; higher is
#' better). The unedited cells are a row (`"(no edit)"`). The Python function
#' `sccbgm.search_concepts()` does the work.
#'
#' Do not give, in `concepts`, a column that *is* the source / target difference (such as the
#' condition): it would explain the difference instead of the pathways.
#'
#' @param object A `Seurat` or `SingleCellExperiment` with gene symbols as row names.
#' @param source,target The two cell sets: a named list selecting cells by metadata
#'   (`list(cell_type = "CD14+Mono", condition = "ctrl")`), a logical vector, names or indices.
#' @param ... Further options of `sccbgm.fit()`, e.g. `epochs = 30`.
#' @param concepts Further concept columns of the model, e.g. `"cell_type"`.
#' @param pathways `"progeny"`, or metadata columns already holding pathway activities.
#' @param organism `"human"` or `"mouse"` (PROGENy weights).
#' @param weights Optional PROGENy weights CSV (`source,target,weight`).
#' @param n_pathways How many of the most separating pathways are edited singly.
#' @param n_combine Combinations of the top `n_combine` pathways are edited too.
#' @param seed Integer seed of the fit.
#' @param assay,layer The expression matrix, as in [sccbgm_fit()].
#' @param plot Optional path of a PNG file for the ranked edits.
#' @param progress Print progress lines.
#' @return A `data.frame`, best edit first: `pathway` (a pathway, a combination `"A + B"` or
#'   `"(no edit)"`), `rank`, `rmmd`, `mmd`, `marker_recovered`, `marker_r`, `n_pathways`,
#'   `values`. `attr(, "separation")`: every pathway's Cohen's d (target - source);
#'   `attr(, "report")`: a short text; `attr(, "markers")`: the marker genes;
#'   `attr(, "activities")`: the scaled pathway activities of every cell (cells x pathways,
#'   columns `progeny_<pathway>` for PROGENy); `attr(, "model")`: the fitted `sccbgm_model`,
#'   whose pathway concepts [sccbgm_sweep()] can sweep.
#' @seealso [sccbgm_sweep()], [sccbgm_validate()]
#' @export
sccbgm_search_concepts <- function(object, source, target, ..., concepts = character(),
                                   pathways = "progeny", organism = "human", weights = NULL,
                                   n_pathways = 5L, n_combine = 3L, seed = 0L, assay = NULL,
                                   layer = NULL, plot = NULL, progress = interactive()) {
  .check_object(object)
  if (length(concepts)) .check_columns(object, concepts, "concepts")
  if (!is.character(pathways) || !length(pathways) || anyNA(pathways)) {
    stop("`pathways` must be \"progeny\" or metadata column names.", call. = FALSE)
  }
  progeny <- identical(pathways, "progeny")
  if (!progeny) .check_columns(object, pathways, "pathways", "pathway")
  .check_string(organism, "organism", null_ok = FALSE)
  src <- .selection_spec(object, source, "source")
  tgt <- .selection_spec(object, target, "target")
  options <- .py_options(...)
  options$concepts <- .np_chr(concepts)
  options$pathways <- if (progeny) "progeny" else .np_chr(pathways)
  options$organism <- organism
  options$weights <- if (is.null(weights)) NULL else path.expand(weights)
  options$n_pathways <- .check_count(n_pathways, "n_pathways")
  options$n_combine <- .check_count(n_combine, "n_combine")
  options$seed <- .py_scalar(seed)
  options$plot <- .check_plot_path(plot)
  options$progress <- isTRUE(progress)
  columns <- unique(c(concepts, if (!progeny) pathways,
                      if (identical(src$kind, "selector")) .chr(src$columns),
                      if (identical(tgt$kind, "selector")) .chr(tgt$columns)))
  spec <- .engine_spec(object, assay, .default_layer(object, layer, assay = assay), columns)
  res <- .r(.py_call(.bridge()$search_concepts(spec, src, tgt, options = options)))
  out <- .tool_table(res)
  attr(out, "markers") <- .chr(res$markers)
  attr(out, "activities") <- .frame_from_spec(res$activities$spec, .chr(res$activities$cells))
  attr(out, "model") <- .new_model(res$model)
  out
}
