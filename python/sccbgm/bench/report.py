"""Reports: a Markdown file with tables, PNG plots and the CSV of every run, in one folder.

Table conventions (as in the paper's appendix tables): a cell is ``mean ± SEM`` over the runs
(interventions x seeds) that share its row and column, SEM = sample standard deviation / sqrt(n)
(ddof = 1; a single run shows the mean alone); the best (lowest mean) entry of each column is
bolded; the trivial editors are listed first and marked with a dagger as floor references.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NO_EDIT = "no edit"
MEAN_SHIFT = "mean shift (other types)"
TRIVIAL = (NO_EDIT, MEAN_SHIFT)
FLOOR_MARK = " †"


def format_number(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits (``nan`` -> ``-``)."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def format_mean_sem(mean: float, sem: float, n: int, digits: int = 4) -> str:
    """``"mean ± sem"`` (``sem`` to 2 significant digits); the mean alone when n < 2."""
    if n < 2 or not np.isfinite(sem):
        return format_number(mean, digits)
    return f"{format_number(mean, digits)} ± {sem:.2g}"


def markdown_table(df: pd.DataFrame, *, lower_is_better: tuple[str, ...] = (), digits: int = 4) -> str:
    """A GitHub Markdown table; the best value of each ``lower_is_better`` column is bolded."""
    best = {c: df[c].min() for c in lower_is_better if c in df}
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for col in df.columns:
            v = row[col]
            if isinstance(v, (float, np.floating)):
                s = format_number(float(v), digits)
                if col in best and np.isclose(v, best[col]):
                    s = f"**{s}**"
            else:
                s = str(v)
            cells.append(s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sem(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean ± standard error of ``cols`` per ``by`` group, formatted as strings."""
    g = df.groupby(by, sort=False)[cols]
    mean, sem, n = g.mean(), g.sem(ddof=1), g.count()
    out = mean.copy().astype(object)
    for c in cols:
        out[c] = [format_mean_sem(m, s, k) for m, s, k in zip(mean[c], sem[c], n[c], strict=True)]
    return out.reset_index()


def summarise(df: pd.DataFrame, row: str | list[str], column: str | None, metric: str) -> pd.DataFrame:
    """Long table of mean, sem and n of ``metric`` per (row, column) cell."""
    rows = [row] if isinstance(row, str) else list(row)
    keys = rows + ([column] if column else [])
    g = df.groupby(keys, sort=False)[metric]
    out = pd.DataFrame({"mean": g.mean(), "sem": g.sem(ddof=1), "n": g.count()}).reset_index()
    return out


def paper_table(
    df: pd.DataFrame,
    row: str | list[str],
    column: str | None,
    metric: str,
    *,
    row_order: Sequence[Any] | None = None,
    column_order: Sequence[Any] | None = None,
    digits: int = 4,
    mean_column: bool = False,
    mark_trivial: str | None = "editor",
) -> str:
    """Markdown table laid out like the paper's: rows x columns of ``mean ± SEM`` of ``metric``.

    The lowest mean of each column is bolded (ties all bolded). ``row`` may be several columns
    (shown side by side, e.g. Bottleneck / Skip / Loss). ``mean_column`` adds the mean over the
    columns (as Table S9's *Mean*). Rows whose ``mark_trivial`` value is a trivial editor get a
    dagger (floor reference).
    """
    rows = [row] if isinstance(row, str) else list(row)
    s = summarise(df, rows, column, metric)
    if column is None:
        s["_col"] = metric
        column = "_col"
    cols = list(column_order) if column_order is not None else list(dict.fromkeys(s[column]))
    row_keys = list(dict.fromkeys(map(tuple, s[rows].itertuples(index=False, name=None))))
    if row_order is not None:
        order = [tuple(r) if isinstance(r, (tuple, list)) else (r,) for r in row_order]
        row_keys = [r for r in order if r in row_keys] + [r for r in row_keys if r not in order]
    cell = {(tuple(r[rows]), r[column]): r for _, r in s.iterrows()}
    best = {c: s.loc[s[column] == c, "mean"].min() for c in cols}
    header = rows + [("" if c == "_col" else str(c)) or metric for c in cols] + (["Mean"] if mean_column else [])
    row_means = {k: np.nanmean([cell[(k, c)]["mean"] for c in cols if (k, c) in cell]) for k in row_keys}
    best_row_mean = min(row_means.values()) if row_means else np.nan
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in row_keys:
        labels = [str(v) for v in key]
        if mark_trivial in rows and key[rows.index(mark_trivial)] in TRIVIAL:
            labels[rows.index(mark_trivial)] += FLOOR_MARK
        entries = []
        for c in cols:
            r = cell.get((key, c))
            if r is None:
                entries.append("-")
                continue
            text = format_mean_sem(r["mean"], r["sem"], int(r["n"]), digits)
            if np.isfinite(r["mean"]) and np.isclose(r["mean"], best[c], rtol=1e-12, atol=0.0):
                text = f"**{text}**"
            entries.append(text)
        if mean_column:
            m = row_means[key]
            text = format_number(m, digits)
            entries.append(f"**{text}**" if np.isclose(m, best_row_mean, rtol=1e-12, atol=0.0) else text)
        lines.append("| " + " | ".join(labels + entries) + " |")
    return "\n".join(lines)


