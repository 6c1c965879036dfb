"""Scale benchmark: time and peak memory of fit and edit on real-size data (``bench scale``).

Every step runs in its own child process (``python -m sccbgm.bench.scale --worker STEP``), which
reports its wall time and peak resident memory (``VmHWM`` on Linux, else ``ru_maxrss``; see
:func:`_peak`), and its resident memory right after loading the data (so "beyond the data" =
peak - loaded).
Side by side, in the same run, with what a user would otherwise run:

* ``fit`` -- ``sccbgm.fit`` (defaults: CPU preset, truncated PCA) against scanpy's
  ``normalize_total`` + ``log1p`` + ``pca`` (as many components as the model's input; scanpy's
  numba compilation is done before the clock starts) followed by a bare torch loop (Adam, the
  same :class:`~sccbgm.modules.ConceptBottleneckVAE`, batch size, epochs and torch threads) on
  those PCs;
* ``edit`` -- ``sccbgm edit DATA --out FILE`` (streamed, backed input) against the in-memory
  edit + ``write_h5ad`` (what ``edit`` did before; skipped above ``--max-in-memory`` cells).
  After a streamed edit every row of the output is checked (all HDF5 chunks allocated, every
  cell finite with a non-zero value).

Data: simulated sparse counts (4 cell types, a binary ``stim`` concept that shifts 10% of the
genes, log-normal library sizes, about 6.5% non-zero), written to an ``.h5ad`` chunk by chunk
under ``--workdir`` and deleted at the end (``--keep-data`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES: dict[str, dict[str, Any]] = {
    "full": {"fit_cells": [10_000, 100_000, 1_000_000], "genes": 3_000, "fit_genes": [20_000, 30_000],
             "fit_genes_cells": 20_000, "edit_cells": [10_000, 100_000, 1_000_000], "epochs": 1,
             "kang_epochs": None, "model_cells": 10_000},
    "quick": {"fit_cells": [2_000, 6_000], "genes": 500, "fit_genes": [2_000, 4_000], "fit_genes_cells": 1_000,
              "edit_cells": [2_000, 6_000], "epochs": 1, "kang_epochs": 3, "model_cells": 2_000},
}
CONCEPTS = ["cell_type", "stim"]


# ------------------------------------------------------------------------------------------ data
def write_counts(path: Path, n_cells: int, n_genes: int, *, seed: int = 0, chunk: int = 4096) -> Path:
    """Simulated sparse counts (n_cells, n_genes) as a CSR ``.h5ad`` written chunk by chunk.

    Log-rate = gene base (uniform in [-6, -1]) + cell-type effect (4 types, N(0, 0.5)) + stim
    effect (10% of genes, N(0, 1)) + log library size (N(0, 0.3)); obs ``cell_type`` (categorical)
    and ``stim`` (0/1). Memory: one chunk.
    """
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    base = rng.uniform(-6.0, -1.0, n_genes)
    type_effect = rng.normal(0.0, 0.5, (4, n_genes))
    stim_effect = rng.normal(0.0, 1.0, n_genes) * (rng.random(n_genes) < 0.1)
    types = rng.integers(0, 4, n_cells)
    stim = rng.integers(0, 2, n_cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = (n_cells, n_genes)
        index_type = np.int32 if n_cells * n_genes * 0.2 < 2**31 else np.int64  # as scipy would choose
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 20,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=index_type, chunks=(1 << 20,))
        indptr = np.zeros(n_cells + 1, dtype=index_type)
        for s in range(0, n_cells, chunk):
            e = min(s + chunk, n_cells)
            crng = np.random.default_rng([seed, s])
            log_rate = base + type_effect[types[s:e]] + stim[s:e, None] * stim_effect
            log_rate += crng.normal(0.0, 0.3, (e - s, 1))
            counts = crng.poisson(np.exp(log_rate)).astype(np.float32)
            counts[np.arange(e - s), crng.integers(0, n_genes, e - s)] += 1  # no empty cell
            rows, cols = np.nonzero(counts)
            old = data.shape[0]
            data.resize((old + rows.size,))
            indices.resize((old + rows.size,))
            data[old:] = counts[rows, cols]
            indices[old:] = cols.astype(index_type)
            indptr[s + 1 : e + 1] = old + np.cumsum(np.bincount(rows, minlength=e - s))
        x.create_dataset("indptr", data=indptr)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical([f"type{t}" for t in types]), "stim": stim},
            index=pd.Index([f"cell{i}" for i in range(n_cells)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(n_genes)])))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    return path


# --------------------------------------------------------------------------------------- workers
def _rss_now() -> int:
    """Current resident memory (bytes) of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """Peak resident memory (bytes) of this process image: ``VmHWM`` of /proc/self/status on Linux.

    ``getrusage().ru_maxrss`` is not used there because Linux carries the parent's peak across
    fork + exec into the child's ru_maxrss (so a child started by a big parent reports the
    parent's size); ``VmHWM`` belongs to the new process image only. Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(step: str, args: dict[str, Any]) -> dict[str, Any]:
    import anndata as ad

    if step == "fit":
        import torch  # noqa: F401 (a user's session has it loaded; not counted as the fit's memory)

        import sccbgm

        adata = ad.read_h5ad(args["path"])
        loaded = _rss_now()
        opts = {"epochs": args["epochs"]} if args.get("epochs") else {}
        t0 = time.perf_counter()
        model = sccbgm.fit(adata, args["concepts"], seed=0, progress=False, **opts)
        seconds = time.perf_counter() - t0
        if args.get("model_out"):
            sccbgm.save(model, args["model_out"])
        return {"seconds": seconds, "loaded": loaded, "peak": _peak(), "n_features": model.transform.n_features,
                "epochs": int(model.options["train"]["epochs"])}
    if step == "baseline":
        import scanpy as sc
        import scipy.sparse as sp
        import torch

        from sccbgm.concepts import ConceptSpec
        from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig
        from sccbgm.presets import PRESETS
        from sccbgm.train import torch_threads

        warm = ad.AnnData(sp.random(200, 100, density=0.3, format="csr", dtype=np.float32, random_state=0))
        sc.pp.normalize_total(warm)  # numba compilation happens here, outside the clock
        sc.pp.log1p(warm)
        sc.pp.pca(warm, n_comps=5, random_state=0)
        adata = ad.read_h5ad(args["path"])
        loaded = _rss_now()
        t0 = time.perf_counter()
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)
        sc.pp.pca(adata, n_comps=int(args["n_features"]), random_state=0)
        t_pca = time.perf_counter() - t0
        spec = ConceptSpec.from_obs(adata.obs, args["concepts"])
        values, mask = spec.encode(adata.obs)
        preset = PRESETS["cpu"]
        cfg = SCCBGMConfig(in_dim=int(args["n_features"]), n_concepts=spec.n_concepts,
                           is_binary=[bool(b) for b in spec.is_binary], **preset["module"])
        x = torch.from_numpy(np.ascontiguousarray(adata.obsm["X_pca"], dtype=np.float32))
        c, m = torch.from_numpy(values), torch.from_numpy(mask)
        t1 = time.perf_counter()  # building the module and optimizer is part of the loop's cost
        torch.manual_seed(0)
        module = ConceptBottleneckVAE(cfg)
        opt = torch.optim.Adam(module.parameters(), lr=preset["train"]["lr"])
        batch, n = preset["train"]["batch_size"], x.shape[0]
        with torch_threads(None):  # the same torch threads as sccbgm.fit
            for _ in range(int(args["epochs"])):
                perm = torch.randperm(n)
                for s in range(0, n, batch):
                    r = perm[s : s + batch]
                    loss = module({"x": x[r], "concepts": c[r], "mask": m[r]})["loss"]
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        t_loop = time.perf_counter() - t1
        return {"seconds": t_pca + t_loop, "seconds_pca": t_pca, "seconds_loop": t_loop, "loaded": loaded,
                "peak": _peak()}
    if step == "edit_stream":
        import torch  # noqa: F401 (loaded before the clock starts, as for the in-memory edit)

        from sccbgm.cli import main

        loaded = _rss_now()
        t0 = time.perf_counter()
        rc = main(["edit", args["path"], "--model", args["model"], "--set", json.dumps({"stim": 1}), "--out", args["out"]])
        return {"seconds": time.perf_counter() - t0, "loaded": loaded, "peak": _peak(), "rc": rc}
    if step == "edit_memory":
        import sccbgm

        model = sccbgm.load(args["model"])
        adata = ad.read_h5ad(args["path"])
        loaded = _rss_now()
        t0 = time.perf_counter()
        sccbgm.edit(model, adata, {"stim": 1}).write_h5ad(args["out"])
        return {"seconds": time.perf_counter() - t0, "loaded": loaded, "peak": _peak()}
    raise ValueError(step)


def _run_worker(step: str, args: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sccbgm.bench.scale", "--worker", step, json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(lines[-1])


def verify_edit(path: Path, n_cells: int, n_genes: int) -> dict[str, Any]:
    """Check a streamed edit: shape, every HDF5 chunk of X allocated, every cell finite and not
    all zero (read in row blocks)."""
    import h5py

    with h5py.File(path, "r") as f:
        x = f["X"]
        rows = x.chunks[0]
        expected_chunks = -(-n_cells // rows)
        ok = x.shape == (n_cells, n_genes) and x.id.get_num_chunks() == expected_chunks
        empty = 0
        for s in range(0, n_cells, 16 * rows):
            block = x[s : s + 16 * rows]
            if not np.isfinite(block).all():
                ok = False
            empty += int((block.max(axis=1) <= 0).sum())
        n_obs = f["obs"]["_index"].shape[0]
    return {"cells_written": n_cells - empty, "verified": bool(ok and empty == 0 and n_obs == n_cells)}


# ------------------------------------------------------------------------------------------- run
def run_scale(
    out: str | Path = "out/bench/scale", *, scale: str = "quick", workdir: str | Path | None = None,
    keep_data: bool = False, fit_cells: list[int] | None = None, edit_cells: list[int] | None = None,
    fit_genes: list[int] | None = None, max_in_memory: int = 100_000, kang: bool = True,
    timeout: float | None = None, log: Any = print,
) -> Path:
    """Run the scale benchmark (module doc); write results.csv, report.md and scale.png to ``out``."""
    import pandas as pd

    size = dict(SIZES[scale])
    for key, value in (("fit_cells", fit_cells), ("edit_cells", edit_cells), ("fit_genes", fit_genes)):
        if value is not None:
            size[key] = value
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sccbgm-scale-", dir=workdir))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def record(task: str, n_cells: int, n_genes: int, method: str, res: dict[str, Any], **extra: Any) -> None:
        gib = 2.0**30
        row = {"task": task, "n_cells": n_cells, "n_genes": n_genes, "method": method,
               "seconds": res.get("seconds", np.nan),
               "peak_rss_gib": res["peak"] / gib if "peak" in res else np.nan,
               "beyond_data_gib": (res["peak"] - res["loaded"]) / gib if "peak" in res else np.nan,
               "error": res.get("error", ""), **extra}
        rows.append(row)
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
        log(f"  {task} {n_cells:>9,} x {n_genes:>6,} {method:<32} {row['seconds']:9.1f} s  peak "
            f"{row['peak_rss_gib']:.2f} GiB (beyond data {row['beyond_data_gib']:.2f}) {row['error']}")

    def fit_pair(task: str, path: Path, n_cells: int, n_genes: int, concepts: list[str], epochs: int | None,
                 model_out: Path | None = None) -> None:
        res = _run_worker("fit", {"path": str(path), "concepts": concepts, "epochs": epochs,
                                  "model_out": str(model_out) if model_out else None}, timeout)
        record(task, n_cells, n_genes, "sccbgm.fit", res, epochs=res.get("epochs", epochs))
        if "error" in res:
            return
        base = _run_worker("baseline", {"path": str(path), "concepts": concepts, "epochs": res["epochs"],
                                        "n_features": res["n_features"]}, timeout)
        record(task, n_cells, n_genes, "scanpy normalise+PCA + bare torch loop", base, epochs=res["epochs"],
               seconds_pca=base.get("seconds_pca", np.nan), seconds_loop=base.get("seconds_loop", np.nan))

    try:
        from sccbgm.datasets import KANG_SUBSET_FILE, shared_data_dir

        genes = size["genes"]
        kang_path = shared_data_dir() / KANG_SUBSET_FILE
        if kang and kang_path.is_file():
            log(f"[kang] sccbgm.fit vs scanpy + bare loop on {kang_path.name}")
            fit_pair("fit (Kang)", kang_path, 1975, 6998, ["condition", "cell_type"], size["kang_epochs"])
        elif kang:
            log(f"[kang] skipped: {kang_path} not found (set SCCBGM_SHARED_DATA)")
        for n in size["fit_cells"]:
            log(f"[fit] {n:,} cells x {genes:,} genes")
            path = write_counts(work / f"fit_{n}x{genes}.h5ad", n, genes)
            fit_pair("fit", path, n, genes, CONCEPTS, size["epochs"])
            path.unlink()
        for g in size["fit_genes"]:
            n = size["fit_genes_cells"]
            log(f"[fit genes] {n:,} cells x {g:,} genes")
            path = write_counts(work / f"fit_{n}x{g}.h5ad", n, g)
            fit_pair("fit (many genes)", path, n, g, CONCEPTS, size["epochs"])
            path.unlink()
        model_path = work / "model.sccbgm"
        if size["edit_cells"]:
            train = write_counts(work / "train.h5ad", size["model_cells"], genes, seed=1)
            _run_worker("fit", {"path": str(train), "concepts": CONCEPTS, "epochs": 2, "model_out": str(model_path)},
                        timeout)
            train.unlink()
        for n in size["edit_cells"]:
            log(f"[edit] {n:,} cells x {genes:,} genes")
            path = write_counts(work / f"edit_{n}x{genes}.h5ad", n, genes, seed=2)
            edited = work / f"edited_{n}.h5ad"
            res = _run_worker("edit_stream", {"path": str(path), "model": str(model_path), "out": str(edited)}, timeout)
            check = verify_edit(edited, n, genes) if edited.exists() else {"cells_written": 0, "verified": False}
            record("edit", n, genes, "sccbgm edit --out (streamed)", res, **check)
            edited.unlink(missing_ok=True)
            if n <= max_in_memory:
                res = _run_worker("edit_memory", {"path": str(path), "model": str(model_path), "out": str(edited)},
                                  timeout)
                record("edit", n, genes, "in-memory edit + write_h5ad", res)
                edited.unlink(missing_ok=True)
            path.unlink()
    finally:
        if not keep_data:
            shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    plot_scale(table, out / "scale.png")
    report = write_report(table, out, scale=scale, seconds=time.perf_counter() - t_start)
    log(f"wrote {report}")
    return report


def plot_scale(table: Any, path: Path) -> Path:
    """Two panels (seconds, peak GiB) of grouped bars, one group per (task, size), log scale."""
    from sccbgm.bench.report import _pyplot

    plt = _pyplot()
    table = table[table["error"].fillna("") == ""]
    labels = [f"{t}\n{c:,} x {g:,}" for t, c, g in table[["task", "n_cells", "n_genes"]].drop_duplicates().itertuples(index=False)]
    groups = table[["task", "n_cells", "n_genes"]].drop_duplicates().to_numpy().tolist()
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(groups)), 8), sharex=True)
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        for ax, col in zip(axes, ("seconds", "peak_rss_gib"), strict=True):
            vals = []
            for task, cells, genes in groups:
                sel = table[(table["task"] == task) & (table["n_cells"] == cells) & (table["n_genes"] == genes)
                            & (table["method"] == method)]
                vals.append(float(sel[col].iloc[0]) if len(sel) else np.nan)
            ax.bar(np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width, vals, width, label=method)
    axes[0].set_ylabel("wall time (s)")
    axes[1].set_ylabel("peak resident memory (GiB)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].set_xticks(np.arange(len(groups)), labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(table: Any, out: Path, *, scale: str, seconds: float) -> Path:
    from sccbgm.bench.report import markdown_table

    shown = table.copy()
    lines = [f"# Scale benchmark ({scale})", "",
             f"{os.cpu_count()} CPU cores, torch threads {os.environ.get('SCCBGM_NUM_THREADS', 'default')}; "
             f"every step in its own process; peak = ru_maxrss of that process, beyond data = peak - "
             f"resident memory after loading the data. Total {seconds:.0f} s.", ""]
    fits = shown[shown["task"].str.startswith("fit")]
    ratios = []
    for (task, cells, genes), grp in fits.groupby(["task", "n_cells", "n_genes"], sort=False):
        ours = grp[grp["method"] == "sccbgm.fit"]["seconds"]
        base = grp[grp["method"] != "sccbgm.fit"]["seconds"]
        if len(ours) and len(base):
            ratios.append(f"- {task} {cells:,} x {genes:,}: sccbgm.fit / (scanpy + bare loop) = "
                          f"{float(ours.iloc[0]) / float(base.iloc[0]):.2f}x")
    cols = [c for c in ("task", "n_cells", "n_genes", "method", "epochs", "seconds", "seconds_pca", "seconds_loop",
                        "peak_rss_gib", "beyond_data_gib", "cells_written", "verified", "error") if c in shown]
    lines += [markdown_table(shown[cols]), "", "Fit time ratios:", "", *ratios, "", "![scale](scale.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def add_parser(sub: Any) -> None:
    p = sub.add_parser("scale", help="time and peak memory of fit and edit at 10k-1M cells, 20k-30k genes")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="scale", help="small sizes (minutes)")
    g.add_argument("--full", action="store_const", const="full", dest="scale",
                   help="10k/100k/1M cells x 3,000 genes, 20k cells x 20k/30k genes (default)")
    p.add_argument("--out", default="out/bench/scale")
    p.add_argument("--workdir", help="where the simulated .h5ad files go (default: the temp folder); "
                   "deleted at the end")
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--fit-cells", type=int, nargs="*", help="override the fit sizes (cells)")
    p.add_argument("--edit-cells", type=int, nargs="*", help="override the edit sizes (cells)")
    p.add_argument("--fit-genes", type=int, nargs="*", help="override the many-genes fit sizes (genes)")
    p.add_argument("--max-in-memory", type=int, default=100_000, help="largest in-memory edit baseline")
    p.add_argument("--no-kang", action="store_true", help="skip the shared Kang cells")
    p.add_argument("--timeout", type=float, help="seconds per step")


def main_scale(args: argparse.Namespace) -> None:
    run_scale(args.out, scale=args.scale or "full", workdir=args.workdir, keep_data=args.keep_data,
              fit_cells=args.fit_cells, edit_cells=args.edit_cells, fit_genes=args.fit_genes,
              max_in_memory=args.max_in_memory, kang=not args.no_kang, timeout=args.timeout)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit("usage: python -m sccbgm.bench scale [--quick] (this module is the per-step worker)")
