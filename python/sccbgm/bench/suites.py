"""The benchmark suites behind ``sccbgm bench {synthetic,noise,ablation,concepts,leakage,all}``.

Each suite writes to its output folder: ``results.csv`` (one row per editor x run), ``report.md``
(tables laid out like the paper's, mean ± SEM over runs, best bolded, the two trivial editors as
floor rows, and a statement per table of whether the paper's ordering holds, with numbers) and
PNG plots. Sizes and hyper-parameters per scale are in :data:`SCALES` (``quick``: a 2-core CPU,
the five suites in under 30 minutes together; ``paper``: the paper's protocol, for a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.bench import report
from sccbgm.bench.peers import PEERS
from sccbgm.bench.report import MEAN_SHIFT, NO_EDIT, TRIVIAL
from sccbgm.bench.synthetic import (
    ModelRun,
    concept_columns,
    expected_counterfactual,
    prepare_task,
    run_models,
    score,
    trivial_predictions,
)

Log = Callable[[str], None]
DATASETS = ["synthetic1", "synthetic2", "synthetic3"]
NOISE_KINDS = ["missing", "irrelevant", "incorrect", "duplicate"]

# ----------------------------------------------------------------------------- sizes
# cross_cov_weight 0.5 (the paper's) for the simulator: its concept activations depend on cell
# type, which the cross-covariance penalty of the CPU preset (2.0) fights (sccbgm/presets.py)
_QUICK_FIT = {"preset": "cpu", "epochs": 30, "flow_epochs": 30, "cross_cov_weight": 0.5}
_PAPER_FIT = {"preset": "paper"}
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    # quick: 2-core CPU. Smaller data (cells x genes), the "cpu" preset network (256 x 2 layers,
    # 64 PCs) with 30 epochs (flows 30), one seed, fewer interventions; documented in README.
    "quick": {
        "synthetic": {"n_cells": 4000, "n_genes": 300, "datasets": DATASETS, "n_tasks": 2, "seeds": [0],
                      "fit": _QUICK_FIT, "peers": list(PEERS), "peer_epochs": 30},
        "noise": {"n_cells": 4000, "n_genes": 300, "datasets": ["synthetic1"], "n_tasks": 1, "seeds": [0],
                  "levels": [1, 3], "fit": _QUICK_FIT},
        "ablation": {"n_cells": 4000, "n_genes": 300, "datasets": ["synthetic1"], "n_tasks": 2, "seeds": [0],
                     "noise": [("clean", 0)], "fit": _QUICK_FIT},
        "concepts": {"n_cells": 4000, "n_genes": 300, "dataset": "synthetic1", "counts": [5, 20, 50],
                     "n_tasks": 2, "seeds": [0], "min_cells": 10, "fit": _QUICK_FIT},
        "leakage": {"n_cells": 6000, "n_genes": 300, "dataset": "synthetic1", "seeds": [0, 1], "fit": _QUICK_FIT},
    },
    # paper: appendix C.5 data (20,000 cells x 5,000 genes), D.4 networks / training (preset "paper"),
    # D.5 / C.6 protocol (3 data sets x 5 interventions x 4 seeds), peers with their default epochs.
    "paper": {
        "synthetic": {"n_cells": 20000, "n_genes": 5000, "datasets": DATASETS, "n_tasks": 5, "seeds": [0, 1, 2, 3],
                      "fit": _PAPER_FIT, "peers": list(PEERS), "peer_epochs": None},
        "noise": {"n_cells": 20000, "n_genes": 5000, "datasets": DATASETS, "n_tasks": 5, "seeds": [0, 1],
                  "levels": [1, 3], "fit": _PAPER_FIT},
        "ablation": {"n_cells": 20000, "n_genes": 5000, "datasets": DATASETS, "n_tasks": 3, "seeds": [0, 1],
                     "noise": [("clean", 0)] + [(k, lv) for k in NOISE_KINDS for lv in (1, 3)], "fit": _PAPER_FIT},
        "concepts": {"n_cells": 20000, "n_genes": 5000, "dataset": "synthetic1", "counts": [5, 20, 100, 250],
                     "n_tasks": 5, "seeds": [0, 1, 2], "min_cells": 20, "fit": _PAPER_FIT},
        "leakage": {"n_cells": 20000, "n_genes": 5000, "dataset": "synthetic1", "seeds": [0, 1, 2, 3],
                    "fit": _PAPER_FIT},
    },
}
_TINY_FIT = {"preset": "cpu", "epochs": 2, "flow_epochs": 2, "hidden_dim": 32, "latent_dim": 8, "unknown_dim": 8,
             "n_pcs": 8, "flow_hidden_dim": 32}
SCALES["tiny"] = {  # for the test suite only: seconds, not meaningful numbers
    "synthetic": {"n_cells": 600, "n_genes": 60, "datasets": ["synthetic1"], "n_tasks": 1, "seeds": [0],
                  "fit": _TINY_FIT, "peers": [], "peer_epochs": 1},
    "noise": {"n_cells": 600, "n_genes": 60, "datasets": ["synthetic1"], "n_tasks": 1, "seeds": [0], "levels": [1],
              "fit": _TINY_FIT},
    "ablation": {"n_cells": 600, "n_genes": 60, "datasets": ["synthetic1"], "n_tasks": 1, "seeds": [0],
                 "noise": [("clean", 0)], "fit": _TINY_FIT},
    "concepts": {"n_cells": 800, "n_genes": 60, "dataset": "synthetic1", "counts": [3, 6], "n_tasks": 1, "seeds": [0],
                 "min_cells": 5, "fit": _TINY_FIT},
    "leakage": {"n_cells": 600, "n_genes": 60, "dataset": "synthetic1", "seeds": [0], "fit": _TINY_FIT},
}


def _ae_options(fit: dict[str, Any]) -> dict[str, Any]:
    keep = ("preset", "epochs", "hidden_dim", "latent_dim", "unknown_dim", "n_layers", "n_pcs", "cross_cov_weight")
    return {k: v for k, v in fit.items() if k in keep}


def _flow_options(fit: dict[str, Any], *, with_base: bool) -> dict[str, Any]:
    keep = ["preset", "flow_epochs", "flow_hidden_dim"] + ([] if with_base else ["n_pcs"])
    return {k: v for k, v in fit.items() if k in keep}


def _cbgm_options(fit: dict[str, Any]) -> dict[str, Any]:
    """AE options without d_u (CBGM's cosine loss sets it)."""
    return {k: v for k, v in _ae_options(fit).items() if k != "unknown_dim"}


def _cvae_options(fit: dict[str, Any]) -> dict[str, Any]:
    """AE options without d_u and the orthogonality weight (the CVAE has neither)."""
    return {k: v for k, v in _cbgm_options(fit).items() if k != "cross_cov_weight"}


def _two_outputs(label: str, **edit: Any) -> dict[str, dict[str, Any]]:
    """Rows ``label`` (residual-preserving, the package default) and ``label [raw]`` (the
    model's own prediction, residual=False: the paper's output)."""
    return {label: dict(edit), f"{label} [raw]": {**edit, "residual": False}}


def synthetic_runs(fit: dict[str, Any], seed: int) -> list[ModelRun]:
    """Every package model of Table S5 (+ CVAE / CVAE-FM / CBGM); flows reuse the fitted base."""
    ae, cvae = _ae_options(fit), _cvae_options(fit)
    flow_b, flow = _flow_options(fit, with_base=True), _flow_options(fit, with_base=False)

    def fm_edits(name: str) -> dict[str, dict[str, Any]]:
        return {**_two_outputs(f"{name} (edit)", mode="edit"), **_two_outputs(f"{name} (decode)", mode="decode", seed=seed)}

    return [
        ModelRun("scCBGM", {"model": "sccbgm", **ae}, edits=_two_outputs("scCBGM")),
        ModelRun("scCBGM-FM", {"model": "sccbgm-fm", **flow_b}, base="scCBGM", edits=fm_edits("scCBGM-FM")),
        ModelRun("Vanilla-FM", {"model": "vanilla-fm", **flow}, edits=fm_edits("Vanilla-FM")),
        ModelRun("CVAE", {"model": "cvae", **cvae}, edits=_two_outputs("CVAE")),
        ModelRun("CVAE-FM", {"model": "cvae-fm", **flow_b}, base="CVAE", edits=fm_edits("CVAE-FM")),
        ModelRun("CBGM", {"model": "cbgm", **_cbgm_options(fit)}, edits=_two_outputs("CBGM")),
    ]


# Table S5 of the paper (MSE in PCA space, mean over 5 interventions x 4 seeds); rows are the
# paper's model outputs, i.e. our "[raw]" rows.
PAPER_S5 = {
    "synthetic1": {"scCBGM": 0.0388, "scCBGM-FM (edit)": 0.0025, "scCBGM-FM (decode)": 0.0539,
                   "Vanilla-FM (edit)": 0.0031, "Vanilla-FM (decode)": 0.0756, "CINEMA-OT": 0.0390, "biolord": 0.0402},
    "synthetic2": {"scCBGM": 0.0318, "scCBGM-FM (edit)": 0.0028, "scCBGM-FM (decode)": 0.0444,
                   "Vanilla-FM (edit)": 0.0049, "Vanilla-FM (decode)": 0.0769, "CINEMA-OT": 0.0393, "biolord": 0.0411},
    "synthetic3": {"scCBGM": 0.0407, "scCBGM-FM (edit)": 0.0039, "scCBGM-FM (decode)": 0.0594,
                   "Vanilla-FM (edit)": 0.0049, "Vanilla-FM (decode)": 0.0773, "CINEMA-OT": 0.0400, "biolord": 0.0428},
}
PEER_ROWS = ("biolord", "CINEMA-OT", "scGen")
FIELD_METRICS = ("r2_mean", "r2_mean_deg", "pearson_delta", "pearson_delta_deg", "deg_dir", "edist")
"""Columns of :func:`sccbgm.bench.synthetic.score` shared with ``bench real``'s table."""


def _paper_row(name: str) -> str:
    """Our row that corresponds to a paper row (the paper reports the models' raw outputs)."""
    return name if name in PEER_ROWS else f"{name} [raw]"


def _means(df: pd.DataFrame, metric: str, by: str = "editor") -> dict[str, float]:
    return {str(k): float(v) for k, v in df.groupby(by, sort=False)[metric].mean().items()}


def _simulate(dataset: str, cfg: dict[str, Any], **extra: Any) -> Any:
    import sccbgm

    return sccbgm.simulate(dataset, n_cells=cfg["n_cells"], n_genes=cfg["n_genes"], seed=0, **extra)


def _tasks(adata: Any, n_tasks: int, min_cells: int = 20) -> list[Any]:
    from sccbgm.simulation import choose_intervention_tasks

    return choose_intervention_tasks(adata, n_tasks=n_tasks, seed=0, min_cells=min_cells)


def _header(title: str, scale: str, cfg: dict[str, Any], protocol: str) -> list[str]:
    fit = ", ".join(f"{k}={v}" for k, v in cfg["fit"].items())
    return [
        f"# {title} ({scale})", "",
        protocol, "",
        f"Sizes: {cfg['n_cells']} cells x {cfg['n_genes']} genes per simulated data set; fit options: {fit}. "
        "Scores are on log-normalised expression (library size normalised to the training median, log1p) "
        "against the exact counterfactuals of the simulator (Eq. 43); lower is better. Each cell is "
        "mean ± SEM over the runs (interventions x seeds; one run shows the mean alone); the best mean "
        f"of each column is **bold**; rows marked{report.FLOOR_MARK} are the trivial editors (floors): "
        f"`{NO_EDIT}` returns the cells unchanged, `{MEAN_SHIFT}` adds the mean concept shift seen in the "
        "other cell types of the training data.", "",
        "Output rows: `X` is the package default (residual-preserving edit: the cell plus the model's "
        "predicted change); `X [raw]` is the model's own prediction (`residual=False`, the paper's output).", "",
    ]


def _finish(out: Path, table: pd.DataFrame, lines: list[str], t0: float, log: Log) -> Path:
    table.to_csv(out / "results.csv", index=False)
    lines += ["", f"Files: `results.csv` ({len(table)} rows, every editor x run). Wall time {time.perf_counter() - t0:.0f} s.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    log(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- synthetic
def run_synthetic(
    out: str | Path, *, scale: str = "quick", seeds: list[int] | None = None, datasets: list[str] | None = None,
    n_tasks: int | None = None, peers: Sequence[str] | None = None, peers_venv: str | Path | None = None,
    install_peers: bool = True, log: Log = print,
) -> Path:
    """Table S5: every package model and the peers on 3 data sets x interventions x seeds."""
    from sccbgm.bench import peers as peer_mod

    cfg = SCALES[scale]["synthetic"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    peer_names = list(cfg["peers"] if peers is None else peers)
    rows, statuses, last, floors = [], {}, None, []
    for dataset in datasets or cfg["datasets"]:
        adata = _simulate(dataset, cfg)
        for task in _tasks(adata, n_tasks or cfg["n_tasks"]):
            for seed in seeds or cfg["seeds"]:
                log(f"[synthetic] {dataset}: task {task.cell_type}/{task.concept}, seed {seed}")
                td = prepare_task(adata, task, seed=seed)
                preds = trivial_predictions(td)
                model_preds, _, secs = run_models(td, synthetic_runs(cfg["fit"], seed), log=log)
                preds.update(model_preds)
                for peer in peer_names:
                    res = peer_mod.run_peer(peer, td, root=peers_venv, epochs=cfg["peer_epochs"],
                                            install=install_peers, log=log)
                    statuses.setdefault(peer_mod.LABELS[peer], []).append(res.status)
                    if res.prediction is not None:
                        preds[peer_mod.LABELS[peer]] = res.prediction
                        secs[peer_mod.LABELS[peer]] = res.seconds
                    else:
                        log(f"  {peer_mod.LABELS[peer]}: not run ({res.status})")
                for label, x in preds.items():
                    rows.append({"dataset": dataset, **score(td, label, x, seconds=secs.get(label, 0.0))})
                expected = score(td, "expected counterfactual", expected_counterfactual(td), rmmd=False)
                floors.append({"dataset": dataset, "mse_pca": expected["mse_pca"], "mse_genes": expected["mse_genes"]})
                last = (td, preds)
    table = pd.DataFrame(rows)
    lines = _header("Synthetic benchmark: Table S5", scale, cfg,
                    "Protocol (paper C.6 / D.5): per data set (Table S1), hold out one (cell type, concept) pair, "
                    "train on the rest, edit the held-out type's concept-off cells to concept on. Package models: "
                    "scCBGM, scCBGM-FM / Vanilla-FM / CVAE-FM (flow matching; `edit` = invert the cell to noise "
                    "and integrate under the edited condition, `decode` = fresh noise), CVAE, CBGM; flows reuse "
                    "the fitted scCBGM / CVAE of the same run. Peers run in their own environment on the same "
                    "cells (see below).")
    order = [NO_EDIT, MEAN_SHIFT] + [e for e in dict.fromkeys(table["editor"]) if e not in TRIVIAL]
    for metric, title in (("mse_pca", "Cell-level MSE in PCA space (50 PCs of the training cells; the space of Table S5)"),
                          ("mse_genes", "Cell-level MSE in gene space"),
                          ("rmmd", "rMMD against the true counterfactual population (Eq. 10)")):
        lines += [f"## {title}", "", report.paper_table(table, "editor", "dataset", metric, row_order=order), ""]
        if metric == "mse_pca":
            lines += ["### Does the paper's ordering hold? (Table S5, MSE in PCA space)", ""]
            for dataset, sub in table.groupby("dataset", sort=False):
                means = _means(sub, metric)
                expected = sorted(PAPER_S5[dataset], key=PAPER_S5[dataset].__getitem__)
                ours = {name: means[_paper_row(name)] for name in expected if _paper_row(name) in means}
                lines += [f"- {dataset}: " + report.ordering_statement(ours, expected, metric=metric, table="Table S5"),
                          "  Headline claim 'scCBGM-FM (edit) is best': "
                          + ("holds" if ours and min(ours, key=ours.__getitem__) == "scCBGM-FM (edit)" else "does NOT hold")
                          + f" among the paper's rows; among all our rows the best is "
                          f"{min(means, key=means.__getitem__)} ({min(means.values()):.4g})."]
        lines += ["", "Floors:", ""]
        for dataset, sub in table.groupby("dataset", sort=False):
            means = _means(sub, metric)
            lines += [f"- {dataset}: " + report.floor_statement(means, [e for e in means if e not in TRIVIAL], metric=metric)]
        if metric in ("mse_pca", "mse_genes"):
            lines += ["", "Sampling-noise floor of editors that regenerate cells: the exact counterfactual keeps each "
                      "cell's own Poisson draw. An editor that keeps the cell (no edit, the residual edits `X`, "
                      "flow `edit`) carries it over; one that regenerates the cell (decoders: `X [raw]`, "
                      "`decode`, biolord, scGen, CPA; CINEMA-OT's barycentre) carries over only what its encoding "
                      "of the cell reproduces. The expected counterfactual (every simulated term but that draw, "
                      "Monte Carlo over 20 draws), i.e. a perfect editor that reproduces none of it, scores "
                      + ", ".join(f"{d} {v:.4g}" for d, v in pd.DataFrame(floors).groupby("dataset", sort=False)[metric].mean().items())
                      + f" ({metric}): regenerating editors near this value predict the right population but none "
                      "of the cell's own noise; compare them with each other and with this floor, not with no edit."]
        lines += [""]
    lines += ["## The field's metrics (as in `bench real`)", "",
              "Population metrics of the edited cells against the true counterfactuals, the cells to edit as "
              "control: R^2 of the gene means (`r2_mean`; `r2_mean_deg` on the top-20 DEGs of the true change), "
              "Pearson correlation of the predicted and true change (`pearson_delta`, `pearson_delta_deg`; NaN "
              "for no edit), fraction of the top-20 DEGs moved in the true direction (`deg_dir`), energy "
              "distance on the eval PCs (`edist`, lower is better). Mean over runs per data set.", ""]
    for dataset, sub in table.groupby("dataset", sort=False):
        wide = sub.groupby("editor", sort=False)[list(FIELD_METRICS)].mean().reindex(
            [e for e in order if e in set(sub["editor"])]).reset_index()
        lines += [f"### {dataset}", "", report.markdown_table(wide, lower_is_better=("edist",), digits=3), ""]
    lines += ["## Peers", ""]
    for peer in peer_names:
        label = peer_mod.LABELS[peer]
        st = sorted(set(statuses.get(label, ["not requested"])))
        lines += [f"- **{label}**: " + "; ".join(st)]
    if not peer_names:
        lines += ["- no peers requested (`--peers none`)."]
    lines += ["", "Peers use their documented default API (module docstring of `sccbgm.bench.peer_worker`); at the "
              "quick scale biolord / scGen / CPA train for the listed epochs instead of their defaults (CellFlow: "
              "20 iterations per epoch at 1/8 of its tutorial's widths, batches of 256). biolord has no encoder: the cells to edit are part of its training data "
              "(factual state only). CellFlow transports the control population (OT flow): its cells are a sample "
              "of the predicted population, not per-cell counterfactuals, so its cell-level MSE measures a "
              "population match only. CPA uses a Gaussian loss on log-normalised values.", ""]
    report.plot_errors(table, out / "errors_synthetic.png", metrics=("mse_pca", "mse_genes", "rmmd"))
    lines += ["![errors](errors_synthetic.png)", ""]
    if last is not None:
        td, preds = last
        shown = {k: v for k, v in preds.items() if "[raw]" not in k or k.startswith("scCBGM")}
        report.plot_embedding(td.train_pcs, td.x_intervene, td.truth, shown, td.pca, out / "embedding.png")
        lines += ["![embedding (last run, PC1/PC2)](embedding.png)", ""]
    return _finish(out, table, lines, t0, log)


# ------------------------------------------------------------------------------- noise
def _noise_fits(fit: dict[str, Any]) -> list[ModelRun]:
    ae = _ae_options(fit)
    return [ModelRun("scCBGM", {"model": "sccbgm", **ae}, edits=_two_outputs("scCBGM")),
            ModelRun("CBGM", {"model": "cbgm", **_cbgm_options(fit)}, edits=_two_outputs("CBGM"))]


def run_noise(out: str | Path, *, scale: str = "quick", log: Log = print) -> Path:
    """Fig. 3 / C.4: scCBGM vs CBGM with noisy concept annotations (4 kinds x levels)."""
    from sccbgm.simulation import corrupt_concepts

    cfg = SCALES[scale]["noise"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    conditions = [("clean", 0)] + [(k, lv) for k in NOISE_KINDS for lv in cfg["levels"]]
    for dataset in cfg["datasets"]:
        adata = _simulate(dataset, cfg)
        for task in _tasks(adata, cfg["n_tasks"]):
            for seed in cfg["seeds"]:
                td = prepare_task(adata, task, seed=seed)
                base_rows = [score(td, k, v) for k, v in trivial_predictions(td).items()]
                for kind, level in conditions:
                    log(f"[noise] {dataset}: task {task.cell_type}/{task.concept}, seed {seed}, {kind} {level}")
                    if kind == "clean":
                        train, intervene, names = td.train, td.intervene, td.concepts
                    else:
                        noisy, names = corrupt_concepts(adata, kind, level, protect=[task.concept], seed=seed)
                        train = noisy[td.train.obs_names].copy()
                        intervene = noisy[td.intervene.obs_names].copy()
                    preds, _, secs = run_models(td, _noise_fits(cfg["fit"]), train=train, intervene=intervene,
                                                concepts=names, log=log)
                    cond = "clean" if kind == "clean" else f"{kind} {level}"
                    for r in base_rows:
                        rows.append({"dataset": dataset, "noise": cond, "kind": kind, "level": level, **r})
                    for label, x in preds.items():
                        rows.append({"dataset": dataset, "noise": cond, "kind": kind, "level": level,
                                     **score(td, label, x, seconds=secs[label], rmmd=False)})
    table = pd.DataFrame(rows)
    lines = _header("Noisy concepts: Fig. 3 / C.4", scale, cfg,
                    "Protocol: the Table S5 split, with the concept annotations of the training (and edited) cells "
                    "corrupted as in C.4 - missing (drop columns), irrelevant (add random on/off columns), "
                    "incorrect (flip entries of chosen columns with p = 0.2), duplicate (append copies) - at "
                    "levels 1 and 3 corrupted concepts, never the intervened one. scCBGM vs CBGM (CEM bottleneck, "
                    "no skip connections, cosine loss); metric: cell-level MSE in gene space.")
    conds = list(dict.fromkeys(table["noise"]))
    for out_kind, rows_sel in (("package default output", ["scCBGM", "CBGM"]),
                               ("raw model output (paper)", ["scCBGM [raw]", "CBGM [raw]"])):
        sub = table[table["editor"].isin(list(TRIVIAL) + rows_sel)]
        lines += [f"## MSE in gene space, {out_kind}", "",
                  report.paper_table(sub, "editor", "noise", "mse_genes", column_order=conds,
                                     row_order=list(TRIVIAL) + rows_sel), ""]
        a, b = rows_sel
        wins = []
        for cond in conds:
            m = _means(sub[sub["noise"] == cond], "mse_genes")
            wins.append((cond, m[a], m[b]))
        n_win = sum(x < y for _, x, y in wins)
        holds = n_win == len(wins)
        lines += [f"**Fig. 3 ordering (scCBGM below CBGM under every noise setting) "
                  f"{'HOLDS' if holds else 'does NOT hold'}** for the {out_kind}: {a} < {b} in {n_win}/{len(wins)} "
                  "settings (" + "; ".join(f"{c}: {x:.4g} vs {y:.4g}" for c, x, y in wins) + ").", ""]
        means = _means(sub, "mse_genes")
        lines += [report.floor_statement(means, rows_sel, metric="mse_genes (mean over settings)"), ""]
    plot_tab = table[table["editor"].isin(list(TRIVIAL) + ["scCBGM", "CBGM"])]
    report.plot_grouped(plot_tab, out / "noise.png", x="noise", hue="editor", metric="mse_genes",
                        title="scCBGM vs CBGM under noisy concepts (package output)")
    lines += ["![noise](noise.png)", ""]
    return _finish(out, table, lines, t0, log)


# ---------------------------------------------------------------------------- ablation
ABLATIONS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    # (family, bottleneck, skip, loss, fit options); model "cbgm" fills d_u for the cosine loss
    ("CBGM", "CBM", "✓", "cosine", {"model": "cbgm", "bottleneck": "cbm", "skip": True, "orthogonality": "cosine"}),
    ("CBGM", "CEM", "✓", "cc", {"model": "cbgm", "bottleneck": "cem", "skip": True, "orthogonality": "cross_cov"}),
    ("CBGM", "CEM", "✓", "cosine", {"model": "cbgm", "bottleneck": "cem", "skip": True, "orthogonality": "cosine"}),
    ("CBGM", "CEM", "✗", "cc", {"model": "cbgm", "bottleneck": "cem", "skip": False, "orthogonality": "cross_cov"}),
    ("CBGM", "CEM", "✗", "cosine", {"model": "cbgm"}),
    ("CBGM", "CBM", "✗", "cosine", {"model": "cbgm", "bottleneck": "cbm", "skip": False, "orthogonality": "cosine"}),
    ("CBGM", "CBM", "✗", "cc", {"model": "cbgm", "bottleneck": "cbm", "skip": False, "orthogonality": "cross_cov"}),
    ("scCBGM", "CBM", "✓", "cc", {"model": "sccbgm"}),
]
PAPER_S8 = [0.1989, 0.19865, 0.19816, 0.1981, 0.19804, 0.19791, 0.19736, 0.19655]


def _ablation_label(family: str, bottleneck: str, skip: str, loss: str) -> str:
    return f"{family} {bottleneck}/{'skip' if skip == '✓' else 'no skip'}/{loss}"


def run_ablation(out: str | Path, *, scale: str = "quick", log: Log = print) -> Path:
    """Table S8 (CBM/CEM x skip x cross-cov/cosine) and D.8.3 (VAE vs AE) on simulated data."""
    from sccbgm.simulation import corrupt_concepts

    cfg = SCALES[scale]["ablation"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ae = _ae_options(cfg["fit"])
    runs = [ModelRun(_ablation_label(f, b, s, lo), {**(_cbgm_options(cfg["fit"]) if opts["model"] == "cbgm" else ae), **opts},
                     edits=_two_outputs(_ablation_label(f, b, s, lo)))
            for f, b, s, lo, opts in ABLATIONS]
    runs.append(ModelRun("scCBGM (AE)", {"model": "sccbgm", "variational": False, **ae}, edits=_two_outputs("scCBGM (AE)")))
    meta = {_ablation_label(f, b, s, lo): (f, b, s, lo) for f, b, s, lo, _ in ABLATIONS}
    meta["scCBGM (AE)"] = ("scCBGM (AE)", "CBM", "✓", "cc")
    meta.update({t: (t, "", "", "") for t in TRIVIAL})
    rows = []
    for dataset in cfg["datasets"]:
        adata = _simulate(dataset, cfg)
        for task in _tasks(adata, cfg["n_tasks"]):
            for seed in cfg["seeds"]:
                td = prepare_task(adata, task, seed=seed)
                for kind, level in cfg["noise"]:
                    log(f"[ablation] {dataset}: task {task.cell_type}/{task.concept}, seed {seed}, {kind} {level}")
                    if kind == "clean":
                        train, intervene, names = td.train, td.intervene, td.concepts
                    else:
                        noisy, names = corrupt_concepts(adata, kind, level, protect=[task.concept], seed=seed)
                        train, intervene = noisy[td.train.obs_names].copy(), noisy[td.intervene.obs_names].copy()
                    preds = trivial_predictions(td)
                    model_preds, _, secs = run_models(td, runs, train=train, intervene=intervene, concepts=names, log=log)
                    preds.update(model_preds)
                    for label, x in preds.items():
                        base = label.replace(" [raw]", "")
                        fam, bott, skip, loss = meta[base]
                        rows.append({"dataset": dataset, "noise": f"{kind} {level}" if level else kind,
                                     "output": "raw" if label.endswith("[raw]") else "package",
                                     "model": fam, "bottleneck": bott, "skip": skip, "loss": loss,
                                     **score(td, label, x, seconds=secs.get(label, 0.0), rmmd=False)})
    table = pd.DataFrame(rows)
    lines = _header("Architecture ablations: Table S8 and D.8.3", scale, cfg,
                    "Protocol: the Table S5 split; the 2 x 2 x 2 design space Bottleneck (CBM = scalar concept "
                    "head, CEM = concept embeddings) x Skip (decoder skip connections) x Loss (cc = cross-covariance "
                    "Eq. 8, cosine = CBGM's |cos|; cosine forces d_u = width of the known layer), same "
                    "hyper-parameters otherwise; plus scCBGM with a plain auto-encoder (D.8.3). Noise settings: "
                    + ", ".join(f"{k} {lv}" if lv else k for k, lv in cfg["noise"])
                    + ". Metric: cell-level MSE in gene space (as Table S8).")
    row_order = [tuple(meta[t]) for t in TRIVIAL] + [(f, b, s, lo) for f, b, s, lo, _ in ABLATIONS]
    paper_order = [_ablation_label(f, b, s, lo) for f, b, s, lo, _ in ABLATIONS]  # paper: worst first
    for output, title in (("package", "package default output"), ("raw", "raw model output (the paper's)")):
        sub = table[(table["output"] == output) | table["editor"].isin(TRIVIAL)]
        sub8 = sub[sub["model"] != "scCBGM (AE)"]
        lines += [f"## Table S8, {title}", "",
                  report.paper_table(sub8, ["model", "bottleneck", "skip", "loss"], None, "mse_genes",
                                     row_order=row_order, mark_trivial="model"), ""]
        suffix = "" if output == "package" else " [raw]"
        means = _means(sub, "mse_genes")
        ours = {lab: means[lab + suffix] for lab in paper_order if lab + suffix in means}
        expected = list(reversed(paper_order))  # best first
        lines += [report.ordering_statement(ours, expected, metric="mse_genes", table="Table S8"), ""]
        best = min(ours, key=ours.__getitem__) if ours else ""
        lines += [f"Headline claim 'scCBGM (CBM, skip, cc) is the best configuration': "
                  f"{'holds' if best == paper_order[-1] else 'does NOT hold'} (our best: {best}, "
                  f"{ours.get(best, float('nan')):.5g}; scCBGM {ours.get(paper_order[-1], float('nan')):.5g}).", ""]
        if len(ours) >= 3:
            ranks_ours = pd.Series(ours).rank()
            ranks_paper = pd.Series(dict(zip(paper_order, PAPER_S8, strict=True))).reindex(ranks_ours.index).rank()
            rho = float(np.corrcoef(ranks_ours, ranks_paper)[0, 1])
            lines += [f"Spearman rank correlation with the paper's Table S8 MSEs over the 8 configurations: {rho:.2f}.", ""]
        lines += [report.floor_statement(means, [lab + suffix for lab in paper_order] + ["scCBGM (AE)" + suffix],
                                         metric="mse_genes"), ""]
        vae, aen = means.get(paper_order[-1] + suffix), means.get("scCBGM (AE)" + suffix)
        if vae is not None and aen is not None:
            lines += [f"**D.8.3 (VAE better than AE) {'HOLDS' if vae < aen else 'does NOT hold'}** ({title}): "
                      f"scCBGM VAE {vae:.5g} vs AE {aen:.5g}.", ""]
    pkg = table[(table["output"] == "package") | table["editor"].isin(TRIVIAL)].copy()
    pkg["config"] = pkg["editor"]
    report.plot_errors(pkg, out / "ablation.png", metrics=("mse_genes",))
    lines += ["![ablation](ablation.png)", ""]
    return _finish(out, table, lines, t0, log)


# ---------------------------------------------------------------------------- concepts
def run_concepts(out: str | Path, *, scale: str = "quick", log: Log = print) -> Path:
    """Table S6: scCBGM's counterfactual error as the number of concepts grows."""
    cfg = SCALES[scale]["concepts"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ae = _ae_options(cfg["fit"])
    rows = []
    for k in cfg["counts"]:
        adata = _simulate(cfg["dataset"], cfg, n_concepts=k)
        for task in _tasks(adata, cfg["n_tasks"], min_cells=cfg["min_cells"]):
            for seed in cfg["seeds"]:
                log(f"[concepts] {k} concepts: task {task.cell_type}/{task.concept}, seed {seed}")
                td = prepare_task(adata, task, seed=seed)
                preds = trivial_predictions(td)
                model_preds, _, secs = run_models(
                    td, [ModelRun("scCBGM", {"model": "sccbgm", **ae}, edits=_two_outputs("scCBGM"))], log=log)
                preds.update(model_preds)
                for label, x in preds.items():
                    rows.append({"concepts": k, **score(td, label, x, seconds=secs.get(label, 0.0), rmmd=False)})
    table = pd.DataFrame(rows)
    lines = _header("Number of concepts: Table S6", scale, cfg,
                    f"Protocol: data set {cfg['dataset']} simulated with K concepts (K = "
                    + ", ".join(map(str, cfg["counts"]))
                    + "; the paper uses 5, 20, 100, 250 at 20,000 cells - the quick scale uses fewer because at "
                    f"{cfg['n_cells']} cells a concept of 100+ is active in too few cells of a type to hold out), "
                    f"the Table S5 split (held-out pair with >= {cfg['min_cells']} cells), scCBGM trained on all K "
                    "concepts, no annotation noise. Metric: cell-level MSE in gene space.")
    order = [NO_EDIT, MEAN_SHIFT, "scCBGM", "scCBGM [raw]"]
    lines += ["## Table S6 (columns: number of concepts K)", "",
              report.paper_table(table.assign(K=[f"K = {k}" for k in table["concepts"]]), "editor", "K", "mse_genes",
                                 row_order=order), ""]
    for label in ("scCBGM", "scCBGM [raw]"):
        m = table[table["editor"] == label].groupby("concepts")["mse_genes"].mean()
        change = 100 * (m.max() - m.min()) / m.min()
        lines += [f"**Table S6 claim (error changes by < 2% across concept counts) "
                  f"{'HOLDS' if change < 2 else 'does NOT hold'}** for {label}: MSE "
                  + ", ".join(f"{k}: {v:.5g}" for k, v in m.items()) + f" (spread {change:.1f}% of the smallest).", ""]
    for k, sub in table.groupby("concepts"):
        lines += [f"- {k} concepts: " + report.floor_statement(_means(sub, "mse_genes"), ["scCBGM", "scCBGM [raw]"],
                                                               metric="mse_genes")]
    report.plot_grouped(table.assign(concepts=table["concepts"].astype(str)), out / "concepts.png", x="concepts",
                        hue="editor", metric="mse_genes", title="scCBGM vs number of concepts")
    lines += ["", "![concepts](concepts.png)", ""]
    return _finish(out, table, lines, t0, log)


# ----------------------------------------------------------------------------- leakage
def _prob_true(clf: Any, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predicted probability of each cell's own label."""
    proba = clf.predict_proba(x)
    index = {c: i for i, c in enumerate(clf.classes_)}
    return proba[np.arange(len(labels)), [index.get(v, 0) for v in labels]] * np.isin(labels, clf.classes_)


def run_leakage(out: str | Path, *, scale: str = "quick", log: Log = print) -> Path:
    """D.7 on simulated data: one known concept; classifiers for every other factor before/after."""
    from sklearn.linear_model import LogisticRegression

    import sccbgm
    from sccbgm import metrics
    from sccbgm.bench.editors import mean_concept_shift, mean_shift_edit
    from sccbgm.bench.synthetic import lognormalise

    cfg = SCALES[scale]["leakage"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = _simulate(cfg["dataset"], cfg)
    concepts = concept_columns(adata)
    on = adata.obs[concepts].groupby(adata.obs["cell_type"], observed=True).mean()
    concept = str(on.min(axis=0).idxmax())  # the concept best represented in every cell type
    others = [c for c in concepts if c != concept]
    factors = ["cell_type", "tissue", "batch", *others]
    ae = _ae_options(cfg["fit"])
    rows = []
    for seed in cfg["seeds"]:
        log(f"[leakage] {cfg['dataset']}: known concept {concept}, seed {seed}")
        rng = np.random.default_rng(seed)
        is_train = rng.random(adata.n_obs) < 0.6
        train, test = adata[is_train].copy(), adata[~is_train].copy()
        target_sum = float(np.median(np.asarray(train.X.sum(1)).ravel()))
        x_train = lognormalise(train.X, target_sum)
        pca = metrics.pca_features(x_train, n_components=50, seed=seed)
        f_train = pca.transform(x_train)
        classifiers = {}
        for factor in [concept, *factors]:
            y = train.obs[factor].astype(str).to_numpy()
            classifiers[factor] = LogisticRegression(max_iter=2000).fit(f_train, y)
        off = (test.obs[concept] == 0).to_numpy()
        cells = test[off].copy()
        x_before = lognormalise(cells.X, target_sum)
        model = sccbgm.fit(train, [concept], seed=seed, progress=False, model="sccbgm", **ae)
        edits = {"scCBGM": np.asarray(sccbgm.edit(model, cells, set={concept: 1}).X, dtype=np.float64),
                 "scCBGM [raw]": np.asarray(sccbgm.edit(model, cells, set={concept: 1}, residual=False).X, dtype=np.float64)}
        shift = mean_concept_shift(x_train, train.obs, concept=concept, source=0, target=1, group_key="cell_type")
        edits[NO_EDIT] = x_before.copy()
        edits[MEAN_SHIFT] = mean_shift_edit(x_before, shift)
        truth = sccbgm.simulate_counterfactual(adata, {concept: 1}, cells=cells.obs_names.to_numpy())
        edits["true counterfactual"] = lognormalise(truth.X, target_sum)
        f_before = pca.transform(x_before)
        for editor, x_after in edits.items():
            f_after = pca.transform(x_after)
            for ct in sorted(cells.obs["cell_type"].astype(str).unique()):
                sel = (cells.obs["cell_type"].astype(str) == ct).to_numpy()
                row = {"editor": editor, "seed": seed, "cell_type": ct, "n_cells": int(sel.sum()), "concept": concept,
                       "mse_genes": float(np.mean((x_after[sel] - edits["true counterfactual"][sel]) ** 2))}
                p_on = list(classifiers[concept].classes_).index("1")
                row["concept_before"] = float(classifiers[concept].predict_proba(f_before[sel])[:, p_on].mean())
                row["concept_after"] = float(classifiers[concept].predict_proba(f_after[sel])[:, p_on].mean())
                for factor in factors:
                    labels = cells.obs[factor].astype(str).to_numpy()[sel]
                    row[f"{factor}_before"] = float(_prob_true(classifiers[factor], f_before[sel], labels).mean())
                    row[f"{factor}_after"] = float(_prob_true(classifiers[factor], f_after[sel], labels).mean())
                rows.append(row)
    table = pd.DataFrame(rows)
    table["other_concepts_before"] = table[[f"{c}_before" for c in others]].mean(axis=1)
    table["other_concepts_after"] = table[[f"{c}_after" for c in others]].mean(axis=1)
    lines = _header("Concept leakage: D.7 / Table S7 on simulated data", scale, {**cfg, "n_cells": cfg["n_cells"]},
                    f"Protocol: {cfg['dataset']}, random 60/40 train/test split of the cells; scCBGM is trained with "
                    f"ONE known concept ({concept}, the one best represented in every cell type); cell type, tissue, "
                    "batch and the other concepts are left to the unknown layer. Logistic-regression classifiers "
                    "(on 50 PCs of the training cells) are trained on the training cells for the known concept and "
                    f"for every other factor. In the test cells with {concept} = 0, each editor sets {concept} = 1; "
                    "we report the classifiers' mean predicted probability of the cell's own label (f(concept): of "
                    "concept on) before and after the edit. No leakage: f(concept) rises towards the true "
                    "counterfactual's value while the other factors stay put. `true counterfactual` is the "
                    "simulator's exact answer (Eq. 43), a reference, not an editor.")
    sc = table[table["editor"] == "scCBGM"].groupby("cell_type")[
        ["cell_type_before", "cell_type_after", "concept_before", "concept_after"]].mean().reset_index()
    sc.columns = ["cell type", "f(cell type) before", "f(cell type) after", "f(concept) before", "f(concept) after"]
    lines += ["## Table S7 layout, scCBGM (package default output)", "", report.markdown_table(sc, digits=3), ""]
    summary_cols = ["concept", "cell_type", "tissue", "batch", "other_concepts"]
    summ = []
    for editor, sub in table.groupby("editor", sort=False):
        w = sub["n_cells"] / sub["n_cells"].sum()
        r = {"editor": editor + (report.FLOOR_MARK if editor in TRIVIAL else "")}
        for c in summary_cols:
            r[f"f({c}) before"] = float((sub[f"{c}_before"] * w).sum())
            r[f"f({c}) after"] = float((sub[f"{c}_after"] * w).sum())
        r["MSE vs truth"] = float((sub["mse_genes"] * w).sum())
        summ.append(r)
    summ_df = pd.DataFrame(summ)
    lines += ["## Every editor (cell-weighted means over cell types and seeds)", "",
              report.markdown_table(summ_df, lower_is_better=("MSE vs truth",), digits=3), ""]
    s = summ_df.set_index("editor")
    truth_after = s.loc["true counterfactual", "f(concept) after"]
    d_ct = (sc["f(cell type) after"] - sc["f(cell type) before"])
    flips = s.loc["scCBGM", "f(concept) after"]
    holds = bool(flips >= 0.5 and d_ct.abs().max() <= 0.1)
    lines += [f"**D.7 claim (the known concept switches on, cell type stays) {'HOLDS' if holds else 'does NOT hold'}** "
              f"for scCBGM: f(concept) {s.loc['scCBGM', 'f(concept) before']:.3f} -> {flips:.3f} (true counterfactual "
              f"{truth_after:.3f}); f(cell type) changes by at most {d_ct.abs().max():.3f} in any cell type "
              f"(paper, Kang data: f(stim) ~0.01 -> 1.00, f(cell type) changes <= 0.084). Other factors after vs before: "
              + ", ".join(f"{c} {s.loc['scCBGM', f'f({c}) before']:.3f} -> {s.loc['scCBGM', f'f({c}) after']:.3f}"
                          for c in ["tissue", "batch", "other_concepts"]) + ".", "",
              report.floor_statement({e.replace(report.FLOOR_MARK, ""): v for e, v in s["MSE vs truth"].items()},
                                     ["scCBGM", "scCBGM [raw]"], metric="MSE vs truth (gene space)"), ""]
    report.plot_before_after(sc.rename(columns={"cell type": "group"}), out / "leakage.png", group="group",
                             columns=[("f(cell type)", "f(cell type) before", "f(cell type) after"),
                                      ("f(concept)", "f(concept) before", "f(concept) after")])
    lines += ["![leakage: Figure S6 layout](leakage.png)", ""]
    return _finish(out, table, lines, t0, log)


SUITES: dict[str, Callable[..., Path]] = {
    "synthetic": run_synthetic, "noise": run_noise, "ablation": run_ablation,
    "concepts": run_concepts, "leakage": run_leakage,
}


def run_all(out: str | Path, *, scale: str = "quick", log: Log = print, **synthetic_kw: Any) -> Path:
    """Every suite into ``out/<suite>``; ``out/README.md`` lists the reports and wall times."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t_all = time.perf_counter()
    for name, fn in SUITES.items():
        t0 = time.perf_counter()
        fn(out / name, scale=scale, log=log, **(synthetic_kw if name == "synthetic" else {}))
        times[name] = time.perf_counter() - t0
        log(f"[all] {name} done in {times[name]:.0f} s")
    total = time.perf_counter() - t_all
    lines = [f"# sccbgm benchmark suite ({scale})", "", "| suite | report | wall time (s) |", "|---|---|---|"]
    lines += [f"| {n} | [{n}/report.md]({n}/report.md) | {t:.0f} |" for n, t in times.items()]
    lines += [f"| **total** | | **{total:.0f}** ({total / 60:.1f} min) |", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    log(f"wrote {path}; total {total / 60:.1f} min")
    return path
