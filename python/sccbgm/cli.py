"""Command line: ``sccbgm demo``, ``sccbgm bench ...``, ``sccbgm fit``, ``sccbgm edit``, and the
tools ``sccbgm validate``, ``sccbgm sweep``, ``sccbgm search`` (:mod:`sccbgm.tools`).

``sccbgm demo --out DIR`` runs the main job end to end on an embedded default: simulate a data
set with ground-truth counterfactuals -> fit scCBGM on an intervention split -> edit the held-out
cells -> evaluate against the truth and the trivial editors -> write a report (Markdown, CSV,
PNGs, the fitted model) to DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn


def demo(out: str | Path, *, n_cells: int = 4000, n_genes: int = 500, seed: int = 0, n_members: int = 3) -> Path:
    """The end-to-end demo; returns the report path. ``n_members`` > 1 fits an ensemble and
    reports its per-cell uncertainty (docs/uncertainty.md)."""
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
    fit_options = {"model": "sccbgm", "cross_cov_weight": 0.5, "n_members": n_members}
    res = run_synthetic_task(adata, task, models={"scCBGM": fit_options}, seed=seed)
    print("[3/4] evaluate against the true counterfactuals", flush=True)
    table = res.table
    table.to_csv(out / "results.csv", index=False)
    model = res.models["scCBGM"]
    sccbgm.save(model, out / "model.sccbgm")
    report.plot_errors(table, out / "errors.png")
    report.plot_embedding(res.train_pca, res.factual, res.truth, res.predictions, res.pca, out / "embedding.png")
    report.plot_history(model, out / "history.png")
    uncertainty = _uncertainty_section(model, adata, task, seed, out) if model.n_members > 1 else []
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
        "that assumption; on real held-out Kang cells (`sccbgm bench validate`, docs/validation.md) "
        "the default beats the other types' mean shift on 7 of 7 cell types in both halves of the "
        "protocol, in the z-scored metric space and in the package's own. On this task the "
        "default's shift of u (`shift_unknown`, chosen on Kang) was measured to cost: without it "
        "the edit beats the mean shift here (docs/known-limits.md; not used to choose a default). "
        "The decoder-only output of the paper (`residual=False`) is far worse cell by cell than "
        "either floor (docs/user-guide.md).", "",
        "![errors](errors.png)", "", "![embedding: PC1/PC2](embedding.png)", "",
        "![training history](history.png)", "",
        *uncertainty,
        f"Files: `results.csv`, `model.sccbgm` (reload with `sccbgm.load`). Total time "
        f"{time.perf_counter() - t0:.0f} s.", "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    print("[4/4] report")
    print(scores)
    print(f"\n{report.verdict(table, 'mse_genes')}\nwrote {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def _uncertainty_section(model: Any, adata: Any, task: Any, seed: int, out: Path) -> list[str]:
    """Edit the held-out cells with the ensemble again, score its intervals against the true
    counterfactuals, draw them; returns the report's lines."""
    import numpy as np

    import sccbgm
    from sccbgm.bench import report
    from sccbgm.simulation import intervention_split
    from sccbgm.uncertainty import Z, calibration_scale, interval_coverage

    split = intervention_split(adata, task, seed=seed)
    edited = sccbgm.edit(model, split.intervene, {task.concept: 1})
    tr = model.transform
    factual = tr.lognorm(np.asarray(split.intervene.X, dtype=np.float64))
    truth = tr.lognorm(np.asarray(split.test.X, dtype=np.float64))
    x = np.asarray(edited.X, dtype=np.float64)
    sd = np.asarray(edited.layers["edit_sd"], dtype=np.float64)
    lower, upper = edited.layers["edit_lower"], edited.layers["edit_upper"]
    coverage = interval_coverage(truth, lower, upper)
    scale = calibration_scale(model)
    additive = interval_coverage(truth, np.clip(x - Z * scale * sd, 0, None), x + Z * scale * sd)
    report.plot_uncertainty(factual, truth, x, lower, upper, out / "uncertainty.png",
                            gene_names=list(edited.var_names), seed=seed)
    return [
        "## Per-cell uncertainty", "",
        f"The model is an ensemble of {model.n_members} members (`sccbgm.fit(..., n_members="
        f"{model.n_members})`); `edit` returns their mean and, per cell x gene, `layers['edit_sd']` "
        "(the members' sd of the predicted change) and a 90% interval `layers['edit_lower']` / "
        "`['edit_upper']`: for this count-space edit, the 5% / 95% quantiles of the edited count "
        "(binomial thinning or negative binomial added counts) at the members' mean rate ratio "
        f"moved by -/+ 1.645 x a x its sd over members, with the calibration scale a = {scale:.2f} "
        "fitted on training cells without any counterfactual (docs/uncertainty.md).", "",
        f"Coverage of the true counterfactuals (fraction of the {truth.size:,} held-out cell x gene "
        f"pairs inside the interval; target 90%): **{coverage:.1%}**; {additive:.1%} for the "
        f"members' spread alone (mean -/+ 1.645 x a x sd, no count noise). Median sd "
        f"{np.median(sd):.4f}; median |error| of the mean edit {np.median(np.abs(truth - x)):.4f}. "
        "Below 90% means the intervals are too narrow: the members share part of their error on "
        "cells the training data never showed in the edited state (docs/uncertainty.md says what "
        "the interval does and does not cover).", "",
        "![predicted vs true change with 90% intervals](uncertainty.png)", "",
    ]


