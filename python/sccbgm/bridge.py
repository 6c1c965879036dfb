"""Explicit R <-> Python data exchange for the R package (``r-package/``, via reticulate).

reticulate's automatic conversions are not relied upon for anything but the plainest types: it
cannot bring a scipy sparse matrix back to R, and it mangles pandas Categorical / string columns
and missing values. Everything that crosses the boundary is therefore a *spec*: a ``dict`` of 1-D
numpy arrays of a basic dtype (float64, int32, bool, str), lists of ``str``, Python scalars and
nested specs. This module builds AnnData objects from specs (R -> Python) and splits them back
into specs (Python -> R); the R side (``r-package/R/convert.R``) does the mirror image.

Spec formats (shapes are always cells x genes, the AnnData orientation)
----------------------------------------------------------------------
matrix spec
    ``{"kind": "dense", "shape": [n, m], "values": (n*m,)}`` -- ``values`` in C (row-major)
    order, which is exactly R's column-major order of the transposed (genes x cells) matrix, so
    neither side copies to transpose. ``values`` is int32 (R integer matrix), float64 (R double)
    or bool (R logical).

    ``{"kind": "csr", "shape": [n, m], "data": float64, "indices": int32, "indptr": int32}`` --
    a cells x genes CSR matrix, which *is* the genes x cells CSC ``dgCMatrix`` of R
    (``x``, ``i``, ``p`` slots, 0-based), rebuilt there with ``Matrix::sparseMatrix``.

    ``{"kind": "blocks", "shape": [n, m], "blocks": [csr spec]}`` (R -> Python) -- consecutive
    row blocks, stacked into one CSR matrix: how R streams a ``DelayedArray`` without realising
    it whole.

    ``{"kind": "h5ad", "shape": [n, m], "path": str, "dataset": "X"}`` (Python -> R) -- a dense
    (n, m) dataset in an .h5ad file, read in R as an HDF5-backed ``DelayedArray``
    (``HDF5Array::HDF5Array(path, dataset)`` is its m x n transpose, without a copy).
column spec (one data-frame column; ``na`` is a bool mask of missing values)
    ``{"type": "factor", "codes": int32 (-1 = NA), "levels": [str], "ordered": bool}``
    (unused levels are kept), ``{"type": "character", "values": [str], "na": bool}``,
    ``{"type": "integer", "values": int32, "na": bool}``,
    ``{"type": "double", "values": float64, "na": bool}``,
    ``{"type": "logical", "values": bool, "na": bool}``.
frame spec
    ``{"names": [str], "columns": [column spec]}`` (row names travel separately).
AnnData spec
    ``{"X": matrix spec | None, "obs_names": [str], "var_names": [str], "obs": frame spec,
    "var": frame spec, "layers": {name: matrix spec}, "obsm": {name: dense matrix spec},
    "obsm_colnames": {name: [str]}, "X_name": str | None}``.

Missing values map to pandas' own representations: ``NaN`` in float columns, ``pd.NA`` in the
nullable ``Int32`` / ``boolean`` dtypes (chosen so that an R integer or logical column with NAs
comes back as one), ``NaN`` in object (string) columns and code -1 in categoricals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccbgm.errors import SCCBGMError

_WARNINGS: list[str] = []


def _keep_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    _WARNINGS.append(str(message))


def capture_warnings() -> None:
    """Collect Python warnings for R (``take_warnings``) instead of printing them to stderr, so
    that the R package re-raises them as R warnings (``r-package/R/python.R``, ``.py_call``)."""
    import warnings

    warnings.showwarning = _keep_warning


def take_warnings() -> list[str]:
    """The warnings collected since the last call (and forget them)."""
    out = list(_WARNINGS)
    _WARNINGS.clear()
    return out

__all__ = [
    "anndata_from_spec",
    "anndata_to_spec",
    "column_from_spec",
    "column_to_spec",
    "edit",
    "encode",
    "evaluate",
    "fit",
    "frame_from_spec",
    "frame_to_spec",
    "load",
    "matrix_from_spec",
    "matrix_to_spec",
    "model_info",
    "save",
    "search_concepts",
    "set_from_spec",
    "simulate",
    "sweep",
    "validate",
]

_INT32_MIN = np.iinfo(np.int32).min  # R's NA_integer_: never a valid R integer value
_INT32_MAX = np.iinfo(np.int32).max

Spec = dict[str, Any]


# ----------------------------------------------------------------------------- small helpers
def _as_1d(values: Any, dtype: Any) -> np.ndarray:
    """Any array-like / scalar / list from reticulate -> contiguous 1-D array of ``dtype``."""
    if values is None:
        return np.zeros(0, dtype=dtype)
    arr = np.asarray(values)
    if arr.dtype == object and np.dtype(dtype) != object and arr.size == 0:
        arr = arr.astype(dtype)
    return np.ascontiguousarray(arr.reshape(-1), dtype=dtype)


def _as_str_list(values: Any) -> list[str]:
    """Names from R (character array, list or a single string) -> list of str."""
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in np.asarray(values, dtype=object).reshape(-1)]


def _str_array(values: Sequence[Any]) -> np.ndarray:
    """List of str -> numpy unicode array (reticulate converts it to an R character vector)."""
    out = np.asarray([str(v) for v in values], dtype=str)
    return out if out.size else np.zeros(0, dtype="<U1")


def _as_dict(value: Any) -> dict[str, Any]:
    """A named R list arrives as a dict, an empty one as a list: normalise to dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return {}
    raise SCCBGMError(f"expected a named list / dict, got {type(value).__name__}.")


