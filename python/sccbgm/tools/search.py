"""``sccbgm.search_concepts``: which pathway edits move source cells toward target cells?

The paper's case study (section 5.3), automated:

1. score pathway activities on all cells (PROGENy through decoupler, :mod:`sccbgm.pathways`,
   scaled to [0, 1]), or take given obs columns of activities;
2. rank the pathways by how well they separate the ``source`` from the ``target`` cells
   (Cohen's d of the scaled activity, target minus source; ``attrs["separation"]``);
3. fit scCBGM on all cells with the top ``n_pathways`` as continuous concepts (plus the given
   ``concepts``, e.g. cell type; do not give a concept that *is* the source/target difference,
   such as the condition, or it explains the difference instead of the pathways);
4. edit the source cells, setting each top pathway (and each combination of the top
   ``n_combine``) to the target cells' mean activity;
5. rank the edits by how close the edited cells come to the target cells: rMMD (MMD to the
   target on ``n_eval_pcs`` PCs of all cells, divided by the smallest MMD of any observed
   population: the source cells and, per combination of the given categorical concepts, the
   non-target cells), and the marker genes (the ``n_markers`` genes with the largest
   |mean(target) - mean(source)|): ``marker_recovered`` = 1 - ||mean(edited) - mean(target)|| /
   ||mean(source) - mean(target)|| over them (1: all of the marker difference reproduced, 0: none),
   ``marker_r`` = Pearson correlation of the edit's mean change with the real one over them.

The unedited source cells are a row of the table too (``"(no edit)"``): an edit below it moved
the cells away from the target.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError
from sccbgm.tools._common import check_columns, lognormalised, save_figure, say

NO_EDIT = "(no edit)"
COLUMNS = ("pathway", "rank", "rmmd", "mmd", "marker_recovered", "marker_r", "n_pathways", "values")
PREFIX = "progeny_"


def _mask(adata: Any, cells: Any, what: str) -> np.ndarray:
    """Cells given as a bool mask, obs names, integer indices or a selector {obs column: value}."""
    from sccbgm.datasets import select_cells as select_by
    from sccbgm.editing import select_cells

    if isinstance(cells, Mapping):
        mask = select_by(adata.obs, cells)
    else:
        if cells is None:
            raise SCCBGMError(f"`{what}` is required: a bool mask, cell names or {{obs column: value}}.")
        mask = np.zeros(adata.n_obs, dtype=bool)
        mask[select_cells(adata, cells)] = True
    if mask.sum() < 2:
        raise SCCBGMError(f"`{what}` selects {int(mask.sum())} cells; at least 2 are needed.")
    return mask


def _cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


def search_concepts(
    adata: Any,
    source: Any,
    target: Any,
    *,
    pathways: str | Sequence[str] = "progeny",
    organism: str = "human",
    weights: str | os.PathLike[str] | None = None,
    concepts: Sequence[str] = (),
    n_pathways: int = 5,
    n_combine: int = 3,
    n_markers: int = 50,
    layer: str | None = None,
    seed: int = 0,
    preset: str = "cpu",
    n_eval_pcs: int = 50,
    progress: bool | None = None,
    plot: str | os.PathLike[str] | None = None,
    **fit_options: Any,
) -> pd.DataFrame:
    """Rank pathway edits of the ``source`` cells by how close they bring them to the ``target`` cells.

    Parameters
    ----------
    adata
        Cells x genes (raw counts or log-normalised), gene symbols of ``organism`` as var_names.
    source, target
        The two cell sets: bool masks, obs names, integer indices, or selectors
        ``{obs column: value}`` (e.g. ``{"cell_type": "CD14+Mono", "condition": "ctrl"}``).
    pathways
        ``"progeny"``: score the 14 PROGENy pathways (``organism``, or a ``weights`` CSV); or a list
        of obs columns already holding pathway activities (continuous).
    concepts
        Further concept columns of the model (e.g. ``["cell_type"]``).
    n_pathways
        How many of the most separating pathways become concepts and are edited singly.
    n_combine
        Every combination (of 2 up to ``n_combine``) of the top ``n_combine`` pathways is edited too.
    n_markers
        Marker genes of the source -> target difference used by ``marker_recovered`` / ``marker_r``.
    seed, preset, **fit_options
        Passed to :func:`sccbgm.fit` (e.g. ``epochs=30``).
    n_eval_pcs
        Principal components (of all cells) the MMD works in.
    plot
        Path to save :func:`plot_search`'s figure to.

    Returns
    -------
    DataFrame, best edit first, columns :data:`COLUMNS`: ``pathway`` (a pathway, a combination
    "A + B", or ``"(no edit)"``), ``rank`` (1 = best), ``rmmd`` (lower is better), ``mmd``,
    ``marker_recovered``, ``marker_r`` (higher is better), ``n_pathways`` (edited together),
    ``values`` (the activities set, scaled to [0, 1]). ``attrs``: ``separation`` (every pathway's
    Cohen's d, target - source, and the source / target mean activity), ``markers``, ``report``
    (a few sentences), ``model`` (the fitted model, with the pathway concepts named
    ``progeny_<pathway>`` for PROGENy: ready for :func:`sccbgm.sweep`), ``activities`` (cells x
    pathways, the scaled activities the model was fitted on).
    """
    import anndata as ad

    import sccbgm
    from sccbgm import metrics as M
    from sccbgm.api import _check_adata

    _check_adata(adata)
    concepts = [concepts] if isinstance(concepts, str) else list(concepts)
    check_columns(adata, concepts, "concept")
    for name, value, low in (("n_pathways", n_pathways, 1), ("n_combine", n_combine, 1), ("n_markers", n_markers, 1)):
        if not isinstance(value, int | np.integer) or value < low:
            raise SCCBGMError(f"`{name}` must be a positive integer, got {value!r}.")
    src, tgt = _mask(adata, source, "source"), _mask(adata, target, "target")
    if (src & tgt).any():
        raise SCCBGMError(f"{int((src & tgt).sum())} cells are in both `source` and `target`; the sets must be disjoint.")

    x, _ = lognormalised(adata, layer)
    work = ad.AnnData(X=x.astype(np.float32), obs=adata.obs[concepts].copy(),
                      var=pd.DataFrame(index=adata.var_names.astype(str)))
    work.obs_names = adata.obs_names.astype(str)
    if isinstance(pathways, str):
        if pathways != "progeny":
            raise SCCBGMError(f"`pathways` must be 'progeny' or a list of obs columns, got {pathways!r}.")
        from sccbgm.pathways import progeny_activities, scale_unit

        say(progress, "search: scoring PROGENy pathway activities")
        scaled, _ = scale_unit(progeny_activities(work, organism=organism, weights=weights))
        columns = {p: f"{PREFIX}{p}" for p in scaled.columns}
        for p, col in columns.items():
            work.obs[col] = scaled[p].to_numpy(dtype=np.float32)
    else:
        names = [str(p) for p in pathways]
        check_columns(adata, names, "pathway")
        columns = {p: p for p in names}
        for p in names:
            vals = pd.to_numeric(adata.obs[p], errors="coerce").to_numpy(dtype=float)
            if not np.isfinite(vals).all():
                raise SCCBGMError(f"pathway column {p!r} must be numeric without missing values.")
            work.obs[p] = vals.astype(np.float32)
    overlap = [p for p in columns.values() if p in concepts]
    if overlap:
        raise SCCBGMError(f"column(s) {overlap} are given both as pathways and as concepts.")

    separation = pd.DataFrame(
        [{"pathway": p, "cohen_d": _cohen_d(work.obs[c].to_numpy(float)[tgt], work.obs[c].to_numpy(float)[src]),
          "source_mean": float(work.obs[c].to_numpy(float)[src].mean()),
          "target_mean": float(work.obs[c].to_numpy(float)[tgt].mean())} for p, c in columns.items()]
    )
    separation = separation.reindex(separation["cohen_d"].abs().sort_values(ascending=False, kind="stable").index)
    separation = separation.reset_index(drop=True)
    top = list(separation["pathway"][: min(n_pathways, len(separation))])
    target_value = dict(zip(separation["pathway"], separation["target_mean"], strict=True))

    say(progress, f"search: fitting scCBGM with concepts {concepts + [columns[p] for p in top]}")
    # the model sees the user's own matrix (counts or log-normalised), so that it edits the same
    # kind of data later (e.g. in sccbgm.sweep); its log-normalisation is the one of ``x``
    from sccbgm.data import get_matrix

    fit_data = ad.AnnData(X=get_matrix(adata, layer), obs=work.obs.copy(), var=work.var.copy())
    model = sccbgm.fit(fit_data, concepts + [columns[p] for p in top], seed=seed, preset=preset,
                       progress=progress, **fit_options)
    edits: list[tuple[str, ...]] = [(p,) for p in top]
    head = top[: min(n_combine, len(top))]
    for k in range(2, len(head) + 1):
        edits += list(itertools.combinations(head, k))

    cells = fit_data[src].copy()
    x_src, x_tgt = x[src], x[tgt]
    delta_real = x_tgt.mean(0) - x_src.mean(0)
    markers = np.argsort(-np.abs(delta_real), kind="stable")[: min(n_markers, x.shape[1])]
    pca = M.pca_features(x, n_components=min(n_eval_pcs, x.shape[0] - 1, x.shape[1]), seed=seed)
    tgt_f = pca.transform(x_tgt)
    bandwidth = M.median_bandwidth(tgt_f, seed=seed) or 1.0

    def mmd(features: np.ndarray) -> float:
        return M.mmd(features, tgt_f, bandwidth=bandwidth, seed=seed)

    populations = {"source": src}
    categorical = [c for c in concepts if work.obs[c].nunique(dropna=True) <= 20]
    if categorical:
        labels = work.obs[categorical].astype(str).agg("|".join, axis=1).to_numpy()
        for lab in np.unique(labels[~tgt]):
            in_pop = (labels == lab) & ~tgt
            if in_pop.sum() >= 2:
                populations[lab] = in_pop
    denominator = min(mmd(pca.transform(x[m])) for m in populations.values())
    before = np.linalg.norm(delta_real[markers])

    def score(name: str, edited: np.ndarray, combo: tuple[str, ...]) -> dict[str, Any]:
        num = mmd(pca.transform(edited))
        change = edited.mean(0) - x_src.mean(0)
        after = np.linalg.norm(edited.mean(0)[markers] - x_tgt.mean(0)[markers])
        corr = (float(np.corrcoef(change[markers], delta_real[markers])[0, 1])
                if np.std(change[markers]) > 0 and np.std(delta_real[markers]) > 0 else float("nan"))
        return {"pathway": name, "rmmd": num / denominator if denominator > 0 else float("nan"), "mmd": num,
                "marker_recovered": 1.0 - after / before if before > 0 else float("nan"), "marker_r": corr,
                "n_pathways": len(combo),
                "values": "; ".join(f"{p}={target_value[p]:.3f}" for p in combo)}

    rows = [score(NO_EDIT, x_src, ())]
    for i, combo in enumerate(edits, 1):
        say(progress, f"search: edit {i}/{len(edits)}: {' + '.join(combo)}")
        set_ = {columns[p]: float(target_value[p]) for p in combo}
        edited = np.asarray(sccbgm.edit(model, cells, set=set_).X, dtype=np.float64)
        rows.append(score(" + ".join(combo), edited, combo))
    table = pd.DataFrame(rows).sort_values(["rmmd", "marker_recovered"], ascending=[True, False], kind="stable")
    table["rank"] = np.arange(1, len(table) + 1)
    table = table[list(COLUMNS)].reset_index(drop=True)
    best = table.iloc[0]
    unedited = table.loc[table["pathway"] == NO_EDIT].iloc[0]
    report = [
        f"{int(src.sum())} source and {int(tgt.sum())} target cells; pathways separating them most "
        f"(Cohen's d, target - source): "
        + ", ".join(f"{r.pathway} {r.cohen_d:+.2f}" for r in separation.head(n_pathways).itertuples()) + ".",
        f"Best edit: {best['pathway']} (rMMD {best['rmmd']:.3f} vs {unedited['rmmd']:.3f} unedited; "
        f"{100 * best['marker_recovered']:.0f}% of the {len(markers)} marker genes' mean difference reproduced).",
    ]
    table.attrs.update({
        "separation": separation,
        "markers": [str(work.var_names[j]) for j in markers],
        "report": "\n".join(report),
        "model": model,
        "activities": work.obs[[columns[p] for p in columns]].copy(),
        "n_source": int(src.sum()),
        "n_target": int(tgt.sum()),
    })
    if plot is not None:
        plot_search(table, plot)
    return table


def plot_search(table: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> Any:
    """rMMD (lower is better) and marker recovery (higher is better) of each edit; returns the figure."""
    from matplotlib.figure import Figure

    missing = [c for c in ("pathway", "rmmd", "marker_recovered") if c not in table.columns]
    if missing:
        raise SCCBGMError(f"the table lacks column(s) {missing}; pass the table returned by sccbgm.search_concepts.")
    names = list(table["pathway"])
    pos = np.arange(len(names))[::-1]
    fig = Figure(figsize=(8.5, 0.35 * len(names) + 1.4))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    colors = ["grey" if n == NO_EDIT else "C0" for n in names]
    ax1.barh(pos, table["rmmd"], color=colors)
    ax1.set_xlabel("rMMD to target (lower is better)")
    ax2.barh(pos, table["marker_recovered"], color=colors)
    ax2.axvline(0.0, color="grey", lw=0.6)
    ax2.set_xlabel("marker difference reproduced (higher is better)")
    ax1.set_yticks(pos, names, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
