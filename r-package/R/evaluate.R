#' Evaluate predicted counterfactual cells
#'
#' Compares predicted counterfactual cells with the true counterfactual population using the
#' metrics of the `sccbgm` Python package (`sccbgm.evaluate()`): MMD, Frechet distance (FID) and
#' Sinkhorn divergence in a PCA space, their ratios to the closest observed population
#' (`rmmd`, `rfid`, `rsd`, with `reference` and `reference_key`), and cell-level errors against a
#' known `true_counterfactual`.
#'
#' Every input is a `Seurat` object, a `SingleCellExperiment`, a genes x cells matrix (dense or
#' sparse) or a Python AnnData; all must be in the same expression space (e.g. log-normalised
#' the same way; nothing is normalised here) with the same genes (matched by name).
#'
#' @param predicted Predicted counterfactual cells, e.g. the output of [sccbgm_edit()] with
#'   `assay = c(predicted = "sccbgm")` (Seurat) or `layer = c(predicted = "sccbgm")` (SCE).
#' @param target The true counterfactual population.
#' @param reference Optional training cells (without the held-out target) for the PCA and the
#'   ratio denominators.
#' @param reference_key Metadata column(s) of `reference` whose groups are the observed
#'   populations of the ratio metrics, or a vector with one label per reference cell.
#' @param ... Further named options of `sccbgm.evaluate()`, e.g. `metrics = c("mmd", "fid")`,
#'   `n_components = 20`, `max_cells`, `seed`, `label`, `subtype_key`, `true_subtypes`, `k`.
#' @param true_counterfactual Optional true counterfactual of each predicted cell (same cells).
#' @param assay Seurat assay of the inputs: one string for all, or a named character vector
#'   (names among `predicted`, `target`, `reference`, `true_counterfactual`). Default: the
#'   default assay.
#' @param layer Which matrix: a Seurat slot / layer or an SCE assay; one string or a named
#'   vector as for `assay`. Default: `"data"` (Seurat) and `"logcounts"` (SCE).
#' @return A `data.frame` with one row per metric (columns `metric`, `value`, `numerator`,
#'   `denominator`, `closest_population`, `space`, ...); the settings used (PCA components,
#'   bandwidth, epsilon, ...) are in `attr(, "settings")`.
#' @seealso [sccbgm_edit()]
#' @export
#' @examples
#' if (sccbgm_available()) {
#'   set.seed(1)
#'   genes <- paste0("g", 1:20)
#'   a <- matrix(rexp(20 * 60), 20, 60, dimnames = list(genes, paste0("a", 1:60)))
#'   b <- matrix(rexp(20 * 50, 0.8), 20, 50, dimnames = list(genes, paste0("b", 1:50)))
#'   sccbgm_evaluate(a, b, metrics = c("mmd", "fid"), n_components = 5)
#' }
sccbgm_evaluate <- function(predicted, target, reference = NULL, reference_key = NULL, ...,
                            true_counterfactual = NULL, assay = NULL, layer = NULL) {
  inputs <- list(predicted = predicted, target = target, reference = reference,
                 true_counterfactual = true_counterfactual)
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
                                        options = options)))
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
