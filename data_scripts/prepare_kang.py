"""Prepare Kang et al. 2018 (PBMCs with / without IFN-beta) as in paper appendix D.1.1.

Source: GEO GSE96583, in the processed form pertpy distributes (``pertpy.data.kang_2018``:
24,673 cells x 15,706 genes, raw counts in X, ``obs.label`` ctrl/stim, ``obs.cell_type`` with
8 types). ``--from`` also takes the scGen layout (``obs.condition``, short type names), such as
the shared 1,975-cell subset.

Steps: map columns and type names explicitly; drop megakaryocytes; keep counts in
``layers["counts"]``; median library-size normalisation + log1p; top highly variable genes; PCA
of the genes scaled to unit variance (clipped at 10); Harmony integration of ctrl / stim; Leiden
clustering within each broad type on the Harmony embedding -> ``obs["subtype"]`` (e.g.
``"CD4T 0"``, largest cluster first).

Concepts: ``cell_type`` (categorical, 7 types) and ``stim`` (binary). Tasks, for each chosen
broad type T: hold out T's stimulated cells, edit T's control cells with ``set={"stim": 1}``,
target = T's real stimulated cells, evaluated per subtype (``group_key="subtype"``); plus one
task per subtype s holding out only s's stimulated cells (the paper's per-subtype benchmark).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    DEFAULT_HVG_FLAVOR,
    Source,
    add_progeny,
    base_parser,
    download,
    integer_counts,
    local_provenance,
    make_task,
    map_labels,
    normalize_log,
    output_paths,
    pathway_concepts,
    refuse_overwrite,
    resolve_columns,
    run_main,
    say,
    select_hvg,
    tasks_document,
    write_outputs,
)

from sccbgm.errors import SCCBGMError

SOURCES = (
    Source(
        name="pertpy kang_2018 (GSE96583, processed)",
        url="https://figshare.com/ndownloader/files/34464122",
        filename="kang_2018.h5ad",
        sha256="e6a5adac64dcdeb36eaba27db49b63e0c64bb0ed4a64c6705971506b41c39830",
        note=(
            "URL from pertpy.data.kang_2018. The sha256 is the one an independent public project "
            "records for this figshare file (github.com/Numi2/numiVivo, run_kang.py; 24,673 x 15,706); "
            "it could not be re-computed here (no network when this script was written). If the "
            "release changed, check the file and re-run with --skip-checksum."
        ),
    ),
)
# Known obs layouts of Kang releases: role -> column.
LAYOUTS = (
    ("scgen (obs.condition, obs.cell_type)", {"condition": "condition", "cell_type": "cell_type"}),
    ("pertpy kang_2018 (obs.label, obs.cell_type)", {"condition": "label", "cell_type": "cell_type"}),
)
CONDITIONS = {"ctrl": "ctrl", "stim": "stim", "control": "ctrl", "stimulated": "stim"}
CELL_TYPES = {
    "B": "B", "B cells": "B",
    "CD14+Mono": "CD14+Mono", "CD14+ Monocytes": "CD14+Mono",
    "CD4T": "CD4T", "CD4 T cells": "CD4T",
    "CD8T": "CD8T", "CD8 T cells": "CD8T",
    "Dendritic": "Dendritic", "Dendritic cells": "Dendritic",
    "FCGR3A+Mono": "FCGR3A+Mono", "FCGR3A+ Monocytes": "FCGR3A+Mono",
    "NK": "NK", "NK cells": "NK",
    "Megakaryocytes": "Megakaryocytes", "Mk": "Megakaryocytes",
}
DROPPED_TYPES = ("Megakaryocytes",)
DEFAULT_TASK_TYPES = ("CD14+Mono", "B", "CD4T", "FCGR3A+Mono")


def standardise(adata: Any, condition_key: str | None = None, cell_type_key: str | None = None) -> Any:
    """Canonical ``obs.condition`` (ctrl/stim), ``obs.cell_type`` (short names), ``obs.stim``; drop Mk."""
    if condition_key or cell_type_key:
        layout = "given on the command line"
        cols = {"condition": condition_key or "condition", "cell_type": cell_type_key or "cell_type"}
        missing = [c for c in cols.values() if c not in adata.obs.columns]
        if missing:
            raise SCCBGMError(f"obs has no column(s) {missing}; obs columns are {list(adata.obs.columns)}.")
    else:
        layout, cols = resolve_columns(adata.obs, LAYOUTS, "Kang input")
    say(f"obs layout: {layout} -> condition={cols['condition']!r}, cell_type={cols['cell_type']!r}")
    condition = map_labels(adata.obs[cols["condition"]], CONDITIONS, "condition")
    cell_type = map_labels(adata.obs[cols["cell_type"]], CELL_TYPES, "cell type")
    original = adata.obs[cols["cell_type"]].astype(str)
    keep = ~cell_type.isin(DROPPED_TYPES).to_numpy()
    say(f"cells: {adata.n_obs} in; dropped {int((~keep).sum())} megakaryocytes")
    adata = adata[keep].copy()
    adata.obs["cell_type_original"] = pd.Categorical(original[keep].to_numpy())
    adata.obs["condition"] = pd.Categorical(condition[keep].to_numpy(), categories=["ctrl", "stim"])
    types = sorted(set(cell_type[keep]))
    adata.obs["cell_type"] = pd.Categorical(cell_type[keep].to_numpy(), categories=types)
    adata.obs["stim"] = (adata.obs["condition"] == "stim").to_numpy().astype(np.int64)
    if "label" in adata.obs.columns and cols["condition"] == "label":
        adata.obs = adata.obs.drop(columns="label")
    return adata


def harmony_embedding(adata: Any, n_pcs: int, seed: int) -> None:
    """PCA of the scaled log-normalised genes, then Harmony over ctrl / stim -> ``obsm['X_pca_harmony']``."""
    import harmonypy
    import scanpy as sc

    n_comps = int(min(n_pcs, adata.n_obs - 1, adata.n_vars - 1))
    scaled = sc.pp.scale(adata.X, max_value=10, copy=True)
    adata.obsm["X_pca"] = sc.pp.pca(scaled, n_comps=n_comps, random_state=seed)
    ho = harmonypy.run_harmony(
        adata.obsm["X_pca"], adata.obs[["condition"]], ["condition"], random_state=seed, verbose=False
    )
    z = np.asarray(ho.Z_corr)
    adata.obsm["X_pca_harmony"] = z if z.shape[0] == adata.n_obs else z.T
    say(f"Harmony integration of ctrl/stim on {n_comps} principal components")


def leiden_subtypes(adata: Any, resolution: float, n_neighbors: int, seed: int) -> pd.DataFrame:
    """Leiden clusters within each broad type on the Harmony embedding -> ``obs['subtype']``."""
    import scanpy as sc

    labels = pd.Series("", index=adata.obs_names, dtype=object)
    for ct in adata.obs["cell_type"].cat.categories:
        mask = (adata.obs["cell_type"] == ct).to_numpy()
        sub = adata[mask].copy()
        if sub.n_obs < 3:
            labels[mask] = f"{ct} 0"
            continue
        sc.pp.neighbors(sub, n_neighbors=min(n_neighbors, sub.n_obs - 1), use_rep="X_pca_harmony",
                        random_state=seed)
        sc.tl.leiden(sub, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed,
                     key_added="leiden")
        sizes = sub.obs["leiden"].value_counts()
        rank = {c: i for i, c in enumerate(sorted(sizes.index, key=lambda c: (-sizes[c], int(c))))}
        labels[mask] = [f"{ct} {rank[c]}" for c in sub.obs["leiden"]]
    order = sorted(labels.unique(), key=lambda s: (s.rsplit(" ", 1)[0], int(s.rsplit(" ", 1)[1])))
    adata.obs["subtype"] = pd.Categorical(labels.to_numpy(), categories=order)
    table = pd.crosstab(adata.obs["subtype"], adata.obs["condition"])
    table.insert(0, "cell_type", [s.rsplit(" ", 1)[0] for s in table.index])
    return table


def build_tasks(obs: pd.DataFrame, task_types: Sequence[str], min_cells: int) -> list[dict[str, Any]]:
    """Per broad type (grouped by subtype) and per subtype: ctrl -> stim with T's stim cells held out."""
    tasks = []
    for ct in task_types:
        stim = {"cell_type": ct, "condition": "stim"}
        task = make_task(
            f"kang_{ct}_stim", "cell_type",
            f"IFN-beta response of {ct}: all stimulated {ct} cells held out; control {ct} cells "
            "edited to stim=1; compared with the real stimulated cells, overall and per subtype.",
            holdout=stim, source={"cell_type": ct, "condition": "ctrl"}, set_={"stim": 1},
            target=stim, group_key="subtype", obs=obs, min_cells=min_cells,
        )
        if task:
            tasks.append(task)
    for ct in task_types:
        subtypes = [s for s in obs["subtype"].cat.categories if s.rsplit(" ", 1)[0] == ct]
        if len(subtypes) < 2:
            continue
        for s in subtypes:
            stim = {"subtype": s, "condition": "stim"}
            task = make_task(
                f"kang_{s.replace(' ', '_')}_stim", "subtype",
                f"IFN-beta response of subtype {s}: only its stimulated cells held out; its control "
                "cells edited to stim=1 and compared with its real stimulated cells.",
                holdout=stim, source={"subtype": s, "condition": "ctrl"}, set_={"stim": 1},
                target=stim, obs=obs, min_cells=min_cells,
            )
            if task:
                tasks.append(task)
    return tasks


