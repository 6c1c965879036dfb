#' Simulate single-cell data with known concepts
#'
#' Runs the `sccbgm` Python simulator (`sccbgm.simulate()`) and returns its cells as a
#' SingleCellExperiment: integer counts in the `counts` assay, the cell metadata (`batch`,
#' `tissue`, `cell_type` factors and binary concepts `concept_0`, `concept_1`, ... as integers)
#' in `colData`.
#'
#' @param preset Simulation preset, e.g. `"synthetic1"`.
#' @param n_cells,n_genes,n_concepts Sizes; `NULL` uses the preset's.
#' @param seed Random seed.
#' @param ... Further named options of `sccbgm.simulate()`.
#' @return A `SingleCellExperiment`.
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   sce <- sccbgm_simulate(n_cells = 100, n_genes = 50, seed = 1)
#'   sce
#'   table(sce$concept_0)
#' }
sccbgm_simulate <- function(preset = "synthetic1", n_cells = NULL, n_genes = NULL,
                            n_concepts = NULL, seed = 0, ...) {
  .check_string(preset, "preset", null_ok = FALSE)
  options <- c(list(preset = preset, n_cells = .py_scalar(n_cells),
                    n_genes = .py_scalar(n_genes), n_concepts = .py_scalar(n_concepts),
                    seed = .py_scalar(seed)), .py_options(...))
  options <- Filter(Negate(is.null), options)
  spec <- .r(.py_call(.bridge()$simulate(options = options)))
  .sce_from_spec(spec, X_name = spec$X_name %||% "counts")
}
