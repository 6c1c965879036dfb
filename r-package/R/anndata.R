# SingleCellExperiment / Seurat <-> Python AnnData, through the explicit specs of R/convert.R.

#' Convert between SingleCellExperiment / Seurat and Python AnnData
#'
#' Loss-free converters between R single-cell objects and Python `anndata.AnnData` objects
#' (reticulate references), built on the same explicit data movement as the rest of the package
#' (no reticulate automatic conversion of sparse matrices, factors or missing values):
#' sparse matrices travel as `dgCMatrix` slots, integer matrices stay integer, factors keep all
#' their levels (unused ones too) and `NA`s travel as masks.
#'
#' * `sce_to_anndata()`: assay `X_name` (default: the first assay) becomes `X`, the other
#'   assays `layers`; `colData` -> `obs`, `rowData` -> `var`, `reducedDims` -> `obsm` (same
#'   names; column names kept in `uns["sccbgm_r"]`). `altExps` and `metadata` are not carried.
#' * `anndata_to_sce()`: the inverse; `X` becomes the assay named `X_name` (default: the name
#'   recorded by `sce_to_anndata()`, else `"X"`).
#' * `seurat_to_anndata()`: the `layers` of one assay (default `counts` and `data`; the first
#'   non-empty one becomes `X`), `meta.data` -> `obs`, reductions -> `obsm` (cell embeddings).
#'   Not carried: `scale.data`, variable features, loadings, graphs, `Idents()`, commands.
#' * `anndata_to_seurat()`: the inverse; `X` becomes layer `X_name` (default: the recorded name,
#'   else `"counts"`), `layers` named `counts` / `data` the corresponding layers.
#'
#' R matrices are genes x cells, AnnData cells x genes; the transposition is part of the
#' conversion.
#'
#' @param sce A `SingleCellExperiment`.
#' @param object A `Seurat` object.
#' @param adata A Python AnnData (e.g. from [reticulate::import()] `("anndata")$read_h5ad()`),
#'   or the path of an `.h5ad` file.
#' @param X_name The assay / layer that becomes (or came from) AnnData's `X`.
#' @param assay Seurat assay (default: the default assay; for `anndata_to_seurat()` the name of
#'   the assay to create, default `"RNA"`).
#' @param layers Seurat layers (slots) to transfer.
#' @param project Seurat project name.
#' @return `sce_to_anndata()`, `seurat_to_anndata()`: a Python AnnData (reticulate object, not
#'   converted). `anndata_to_sce()`: a `SingleCellExperiment`. `anndata_to_seurat()`: a `Seurat`.
#' @name anndata-conversion
#' @examples
#' if (sccbgm_available()) {
#'   counts <- matrix(rpois(200, 3), 20, 10,
#'                    dimnames = list(paste0("gene", 1:20), paste0("cell", 1:10)))
#'   sce <- SingleCellExperiment::SingleCellExperiment(list(counts = counts))
#'   sce$group <- factor(rep(c("a", "b"), 5), levels = c("a", "b", "unused"))
#'   adata <- sce_to_anndata(sce)
#'   adata
#'   back <- anndata_to_sce(adata)
#'   identical(levels(back$group), levels(sce$group))
#' }
NULL

#' @rdname anndata-conversion
#' @export
sce_to_anndata <- function(sce, X_name = NULL) {
  if (!.is_sce(sce)) {
    stop("`sce` must be a SingleCellExperiment, not ", .class_name(sce), ".", call. = FALSE)
  }
  an <- SummarizedExperiment::assayNames(sce)
  if (length(SummarizedExperiment::assays(sce)) && (is.null(an) || any(!nzchar(an)))) {
    stop("every assay of `sce` needs a name.", call. = FALSE)
  }
  X_name <- X_name %||% (if (length(an)) an[1] else NULL)
  if (!is.null(X_name) && !X_name %in% an) {
    stop("assay '", X_name, "' not found; assays: ", paste(an, collapse = ", "), ".", call. = FALSE)
  }
  mats <- lapply(stats::setNames(an, an), function(a) {
    .matrix_spec(SummarizedExperiment::assay(sce, a, withDimnames = FALSE), paste0("assay '", a, "'"))
  })
  rd <- SingleCellExperiment::reducedDims(sce)
  obsm <- lapply(as.list(rd), function(e) .matrix_spec(t(as.matrix(e)), "reducedDim"))
  obsm_colnames <- lapply(as.list(rd), function(e) colnames(e))
  obsm_colnames <- lapply(Filter(Negate(is.null), obsm_colnames), .np_chr)
  spec <- list(
    X = if (is.null(X_name)) NULL else mats[[X_name]],
    obs_names = .np_chr(.names_or_index(colnames(sce), ncol(sce))),
    var_names = .np_chr(.names_or_index(rownames(sce), nrow(sce))),
    obs = .frame_spec(SummarizedExperiment::colData(sce)),
    var = .frame_spec(SummarizedExperiment::rowData(sce)),
    layers = .dict(mats[setdiff(an, X_name)]),
    obsm = .dict(obsm),
    obsm_colnames = .dict(obsm_colnames),
    X_name = X_name
  )
  .py_call(.bridge()$anndata_from_spec(spec))
}

# a named list (reaches Python as a dict; an empty one as an empty list, which the bridge reads
# as an empty dict)
.dict <- function(x) {
  if (!length(x)) return(list())
  x
}

.names_or_index <- function(names, n) {
  if (is.null(names)) as.character(seq_len(n) - 1L) else names
}

