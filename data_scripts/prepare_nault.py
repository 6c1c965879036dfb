"""Prepare Nault et al. 2023 (mouse liver, TCDD dose response) as in appendix D.1.3 and D.10.

Source: 131,613 nuclei from livers of mice gavaged with 0-30 ug/kg TCDD (GEO GSE184506), whose
annotated counts are the Single Cell Portal study SCP1871. SCP downloads need a (free) sign-in,
so this script cannot fetch them: download the study's files by hand and pass ``--from`` either
the folder (Matrix Market counts + barcodes + genes/features + the SCP metadata file with
``cell_type__ontology_label`` and ``dose``) or one ``.h5ad`` with those obs columns. The scVIDR
release ``nault2021_multiDose.h5ad`` (obs ``celltype`` / ``Dose``) is read as well.

Steps: counts to ``layers["counts"]``; median library-size normalisation + log1p; PROGENy
pathway concepts on all genes (mouse weights; ``--no-progeny`` to skip); top highly variable genes.

Concepts: ``broad_type`` (hard; Hepatocyte, Immune Cell, Cholangiocyte, Stromal Cell) and
``dose`` (soft) = (log1p(d) - log1p(d_min)) / (log1p(d_max) - log1p(d_min)) in [0, 1], d in ug/kg
(``obs.dose_ug_kg``); plus ``progeny_<pathway>`` in [0, 1]. Tasks, per cell type (``cell_type``):
hold out its 3 and 10 ug/kg cells, edit its 1 ug/kg cells to the scaled dose 3 (or 10), target =
its real 3 (or 10) ug/kg cells. Case study (D.10): hold out responder stellate cells (10 and
30 ug/kg), edit control stellate cells with dose -> max and TGFb, PI3K, p53 up / Trail, VEGF down
(set to the responders' mean), target = the responders.
"""

from __future__ import annotations

import argparse
import gzip
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    DEFAULT_HVG_FLAVOR,
    add_progeny,
    base_parser,
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

