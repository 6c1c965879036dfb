"""Prepare the Cui et al. 2024 Immune Dictionary (cytokines in mouse lymph nodes) as in appendix D.1.2.

Source: the per-cell-type Seurat objects the Immune Dictionary distributes
(``https://www.immune-dictionary.org/static/downloadableData/ligands-seurat-<cell type>.RDS``;
raw counts, ``meta.data`` columns ``celltype``, ``sample`` = cytokine or ``PBS``, ``rep``); raw
reads are GEO GSE202186. The ``.RDS`` files are turned into plain files by
``cui_rds_to_mtx.R`` (needs R with SeuratObject). ``--from`` takes a folder of those ``.RDS``
files or one ``.h5ad`` holding counts with the same obs columns (or the SCP2554 layout ``cyt`` /
``celltype``).

Steps: counts to ``layers["counts"]``; median library-size normalisation + log1p; top highly
variable genes. The granular types are pooled into seven broad groups (``broad_type``): Stromal
cells, Granulocytes, Monocyte-Macrophages, Dendritic cells, Innate lymphoid cells, B cells, T cells.

Concepts: ``broad_type`` (categorical) and one binary column per cytokine
(``cytokine_<name>``, 1 for cells injected with it; PBS controls are 0 everywhere). Tasks: the
seven cell-type / cytokine pairs of D.1.2; each holds out that type's cells given that cytokine
and edits the type's PBS cells with ``set={"cytokine_<name>": 1}``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    normalize_log,
    output_paths,
    pathway_concepts,
    read_broad_map,
    refuse_overwrite,
    resolve_columns,
    run_main,
    say,
    select_hvg,
    tasks_document,
    write_outputs,
)

from sccbgm.errors import SCCBGMError

BASE_URL = "https://www.immune-dictionary.org/static/downloadableData/ligands-seurat-{}.RDS"
# The cell types with a downloadable Seurat object (as listed by independent public download scripts).
CELL_TYPES = (
    "B_cell", "cDC1", "cDC2", "Langerhans", "Macrophage", "MigDC", "Monocyte", "Neutrophil",
    "NK_cell", "pDC", "T_cell_CD4", "T_cell_CD8", "T_cell_gd", "Treg",
)
# Checksums: only the MD5 of the NK_cell object is on public record (a third-party test fixture,
# not verified here); the others are unknown, so their download needs --skip-checksum.
KNOWN_MD5 = {"NK_cell": "f4eabfa734a61ad839879fd84aa7a8e9"}
SOURCES = tuple(
    Source(
        name=f"Immune Dictionary ligands-seurat-{ct}",
        url=BASE_URL.format(ct),
        filename=f"ligands-seurat-{ct}.RDS",
        md5=KNOWN_MD5.get(ct),
        note="no published checksum" if ct not in KNOWN_MD5 else "md5 from a third-party record",
    )
    for ct in CELL_TYPES
)
LAYOUTS = (
    ("Immune Dictionary Seurat meta.data", {"cell_type": "celltype", "cytokine": "sample"}),
    ("Single Cell Portal SCP2554", {"cell_type": "celltype", "cytokine": "cyt"}),
    ("generic", {"cell_type": "cell_type", "cytokine": "cytokine"}),
)
CONTROL = "PBS"
BROAD = {
    "B_cell": "B cells", "Plasma_cell": "B cells",
    "T_cell_CD4": "T cells", "T_cell_CD8": "T cells", "T_cell_gd": "T cells", "Treg": "T cells",
    "NK_cell": "Innate lymphoid cells", "ILC": "Innate lymphoid cells",
    "cDC1": "Dendritic cells", "cDC2": "Dendritic cells", "MigDC": "Dendritic cells",
    "Langerhans": "Dendritic cells", "pDC": "Dendritic cells",
    "Macrophage": "Monocyte-Macrophages", "Monocyte": "Monocyte-Macrophages",
    "Neutrophil": "Granulocytes", "Basophil": "Granulocytes", "Eosinophil": "Granulocytes",
    "Mast_cell": "Granulocytes",
    "Fibroblast": "Stromal cells", "Endothelial": "Stromal cells", "LEC": "Stromal cells",
    "BEC": "Stromal cells", "FRC": "Stromal cells", "Stromal": "Stromal cells",
}
TASK_PAIRS = (
    ("T_cell_gd", "IL17E"), ("T_cell_CD4", "TGF-beta-1"), ("T_cell_CD8", "TNFa"),
    ("cDC2", "IFNa1"), ("Langerhans", "IFNg"), ("Macrophage", "M-CSF"), ("NK_cell", "IL15"),
)


def concept_column(cytokine: str) -> str:
    """Concept column name of a cytokine: ``cytokine_`` + the name with non-alphanumerics as ``_``."""
    return "cytokine_" + re.sub(r"[^0-9A-Za-z]+", "_", cytokine).strip("_")


def convert_rds(rds: Path, out_dir: Path) -> Path:
    """Run ``cui_rds_to_mtx.R`` on one Seurat object (skipped when already converted)."""
    target = out_dir / rds.stem
    if (target / "metadata.csv").is_file():
        return target
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise SCCBGMError("Rscript not found: reading the Immune Dictionary .RDS files needs R with SeuratObject.")
    script = Path(__file__).with_name("cui_rds_to_mtx.R")
    result = subprocess.run([rscript, str(script), str(rds), str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SCCBGMError(f"converting {rds.name} failed:\n{result.stderr.strip()}")
    say(result.stdout.strip())
    return target


def read_converted(folder: Path) -> Any:
    """AnnData (cells x genes, counts) from a folder written by ``cui_rds_to_mtx.R``."""
    import anndata as ad
    import scipy.io
    import scipy.sparse as sp

    matrix = sp.csr_matrix(scipy.io.mmread(folder / "matrix.mtx").T, dtype=np.float32)
    genes = (folder / "genes.txt").read_text().splitlines()
    barcodes = (folder / "barcodes.txt").read_text().splitlines()
    meta = pd.read_csv(folder / "metadata.csv", index_col=0)
    meta.index = meta.index.astype(str)
    if matrix.shape != (len(barcodes), len(genes)):
        raise SCCBGMError(f"{folder}: matrix {matrix.shape} does not match {len(barcodes)} cells x {len(genes)} genes.")
    return ad.AnnData(X=matrix, obs=meta.loc[barcodes], var=pd.DataFrame(index=genes))


def rds_files(folder: Path) -> list[Path]:
    """The Seurat objects of a folder (``ligands-seurat-*.RDS`` first, else any ``.RDS``)."""
    files = sorted(folder.glob("ligands-seurat-*.RDS")) or sorted(folder.glob("*.[Rr][Dd][Ss]"))
    if not files:
        raise SCCBGMError(f"{folder}: no .RDS files (expected ligands-seurat-<cell type>.RDS).")
    return files


def load_rds(files: Sequence[Path], work_dir: Path) -> Any:
    """Concatenate Immune Dictionary Seurat objects (converted into ``work_dir``); genes outer-joined."""
    import anndata as ad

    parts = [read_converted(convert_rds(f, work_dir)) for f in files]
    adata = ad.concat(parts, join="outer", fill_value=0, index_unique=None) if len(parts) > 1 else parts[0]
    adata.obs_names_make_unique()
    return adata


def standardise(adata: Any, broad_extra: Mapping[str, str] | None = None) -> Any:
    """Canonical ``obs.cell_type``, ``obs.cytokine``, ``obs.broad_type`` (explicit column map)."""
    layout, cols = resolve_columns(adata.obs, LAYOUTS, "Cui input")
    say(f"obs layout: {layout} -> cell_type={cols['cell_type']!r}, cytokine={cols['cytokine']!r}")
    cell_type = adata.obs[cols["cell_type"]].astype(str)
    cytokine = adata.obs[cols["cytokine"]].astype(str)
    if CONTROL not in set(cytokine):
        raise SCCBGMError(f"no {CONTROL} control cells in obs[{cols['cytokine']!r}].")
    broad_map = {**BROAD, **(broad_extra or {})}
    unknown = sorted(set(cell_type) - set(broad_map))
    if unknown:
        raise SCCBGMError(
            f"cell type(s) {unknown} have no broad group; pass --broad-map FILE.json mapping them to one of "
            f"{sorted(set(BROAD.values()))}."
        )
    obs = adata.obs.drop(columns=[c for c in ("cell_type", "cytokine") if c in adata.obs.columns])
    obs["cell_type"] = pd.Categorical(cell_type.to_numpy())
    obs["cytokine"] = pd.Categorical(cytokine.to_numpy())
    obs["broad_type"] = pd.Categorical(cell_type.map(broad_map).to_numpy())
    adata.obs = obs
    return adata


def add_cytokine_concepts(adata: Any) -> dict[str, str]:
    """One binary column per cytokine (PBS excluded); returns {column: cytokine}."""
    columns: dict[str, str] = {}
    for cyt in sorted(adata.obs["cytokine"].cat.categories):
        if cyt == CONTROL:
            continue
        col = concept_column(cyt)
        if col in columns:
            raise SCCBGMError(f"cytokines {columns[col]!r} and {cyt!r} map to the same column {col!r}.")
        columns[col] = cyt
    onehot = {col: (adata.obs["cytokine"] == cyt).to_numpy().astype(np.int64) for col, cyt in columns.items()}
    adata.obs = pd.concat([adata.obs, pd.DataFrame(onehot, index=adata.obs_names)], axis=1)
    return columns


def build_tasks(obs: pd.DataFrame, pairs: Sequence[tuple[str, str]], min_cells: int) -> list[dict[str, Any]]:
    """The D.1.2 cell-type / cytokine tasks present in the data."""
    tasks = []
    for ct, cyt in pairs:
        if cyt not in set(obs["cytokine"].cat.categories) or ct not in set(obs["cell_type"].cat.categories):
            say(f"task {ct} / {cyt} skipped: not in the data")
            continue
        held = {"cell_type": ct, "cytokine": cyt}
        task = make_task(
            f"cui_{ct}_{concept_column(cyt)[len('cytokine_'):]}", "cytokine",
            f"Response of {ct} to {cyt}: {ct} cells given {cyt} held out; {ct} PBS cells edited to "
            f"{concept_column(cyt)}=1 and compared with the real {cyt}-treated {ct} cells.",
            holdout=held, source={"cell_type": ct, "cytokine": CONTROL}, set_={concept_column(cyt): 1},
            target=held, obs=obs, min_cells=min_cells,
        )
        if task:
            tasks.append(task)
    return tasks


def prepare(
    adata: Any,
    *,
    n_top_genes: int = 3000,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
    min_task_cells: int = 5,
    pairs: Sequence[tuple[str, str]] = TASK_PAIRS,
    broad_extra: Mapping[str, str] | None = None,
    progeny: bool = False,
    progeny_weights: str | None = None,
    seed: int = 0,
    source: dict[str, Any] | None = None,
    h5ad_name: str = "cui2024.h5ad",
) -> tuple[Any, dict[str, Any]]:
    """The prepared AnnData and its tasks document (no file is written)."""
    adata = standardise(adata, broad_extra)
    adata.X = integer_counts(adata, "Cui input")
    for key in list(adata.layers):
        del adata.layers[key]
    say(f"cells: {adata.n_obs}; {adata.obs['cell_type'].nunique()} cell types, "
        f"{adata.obs['cytokine'].nunique() - 1} cytokines + {CONTROL}")
    for broad, n in adata.obs["broad_type"].value_counts().items():
        say(f"  {broad:<24} {n:>7} cells")
    norm = normalize_log(adata)
    say(f"normalised to the median library size {norm['target_sum']:.0f}, log1p")
    pathway_names = add_progeny(adata, "mouse", progeny_weights) if progeny else []
    n_genes_in = adata.n_vars
    adata, hvg = select_hvg(adata, n_top_genes, hvg_flavor)
    say(f"genes: {n_genes_in} in, {hvg['n_genes_detected']} detected, {hvg['n_hvg']} highly variable kept")
    cytokine_columns = add_cytokine_concepts(adata)
    tasks = build_tasks(adata.obs, pairs, min_task_cells)
    settings = {"n_top_genes": n_top_genes, "seed": seed, "min_task_cells": min_task_cells, **norm, **hvg}
    adata.uns["preparation"] = {"script": "data_scripts/prepare_cui.py", "paper": "appendix D.1.2", **settings}
    adata.uns["source"] = source or {}
    concepts = [
        {"name": "broad_type", "kind": "categorical", "categories": list(adata.obs["broad_type"].cat.categories),
         "description": "broad immune group pooled from the Immune Dictionary cell types"},
    ] + [
        {"name": col, "kind": "binary", "label": cyt, "description": f"1 = injected with {cyt}, 0 otherwise"}
        for col, cyt in cytokine_columns.items()
    ] + pathway_concepts(pathway_names)
    spec = tasks_document(
        "cui2024", h5ad_name,
        "Cui et al. 2024 Immune Dictionary (mouse lymph nodes, 86 cytokines vs PBS), prepared as in "
        "appendix D.1.2; granular cell types in obs.cell_type, concepts = broad group + cytokines.",
        concepts, tasks, {**(source or {}), "settings": settings},
    )
    say(f"tasks: {len(tasks)} ({', '.join(t['name'] for t in tasks)})")
    return adata, spec


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], "cui2024")
    p.add_argument("--cell-types", default=",".join(CELL_TYPES),
                   help="comma-separated Immune Dictionary cell types to download (default: all 14)")
    p.add_argument("--broad-map", type=Path, default=None,
                   help="JSON {cell type: broad group} for cell types the script does not know")
    p.add_argument("--progeny", action=argparse.BooleanOptionalAction, default=False,
                   help="also add PROGENy pathway concepts (mouse weights; default off)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    import anndata as ad

    args = parser().parse_args(argv)
    h5ad_path, json_path = output_paths(args)
    refuse_overwrite([h5ad_path, json_path], args.overwrite)
    work = args.download_dir or args.out_dir / "downloads"
    if args.from_path is not None:
        src = args.from_path
        if src.is_file():
            source = local_provenance(src, SOURCES)
            adata = ad.read_h5ad(src)
        elif src.is_dir():
            source = {"folder": str(src), "verified": False}
            adata = load_rds(rds_files(src), work / "converted")
        else:
            raise SCCBGMError(f"--from {src}: no such file or folder.")
    else:
        wanted = [c.strip() for c in args.cell_types.split(",") if c.strip()]
        by_type = {s.filename: s for s in SOURCES}
        files = []
        for ct in wanted:
            src_ = by_type.get(f"ligands-seurat-{ct}.RDS") or Source(
                name=f"Immune Dictionary ligands-seurat-{ct}", url=BASE_URL.format(ct),
                filename=f"ligands-seurat-{ct}.RDS")
            files.append(download(src_, work, skip_checksum=args.skip_checksum))
        source = {"files": [info for _, info in files]}
        adata = load_rds([path for path, _ in files], work / "converted")
    adata, spec = prepare(
        adata, n_top_genes=args.n_top_genes, hvg_flavor=args.hvg_flavor, min_task_cells=args.min_task_cells,
        broad_extra=read_broad_map(args.broad_map), progeny=args.progeny,
        progeny_weights=args.progeny_weights, seed=args.seed, source=source, h5ad_name=h5ad_path.name,
    )
    write_outputs(adata, spec, h5ad_path, json_path, args.overwrite)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
