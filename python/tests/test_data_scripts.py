"""The data preparation scripts (data_scripts/): Kang on the shared real subset, Cui / Nault on
small synthetic AnnData shaped like their public sources, checksums, and the tasks schema."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccbgm.datasets import (
    KANG_SUBSET_FILE,
    read_prepared,
    select_cells,
    shared_data_dir,
    validate_tasks,
)
from sccbgm.errors import SCCBGMError

SCRIPTS = Path(__file__).resolve().parents[2] / "data_scripts"
DATA = shared_data_dir()
KANG = DATA / KANG_SUBSET_FILE
MOUSE_WEIGHTS = DATA / "progeny_mouse_top500.csv"
needs_kang = pytest.mark.shared_data(KANG_SUBSET_FILE)  # skip, or fail under CI (conftest)


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def common():
    return _script("_common")


# ----------------------------------------------------------------------------- checksums, download
def test_checksum_detects_a_changed_file(common, tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"single cells\n" * 1000)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert common.file_digest(f) == sha
    assert common.verify_checksum(f, sha.upper()) == sha
    assert common.verify_checksum(f, hashlib.md5(f.read_bytes()).hexdigest(), "md5")
    with pytest.raises(common.ChecksumError, match="sha256 mismatch"):
        common.verify_checksum(f, "0" * 64)
    with f.open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(common.ChecksumError):
        common.verify_checksum(f, sha)


def test_unknown_checksum_needs_the_explicit_flag(common, tmp_path):
    f = tmp_path / "x.RDS"
    f.write_bytes(b"abc")
    src = common.Source(name="no checksum", url="https://example.org/x.RDS", filename="x.RDS")
    with pytest.raises(common.ChecksumError, match="--skip-checksum"):
        common.check_source_file(f, src, skip_checksum=False)
    info = common.check_source_file(f, src, skip_checksum=True)
    assert info["verified"] is False and info["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_download_verifies_and_rejects_a_bad_file(common, tmp_path):
    origin = tmp_path / "origin.h5ad"
    origin.write_bytes(b"payload" * 100)
    sha = hashlib.sha256(origin.read_bytes()).hexdigest()
    good = common.Source(name="good", url=origin.as_uri(), filename="copy.h5ad", sha256=sha)
    path, info = common.download(good, tmp_path / "dl", skip_checksum=False)
    assert path.read_bytes() == origin.read_bytes() and info["verified"] is True
    bad = common.Source(name="bad", url=origin.as_uri(), filename="bad.h5ad", sha256="1" * 64)
    with pytest.raises(common.ChecksumError):
        common.download(bad, tmp_path / "dl", skip_checksum=False)


def test_hvg_count_adapts_to_few_detected_genes(common):
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(60, 40)).astype(np.float32)
    x[:, 30:] = 0
    a = ad.AnnData(sp.csr_matrix(x))
    common.normalize_log(a)
    kept, info = common.select_hvg(a, 3000)
    assert info["n_genes_detected"] == 30 and kept.n_vars == 30


def test_hvg_by_mean_expression_and_unknown_flavor(common):
    rng = np.random.default_rng(1)
    x = rng.poisson(np.linspace(0.1, 5.0, 50)[None, :], size=(80, 50)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=[f"g{i}" for i in range(50)]))
    common.normalize_log(a)
    means = np.asarray(a.X.mean(axis=0)).ravel()
    kept, info = common.select_hvg(a.copy(), 10, "mean")
    assert set(kept.var_names) == set(a.var_names[np.argsort(-means)[:10]]) and info["hvg_flavor"] == "mean"
    assert common.select_hvg(a.copy(), 10, "seurat")[0].n_vars == 10
    with pytest.raises(SCCBGMError, match="HVG flavour"):
        common.select_hvg(a, 10, "variance")


# ----------------------------------------------------------------------------- Kang (real cells)
@pytest.fixture(scope="module")
def kang_run(tmp_path_factory, require_shared_data):
    require_shared_data(KANG_SUBSET_FILE)
    kang = _script("prepare_kang")
    out = tmp_path_factory.mktemp("kang")
    kang.main(["--from", str(KANG), "--out-dir", str(out)])
    return kang, out


@needs_kang
def test_kang_outputs_have_the_documented_columns(kang_run):
    _, out = kang_run
    a, spec = read_prepared(out / "kang2018_tasks.json")
    raw = ad.read_h5ad(KANG)
    assert a.n_obs == raw.n_obs and a.n_vars == 3000
    for col in ("condition", "cell_type", "stim", "subtype", "total_counts"):
        assert col in a.obs.columns
    assert set(a.obs["condition"]) == {"ctrl", "stim"}
    assert ((a.obs["stim"] == 1) == (a.obs["condition"] == "stim")).all()
    assert list(a.obs["cell_type"].cat.categories) == [
        "B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"
    ]
    assert {c["name"]: c["kind"] for c in spec["concepts"]} == {"cell_type": "categorical", "stim": "binary"}
    # counts layer = the input counts of the kept genes
    counts = a.layers["counts"]
    np.testing.assert_array_equal(counts.toarray(), raw[a.obs_names, a.var_names].X.toarray())
    # X = log1p(counts / library size * median library size)
    target = a.uns["preparation"]["target_sum"]
    assert target == pytest.approx(np.median(np.asarray(raw.X.sum(axis=1)).ravel()))
    expected = np.log1p(counts.toarray() / a.obs["total_counts"].to_numpy()[:, None] * target)
    np.testing.assert_allclose(a.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    assert "X_pca_harmony" in a.obsm
    # the interferon response genes the Kang task is about survive the gene selection
    assert {"ISG15", "IFI6", "IFIT1", "IFIT3", "RSAD2", "CXCL10"} <= set(a.var_names)
    assert a.uns["preparation"]["hvg_flavor"] == "cell_ranger"


@needs_kang
def test_kang_subtypes_per_broad_type(kang_run):
    _, out = kang_run
    a = ad.read_h5ad(out / "kang2018.h5ad")
    prefix = a.obs["subtype"].astype(str).str.rsplit(" ", n=1).str[0]
    assert (prefix == a.obs["cell_type"].astype(str)).all()
    per_type = a.obs.groupby("cell_type", observed=True)["subtype"].nunique()
    assert (per_type >= 1).all() and per_type.sum() > len(per_type)
    table = pd.DataFrame(a.uns["subtype_table"])
    assert set(table.columns) >= {"subtype", "cell_type", "ctrl", "stim"}
    assert table[["ctrl", "stim"]].to_numpy().sum() == a.n_obs


@needs_kang
def test_kang_tasks_are_valid(kang_run):
    _, out = kang_run
    a, spec = read_prepared(out / "kang2018_tasks.json")
    names = [t["name"] for t in spec["tasks"]]
    for ct in ("CD14+Mono", "B", "CD4T", "FCGR3A+Mono"):
        assert f"kang_{ct}_stim" in names
    counts = validate_tasks(spec, a.obs)
    for task, n in zip(spec["tasks"], counts, strict=True):
        assert task["set"] == {"stim": 1}
        src = select_cells(a, task["source"])
        tgt = select_cells(a, task["target"])
        assert (a.obs.loc[src, "condition"] == "ctrl").all() and (a.obs.loc[tgt, "condition"] == "stim").all()
        assert n["target"] == task["n_cells"]["target"]
        if task["kind"] == "cell_type":
            assert task["group_key"] == "subtype" and task["groups"]
            ct = task["source"]["cell_type"]
            assert all(g.startswith(ct + " ") for g in task["groups"])
            assert (a.obs.loc[select_cells(a, task["holdout"]), "cell_type"] == ct).all()


@needs_kang
def test_kang_refuses_to_overwrite(kang_run):
    kang, out = kang_run
    before = (out / "kang2018_tasks.json").read_text()
    with pytest.raises(SCCBGMError, match="--overwrite"):
        kang.main(["--from", str(KANG), "--out-dir", str(out)])
    assert kang.run_main(kang.main, ["--from", str(KANG), "--out-dir", str(out)]) == 1
    assert (out / "kang2018_tasks.json").read_text() == before


@needs_kang
def test_kang_pertpy_layout_is_mapped_and_megakaryocytes_dropped():
    kang = _script("prepare_kang")
    raw = ad.read_h5ad(KANG)
    long_names = {"B": "B cells", "CD14+Mono": "CD14+ Monocytes", "CD4T": "CD4 T cells", "CD8T": "CD8 T cells",
                  "Dendritic": "Dendritic cells", "FCGR3A+Mono": "FCGR3A+ Monocytes", "NK": "NK cells"}
    obs = pd.DataFrame({"label": raw.obs["condition"].astype(str).to_numpy(),
                        "cell_type": raw.obs["cell_type"].astype(str).map(long_names).to_numpy()},
                       index=raw.obs_names)
    obs.iloc[:7, 1] = "Megakaryocytes"
    pert = ad.AnnData(raw.X, obs=obs, var=raw.var)
    std = kang.standardise(pert)
    assert std.n_obs == raw.n_obs - 7
    assert "Megakaryocytes" not in set(std.obs["cell_type"]) and "CD4T" in set(std.obs["cell_type"])
    with pytest.raises(SCCBGMError, match="known column layouts"):
        kang.standardise(ad.AnnData(raw.X, obs=pd.DataFrame({"group": 1}, index=raw.obs_names)))
    bad = pert.copy()
    bad.obs["cell_type"] = "Platelets"
    with pytest.raises(SCCBGMError, match="unknown cell type"):
        kang.standardise(bad)


# ----------------------------------------------------------------------------- Cui (synthetic)
CUI_TYPES = ["T_cell_gd", "T_cell_CD4", "T_cell_CD8", "cDC2", "Langerhans", "Macrophage", "NK_cell", "B_cell",
             "Neutrophil"]
CUI_CYTOKINES = ["PBS", "IL17E", "TGF-beta-1", "TNFa", "IFNa1", "IFNg", "M-CSF", "IL15", "IL4"]


def _cui_like(cytokine_key: str = "sample", n: int = 1200, seed: int = 0) -> ad.AnnData:
    """Counts with the Immune Dictionary meta.data columns (celltype, sample, rep)."""
    rng = np.random.default_rng(seed)
    genes = [f"Gene{i}" for i in range(300)]
    obs = pd.DataFrame({"celltype": rng.choice(CUI_TYPES, n), cytokine_key: rng.choice(CUI_CYTOKINES, n),
                        "rep": rng.choice(["rep01", "rep02", "rep03"], n)}, index=[f"cell{i}" for i in range(n)])
    x = rng.poisson(rng.gamma(0.6, 1.0, size=len(genes))[None, :], size=(n, len(genes))).astype(np.float32)
    x[:, 0] += 1
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


def test_cui_prepare_concepts_and_tasks():
    cui = _script("prepare_cui")
    a, spec = cui.prepare(_cui_like(), n_top_genes=100)
    assert a.n_vars == 100 and "counts" in a.layers
    assert set(a.obs["broad_type"]) == {"T cells", "Dendritic cells", "Monocyte-Macrophages",
                                        "Innate lymphoid cells", "B cells", "Granulocytes"}
    cyt_cols = [c["name"] for c in spec["concepts"] if c["kind"] == "binary"]
    assert len(cyt_cols) == len(CUI_CYTOKINES) - 1 and "cytokine_TGF_beta_1" in cyt_cols
    pbs = (a.obs["cytokine"] == "PBS").to_numpy()
    assert (a.obs.loc[pbs, cyt_cols].to_numpy() == 0).all()
    assert (a.obs.loc[~pbs, cyt_cols].to_numpy().sum(axis=1) == 1).all()
    assert [t["name"] for t in spec["tasks"]] == [
        "cui_T_cell_gd_IL17E", "cui_T_cell_CD4_TGF_beta_1", "cui_T_cell_CD8_TNFa", "cui_cDC2_IFNa1",
        "cui_Langerhans_IFNg", "cui_Macrophage_M_CSF", "cui_NK_cell_IL15",
    ]
    validate_tasks(spec, a.obs)
    task = spec["tasks"][1]
    assert task["set"] == {"cytokine_TGF_beta_1": 1}
    assert task["source"] == {"cell_type": "T_cell_CD4", "cytokine": "PBS"}
    assert task["holdout"] == task["target"] == {"cell_type": "T_cell_CD4", "cytokine": "TGF-beta-1"}


def test_cui_scp_layout_and_unknown_types():
    cui = _script("prepare_cui")
    a, spec = cui.prepare(_cui_like("cyt", n=600), n_top_genes=50)
    assert "cytokine_IL15" in a.obs.columns and spec["tasks"]
    odd = _cui_like(n=300)
    odd.obs["celltype"] = odd.obs["celltype"].astype(str).where(odd.obs_names != "cell0", "Mystery_cell")
    with pytest.raises(SCCBGMError, match="Mystery_cell"):
        cui.prepare(odd.copy(), n_top_genes=50)
    a2, _ = cui.prepare(odd, n_top_genes=50, broad_extra={"Mystery_cell": "Stromal cells"})
    assert "Stromal cells" in set(a2.obs["broad_type"])


def _has_seurat_object() -> bool:
    if shutil.which("Rscript") is None:
        return False
    res = subprocess.run(["Rscript", "-e", "quit(status = !requireNamespace('SeuratObject', quietly = TRUE))"],
                         capture_output=True)
    return res.returncode == 0


@pytest.mark.skipif(not _has_seurat_object(), reason="R with SeuratObject not available")
def test_cui_rds_conversion(tmp_path):
    cui = _script("prepare_cui")
    make = (
        "suppressPackageStartupMessages(library(SeuratObject)); set.seed(1);"
        "m <- Matrix::rsparsematrix(30, 12, 0.4); m@x <- abs(round(m@x * 4)) + 1;"
        "rownames(m) <- paste0('Gene', 1:30); colnames(m) <- paste0('NK_', 1:12);"
        "s <- CreateSeuratObject(counts = m); s$celltype <- 'NK_cell';"
        "s$sample <- rep(c('PBS', 'IL15'), 6); s$rep <- 'rep01';"
        f"invisible(saveRDS(s, '{tmp_path / 'ligands-seurat-NK_cell.RDS'}'));"
        f"Matrix::writeMM(m, '{tmp_path / 'expected.mtx'}')"
    )
    subprocess.run(["Rscript", "-e", make], check=True, capture_output=True)
    files = cui.rds_files(tmp_path)
    a = cui.load_rds(files, tmp_path / "converted")
    import scipy.io

    expected = scipy.io.mmread(str(tmp_path / "expected.mtx")).T.toarray()
    np.testing.assert_array_equal(a.X.toarray(), expected)
    assert list(a.obs["sample"]) == ["PBS", "IL15"] * 6 and (a.obs["celltype"] == "NK_cell").all()


# ----------------------------------------------------------------------------- Nault (synthetic)
NAULT_TYPES = ["centrilobular region hepatocyte", "periportal region hepatocyte", "hepatic stellate cell",
               "macrophage", "B cell", "cholangiocyte"]
NAULT_DOSES = ["0", "0.01", "0.03", "0.1", "0.3", "1", "3", "10", "30"]


def _nault_like(n: int = 1400, seed: int = 0) -> ad.AnnData:
    """Counts with the SCP1871 obs columns (cell_type__ontology_label, dose as text)."""
    rng = np.random.default_rng(seed)
    if MOUSE_WEIGHTS.is_file():
        net = pd.read_csv(MOUSE_WEIGHTS)
        genes = list(dict.fromkeys(net.groupby("source").head(40)["target"]))
    else:
        genes = [f"Gene{i}" for i in range(500)]
    dose = rng.choice(NAULT_DOSES, n)
    effect = np.log1p(dose.astype(float))[:, None] * (np.arange(len(genes)) % 5 == 0)[None, :]
    mu = rng.gamma(0.6, 1.0, size=len(genes))[None, :] * (1 + 0.3 * effect)
    x = rng.poisson(mu).astype(np.float32)
    x[:, 0] += 1
    obs = pd.DataFrame({"cell_type__ontology_label": rng.choice(NAULT_TYPES, n), "dose": dose},
                       index=[f"nuc{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


def test_nault_dose_concept_and_tasks():
    nault = _script("prepare_nault")
    progeny = MOUSE_WEIGHTS.is_file()
    a, spec = nault.prepare(_nault_like(), n_top_genes=200, progeny=progeny,
                            progeny_weights=str(MOUSE_WEIGHTS) if progeny else None)
    assert set(a.obs["broad_type"]) == {"Hepatocyte", "Stromal Cell", "Immune Cell", "Cholangiocyte"}
    d = a.obs["dose_ug_kg"].to_numpy()
    np.testing.assert_allclose(a.obs["dose"], np.log1p(d) / np.log1p(30.0), rtol=1e-6)
    assert a.obs["dose"].min() == 0.0 and a.obs["dose"].max() == pytest.approx(1.0)
    kinds = {c["name"]: c["kind"] for c in spec["concepts"]}
    assert kinds["broad_type"] == "categorical" and kinds["dose"] == "continuous"
    validate_tasks(spec, a.obs)
    dose_tasks = [t for t in spec["tasks"] if t["kind"] == "dose"]
    assert len(dose_tasks) == 2 * len(NAULT_TYPES)
    t3 = next(t for t in dose_tasks if t["name"] == "nault_hepatic_stellate_cell_dose3")
    assert t3["holdout"] == {"cell_type": "hepatic stellate cell", "dose_ug_kg": [3.0, 10.0]}
    assert t3["source"] == {"cell_type": "hepatic stellate cell", "dose_ug_kg": 1.0}
    assert t3["set"]["dose"] == pytest.approx(np.log1p(3) / np.log1p(30))
    assert (a.obs.loc[select_cells(a, t3["target"]), "dose_ug_kg"] == 3.0).all()
    if progeny:
        pcols = [c["name"] for c in spec["concepts"] if c["name"].startswith("progeny_")]
        assert len(pcols) == 14
        assert ((a.obs[pcols] >= 0) & (a.obs[pcols] <= 1)).all().all()
        case = next(t for t in spec["tasks"] if t["kind"] == "pathway_control")
        assert set(case["set"]) == {"dose", "progeny_TGFb", "progeny_PI3K", "progeny_p53", "progeny_Trail",
                                    "progeny_VEGF"}
        assert case["source"]["dose_ug_kg"] == 0.0 and case["target"]["dose_ug_kg"] == [10.0, 30.0]


def _write_scp_folder(a: ad.AnnData, folder: Path) -> None:
    import scipy.io

    folder.mkdir()
    scipy.io.mmwrite(str(folder / "matrix.mtx"), sp.csr_matrix(a.X).T.tocoo())
    (folder / "barcodes.tsv").write_text("\n".join(a.obs_names) + "\n")
    (folder / "features.tsv").write_text("".join(f"ENSMUSG{i:06d}\t{g}\tGene Expression\n"
                                                 for i, g in enumerate(a.var_names)))
    meta = a.obs.rename(columns=str).copy()
    lines = ["NAME\t" + "\t".join(meta.columns), "TYPE\t" + "\t".join("group" for _ in meta.columns)]
    lines += [f"{name}\t" + "\t".join(map(str, row)) for name, row in zip(meta.index, meta.to_numpy(), strict=True)]
    (folder / "metadata.txt").write_text("\n".join(lines) + "\n")


def test_nault_cli_reads_an_scp_folder(tmp_path):
    nault = _script("prepare_nault")
    syn = _nault_like(n=500, seed=1)
    _write_scp_folder(syn, tmp_path / "scp")
    back = nault.read_scp_folder(tmp_path / "scp")
    np.testing.assert_array_equal(back.X.toarray(), syn.X.toarray())
    assert list(back.var_names) == list(syn.var_names)
    out = tmp_path / "out"
    nault.main(["--from", str(tmp_path / "scp"), "--out-dir", str(out), "--no-progeny", "--n-top-genes", "100"])
    a, spec = read_prepared(out / "nault2023_tasks.json")
    assert a.n_vars == 100 and spec["dataset"] == "nault2023"
    assert json.loads((out / "nault2023_tasks.json").read_text())["schema"] == "sccbgm.tasks/1"
    with pytest.raises(SCCBGMError, match="SCP1871"):
        nault.main(["--out-dir", str(tmp_path / "other")])


def test_nault_scvidr_layout():
    nault = _script("prepare_nault")
    syn = _nault_like(n=400, seed=2)
    syn.obs = pd.DataFrame({"celltype": syn.obs["cell_type__ontology_label"].map({
        "centrilobular region hepatocyte": "Hepatocytes - central", "periportal region hepatocyte": "Hepatocytes - portal",
        "hepatic stellate cell": "Stellate Cells", "macrophage": "Macrophages", "B cell": "B Cells",
        "cholangiocyte": "Cholangiocytes"}), "Dose": syn.obs["dose"].astype(float)}, index=syn.obs_names)
    a, spec = nault.prepare(syn, n_top_genes=100, progeny=False)
    assert "Stellate Cells" in set(a.obs["cell_type"]) and spec["tasks"]