def _shape(value: Any) -> tuple[int, int]:
    dims = [int(v) for v in np.asarray(value).reshape(-1)]
    if len(dims) != 2 or min(dims) < 0:
        raise SCCBGMError(f"a matrix spec needs a 2-element non-negative shape, got {dims}.")
    return dims[0], dims[1]


def _public(name: str) -> Any:
    """The public function ``sccbgm.<name>`` (resolved lazily by the package root)."""
    import sccbgm

    return getattr(sccbgm, name)


def _to_int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    return int(np.asarray(value).reshape(-1)[0])


# ------------------------------------------------------------------------------- matrices
def matrix_from_spec(spec: Mapping[str, Any]) -> np.ndarray | sp.csr_matrix:
    """Matrix spec -> cells x genes numpy array (dense) or ``scipy.sparse.csr_matrix``.

    Dense ``values`` keep their dtype (int32 / float64 / bool); sparse data are float64, as in
    R's ``dgCMatrix``.
    """
    kind = str(spec["kind"])
    n, m = _shape(spec["shape"])
    if kind == "dense":
        raw = np.asarray(spec["values"])
        dtype = raw.dtype if raw.dtype in (np.int32, np.float64, np.bool_) else np.float64
        values = _as_1d(raw, dtype)
        if values.size != n * m:
            raise SCCBGMError(f"dense matrix spec has {values.size} values for shape {(n, m)}.")
        return values.reshape(n, m)
    if kind == "csr":
        data = _as_1d(spec["data"], np.float64)
        indices = _as_1d(spec["indices"], np.int32)
        indptr = _as_1d(spec["indptr"], np.int64)
        if indptr.size != n + 1 or data.size != indices.size or (n and indptr[-1] != data.size):
            raise SCCBGMError(
                f"inconsistent sparse matrix spec: shape {(n, m)}, {indptr.size} pointers, "
                f"{indices.size} indices, {data.size} values."
            )
        if indptr.size and indptr[-1] <= _INT32_MAX:
            indptr = indptr.astype(np.int32)
        return sp.csr_matrix((data, indices, indptr), shape=(n, m))
    if kind == "blocks":  # consecutive row blocks (R streams a DelayedArray), stacked as CSR
        blocks = [matrix_from_spec(_as_dict(b)) for b in spec["blocks"]]
        if sum(b.shape[0] for b in blocks) != n or any(b.shape[1] != m for b in blocks):
            raise SCCBGMError(f"matrix blocks of shapes {[b.shape for b in blocks]} do not stack to {(n, m)}.")
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((n, m))
    raise SCCBGMError(f"unknown matrix spec kind {kind!r} (expected 'dense', 'csr' or 'blocks').")


def _r_dtype(dtype: np.dtype, values: np.ndarray | None = None) -> np.dtype:
    """The R-representable dtype for numpy ``dtype``: bool, int32 (when it fits) or float64.

    Integers fit R's integer type when every value lies in (INT32_MIN, INT32_MAX] (INT32_MIN is
    R's NA). Without ``values`` only dtypes narrower than 32 bits are known to fit.
    """
    if dtype == np.bool_:
        return np.dtype(np.bool_)
    if dtype.kind in "iu":
        if values is None:
            fits = dtype.itemsize < 4
        else:
            fits = values.size == 0 or (
                int(values.min()) > _INT32_MIN and int(values.max()) <= _INT32_MAX
            )
        return np.dtype(np.int32) if fits else np.dtype(np.float64)
    return np.dtype(np.float64)