def prepare(
    adata: Any,
    *,
    n_top_genes: int = 3000,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
    n_pcs: int = 50,
    leiden_resolution: float = 0.3,
    n_neighbors: int = 15,
    task_types: Sequence[str] | None = DEFAULT_TASK_TYPES,
    min_task_cells: int = 5,
    progeny: bool = False,
    progeny_weights: str | None = None,
    condition_key: str | None = None,
    cell_type_key: str | None = None,
    seed: int = 0,
    source: dict[str, Any] | None = None,
    h5ad_name: str = "kang2018.h5ad",
) -> tuple[Any, dict[str, Any]]:
    """The prepared AnnData and its tasks document (no file is written); ``task_types=None``: all."""
    adata = standardise(adata, condition_key, cell_type_key)
    adata.X = integer_counts(adata, "Kang input")
    for key in list(adata.layers):
        del adata.layers[key]
    counts_by = pd.crosstab(adata.obs["cell_type"], adata.obs["condition"])
    say("cells per type (ctrl/stim): " + ", ".join(f"{t} {r['ctrl']}/{r['stim']}" for t, r in counts_by.iterrows()))
    norm = normalize_log(adata)
    say(f"normalised to the median library size {norm['target_sum']:.0f}, log1p")
    pathway_names = add_progeny(adata, "human", progeny_weights) if progeny else []
    n_genes_in = adata.n_vars
    adata, hvg = select_hvg(adata, n_top_genes, hvg_flavor)
    say(f"genes: {n_genes_in} in, {hvg['n_genes_detected']} detected, {hvg['n_hvg']} highly variable kept")
    harmony_embedding(adata, n_pcs, seed)
    table = leiden_subtypes(adata, leiden_resolution, n_neighbors, seed)
    say(f"Leiden subtypes (resolution {leiden_resolution}): {len(table)} in {table['cell_type'].nunique()} types")
    for s, row in table.iterrows():
        say(f"  {s:<16} ctrl {row['ctrl']:>5}  stim {row['stim']:>5}")
    if task_types is None:
        task_types = list(adata.obs["cell_type"].cat.categories)
    unknown = [t for t in task_types if t not in adata.obs["cell_type"].cat.categories]
    if unknown:
        raise SCCBGMError(f"--task-types {unknown} not in the data; types: {list(adata.obs['cell_type'].cat.categories)}.")
    tasks = build_tasks(adata.obs, task_types, min_task_cells)
    settings = {
        "n_top_genes": n_top_genes, "n_pcs": n_pcs, "leiden_resolution": leiden_resolution,
        "n_neighbors": n_neighbors, "seed": seed, "min_task_cells": min_task_cells, **norm, **hvg,
    }
    adata.uns["preparation"] = {"script": "data_scripts/prepare_kang.py", "paper": "appendix D.1.1", **settings}
    adata.uns["source"] = source or {}
    adata.uns["subtype_table"] = table.reset_index().astype({"subtype": str}).to_dict(orient="list")
    concepts = [
        {"name": "cell_type", "kind": "categorical", "categories": list(adata.obs["cell_type"].cat.categories),
         "description": "broad cell type (Kang et al. annotation; megakaryocytes removed)"},
        {"name": "stim", "kind": "binary", "description": "1 = IFN-beta stimulated, 0 = control"},
    ] + pathway_concepts(pathway_names)
    spec = tasks_document(
        "kang2018", h5ad_name,
        "Kang et al. 2018 PBMCs, control vs IFN-beta (GSE96583), prepared as in appendix D.1.1; "
        "subtypes from Leiden clustering per broad type after Harmony integration of the conditions.",
        concepts, tasks, {**(source or {}), "settings": settings},
    )
    say(f"tasks: {len(tasks)} ({', '.join(t['name'] for t in tasks)})")
    return adata, spec


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], "kang2018")
    p.add_argument("--leiden-resolution", type=float, default=0.3, help="Leiden resolution per type (default 0.3)")
    p.add_argument("--n-neighbors", type=int, default=15, help="neighbours for the Leiden graph (default 15)")
    p.add_argument("--n-pcs", type=int, default=50, help="principal components for Harmony (default 50)")
    p.add_argument("--task-types", default=",".join(DEFAULT_TASK_TYPES),
                   help="comma-separated broad types to make tasks for, or 'all' (default: %(default)s)")
    p.add_argument("--condition-key", default=None, help="obs column with ctrl/stim (default: detected)")
    p.add_argument("--cell-type-key", default=None, help="obs column with the cell type (default: detected)")
    p.add_argument("--progeny", action=argparse.BooleanOptionalAction, default=False,
                   help="also add PROGENy pathway concepts (human weights; default off)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    import anndata as ad

    args = parser().parse_args(argv)
    h5ad_path, json_path = output_paths(args)
    refuse_overwrite([h5ad_path, json_path], args.overwrite)
    if args.from_path is not None:
        if not args.from_path.is_file():
            raise SCCBGMError(f"--from {args.from_path}: no such file.")
        path, source = args.from_path, local_provenance(args.from_path, SOURCES)
    else:
        path, source = download(SOURCES[0], args.download_dir or args.out_dir / "downloads",
                                skip_checksum=args.skip_checksum)
    say(f"reading {path}")
    adata = ad.read_h5ad(path)
    task_types = None if args.task_types == "all" else [t.strip() for t in args.task_types.split(",") if t.strip()]
    adata, spec = prepare(
        adata, n_top_genes=args.n_top_genes, hvg_flavor=args.hvg_flavor, n_pcs=args.n_pcs, leiden_resolution=args.leiden_resolution,
        n_neighbors=args.n_neighbors, task_types=task_types, min_task_cells=args.min_task_cells,
        progeny=args.progeny, progeny_weights=args.progeny_weights, condition_key=args.condition_key,
        cell_type_key=args.cell_type_key, seed=args.seed, source=source, h5ad_name=h5ad_path.name,
    )
    write_outputs(adata, spec, h5ad_path, json_path, args.overwrite)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
