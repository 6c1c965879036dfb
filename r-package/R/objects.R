# Seurat / SingleCellExperiment access: which matrix, which metadata, and putting results back.

.is_seurat <- function(x) inherits(x, "Seurat")
.is_sce <- function(x) methods::is(x, "SingleCellExperiment")

# Seurat 5 (SeuratObject >= 5: LayerData / Layers for v3 and v5 assays alike) or Seurat 4
# (slots, GetAssayData)? Detected from the installed SeuratObject, never assumed.
.seurat5 <- function() utils::packageVersion("SeuratObject") >= "5.0.0"

# Should a new assay be a v5 Assay5? Only with SeuratObject >= 5; then like the assay `like`
# (v5 assays are "StdAssay"s) when given, else as SeuratObject's own default for new assays
# (option Seurat.object.assay.version, "v5" unless the user chose "v3").
.use_assay5 <- function(like = NULL) {
  if (!.seurat5()) return(FALSE)
  if (!is.null(like)) return(inherits(like, "StdAssay"))
  !identical(getOption("Seurat.object.assay.version", "v5"), "v3")
}

# A new Seurat assay holding `counts` and / or `data` (genes x cells), v3 or v5 (see above).
.new_seurat_assay <- function(counts = NULL, data = NULL, like = NULL) {
  if (.use_assay5(like)) {
    create <- getExportedValue("SeuratObject", "CreateAssay5Object")
    return(create(counts = counts, data = data))
  }
  if (is.null(counts)) return(SeuratObject::CreateAssayObject(data = data))
  a <- SeuratObject::CreateAssayObject(counts = counts)
  if (!is.null(data)) {
    if (.seurat5()) {
      setter <- getExportedValue("SeuratObject", "LayerData<-")
      a <- setter(a, layer = "data", value = data)
    } else {
      a <- SeuratObject::SetAssayData(a, slot = "data", new.data = data)
    }
  }
  a
}

.check_object <- function(object, arg = "object") {
  if (!.is_seurat(object) && !.is_sce(object)) {
    stop("`", arg, "` must be a Seurat or SingleCellExperiment object, not ",
         .class_name(object), ".", call. = FALSE)
  }
  invisible(object)
}

.check_string <- function(x, arg, null_ok = TRUE) {
  if (is.null(x) && null_ok) return(invisible(x))
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    stop("`", arg, "` must be a single non-empty string.", call. = FALSE)
  }
  invisible(x)
}

# cell metadata of either class, as a data.frame-like object
.cell_meta <- function(object) {
  if (.is_seurat(object)) object[[]] else SummarizedExperiment::colData(object)
}

.meta_label <- function(object) if (.is_seurat(object)) "meta.data" else "colData"

# The expression matrix to use when `layer` is NULL. For a fit (`input_kind` NULL): raw counts
# when the object has them, else the log-normalised matrix; for a model: the kind it was fitted
# on ("counts" -> the counts, "lognorm" -> Seurat's `data` / SCE's `logcounts`).
.default_layer <- function(object, layer, input_kind = NULL, assay = NULL) {
  if (!is.null(layer)) return(layer)
  lognorm <- if (.is_seurat(object)) "data" else "logcounts"
  if (identical(input_kind, "lognorm")) return(lognorm)
  if (identical(input_kind, "counts")) return("counts")
  has_counts <- if (.is_seurat(object)) {
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    assay %in% SeuratObject::Assays(object) && "counts" %in% .seurat_layers(object, assay)
  } else {
    "counts" %in% SummarizedExperiment::assayNames(object)
  }
  if (has_counts || (!.is_seurat(object) &&
                     !lognorm %in% SummarizedExperiment::assayNames(object))) "counts" else lognorm
}