# AnnData spec (R list) -> SingleCellExperiment
.sce_from_spec <- function(spec, X_name = NULL) {
  cells <- .chr(spec$obs_names)
  genes <- .chr(spec$var_names)
  layers <- spec$layers %||% list()
  mats <- lapply(layers, .matrix_from_spec, rownames = genes, colnames = cells)
  if (!is.null(spec$X)) {
    X_name <- X_name %||% spec$X_name %||% "X"
    mats <- c(stats::setNames(list(.matrix_from_spec(spec$X, genes, cells)), X_name), mats)
  }
  colnames_of <- spec$obsm_colnames %||% list()
  rd <- lapply(stats::setNames(names(spec$obsm), names(spec$obsm)), function(key) {
    e <- .embedding_from_spec(spec$obsm[[key]], cells)
    if (!is.null(colnames_of[[key]])) colnames(e) <- .chr(colnames_of[[key]])
    e
  })
  obs <- .frame_from_spec(spec$obs, cells)
  var <- .frame_from_spec(spec$var, genes)
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = mats,
    colData = S4Vectors::DataFrame(obs, check.names = FALSE),
    rowData = S4Vectors::DataFrame(var, check.names = FALSE)
  )
  if (length(rd)) SingleCellExperiment::reducedDims(sce) <- rd
  dimnames(sce) <- list(genes, cells)
  sce
}

#' @rdname anndata-conversion
#' @export
anndata_to_sce <- function(adata, X_name = NULL) {
  .sce_from_spec(.anndata_spec(adata), X_name)
}

.seurat_layers <- function(object, assay) {
  if (.seurat5()) return(getExportedValue("SeuratObject", "Layers")(object[[assay]]))
  keep <- vapply(c("counts", "data", "scale.data"), function(s) {
    m <- SeuratObject::GetAssayData(object, assay = assay, slot = s)
    nrow(m) > 0L && ncol(m) > 0L
  }, logical(1))
  c("counts", "data", "scale.data")[keep]
}

#' @rdname anndata-conversion
#' @export
seurat_to_anndata <- function(object, assay = NULL, layers = c("counts", "data")) {
  if (!.is_seurat(object)) {
    stop("`object` must be a Seurat object, not ", .class_name(object), ".", call. = FALSE)
  }
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  present <- .seurat_layers(object, assay)
  layers <- intersect(layers, present)
  genes <- rownames(object[[assay]])
  mats <- list()
  for (l in layers) {
    m <- .get_matrix(object, assay, l)
    if (identical(rownames(m), genes)) mats[[l]] <- .matrix_spec(m, paste0("layer '", l, "'"))
  }
  if (!length(mats)) stop("assay '", assay, "' has none of the layers ",
                          paste(layers, collapse = ", "), ".", call. = FALSE)
  X_name <- names(mats)[1]
  cells <- colnames(object)
  red <- SeuratObject::Reductions(object)
  embs <- lapply(stats::setNames(red, red), function(r) SeuratObject::Embeddings(object, r))
  embs <- Filter(function(e) identical(rownames(e), cells), embs)
  spec <- list(
    X = mats[[X_name]],
    obs_names = .np_chr(cells),
    var_names = .np_chr(genes),
    obs = .frame_spec(object[[]]),
    var = .frame_spec(NULL),
    layers = .dict(mats[-1]),
    obsm = .dict(lapply(embs, function(e) .matrix_spec(t(e), "embedding"))),
    obsm_colnames = .dict(lapply(embs, function(e) .np_chr(colnames(e)))),
    X_name = X_name
  )
  .py_call(.bridge()$anndata_from_spec(spec))
}

#' @rdname anndata-conversion
#' @export
anndata_to_seurat <- function(adata, assay = "RNA", X_name = NULL, project = "SeuratProject") {
  .check_string(assay, "assay", null_ok = FALSE)
  spec <- .anndata_spec(adata)
  cells <- .chr(spec$obs_names)
  genes <- .chr(spec$var_names)
  mats <- lapply(spec$layers %||% list(), .matrix_from_spec, rownames = genes, colnames = cells)
  if (!is.null(spec$X)) {
    X_name <- X_name %||% spec$X_name %||% "counts"
    mats[[X_name]] <- .matrix_from_spec(spec$X, genes, cells)
  }
  if (is.null(mats$counts) && is.null(mats$data)) {
    stop("the AnnData has neither X nor a 'counts' / 'data' layer to build a Seurat assay.",
         call. = FALSE)
  }
  a <- .new_seurat_assay(counts = mats$counts, data = mats$data)
  SeuratObject::Key(a) <- .assay_key(assay)
  object <- SeuratObject::CreateSeuratObject(a, assay = assay, project = project)
  obs <- .frame_from_spec(spec$obs, cells)
  object@meta.data <- obs
  colnames_of <- spec$obsm_colnames %||% list()
  for (key in names(spec$obsm)) {
    e <- .embedding_from_spec(spec$obsm[[key]], cells)
    cn <- .chr(colnames_of[[key]])
    rkey <- sub("[0-9]+$", "", cn[1] %||% "")
    if (!length(cn) || !all(grepl("^[[:alnum:]]+_[0-9]+$", cn)) ||
        !all(startsWith(cn, rkey))) {
      rkey <- .reduction_key(key, "")
      cn <- paste0(rkey, seq_len(ncol(e)))
    }
    colnames(e) <- cn
    object[[key]] <- SeuratObject::CreateDimReducObject(embeddings = e, key = rkey, assay = assay)
  }
  object
}