def matrix_to_spec(x: Any) -> Spec:
    """Cells x genes matrix (numpy, scipy sparse, anndata backed/views) -> matrix spec.

    Sparse matrices become CSR with sorted indices and summed duplicates (float64 data);
    dense ones keep integer (int32) or logical type where R can hold it, else float64.
    """
    if sp.issparse(x):
        csr = sp.csr_matrix(x, copy=True)
        csr.sum_duplicates()
        csr.sort_indices()
        if csr.nnz > _INT32_MAX:
            raise SCCBGMError(f"sparse matrix has {csr.nnz} non-zeros; R's dgCMatrix holds < 2^31.")
        return {
            "kind": "csr",
            "shape": [int(csr.shape[0]), int(csr.shape[1])],
            "data": np.ascontiguousarray(csr.data, dtype=np.float64),
            "indices": np.ascontiguousarray(csr.indices, dtype=np.int32),
            "indptr": np.ascontiguousarray(csr.indptr, dtype=np.int32),
        }
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise SCCBGMError(f"expected a 2-D matrix, got {arr.ndim} dimension(s).")
    dtype = _r_dtype(arr.dtype, arr)
    return {
        "kind": "dense",
        "shape": [int(arr.shape[0]), int(arr.shape[1])],
        "values": np.ascontiguousarray(arr, dtype=dtype).reshape(-1),
    }


# -------------------------------------------------------------------------------- columns
def column_from_spec(spec: Mapping[str, Any], n: int | None = None) -> Any:
    """Column spec -> pandas-ready values (Categorical, numpy array or nullable extension array)."""
    kind = str(spec["type"])
    if kind == "factor":
        codes = _as_1d(spec["codes"], np.int32)
        levels = _as_str_list(spec.get("levels"))
        if len(set(levels)) != len(levels):
            raise SCCBGMError(f"factor levels are not unique: {levels}.")
        if codes.size and (codes.max(initial=-1) >= len(levels) or codes.min(initial=0) < -1):
            raise SCCBGMError("factor codes out of range of its levels.")
        ordered = bool(spec.get("ordered", False))
        out: Any = pd.Categorical.from_codes(codes, categories=pd.Index(levels, dtype=object), ordered=ordered)
    else:
        na = _as_1d(spec.get("na"), np.bool_)
        if kind == "character":
            values = np.asarray(_as_str_list(spec.get("values")), dtype=object)
            if na.any():
                values[na] = np.nan
            out = values
        elif kind == "double":
            out = _as_1d(spec.get("values"), np.float64).copy()
            if na.any():
                out[na] = np.nan
        elif kind == "integer":
            vals = _as_1d(spec.get("values"), np.int32)
            out = pd.array(vals, dtype="Int32") if na.any() else vals
            if na.any():
                out[na] = pd.NA
        elif kind == "logical":
            vals = _as_1d(spec.get("values"), np.bool_)
            out = pd.array(vals, dtype="boolean") if na.any() else vals
            if na.any():
                out[na] = pd.NA
        else:
            raise SCCBGMError(f"unknown column spec type {kind!r}.")
        if na.size and na.size != len(out):
            raise SCCBGMError(f"column has {len(out)} values but a missing-value mask of {na.size}.")
    if n is not None and len(out) != n:
        raise SCCBGMError(f"column has {len(out)} values, expected {n}.")
    return out


