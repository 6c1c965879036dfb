#' Evaluate predicted counterfactual cells
#'
#' Compares predicted counterfactual cells with the true counterfactual population using the
#' metrics of the `sccbgm` Python package (`sccbgm.evaluate()`): MMD, Frechet distance (FID),
#' Sinkhorn divergence and energy distance (`edist`, as pertpy defines it) in a PCA space, their
#' ratios to the closest observed population (`rmmd`, `rfid`, `rsd`, `redist`, with `reference`
#' and `reference_key`), cell-level errors against a known `true_counterfactual`, and, with the
#' unedited `control` cells, the perturbation-prediction field's metrics (R^2 of the mean,
#' Pearson correlation of the change, DEG direction accuracy).
#'
#' Every input is a `Seurat` object, a `SingleCellExperiment`, a genes x cells matrix (dense or
#' sparse) or a Python AnnData; all must be in the same expression space (e.g. log-normalised
#' the same way; nothing is normalised here) with the same genes (matched by name).
#'
#' Rows returned (`metric` column), by default `metrics = c("mmd", "fid", "sd", "edist")`:
#' \itemize{
#'   \item `mmd`, `fid`, `sd`, `edist`: distance between `predicted` and `target` (lower is better).
#'   \item `rmmd`, `rfid`, `rsd`, `redist` (with `reference` and `reference_key`): that distance
#'     divided by the distance of the closest observed population to `target` (paper Eq. 10; < 1
#'     means closer to the truth than any observed population); `numerator`, `denominator` and
#'     `closest_population` give the parts.
#'   \item `mse_gene`, `mse_pca` (with `true_counterfactual`): cell-level mean squared error.
#'   \item `r2_mean`, `r2_mean_deg`, `pearson_delta`, `pearson_delta_deg`, `response_share`,
#'     `deg_direction_accuracy` (with `control`): R^2 of the gene means of `predicted` vs `target`
#'     (all genes / the top `n_degs` = 20 DEGs of `target` vs `control`, `space = "deg"`), Pearson
#'     correlation of the predicted and the real change from `control`, the share of the real
#'     mean change reproduced (1 = in full, 0 = none), and the fraction of the
#'     top DEGs changed in the real direction (higher is better).
#'   \item `knn_subtype_accuracy` (with `subtype_key` and `true_subtypes`).
#' }
#' Pass `metrics = c("mmd", "fid", "sd")` to skip the energy distance (and `redist`).
#'
#' @param predicted Predicted counterfactual cells, e.g. the output of [sccbgm_edit()] with
#'   `assay = c(predicted = "sccbgm")` (Seurat) or `layer = c(predicted = "sccbgm")` (SCE).
#' @param target The true counterfactual population.
#' @param reference Optional training cells (without the held-out target) for the PCA and the
#'   ratio denominators.
#' @param reference_key Metadata column(s) of `reference` whose groups are the observed
#'   populations of the ratio metrics, or a vector with one label per reference cell.
#' @param ... Further named options of `sccbgm.evaluate()`, e.g.
#'   `metrics = c("mmd", "fid", "sd", "edist")` (the default), `n_components = 20`, `max_cells`,
#'   `seed`, `label`, `subtype_key`, `true_subtypes`, `k`, `n_degs`.
#' @param true_counterfactual Optional true counterfactual of each predicted cell (same cells).
#' @param control Optional unedited cells the prediction started from (e.g. the control cells
#'   that were edited); adds `r2_mean`, `r2_mean_deg`, `pearson_delta`, `pearson_delta_deg`,
#'   `response_share` and `deg_direction_accuracy`.
#' @param assay Seurat assay of the inputs: one string for all, or a named character vector
#'   (names among `predicted`, `target`, `reference`, `true_counterfactual`, `control`).
#'   Default: the default assay.
#' @param layer Which matrix: a Seurat slot / layer or an SCE assay; one string or a named
#'   vector as for `assay`. Default: `"data"` (Seurat) and `"logcounts"` (SCE).
#' @return A `data.frame` with one row per metric (columns `metric`, `value`, `numerator`,
#'   `denominator`, `closest_population`, `space`, `n_predicted`, `n_target`, `label`); the
#'   settings used (PCA components, bandwidth, epsilon, `n_degs`, ...) are in
#'   `attr(, "settings")`.
#' @seealso [sccbgm_edit()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   set.seed(1)
#'   genes <- paste0("g", 1:20)
#'   a <- matrix(rexp(20 * 60), 20, 60, dimnames = list(genes, paste0("a", 1:60)))
#'   b <- matrix(rexp(20 * 50, 0.8), 20, 50, dimnames = list(genes, paste0("b", 1:50)))
#'   ctrl <- matrix(rexp(20 * 40), 20, 40, dimnames = list(genes, paste0("c", 1:40)))
#'   sccbgm_evaluate(a, b, n_components = 5)          # mmd, fid, sd, edist
#'   sccbgm_evaluate(a, b, control = ctrl, metrics = "edist", n_components = 5)
#' }
sccbgm_evaluate <- function(predicted, target, reference = NULL, reference_key = NULL, ...,
                            true_counterfactual = NULL, control = NULL, assay = NULL, layer = NULL) {
  inputs <- list(predicted = predicted, target = target, reference = reference,
                 true_counterfactual = true_counterfactual, control = control)
  specs <- lapply(names(inputs), function(nm) {
    .evaluate_input(inputs[[nm]], nm, .pick(assay, nm), .pick(layer, nm))
  })
  names(specs) <- names(inputs)
  options <- .py_options(...)
  if (!is.null(reference_key)) {
    if (!is.atomic(reference_key) || anyNA(reference_key)) {
      stop("`reference_key` must be metadata column name(s) or one label per reference cell.",
           call. = FALSE)
    }
    options$reference_key <- if (length(reference_key) == 1L) reference_key else
      .np_chr(reference_key)
  }
  res <- .r(.py_call(.bridge()$evaluate(specs$predicted, specs$target, specs$reference,
                                        true_counterfactual = specs$true_counterfactual,
                                        control = specs$control, options = options)))
  out <- .frame_from_spec(res, .chr(res$row_names))
  rownames(out) <- NULL
  attr(out, "settings") <- res$attrs
  out
}

