"""Benchmarks: ``python -m sccbgm.bench {synthetic,overhead} ...`` (also ``sccbgm bench ...``).

* ``synthetic`` -- intervention tasks on simulated data (paper C.6 / Table S5), every model next to
  the two trivial editors (no edit; mean concept shift in the other cell types), cell-level MSE
  against the true counterfactuals and rMMD; writes CSV + Markdown report + PNGs.
* ``overhead`` -- the training loop's cost against a bare torch loop on the same module.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

SCALES: dict[str, dict[str, Any]] = {
    # documented sizes: --quick runs on a 2-core CPU in minutes, --paper is the paper's protocol
    "quick": {"n_cells": 3000, "n_genes": 500, "datasets": ["synthetic1"], "n_tasks": 1, "seeds": [0],
              "fit": {"preset": "cpu", "epochs": 40}},
    "default": {"n_cells": 5000, "n_genes": 1000, "datasets": ["synthetic1", "synthetic2", "synthetic3"],
                "n_tasks": 3, "seeds": [0, 1], "fit": {"preset": "cpu"}},
    "paper": {"n_cells": 20000, "n_genes": 5000, "datasets": ["synthetic1", "synthetic2", "synthetic3"],
              "n_tasks": 5, "seeds": [0, 1, 2, 3], "fit": {"preset": "paper"}},
}


def run_synthetic(
    out: str | Path, *, scale: str = "quick", seeds: list[int] | None = None,
    datasets: list[str] | None = None, n_tasks: int | None = None, log: Any = print,
) -> Path:
    """Run the synthetic benchmark at ``scale``; returns the report path."""
    import pandas as pd

    import sccbgm
    from sccbgm.bench import report
    from sccbgm.bench.synthetic import run_synthetic_task
    from sccbgm.simulation import choose_intervention_tasks

    cfg = SCALES[scale]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, last = [], None
    for dataset in datasets or cfg["datasets"]:
        adata = sccbgm.simulate(dataset, n_cells=cfg["n_cells"], n_genes=cfg["n_genes"], seed=0)
        tasks = choose_intervention_tasks(adata, n_tasks=n_tasks or cfg["n_tasks"], seed=0)
        for task in tasks:
            for seed in seeds or cfg["seeds"]:
                log(f"{dataset}: task {task.cell_type}/{task.concept}, seed {seed}")
                res = run_synthetic_task(adata, task, models={"scCBGM": dict(cfg["fit"])}, seed=seed, log=log)
                res.table.insert(0, "dataset", dataset)
                rows.append(res.table)
                last = res
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out / "results.csv", index=False)
    summary = report.mean_sem(table, ["dataset", "editor"], ["mse_genes", "mse_pca", "rmmd"])
    report.plot_errors(table, out / "errors.png")
    report.plot_embedding(last.train_pca, last.factual, last.truth, last.predictions, last.pca, out / "embedding.png")
    lines = [
        f"# sccbgm synthetic benchmark ({scale})", "",
        f"{cfg['n_cells']} cells x {cfg['n_genes']} genes per data set; intervention tasks of paper C.6; "
        "scores on log-normalised expression against the exact counterfactuals (lower is better). "
        "Grey bars / the first two rows are the trivial editors every model must beat.", "",
        report.markdown_table(summary), "",
    ]
    for dataset, sub in table.groupby("dataset", sort=False):
        mean = sub.groupby("editor", sort=False)[["mse_genes", "rmmd"]].mean().reset_index()
        lines += [f"- **{dataset}**: {report.verdict(mean, 'mse_genes')} {report.verdict(mean, 'rmmd')}"]
    lines += ["", "![errors](errors.png)", "", "![embedding](embedding.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    log(f"wrote {path}")
    return path


def run_overhead(out: str | Path | None = None, *, n_cells: int = 4096, epochs: int = 5, log: Any = print) -> dict[str, float]:
    """Seconds per epoch of :func:`sccbgm.train.train` vs a bare loop on the same module/data."""
    import numpy as np
    import torch

    from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig
    from sccbgm.train import TrainConfig, torch_threads, train

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(n_cells, 64)).astype(np.float32))
    c = torch.from_numpy(rng.integers(0, 2, (n_cells, 4)).astype(np.float32))
    m = torch.ones_like(c)
    cfg = SCCBGMConfig(in_dim=64, n_concepts=4, is_binary=[True] * 4)
    res = {}
    with torch_threads(None):
        torch.manual_seed(0)
        module = ConceptBottleneckVAE(cfg)
        t0 = time.perf_counter()
        train(module, n_cells, lambda r: {"x": x[r], "concepts": c[r], "mask": m[r]},
              TrainConfig(epochs=epochs, batch_size=128), seed=0, progress=False)
        res["sccbgm_loop_s_per_epoch"] = (time.perf_counter() - t0) / epochs
        torch.manual_seed(0)
        module = ConceptBottleneckVAE(cfg)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(n_cells)
            for s in range(0, n_cells, 128):
                r = perm[s : s + 128]
                loss = module({"x": x[r], "concepts": c[r], "mask": m[r]})["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
        res["bare_loop_s_per_epoch"] = (time.perf_counter() - t0) / epochs
    res["overhead_percent"] = 100 * (res["sccbgm_loop_s_per_epoch"] / res["bare_loop_s_per_epoch"] - 1)
    for k, v in res.items():
        log(f"{k}: {v:.4g}")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sccbgm bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="intervention tasks on simulated data vs trivial editors")
    g = syn.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="scale", help="one task, CPU minutes")
    g.add_argument("--paper", action="store_const", const="paper", dest="scale", help="paper sizes (GPU)")
    syn.add_argument("--out", default="out/bench-synthetic", help="output folder (report.md, results.csv, PNGs)")
    syn.add_argument("--seeds", type=int, nargs="+")
    syn.add_argument("--datasets", nargs="+", choices=["synthetic1", "synthetic2", "synthetic3"])
    syn.add_argument("--tasks", type=int, dest="n_tasks")
    ov = sub.add_parser("overhead", help="training-loop overhead vs a bare torch loop")
    ov.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "synthetic":
        run_synthetic(args.out, scale=args.scale or "default", seeds=args.seeds, datasets=args.datasets,
                      n_tasks=args.n_tasks)
    elif args.command == "overhead":
        run_overhead(epochs=args.epochs)
    return 0
