"""sccbgm.validate / sweep / search_concepts on the real Kang et al. cells (shared data).

Speed: the model's input PCA is an eigendecomposition of the genes' covariance (33 s on all
6,998 genes), so the fits here use the most variable genes only (500-1,000; every interferon gene
asserted on is among them) and few epochs; the biology asserted holds at that size.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sccbgm
from sccbgm import metrics as M
from sccbgm.datasets import KANG_SUBSET_FILE, load_kang_subset, shared_data_dir
from sccbgm.errors import SCCBGMError

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(
    not ((DATA / KANG_SUBSET_FILE).is_file() and (DATA / "progeny_human_top500.csv").is_file()),
    reason=f"shared data absent: {DATA} lacks the Kang / PROGENy files",
)
INTERFERON_GENES = ["ISG15", "IFI6", "IFIT1", "IFIT3", "ISG20", "IFITM3", "RSAD2"]
STIM_MONO = {"cell_type": "CD14+Mono", "condition": "stim"}
CTRL_MONO = {"cell_type": "CD14+Mono", "condition": "ctrl"}


def lognorm(counts: np.ndarray) -> np.ndarray:
    """Median-library-size normalisation + log1p, by hand."""
    totals = counts.sum(1, keepdims=True)
    return np.log1p(counts / totals * np.median(totals))


@pytest.fixture(scope="module")
def kang():
    if not (DATA / KANG_SUBSET_FILE).is_file():
        pytest.skip(f"shared data absent: {DATA}")
    return load_kang_subset()


def most_variable(adata: ad.AnnData, n: int) -> ad.AnnData:
    """The counts of the n genes of largest log-normalised variance (a speed measure, see the
    module docstring); library sizes are then those of these genes."""
    x = lognorm(adata.X.toarray())
    keep = np.sort(np.argsort(-x.var(0), kind="stable")[:n])
    sub = adata[:, keep].copy()
    sub.X = sub.X.astype(np.float32)
    return sub


# ------------------------------------------------------------------------------------ validate
@pytest.fixture(scope="module")
def validation(kang):
    # min_cells=80 leaves 4 eligible types: B, CD4T, CD14+Mono, FCGR3A+Mono (NK, CD8T and
    # Dendritic have fewer than 80 cells on one side)
    cells = most_variable(kang, 500)
    table = sccbgm.validate(cells, ["condition", "cell_type"], {"condition": "stim"}, "cell_type", min_cells=80,
                            epochs=10, seed=0, progress=False)
    return cells, table


@needs_data
def test_validate_has_one_row_per_eligible_group_and_editor(validation, tmp_path):
    _, table = validation
    editors = {"scCBGM", "no edit", "mean shift (other types)"}
    assert set(table["group"]) == {"B", "CD4T", "CD14+Mono", "FCGR3A+Mono"}
    assert len(table) == 4 * 3 and set(table["editor"]) == editors
    assert table.groupby("group")["editor"].apply(set).map(lambda s: s == editors).all()
    assert set(table.attrs["skipped"]) == {"NK", "CD8T", "Dendritic"}
    assert table.attrs["source"] == {"condition": "ctrl"}
    n = table.set_index(["group", "editor"])
    assert n.loc[("CD14+Mono", "no edit"), "n_source"] == 238 and n.loc[("CD14+Mono", "no edit"), "n_target"] == 83
    # the edit moves every type toward its real stimulated cells: far better than no edit
    model, none = table[table["editor"] == "scCBGM"].set_index("group"), table[table["editor"] == "no edit"].set_index("group")
    assert (model["rmmd"] < 0.7 * none["rmmd"]).all()
    assert (model["pearson_delta"] > 0.7).all()
    assert (model["response_share"] > 0.3).all() and (none["response_share"] == 0).all()
    for g, won in table.drop_duplicates("group").set_index("group")["model_beats_floors"].items():
        assert f"cell_type={g}: {'beats' if won else 'does NOT beat'} the floors" in table.attrs["verdict"]
    fig = sccbgm.tools.plot_validation(table, tmp_path / "v.png")
    assert len(fig.axes) == 2 and (tmp_path / "v.png").stat().st_size > 5000


@needs_data
def test_validate_floors_match_a_hand_computation(validation):
    cells, table = validation
    x = lognorm(cells.X.toarray().astype(np.float64)).astype(np.float32).astype(np.float64)
    ct, cond = cells.obs["cell_type"].astype(str).to_numpy(), cells.obs["condition"].astype(str).to_numpy()
    g = "CD14+Mono"
    held = (ct == g) & (cond == "stim")
    src, tgt, train = x[(ct == g) & (cond == "ctrl")], x[held], x[~held]
    # mean shift of the other types: mean(stim) - mean(ctrl) per type, averaged, clipped at 0
    shift = np.mean([x[(ct == h) & (cond == "stim") & ~held].mean(0) - x[(ct == h) & (cond == "ctrl")].mean(0)
                     for h in np.unique(ct) if h != g], axis=0)
    floors = {"no edit": src, "mean shift (other types)": np.clip(src + shift, 0, None)}
    # rMMD: on 50 PCs of the training cells; denominator = closest training population (condition|type)
    pca = M.pca_features(train, n_components=50, seed=0)
    tgt_pc = pca.transform(tgt)
    bw = M.median_bandwidth(tgt_pc, seed=0)
    labels = np.array([f"{c}|{t}" for c, t in zip(cond[~held], ct[~held], strict=True)])
    train_pc = pca.transform(train)
    den = {lab: M.mmd(train_pc[labels == lab], tgt_pc, bandwidth=bw, seed=0) for lab in np.unique(labels)}
    row = table[table["group"] == g].set_index("editor")
    for editor, edited in floors.items():
        assert row.loc[editor, "mean_dist"] == pytest.approx(np.linalg.norm(edited.mean(0) - tgt.mean(0)), rel=1e-5)
        rmmd = M.mmd(pca.transform(edited), tgt_pc, bandwidth=bw, seed=0) / min(den.values())
        assert row.loc[editor, "rmmd"] == pytest.approx(rmmd, rel=1e-4)
        assert row.loc[editor, "closest_mmd"] == min(den, key=den.get)
    assert row.loc["no edit", "rfid"] == pytest.approx(
        M.frechet_distance(pca.transform(src), tgt_pc) / min(M.frechet_distance(train_pc[labels == lab], tgt_pc)
                                                          for lab in np.unique(labels)), rel=1e-4)


def test_validate_on_counts_scores_the_default_count_space_edit(toy):
    """On raw counts the report's held-out fits are on the counts, and what it scores is the
    model's default edit (count space, group-calibrated with groupby) in the report's space."""
    from sccbgm.access import rescale
    from sccbgm.bench.real import run_task
    from sccbgm.tools._common import lognormalised

    x, kind = lognormalised(toy)
    assert kind == "counts"
    work = ad.AnnData(X=x.astype(np.float32), obs=toy.obs[["stim", "cell_type"]].copy(), layers={"counts": toy.X})
    held, src = {"cell_type": "type0", "stim": 1}, {"cell_type": "type0", "stim": 0}
    task = {"name": "t", "holdout": held, "source": src, "target": held, "set": {"stim": 1}, "group_key": None}
    res = run_task(work, {"concepts": [{"name": "stim"}, {"name": "cell_type"}]}, task, models=["sccbgm"],
                   editors=["scCBGM"], fit={"epochs": 3, "groupby": "cell_type"}, counts_layer="counts",
                   log=lambda m: None)
    model = res["models"]["sccbgm"]
    assert model.transform.input_kind == "counts" and model.group_responses.groupby == "cell_type"
    source = work[((work.obs["cell_type"] == "type0") & (work.obs["stim"] == 0)).to_numpy()]
    edited = sccbgm.edit(model, source, {"stim": 1}, layer="counts")
    record = edited.uns["sccbgm_edit"]
    assert record["count_edit"] == "mean" and record["group_calibration"]["groupby"] == "cell_type"
    library = float(np.median(np.asarray(toy.X).sum(1)))
    np.testing.assert_allclose(res["predictions"]["scCBGM"],
                               rescale(np.asarray(edited.X, np.float64), model.transform.target_sum, library),
                               rtol=1e-5, atol=1e-6)
    # and through sccbgm.validate itself: groupby is passed on (it needs the counts)
    table = sccbgm.validate(toy, ["stim", "cell_type"], {"stim": 1}, "cell_type", groups=["type0"], epochs=3,
                            groupby="cell_type", progress=False)
    assert set(table["editor"]) == {"scCBGM", "no edit", "mean shift (other types)"}


def test_validate_on_a_backed_file_equals_in_memory(toy, tmp_path):
    """A backed (on-disk) h5ad is read once, whole, and gives the in-memory report."""
    path = tmp_path / "toy.h5ad"
    toy.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    kwargs = dict(groups=["type0"], epochs=3, groupby="cell_type", progress=False)
    tables = [sccbgm.validate(a, ["stim", "cell_type"], {"stim": 1}, "cell_type", **kwargs) for a in (toy, backed)]
    backed.file.close()
    pd.testing.assert_frame_equal(*(t.drop(columns="fit_seconds") for t in tables), check_exact=True)


def test_validate_input_errors(toy):
    with pytest.raises(SCCBGMError, match="must be among the concepts"):
        sccbgm.validate(toy, ["cell_type"], {"stim": 1}, "cell_type")
    with pytest.raises(SCCBGMError, match="not found in adata.obs"):
        sccbgm.validate(toy, ["stim"], {"stim": 1}, "tissue")
    with pytest.raises(SCCBGMError, match="nothing to validate"):
        sccbgm.validate(toy, ["stim", "cell_type"], {"stim": 1}, "cell_type", min_cells=10_000)
    with pytest.raises(SCCBGMError, match="cannot be an edited column"):
        sccbgm.validate(toy, ["stim", "cell_type"], {"stim": 1}, "stim")
    many = toy.copy()
    many.obs["dose"] = np.arange(many.n_obs) % 3
    with pytest.raises(SCCBGMError, match="source="):
        sccbgm.validate(many, ["dose", "cell_type"], {"dose": 2}, "cell_type")


# --------------------------------------------------------------------------------------- sweep
@pytest.fixture(scope="module")
def jak_stat_model(kang):
    from sccbgm.pathways import add_pathway_concepts

    scored = kang.copy()
    scored.X = lognorm(scored.X.toarray())
    add_pathway_concepts(scored, pathways=["JAK-STAT"])
    cells = most_variable(kang, 1000)
    cells.obs["progeny_JAK-STAT"] = scored.obs["progeny_JAK-STAT"].to_numpy()
    assert set(INTERFERON_GENES) <= set(cells.var_names)
    return cells, sccbgm.fit(cells, ["cell_type", "progeny_JAK-STAT"], seed=0, epochs=20, progress=False)


@needs_data
def test_sweep_interferon_genes_rise_with_jak_stat_activity(jak_stat_model, tmp_path):
    cells, model = jak_stat_model
    mono = (cells.obs["cell_type"] == "CD14+Mono").to_numpy()
    values = [0.0, 0.25, 0.5, 0.75, 1.0]
    table = sccbgm.sweep(model, cells, "progeny_JAK-STAT", values, cells=mono, group="condition",
                         plot=tmp_path / "sweep.png")
    assert len(table) == 2 * len(values) * cells.n_vars
    assert set(table["group"]) == {"ctrl", "stim"}
    # the default ensemble (2 members) carries its per-cell spread into the curves
    assert model.n_members == 2 and table["sd"].notna().all() and table.attrs["uncertainty"]
    ctrl = table[table["group"] == "ctrl"]
    curves = ctrl[ctrl["gene"].isin(INTERFERON_GENES)].pivot(index="gene", columns="value", values="change")
    print(curves.round(3))
    assert (np.diff(curves.to_numpy(), axis=1) > 0).all()  # every step up in activity raises every ISG
    assert (curves[1.0] - curves[0.0] > 0.5).all()
    assert "ISG15" in table.attrs["top_genes"][:3]
    # change is the edited mean minus the observed mean of the same cells
    obs_mean = lognorm(cells.X.toarray())[mono & (cells.obs["condition"] == "ctrl").to_numpy()].mean(0)
    row = ctrl[(ctrl["gene"] == "ISG15") & (ctrl["value"] == 0.5)].iloc[0]
    assert row["change"] == pytest.approx(row["mean"] - obs_mean[list(cells.var_names).index("ISG15")], abs=1e-5)
    assert (tmp_path / "sweep.png").stat().st_size > 5000


@needs_data
def test_sweep_carries_ensemble_uncertainty_when_present(jak_stat_model, monkeypatch):
    cells, model = jak_stat_model
    real_edit = sccbgm.edit

    def edit_with_sd(*args, **kwargs):  # an ensemble's edit result: per-cell sd in layers["edit_sd"]
        out = real_edit(*args, **kwargs)
        out.layers["edit_sd"] = np.tile(np.linspace(0.1, 0.2, out.n_vars, dtype=np.float32), (out.n_obs, 1))
        return out

    monkeypatch.setattr(sccbgm, "edit", edit_with_sd)
    table = sccbgm.sweep(model, cells, "progeny_JAK-STAT", [0.0, 1.0], cells=np.arange(50), genes=["ISG15", "IFI6"])
    assert table.attrs["uncertainty"] and len(table) == 4
    expected = np.linspace(0.1, 0.2, len(model.genes))
    idx = [list(model.genes).index(g) for g in ("ISG15", "IFI6")]
    np.testing.assert_allclose(table["sd"].to_numpy(), np.tile(expected[idx], 2), rtol=1e-6)
    fig = sccbgm.tools.plot_sweep(table)
    assert len(fig.axes) == 1


def test_sweep_input_errors(toy, toy_model):
    with pytest.raises(SCCBGMError, match="not one of the model's concepts"):
        sccbgm.sweep(toy_model, toy, "dose", [0, 1])
    with pytest.raises(SCCBGMError, match="at least two values"):
        sccbgm.sweep(toy_model, toy, "stim", [1])
    with pytest.raises(SCCBGMError, match="not among the model's genes"):
        sccbgm.sweep(toy_model, toy, "stim", [0, 1], genes=["nope"])


# -------------------------------------------------------------------------------------- search
@needs_data
def test_search_ranks_jak_stat_first_for_interferon_beta(kang, tmp_path):
    cells = most_variable(kang, 1000)
    table = sccbgm.search_concepts(cells, CTRL_MONO, STIM_MONO, concepts=["cell_type"], epochs=20, seed=0,
                                   plot=tmp_path / "search.png")
    print(table.to_string())
    assert table.columns[0] == "pathway" and list(table["rank"]) == list(range(1, len(table) + 1))
    assert table.attrs["separation"]["pathway"].iloc[0] == "JAK-STAT"  # the most separating pathway
    singles = table[table["n_pathways"] == 1]
    assert singles["pathway"].iloc[0] == "JAK-STAT"  # the best single edit
    assert "JAK-STAT" in table["pathway"].iloc[0].split(" + ")  # and part of the best edit
    by = table.set_index("pathway")
    assert by.loc["JAK-STAT", "rmmd"] < 0.7 * by.loc["(no edit)", "rmmd"]
    assert by.loc["JAK-STAT", "marker_recovered"] > 0.25 and by.loc["JAK-STAT", "marker_r"] > 0.7
    assert "Best edit" in table.attrs["report"] and (tmp_path / "search.png").stat().st_size > 5000
    activities = table.attrs["activities"]
    assert activities.shape == (cells.n_obs, 14) and activities.to_numpy().min() >= 0 and activities.to_numpy().max() <= 1
    model = table.attrs["model"]  # fitted on the counts given, so it edits counts (e.g. in sweep)
    assert "progeny_JAK-STAT" in model.concepts and model.transform.input_kind == "counts"


def test_search_input_errors(toy):
    with pytest.raises(SCCBGMError, match="both `source` and `target`"):
        sccbgm.search_concepts(toy, {"stim": 0}, np.ones(toy.n_obs, bool))
    with pytest.raises(SCCBGMError, match="selects 0 cells"):
        sccbgm.search_concepts(toy, {"stim": 0}, {"stim": 5})
    with pytest.raises(SCCBGMError, match="'progeny' or a list"):
        sccbgm.search_concepts(toy, {"stim": 0}, {"stim": 1}, pathways="reactome")


# ----------------------------------------------------------------------------------------- CLI
def test_cli_tools_errors_exit_2_with_one_line(toy, tmp_path, capsys):
    from sccbgm.cli import main

    data = tmp_path / "cells.h5ad"
    small = toy[:300].copy()
    del small.uns["stim_effect"]
    small.write_h5ad(data)
    out = str(tmp_path / "out")
    cases = [
        (["validate", str(data), "--concepts", "stim", "--edit", "{bad", "--group", "cell_type", "--out", out],
         "--edit is not valid JSON"),
        (["validate", str(tmp_path / "none.h5ad"), "--concepts", "stim", "--edit", '{"stim": 1}', "--group",
          "cell_type", "--out", out], "does not exist"),
        (["validate", str(data), "--concepts", "stim", "--edit", '{"stim": 1}', "--group", "cell_type", "--out",
          str(tmp_path)], "not empty"),
        (["validate", str(data), "--concepts", "cell_type", "--edit", '{"stim": 1}', "--group", "cell_type",
          "--out", out], "must be among the concepts"),
        (["validate", str(data), "--concepts", "stim", "--edit", '{"stim": 1}', "--group", "cell_type",
          "--groupby", "tissue", "--out", out], "tissue"),
        (["sweep", str(data), "--model", str(tmp_path / "none.sccbgm"), "--concept", "stim", "--values", "0", "1",
          "--out", out], "model file"),
        (["search", str(data), "--source", '{"stim": 0}', "--target", '{"stim": 0}', "--out", out],
         "both `source` and `target`"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sccbgm: error:") and "\n" not in err and "Traceback" not in err
        assert message in err


def test_cli_validate_and_sweep_write_tables(toy, toy_model, tmp_path, capsys):
    from sccbgm.cli import main

    data = tmp_path / "cells.h5ad"
    small = toy.copy()
    del small.uns["stim_effect"]
    small.write_h5ad(data)
    out = tmp_path / "v"
    assert main(["validate", str(data), "--concepts", "stim", "cell_type", "--edit", '{"stim": 1}', "--group",
                 "cell_type", "--groups", "type0", "--epochs", "3", "--groupby", "cell_type", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out / "validation.csv")
    assert list(table["group"]) == ["type0"] * 3 and (out / "validation.png").is_file()
    assert "groups" in capsys.readouterr().out
    model_path = tmp_path / "m.sccbgm"
    sccbgm.save(toy_model, model_path)
    out = tmp_path / "s"
    assert main(["sweep", str(data), "--model", str(model_path), "--concept", "stim", "--values", "0", "1",
                 "--cells", json.dumps({"cell_type": "type1"}), "--out", str(out)]) == 0
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 2 * toy.n_vars and (out / "sweep.png").is_file()
    # the toy's true stim effect: the sweep's change 0 -> 1 follows its sign on the strong genes
    stim1 = table[table["value"] == 1.0].set_index("gene")["mean"] - table[table["value"] == 0.0].set_index("gene")["mean"]
    effect = pd.Series(toy.uns["stim_effect"], index=toy.var_names)
    strong = effect.abs() > 0.8
    assert (np.sign(stim1[strong]) == np.sign(effect[strong])).mean() > 0.9


def test_cli_search_with_given_weights_writes_table_and_a_sweepable_model(toy, tmp_path, capsys):
    """`sccbgm search` on the toy data with a weights CSV of two pathways: "stimmed" (the genes the
    toy's stim moves, weighted by the true effect) and "random" (unrelated genes)."""
    import pandas as pd

    from sccbgm.cli import main

    data = tmp_path / "cells.h5ad"
    small = toy.copy()
    effect = small.uns.pop("stim_effect")
    small.write_h5ad(data)
    moved = np.flatnonzero(effect != 0)
    still = np.flatnonzero(effect == 0)[:20]
    weights = pd.DataFrame({
        "source": ["stimmed"] * len(moved) + ["random"] * len(still),
        "target": [toy.var_names[j] for j in moved] + [toy.var_names[j] for j in still],
        "weight": np.r_[effect[moved], np.random.default_rng(0).normal(size=len(still))],
    })
    weights.to_csv(tmp_path / "w.csv", index=False)
    out = tmp_path / "search"
    assert main(["search", str(data), "--source", '{"stim": 0}', "--target", '{"stim": 1}', "--concepts", "cell_type",
                 "--weights", str(tmp_path / "w.csv"), "--n-pathways", "2", "--epochs", "5", "--out", str(out)]) == 0
    table = pd.read_csv(out / "search.csv")
    assert table.columns[0] == "pathway" and table["pathway"].iloc[0].startswith("stimmed")
    assert pd.read_csv(out / "separation.csv")["pathway"].iloc[0] == "stimmed"
    assert "Best edit" in capsys.readouterr().out
    model = sccbgm.load(out / "model.sccbgm")
    assert "progeny_stimmed" in model.concepts
    assert main(["sweep", str(data), "--model", str(out / "model.sccbgm"), "--concept", "progeny_stimmed",
                 "--values", "0", "1", "--out", str(tmp_path / "sweep")]) == 0


def test_sweep_carries_a_real_ensembles_uncertainty(toy):
    """With an ensemble (fit n_members=2), sd is the group mean of the edit's layers["edit_sd"]."""
    model = sccbgm.fit(toy[:600].copy(), ["stim", "cell_type"], seed=0, epochs=3, n_members=2, progress=False)
    cells = toy[600:700].copy()
    genes = ["gene3", "gene7"]
    table = sccbgm.sweep(model, cells, "stim", [0, 1], genes=genes)
    assert table.attrs["uncertainty"] and (table["sd"] > 0).all()
    edited = sccbgm.edit(model, cells, set={"stim": 1})
    cols = [list(model.genes).index(g) for g in genes]
    expected = np.asarray(edited.layers["edit_sd"], dtype=np.float64)[:, cols].mean(0)
    np.testing.assert_allclose(table.loc[table["value"] == 1, "sd"].to_numpy(), expected, rtol=1e-5)