def _strongest_task(adata: Any) -> Any:
    """Of the eligible (cell type, concept) tasks (paper C.6), the one whose concept has the
    largest true effect ||c_k|| (Eq. 40), so that the demo shows an edit that changes cells."""
    import numpy as np

    from sccbgm.simulation import eligible_intervention_tasks

    sim = adata.uns["simulation"]
    names = list(sim["concept_names"])
    strength = np.linalg.norm(np.asarray(sim["concept_coef"]), axis=1)
    return max(eligible_intervention_tasks(adata), key=lambda t: (strength[names.index(t.concept)], t.cell_type))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sccbgm: error: {message} (see `{self.prog} --help`)\n")


def _input_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path!r} does not exist" + (" (it is a folder)." if p.is_dir() else "."))
    return p


def _check_output(out: str, inputs: list[Path], overwrite: bool, *, folder: bool = False) -> Path:
    """Refuse to write over an input (always) or over an existing output (without --overwrite)."""
    p = Path(out)
    for src in inputs:
        if (p.exists() and src.exists() and os.path.samefile(p, src)) or p.resolve() == src.resolve():
            raise UsageError(f"--out {out!r} is an input of this command; sccbgm never writes over its inputs.")
    if folder:
        if p.exists() and not p.is_dir():
            raise UsageError(f"--out {out!r} exists and is not a folder.")
        if p.is_dir() and any(p.iterdir()) and not overwrite:
            raise UsageError(f"--out folder {out!r} is not empty; pass --overwrite to write into it.")
        return p
    if p.is_dir():
        raise UsageError(f"--out {out!r} is a folder; give a file name.")
    if p.exists() and not overwrite:
        raise UsageError(f"--out {out!r} already exists; pass --overwrite to replace it, or choose another name.")
    if not p.resolve().parent.is_dir():
        raise UsageError(f"the folder of --out {out!r} does not exist.")
    return p


def _read_h5ad(path: Path, *, backed: bool = False) -> Any:
    import anndata as ad

    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:  # noqa: BLE001 (any reader failure is a bad input file)
        raise UsageError(f"cannot read {str(path)!r} as an .h5ad file ({type(err).__name__}: {err}).") from None