# genes x cells expression matrix of a Seurat assay layer (slot) or an SCE assay
.get_matrix <- function(object, assay = NULL, layer = "counts") {
  .check_string(layer, "layer", null_ok = FALSE)
  if (.is_seurat(object)) {
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    .check_string(assay, "assay", null_ok = FALSE)
    if (!assay %in% SeuratObject::Assays(object)) {
      stop("assay '", assay, "' not found in the Seurat object; assays: ",
           paste(SeuratObject::Assays(object), collapse = ", "), ".", call. = FALSE)
    }
    if (.seurat5()) {
      layers <- getExportedValue("SeuratObject", "Layers")(object[[assay]])
      if (!layer %in% layers) {
        split <- grep(paste0("^", layer, "\\."), layers, value = TRUE)
        hint <- if (length(split)) " (its layers are split; run JoinLayers() first)" else ""
        stop("layer '", layer, "' not found in assay '", assay, "'", hint, "; layers: ",
             paste(layers, collapse = ", "), ".", call. = FALSE)
      }
      m <- getExportedValue("SeuratObject", "LayerData")(object, assay = assay, layer = layer)
    } else {
      if (!layer %in% c("counts", "data", "scale.data")) {
        stop("slot '", layer, "' is not one of 'counts', 'data', 'scale.data'.", call. = FALSE)
      }
      m <- SeuratObject::GetAssayData(object, assay = assay, slot = layer)
    }
    if (nrow(m) == 0L || ncol(m) == 0L) {
      stop("layer '", layer, "' of assay '", assay, "' is empty.", call. = FALSE)
    }
    return(m)
  }
  if (!is.null(assay)) {
    stop("`assay` applies to Seurat objects only; for a SingleCellExperiment name the assay ",
         "with `layer` (e.g. layer = \"logcounts\").", call. = FALSE)
  }
  an <- SummarizedExperiment::assayNames(object)
  if (!layer %in% an) {
    stop("assay '", layer, "' not found in the SingleCellExperiment; assays: ",
         if (length(an)) paste(an, collapse = ", ") else "(none)", ".", call. = FALSE)
  }
  SummarizedExperiment::assay(object, layer, withDimnames = TRUE)
}

`%||%` <- function(a, b) if (is.null(a)) b else a

# check that `columns` are metadata columns
.check_columns <- function(object, columns, arg = "concepts", what = "concept") {
  if (!is.character(columns) || !length(columns) || anyNA(columns)) {
    stop("`", arg, "` must be a character vector of ", .meta_label(object), " column names.",
         call. = FALSE)
  }
  meta <- colnames(.cell_meta(object))
  missing <- setdiff(columns, meta)
  if (length(missing)) {
    stop(sprintf("%s column(s) %s not found in the %s of `object`; available columns: %s.",
                 what, paste0("'", missing, "'", collapse = ", "), .meta_label(object),
                 paste(meta, collapse = ", ")), call. = FALSE)
  }
  invisible(columns)
}

# The AnnData spec the engine needs: X = the chosen matrix (cells x genes), obs = `columns`.
.engine_spec <- function(object, assay, layer, columns) {
  m <- .get_matrix(object, assay, layer)
  cells <- colnames(object)
  genes <- rownames(m)
  if (is.null(genes)) stop("the expression matrix has no gene (row) names.", call. = FALSE)
  meta <- .cell_meta(object)
  columns <- intersect(columns, colnames(meta))
  list(X = .matrix_spec(m, "expression matrix"), obs_names = .np_chr(cells),
       var_names = .np_chr(genes), obs = .frame_spec(meta, columns))
}

# cells argument (names, logical or integer index) -> cell names
.cells_arg <- function(object, cells) {
  if (is.null(cells)) return(NULL)
  all <- colnames(object)
  if (is.logical(cells)) {
    if (length(cells) != length(all) || anyNA(cells)) {
      stop("a logical `cells` must have one non-NA value per cell (", length(all), ").",
           call. = FALSE)
    }
    cells <- all[cells]
  } else if (is.numeric(cells)) {
    if (anyNA(cells) || any(cells < 1 | cells > length(all) | cells != round(cells))) {
      stop("numeric `cells` must be indices between 1 and ", length(all), ".", call. = FALSE)
    }
    cells <- all[cells]
  } else if (is.character(cells)) {
    missing <- setdiff(cells, all)
    if (length(missing)) {
      stop("`cells` not found in `object`: ", paste(utils::head(missing, 5), collapse = ", "),
           if (length(missing) > 5) ", ...", ".", call. = FALSE)
    }
  } else {
    stop("`cells` must be cell names, a logical vector or indices.", call. = FALSE)
  }
  if (!length(cells)) stop("`cells` selects no cells.", call. = FALSE)
  cells
}

