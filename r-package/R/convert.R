# Explicit R <-> Python data movement. The Python half is python/sccbgm/bridge.py, whose module
# docstring defines the "spec" formats used here. Only plain values cross the boundary:
# 1-D arrays of double / integer / logical / character (via reticulate::r_to_py on an array,
# which gives a numpy array), single strings / numbers / logicals, lists and named lists.
# Missing values always travel as a separate logical mask; matrices travel as flat values or as
# the three slots of a dgCMatrix; R's genes x cells is Python's cells x genes.

# ---------------------------------------------------------------------------- R -> Python

# A 1-D numpy array of x's type (double -> float64, integer -> int32, logical -> bool,
# character -> str objects). `array()` keeps length-1 vectors arrays (not Python scalars).
# (Python starts here at the latest, so check first that it is the right one, with sccbgm.)
.np1 <- function(x) {
  .require_python()
  reticulate::r_to_py(array(x, dim = length(x)))
}

.np_chr <- function(x) {
  x <- as.character(x)
  x[is.na(x)] <- ""
  .np1(x)
}

# genes x cells matrix-like -> matrix spec (cells x genes in Python).
.matrix_spec <- function(m, what = "matrix") {
  if (methods::is(m, "DelayedArray")) return(.delayed_matrix_spec(m, what))
  if (methods::is(m, "sparseMatrix")) {
    m <- methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    return(list(kind = "csr", shape = list(ncol(m), nrow(m)),
                data = .np1(as.numeric(m@x)), indices = .np1(m@i), indptr = .np1(m@p)))
  }
  if (!is.matrix(m)) {
    m <- tryCatch(as.matrix(m), error = function(e) {
      stop("cannot convert the ", what, " (class ", class(m)[1], ") to a matrix.", call. = FALSE)
    })
  }
  if (!(is.numeric(m) || is.logical(m))) {
    stop("the ", what, " must be numeric, not ", typeof(m), ".", call. = FALSE)
  }
  if (is.logical(m) || (is.integer(m) && anyNA(m))) storage.mode(m) <- "double"
  list(kind = "dense", shape = list(ncol(m), nrow(m)), values = .np1(as.vector(m)))
}

# A DelayedArray (HDF5Array, TENxMatrix, ... or delayed operations on one) crosses in blocks of
# consecutive cells, each realised in R as a dgCMatrix and sent as its three slots: R holds one
# block at a time (at most DelayedArray::getAutoBlockSize() bytes as a dense block, 100 MB by
# default), never the whole matrix; Python stacks the sparse blocks into one CSR matrix (counts
# and log-normalised values are mostly zeros). Spec: kind "blocks", shape, blocks = csr specs.
.delayed_matrix_spec <- function(m, what = "matrix") {
  if (length(dim(m)) != 2L) stop("the ", what, " must be 2-dimensional.", call. = FALSE)
  if (!(DelayedArray::type(m) %in% c("double", "integer", "logical"))) {
    stop("the ", what, " must be numeric, not ", DelayedArray::type(m), ".", call. = FALSE)
  }
  n_genes <- nrow(m)
  n_cells <- ncol(m)
  per_block <- max(1L, as.integer(DelayedArray::getAutoBlockSize() %/% (8 * max(n_genes, 1L))))
  starts <- seq(1L, max(n_cells, 1L), by = per_block)
  blocks <- lapply(starts, function(s) {
    idx <- s:min(s + per_block - 1L, n_cells)
    block <- methods::as(m[, idx, drop = FALSE], "dgCMatrix")
    list(kind = "csr", shape = list(length(idx), n_genes), data = .np1(as.numeric(block@x)),
         indices = .np1(block@i), indptr = .np1(block@p))
  })
  list(kind = "blocks", shape = list(n_cells, n_genes), blocks = blocks)
}

# one data-frame column -> column spec; NULL (with a warning) for unsupported types.
.column_spec <- function(x, name) {
  if (is.factor(x)) {
    codes <- as.integer(x) - 1L
    codes[is.na(codes)] <- -1L
    return(list(type = "factor", codes = .np1(codes), levels = .np_chr(levels(x)),
                ordered = is.ordered(x)))
  }
  if (inherits(x, c("Date", "POSIXt", "difftime"))) x <- as.character(x)
  if (is.object(x) && !is.character(x) && !is.numeric(x) && !is.logical(x)) {
    x <- tryCatch(as.character(x), error = function(e) NULL)
  }
  if (is.null(x) || !is.atomic(x) || !is.null(dim(x)) || is.complex(x) || is.raw(x)) {
    warning("metadata column '", name, "' is not an atomic vector; it is not transferred.",
            call. = FALSE)
    return(NULL)
  }
  na <- is.na(x)
  if (is.character(x)) {
    return(list(type = "character", values = .np_chr(x), na = .np1(na)))
  }
  if (is.logical(x)) {
    x[na] <- FALSE
    return(list(type = "logical", values = .np1(x), na = .np1(na)))
  }
  if (is.integer(x)) {
    x[na] <- 0L
    return(list(type = "integer", values = .np1(as.vector(x)), na = .np1(na)))
  }
  x <- as.double(x)
  x[na] <- NaN
  list(type = "double", values = .np1(x), na = .np1(na))
}

