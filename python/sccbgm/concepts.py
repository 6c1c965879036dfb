"""Concepts from AnnData ``obs`` columns: the concept matrix c, its mask m, and edits to it.

A :class:`ConceptSpec` is fitted once on the training cells and stored with the model:

* a categorical / string column becomes one binary concept per observed category
  (named ``"column=category"``);
* a bool column, or a numeric column whose values are all 0/1, is one binary concept;
* an INTEGER-typed column (numpy int/uint, pandas Int64...) with at most
  ``MAX_INTEGER_CATEGORIES`` (20) distinct values (cluster ids 0..k, batch numbers) is
  categorical, with a warning: category ``"3"`` for the value 3 (edit with ``set={"leiden": 3}``
  or ``"3"``). Cast it to float to make it continuous, or to ``category`` to silence the warning;
* any other numeric column is one continuous concept, scaled to [0, 1] with the training
  minimum and maximum (stored, so edits are given in the column's own units);
* a missing value (NaN / None / pandas NA) is a missing label: mask m_k = 0 (paper Eq. 7).

Category labels compare as strings, with integral numbers written without a decimal point (3,
3.0 and "3" are the same category), so an integer column read back as float still matches.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError

ConceptKind = Literal["categorical", "binary", "continuous"]

MAX_INTEGER_CATEGORIES = 20
"""An integer column with at most this many distinct values is categorical (module docstring)."""


@dataclass(frozen=True)
class ConceptColumn:
    """One ``obs`` column and the concept dimensions it produces."""

    name: str
    kind: ConceptKind
    categories: tuple[str, ...] = ()
    minimum: float = 0.0
    maximum: float = 1.0

    @property
    def concept_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories]
        return [self.name]

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class ConceptSpec:
    """How ``obs`` columns map to the K concept dimensions of a model."""

    columns: tuple[ConceptColumn, ...] = field(default_factory=tuple)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_obs(cls, obs: pd.DataFrame, concepts: Sequence[str]) -> ConceptSpec:
        """Infer the spec from the training cells' ``obs`` (see module docstring)."""
        if isinstance(concepts, str):
            concepts = [concepts]
        concepts = list(concepts)
        if not concepts:
            raise SCCBGMError("`concepts` is empty: name at least one obs column to use as a concept.")
        if len(set(concepts)) != len(concepts):
            raise SCCBGMError(f"`concepts` names a column twice: {concepts}.")
        missing = [c for c in concepts if c not in obs.columns]
        if missing:
            raise SCCBGMError(
                f"concept column(s) {missing} not found in adata.obs; available columns: "
                f"{list(obs.columns)}."
            )
        return cls(tuple(_infer_column(obs[name], name) for name in concepts))

    # ------------------------------------------------------------------- properties
    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def concept_names(self) -> list[str]:
        return [n for c in self.columns for n in c.concept_names]

    @property
    def n_concepts(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def is_binary(self) -> np.ndarray:
        """(K,) bool: True for binary concept dimensions (sigmoid + BCE), False for continuous."""
        return np.array(
            [c.kind != "continuous" for c in self.columns for _ in range(c.width)], dtype=bool
        )

    def slices(self) -> dict[str, slice]:
        """Column name -> slice of its concept dimensions in the K-vector."""
        out, start = {}, 0
        for c in self.columns:
            out[c.name] = slice(start, start + c.width)
            start += c.width
        return out

    # --------------------------------------------------------------------- encoding
    def encode(
        self, obs: pd.DataFrame, *, require: bool = True, unknown_as_missing: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Concept matrix and mask for ``obs``.

        Returns ``(values, mask)``, both float32 of shape (n_cells, K); ``values`` is 0 where the
        label is missing. With ``require=False`` absent columns are treated as all-missing; with
        ``unknown_as_missing=True`` a label the model cannot encode (a category unseen at fit
        time, a binary column holding another value) is a missing label instead of an error.
        """
        n = len(obs)
        values = np.zeros((n, self.n_concepts), dtype=np.float32)
        mask = np.zeros((n, self.n_concepts), dtype=np.float32)
        for col, sl in zip(self.columns, self.slices().values(), strict=True):
            if col.name not in obs.columns:
                if require:
                    raise SCCBGMError(f"concept column {col.name!r} not found in adata.obs.")
                continue
            v, m = _encode_column(col, obs[col.name], unknown_as_missing)
            values[:, sl], mask[:, sl] = v, m
        return values, mask

    def target_values(
        self, set_: Mapping[str, Any], n_cells: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Concept-scale targets of an edit ``set``.

        Returns ``(values, edited)``, float32 (n_cells, K) targets and a bool (n_cells, K) array
        that is True on the dimensions the edit assigns. A categorical value swaps the whole
        one-hot block; a binary value is 0/1 (or True/False); a continuous value is given in the
        column's own units and scaled with the training range. Each value may be a scalar or a
        per-cell array of length ``n_cells``.
        """
        if not isinstance(set_, Mapping) or not set_:
            raise SCCBGMError(
                "`set` must be a non-empty mapping {concept column: new value}, e.g. "
                "set={'stim': 'stimulated'}."
            )
        by_name = {c.name: c for c in self.columns}
        slices = self.slices()
        values = np.zeros((n_cells, self.n_concepts), dtype=np.float32)
        edited = np.zeros((n_cells, self.n_concepts), dtype=bool)
        for name, value in set_.items():
            if name not in by_name:
                raise SCCBGMError(
                    f"cannot edit {name!r}: it is not a concept of this model; concepts are "
                    f"{self.column_names}."
                )
            col = by_name[name]
            arr = _broadcast(value, n_cells, name)
            values[:, slices[name]] = _target_block(col, arr)
            edited[:, slices[name]] = True
        return values, edited

    def decode_column(self, name: str, block: np.ndarray) -> np.ndarray:
        """Concept-scale block (n, width) -> values in the column's own units (for obs)."""
        col = {c.name: c for c in self.columns}[name]
        if col.kind == "categorical":
            return np.asarray(col.categories, dtype=object)[np.argmax(block, axis=1)]
        if col.kind == "binary":
            return (block[:, 0] >= 0.5).astype(np.int64)
        return block[:, 0] * (col.maximum - col.minimum) + col.minimum

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"columns": [asdict(c) | {"categories": list(c.categories)} for c in self.columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptSpec:
        cols = []
        for c in data["columns"]:
            cols.append(
                ConceptColumn(
                    name=c["name"],
                    kind=c["kind"],
                    categories=tuple(c["categories"]),
                    minimum=float(c["minimum"]),
                    maximum=float(c["maximum"]),
                )
            )
        return cls(tuple(cols))


# ---------------------------------------------------------------------------- helpers
def _missing(series: pd.Series) -> np.ndarray:
    return np.asarray(pd.isna(series), dtype=bool)


def _infer_column(series: pd.Series, name: str) -> ConceptColumn:
    miss = _missing(series)
    if miss.all():
        raise SCCBGMError(f"concept column {name!r} has no labels (every value is missing).")
    observed = series[~miss]
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        if not isinstance(dtype, pd.CategoricalDtype) and observed.map(type).eq(bool).all():
            return _binary_or_constant(observed.astype(float).to_numpy(), name)
        if isinstance(dtype, pd.CategoricalDtype):
            cats = list(dict.fromkeys(category_label(c) for c in dtype.categories if (observed == c).any()))
        else:
            cats = sorted({category_label(v) for v in observed})
        if len(cats) < 2:
            raise SCCBGMError(
                f"concept column {name!r} is constant in the training data (only {cats!r}); a "
                "concept must vary to be learned. Drop it from `concepts`."
            )
        return ConceptColumn(name=name, kind="categorical", categories=tuple(cats))
    if pd.api.types.is_bool_dtype(dtype):
        return _binary_or_constant(observed.astype(float).to_numpy(), name)
    if pd.api.types.is_numeric_dtype(dtype):
        x = observed.to_numpy(dtype=float)
        if not np.isfinite(x).all():
            raise SCCBGMError(f"concept column {name!r} contains infinite values.")
        if np.isin(x, (0.0, 1.0)).all():
            return _binary_or_constant(x, name)
        n_distinct = np.unique(x).size
        if pd.api.types.is_integer_dtype(dtype) and n_distinct <= MAX_INTEGER_CATEGORIES:
            cats = [category_label(v) for v in np.unique(x)]
            warnings.warn(
                f"concept column {name!r} holds {n_distinct} distinct integers {cats[:6]}"
                f"{'...' if n_distinct > 6 else ''}; it is treated as CATEGORICAL (one concept per "
                f"value, e.g. '{name}={cats[0]}'), as integer codes such as cluster ids are. To use "
                f"it as one continuous concept, cast it to float (adata.obs[{name!r}] = "
                f"adata.obs[{name!r}].astype(float)); cast it to 'category' to silence this warning.",
                UserWarning,
                stacklevel=4,
            )
            return ConceptColumn(name=name, kind="categorical", categories=tuple(cats))
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            raise SCCBGMError(f"concept column {name!r} is constant ({lo}) in the training data.")
        return ConceptColumn(name=name, kind="continuous", minimum=lo, maximum=hi)
    raise SCCBGMError(f"concept column {name!r} has unsupported dtype {dtype}.")


def _binary_or_constant(x: np.ndarray, name: str) -> ConceptColumn:
    if np.unique(x).size < 2:
        raise SCCBGMError(
            f"concept column {name!r} is constant ({x[0]:g}) in the training data; a concept must "
            "vary to be learned. Drop it from `concepts`."
        )
    return ConceptColumn(name=name, kind="binary")


def category_label(value: Any) -> str:
    """The string a category value is compared as: integral numbers without ".0" (3.0 -> "3")."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer, np.str_)):
        return str(value.item())
    return str(value)


def _encode_column(
    col: ConceptColumn, series: pd.Series, unknown_as_missing: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    n = len(series)
    miss = _missing(series)
    observed = ~miss
    if col.kind == "categorical":
        labels = np.asarray(series.astype(object).where(observed, None), dtype=object)
        values = np.zeros((n, col.width), dtype=np.float32)
        known = {c: i for i, c in enumerate(col.categories)}
        keys = np.full(n, "", dtype=object)
        codes, uniques = pd.factorize(labels[observed])
        keys[observed] = np.array([category_label(v) for v in uniques] + [""], dtype=object)[codes]
        is_known = np.array([k in known for k in keys], dtype=bool)
        unknown = sorted(set(keys[observed & ~is_known]))
        if unknown and not unknown_as_missing:
            raise SCCBGMError(
                f"column {col.name!r} has categories {unknown} that the model was not trained on; "
                f"known categories: {list(col.categories)}."
            )
        observed = observed & is_known
        for i in np.flatnonzero(observed):
            values[i, known[keys[i]]] = 1.0
        mask = np.repeat(observed[:, None], col.width, axis=1).astype(np.float32)
        return values, mask
    x = np.zeros(n, dtype=float)
    try:
        x[observed] = series[observed].astype(float).to_numpy()
    except (TypeError, ValueError):
        if not unknown_as_missing:
            raise SCCBGMError(f"concept column {col.name!r} is {col.kind} but holds non-numeric values.") from None
        return x[:, None].astype(np.float32), np.zeros((n, 1), dtype=np.float32)
    if col.kind == "binary":
        bad = observed & ~np.isin(x, (0.0, 1.0))
        if bad.any() and not unknown_as_missing:
            raise SCCBGMError(f"binary concept column {col.name!r} holds values other than 0/1.")
        observed = observed & ~bad
        x[bad] = 0.0
    else:
        x[observed] = (x[observed] - col.minimum) / (col.maximum - col.minimum)
    return x[:, None].astype(np.float32), observed[:, None].astype(np.float32)


def _broadcast(value: Any, n_cells: int, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes, bool, int, float, np.generic)):
        return np.full(n_cells, value, dtype=object)
    arr = np.asarray(value, dtype=object).ravel()
    if arr.size == 1:
        return np.full(n_cells, arr[0], dtype=object)
    if arr.size != n_cells:
        raise SCCBGMError(
            f"set[{name!r}] has {arr.size} values but {n_cells} cells are edited; give one value "
            "or one per edited cell."
        )
    return arr


def _target_block(col: ConceptColumn, arr: np.ndarray) -> np.ndarray:
    n = arr.size
    if col.kind == "categorical":
        index = {c: i for i, c in enumerate(col.categories)}
        arr = np.array([category_label(v) for v in arr], dtype=object)
        bad = sorted(set(arr) - set(index))
        if bad:
            raise SCCBGMError(
                f"unknown category {bad} for concept {col.name!r}; known categories: "
                f"{list(col.categories)}."
            )
        block = np.zeros((n, col.width), dtype=np.float32)
        block[np.arange(n), [index[v] for v in arr]] = 1.0
        return block
    try:
        x = arr.astype(float)
    except (TypeError, ValueError):
        raise SCCBGMError(
            f"concept {col.name!r} is {col.kind}: give a number, not {arr[0]!r}."
        ) from None
    if not np.isfinite(x).all():
        raise SCCBGMError(f"set[{col.name!r}] contains NaN or infinite values.")
    if col.kind == "binary":
        if not np.isin(x, (0.0, 1.0)).all():
            raise SCCBGMError(f"concept {col.name!r} is binary: set it to 0/1 or False/True.")
        return x[:, None].astype(np.float32)
    return ((x - col.minimum) / (col.maximum - col.minimum))[:, None].astype(np.float32)