.subset_cells <- function(object, cells) {
  if (identical(cells, colnames(object))) return(object)
  object[, cells]
}

.assay_key <- function(name) {
  base <- gsub("[^[:alnum:]]", "", tolower(name))
  if (!nzchar(base) || grepl("^[0-9]", base)) base <- paste0("a", base)
  paste0(base, "_")
}

.reduction_key <- function(name, what) {
  base <- gsub("[^[:alnum:]]", "", name)
  if (!nzchar(base) || grepl("^[0-9]", base)) base <- paste0("s", base)
  paste0(base, what, "_")
}

# Add a cells x k embedding: a DimReduc (Seurat) or a reducedDim (SCE).
.add_embedding <- function(object, reduction, emb, dim_names, key_part, name,
                           assay_used = name) {
  if (is.null(emb)) return(object)
  if (.is_seurat(object)) {
    key <- .reduction_key(name, key_part)
    colnames(emb) <- paste0(key, seq_len(ncol(emb)))
    dr <- SeuratObject::CreateDimReducObject(
      embeddings = emb, key = key, assay = assay_used,
      misc = list(dimension_names = dim_names))
    object[[reduction]] <- dr
    return(object)
  }
  colnames(emb) <- dim_names
  SingleCellExperiment::reducedDim(object, reduction) <- emb
  object
}

# Add the edited (genes x cells, log-normalised) matrix as assay `name`; with `part` (e.g.
# "edit_sd") a companion matrix of that edit: assay `<name>_<part>`, or assay `part` of the
# altExp `name` when the edit went to an altExp (added after the edit itself).
.add_expression <- function(object, name, m, part = NULL) {
  assay_name <- if (is.null(part)) name else paste0(name, "_", part)
  if (.is_seurat(object)) {
    assay <- if (methods::is(m, "DelayedArray")) {
      # an HDF5-backed DelayedArray needs a v5 assay (.backed_problem checked SeuratObject >= 5)
      getExportedValue("SeuratObject", "CreateAssay5Object")(data = m)
    } else {
      .new_seurat_assay(data = m, like = object[[SeuratObject::DefaultAssay(object)]])
    }
    SeuratObject::Key(assay) <- .assay_key(assay_name)
    object[[assay_name]] <- assay
    return(object)
  }
  if (identical(rownames(object), rownames(m))) {
    SummarizedExperiment::assay(object, assay_name, withDimnames = FALSE) <- m
  } else if (is.null(part)) {
    SingleCellExperiment::altExp(object, name) <-
      SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = m))
  } else {
    alt <- SingleCellExperiment::altExp(object, name)
    SummarizedExperiment::assay(alt, part, withDimnames = FALSE) <- m
    SingleCellExperiment::altExp(object, name) <- alt
  }
  object
}

.add_meta <- function(object, df) {
  if (!ncol(df)) return(object)
  if (.is_seurat(object)) {
    for (nm in colnames(df)) object[[nm]] <- df[[nm]]
    return(object)
  }
  cd <- SummarizedExperiment::colData(object)
  for (nm in colnames(df)) cd[[nm]] <- df[[nm]]
  SummarizedExperiment::colData(object) <- cd
  object
}

.add_record <- function(object, name, record) {
  if (.is_seurat(object)) {
    SeuratObject::Misc(object, slot = name) <- record
    return(object)
  }
  S4Vectors::metadata(object)[[name]] <- record
  object
}