.pick <- function(x, name) {
  if (is.null(x)) return(NULL)
  if (is.null(names(x))) {
    if (length(x) != 1L) stop("give one `assay` / `layer`, or a named vector.", call. = FALSE)
    return(x[[1]])
  }
  if (name %in% names(x)) x[[name]] else NULL
}

# one evaluate input -> AnnData spec (or the Python AnnData itself)
.evaluate_input <- function(x, what, assay, layer) {
  if (is.null(x)) return(NULL)
  if (inherits(x, "python.builtin.object")) return(x)
  if (.is_seurat(x) || .is_sce(x)) {
    layer <- layer %||% .lognorm_layer(x)
    if (.is_sce(x) && !is.null(assay)) {
      stop("`assay` applies to Seurat inputs only; name the SingleCellExperiment assay with ",
           "`layer`.", call. = FALSE)
    }
    m <- .get_matrix(x, assay, layer)
    return(list(X = .matrix_spec(m, paste0("`", what, "` expression matrix")),
                obs_names = .np_chr(colnames(x)), var_names = .np_chr(rownames(m)),
                obs = .frame_spec(.cell_meta(x))))
  }
  if (is.matrix(x) || methods::is(x, "Matrix")) {
    if (is.null(rownames(x))) {
      stop("`", what, "` needs gene (row) names.", call. = FALSE)
    }
    cells <- colnames(x) %||% paste0(what, "_", seq_len(ncol(x)))
    return(list(X = .matrix_spec(x, paste0("`", what, "`")), obs_names = .np_chr(cells),
                var_names = .np_chr(rownames(x))))
  }
  stop("`", what, "` must be a Seurat object, a SingleCellExperiment, a genes x cells matrix ",
       "or a Python AnnData, not ", .class_name(x), ".", call. = FALSE)
}