def _write_h5ad_atomic(adata: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then move it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp.h5ad")
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parse_set(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--set is not valid JSON ({err.msg} at character {err.pos}): {text!r}; write e.g. "
            '--set \'{"stim": "STIM"}\'.'
        ) from None
    if not isinstance(value, dict) or not value:
        raise UsageError(f'--set must be a non-empty JSON object {{"column": value}}, not {text!r}.')
    return value


class UsageError(Exception):
    """A user error found by the command line itself (bad file, bad --set, existing output)."""


def _json_options(text: str) -> dict[str, Any]:
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--options is not valid JSON ({err}): {text!r}") from None
    if not isinstance(opts, dict):
        raise UsageError(f"--options must be a JSON object of option names and values, not {text!r}.")
    return opts


def _json_mapping(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{option} is not valid JSON ({err.msg} at character {err.pos}): {text!r}; write e.g. "
            f'{option} \'{{"condition": "stim"}}\'.'
        ) from None
    if not isinstance(value, dict) or not value:
        raise UsageError(f'{option} must be a non-empty JSON object {{"column": value}}, not {text!r}.')
    return value


def _value(text: str) -> Any:
    """A swept value from the command line: a number when it parses as one, else the string."""
    try:
        return float(text)
    except ValueError:
        return text


def _add_tool_parsers(sub: Any) -> None:
    v = sub.add_parser("validate", help="trust report: per group, hold the edited cells out, fit, edit, "
                                        "compare with the real cells and the trivial floors")
    v.add_argument("h5ad")
    v.add_argument("--concepts", nargs="+", required=True)
    v.add_argument("--edit", required=True, help='JSON, e.g. \'{"condition": "stim"}\'')
    v.add_argument("--group", required=True, help="obs column validated one value at a time, e.g. cell_type")
    v.add_argument("--source", help="JSON {column: source value} (default: the one other value)")
    v.add_argument("--groups", nargs="+", help="only these group values")
    v.add_argument("--min-cells", type=int, default=10)
    v.add_argument("--groupby", help="fit every held-out model with this groupby (as `sccbgm fit --groupby`), "
                                     "so that the report scores the group-calibrated edit")
    s = sub.add_parser("sweep", help="dose response: edit the cells to each value of a concept")
    s.add_argument("h5ad")
    s.add_argument("--model", required=True, help="model file (sccbgm fit --out)")
    s.add_argument("--concept", required=True)
    s.add_argument("--values", nargs="+", required=True, help="values of the concept (numbers or categories)")
    s.add_argument("--group", help="obs column: one curve per value")
    s.add_argument("--cells", help='JSON selector of the cells to edit, e.g. \'{"condition": "ctrl"}\'')
    s.add_argument("--n-top", type=int, default=10)
    q = sub.add_parser("search", help="rank pathway edits that move source cells toward target cells (paper 5.3)")
    q.add_argument("h5ad")
    q.add_argument("--source", required=True, help='JSON selector, e.g. \'{"condition": "ctrl"}\'')
    q.add_argument("--target", required=True, help="JSON selector of the target cells")
    q.add_argument("--concepts", nargs="*", default=[], help="further concept columns, e.g. cell_type")
    q.add_argument("--organism", default="human")
    q.add_argument("--weights", help="PROGENy weights CSV (source,target,weight)")
    q.add_argument("--n-pathways", type=int, default=5)
    q.add_argument("--n-combine", type=int, default=3)
    for p in (v, q):
        p.add_argument("--epochs", type=int)
        p.add_argument("--seed", type=int, default=0)
    for p in (v, s, q):
        p.add_argument("--layer")
        p.add_argument("--out", required=True, help="output folder (CSV table + PNG plot); new or empty unless --overwrite")
        p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")


def _run_tool(args: Any) -> None:
    import sccbgm

    data = _input_file(args.h5ad, "input file")
    model_path = _input_file(args.model, "model file") if args.command == "sweep" else None
    out = _check_output(args.out, [data] + ([model_path] if model_path else []), args.overwrite, folder=True)
    fit = {"epochs": args.epochs} if getattr(args, "epochs", None) is not None else {}
    if args.command == "validate":
        edit = _json_mapping(args.edit, "--edit")
        source = _json_mapping(args.source, "--source") if args.source else None
        adata = _read_h5ad(data)
        out.mkdir(parents=True, exist_ok=True)
        if args.groupby is not None:
            fit["groupby"] = args.groupby
        table = sccbgm.validate(adata, args.concepts, edit, args.group, source=source,
                                groups=args.groups, min_cells=args.min_cells, layer=args.layer, seed=args.seed,
                                plot=out / "validation.png", **fit)
        table.to_csv(out / "validation.csv", index=False)
        print(table.attrs["verdict"])
        print(f"wrote {out / 'validation.csv'} and {out / 'validation.png'}")
    elif args.command == "sweep":
        selector = _json_mapping(args.cells, "--cells") if args.cells else None
        model = sccbgm.load(model_path)
        adata = _read_h5ad(data)
        cells = None
        if selector:
            from sccbgm.access import match_obs

            cells = match_obs(adata.obs, selector)
        out.mkdir(parents=True, exist_ok=True)
        table = sccbgm.sweep(model, adata, args.concept, [_value(v) for v in args.values], group=args.group,
                             cells=cells, layer=args.layer, n_top=args.n_top, plot=out / "sweep.png")
        table.to_csv(out / "sweep.csv", index=False)
        print(f"most responsive genes: {', '.join(table.attrs['top_genes'])}")
        print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
    else:
        source, target = _json_mapping(args.source, "--source"), _json_mapping(args.target, "--target")
        adata = _read_h5ad(data)
        out.mkdir(parents=True, exist_ok=True)
        table = sccbgm.search_concepts(adata, source, target, concepts=args.concepts, organism=args.organism,
                                       weights=args.weights, n_pathways=args.n_pathways, n_combine=args.n_combine,
                                       layer=args.layer, seed=args.seed, plot=out / "search.png", **fit)
        table.to_csv(out / "search.csv", index=False)
        table.attrs["separation"].to_csv(out / "separation.csv", index=False)
        sccbgm.save(table.attrs["model"], out / "model.sccbgm")
        print(table.attrs["report"])
        print(f"wrote {out / 'search.csv'}, {out / 'separation.csv'}, {out / 'search.png'} and "
              f"{out / 'model.sccbgm'} (its pathway concepts can be swept with `sccbgm sweep`)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 1 internal error).

    No failure prints a Python traceback: a user error (SCCBGMError, bad file, bad --set,
    existing output) is one line ``sccbgm: error: ...`` and exit code 2; an unexpected internal
    error is one line and exit code 1 (set ``SCCBGM_DEBUG=1`` for the traceback). The same holds
    for ``sccbgm bench ...``.
    """
    from sccbgm.errors import SCCBGMError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            from sccbgm.bench import main as bench_main

            return bench_main(argv[1:])
        return _run(argv)
    except (SCCBGMError, UsageError) as err:
        print(f"sccbgm: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sccbgm: interrupted; nothing was written over an existing file.", file=sys.stderr)
        return 130
    except MemoryError:
        print("sccbgm: error: out of memory; use fewer cells or genes (see docs/reliability.md).", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (no traceback for a CLI user)
        if os.environ.get("SCCBGM_DEBUG"):
            raise
        print(f"sccbgm: internal error ({type(err).__name__}: {_one_line(err)}); please report it "
              "(rerun with SCCBGM_DEBUG=1 for the traceback).", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    """Parse ``argv`` and run demo / fit / edit / validate / sweep / search (errors are turned into
    exit codes by main)."""
    parser = _Parser(prog="sccbgm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="simulate -> fit -> edit -> evaluate, with a report")
    d.add_argument("--out", default="out/demo", help="report folder (must be empty unless --overwrite)")
    d.add_argument("--cells", type=int, default=4000)
    d.add_argument("--genes", type=int, default=500)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--members", type=int, default=3, help="ensemble size (1: no uncertainty section)")
    d.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    sub.add_parser("bench", help="benchmarks (see `sccbgm bench --help`)")
    f = sub.add_parser("fit", help="fit a model on an .h5ad file")
    f.add_argument("h5ad")
    f.add_argument("--concepts", nargs="+", required=True)
    f.add_argument("--model", default="sccbgm")
    f.add_argument("--preset", default="cpu")
    f.add_argument("--epochs", type=int)
    f.add_argument("--layer")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--members", type=int, default=None,
                   help="ensemble size (default: the preset's, 2 for sccbgm on the cpu preset); > 1 gives edits per-cell uncertainty layers (docs/uncertainty.md)")
    f.add_argument("--options", default="{}",
                   help='JSON of further fit options, e.g. \'{"batch_size": 256, "cross_cov_weight": 0.5}\'')
    f.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="DDP training (default: when launched by torchrun; docs/distributed.md)")
    f.add_argument("--groupby", help="obs column (e.g. cell_type) whose groups' own responses calibrate the edit "
                   "(sccbgm.groups; groups seen in both states of a concept)")
    f.add_argument("--out", required=True, help="model file to write (not an existing file unless --overwrite)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e = sub.add_parser("edit", help="edit the cells of an .h5ad file with a saved model")
    e.add_argument("h5ad")
    e.add_argument("--model", required=True)
    e.add_argument("--set", required=True, help='JSON, e.g. \'{"stim": "STIM"}\'')
    e.add_argument("--layer")
    e.add_argument("--decoder-output", action="store_true", help="return the decoder output (residual=False)")
    e.add_argument("--no-group-calibration", action="store_true",
                   help="a model fitted with --groupby: edit without its per-group correction")
    e.add_argument("--no-shared-response", action="store_true",
                   help="a model fitted with --groupby: each cell keeps its own predicted rate ratio "
                        "(default: the cells of a group edited alike share their mean)")
    e.add_argument("--out", required=True, help=".h5ad to write (never an input; not an existing file unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_tool_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        _check_output(args.out, [], args.overwrite, folder=True)
        demo(args.out, n_cells=args.cells, n_genes=args.genes, seed=args.seed, n_members=args.members)
    elif args.command == "fit":
        data = _input_file(args.h5ad, "input file")
        out = _check_output(args.out, [data], args.overwrite)
        import sccbgm
        from sccbgm import distributed

        opts = _json_options(args.options)
        if args.epochs is not None:
            opts["epochs"] = args.epochs
        model = sccbgm.fit(_read_h5ad(data), args.concepts, model=args.model, preset=args.preset,
                           layer=args.layer, seed=args.seed, n_members=args.members,
                           distributed=args.distributed, groupby=args.groupby, **opts)
        sccbgm.save(model, out)
        if distributed.rank() == 0:
            print(model)
            if model.group_responses is not None:
                print(f"group calibration by {model.group_responses.groupby}:")
                for line in model.group_responses.describe():
                    print(f"  {line}")
            print(f"wrote {out}")
        distributed.shutdown()
    elif args.command == "edit":
        data = _input_file(args.h5ad, "input file")
        model_path = _input_file(args.model, "model file")
        out = _check_output(args.out, [data, model_path], args.overwrite)
        set_ = _parse_set(args.set)
        import sccbgm

        model = sccbgm.load(model_path)
        source = _read_h5ad(data, backed=True)  # read in sorted chunks, written chunk by chunk
        try:
            edited = sccbgm.edit(model, source, set_, layer=args.layer,
                                 residual=False if args.decoder_output else None, out=out,
                                 group_calibration=False if args.no_group_calibration else None,
                                 share_response=False if args.no_shared_response else None)
            calibrated = edited.uns["sccbgm_edit"].get("group_calibration")
            shared = edited.uns["sccbgm_edit"].get("shared_response")
            note = ""
            if calibrated is not None:
                unseen = calibrated["n_cells_unseen_group"]
                note = (f" (group calibration by {calibrated['groupby']}: {calibrated['n_cells']} cells corrected, "
                        f"{calibrated['n_cells_pooled']} of them by the pooled correction"
                        + (f"; {unseen} cells of groups not in the training data, not corrected" if unseen else "")
                        + ")")
            if shared is not None:
                note += (f"; {shared['n_cells']} cells in {shared['n_groups']} groups of {shared['column']} "
                         "share their group's mean response")
            print(f"edited {edited.n_obs} cells{note}; wrote {out}")
            edited.file.close()
        finally:
            source.file.close()
    elif args.command in ("validate", "sweep", "search"):
        _run_tool(args)
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