STUDY_URL = (
    "https://singlecell.broadinstitute.org/single_cell/study/SCP1871/dose-response-single-nuclei-rna-"
    "sequencing-of-livers-from-male-mice-treated-with-2-3-7-8-tetrachlorodibenzo-p-dioxin-tcdd"
)
GEO_URL = "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE184506"
LAYOUTS = (
    ("Single Cell Portal SCP1871", {"cell_type": "cell_type__ontology_label", "dose": "dose"}),
    ("scVIDR nault2021_multiDose", {"cell_type": "celltype", "dose": "Dose"}),
    ("generic", {"cell_type": "cell_type", "dose": "dose"}),
)
BROAD = {
    "centrilobular region hepatocyte": "Hepatocyte", "periportal region hepatocyte": "Hepatocyte",
    "B cell": "Immune Cell", "T cell": "Immune Cell", "liver dendritic cell": "Immune Cell",
    "macrophage": "Immune Cell", "neutrophil": "Immune Cell", "cholangiocyte": "Cholangiocyte",
    "endothelial cell of hepatic sinusoid": "Stromal Cell", "hepatic portal fibroblast": "Stromal Cell",
    "hepatic stellate cell": "Stromal Cell",
    "Hepatocytes - central": "Hepatocyte", "Hepatocytes - portal": "Hepatocyte",
    "B Cells": "Immune Cell", "T Cells": "Immune Cell", "Macrophages": "Immune Cell",
    "Kupffer Cells": "Immune Cell", "Neutrophils": "Immune Cell", "pDC": "Immune Cell",
    "Dendritic Cells": "Immune Cell", "Cholangiocytes": "Cholangiocyte",
    "Endothelial Cells": "Stromal Cell", "Portal Fibroblasts": "Stromal Cell", "Stellate Cells": "Stromal Cell",
}
HELD_OUT_DOSES = (3.0, 10.0)
SOURCE_DOSE = 1.0
RESPONDER_DOSES = (10.0, 30.0)
PATHWAYS_UP = ("TGFb", "PI3K", "p53")
PATHWAYS_DOWN = ("Trail", "VEGF")


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _find(folder: Path, patterns: Sequence[str], what: str) -> Path:
    for pattern in patterns:
        hits = sorted(p for p in folder.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    raise SCCBGMError(f"{folder}: no {what} file (looked for {', '.join(patterns)}).")


def read_scp_metadata(path: Path) -> pd.DataFrame:
    """A Single Cell Portal metadata file (``NAME`` header row, then a ``TYPE`` row)."""
    with _open_text(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        second = fh.readline().rstrip("\n").split("\t")
    skip = [1] if second and second[0].upper() == "TYPE" else []
    meta = pd.read_csv(path, sep="\t", skiprows=skip, dtype=str)
    if meta.columns[0].upper() != "NAME":
        raise SCCBGMError(f"{path}: not a Single Cell Portal metadata file (first column {header[0]!r}, expected NAME).")
    return meta.set_index(meta.columns[0])


def read_scp_folder(folder: Path) -> Any:
    """Counts + metadata from a folder of Single Cell Portal files (Matrix Market layout)."""
    import anndata as ad
    import scipy.io
    import scipy.sparse as sp

    mtx = _find(folder, ["*.mtx.gz", "*.mtx"], "Matrix Market (.mtx)")
    barcodes_path = _find(folder, ["*barcodes*.tsv*", "*barcodes*.txt*", "*barcodes*"], "barcodes")
    genes_path = _find(folder, ["*features*.tsv*", "*genes*.tsv*", "*features*", "*genes*"], "genes/features")
    meta_path = None
    for cand in sorted(folder.iterdir()):
        if cand.is_file() and cand not in (mtx, barcodes_path, genes_path) and cand.suffix in (".txt", ".tsv", ".gz"):
            with _open_text(cand) as fh:
                if fh.readline().upper().startswith("NAME"):
                    meta_path = cand
                    break
    if meta_path is None:
        raise SCCBGMError(f"{folder}: no Single Cell Portal metadata file (a table whose first column is NAME).")
    with _open_text(barcodes_path) as fh:
        barcodes = [line.rstrip("\n").split("\t")[0] for line in fh if line.strip()]
    with _open_text(genes_path) as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    genes = [r[1] if len(r) > 1 else r[0] for r in rows]
    matrix = scipy.io.mmread(str(mtx))
    if matrix.shape == (len(genes), len(barcodes)):
        matrix = matrix.T
    elif matrix.shape != (len(barcodes), len(genes)):
        raise SCCBGMError(f"{mtx}: shape {matrix.shape} fits neither {len(genes)} genes nor {len(barcodes)} cells.")
    meta = read_scp_metadata(meta_path)
    missing = [b for b in barcodes if b not in meta.index]
    if missing:
        raise SCCBGMError(f"{meta_path}: {len(missing)} barcodes have no metadata (e.g. {missing[:3]}).")
    adata = ad.AnnData(X=sp.csr_matrix(matrix, dtype=np.float32), obs=meta.loc[barcodes],
                       var=pd.DataFrame(index=genes))
    adata.var_names_make_unique()
    say(f"read {folder}: {mtx.name}, {barcodes_path.name}, {genes_path.name}, {meta_path.name}")
    return adata


def scale_dose(dose: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(log1p(d) - log1p(lo)) / (log1p(hi) - log1p(lo)): log-scaled dose in [0, 1]."""
    if hi <= lo:
        raise SCCBGMError("all cells have the same dose; a dose concept needs at least two doses.")
    return (np.log1p(dose) - np.log1p(lo)) / (np.log1p(hi) - np.log1p(lo))


def standardise(adata: Any, broad_extra: Mapping[str, str] | None = None) -> Any:
    """Canonical ``obs.cell_type``, ``obs.broad_type``, ``obs.dose_ug_kg`` and ``obs.dose`` in [0, 1]."""
    layout, cols = resolve_columns(adata.obs, LAYOUTS, "Nault input")
    say(f"obs layout: {layout} -> cell_type={cols['cell_type']!r}, dose={cols['dose']!r}")
    cell_type = adata.obs[cols["cell_type"]].astype(str)
    dose = pd.to_numeric(adata.obs[cols["dose"]].astype(str).str.strip(), errors="coerce")
    if dose.isna().any():
        bad = sorted(set(adata.obs[cols["dose"]].astype(str)[dose.isna()]))[:5]
        raise SCCBGMError(f"obs[{cols['dose']!r}] has non-numeric doses, e.g. {bad}.")
    broad_map = {**BROAD, **(broad_extra or {})}
    unknown = sorted(set(cell_type) - set(broad_map))
    if unknown:
        raise SCCBGMError(
            f"cell type(s) {unknown} have no broad group; pass --broad-map FILE.json mapping them to one of "
            f"{sorted(set(BROAD.values()))}."
        )
    obs = adata.obs.drop(columns=[c for c in ("cell_type", "dose") if c in adata.obs.columns])
    obs["cell_type"] = pd.Categorical(cell_type.to_numpy())
    obs["broad_type"] = pd.Categorical(cell_type.map(broad_map).to_numpy())
    d = dose.to_numpy(dtype=float)
    obs["dose_ug_kg"] = d
    obs["dose"] = scale_dose(d, float(d.min()), float(d.max())).astype(np.float32)
    adata.obs = obs
    return adata


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def _dose_label(d: float) -> str:
    return f"{d:g}"


def build_dose_tasks(obs: pd.DataFrame, min_cells: int) -> list[dict[str, Any]]:
    """Per cell type: 1 ug/kg cells edited to 3 and to 10 ug/kg, with 3 and 10 held out."""
    lo, hi = float(obs["dose_ug_kg"].min()), float(obs["dose_ug_kg"].max())
    tasks = []
    for ct in obs["cell_type"].cat.categories:
        for d in HELD_OUT_DOSES:
            value = float(scale_dose(np.array([d]), lo, hi)[0])
            task = make_task(
                f"nault_{_safe(ct)}_dose{_dose_label(d)}", "dose",
                f"TCDD dose response of {ct}: its {', '.join(map(_dose_label, HELD_OUT_DOSES))} ug/kg cells "
                f"held out; its {_dose_label(SOURCE_DOSE)} ug/kg cells edited to dose={value:.4f} "
                f"({_dose_label(d)} ug/kg) and compared with its real {_dose_label(d)} ug/kg cells.",
                holdout={"cell_type": ct, "dose_ug_kg": list(HELD_OUT_DOSES)},
                source={"cell_type": ct, "dose_ug_kg": SOURCE_DOSE}, set_={"dose": value},
                target={"cell_type": ct, "dose_ug_kg": d}, obs=obs, min_cells=min_cells,
            )
            if task:
                tasks.append(task)
    return tasks


def build_pathway_task(obs: pd.DataFrame, prefix: str, min_cells: int) -> dict[str, Any] | None:
    """D.10: control stellate cells edited towards the responders via dose + pathway concepts."""
    stellate = [c for c in obs["cell_type"].cat.categories if "stellate" in c.lower()]
    if not stellate:
        say("stellate pathway task skipped: no stellate cell type")
        return None
    ct = stellate[0]
    is_ct = (obs["cell_type"] == ct).to_numpy()
    responders = is_ct & obs["dose_ug_kg"].isin(RESPONDER_DOSES).to_numpy()
    others = is_ct & ~responders
    if responders.sum() < min_cells or others.sum() < min_cells:
        say(f"stellate pathway task skipped: {int(responders.sum())} responder / {int(others.sum())} other cells")
        return None
    columns = [f"{prefix}{p}" for p in PATHWAYS_UP + PATHWAYS_DOWN]
    resp_mean = obs.loc[responders, columns].mean()
    shift = (resp_mean - obs.loc[others, columns].mean()).to_dict()
    for p in PATHWAYS_UP:
        if shift[f"{prefix}{p}"] <= 0:
            say(f"note: {p} is not higher in responder stellate cells here (shift {shift[f'{prefix}{p}']:+.3f})")
    for p in PATHWAYS_DOWN:
        if shift[f"{prefix}{p}"] >= 0:
            say(f"note: {p} is not lower in responder stellate cells here (shift {shift[f'{prefix}{p}']:+.3f})")
    set_ = {"dose": float(obs["dose"].max()), **{c: round(float(resp_mean[c]), 6) for c in columns}}
    held = {"cell_type": ct, "dose_ug_kg": list(RESPONDER_DOSES)}
    control = float(obs["dose_ug_kg"].min())
    return make_task(
        f"nault_{_safe(ct)}_pathway_control", "pathway_control",
        f"Case study D.10: responders ({ct}, 10 and 30 ug/kg) held out; controls ({ct}, 0 ug/kg) edited with "
        f"the maximum dose and TGFb, PI3K, p53 raised / Trail, VEGF lowered to the responders' mean.",
        holdout=held, source={"cell_type": ct, "dose_ug_kg": control}, set_=set_, target=held,
        obs=obs, min_cells=min_cells, pathway_shift_responders_minus_others=shift,
    )


def prepare(
    adata: Any,
    *,
    n_top_genes: int = 3000,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
    min_task_cells: int = 5,
    progeny: bool = True,
    progeny_weights: str | None = None,
    broad_extra: Mapping[str, str] | None = None,
    seed: int = 0,
    source: dict[str, Any] | None = None,
    h5ad_name: str = "nault2023.h5ad",
) -> tuple[Any, dict[str, Any]]:
    """The prepared AnnData and its tasks document (no file is written)."""
    adata = standardise(adata, broad_extra)
    adata.X = integer_counts(adata, "Nault input")
    for key in list(adata.layers):
        del adata.layers[key]
    doses = sorted(adata.obs["dose_ug_kg"].unique())
    say(f"cells: {adata.n_obs}; {adata.obs['cell_type'].nunique()} cell types; doses (ug/kg) {[_dose_label(d) for d in doses]}")
    for broad, n in adata.obs["broad_type"].value_counts().items():
        say(f"  {broad:<16} {n:>7} cells")
    norm = normalize_log(adata)
    say(f"normalised to the median library size {norm['target_sum']:.0f}, log1p")
    pathway_names = add_progeny(adata, "mouse", progeny_weights) if progeny else []
    n_genes_in = adata.n_vars
    adata, hvg = select_hvg(adata, n_top_genes, hvg_flavor)
    say(f"genes: {n_genes_in} in, {hvg['n_genes_detected']} detected, {hvg['n_hvg']} highly variable kept")
    tasks = build_dose_tasks(adata.obs, min_task_cells)
    if pathway_names:
        task = build_pathway_task(adata.obs, "progeny_", min_task_cells)
        if task:
            tasks.append(task)
    settings = {"n_top_genes": n_top_genes, "seed": seed, "min_task_cells": min_task_cells, **norm, **hvg}
    adata.uns["preparation"] = {"script": "data_scripts/prepare_nault.py", "paper": "appendix D.1.3", **settings}
    adata.uns["source"] = source or {}
    lo, hi = doses[0], doses[-1]
    concepts = [
        {"name": "broad_type", "kind": "categorical", "categories": list(adata.obs["broad_type"].cat.categories),
         "description": "broad liver cell group (hard concept)"},
        {"name": "dose", "kind": "continuous", "range": [0, 1],
         "transform": f"(log1p(d) - log1p({lo:g})) / (log1p({hi:g}) - log1p({lo:g})), d = obs.dose_ug_kg",
         "description": "TCDD dose, log-scaled to [0, 1] (soft concept)"},
    ] + pathway_concepts(pathway_names)
    spec = tasks_document(
        "nault2023", h5ad_name,
        "Nault et al. 2023 mouse liver snRNA-seq, TCDD 0-30 ug/kg (GSE184506 / SCP1871), prepared as in "
        "appendix D.1.3; granular cell types in obs.cell_type.",
        concepts, tasks, {**(source or {}), "settings": settings},
    )
    say(f"tasks: {len(tasks)} ({', '.join(t['name'] for t in tasks)})")
    return adata, spec


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], "nault2023")
    p.add_argument("--broad-map", type=Path, default=None,
                   help="JSON {cell type: broad group} for cell types the script does not know")
    p.add_argument("--progeny", action=argparse.BooleanOptionalAction, default=True,
                   help="add PROGENy pathway concepts and the D.10 task (mouse weights; default on)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    import anndata as ad

    args = parser().parse_args(argv)
    h5ad_path, json_path = output_paths(args)
    refuse_overwrite([h5ad_path, json_path], args.overwrite)
    src = args.from_path
    if src is None:
        raise SCCBGMError(
            "the Nault et al. counts with cell types and doses are on the Single Cell Portal (SCP1871), "
            f"which needs a free sign-in to download: {STUDY_URL} (raw data: {GEO_URL}). Download the "
            "study's expression matrix, barcodes, genes/features and metadata files into one folder and "
            "re-run with --from FOLDER (or --from an .h5ad with obs cell_type__ontology_label and dose)."
        )
    if src.is_file():
        source = local_provenance(src, ())
        adata = ad.read_h5ad(src)
    elif src.is_dir():
        source = {"folder": str(src), "study": STUDY_URL, "verified": False}
        adata = read_scp_folder(src)
    else:
        raise SCCBGMError(f"--from {src}: no such file or folder.")
    adata, spec = prepare(
        adata, n_top_genes=args.n_top_genes, hvg_flavor=args.hvg_flavor, min_task_cells=args.min_task_cells, progeny=args.progeny,
        progeny_weights=args.progeny_weights, broad_extra=read_broad_map(args.broad_map), seed=args.seed, source=source,
        h5ad_name=h5ad_path.name,
    )
    write_outputs(adata, spec, h5ad_path, json_path, args.overwrite)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