def column_to_spec(values: Any) -> Spec:
    """A pandas Series / array -> column spec that R rebuilds exactly (see module docstring).

    Categoricals -> factor (all categories kept, as strings); bool -> logical; integers that fit
    R's integer -> integer, else double; floats -> double; strings and other objects ->
    character (``str(value)``); datetimes and other types -> character.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    dtype = s.dtype
    na = np.asarray(pd.isna(s), dtype=bool)
    if isinstance(dtype, pd.CategoricalDtype):
        return {
            "type": "factor",
            "codes": np.asarray(s.cat.codes, dtype=np.int32),
            "levels": _str_array([str(c) for c in dtype.categories]),
            "ordered": bool(dtype.ordered),
        }
    if pd.api.types.is_bool_dtype(dtype):
        vals = np.asarray(s.astype(object).where(~na, False), dtype=np.bool_)
        return {"type": "logical", "values": vals, "na": na}
    if pd.api.types.is_integer_dtype(dtype):
        vals = np.asarray(s.astype(object).where(~na, 0), dtype=np.int64)
        if _r_dtype(np.dtype(np.int64), vals) == np.int32:
            return {"type": "integer", "values": vals.astype(np.int32), "na": na}
        return {"type": "double", "values": vals.astype(np.float64), "na": na}
    if pd.api.types.is_float_dtype(dtype):
        vals = np.asarray(s.astype(object).where(~na, np.nan), dtype=np.float64)
        return {"type": "double", "values": vals, "na": na}
    strings = [("" if miss else str(v)) for v, miss in zip(s.tolist(), na, strict=True)]
    return {"type": "character", "values": _str_array(strings), "na": na}


def frame_from_spec(spec: Mapping[str, Any] | None, index: Sequence[str] | None = None) -> pd.DataFrame:
    """Frame spec (+ row names) -> ``pandas.DataFrame`` (column order kept)."""
    idx = pd.Index(_as_str_list(index), dtype=object) if index is not None else None
    n = None if idx is None else len(idx)
    if spec is None:
        return pd.DataFrame(index=idx)
    names = _as_str_list(spec.get("names"))
    columns = spec.get("columns") or []
    if isinstance(columns, Mapping):
        columns = list(columns.values())
    if len(columns) != len(names):
        raise SCCBGMError(f"frame spec has {len(names)} names but {len(columns)} columns.")
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise SCCBGMError(f"duplicated column names {dup}; make them unique first.")
    data = {name: column_from_spec(col, n) for name, col in zip(names, columns, strict=True)}
    if not data:
        return pd.DataFrame(index=idx)
    return pd.DataFrame(data, index=idx)


def frame_to_spec(df: pd.DataFrame, columns: Sequence[str] | None = None) -> Spec:
    """``pandas.DataFrame`` (or the named ``columns`` of it) -> frame spec."""
    names = [str(c) for c in (df.columns if columns is None else columns)]
    if columns is None:
        cols = [column_to_spec(df.iloc[:, j]) for j in range(df.shape[1])]
    else:
        cols = [column_to_spec(df[c]) for c in columns]
    return {"names": _str_array(names), "columns": cols}


# -------------------------------------------------------------------------------- AnnData
def anndata_from_spec(spec: Mapping[str, Any]) -> Any:
    """AnnData spec (from R) -> ``anndata.AnnData``.

    ``X_name`` (the R assay/slot that became X) and the column names of the ``obsm`` matrices are
    kept in ``uns["sccbgm_r"]`` so that the way back restores them.
    """
    import anndata as ad

    obs_names = _as_str_list(spec.get("obs_names"))
    var_names = _as_str_list(spec.get("var_names"))
    x_spec = spec.get("X")
    X = matrix_from_spec(x_spec) if x_spec is not None else None
    n_obs = X.shape[0] if X is not None else len(obs_names)
    n_var = X.shape[1] if X is not None else len(var_names)
    if obs_names and len(obs_names) != n_obs:
        raise SCCBGMError(f"{len(obs_names)} cell names for {n_obs} cells.")
    if var_names and len(var_names) != n_var:
        raise SCCBGMError(f"{len(var_names)} gene names for {n_var} genes.")
    obs = frame_from_spec(spec.get("obs"), obs_names or [str(i) for i in range(n_obs)])
    var = frame_from_spec(spec.get("var"), var_names or [str(i) for i in range(n_var)])
    layers = {str(k): matrix_from_spec(v) for k, v in _as_dict(spec.get("layers")).items()}
    obsm = {str(k): matrix_from_spec(v) for k, v in _as_dict(spec.get("obsm")).items()}
    adata = ad.AnnData(X=X, obs=obs, var=var, layers=layers or None, obsm=obsm or None)
    meta: dict[str, Any] = {}
    if spec.get("X_name") is not None:
        meta["X_name"] = str(spec["X_name"])
    colnames = {str(k): _as_str_list(v) for k, v in _as_dict(spec.get("obsm_colnames")).items()}
    if colnames:
        meta["obsm_colnames"] = colnames
    extra = _as_dict(spec.get("uns"))
    if extra:
        meta.update({str(k): v for k, v in extra.items()})
    if meta:
        adata.uns["sccbgm_r"] = meta
    return adata


def anndata_to_spec(
    adata: Any,
    *,
    layers: bool = True,
    obsm: bool = True,
    obs_columns: Sequence[str] | None = None,
) -> Spec:
    """``anndata.AnnData`` -> AnnData spec for R.

    ``layers`` / ``obsm``: include them (dense ``obsm`` arrays and DataFrames only; sparse
    ``obsm`` entries such as graphs are skipped). ``obs_columns``: only these obs columns.
    """
    meta = dict(adata.uns.get("sccbgm_r", {})) if "sccbgm_r" in adata.uns else {}
    out: Spec = {
        "X": matrix_to_spec(adata.X) if adata.X is not None else None,
        "obs_names": _str_array(adata.obs_names),
        "var_names": _str_array(adata.var_names),
        "obs": frame_to_spec(adata.obs, obs_columns),
        "var": frame_to_spec(adata.var),
        "layers": {str(k): matrix_to_spec(v) for k, v in adata.layers.items()} if layers else {},
        "obsm": {},
        "obsm_colnames": {},
        "X_name": str(meta["X_name"]) if "X_name" in meta else None,
    }
    if obsm:
        saved = meta.get("obsm_colnames", {})
        for key, value in adata.obsm.items():
            if isinstance(value, pd.DataFrame):
                out["obsm_colnames"][str(key)] = _str_array(value.columns)
                value = value.to_numpy(dtype=np.float64)
            elif sp.issparse(value):
                continue
            elif str(key) in saved:
                out["obsm_colnames"][str(key)] = _str_array(saved[str(key)])
            arr = np.asarray(value)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.dtype.kind not in "biuf":
                continue
            out["obsm"][str(key)] = matrix_to_spec(arr)
    return out


# ------------------------------------------------------------------------- edits and models
def set_from_spec(set_spec: Any) -> dict[str, Any]:
    """Edit targets from R -> the ``set`` mapping of :func:`sccbgm.edit`.

    Each entry is ``{"column": str, "kind": "scalar" | "array", "type": "character" | "double" |
    "integer" | "logical", "values": 1-D array}``. Scalars become Python ``str`` / ``float`` /
    ``int`` / ``bool``; per-cell arrays become numpy arrays (object arrays of str for character).
    """
    entries = set_spec if isinstance(set_spec, (list, tuple)) else list(_as_dict(set_spec).values())
    out: dict[str, Any] = {}
    for entry in entries:
        column = str(entry["column"])
        kind = str(entry.get("type", "double"))
        if kind == "character":
            values: Any = np.asarray(_as_str_list(entry.get("values")), dtype=object)
        elif kind == "integer":
            values = _as_1d(entry.get("values"), np.int64)
        elif kind == "logical":
            values = _as_1d(entry.get("values"), np.bool_)
        else:
            values = _as_1d(entry.get("values"), np.float64)
        if str(entry.get("kind", "array")) == "scalar":
            if values.size != 1:
                raise SCCBGMError(f"set[{column!r}]: a scalar edit needs exactly one value.")
            values = values[0].item() if isinstance(values[0], np.generic) else values[0]
        out[column] = values
    return out


def _engine_frame(spec: Mapping[str, Any]) -> Any:
    """AnnData spec -> AnnData for the engine (nullable columns stay nullable: supported)."""
    return anndata_from_spec(spec)


def fit(
    spec: Mapping[str, Any],
    concepts: Sequence[str] | str,
    *,
    model: str = "sccbgm",
    seed: Any = None,
    preset: str = "cpu",
    progress: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Build the AnnData from ``spec`` and call :func:`sccbgm.fit` (X is the chosen matrix).

    ``options`` are passed as keyword arguments (module / training options and the other
    keywords of :func:`sccbgm.fit`); ``None`` values are dropped so that the engine defaults apply.
    """
    from sccbgm import api

    adata = _engine_frame(spec)
    kwargs = {str(k): v for k, v in _as_dict(options).items() if v is not None}
    return api.fit(
        adata,
        _as_str_list(concepts),
        model=str(model),
        seed=_to_int_or_none(seed),
        preset=str(preset),
        progress=None if progress is None else bool(progress),
        **kwargs,
    )


