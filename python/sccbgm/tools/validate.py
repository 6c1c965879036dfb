"""``sccbgm.validate``: how far can an edit be trusted on *these* data?

For every group ``g`` (e.g. each ``cell_type``) in which both the source state and the edited
state of ``edit`` (e.g. ``{"condition": "stim"}``) are observed with at least ``min_cells``
cells:

1. hold out the cells of ``g`` in the edited state (the answer), fit scCBGM on every other cell
   (on raw counts when the input holds them, as :func:`sccbgm.fit` does);
2. edit the source cells of ``g`` to the edited state with the model's default edit (on counts:
   the count-space edit of the ensemble, group-calibrated when ``groupby`` is passed);
3. score the edited cells against the real held-out cells, next to the two trivial floors
   (:mod:`sccbgm.bench.editors`): *no edit*, and the *mean shift seen in the other groups*
   (mean(edited state) - mean(source state) of the training cells of every other group,
   averaged over groups, added to the source cells, clipped at 0).

Scores are those of ``sccbgm bench real`` (:func:`sccbgm.bench.real.run_task`): rMMD, rFID, rSD
(paper Eq. 10: D(edited, target) / min_gamma D(p_gamma, target) on ``n_eval_pcs`` PCs fitted on
the training cells, p_gamma the training populations of the categorical concepts), ``mean_dist``
(||mean(edited) - mean(target)||_2 over log-normalised genes) and ``pearson_delta`` (Pearson
correlation over genes of the predicted and the real mean change) and ``response_share`` (how much
of the real mean change the edit reproduces: 1 in full, 0.5 half its size). A group on which the model
beats both floors on rMMD and on mean_dist is one where the edit is worth more than the trivial
answer; elsewhere, do not trust it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError
from sccbgm.tools._common import (
    check_columns,
    lognormalise_input,
    read_expression,
    save_figure,
    say,
)

MODEL_EDITOR = "scCBGM"
COLUMNS = (
    "group", "editor", "n_source", "n_target", "rmmd", "rfid", "rsd", "mean_dist", "pearson_delta", "response_share",
    "closest_mmd", "fit_seconds", "model_beats_floors",
)


def _source_state(obs: pd.DataFrame, edit: Mapping[str, Any], source: Mapping[str, Any] | None) -> dict[str, Any]:
    """The source state: given, or for each edited column its only other observed value."""
    if source is not None:
        if not isinstance(source, Mapping) or set(source) != set(edit):
            raise SCCBGMError(f"`source` must name the same columns as `edit` ({sorted(edit)}), got {source!r}.")
        return dict(source)
    out = {}
    for column, value in edit.items():
        series = obs[column].dropna()
        observed = list(series.unique())
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        try:
            same = [bool(np.isclose(float(v), float(value))) if numeric else str(v) == str(value) for v in observed]
        except (TypeError, ValueError):
            raise SCCBGMError(f"edit value {column}={value!r} is not a number, but adata.obs[{column!r}] is numeric.") from None
        if not any(same):
            raise SCCBGMError(f"edit value {column}={value!r} is not observed in adata.obs[{column!r}].")
        others = sorted((v for v, hit in zip(observed, same, strict=True) if not hit), key=str)
        if len(others) != 1:
            raise SCCBGMError(
                f"adata.obs[{column!r}] has {len(others)} values besides {value!r} ({others[:5]}); "
                f"say which cells are the source state with `source={{{column!r}: ...}}`."
            )
        out[column] = others[0].item() if isinstance(others[0], np.generic) else others[0]
    return out


def validate(
    adata: Any,
    concepts: Sequence[str],
    edit: Mapping[str, Any],
    group: str,
    *,
    source: Mapping[str, Any] | None = None,
    groups: Sequence[str] | None = None,
    layer: str | None = None,
    min_cells: int = 10,
    seed: int = 0,
    preset: str = "cpu",
    n_eval_pcs: int = 50,
    progress: bool | None = None,
    plot: str | os.PathLike[str] | None = None,
    **fit_options: Any,
) -> pd.DataFrame:
    """Trust report for ``edit`` on ``adata``: one held-out fit per eligible ``group`` value.

    Parameters
    ----------
    adata
        Cells x genes, raw counts or log-normalised (as for :func:`sccbgm.fit`).
    concepts
        obs columns to fit on; must include every column of ``edit``.
    edit
        ``{column: edited value}``, e.g. ``{"condition": "stim"}``.
    group
        obs column whose values are validated one at a time (e.g. ``"cell_type"``).
    source
        ``{column: source value}``; default: the one other value of each edited column.
    groups
        Only these group values (default: every eligible one).
    min_cells
        A group is eligible when it has at least this many source and edited-state cells.
    seed, preset, **fit_options
        Passed to :func:`sccbgm.fit` (e.g. ``epochs=30``, ``n_pcs=32``, ``groupby="cell_type"``):
        pass the options you fit with, so that the report scores the edit you use. On raw counts
        each held-out fit is on the counts, as :func:`sccbgm.fit` does, and the model's default
        edit (count space, ensemble, group calibration) is scored; on log-normalised input, the
        additive residual edit.
    n_eval_pcs
        Principal components (of the training cells) the distribution metrics work in.
    plot
        Path to save :func:`plot_validation`'s figure to.

    Returns
    -------
    DataFrame, one row per eligible group x editor (``"scCBGM"``, ``"no edit"``, ``"mean shift
    (other types)"``), columns :data:`COLUMNS` (lower is better for rmmd/rfid/rsd/mean_dist,
    higher for pearson_delta; response_share is best at 1; ``closest_mmd`` is the training population of the rMMD denominator;
    ``model_beats_floors``: the model beat both floors on rMMD and mean_dist in that group).
    ``attrs["verdict"]`` says in words which groups the model beat the floors on;
    ``attrs["skipped"]`` lists the groups that were not eligible and why.
    """
    import anndata as ad

    from sccbgm.api import _check_adata
    from sccbgm.bench.real import ALL_GROUPS, MEAN_SHIFT, NO_EDIT, run_task

    _check_adata(adata)
    concepts = [concepts] if isinstance(concepts, str) else list(concepts)
    if not isinstance(edit, Mapping) or not edit:
        raise SCCBGMError(f"`edit` must be a non-empty mapping {{column: edited value}}, got {edit!r}.")
    if not isinstance(group, str):
        raise SCCBGMError(f"`group` must be one obs column name, got {group!r}.")
    check_columns(adata, [*concepts, *edit, group], "concept / edit / group")
    not_concepts = [c for c in edit if c not in concepts]
    if not_concepts:
        raise SCCBGMError(f"edited column(s) {not_concepts} must be among the concepts {concepts}.")
    if group in edit:
        raise SCCBGMError(f"`group` ({group!r}) cannot be an edited column.")
    if not isinstance(min_cells, int | np.integer) or min_cells < 2:
        raise SCCBGMError(f"`min_cells` must be an integer >= 2, got {min_cells!r}.")
    src_state = _source_state(adata.obs, edit, source)

    from sccbgm.access import match_obs

    labels = adata.obs[group].astype(str)
    wanted = list(dict.fromkeys(labels)) if groups is None else [str(g) for g in groups]
    unknown = [g for g in wanted if g not in set(labels)]
    if unknown:
        raise SCCBGMError(f"group value(s) {unknown} not found in adata.obs[{group!r}].")
    is_src, is_tgt = match_obs(adata.obs, src_state), match_obs(adata.obs, dict(edit))
    eligible, skipped = [], {}
    for g in wanted:
        n_src, n_tgt = int((is_src & (labels == g)).sum()), int((is_tgt & (labels == g)).sum())
        if min(n_src, n_tgt) < min_cells:
            skipped[g] = f"{n_src} source / {n_tgt} edited-state cells (< min_cells={min_cells})"
        else:
            eligible.append(g)
    if not eligible:
        raise SCCBGMError(
            f"no {group} value has both {src_state} and {dict(edit)} with >= {min_cells} cells; nothing "
            f"to validate ({skipped})."
        )

    raw, kind = read_expression(adata, layer)  # read once: a backed matrix is read whole, here only
    columns = [*concepts, group, *([fit_options["groupby"]] if isinstance(fit_options.get("groupby"), str) else [])]
    check_columns(adata, columns, "groupby")
    work = ad.AnnData(X=lognormalise_input(raw, kind).astype(np.float32), obs=adata.obs[list(dict.fromkeys(columns))].copy(),
                      var=pd.DataFrame(index=adata.var_names.astype(str)))
    counts_layer = None
    if kind == "counts":  # fit on the counts, as sccbgm.fit does, so the report scores the default edit
        import scipy.sparse as sp

        from sccbgm.access import get_matrix

        matrix = get_matrix(adata, layer)  # in memory: sparse counts keep their storage and dtype
        work.layers["counts"] = sp.csr_matrix(matrix) if sp.issparse(matrix) else raw
        counts_layer = "counts"
    del raw
    spec = {"concepts": [{"name": c} for c in concepts]}
    fit = {k: v for k, v in fit_options.items() if k != "groupby"}  # groupby: run_task's own argument
    frames = []
    for i, g in enumerate(eligible, 1):
        say(progress, f"validate: {group}={g} ({i}/{len(eligible)}): fit without its {dict(edit)} cells, edit, score")
        task = {"name": f"{group}={g}", "holdout": {group: g, **edit}, "source": {group: g, **src_state},
                "target": {group: g, **edit}, "set": dict(edit), "group_key": None}
        res = run_task(work, spec, task, seed=seed, models=["sccbgm"], editors=[MODEL_EDITOR], fit=fit,
                       preset=preset, n_eval_pcs=n_eval_pcs, log=lambda m: say(progress, m), counts_layer=counts_layer,
                       groupby=fit_options.get("groupby"))
        rows = res["table"]
        rows = rows[rows["group"] == ALL_GROUPS].assign(group=g)
        frames.append(rows)
    table = pd.concat(frames, ignore_index=True)
    floors = (NO_EDIT, MEAN_SHIFT)
    verdict = []
    beats = {}
    for g, sub in table.groupby("group", sort=False):
        by = sub.set_index("editor")
        fl = by.loc[by.index.intersection(floors)]
        won = all(by.loc[MODEL_EDITOR, m] < fl[m].min() for m in ("rmmd", "mean_dist"))
        beats[g] = bool(won)
        best_floor = fl["rmmd"].idxmin()
        verdict.append(
            f"{group}={g}: {'beats' if won else 'does NOT beat'} the floors "
            f"(rMMD {by.loc[MODEL_EDITOR, 'rmmd']:.3f} vs {best_floor} {fl['rmmd'].min():.3f}; mean_dist "
            f"{by.loc[MODEL_EDITOR, 'mean_dist']:.2f} vs {fl['mean_dist'].min():.2f})"
        )
    table["model_beats_floors"] = table["group"].map(beats).astype(bool)
    table = table[list(COLUMNS)]
    won = [g for g, b in beats.items() if b]
    lost = [g for g, b in beats.items() if not b]
    head = (f"The model beat both floors on {len(won)} of {len(beats)} groups"
            + (f" ({', '.join(won)})" if won else "") + (f"; not on {', '.join(lost)}" if lost else "") + ".")
    table.attrs.update({
        "verdict": "\n".join([head, *verdict]),
        "skipped": skipped,
        "edit": {str(k): str(v) for k, v in edit.items()},
        "source": {str(k): str(v) for k, v in src_state.items()},
        "group": group,
        "n_eval_pcs": n_eval_pcs,
        "seed": seed,
    })
    if plot is not None:
        plot_validation(table, plot)
    return table


def plot_validation(
    table: pd.DataFrame, path: str | os.PathLike[str] | None = None, *, metrics: Sequence[str] = ("rmmd", "mean_dist")
) -> Any:
    """Bars per group and editor for each of ``metrics`` (lower is better); returns the figure.

    Groups on which the model beat both floors are marked with a star.
    """
    from matplotlib.figure import Figure

    missing = [c for c in ("group", "editor", *metrics) if c not in table.columns]
    if missing:
        raise SCCBGMError(f"the table lacks column(s) {missing}; pass the table returned by sccbgm.validate.")
    groups = list(dict.fromkeys(table["group"]))
    editors = list(dict.fromkeys(table["editor"]))
    fig = Figure(figsize=(max(5.0, 1.1 * len(groups)) * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    width = 0.8 / len(editors)
    pos = np.arange(len(groups))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, editor in enumerate(editors):
            vals = table[table["editor"] == editor].set_index("group").reindex(groups)[metric]
            ax.bar(pos + (j - (len(editors) - 1) / 2) * width, vals, width, label=editor)
        if "model_beats_floors" in table:
            won = table.drop_duplicates("group").set_index("group").reindex(groups)["model_beats_floors"]
            top = table.groupby("group")[metric].max().reindex(groups)
            for p, g in enumerate(groups):
                if bool(won[g]):
                    ax.text(p, top[g] * 1.03, "*", ha="center", fontsize=14)
        if metric.startswith("r"):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(pos, groups, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} (lower is better)")
    axes[0][0].legend(fontsize=8)
    edit = table.attrs.get("edit")
    fig.suptitle(f"held-out validation of {edit} per {table.attrs.get('group', 'group')} (* model beats both floors)"
                 if edit else "held-out validation (* model beats both floors)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
