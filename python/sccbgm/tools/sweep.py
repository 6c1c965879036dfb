"""``sccbgm.sweep``: dose response of one concept.

The cells are edited to each value v of ``values`` in turn (``sccbgm.edit(model, cells,
set={concept: v})``) and, per group of cells and gene, the mean edited log-normalised expression
is recorded; ``change`` is that mean minus the mean of the unedited cells (the observed
log-normalised expression of the same cells). When the edit result carries the per-cell
uncertainty of an ensemble (``layers["edit_sd"]``, cells x genes, the members' standard
deviation), ``sd`` is its mean over the group's cells (the ensemble spread of the group's mean
response when the members' errors are shared by the cells; an upper bound otherwise); else NaN.

Genes are ranked by the size of their response, ``max_v change - min_v change`` (the largest
within any group); the top ones are in ``attrs["top_genes"]`` and are drawn by :func:`plot_sweep`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError
from sccbgm.tools._common import save_figure, say

COLUMNS = ("group", "value", "gene", "mean", "change", "sd", "n_cells")
ALL_CELLS = "(all)"
UNCERTAINTY_LAYER = "edit_sd"


def sweep(
    model: Any,
    adata: Any,
    concept: str,
    values: Sequence[Any],
    *,
    group: str | None = None,
    cells: Any = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    residual: bool | None = None,
    n_top: int = 10,
    progress: bool | None = None,
    plot: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Edit ``cells`` to each of ``values`` of ``concept`` and tabulate per-gene mean responses.

    Parameters
    ----------
    model
        A fitted model (:func:`sccbgm.fit` / :func:`sccbgm.load`) with ``concept`` among its concepts.
    adata
        Cells x genes, the same kind of values as at fit time.
    concept
        The concept column to sweep.
    values
        At least two values in the column's own units (numbers for a continuous concept, 0/1 for a
        binary one, categories for a categorical one), in the order they are drawn.
    group
        obs column: one response curve per value of it (default: all cells together).
    cells
        Cells to edit: bool mask, integer indices or obs names (default all).
    genes
        Only these genes in the table (default all of the model's genes).
    residual
        Edit output, as in :func:`sccbgm.edit` (default: the model's).
    n_top
        How many of the most responsive genes ``attrs["top_genes"]`` (and the plot) hold.
    plot
        Path to save :func:`plot_sweep`'s figure to.

    Returns
    -------
    DataFrame with columns :data:`COLUMNS`, one row per group x value x gene (``mean``, ``change``
    and ``sd`` in log-normalised units). ``attrs``: ``concept``, ``values``, ``top_genes``,
    ``response`` (gene -> response size), ``uncertainty`` (whether ``sd`` was available).
    """
    import sccbgm
    from sccbgm.api import _check_adata, _check_model
    from sccbgm.data import dense_rows
    from sccbgm.editing import model_matrix, select_cells

    _check_model(model)
    _check_adata(adata)
    if concept not in model.concepts:
        raise SCCBGMError(f"concept {concept!r} is not one of the model's concepts {model.concepts}.")
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray) or len(values) < 2:
        raise SCCBGMError(f"`values` must be a sequence of at least two values of {concept!r}, got {values!r}.")
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    if len({str(v) for v in values}) != len(values):
        raise SCCBGMError(f"`values` repeat: {values}.")
    if not isinstance(n_top, int | np.integer) or n_top < 1:
        raise SCCBGMError(f"`n_top` must be a positive integer, got {n_top!r}.")
    rows = select_cells(adata, cells)
    sub = adata[rows]
    if group is not None:
        if group not in sub.obs.columns:
            raise SCCBGMError(f"`group` column {group!r} not found in adata.obs.")
        labels = sub.obs[group].astype(str).to_numpy()
    else:
        labels = np.full(sub.n_obs, ALL_CELLS, dtype=object)
    names = list(dict.fromkeys(labels))
    gene_names = list(model.genes)
    if genes is not None:
        genes = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
        absent = [g for g in genes if g not in set(gene_names)]
        if absent:
            raise SCCBGMError(f"gene(s) {absent[:5]} are not among the model's genes.")
        cols = pd.Index(gene_names).get_indexer(genes)
    else:
        genes, cols = gene_names, np.arange(len(gene_names))

    observed = model.transform.lognorm(dense_rows(model_matrix(model, sub, np.arange(sub.n_obs), layer), slice(None)))
    base = {g: observed[labels == g][:, cols].mean(0) for g in names}
    means = {g: [] for g in names}
    sds: dict[str, list[np.ndarray]] = {g: [] for g in names}
    uncertainty = True
    for i, v in enumerate(values, 1):
        say(progress, f"sweep: {concept} = {v} ({i}/{len(values)})")
        edited = sccbgm.edit(model, sub, set={concept: v}, layer=layer, residual=residual)
        x = np.asarray(edited.X, dtype=np.float64)[:, cols]
        sd = edited.layers[UNCERTAINTY_LAYER] if UNCERTAINTY_LAYER in edited.layers else None
        uncertainty &= sd is not None
        for g in names:
            in_g = labels == g
            means[g].append(x[in_g].mean(0))
            sds[g].append(np.asarray(sd, dtype=np.float64)[in_g][:, cols].mean(0) if sd is not None
                          else np.full(len(cols), np.nan))
    frames = []
    response = np.zeros(len(cols))
    for g in names:
        m = np.vstack(means[g])  # (V, G)
        change = m - base[g][None, :]
        response = np.maximum(response, change.max(0) - change.min(0))
        n_v, n_g = m.shape
        frames.append(pd.DataFrame({
            "group": g,
            "value": np.repeat(np.asarray(values, dtype=object), n_g),
            "gene": np.tile(np.asarray(genes, dtype=object), n_v),
            "mean": m.ravel(),
            "change": change.ravel(),
            "sd": np.vstack(sds[g]).ravel() if uncertainty else np.nan,
            "n_cells": int((labels == g).sum()),
        }))
    table = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    order = np.argsort(-response, kind="stable")
    table.attrs.update({
        "concept": concept,
        "values": values,
        "group": group,
        "top_genes": [genes[j] for j in order[:n_top]],
        "response": {genes[j]: float(response[j]) for j in order[: max(n_top, 50)]},
        "uncertainty": bool(uncertainty),
        "residual": bool(edited.uns["sccbgm_edit"]["residual"]),
    })
    if plot is not None:
        plot_sweep(table, plot)
    return table