def _cells_arg(cells: Any) -> Any:
    if cells is None:
        return None
    return np.asarray(_as_str_list(cells), dtype=object)


def _embedding_spec(adata: Any, key: str) -> Spec | None:
    return matrix_to_spec(np.asarray(adata.obsm[key], dtype=np.float64)) if key in adata.obsm else None


def edit(
    model: Any,
    spec: Mapping[str, Any],
    set_spec: Any,
    *,
    cells: Any = None,
    options: Mapping[str, Any] | None = None,
    out: str | None = None,
) -> Spec:
    """Counterfactual edit of the cells in ``spec``; returns a plain result spec for R.

    With ``out`` (a path) the edit is written to that .h5ad by ``sccbgm.edit(..., out=out)``
    and ``X`` of the result is an ``"h5ad"`` matrix spec pointing at it, not the values.

    ``options`` are further keywords of :func:`sccbgm.edit` (e.g. ``residual``); ``None`` values
    are dropped. Result keys: ``X`` (dense matrix spec, edited cells x model genes, float64),
    ``obs_names``, ``var_names``, ``obs`` (frame spec of the edited concept columns with their new
    values), ``edited_columns``, ``concept_names``, ``concepts_factual`` / ``concepts_edited``
    (n x K) and ``unknown`` (n x d_u) dense matrix specs, ``info`` (the scalar entries of
    ``uns["sccbgm_edit"]``: residual, expression, ...), and for an ensemble ``uncertainty``: the
    layers ``edit_sd`` / ``edit_lower`` / ``edit_upper`` as dense matrix specs (cells x genes)
    and ``uncertainty_info`` (the scalar entries of ``uns["sccbgm_edit"]["uncertainty"]``); both
    None for a single model.
    """
    from sccbgm import api

    adata = _engine_frame(spec)
    set_ = set_from_spec(set_spec)
    kwargs = {str(k): v for k, v in _as_dict(options).items() if v is not None}
    if out is None:
        result = api.edit(model, adata, set_, cells=_cells_arg(cells), **kwargs)
        return edit_result_to_spec(result, list(set_))
    import anndata as ad

    out = os.fspath(os.path.expanduser(str(out)))
    written = api.edit(model, adata, set_, cells=_cells_arg(cells), out=out, **kwargs)
    del adata
    if not getattr(written, "isbacked", False):
        written = ad.read_h5ad(out, backed="r")
    try:
        return edit_result_to_spec(written, list(set_), x_file=out)
    finally:
        written.file.close()


