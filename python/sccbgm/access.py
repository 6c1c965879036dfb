"""Data access: selecting cells, reading rows of any expression matrix, log-normalising counts.

One place for what every module that touches an AnnData needs; depends on numpy, scipy and
pandas only (no torch), so the standalone modules (metrics, simulation) use it too.

Matrices are dense arrays, scipy sparse matrices or anndata's backed (HDF5) datasets. Rows
are read by :func:`take_rows` (HDF5 reads need increasing, unique indices: any other order is
read sorted and put back) and densified a chunk at a time (:func:`dense_chunks`, chunk height
:func:`chunk_rows`), so a large sparse or backed X is never densified whole.

**Selecting cells** (:func:`select_cells`; every ``cells=`` argument of the package):

* ``None``: all cells, in order;
* a boolean mask of length ``n_obs``;
* integer positions, 0-based, each in ``[0, n_obs)``. Negative positions are an error: they
  mean "counted from the end" in Python but "all but" in R, so neither is guessed;
* obs names (``obs_names`` must be unique);
* a selector ``{obs column: value or list of values}``: the cells matching every column
  (:func:`match_obs`; numeric columns compare as numbers, others as strings).

Positions, names and selectors keep the order given; a mask or selector gives increasing order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccbgm.errors import SCCBGMError

CHUNK_ELEMENTS = 1 << 23  # cells x genes per chunk of X (64 MiB as dense float64)


# ----------------------------------------------------------------------------- matrices
def chunk_rows(n_genes: int, budget: int | None = None) -> int:
    """Cells per chunk so that one dense chunk holds at most ``budget`` values (default
    ``CHUNK_ELEMENTS``), at least 16 and at most 65,536 cells."""
    budget = CHUNK_ELEMENTS if budget is None else int(budget)
    return int(max(16, min(65536, budget // max(int(n_genes), 1))))


def get_matrix(adata: Any, layer: str | None) -> Any:
    """``adata.X`` or ``adata.layers[layer]``, with a clear error when absent."""
    if layer is None:
        if adata.X is None:
            raise SCCBGMError("adata.X is empty; pass `layer=` to choose the expression matrix.")
        return adata.X
    if layer not in adata.layers:
        raise SCCBGMError(f"layer {layer!r} not found; available layers: {list(adata.layers)}.")
    return adata.layers[layer]


def take_rows(matrix: Any, rows: np.ndarray | slice) -> Any:
    """``matrix[rows]`` for any row order, also on backed (h5py) matrices.

    A run of consecutive rows is read as one slice; HDF5 reads need increasing, unique indices,
    so an index array that is not is read sorted and unique, then put back in the asked order
    (duplicates repeated). Sparse stays sparse.
    """
    if isinstance(rows, slice):
        return matrix[rows]
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    if rows.size > 1 and rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        return matrix[int(rows[0]) : int(rows[-1]) + 1]
    if rows.size <= 1 or np.all(np.diff(rows) > 0):
        return matrix[rows]
    uniq, inverse = np.unique(rows, return_inverse=True)
    block = matrix[uniq]
    return block[inverse]


def dense_rows(matrix: Any, rows: np.ndarray | slice | None = None, dtype: Any = np.float64) -> np.ndarray:
    """Rows (default all) of a dense / sparse / backed matrix as a dense array (rows, genes)."""
    block = take_rows(matrix, slice(None) if rows is None else rows)
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=dtype)


def dense_chunks(matrix: Any, rows: np.ndarray | None = None, step: int | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row positions, dense float64 block) over ``rows`` (default all) in chunks of
    ``step`` rows (default :func:`chunk_rows` of the matrix's width)."""
    rows = np.arange(matrix.shape[0]) if rows is None else np.asarray(rows)
    step = chunk_rows(matrix.shape[1]) if step is None else int(step)
    for s in range(0, rows.size, step):
        idx = rows[s : s + step]
        yield idx, dense_rows(matrix, idx)


def rescale(x_log: np.ndarray, from_sum: float, to_sum: float | np.ndarray = 1e4) -> np.ndarray:
    """Log-normalised values (n, G) at library size ``from_sum`` -> the same cells at ``to_sum``
    (a number, or (n,) one per cell); negative values, which counts cannot give, are read as 0."""
    to = np.asarray(to_sum, dtype=np.float64)
    factor = (to[:, None] if to.ndim == 1 else to) / from_sum
    return np.log1p(np.expm1(np.clip(x_log, 0.0, None)) * factor)


