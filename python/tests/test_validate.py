"""Issue 12: the validation protocol (``sccbgm bench validate``), the simulator's interaction
variant, the count-space edit and the reconstruction-loss scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sccbgm
from sccbgm.bench import validate as V
from sccbgm.editing import count_space_edit
from sccbgm.errors import SCCBGMError
from sccbgm.simulation import simulate_counterfactual, true_log_rate


def test_halves_are_disjoint_and_cover_three_seeds():
    for key in ("kang", "sim"):
        a, b = set(V.HALVES["choose"][key]), set(V.HALVES["confirm"][key])
        assert not a & b and len(a | b) >= 3


def test_interaction_variant_has_type_specific_effects_and_exact_counterfactuals():
    add = sccbgm.simulate("synthetic1", n_cells=400, n_genes=60, seed=3)
    inter = sccbgm.simulate("interaction", n_cells=400, n_genes=60, seed=3)
    # the paper's draws are untouched by the option
    assert np.array_equal(add.uns["simulation"]["concept_coef"], inter.uns["simulation"]["concept_coef"])
    assert "concept_cell_type_coef" not in add.uns["simulation"]
    coef = inter.uns["simulation"]["concept_cell_type_coef"]
    assert coef.shape == (5, 4, 60)
    assert np.all(coef[:, :, add.uns["simulation"]["concept_coef"][0] == 0][0] == 0)
    # switching concept_0 on moves the log rate by c_0 + e_{0,u} for a type-u cell
    cells = np.flatnonzero(inter.obs["concept_0"].to_numpy() == 0)[:20]
    before = true_log_rate(inter, cells)
    after = true_log_rate(inter, cells, set={"concept_0": 1})
    types = inter.uns["simulation"]["cell_type_index"][cells]
    want = inter.uns["simulation"]["concept_coef"][0] + coef[0][types]
    np.testing.assert_allclose(after - before, want, atol=1e-12)
    # unchanged concepts reproduce the counts exactly
    same = simulate_counterfactual(inter, {"concept_0": inter.obs["concept_0"].to_numpy()[cells]}, cells=cells)
    assert np.array_equal(same.X, inter.X[cells])


def test_unbiased_mmd_by_hand():
    x = np.array([[0.0], [1.0]])
    y = np.array([[0.0], [2.0]])
    k = lambda a, b: np.exp(-0.5 * (a - b) ** 2)  # noqa: E731
    want = k(0, 1) + k(0, 2) - 2 * (k(0, 0) + k(0, 2) + k(1, 0) + k(1, 2)) / 4
    assert V.mmd_unbiased(x, y, 0.5) == pytest.approx(want)


def test_count_space_edit_keeps_cells_without_predicted_change_and_changes_zeros():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (200, 30)).astype(float)
    fact = np.log1p(np.full((200, 30), 2.0 / 60 * 1e3))
    same = count_space_edit(counts, fact, fact, 1e3, rng)
    tot = counts.sum(1, keepdims=True)
    np.testing.assert_allclose(same, np.log1p(counts / tot * 1e3))
    up = fact.copy()
    up[:, 0] = np.log1p(np.expm1(fact[:, 0]) * 8)  # gene 0: rate x 8
    down = fact.copy()
    down[:, 1] = np.log1p(np.expm1(fact[:, 1]) / 8)
    e_up = count_space_edit(counts, fact, up, 1e3, np.random.default_rng(1))
    e_down = count_space_edit(counts, fact, down, 1e3, np.random.default_rng(1))
    zero0, zero1 = counts[:, 0] == 0, counts[:, 1] == 0
    assert (e_up[zero0, 0] > 0).mean() > 0.8  # zeros become expressed
    assert (e_down[:, 1] == 0).mean() > zero1.mean() + 0.4  # expression drops out
    mean = count_space_edit(counts, fact, up, 1e3, None, expectation=True)
    assert np.all(mean[:, 0] >= np.log1p(counts[:, 0] / tot[:, 0] * 1e3) - 0.2)


def test_count_edit_through_the_api(toy, toy_model):
    test = toy[900:1000].copy()
    ctrl = test.obs["stim"].to_numpy() == 0
    a = sccbgm.edit(toy_model, test, set={"stim": 1}, cells=ctrl, count_edit="sample", seed=0)
    b = sccbgm.edit(toy_model, test, set={"stim": 1}, cells=ctrl, count_edit="sample", seed=0)
    assert np.array_equal(a.X, b.X) and a.uns["sccbgm_edit"]["count_edit"] == "sample"
    truth = toy_model.transform.lognorm(test.obsm["counterfactual_counts"][ctrl].astype(float))
    x = toy_model.transform.lognorm(test.X[ctrl].astype(float))
    assert ((a.X - truth) ** 2).mean() < ((x - truth) ** 2).mean()
    with pytest.raises(SCCBGMError, match="count_edit must be"):
        sccbgm.edit(toy_model, test, set={"stim": 1}, count_edit="poisson")
    # "none" (what R can pass) is None: the additive edit
    c = sccbgm.edit(toy_model, test, set={"stim": 1}, cells=ctrl, count_edit="none")
    d = sccbgm.edit(toy_model, test, set={"stim": 1}, cells=ctrl, count_edit=None)
    assert np.array_equal(c.X, d.X) and c.uns["sccbgm_edit"]["count_edit"] == "none"
    assert not np.allclose(c.X, a.X)
    lognormed = test.copy()
    lognormed.X = toy_model.transform.lognorm(np.asarray(test.X, dtype=float))
    lm = sccbgm.fit(lognormed, ["stim"], seed=0, epochs=1, progress=False, hidden_dim=16, latent_dim=4,
                    unknown_dim=4)
    with pytest.raises(SCCBGMError, match="raw counts"):
        sccbgm.edit(lm, lognormed, set={"stim": 1}, count_edit="sample")


def test_reconstruction_sum_scales_the_term_by_the_feature_count():
    import torch

    from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig

    batch = {"x": torch.randn(16, 10), "concepts": torch.ones(16, 1), "mask": torch.ones(16, 1)}
    terms = {}
    for red in ("mean", "sum"):
        torch.manual_seed(0)
        module = ConceptBottleneckVAE(SCCBGMConfig(in_dim=10, n_concepts=1, is_binary=[True], reconstruction=red))
        module.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            terms[red] = float(module.loss(batch)["reconstruction"])
    assert terms["sum"] == pytest.approx(10 * terms["mean"], rel=1e-5)
    with pytest.raises(SCCBGMError, match="reconstruction"):
        SCCBGMConfig(in_dim=10, n_concepts=1, is_binary=[True], reconstruction="median")


def test_bench_validate_quick(tmp_path):
    """The whole protocol on tiny simulated data (and one Kang type when the shared data exist)."""
    from sccbgm.bench import main
    from sccbgm.datasets import shared_data_dir

    args = ["validate", "--quick", "--halves", "choose", "--candidates", "default", "count sample",
            "--out", str(tmp_path)]
    kang = shared_data_dir() / V.KANG_FILE
    if kang.is_file():
        args += ["--kang", str(kang), "--types", "B"]
    else:
        args += ["--datasets", "sim-additive", "sim-interaction"]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    sims = table[table.dataset.str.startswith("sim")]
    assert set(sims.editor) == {*V.FLOORS, *V.REFERENCES, "default", "count sample", V.ENSEMBLE}
    with_ref = set(sims.loc[sims.editor == V.ORACLE_SHARED, "dataset"])
    assert with_ref == {d for d in sims.dataset if "interaction" in d} and with_ref
    assert (sims.loc[sims.editor == V.ORACLE_SHARED, "kind"] == "reference").all()
    assert V.ORACLE_SHARED not in set(V.wins(table).editor)
    assert (sims.loc[sims.editor == V.ENSEMBLE, "n_members"] == 2).all()
    assert sims["cell_mse"].notna().all()
    # no edit is 1 in its own ratio by construction (NaN where the unbiased MMD of the unedited
    # cells is <= 0, possible on tiny data)
    ratio = table.loc[table.editor == V.NO_EDIT, "rmmd_z"]
    assert (np.isclose(ratio, 1.0) | ratio.isna()).all() and np.isclose(ratio, 1.0).any()
    single = table[(table.kind == "candidate") & (table.editor != V.ENSEMBLE)]
    assert single["leak_acc"].between(0, 1).all()
    text = (tmp_path / "report.md").read_text()
    assert "## half: choose" in text and "beats within-type shift" in text


def test_effect_slopes_by_hand():
    """slope_shared / slope_type regress the mean change per gene on the true effects c_k, e_ku."""
    task = V.sim_task("sim-interaction", 0, 600, 100)
    V._prepare_pkg_space(task, 0)
    src = task.floors[V.NO_EDIT]
    assert task.true_effects.shape == (100, 2)
    moved = V.score(task, src + task.true_effects @ np.array([0.5, 2.0]), 0)
    assert moved["slope_shared"] == pytest.approx(0.5) and moved["slope_type"] == pytest.approx(2.0)
    still = V.score(task, src, 0)
    assert still["slope_shared"] == 0 and still["slope_type"] == 0 and still["response_share"] == 0
    half_way = src + 0.5 * (task.target_log.mean(0) - src.mean(0))
    assert V.score(task, half_way, 0)["response_share"] == pytest.approx(0.5)
    exact = V.score(task, task.truth_log, 0)  # the exact counterfactuals carry both parts
    assert exact["slope_shared"] > 0.7 and exact["slope_type"] > 0.7
    additive = V.sim_task("sim-additive", 0, 600, 100)
    assert additive.true_effects.shape == (100, 1)


def test_reference_without_the_types_own_effect():
    """ORACLE_SHARED: the exact counterfactual with e_ku = 0 -- the same counts as the truth on the
    genes where the type has no own effect, different elsewhere; its mean change follows c_k, not
    e_ku; the source's own coefficients are left as they were."""
    task = V.sim_task("sim-interaction", 0, 600, 100)
    concept, cell_type = task.name.split(":")[1].split("/")[::-1]
    sim = task.source.uns["simulation"]
    ki = list(map(str, sim["concept_names"])).index(concept)
    ui = list(map(str, sim["cell_type_names"])).index(cell_type)
    own = np.array(sim["concept_cell_type_coef"][ki, ui], copy=True)
    shared_only = V.without_own_effect(task.source, concept, cell_type)
    exact = simulate_counterfactual(task.source, {concept: 1})
    assert (own == 0).any() and (own != 0).any()
    np.testing.assert_array_equal(shared_only.X[:, own == 0], exact.X[:, own == 0])
    assert not np.array_equal(shared_only.X[:, own != 0], exact.X[:, own != 0])
    np.testing.assert_array_equal(np.asarray(sim["concept_cell_type_coef"])[ki, ui], own)  # source untouched
    V._prepare_pkg_space(task, 0)
    ref = V.score(task, task.references[V.ORACLE_SHARED], 0)
    assert ref["slope_shared"] > 0.7 and abs(ref["slope_type"]) < 0.1
    assert 0 < ref["cell_mse"] < V.score(task, task.floors[V.NO_EDIT], 0)["cell_mse"]
    assert V.ORACLE_SHARED not in V.sim_task("sim-additive", 0, 600, 100).references