def edit_result_to_spec(result: Any, edited_columns: Sequence[str], x_file: str | None = None) -> Spec:
    """The AnnData returned by :func:`sccbgm.edit` -> plain result spec (see :func:`edit`).

    ``x_file``: ``result`` is that .h5ad opened backed; X is passed as an ``"h5ad"`` spec.
    """
    info = dict(result.uns.get("sccbgm_edit", {}))
    columns = [c for c in edited_columns if c in result.obs.columns]
    if x_file is None:
        x_spec = matrix_to_spec(np.asarray(result.X, dtype=np.float64))
    else:
        import h5py

        if not isinstance(result.X, h5py.Dataset):
            raise SCCBGMError(f"X of {x_file!r} is not a dense HDF5 dataset; cannot back an R DelayedArray with it.")
        x_spec = {"kind": "h5ad", "shape": [int(result.n_obs), int(result.n_vars)], "path": x_file, "dataset": "X"}
    return {
        "X": x_spec,
        "obs_names": _str_array(result.obs_names),
        "var_names": _str_array(result.var_names),
        "obs": frame_to_spec(result.obs, columns),
        "edited_columns": _str_array(columns),
        "concept_names": _str_array(info.get("concept_names", [])),
        "concepts_factual": _embedding_spec(result, "X_concepts_factual"),
        "concepts_edited": _embedding_spec(result, "X_concepts_edited"),
        "unknown": _embedding_spec(result, "X_unknown"),
        "info": {**{k: v for k, v in info.items() if isinstance(v, (str, bool, int, float))},
                 **{f"group_calibration_{k}": v for k, v in dict(info.get("group_calibration") or {}).items()},
                 **{f"shared_response_{k}": v for k, v in dict(info.get("shared_response") or {}).items()}},
        "uncertainty": _uncertainty_specs(result, x_file),
        "uncertainty_info": {
            k: v for k, v in dict(info.get("uncertainty", {})).items() if isinstance(v, (str, bool, int, float))
        } or None,
    }


def _uncertainty_specs(result: Any, x_file: str | None) -> Spec | None:
    """The ensemble's per-cell uncertainty layers: dense specs, or with ``x_file`` "h5ad" specs
    of the file's ``layers/<key>`` datasets (R reads them HDF5-backed, like X)."""
    names = ("edit_sd", "edit_lower", "edit_upper")
    if x_file is None:
        keys = [key for key in names if key in result.layers]
        return {key: matrix_to_spec(np.asarray(result.layers[key], dtype=np.float64)) for key in keys} or None
    import h5py

    shape = [int(result.n_obs), int(result.n_vars)]
    with h5py.File(x_file, "r") as f:  # a streamed result keeps its layers on disk (editing.H5adWriter)
        keys = [key for key in names if f"layers/{key}" in f]
        for key in keys:
            if not isinstance(f.get(f"layers/{key}"), h5py.Dataset):
                raise SCCBGMError(f"layer {key!r} of {x_file!r} is not a dense HDF5 dataset.")
    return {key: {"kind": "h5ad", "shape": shape, "path": x_file, "dataset": f"layers/{key}"} for key in keys} or None