def lognormalise(counts: Any, target_sum: float | None = None) -> Any:
    """Counts (n, G) -> log1p(counts / total * target_sum), float64; ``target_sum`` None: the
    median total of these cells. A cell with zero total stays 0. Dense (or anything array-like)
    in, dense out; sparse in, CSR out (only the non-zeros are transformed)."""
    if sp.issparse(counts):
        block = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        totals = np.asarray(block.sum(axis=1)).ravel()
    else:
        block = np.asarray(counts, dtype=np.float64)
        totals = block.sum(axis=1)
    if target_sum is None:
        target_sum = float(np.median(totals))
    totals = np.where(totals == 0, 1.0, totals)
    if sp.issparse(block):
        block.data *= np.repeat(target_sum / totals, np.diff(block.indptr))
        np.log1p(block.data, out=block.data)
        return block
    return np.log1p(block / totals[:, None] * target_sum)


# ------------------------------------------------------------------------------ cells
def match_obs(obs: pd.DataFrame | Any, selector: Mapping[str, Any]) -> np.ndarray:
    """Boolean mask of the cells of ``obs`` (or an AnnData's ``obs``) matched by ``selector``
    ``{column: value or list of values}`` (every column must match)."""
    if not isinstance(obs, pd.DataFrame):
        obs = obs.obs
    if not isinstance(selector, Mapping) or not selector:
        raise SCCBGMError(f"a selector must be a non-empty mapping {{obs column: value}}, got {selector!r}.")
    mask = np.ones(obs.shape[0], dtype=bool)
    for column, value in selector.items():
        if column not in obs.columns:
            raise SCCBGMError(
                f"selector column {column!r} not found in obs; available columns: {list(obs.columns)}."
            )
        series = obs[column]
        wanted = list(value) if isinstance(value, list | tuple) else [value]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            try:
                targets = np.asarray([float(v) for v in wanted])
            except (TypeError, ValueError):
                raise SCCBGMError(
                    f"selector value {value!r} for numeric column {column!r} is not a number."
                ) from None
            vals = series.to_numpy(dtype=float)
            hit = np.isclose(vals[:, None], targets[None, :], rtol=1e-9, atol=1e-12).any(axis=1)
        else:
            hit = series.astype(str).isin([str(v) for v in wanted]).to_numpy()
        mask &= hit
    return mask


def select_cells(adata: Any, cells: Any, *, what: str = "cells", unique: bool = True,
                 allow_empty: bool = False) -> np.ndarray:
    """Positions (int64) in ``adata`` of ``cells`` under the module's selection rule.

    ``unique``: a cell selected twice is an error (each cell is processed once per call);
    ``allow_empty``: an empty selection returns no positions instead of an error.
    """
    n = int(adata.n_obs)
    if cells is None:
        idx = np.arange(n, dtype=np.int64)
    elif isinstance(cells, Mapping):
        idx = np.flatnonzero(match_obs(adata.obs, cells)).astype(np.int64)
    else:
        arr = np.asarray([cells] if isinstance(cells, str) else cells)
        if arr.ndim != 1:
            raise SCCBGMError(f"`{what}` must be one-dimensional, got shape {arr.shape}.")
        if arr.dtype == bool:
            if arr.size != n:
                raise SCCBGMError(f"boolean `{what}` mask has length {arr.size}, but adata has {n} cells.")
            idx = np.flatnonzero(arr).astype(np.int64)
        elif arr.size == 0:
            idx = np.zeros(0, dtype=np.int64)
        elif arr.dtype.kind in "iu":
            if arr.min() < 0:
                raise SCCBGMError(
                    f"`{what}` has negative positions; positions are 0-based in [0, {n}) (to leave cells "
                    "out, pass a boolean mask)."
                )
            if arr.max() >= n:
                raise SCCBGMError(f"`{what}` positions must lie in [0, {n}); got {int(arr.max())}.")
            idx = arr.astype(np.int64)
        elif arr.dtype.kind in "OUS":
            names = pd.Index(adata.obs_names)
            if names.has_duplicates:
                raise SCCBGMError(
                    f"adata.obs_names has duplicates, so {what} cannot be selected by name; call "
                    "adata.obs_names_make_unique() first, or select by position."
                )
            wanted = arr.astype(str)
            idx = names.get_indexer(wanted).astype(np.int64)
            if (idx < 0).any():
                raise SCCBGMError(f"`{what}` names not found in adata.obs_names, e.g. {wanted[idx < 0][:5].tolist()}.")
        else:
            raise SCCBGMError(
                f"`{what}` must be None, a boolean mask, integer positions, obs names or "
                f"{{obs column: value}}; got dtype {arr.dtype}."
            )
    if idx.size == 0 and not allow_empty:
        raise SCCBGMError(f"the `{what}` selection is empty: no cells to process.")
    if unique and np.unique(idx).size != idx.size:
        dup = pd.Index(adata.obs_names[idx])
        example = dup[dup.duplicated()].unique()[:5].tolist()
        raise SCCBGMError(
            f"`{what}` selects {idx.size - np.unique(idx).size} cell(s) more than once (e.g. {example}); "
            "each cell is processed once per call. Pass unique cells (e.g. pd.unique(cells))."
        )
    return idx