def plot_sweep(
    table: pd.DataFrame, path: str | os.PathLike[str] | None = None, *, genes: Sequence[str] | None = None,
    column: str = "change",
) -> Any:
    """Response curves (``column`` against the swept value) of ``genes`` (default
    ``attrs["top_genes"]``), one panel per group, with +-sd bands when available; returns the figure."""
    from matplotlib.figure import Figure

    missing = [c for c in ("group", "value", "gene", column) if c not in table.columns]
    if missing:
        raise SCCBGMError(f"the table lacks column(s) {missing}; pass the table returned by sccbgm.sweep.")
    genes = list(genes if genes is not None else table.attrs.get("top_genes") or table["gene"].unique()[:10])
    groups = list(dict.fromkeys(table["group"]))
    values = list(dict.fromkeys(table["value"]))
    numeric = all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values)
    xs = np.asarray(values, dtype=float) if numeric else np.arange(len(values), dtype=float)
    fig = Figure(figsize=(4.2 * len(groups) + 1.5, 3.6))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, g in zip(axes, groups, strict=True):
        sub = table[table["group"] == g]
        for gene in genes:
            curve = sub[sub["gene"] == gene].set_index("value").reindex(values)
            y = curve[column].to_numpy(dtype=float)
            ax.plot(xs, y, marker="o", ms=3, label=gene)
            sd = curve["sd"].to_numpy(dtype=float) if "sd" in curve else None
            if sd is not None and np.isfinite(sd).all():
                ax.fill_between(xs, y - sd, y + sd, alpha=0.15)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(str(g), fontsize=9)
        ax.set_xlabel(str(table.attrs.get("concept", "value")))
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values], rotation=30)
    axes[0].set_ylabel(f"{column} of mean log-expression")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)