def encode(model: Any, spec: Mapping[str, Any], *, cells: Any = None) -> Spec:
    """Concept predictions and unknown factors; returns ``{"obs_names", "concept_names",
    "concepts", "unknown", "latent"}`` (dense matrix specs, cells x dimensions)."""
    from sccbgm import api

    adata = _engine_frame(spec)
    result = api.encode(model, adata, cells=_cells_arg(cells))
    return {
        "obs_names": _str_array(result.obs_names),
        "concept_names": _str_array(result.var_names),
        "concepts": matrix_to_spec(np.asarray(result.X, dtype=np.float64)),
        "unknown": _embedding_spec(result, "X_unknown"),
        "latent": _embedding_spec(result, "X_latent"),
    }


def model_info(model: Any) -> Spec:
    """The plain facts about a model that R shows: name, concepts, concept names, genes, the
    kind of input it was fitted on (``input_kind``: "counts" or "lognorm"; None if unrecorded) and
    the obs column of its group calibration (``groupby``; None without one)."""
    options = getattr(model, "options", None) or {}
    input_kind = options.get("input_kind")
    responses = getattr(model, "group_responses", None)
    return {
        "groupby": None if responses is None else str(responses.groupby),
        "name": str(getattr(model, "name", "sccbgm")),
        "input_kind": None if input_kind is None else str(input_kind),
        "concepts": _str_array(model.concepts),
        "concept_names": _str_array(model.concept_names),
        "genes": _str_array(model.genes),
        "description": repr(model),
    }


def group_responses(model: Any) -> Spec:
    """``model.group_responses.summary()`` (:mod:`sccbgm.groups`) as a table spec."""
    responses = getattr(model, "group_responses", None)
    if responses is None:
        raise SCCBGMError("this model was fitted without groupby, so it has no group calibration; "
                          "fit with groupby = \"cell_type\" (or another metadata column) to get one.")
    return _table_spec(responses.summary())


def save(model: Any, path: str) -> str:
    """:func:`sccbgm.save` to ``path``; returns the absolute path."""
    from sccbgm import api

    api.save(model, str(path))
    return os.path.abspath(str(path))


def load(path: str) -> Any:
    """:func:`sccbgm.load` from ``path``."""
    from sccbgm import api

    return api.load(str(path))


def simulate(options: Mapping[str, Any] | None = None, counterfactual: Any = None) -> Spec:
    """:func:`sccbgm.simulate` with keyword ``options`` (None dropped) -> AnnData spec.

    The simulated counts become R's ``counts`` assay (``X_name``). ``counterfactual``: edit
    targets as for :func:`set_from_spec` (e.g. ``concept_0 = 1``); when given, the exact
    counterfactual counts of every cell under them (:func:`sccbgm.simulate_counterfactual`, same
    exogenous noise) are added as layer ``counterfactual_counts`` and the edited concept values
    as obs columns ``counterfactual_<concept>``.
    """
    kwargs = {str(k): v for k, v in _as_dict(options).items() if v is not None}
    adata = _public("simulate")(**kwargs)
    if counterfactual is not None:
        set_ = set_from_spec(counterfactual)
        truth = _public("simulate_counterfactual")(adata, set_)
        adata.layers["counterfactual_counts"] = np.asarray(truth.X)
        for column in set_:
            if column in truth.obs.columns:
                adata.obs[f"counterfactual_{column}"] = truth.obs[column].to_numpy()
    adata.uns.clear()
    out = anndata_to_spec(adata)
    if out["X_name"] is None:
        out["X_name"] = "counts"
    return out


def _cells_input(value: Any) -> Any:
    """An evaluate input from R: an AnnData spec (dict) -> AnnData; anything else unchanged."""
    if isinstance(value, Mapping):
        return anndata_from_spec(value)
    return value


