"""Reports: a Markdown file with tables, PNG plots and the CSV of every run, in one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TRIVIAL = ("no edit", "mean shift (other types)")


def markdown_table(df: pd.DataFrame, *, lower_is_better: tuple[str, ...] = (), digits: int = 4) -> str:
    """A GitHub Markdown table; the best value of each ``lower_is_better`` column is bolded."""
    best = {c: df[c].min() for c in lower_is_better if c in df}
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for col in df.columns:
            v = row[col]
            if isinstance(v, (float, np.floating)):
                s = f"{v:.{digits}g}"
                if col in best and np.isclose(v, best[col]):
                    s = f"**{s}**"
            else:
                s = str(v)
            cells.append(s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sem(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean +/- standard error of ``cols`` per ``by`` group, formatted as strings."""
    g = df.groupby(by, sort=False)[cols]
    mean, sem, n = g.mean(), g.sem(ddof=1), g.count()
    out = mean.copy().astype(object)
    for c in cols:
        out[c] = [
            f"{m:.4g} ± {s:.2g}" if k > 1 and np.isfinite(s) else f"{m:.4g}"
            for m, s, k in zip(mean[c], sem[c], n[c], strict=True)
        ]
    return out.reset_index()


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


def plot_errors(table: pd.DataFrame, path: Path, metrics: tuple[str, ...] = ("mse_genes", "rmmd")) -> Path:
    """Bar chart of each editor's score (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        agg = table.groupby("editor", sort=False)[metric].mean()
        colors = ["0.6" if e in TRIVIAL else "C0" for e in agg.index]
        ax.barh(agg.index, agg.values, color=colors)
        ax.set_xlabel(f"{metric} (lower is better)")
        ax.invert_yaxis()
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    bg = train_pcs[rng.permutation(len(train_pcs))[:max_points]]
    panels = list(predicted.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    f, t = pca.transform(factual), pca.transform(truth)
    for ax, (label, x) in zip(axes, panels, strict=True):
        p = pca.transform(x)
        ax.scatter(bg[:, 0], bg[:, 1], s=2, c="0.85", label="training cells")
        ax.scatter(f[:, 0], f[:, 1], s=4, c="C1", label="before edit")
        ax.scatter(t[:, 0], t[:, 1], s=4, c="C2", label="true counterfactual")
        ax.scatter(p[:, 0], p[:, 1], s=4, c="C0", alpha=0.6, label="edited")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    axes[0].legend(fontsize=7, markerscale=3, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_history(model: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = model.plot_history()
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return path
