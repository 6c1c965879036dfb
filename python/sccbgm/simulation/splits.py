"""Intervention splits for evaluation (paper appendix C.6).

A task holds out one (cell type u, concept k) pair: no cell of type u with c_k = 1 is seen in
training; half of the type-u cells with c_k = 0 are kept back (``intervene``) and their true
counterfactuals with c_k = 1 (Eq. 43) form ``test``. Cell types and concept values are read
from the ground truth in ``uns["simulation"]`` (the obs column of the intervened concept equals
it unless someone corrupted that column, which :func:`corrupt_concepts` never does when it is
protected).
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError
from sccbgm.simulation.process import _Record, simulate_counterfactual


@dataclass(frozen=True)
class InterventionTask:
    """A held-out (cell type u, concept k) pair, e.g. ``("celltype_2", "concept_0")``."""

    cell_type: str
    concept: str


@dataclass(frozen=True)
class InterventionSplit:
    """One C.6 split.

    Attributes:
        train: every cell except those of type u, plus a random half of the type-u cells with
            c_k = 0 (when their number is odd the extra cell goes here); original cell order.
        intervene: the other half of the type-u cells with c_k = 0 (c_k = 0 in obs).
        test: true counterfactuals of ``intervene`` with c_k set to 1, cell by cell in the same
            order and with the same obs_names.
        task: the held-out pair.
    """

    train: ad.AnnData
    intervene: ad.AnnData
    test: ad.AnnData
    task: InterventionTask


def _truth(adata: ad.AnnData) -> tuple[_Record, np.ndarray, np.ndarray]:
    """Record, cell-type index (n_obs) and true concepts (n_obs, K) of the cells in ``adata``."""
    record = _Record.from_adata(adata)
    index = record.original_index(adata.obs_names)
    return record, record.cell_type_index[index], record.concepts[index]


def _subset(adata: ad.AnnData, cells: np.ndarray) -> ad.AnnData:
    """``adata[cells].copy()`` keeping every category of categorical obs columns (as in test)."""
    out = adata[cells].copy()
    for name, column in adata.obs.items():
        if isinstance(column.dtype, pd.CategoricalDtype):
            out.obs[name] = out.obs[name].cat.set_categories(column.cat.categories)
    return out


def eligible_intervention_tasks(adata: ad.AnnData, min_cells: int = 20) -> list[InterventionTask]:
    """Every (cell type, concept) pair that can be held out, by cell type then concept.

    A pair is eligible when its cell type has at least ``min_cells`` cells with c_k = 1 and at
    least ``2 * min_cells`` with c_k = 0 (so that train and intervene halves each get
    ``min_cells``).
    """
    if isinstance(min_cells, bool) or not isinstance(min_cells, (int, np.integer)) or min_cells < 1:
        raise SCCBGMError(f"min_cells must be a positive integer, got {min_cells!r}.")
    record, cell_type, concepts = _truth(adata)
    eligible: list[InterventionTask] = []
    for u, type_name in enumerate(record.cell_type_names):
        in_type = cell_type == u
        for k, concept in enumerate(record.concept_names):
            n_on = int(concepts[in_type, k].sum())
            n_off = int(in_type.sum()) - n_on
            if n_on >= min_cells and n_off >= 2 * min_cells:
                eligible.append(InterventionTask(type_name, concept))
    return eligible


def choose_intervention_tasks(
    adata: ad.AnnData, n_tasks: int = 5, seed: int = 0, min_cells: int = 20
) -> list[InterventionTask]:
    """Randomly pick ``n_tasks`` distinct (cell type, concept) pairs to hold out (paper: 5).

    The eligible pairs (:func:`eligible_intervention_tasks`) are sampled without replacement
    with ``numpy.random.default_rng(seed)``; the result is reproducible.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or n_tasks < 1:
        raise SCCBGMError(f"n_tasks must be a positive integer, got {n_tasks!r}.")
    eligible = eligible_intervention_tasks(adata, min_cells)
    if len(eligible) < n_tasks:
        raise SCCBGMError(
            f"only {len(eligible)} (cell type, concept) pair(s) have >= {min_cells} cells with "
            f"the concept on and >= {2 * min_cells} with it off; cannot choose {n_tasks} tasks. "
            "Simulate more cells or lower min_cells / n_tasks."
        )
    chosen = np.random.default_rng(seed).choice(len(eligible), size=int(n_tasks), replace=False)
    return [eligible[i] for i in chosen]


def intervention_split(
    adata: ad.AnnData, task: InterventionTask, seed: int = 0
) -> InterventionSplit:
    """Split ``adata`` for held-out pair ``task`` (C.6); ``seed`` drives the random halving."""
    if not isinstance(task, InterventionTask):
        raise SCCBGMError(f"task must be an InterventionTask, got {type(task).__name__}.")
    record, cell_type, concepts = _truth(adata)
    if task.cell_type not in record.cell_type_names:
        raise SCCBGMError(
            f"unknown cell type {task.cell_type!r}; simulated types: {record.cell_type_names}."
        )
    if task.concept not in record.concept_names:
        raise SCCBGMError(
            f"unknown concept {task.concept!r}; simulated concepts: {record.concept_names}."
        )
    in_type = cell_type == record.cell_type_names.index(task.cell_type)
    concept_on = concepts[:, record.concept_names.index(task.concept)] == 1
    off = np.flatnonzero(in_type & ~concept_on)
    if off.size < 2:
        raise SCCBGMError(
            f"{task.cell_type} has {off.size} cell(s) with {task.concept} = 0; need at least 2 "
            "to split into train and intervene."
        )
    shuffled = np.random.default_rng(seed).permutation(off)
    intervene = np.sort(shuffled[: off.size // 2])
    in_train = ~in_type
    in_train[shuffled[off.size // 2 :]] = True
    return InterventionSplit(
        train=_subset(adata, in_train),
        intervene=_subset(adata, intervene),
        test=simulate_counterfactual(adata, {task.concept: 1}, cells=intervene),
        task=task,
    )
