"""Benchmarks: ``python -m sccbgm.bench <suite> [--quick | --paper] --out DIR`` (also ``sccbgm bench``).

Suites (paper appendix C.5-C.7, D.5-D.8; implementation in :mod:`sccbgm.bench.suites`):

* ``synthetic`` -- Table S5: every package model and the peers (biolord, CINEMA-OT, scGen, CPA,
  CellFlow, each in its own environment) on the intervention tasks of C.6, next to the two trivial editors.
* ``noise`` -- Fig. 3 / C.4: scCBGM vs CBGM with noisy concept annotations.
* ``ablation`` -- Table S8 (CBM/CEM x skip x cross-cov/cosine) and D.8.3 (VAE vs AE).
* ``concepts`` -- Table S6: error vs number of concepts.
* ``leakage`` -- D.7 / Table S7 on simulated data: one known concept, classifiers for the rest.
* ``all`` -- the five above into DIR/<suite>, with the wall time of each.
* ``overhead`` -- the training loop's cost against a bare torch loop on the same module.
* ``metrics`` -- time and peak memory of MMD, Frechet and Sinkhorn at the paper's size.
* ``real`` -- held-out tasks of a prepared real data set (Tables 1/2; :mod:`sccbgm.bench.real`),
  every model, the peers and the field's metrics (R^2 of the mean, Pearson delta, DEG direction,
  E-distance).
* ``validate`` -- the defaults' validation (issue 12): Kang leave-one-type-out x seeds and two
  simulator variants, fixed choose / confirm halves (:mod:`sccbgm.bench.validate`).
* ``scale`` -- time and peak memory of fit and edit at 10k-1M cells and 20k-30k genes, next to
  scanpy + a bare torch loop (:mod:`sccbgm.bench.scale`; ``--quick`` for small sizes).

Each writes ``results.csv`` (every run), ``report.md`` (paper-style tables, mean ± SEM, best
bolded, floors, and whether the paper's ordering holds) and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def run_synthetic(out: str | Path, *, scale: str = "quick", **kwargs: Any) -> Path:
    """Table S5 suite (see :func:`sccbgm.bench.suites.run_synthetic`); returns the report path."""
    from sccbgm.bench.suites import run_synthetic as run

    return run(out, scale=scale, **kwargs)


def run_overhead(
    out: str | Path | None = None, *, n_cells: int = 4096, epochs: int = 3, repeats: int = 3, log: Any = print
) -> dict[str, float]:
    """Seconds per epoch of :func:`sccbgm.train.train` vs bare torch loops on the same module/data.

    Every loop runs once untimed first (allocator and kernel warm-up), then ``repeats`` times in
    alternation; the medians are reported. ``bare`` is Adam steps only; ``bare_clip`` adds the
    gradient-norm clipping that :class:`~sccbgm.train.TrainConfig` applies by default, so the
    difference between them is the price of clipping and the rest is the loop's own overhead
    (loss checks, history, scheduler, progress bar).
    """
    import numpy as np
    import torch

    from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig
    from sccbgm.train import TrainConfig, torch_threads, train

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(n_cells, 64)).astype(np.float32))
    c = torch.from_numpy(rng.integers(0, 2, (n_cells, 4)).astype(np.float32))
    m = torch.ones_like(c)
    cfg = SCCBGMConfig(in_dim=64, n_concepts=4, is_binary=[True] * 4)

    def sccbgm_loop() -> None:
        torch.manual_seed(0)
        train(ConceptBottleneckVAE(cfg), n_cells, lambda r: {"x": x[r], "concepts": c[r], "mask": m[r]},
              TrainConfig(epochs=epochs, batch_size=128), seed=0, progress=False)

    def bare_loop(clip: bool) -> None:
        torch.manual_seed(0)
        module = ConceptBottleneckVAE(cfg)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        for _ in range(epochs):
            perm = torch.randperm(n_cells)
            for s in range(0, n_cells, 128):
                r = perm[s : s + 128]
                loss = module({"x": x[r], "concepts": c[r], "mask": m[r]})["loss"]
                opt.zero_grad()
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
                opt.step()

    loops = {"sccbgm_loop": sccbgm_loop, "bare_loop": lambda: bare_loop(False),
             "bare_loop_with_clipping": lambda: bare_loop(True)}
    times: dict[str, list[float]] = {k: [] for k in loops}
    with torch_threads(None):
        for fn in loops.values():
            fn()
        for _ in range(repeats):
            for name, fn in loops.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / epochs)
    res = {f"{k}_s_per_epoch": float(np.median(v)) for k, v in times.items()}
    res["overhead_percent"] = 100 * (res["sccbgm_loop_s_per_epoch"] / res["bare_loop_s_per_epoch"] - 1)
    res["overhead_vs_clipped_percent"] = 100 * (
        res["sccbgm_loop_s_per_epoch"] / res["bare_loop_with_clipping_s_per_epoch"] - 1
    )
    for k, v in res.items():
        log(f"{k}: {v:.4g}")
    return res


def run_metrics(*, n_cells: int = 20000, n_features: int = 50, log: Any = print) -> dict[str, float]:
    """Seconds and peak resident memory (GiB, whole process) of each distribution metric on two
    ``n_cells x n_features`` sets with the default settings (MMD: every cell, in blocks;
    Sinkhorn: the documented seeded subsample of :data:`sccbgm.metrics.DEFAULT_MAX_CELLS`)."""
    import resource

    import numpy as np

    from sccbgm import metrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_cells, n_features))
    y = rng.normal(0.2, 1.0, size=(n_cells, n_features))
    res: dict[str, float] = {}
    calls = {
        "mmd_all_cells": lambda: metrics.mmd(x, y, max_cells=None),
        "mmd_default": lambda: metrics.mmd(x, y),
        "frechet": lambda: metrics.frechet_distance(x, y),
        "sinkhorn_default": lambda: metrics.sinkhorn_divergence(x, y),
    }
    for name, fn in calls.items():
        t0 = time.perf_counter()
        value = fn()
        res[f"{name}_seconds"] = time.perf_counter() - t0
        res[f"{name}_value"] = float(value)
        res[f"{name}_peak_rss_gib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        log(f"{name}: {value:.4g} in {res[f'{name}_seconds']:.1f} s, peak RSS so far "
            f"{res[f'{name}_peak_rss_gib_so_far']:.2f} GiB")
    return res


def _scale_options(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="scale",
                   help="small data and networks for a 2-core CPU (default)")
    g.add_argument("--paper", action="store_const", const="paper", dest="scale",
                   help="the paper's sizes and hyper-parameters (GPU)")
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")


def _peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", nargs="+", choices=["biolord", "cinemaot", "scgen", "cpa", "cellflow", "none"],
                   help="peers to run (default: all five; 'none' skips them)")
    p.add_argument("--peers-venv", help="peer environment folder (default $SCCBGM_PEERS_VENV or "
                   "~/.cache/sccbgm/venv-peers; scGen, CPA, CellFlow use <folder>-scgen, -cpa, -cellflow)")
    p.add_argument("--no-install-peers", action="store_true",
                   help="do not create / fill the peer environments; peers missing one are reported as not run")


def _peer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    peers = None if args.peers is None else [p for p in args.peers if p != "none"]
    return {"peers": peers, "peers_venv": args.peers_venv, "install_peers": not args.no_install_peers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sccbgm bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="Table S5: every model + peers vs trivial editors")
    _scale_options(syn, "out/bench/synthetic")
    _peer_options(syn)
    syn.add_argument("--seeds", type=int, nargs="+")
    syn.add_argument("--datasets", nargs="+", choices=["synthetic1", "synthetic2", "synthetic3"])
    syn.add_argument("--tasks", type=int, dest="n_tasks")
    noise = sub.add_parser("noise", help="Fig. 3: scCBGM vs CBGM under noisy concepts")
    _scale_options(noise, "out/bench/noise")
    abl = sub.add_parser("ablation", help="Table S8 design space and VAE vs AE")
    _scale_options(abl, "out/bench/ablation")
    con = sub.add_parser("concepts", help="Table S6: error vs number of concepts")
    _scale_options(con, "out/bench/concepts")
    leak = sub.add_parser("leakage", help="D.7: concept leakage with classifiers before/after an edit")
    _scale_options(leak, "out/bench/leakage")
    every = sub.add_parser("all", help="the five suites above, timed")
    _scale_options(every, "out/bench")
    _peer_options(every)
    ov = sub.add_parser("overhead", help="training-loop overhead vs a bare torch loop")
    ov.add_argument("--epochs", type=int, default=5)
    me = sub.add_parser("metrics", help="time and peak memory of the metrics on n x n cells")
    me.add_argument("--cells", type=int, default=20000)
    me.add_argument("--features", type=int, default=50)
    from sccbgm.bench.real import add_parser as add_real_parser
    from sccbgm.bench.scale import add_parser as add_scale_parser

    _peer_options(add_real_parser(sub))
    from sccbgm.bench.validate import add_parser as add_validate_parser

    add_validate_parser(sub)
    add_scale_parser(sub)
    args = parser.parse_args(argv)
    scale = getattr(args, "scale", None) or "quick"
    if args.command == "synthetic":
        run_synthetic(args.out, scale=scale, seeds=args.seeds, datasets=args.datasets, n_tasks=args.n_tasks,
                      **_peer_kwargs(args))
    elif args.command in ("noise", "ablation", "concepts", "leakage"):
        from sccbgm.bench.suites import SUITES

        SUITES[args.command](args.out, scale=scale)
    elif args.command == "all":
        from sccbgm.bench.suites import run_all

        run_all(args.out, scale=scale, **_peer_kwargs(args))
    elif args.command == "overhead":
        run_overhead(epochs=args.epochs)
    elif args.command == "metrics":
        run_metrics(n_cells=args.cells, n_features=args.features)
    elif args.command == "real":
        from sccbgm.bench.real import main_real

        main_real(args, **_peer_kwargs(args))
    elif args.command == "validate":
        from sccbgm.bench.validate import main_validate

        main_validate(args)
    elif args.command == "scale":
        from sccbgm.bench.scale import main_scale

        main_scale(args)
    return 0