def ordering_statement(
    means: dict[str, float], expected: Sequence[str], *, metric: str, table: str, digits: int = 4,
    max_pairs: int = 6,
) -> str:
    """Does ``expected`` (best first, the paper's order) hold for our ``means`` (lower = better)?

    Reports the pairs of ``expected`` (both present) that we order as the paper does, the pairs
    we reverse (the first ``max_pairs`` of them), and our own order with the numbers. Entries missing from ``means`` are named.
    """
    present = [e for e in expected if e in means and np.isfinite(means[e])]
    missing = [e for e in expected if e not in present]
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    agree = [(a, b) for a, b in pairs if means[a] < means[b]]
    reversed_ = [(a, b) for a, b in pairs if means[a] >= means[b]]
    ours = sorted(present, key=lambda e: means[e])
    holds = bool(pairs) and not reversed_
    verdict = "HOLDS" if holds else ("does NOT hold" if pairs else "cannot be checked")
    text = (
        f"**{table}: the paper's ordering {verdict}** on {metric} "
        f"({len(agree)}/{len(pairs)} pairs ordered as in the paper). Paper: "
        + " < ".join(present)
        + ". Ours: "
        + " < ".join(f"{e} ({format_number(means[e], digits)})" for e in ours)
        + "."
    )
    if reversed_:
        shown = reversed_[:max_pairs]
        text += " Reversed pairs: " + "; ".join(
            f"{a} {format_number(means[a], digits)} vs {b} {format_number(means[b], digits)}" for a, b in shown
        ) + (f"; and {len(reversed_) - len(shown)} more" if len(reversed_) > len(shown) else "") + "."
    if missing:
        text += " Not run here: " + ", ".join(missing) + "."
    return text


def floor_statement(means: dict[str, float], models: Sequence[str], *, metric: str, digits: int = 4) -> str:
    """Which of ``models`` beat both trivial editors (``means`` holds their scores too)?"""
    floors = {t: means[t] for t in TRIVIAL if t in means and np.isfinite(means[t])}
    if not floors:
        return ""
    floor_name = min(floors, key=floors.__getitem__)
    floor = floors[floor_name]
    ranked = [m for m in models if m in means and np.isfinite(means[m])]
    beat = [m for m in ranked if means[m] < floor]
    lose = [m for m in ranked if means[m] >= floor]
    floor_text = ", ".join(f"{t} {format_number(v, digits)}" for t, v in floors.items())
    text = f"Floors on {metric}: {floor_text}. "
    if beat:
        text += "Beat both: " + ", ".join(f"{m} ({format_number(means[m], digits)})" for m in beat) + ". "
    else:
        text += "**No model beats both trivial editors.** "
    if lose:
        text += "Do not beat the better floor (" + floor_name + "): " + ", ".join(
            f"{m} ({format_number(means[m], digits)})" for m in lose) + "."
    return text.strip()