def evaluate(
    predicted: Any,
    target: Any,
    reference: Any = None,
    *,
    true_counterfactual: Any = None,
    control: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Spec:
    """:func:`sccbgm.evaluate` on AnnData specs (or AnnData objects).

    ``options`` are the other keywords of :func:`sccbgm.evaluate` (None dropped; a str array
    for ``reference_key`` / ``metrics`` becomes a list). Returns the metric table as a frame spec
    plus ``row_names`` and ``attrs`` (the table's scalar ``DataFrame.attrs``).
    """
    kwargs = _options(options)
    table = _public("evaluate")(
        _cells_input(predicted),
        _cells_input(target),
        reference=_cells_input(reference),
        true_counterfactual=_cells_input(true_counterfactual),
        control=_cells_input(control),
        **kwargs,
    )
    table = pd.DataFrame(table)
    out = frame_to_spec(table)
    out["row_names"] = _str_array([str(i) for i in table.index])
    out["attrs"] = {
        str(k): v for k, v in table.attrs.items() if isinstance(v, (str, bool, int, float)) or v is None
    }
    return out


# ------------------------------------------------------------------- tools (sccbgm.tools)
def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword options from R: None dropped, str arrays -> lists of str."""
    out: dict[str, Any] = {}
    for key, value in _as_dict(options).items():
        if value is None:
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "OU":
            value = [str(v) for v in value.reshape(-1)]
        out[str(key)] = value
    return out


def _table_spec(table: pd.DataFrame, texts: Sequence[str] = (), frames: Sequence[str] = ()) -> Spec:
    """A tool's table -> frame spec + ``row_names``, the string ``attrs`` named in ``texts`` and
    the DataFrame ``attrs`` named in ``frames`` (``{"spec": frame spec, "n": rows}``)."""
    out = frame_to_spec(table)
    out["row_names"] = _str_array([str(i + 1) for i in range(len(table))])
    out["texts"] = {k: str(table.attrs[k]) for k in texts if k in table.attrs}
    out["frames"] = {k: {"spec": frame_to_spec(table.attrs[k]), "n": len(table.attrs[k])}
                     for k in frames if k in table.attrs}
    return out


def _cells_selection(spec: Mapping[str, Any]) -> Any:
    """Cells from R: ``{"kind": "selector", "columns": [str], "values": [str]}`` -> a selector
    mapping; ``{"kind": "cells", "names": [str]}`` -> an array of obs names."""
    if str(spec.get("kind")) == "selector":
        return dict(zip(_as_str_list(spec.get("columns")), _as_str_list(spec.get("values")), strict=True))
    return np.asarray(_as_str_list(spec.get("names")), dtype=object)


def validate(
    spec: Mapping[str, Any], concepts: Any, edit_spec: Any, group: str, *, source_spec: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Spec:
    """:func:`sccbgm.validate` on an AnnData spec; ``edit_spec`` / ``source_spec`` as for
    :func:`set_from_spec`. Returns the table spec with ``texts["verdict"]`` and ``skipped``
    (frame spec: group, reason)."""
    kwargs = _options(options)
    source = set_from_spec(source_spec) if source_spec is not None else None
    table = _public("validate")(_engine_frame(spec), _as_str_list(concepts), set_from_spec(edit_spec), str(group),
                                source=source, **kwargs)
    out = _table_spec(table, texts=("verdict",))
    skipped = table.attrs.get("skipped", {})
    out["frames"]["skipped"] = {"spec": frame_to_spec(pd.DataFrame({"group": list(skipped),
                                                                  "reason": list(skipped.values())})),
                                "n": len(skipped)}
    return out


def sweep(model: Any, spec: Mapping[str, Any], concept: str, values: Any, *, cells: Any = None,
          options: Mapping[str, Any] | None = None) -> Spec:
    """:func:`sccbgm.sweep` on an AnnData spec; ``values`` a 1-D array (numbers or strings).
    Returns the table spec (``value`` numeric when every value is) with ``top_genes``."""
    vals = np.asarray(values).reshape(-1)
    listed = [str(v) for v in vals] if vals.dtype.kind in "OU" else [v.item() for v in vals]
    table = _public("sweep")(model, _engine_frame(spec), str(concept), listed, cells=_cells_arg(cells),
                             **_options(options))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in listed):
        table["value"] = table["value"].astype(np.float64)
    else:
        table["value"] = table["value"].astype(str)
    out = _table_spec(table)
    out["top_genes"] = _str_array(table.attrs.get("top_genes", []))
    return out


def search_concepts(spec: Mapping[str, Any], source: Mapping[str, Any], target: Mapping[str, Any], *,
                    options: Mapping[str, Any] | None = None) -> Spec:
    """:func:`sccbgm.search_concepts` on an AnnData spec; ``source`` / ``target`` as in
    :func:`_cells_selection`. Returns the table spec with ``texts["report"]``,
    ``frames["separation"]`` and ``markers``."""
    table = _public("search_concepts")(_engine_frame(spec), _cells_selection(source), _cells_selection(target),
                                       **_options(options))
    out = _table_spec(table, texts=("report",), frames=("separation",))
    out["markers"] = _str_array(table.attrs.get("markers", []))
    activities = table.attrs["activities"]
    out["activities"] = {"spec": frame_to_spec(activities), "n": len(activities),
                         "cells": _str_array(activities.index)}
    out["model"] = table.attrs["model"]
    return out
