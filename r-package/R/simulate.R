#' Simulate single-cell data with known concepts
#'
#' Runs the `sccbgm` Python simulator (`sccbgm.simulate()`, the paper's Eq. 40-43) and returns
#' its cells as a SingleCellExperiment: integer counts in the `counts` assay, the cell metadata
#' (`batch`, `tissue`, `cell_type` factors and binary concepts `concept_0`, `concept_1`, ... as
#' integers) in `colData`.
#'
#' With `counterfactual`, the data also hold what every cell would have looked like with those
#' concept values: the exact counterfactual counts (`sccbgm.simulate_counterfactual()`: the same
#' cell with the same noise, only the named concepts changed) in the assay
#' `counterfactual_counts`, and the concept values used in `colData` columns
#' `counterfactual_<concept>`. They are the ground truth for judging an edit cell by cell.
#'
#' @param preset Simulation preset, e.g. `"synthetic1"`.
#' @param n_cells,n_genes,n_concepts Sizes; `NULL` uses the preset's.
#' @param seed Random seed.
#' @param counterfactual Optional named list of concept values, e.g. `list(concept_0 = 1)`: add
#'   the true counterfactual counts of every cell under them (see Details).
#' @param ... Further named options of `sccbgm.simulate()`.
#' @return A `SingleCellExperiment`.
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 100, n_genes = 50, seed = 1)
#'   sce
#'   table(sce$concept_0)
#'   # with the ground truth of an edit
#'   sce <- sccbgm_simulate(n_cells = 100, n_genes = 50, seed = 1,
#'                          counterfactual = list(concept_0 = 1))
#'   SummarizedExperiment::assayNames(sce)
#' }
sccbgm_simulate <- function(preset = "synthetic1", n_cells = NULL, n_genes = NULL,
                            n_concepts = NULL, seed = 0, counterfactual = NULL, ...) {
  .check_string(preset, "preset", null_ok = FALSE)
  options <- c(list(preset = preset, n_cells = .py_scalar(n_cells),
                    n_genes = .py_scalar(n_genes), n_concepts = .py_scalar(n_concepts),
                    seed = .py_scalar(seed)), .py_options(...))
  options <- Filter(Negate(is.null), options)
  truth <- if (is.null(counterfactual)) NULL else
    .set_spec(counterfactual, if (is.null(n_cells)) 1L else n_cells)
  spec <- .r(.py_call(.bridge()$simulate(options = options, counterfactual = truth)))
  .sce_from_spec(spec, X_name = spec$X_name %||% "counts")
}