def verdict(table: pd.DataFrame, metric: str = "mse_genes") -> str:
    """One sentence: does the best non-trivial editor beat both trivial editors on ``metric``?"""
    trivial = table[table["editor"].isin(TRIVIAL)]
    models = table[~table["editor"].isin(TRIVIAL)]
    if models.empty or trivial.empty:
        return ""
    floor = trivial[metric].min()
    best = models.loc[models[metric].idxmin()]
    floor_name = trivial.loc[trivial[metric].idxmin(), "editor"]
    if best[metric] < floor:
        return f"{best['editor']} beats both trivial editors on {metric} ({best[metric]:.4g} vs {floor:.4g}, {floor_name})."
    return (
        f"NO model beats the trivial editors on {metric}: best model {best['editor']} "
        f"{best[metric]:.4g} vs {floor_name} {floor:.4g}."
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(table: pd.DataFrame, path: Path, metrics: tuple[str, ...] = ("mse_genes", "rmmd")) -> Path:
    """Bar chart of each editor's mean score with SEM error bars (one panel per metric);
    trivial editors grey."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.8 + 0.28 * table["editor"].nunique()))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        g = table.groupby("editor", sort=False)[metric]
        agg, err = g.mean(), g.sem(ddof=1).fillna(0.0)
        colors = ["0.6" if e in TRIVIAL else "C0" for e in agg.index]
        ax.barh(agg.index, agg.values, xerr=err.values, color=colors)
        ax.set_xlabel(f"{metric} (lower is better)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_grouped(
    table: pd.DataFrame, path: Path, *, x: str, hue: str, metric: str, title: str = "", floors: bool = True
) -> Path:
    """Grouped bars: mean ``metric`` (± SEM) per ``x`` value, one bar per ``hue`` value; the
    trivial editors' means (over everything) as dashed horizontal lines."""
    plt = _pyplot()
    models = table[~table["editor"].isin(TRIVIAL)] if "editor" in table else table
    xs = list(dict.fromkeys(models[x]))
    hues = list(dict.fromkeys(models[hue]))
    width = 0.8 / max(len(hues), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(xs)), 3.6))
    for i, h in enumerate(hues):
        sub = models[models[hue] == h].groupby(x, sort=False)[metric]
        mean, sem = sub.mean().reindex(xs), sub.sem(ddof=1).reindex(xs).fillna(0.0)
        ax.bar(np.arange(len(xs)) + (i - (len(hues) - 1) / 2) * width, mean.values, width, yerr=sem.values,
               label=str(h))
    if floors and "editor" in table:
        for j, t in enumerate(TRIVIAL):
            sub = table[table["editor"] == t]
            if len(sub):
                ax.axhline(sub[metric].mean(), ls="--", c=f"{0.3 + 0.3 * j}", lw=1, label=f"{t} (floor)")
    ax.set_xticks(np.arange(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (lower is better)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_before_after(table: pd.DataFrame, path: Path, *, columns: Sequence[tuple[str, str, str]], group: str) -> Path:
    """Figure S6 style: for each (title, before column, after column), one line per ``group``
    value from 'Before' to 'After'."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (title, before, after) in zip(axes, columns, strict=True):
        for i, (_, r) in enumerate(table.iterrows()):
            ax.plot([0, 1], [r[before], r[after]], marker="o", c=f"C{i % 10}", label=str(r[group]))
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["Before", "After"])
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
    axes[-1].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_embedding(
    train_pcs: np.ndarray, factual: np.ndarray, truth: np.ndarray, predicted: dict[str, np.ndarray],
    pca: Any, path: Path, *, max_points: int = 3000, seed: int = 0,
) -> Path:
    """PC1/PC2 of training cells (grey), the cells before the edit, their true counterfactuals
    and each editor's prediction."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    bg = train_pcs[rng.permutation(len(train_pcs))[:max_points]]
    panels = list(predicted.items())
    ncol = min(len(panels), 6)
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.1 * nrow), sharex=True, sharey=True, squeeze=False)
    f, t = pca.transform(factual), pca.transform(truth)
    for ax, (label, x) in zip(axes.ravel(), panels, strict=False):
        p = pca.transform(x)
        ax.scatter(bg[:, 0], bg[:, 1], s=2, c="0.85", label="training cells")
        ax.scatter(f[:, 0], f[:, 1], s=4, c="C1", label="before edit")
        ax.scatter(t[:, 0], t[:, 1], s=4, c="C2", label="true counterfactual")
        ax.scatter(p[:, 0], p[:, 1], s=4, c="C0", alpha=0.6, label="edited")
        ax.set_title(label, fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, markerscale=3, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(model: Any, path: Path) -> Path:
    plt = _pyplot()
    ax = model.plot_history()
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return path


def plot_uncertainty(
    factual: np.ndarray, truth: np.ndarray, edited: np.ndarray, lower: np.ndarray, upper: np.ndarray,
    path: Path, *, gene_names: Sequence[str] | None = None, n_genes: int = 6, n_cells: int = 60, seed: int = 0,
) -> Path:
    """Predicted vs true change of single cells with their 90% intervals, for the ``n_genes``
    genes with the largest mean true change; all arrays (n, G) log-normalised (``factual`` the
    cells before the edit). Each panel: ``n_cells`` random cells, the identity line, and the
    gene's coverage (fraction of all cells whose true value is inside the interval)."""
    from sccbgm.uncertainty import interval_coverage

    plt = _pyplot()
    true_change = truth - factual
    genes = np.argsort(-np.abs(true_change.mean(axis=0)))[:n_genes]
    rng = np.random.default_rng(seed)
    cells = rng.choice(truth.shape[0], size=min(n_cells, truth.shape[0]), replace=False)
    ncols = 3
    nrows = int(np.ceil(len(genes) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    for ax, g in zip(axes.ravel(), genes, strict=False):
        x = true_change[cells, g]
        y = edited[cells, g] - factual[cells, g]
        err = np.vstack([edited[cells, g] - lower[cells, g], upper[cells, g] - edited[cells, g]])
        inside = (truth[cells, g] >= lower[cells, g]) & (truth[cells, g] <= upper[cells, g])
        for mask, color, label in ((inside, "C0", "true value inside"), (~inside, "C3", "outside")):
            ax.errorbar(x[mask], y[mask], yerr=err[:, mask], fmt="o", ms=3, lw=0.7, color=color,
                        alpha=0.7, label=label)
        lim = [min(x.min(), (y - err[0]).min()), max(x.max(), (y + err[1]).max())]
        ax.plot(lim, lim, color="0.4", lw=0.8, ls="--")
        cov = interval_coverage(truth[:, g], lower[:, g], upper[:, g])
        name = gene_names[g] if gene_names is not None else f"gene {g}"
        ax.set_title(f"{name}: coverage {cov:.0%}", fontsize=9)
        ax.set_xlabel("true change (log-normalised)")
        ax.set_ylabel("predicted change, 90% interval")
    for ax in axes.ravel()[len(genes):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"Per-cell uncertainty: overall coverage {interval_coverage(truth, lower, upper):.1%} "
                 "of cell x gene pairs (target 90%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