# data.frame / DataFrame (or NULL) -> frame spec of `columns` (all by default).
.frame_spec <- function(df, columns = NULL) {
  if (is.null(df) || ncol(df) == 0L) return(list(names = .np_chr(character()), columns = list()))
  columns <- if (is.null(columns)) colnames(df) else columns
  specs <- lapply(columns, function(nm) .column_spec(df[[nm]], nm))
  keep <- !vapply(specs, is.null, logical(1))
  list(names = .np_chr(columns[keep]), columns = unname(specs[keep]))
}

# -------------------------------------------------------------------------- Python -> R

# explicit conversion of one Python object made of the plain types above
.r <- function(x) {
  if (is.null(x)) return(NULL)
  reticulate::py_to_r(x)
}

.vec <- function(x) {
  if (is.null(x)) return(NULL)
  as.vector(x)
}

.chr <- function(x) {
  if (is.null(x)) return(character())
  as.character(as.vector(x))
}

# matrix spec (already converted to an R list) -> genes x cells matrix / dgCMatrix.
.matrix_from_spec <- function(spec, rownames = NULL, colnames = NULL) {
  shape <- as.integer(unlist(spec$shape))
  n <- shape[1]
  g <- shape[2]
  dn <- list(if (length(rownames)) rownames else NULL, if (length(colnames)) colnames else NULL)
  if (is.null(dn[[1]]) && is.null(dn[[2]])) dn <- NULL
  if (identical(spec$kind, "csr")) {
    m <- Matrix::sparseMatrix(i = as.integer(.vec(spec$indices)), p = as.integer(.vec(spec$indptr)),
                              x = as.double(.vec(spec$data)), dims = c(g, n), index1 = FALSE,
                              repr = "C")
    if (!is.null(dn)) dimnames(m) <- dn
    return(m)
  }
  values <- .vec(spec$values)
  if (is.null(values)) values <- double()
  matrix(values, nrow = g, ncol = n, dimnames = dn)
}

# "h5ad" matrix spec -> genes x cells HDF5-backed DelayedArray over the file's cells x genes X.
.h5ad_matrix <- function(spec, rownames, colnames) {
  shape <- as.integer(unlist(spec$shape))
  m <- HDF5Array::HDF5Array(spec$path, spec$dataset)
  if (!identical(as.integer(dim(m)), rev(shape))) {
    stop("the edit written to '", spec$path, "' has dimensions ", paste(dim(m), collapse = " x "),
         ", expected ", shape[2], " x ", shape[1], ".", call. = FALSE)
  }
  dimnames(m) <- list(rownames, colnames)
  m
}

# cells x k embedding from a dense matrix spec (Python (n, k) C order).
.embedding_from_spec <- function(spec, cells = NULL, colnames = NULL) {
  if (is.null(spec)) return(NULL)
  t(.matrix_from_spec(spec, rownames = colnames, colnames = cells))
}

.column_from_spec <- function(spec) {
  type <- spec$type
  if (identical(type, "factor")) {
    codes <- as.integer(.vec(spec$codes)) + 1L
    codes[codes < 1L] <- NA_integer_
    return(structure(codes, levels = .chr(spec$levels),
                     class = c(if (isTRUE(spec$ordered)) "ordered", "factor")))
  }
  na <- as.logical(.vec(spec$na))
  values <- .vec(spec$values)
  values <- switch(type,
    character = as.character(values),
    integer = as.integer(values),
    double = as.double(values),
    logical = as.logical(values),
    stop("unknown column type '", type, "' from Python.", call. = FALSE)
  )
  if (length(na) && any(na)) values[na] <- NA
  values
}

# frame spec -> base data.frame with `row_names`
.frame_from_spec <- function(spec, row_names) {
  names <- .chr(spec$names)
  cols <- lapply(spec$columns, .column_from_spec)
  names(cols) <- names
  if (!length(cols)) return(data.frame(row.names = row_names))
  df <- list2DF(cols, nrow = length(row_names))
  rownames(df) <- row_names
  df
}

# Python AnnData -> (R list) AnnData spec
.anndata_spec <- function(adata, layers = TRUE, obsm = TRUE) {
  is_path <- is.character(adata) && length(adata) == 1L && !is.na(adata)
  if (!is_path && !inherits(adata, "python.builtin.object")) {
    stop("`adata` must be a Python AnnData object (or the path of an .h5ad file), not ",
         .class_name(adata), ".", call. = FALSE)
  }
  bridge <- .bridge()
  if (is_path) {
    if (!file.exists(adata)) stop("no .h5ad file at '", adata, "'.", call. = FALSE)
    ad <- reticulate::import("anndata", convert = FALSE)
    adata <- .py_call(ad$read_h5ad(path.expand(adata)))
  }
  .r(.py_call(bridge$anndata_to_spec(adata, layers = layers, obsm = obsm)))
}

.class_name <- function(x) paste0("<", class(x)[1], ">")
