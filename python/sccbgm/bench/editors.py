"""Trivial editors every model is judged against (floors, not competitors).

Both work on log-normalised expression (cells x genes) and return the same shape:

* :func:`no_edit` returns the cells unchanged;
* :func:`mean_shift_edit` adds the mean concept shift seen in the *other* cell types of the
  training data: for each other group g, mean(x | g, concept = target) - mean(x | g, concept =
  source), averaged over the groups that have both (equal weights), clipped to >= 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError


def no_edit(x: np.ndarray) -> np.ndarray:
    """x (n, G) -> x (a copy)."""
    return np.array(x, dtype=np.float32, copy=True)


def mean_concept_shift(
    train_x: np.ndarray,
    train_obs: pd.DataFrame,
    *,
    concept: str,
    source: object,
    target: object,
    group_key: str,
    exclude_group: object | None = None,
) -> np.ndarray:
    """(G,) mean shift target - source of ``concept`` within groups of ``group_key``, averaged
    over the groups (other than ``exclude_group``) where both values occur."""
    groups = train_obs[group_key].astype(str).to_numpy()
    values = train_obs[concept].astype(str).to_numpy()
    shifts = []
    for g in np.unique(groups):
        if exclude_group is not None and g == str(exclude_group):
            continue
        in_g = groups == g
        a, b = in_g & (values == str(target)), in_g & (values == str(source))
        if a.any() and b.any():
            shifts.append(train_x[a].mean(0) - train_x[b].mean(0))
    if not shifts:
        raise SCCBGMError(
            f"no {group_key} group of the training data has both {concept}={source} and {target}; "
            "the mean-shift editor is undefined."
        )
    return np.mean(shifts, axis=0)


def mean_shift_edit(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x (n, G) + shift (G,), clipped to >= 0."""
    return np.clip(np.asarray(x) + shift[None, :], 0.0, None).astype(np.float32)
