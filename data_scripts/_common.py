"""Shared steps of the ``prepare_*.py`` scripts: inputs, checksums, preprocessing, outputs.

Preprocessing is the one of paper appendix D.1 for all three data sets: raw counts are kept in
``layers["counts"]``; ``X`` becomes library-size normalised to the median total count of the
cells, then ``log1p``; the ``n_top_genes`` most variable genes are kept (scanpy's
``highly_variable_genes`` on the log data, ``flavor="cell_ranger"`` by default). Fewer genes are
kept when fewer are detected (small inputs).

Why ``cell_ranger`` and not scanpy's default ``seurat``: on the Kang cells, ``seurat`` (dispersion
z-scored by mean-expression bin) drops IFI6, IFIT1, IFIT2, IFIT3, RSAD2 and GBP1 -- interferon
response genes the Kang task is about -- while ``cell_ranger`` (median / MAD per percentile bin)
keeps them. ``--hvg-flavor`` selects another flavour, or ``mean`` for the top genes by mean
expression (D.1 literally says "the top 3000 most highly expressed genes").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "python") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "python"))

from sccbgm.datasets import SCHEMA, select_cells, validate_tasks  # noqa: E402
from sccbgm.errors import SCCBGMError  # noqa: E402

CHUNK = 8192


class ChecksumError(SCCBGMError):
    """A downloaded or local file does not have the expected checksum."""


@dataclass(frozen=True)
class Source:
    """One public input file: where it is, what it should hash to, and what is known about it."""

    name: str
    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    note: str = ""


def say(message: str) -> None:
    """Progress line on stdout (the scripts print what they do)."""
    print(f"[sccbgm-data] {message}", flush=True)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike[str], expected: str, algorithm: str = "sha256") -> str:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected``; return the digest."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.strip().lower():
        raise ChecksumError(
            f"{algorithm} mismatch for {path}: expected {expected}, got {actual}. The file is corrupt, "
            "incomplete or a different release; delete it and download again."
        )
    return actual


def check_source_file(path: Path, source: Source, *, skip_checksum: bool) -> dict[str, Any]:
    """Verify a downloaded file against ``source``; return provenance for ``uns``."""
    sha = file_digest(path)
    info = {"name": source.name, "url": source.url, "file": path.name, "sha256": sha}
    if skip_checksum:
        say(f"checksum NOT verified (--skip-checksum) for {path.name}; its sha256 is {sha}")
        info["verified"] = False
        return info
    if source.sha256 is not None:
        verify_checksum(path, source.sha256, "sha256")
        say(f"sha256 verified for {path.name}")
    elif source.md5 is not None:
        verify_checksum(path, source.md5, "md5")
        say(f"md5 verified for {path.name}")
    else:
        raise ChecksumError(
            f"no published checksum is recorded for {source.name} ({source.url}); its sha256 is {sha}. "
            "Check the file yourself, then re-run with --skip-checksum to accept it."
        )
    info["verified"] = True
    return info


def download(source: Source, dest_dir: Path, *, skip_checksum: bool) -> tuple[Path, dict[str, Any]]:
    """Download ``source`` into ``dest_dir`` (reused when already there and valid); verify it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / source.filename
    if path.is_file():
        say(f"using the earlier download {path}")
    else:
        say(f"downloading {source.name}: {source.url}")
        part = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(source.url, timeout=120) as response, open(part, "wb") as fh:
                shutil.copyfileobj(response, fh, length=1 << 20)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise SCCBGMError(
                f"download of {source.url} failed ({exc}); download it by hand and pass --from PATH."
            ) from exc
        part.replace(path)
        say(f"saved {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return path, check_source_file(path, source, skip_checksum=skip_checksum)


def local_provenance(path: Path, sources: Iterable[Source]) -> dict[str, Any]:
    """Provenance of a ``--from`` input; says whether it matches a known public file."""
    info: dict[str, Any] = {"file": str(path), "url": None, "verified": False}
    if path.is_file():
        sha = file_digest(path)
        info["sha256"] = sha
        match = next((s for s in sources if s.sha256 and s.sha256.lower() == sha), None)
        if match is not None:
            info.update(name=match.name, url=match.url, verified=True)
            say(f"--from {path.name}: sha256 matches the public file {match.name}")
        else:
            say(f"--from {path.name}: local copy, sha256 {sha} (not a known public release)")
    return info


def refuse_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    """Stop before any work when an output exists and ``--overwrite`` was not given."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise SCCBGMError(
            f"output already exists: {', '.join(existing)}. Pass --overwrite to replace it, or choose "
            "another --out-dir."
        )


def resolve_columns(
    obs: pd.DataFrame, layouts: Sequence[tuple[str, Mapping[str, str]]], what: str
) -> tuple[str, dict[str, str]]:
    """Pick the first known source layout whose columns are all in ``obs``.

    ``layouts`` is ``[(layout name, {role: column}), ...]``; returns the layout name and map.
    """
    for name, mapping in layouts:
        if all(col in obs.columns for col in mapping.values()):
            return name, dict(mapping)
    wanted = "; ".join(f"{name}: {sorted(m.values())}" for name, m in layouts)
    raise SCCBGMError(
        f"{what}: obs has none of the known column layouts ({wanted}); obs columns are "
        f"{list(obs.columns)}. Pass the column names explicitly (see --help)."
    )


def map_labels(values: pd.Series, mapping: Mapping[str, str], what: str) -> pd.Series:
    """Map labels through ``mapping``; fail listing every label that has no entry."""
    labels = values.astype(str)
    unknown = sorted(set(labels.unique()) - set(mapping))
    if unknown:
        raise SCCBGMError(f"unknown {what} label(s) {unknown}; known: {sorted(mapping)}.")
    return labels.map(mapping)


def integer_counts(adata: Any, what: str) -> sp.csr_matrix:
    """Raw counts as CSR float32 from ``X`` or a ``counts`` / ``raw`` layer; fail if none are counts."""
    candidates: list[tuple[str, Any]] = [("X", adata.X)]
    candidates += [(f"layers[{k!r}]", adata.layers[k]) for k in ("counts", "raw") if k in adata.layers]
    if adata.raw is not None and adata.raw.shape == adata.shape:
        candidates.append(("raw.X", adata.raw.X))
    for label, matrix in candidates:
        m = sp.csr_matrix(matrix, dtype=np.float32)
        data = m.data
        if data.size and np.isfinite(data).all() and data.min() >= 0 and np.all(data == np.round(data)):
            if label != "X":
                say(f"{what}: X is not raw counts; using {label}")
            return m
    raise SCCBGMError(
        f"{what}: no raw integer counts found in X, layers['counts'], layers['raw'] or raw.X; the "
        "preparation (median library-size normalisation + log1p) needs counts."
    )


def normalize_log(adata: Any) -> dict[str, float]:
    """Counts to ``layers['counts']``, library sizes to ``obs['total_counts']``; X = log1p(counts
    scaled to the median library size)."""
    import scanpy as sc

    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = counts.copy()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    if (totals <= 0).any():
        raise SCCBGMError(f"{int((totals <= 0).sum())} cell(s) have no counts; remove them first.")
    target = float(np.median(totals))
    adata.obs["total_counts"] = totals.astype(np.float64)
    adata.X = counts.copy()
    sc.pp.normalize_total(adata, target_sum=target)
    sc.pp.log1p(adata)
    return {"target_sum": target, "median_library_size": target}


HVG_FLAVORS = ("cell_ranger", "seurat", "seurat_v3", "mean")
DEFAULT_HVG_FLAVOR = "cell_ranger"


def select_hvg(adata: Any, n_top_genes: int, flavor: str = DEFAULT_HVG_FLAVOR) -> tuple[Any, dict[str, Any]]:
    """Keep the ``n_top_genes`` most variable genes (fewer when fewer genes are detected).

    ``flavor``: a scanpy ``highly_variable_genes`` flavour (``seurat_v3`` runs on the counts and
    needs scikit-misc) or ``mean`` (highest mean log-normalised expression).
    """
    if flavor not in HVG_FLAVORS:
        raise SCCBGMError(f"unknown HVG flavour {flavor!r}; choose one of {HVG_FLAVORS}.")
    import scanpy as sc

    detected = np.asarray((adata.layers["counts"] > 0).sum(axis=0)).ravel() > 0
    n_detected = int(detected.sum())
    if n_detected < 2:
        raise SCCBGMError(f"only {n_detected} gene(s) have counts; nothing to select.")
    if n_detected < adata.n_vars:
        adata = adata[:, detected].copy()
    n_use = min(int(n_top_genes), n_detected)
    if n_use < n_top_genes:
        say(f"only {n_detected} genes detected: keeping {n_use} instead of {n_top_genes}")
    if n_use == adata.n_vars:
        adata.var["highly_variable"] = True
    elif flavor == "mean":
        means = np.asarray(adata.X.mean(axis=0)).ravel()
        keep = np.zeros(adata.n_vars, dtype=bool)
        keep[np.argsort(-means, kind="mergesort")[:n_use]] = True
        adata.var["highly_variable"] = keep
        adata = adata[:, keep].copy()
    else:
        try:
            sc.pp.highly_variable_genes(adata, n_top_genes=n_use, flavor=flavor,
                                        layer="counts" if flavor == "seurat_v3" else None)
        except ImportError as exc:
            raise SCCBGMError(f"--hvg-flavor {flavor} needs a package that is not installed ({exc}).") from exc
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    return adata, {"n_genes_detected": n_detected, "n_top_genes_requested": int(n_top_genes),
                   "n_hvg": int(adata.n_vars), "hvg_flavor": flavor}


def add_progeny(adata: Any, organism: str, weights: str | None) -> list[str]:
    """PROGENy concepts on the log-normalised X (all genes), scaled to [0, 1]."""
    from sccbgm.pathways import add_pathway_concepts

    names = add_pathway_concepts(adata, organism=organism, weights=weights)
    say(f"PROGENy ({organism}) pathway concepts added: {', '.join(names)}")
    return names


def pathway_concepts(names: Sequence[str]) -> list[dict[str, Any]]:
    """Concept entries for PROGENy columns."""
    return [
        {"name": n, "kind": "continuous", "range": [0, 1],
         "description": "PROGENy activity (decoupler ulm), scaled to [0, 1] between the 1% and 99% quantiles"}
        for n in names
    ]


def make_task(
    name: str,
    kind: str,
    description: str,
    *,
    holdout: Mapping[str, Any],
    source: Mapping[str, Any],
    set_: Mapping[str, Any],
    target: Mapping[str, Any],
    group_key: str | None = None,
    obs: pd.DataFrame,
    min_cells: int = 1,
    **extra: Any,
) -> dict[str, Any] | None:
    """One task entry with its cell counts, or None (with a message) when it has too few cells."""
    masks = {k: select_cells(obs, sel) for k, sel in (("holdout", holdout), ("source", source), ("target", target))}
    n = {k: int(m.sum()) for k, m in masks.items()}
    if n["source"] < min_cells or n["target"] < min_cells:
        say(f"task {name} skipped: {n['source']} source / {n['target']} target cells (< {min_cells})")
        return None
    task: dict[str, Any] = {
        "name": name, "kind": kind, "description": description,
        "holdout": dict(holdout), "source": dict(source), "set": dict(set_), "target": dict(target),
        "group_key": group_key, "groups": [], "n_cells": n,
    }
    if group_key is not None:
        groups = {}
        src = obs.loc[masks["source"], group_key].astype(str).value_counts()
        tgt = obs.loc[masks["target"], group_key].astype(str).value_counts()
        for g in sorted(set(src.index) | set(tgt.index)):
            ns, nt = int(src.get(g, 0)), int(tgt.get(g, 0))
            if ns >= min_cells and nt >= min_cells:
                groups[g] = {"source": ns, "target": nt}
        task["groups"] = list(groups)
        task["n_cells"]["groups"] = groups
    task.update(extra)
    return task


def tasks_document(
    dataset: str,
    h5ad_name: str,
    description: str,
    concepts: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """The tasks JSON (schema ``sccbgm.tasks/1``, see ``sccbgm.datasets``)."""
    if not tasks:
        raise SCCBGMError(f"{dataset}: no task has enough cells; nothing to write.")
    return {
        "schema": SCHEMA, "dataset": dataset, "h5ad": h5ad_name, "description": description,
        "source": dict(source), "concepts": concepts, "tasks": tasks,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_outputs(adata: Any, spec: dict[str, Any], h5ad_path: Path, json_path: Path, overwrite: bool) -> None:
    """Validate the tasks against the cells, then write both files (atomically, no silent overwrite)."""
    refuse_overwrite([h5ad_path, json_path], overwrite)
    validate_tasks(spec, adata.obs)
    h5ad_path.parent.mkdir(parents=True, exist_ok=True)
    adata.uns["tasks_json"] = json_path.name
    with tempfile.TemporaryDirectory(dir=h5ad_path.parent) as tmp:
        tmp_h5ad = Path(tmp) / h5ad_path.name
        tmp_json = Path(tmp) / json_path.name
        adata.write_h5ad(tmp_h5ad, compression="gzip")
        tmp_json.write_text(json.dumps(_jsonable(spec), indent=2) + "\n")
        os.replace(tmp_h5ad, h5ad_path)
        os.replace(tmp_json, json_path)
    say(f"wrote {h5ad_path} ({adata.n_obs} cells x {adata.n_vars} genes)")
    say(f"wrote {json_path} ({len(spec['tasks'])} tasks)")


def read_broad_map(path: Path | None) -> dict[str, str]:
    """Extra ``{cell type: broad group}`` entries from a JSON file."""
    if path is None:
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SCCBGMError(f"{path}: --broad-map must be a JSON object {{cell type: broad group}}.")
    return data


def base_parser(description: str, default_name: str) -> argparse.ArgumentParser:
    """Options shared by the three scripts."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--from", dest="from_path", type=Path, default=None,
                   help="prepare a local copy of the source instead of downloading it")
    p.add_argument("--out-dir", type=Path, default=Path("sccbgm_data"),
                   help="folder for the outputs (default: ./sccbgm_data)")
    p.add_argument("--name", default=default_name,
                   help=f"output stem: <out-dir>/<name>.h5ad and <name>_tasks.json (default: {default_name})")
    p.add_argument("--download-dir", type=Path, default=None,
                   help="where downloads are kept (default: <out-dir>/downloads)")
    p.add_argument("--skip-checksum", action="store_true",
                   help="accept a download whose checksum is unknown or different (prints its sha256)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--n-top-genes", type=int, default=3000, help="highly variable genes kept (default 3000)")
    p.add_argument("--hvg-flavor", choices=HVG_FLAVORS, default=DEFAULT_HVG_FLAVOR,
                   help="how genes are ranked (scanpy flavour, or 'mean' expression; default %(default)s)")
    p.add_argument("--min-task-cells", type=int, default=5,
                   help="a task (or task group) needs this many source and target cells (default 5)")
    p.add_argument("--progeny-weights", default=None,
                   help="PROGENy weights CSV (source,target,weight[,p_value]); default: local file or network")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """``<out-dir>/<name>.h5ad`` and ``<out-dir>/<name>_tasks.json``."""
    return args.out_dir / f"{args.name}.h5ad", args.out_dir / f"{args.name}_tasks.json"


def run_main(main: Any, argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``; print an :class:`SCCBGMError` as one line and return 1."""
    try:
        main(argv)
    except SCCBGMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
