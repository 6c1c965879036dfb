"""Command line: ``sccbgm demo``, ``sccbgm bench ...``, ``sccbgm fit``, ``sccbgm edit``.

``sccbgm demo --out DIR`` runs the main job end to end on an embedded default: simulate a data
set with ground-truth counterfactuals -> fit scCBGM on an intervention split -> edit the held-out
cells -> evaluate against the truth and the trivial editors -> write a report (Markdown, CSV,
PNGs, the fitted model) to DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def demo(out: str | Path, *, n_cells: int = 4000, n_genes: int = 500, seed: int = 0) -> Path:
    """The end-to-end demo; returns the report path."""
    import sccbgm
    from sccbgm.bench import report
    from sccbgm.bench.synthetic import run_synthetic_task

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] simulate: synthetic1, {n_cells} cells x {n_genes} genes (paper Eq. 40-43)", flush=True)
    adata = sccbgm.simulate("synthetic1", n_cells=n_cells, n_genes=n_genes, seed=seed)
    task = _strongest_task(adata)
    print(f"[2/4] fit + edit: hold out {task.cell_type} with {task.concept}=1, edit its "
          f"{task.concept}=0 cells to 1", flush=True)
    # the simulator's concept activations depend on cell type (paper C.1), so the cross-covariance
    # penalty is lowered to the paper's 0.5 as the README advises for such concepts
    fit_options = {"model": "sccbgm", "cross_cov_weight": 0.5}
    res = run_synthetic_task(adata, task, models={"scCBGM": fit_options}, seed=seed)
    print("[3/4] evaluate against the true counterfactuals", flush=True)
    table = res.table
    table.to_csv(out / "results.csv", index=False)
    model = res.models["scCBGM"]
    sccbgm.save(model, out / "model.sccbgm")
    report.plot_errors(table, out / "errors.png")
    report.plot_embedding(res.train_pca, res.factual, res.truth, res.predictions, res.pca, out / "embedding.png")
    report.plot_history(model, out / "history.png")
    shown = table[["editor", "mse_genes", "mse_pca", "rmmd", "closest_training_population", "seconds"]]
    scores = report.markdown_table(shown, lower_is_better=("mse_genes", "mse_pca", "rmmd"))
    lines = [
        "# sccbgm demo: simulate -> fit -> edit -> evaluate", "",
        f"Data: `sccbgm.simulate('synthetic1', n_cells={n_cells}, n_genes={n_genes}, seed={seed})` "
        "(overdispersed Poisson, paper appendix C). Task (paper C.6): the training data never show "
        f"{task.cell_type} with {task.concept}=1 (of the eligible pairs, the concept with the largest "
        f"true effect); the held-out {task.concept}=0 cells of "
        f"{task.cell_type} are edited to {task.concept}=1 and compared cell by cell with their exact "
        "counterfactuals.", "",
        f"Model: `{model!r}`, CPU preset with `cross_cov_weight=0.5`: the simulator draws concepts "
        "with cell-type-dependent probabilities, so they are not independent of the unknown factors "
        "and the README advises the lower weight for such concepts.", "",
        "Scores on log-normalised expression (lower is better): `mse_genes` / `mse_pca` = cell-level "
        "MSE in gene space / 50-PC space; `rmmd` = MMD to the true counterfactual population divided "
        "by the smallest MMD of any training population (paper Eq. 10; < 1 beats mapping to the "
        "closest existing population).", "",
        scores, "",
        f"**Verdict:** {report.verdict(table, 'mse_genes')} {report.verdict(table, 'rmmd')}", "",
        "How to read the floors: this simulator (paper Eq. 40) gives a concept the same additive "
        "log-rate effect in every cell type, which is exactly what the mean-shift editor assumes, so "
        "with enough cells it approaches the best possible population-level edit here (measured: "
        "at 10,000 cells its rMMD is 0.03). scCBGM must learn the effect from the same cells without "
        "that assumption; on real held-out cells (Kang et al., `sccbgm bench real`, README) it beats "
        "both floors on every held-out cell type. The decoder-only output of the paper "
        "(`residual=False`) is far worse cell by cell than either floor (README, \"Which edit output "
        "is the default\").", "",
        "![errors](errors.png)", "", "![embedding: PC1/PC2](embedding.png)", "",
        "![training history](history.png)", "",
        f"Files: `results.csv`, `model.sccbgm` (reload with `sccbgm.load`). Total time "
        f"{time.perf_counter() - t0:.0f} s.", "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    print("[4/4] report")
    print(scores)
    print(f"\n{report.verdict(table, 'mse_genes')}\nwrote {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def _strongest_task(adata: Any) -> Any:
    """Of the eligible (cell type, concept) tasks (paper C.6), the one whose concept has the
    largest true effect ||c_k|| (Eq. 40), so that the demo shows an edit that changes cells."""
    import numpy as np

    from sccbgm.simulation import eligible_intervention_tasks

    sim = adata.uns["simulation"]
    names = list(sim["concept_names"])
    strength = np.linalg.norm(np.asarray(sim["concept_coef"]), axis=1)
    return max(eligible_intervention_tasks(adata), key=lambda t: (strength[names.index(t.concept)], t.cell_type))


def _read_backed(path: str) -> Any:
    """An .h5ad opened backed ("r"), with a clear error when it cannot be read."""
    import anndata as ad

    from sccbgm.errors import SCCBGMError

    if not os.path.exists(path):
        raise SCCBGMError(f"no such file: {path}")
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as err:  # h5py / anndata raise many types for a bad file
        raise SCCBGMError(f"cannot read {path} as .h5ad: {err}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from sccbgm.bench import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="sccbgm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="simulate -> fit -> edit -> evaluate, with a report")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--cells", type=int, default=4000)
    d.add_argument("--genes", type=int, default=500)
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="benchmarks (see `sccbgm bench --help`)")
    f = sub.add_parser("fit", help="fit a model on an .h5ad file")
    f.add_argument("h5ad")
    f.add_argument("--concepts", nargs="+", required=True)
    f.add_argument("--model", default="sccbgm")
    f.add_argument("--preset", default="cpu")
    f.add_argument("--epochs", type=int)
    f.add_argument("--layer")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="model file to write")
    e = sub.add_parser("edit", help="edit the cells of an .h5ad file with a saved model")
    e.add_argument("h5ad")
    e.add_argument("--model", required=True)
    e.add_argument("--set", required=True, help='JSON, e.g. \'{"stim": "STIM"}\'')
    e.add_argument("--layer")
    e.add_argument("--decoder-output", action="store_true", help="return the decoder output (residual=False)")
    e.add_argument("--out", required=True, help=".h5ad to write")
    args = parser.parse_args(argv)

    from sccbgm.errors import SCCBGMError

    try:
        if args.command == "demo":
            demo(args.out, n_cells=args.cells, n_genes=args.genes, seed=args.seed)
        elif args.command == "fit":
            import anndata as ad

            import sccbgm

            opts = {"epochs": args.epochs} if args.epochs else {}
            model = sccbgm.fit(ad.read_h5ad(args.h5ad), args.concepts, model=args.model, preset=args.preset,
                               layer=args.layer, seed=args.seed, **opts)
            sccbgm.save(model, args.out)
            print(f"{model}\nwrote {args.out}")
        elif args.command == "edit":
            import sccbgm

            if Path(args.out).resolve() == Path(args.h5ad).resolve():
                raise SCCBGMError(f"--out {args.out} is the input file; write the edit to a new file.")
            try:
                settings = json.loads(args.set)
            except json.JSONDecodeError as err:
                raise SCCBGMError(f"--set is not valid JSON ({err}): {args.set!r}") from None
            source = _read_backed(args.h5ad)
            try:
                edited = sccbgm.edit(sccbgm.load(args.model), source, settings, layer=args.layer,
                                     residual=False if args.decoder_output else None, out=args.out)
                print(f"edited {edited.n_obs} cells; wrote {args.out}")
                edited.file.close()
            finally:
                source.file.close()
    except SCCBGMError as err:
        print(f"sccbgm: error: {err}", file=sys.stderr)
        return 2
    return 0
