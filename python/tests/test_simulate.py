"""Tests of the synthetic data process (paper appendix C): Eq. 40-43, C.4 noise, C.6 splits."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import sccbgm
from sccbgm.errors import SCCBGMError
from sccbgm.simulation import (
    PRESETS,
    InterventionTask,
    SimulationParams,
    choose_intervention_tasks,
    corrupt_concepts,
    intervention_split,
    make_params,
    poisson_quantile,
    simulate,
    simulate_counterfactual,
    true_log_rate,
)

CONCEPTS = [f"concept_{k}" for k in range(5)]


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    return simulate("synthetic1", n_cells=1200, n_genes=150, seed=3)


def _snapshot(adata: ad.AnnData) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return adata.obs.copy(), adata.X.copy(), adata.uns["simulation"]["concepts"].copy()


def _unchanged(adata: ad.AnnData, snapshot: tuple) -> bool:
    obs, x, concepts = snapshot
    return (
        adata.obs.equals(obs)
        and np.array_equal(adata.X, x)
        and np.array_equal(adata.uns["simulation"]["concepts"], concepts)
    )


# ----------------------------------------------------------------------------- layout, presets
def test_layout(data: ad.AnnData) -> None:
    assert isinstance(data.X, np.ndarray) and data.X.dtype == np.int32
    assert data.shape == (1200, 150)
    assert list(data.obs.columns) == ["batch", "tissue", "cell_type", *CONCEPTS]
    assert list(data.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(data.var_names[:2]) == ["gene_0", "gene_1"]
    for column, prefix, n in (("batch", "batch", 2), ("tissue", "tissue", 3),
                              ("cell_type", "celltype", 4)):
        assert isinstance(data.obs[column].dtype, pd.CategoricalDtype)
        assert list(data.obs[column].cat.categories) == [f"{prefix}_{i}" for i in range(n)]
    for name in CONCEPTS:
        assert data.obs[name].dtype == np.int64
        assert set(np.unique(data.obs[name])) <= {0, 1}
    sim = data.uns["simulation"]
    np.testing.assert_array_equal(sim["concepts"], data.obs[CONCEPTS].to_numpy())

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "biufU"
        return isinstance(value, (str, int, float, np.integer, np.floating))

    assert plain(dict(sim))


def test_presets_match_table_s1() -> None:
    shared = PRESETS["synthetic1"]
    assert (shared.n_cells, shared.n_genes, shared.n_cell_types, shared.n_tissues,
            shared.n_batches, shared.n_concepts) == (20_000, 5_000, 4, 3, 2, 5)
    assert (shared.baseline_low, shared.baseline_high) == (1.0, 5.0)
    assert (shared.batch_effect_sd, shared.tissue_effect_sd, shared.cell_type_effect_sd) == (
        0.06, 0.05, 0.04)
    assert (shared.library_sd_low, shared.library_sd_high) == (0.01, 0.03)
    assert (shared.zero_inflation_alpha, shared.zero_inflation_beta) == (1.0, 0.8)
    assert (shared.noise_sd, shared.concept_sd) == (0.01, 0.08)
    assert (PRESETS["synthetic2"].noise_sd, PRESETS["synthetic2"].concept_sd) == (0.08, 0.08)
    assert (PRESETS["synthetic3"].noise_sd, PRESETS["synthetic3"].concept_sd) == (0.01, 0.02)
    small = simulate("synthetic2", n_cells=30, n_genes=20, n_concepts=3, n_tissues=2, seed=1)
    assert small.shape == (30, 20)
    assert small.uns["simulation"]["params"]["noise_sd"] == 0.08
    assert small.uns["simulation"]["params"]["n_tissues"] == 2
    assert small.uns["simulation"]["preset"] == "synthetic2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "synthetic4"}, "unknown preset"),
        ({"n_cells": 0}, "n_cells"),
        ({"n_genes": 2.5}, "n_genes"),
        ({"n_concepts": True}, "n_concepts"),
        ({"noise_sd": -0.1}, "noise_sd"),
        ({"baseline_low": 6.0}, "baseline_low"),
        ({"concept_concentration": 0.0}, "concept_concentration"),
        ({"library_sd": 0.1}, "unknown simulation parameter"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(SCCBGMError, match=message):
        simulate(**{"n_cells": 10, "n_genes": 5, **kwargs})


def test_make_params() -> None:
    params = make_params("synthetic3", n_cells=100, n_genes=None)
    assert isinstance(params, SimulationParams)
    assert (params.n_cells, params.n_genes, params.concept_sd) == (100, 5_000, 0.02)


def test_same_seed_same_data() -> None:
    a = simulate("synthetic1", n_cells=300, n_genes=40, seed=11)
    b = simulate("synthetic1", n_cells=300, n_genes=40, seed=11)
    c = simulate("synthetic1", n_cells=300, n_genes=40, seed=12)
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key, value in a.uns["simulation"].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b.uns["simulation"][key])
    assert not np.array_equal(a.X, c.X)


def test_package_root_exposes_simulator() -> None:
    adata = sccbgm.simulate("synthetic1", n_cells=20, n_genes=10, seed=0)
    np.testing.assert_array_equal(adata.X, simulate("synthetic1", n_cells=20, n_genes=10).X)
    assert sccbgm.simulate_counterfactual is simulate_counterfactual


# ----------------------------------------------------------------------------- Eq. 40-42
def test_poisson_quantile_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    rate = np.exp(rng.uniform(-3.0, 7.0, 20_000))
    uniform = rng.random(20_000)
    expected = stats.poisson.ppf(uniform, rate)
    np.testing.assert_array_equal(poisson_quantile(uniform, rate), expected)
    assert poisson_quantile(np.zeros(3), np.array([0.1, 50.0, 1e4])).tolist() == [0, 0, 0]
    increasing = poisson_quantile(np.full(50, 0.3), np.linspace(0.5, 60.0, 50))
    assert (np.diff(increasing) >= 0).all()


def test_counts_are_inverse_cdf_of_stored_streams(data: ad.AnnData) -> None:
    """x_ij = Q(delta_ij; lambda_ij) with delta from the documented per-chunk stream (Eq. 41)."""
    sim = data.uns["simulation"]
    rows = int(sim["rng_chunk_size"])
    stream = np.random.SeedSequence(int(sim["seed"]), spawn_key=(3, 0))
    delta = np.random.default_rng(stream).random((rows, data.n_vars))
    rate = np.exp(true_log_rate(data, cells=np.arange(rows)))
    np.testing.assert_array_equal(data.X[:rows], poisson_quantile(delta, rate))


def test_log_rate_decomposition(data: ad.AnnData) -> None:
    """log lambda - eps equals w + l + gamma + omega + tau + v c (Eq. 40); eps ~ N(0, 0.01)."""
    sim = data.uns["simulation"]
    structured = (
        sim["baseline"][None, :]
        + sim["library_size"][:, None]
        + sim["batch_effect"][sim["batch_index"]]
        + sim["tissue_effect"][sim["tissue_index"]]
        + sim["cell_type_effect"][sim["cell_type_index"]]
        + sim["concepts"].astype(float) @ sim["concept_coef"]
    )
    eps = true_log_rate(data) - structured
    assert abs(eps.std() / 0.01 - 1.0) < 0.02
    assert abs(eps.mean()) < 1e-3
    assert (sim["library_sd"] >= 0.01).all() and (sim["library_sd"] <= 0.03).all()
    assert (sim["baseline"] >= 1.0).all() and (sim["baseline"] <= 5.0).all()
    np.testing.assert_allclose(sim["tissue_proportions"].sum(axis=1), 1.0)
    assert sim["tissue_proportions"].shape == (2, 3)
    assert sim["cell_type_proportions"].shape == (3, 4)
    assert sim["concept_probability"].shape == (4, 5)


def test_gene_means_match_rates() -> None:
    adata = simulate("synthetic2", n_cells=2000, n_genes=200, seed=5)
    rate = np.exp(true_log_rate(adata))
    n = adata.n_obs
    z = (adata.X.mean(axis=0) - rate.mean(axis=0)) / np.sqrt(rate.mean(axis=0) / n)
    assert np.abs(z).max() < 5.0
    assert 0.75 < z.std() < 1.25


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.8), (4.0, 1.0)])
def test_concept_coefficient_sparsity(alpha: float, beta: float) -> None:
    adata = simulate(
        "synthetic1", n_cells=10, n_genes=2000, n_concepts=200, seed=2,
        zero_inflation_alpha=alpha, zero_inflation_beta=beta,
    )
    sim = adata.uns["simulation"]
    coef, zero_prob = sim["concept_coef"], sim["zero_inflation"]
    n_genes = coef.shape[1]
    zero_fraction = (coef == 0).mean(axis=1)
    sd = np.sqrt(zero_prob * (1 - zero_prob) / n_genes)
    assert (np.abs(zero_fraction - zero_prob) <= 5 * sd + 2 / n_genes).all()
    beta_mean = alpha / (alpha + beta)
    beta_sd = np.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)))
    assert abs(zero_prob.mean() - beta_mean) < 4 * beta_sd / np.sqrt(zero_prob.size)
    assert abs((coef == 0).mean() - beta_mean) < 4 * beta_sd / np.sqrt(zero_prob.size)
    assert stats.kstest(zero_prob, stats.beta(alpha, beta).cdf).pvalue > 1e-3
    nonzero = coef[coef != 0]
    assert abs(nonzero.std() / 0.08 - 1.0) < 0.03


# ----------------------------------------------------------------------------- Eq. 43
def test_unchanged_concepts_reproduce_counts(data: ad.AnnData) -> None:
    snapshot = _snapshot(data)
    np.testing.assert_array_equal(simulate_counterfactual(data, {}).X, data.X)
    current = data.obs["concept_1"].to_numpy()
    same = simulate_counterfactual(data, {"concept_1": current})
    np.testing.assert_array_equal(same.X, data.X)
    pd.testing.assert_frame_equal(same.obs, data.obs)
    picks = np.array([900, 3, 511, 4, 1199])
    np.testing.assert_array_equal(simulate_counterfactual(data, {}, cells=picks).X, data.X[picks])
    names = data.obs_names[picks[::-1]]
    by_name = simulate_counterfactual(data, {}, cells=names)
    assert list(by_name.obs_names) == list(names)
    np.testing.assert_array_equal(by_name.X, data.X[picks[::-1]])
    mask = data.obs["cell_type"].to_numpy() == "celltype_1"
    np.testing.assert_array_equal(simulate_counterfactual(data, {}, cells=mask).X, data.X[mask])
    subset = data[::7].copy()
    np.testing.assert_array_equal(simulate_counterfactual(subset, {}).X, subset.X)
    assert _unchanged(data, snapshot)


def test_concept_change_acts_only_through_coefficients(data: ad.AnnData) -> None:
    k = 2
    name = f"concept_{k}"
    off = data.obs[name].to_numpy() == 0
    coef = data.uns["simulation"]["concept_coef"][k]
    edited = simulate_counterfactual(data, {name: 1}, cells=off)
    assert (edited.obs[name] == 1).all()
    pd.testing.assert_frame_equal(edited.obs.drop(columns=name), data.obs[off].drop(columns=name))
    diff = edited.X.astype(np.int64) - data.X[off]
    assert (diff[:, coef == 0] == 0).all()
    assert (diff[:, coef > 0] >= 0).all() and (diff[:, coef < 0] <= 0).all()
    strong = np.abs(coef) > 0.1
    assert strong.sum() > 5
    assert (np.sign(diff[:, strong].mean(axis=0)) == np.sign(coef[strong])).all()
    rate_shift = np.exp(true_log_rate(data, cells=off, set={name: 1})) - np.exp(
        true_log_rate(data, cells=off)
    )
    assert np.corrcoef(diff.mean(axis=0), rate_shift.mean(axis=0))[0, 1] > 0.95
    log_shift = true_log_rate(data, cells=off, set={name: 1}) - true_log_rate(data, cells=off)
    np.testing.assert_allclose(log_shift, np.broadcast_to(coef, log_shift.shape), atol=1e-12)
    on = ~off
    np.testing.assert_array_equal(
        simulate_counterfactual(data, {name: 1}, cells=on).X, data.X[on]
    )


def test_counterfactual_of_counterfactual(data: ad.AnnData) -> None:
    original = data.obs["concept_0"].to_numpy()
    flipped = simulate_counterfactual(data, {"concept_0": 1 - original})
    np.testing.assert_array_equal(flipped.uns["simulation"]["concepts"][:, 0], 1 - original)
    np.testing.assert_array_equal(simulate_counterfactual(flipped, {}).X, flipped.X)
    back = simulate_counterfactual(flipped, {"concept_0": original})
    np.testing.assert_array_equal(back.X, data.X)


def test_h5ad_round_trip_keeps_counterfactuals(data: ad.AnnData, tmp_path) -> None:
    noisy, _ = corrupt_concepts(data, "missing", 0)
    path = tmp_path / "sim.h5ad"
    noisy.write_h5ad(path)
    loaded = ad.read_h5ad(path)
    np.testing.assert_array_equal(loaded.X, data.X)
    np.testing.assert_array_equal(simulate_counterfactual(loaded, {}).X, data.X)
    expected = simulate_counterfactual(data, {"concept_3": 1}, cells=np.arange(0, 1200, 5))
    got = simulate_counterfactual(loaded, {"concept_3": 1}, cells=np.arange(0, 1200, 5))
    np.testing.assert_array_equal(got.X, expected.X)


@pytest.mark.parametrize(
    ("setting", "cells", "message"),
    [
        ({"concept_9": 1}, None, "unknown concept"),
        ({"concept_0": 2}, None, "only 0 or 1"),
        ({"concept_0": [1, 0]}, None, "one value per selected cell"),
        ({}, ["cell_0", "nope"], "not found"),
        ({}, np.array([0, 5000]), r"\[0, 1200\)"),
        ({}, np.ones(3, dtype=bool), "mask has length"),
    ],
)
def test_counterfactual_validation(data: ad.AnnData, setting, cells, message: str) -> None:
    with pytest.raises(SCCBGMError, match=message):
        simulate_counterfactual(data, setting, cells=cells)


def test_counterfactual_needs_simulation_record() -> None:
    with pytest.raises(SCCBGMError, match="uns"):
        simulate_counterfactual(ad.AnnData(np.zeros((2, 2), dtype=np.float32)), {})


# ----------------------------------------------------------------------------- C.4 noise
def test_missing(data: ad.AnnData) -> None:
    snapshot = _snapshot(data)
    noisy, names = corrupt_concepts(data, "missing", 3, protect=["concept_0"], seed=1)
    assert _unchanged(data, snapshot)
    assert len(names) == 2 and "concept_0" in names
    dropped = sorted(set(CONCEPTS) - set(names))
    assert not set(dropped) & set(noisy.obs.columns)
    pd.testing.assert_frame_equal(noisy.obs, data.obs.drop(columns=dropped))
    np.testing.assert_array_equal(noisy.X, data.X)
    assert list(noisy.uns["concept_corruption"]["columns"]) == dropped
    current = data.obs[dropped[0]].to_numpy()
    same = simulate_counterfactual(noisy, {dropped[0]: current})
    np.testing.assert_array_equal(same.X, data.X)


def test_irrelevant(data: ad.AnnData) -> None:
    snapshot = _snapshot(data)
    noisy, names = corrupt_concepts(data, "irrelevant", 3, protect=["concept_0"], seed=1)
    assert _unchanged(data, snapshot)
    added = ["irrelevant_0", "irrelevant_1", "irrelevant_2"]
    assert names == CONCEPTS + added
    pd.testing.assert_frame_equal(noisy.obs[list(data.obs.columns)], data.obs)
    values = noisy.obs[added].to_numpy()
    assert set(np.unique(values)) == {0, 1}
    assert (np.abs(values.mean(axis=0) - 0.5) < 0.07).all()


@pytest.mark.parametrize("p_flip", [0.2, 0.5])
def test_incorrect(data: ad.AnnData, p_flip: float) -> None:
    snapshot = _snapshot(data)
    noisy, names = corrupt_concepts(
        data, "incorrect", 3, protect=["concept_4"], p_flip=p_flip, seed=2
    )
    assert _unchanged(data, snapshot)
    assert names == CONCEPTS
    flipped = (noisy.obs[CONCEPTS].to_numpy() != data.obs[CONCEPTS].to_numpy()).mean(axis=0)
    changed = [name for name, rate in zip(CONCEPTS, flipped, strict=True) if rate > 0]
    assert changed == list(noisy.uns["concept_corruption"]["columns"])
    assert len(changed) == 3 and "concept_4" not in changed
    sd = np.sqrt(p_flip * (1 - p_flip) / data.n_obs)
    assert (np.abs(flipped[flipped > 0] - p_flip) < 5 * sd).all()
    assert set(np.unique(noisy.obs[CONCEPTS].to_numpy())) <= {0, 1}
    pd.testing.assert_frame_equal(
        noisy.obs.drop(columns=changed), data.obs.drop(columns=changed)
    )


def test_duplicate(data: ad.AnnData) -> None:
    snapshot = _snapshot(data)
    noisy, names = corrupt_concepts(data, "duplicate", 4, protect=["concept_1"], seed=0)
    assert _unchanged(data, snapshot)
    copies = [f"{n}_dup" for n in CONCEPTS if n != "concept_1"]
    assert names == CONCEPTS + copies
    for copy_name in copies:
        np.testing.assert_array_equal(noisy.obs[copy_name], data.obs[copy_name[:-4]])
    pd.testing.assert_frame_equal(noisy.obs[list(data.obs.columns)], data.obs)


def test_corruptions_chain_and_level_zero(data: ad.AnnData) -> None:
    clean, names = corrupt_concepts(data, "incorrect", 0)
    assert names == CONCEPTS
    pd.testing.assert_frame_equal(clean.obs, data.obs)
    once, names = corrupt_concepts(data, "duplicate", 1, protect="concept_0", seed=4)
    twice, names2 = corrupt_concepts(once, "missing", 2, concepts=names, protect=["concept_0"])
    assert len(names2) == len(names) - 2 and "concept_0" in names2


@pytest.mark.parametrize(
    ("kind", "level", "kwargs", "message"),
    [
        ("noisy", 1, {}, "unknown corruption kind"),
        ("missing", -1, {}, "level"),
        ("missing", 1.5, {}, "level"),
        ("missing", 5, {"protect": ["concept_0"]}, "exceeds"),
        ("duplicate", 1, {"protect": ["concept_7"]}, "protected"),
        ("incorrect", 1, {"p_flip": 1.5}, "p_flip"),
        ("incorrect", 1, {"concepts": ["nope"]}, "not found"),
    ],
)
def test_corruption_validation(data: ad.AnnData, kind, level, kwargs, message) -> None:
    with pytest.raises(SCCBGMError, match=message):
        corrupt_concepts(data, kind, level, **kwargs)


# ----------------------------------------------------------------------------- C.6 splits
def test_choose_intervention_tasks(data: ad.AnnData) -> None:
    tasks = choose_intervention_tasks(data, n_tasks=5, seed=0, min_cells=20)
    assert tasks == choose_intervention_tasks(data, n_tasks=5, seed=0, min_cells=20)
    assert len(set(tasks)) == 5
    for task in tasks:
        in_type = data.obs["cell_type"] == task.cell_type
        n_on = int(data.obs.loc[in_type, task.concept].sum())
        assert n_on >= 20 and int(in_type.sum()) - n_on >= 40
    with pytest.raises(SCCBGMError, match="cannot choose"):
        choose_intervention_tasks(data, n_tasks=21)


def test_intervention_split(data: ad.AnnData) -> None:
    snapshot = _snapshot(data)
    task = choose_intervention_tasks(data, n_tasks=1, seed=7)[0]
    split = intervention_split(data, task, seed=1)
    assert _unchanged(data, snapshot)
    assert split.task == task
    obs = data.obs
    held_out = (obs["cell_type"] == task.cell_type) & (obs[task.concept] == 1)
    off = (obs["cell_type"] == task.cell_type) & (obs[task.concept] == 0)
    train = split.train.obs
    assert not ((train["cell_type"] == task.cell_type) & (train[task.concept] == 1)).any()
    truth = split.train.uns["simulation"]["concepts"]
    index = pd.Index(split.train.uns["simulation"]["cell_names"]).get_indexer(train.index)
    in_u = (train["cell_type"] == task.cell_type).to_numpy()
    assert not truth[index[in_u], CONCEPTS.index(task.concept)].any()
    assert set(train.index).isdisjoint(split.intervene.obs_names)
    assert set(train.index) | set(split.intervene.obs_names) == set(obs.index[~held_out])
    assert split.intervene.n_obs == int(off.sum()) // 2
    assert (split.intervene.obs[task.concept] == 0).all()
    assert list(split.test.obs_names) == list(split.intervene.obs_names)
    assert (split.test.obs[task.concept] == 1).all()
    pd.testing.assert_frame_equal(
        split.test.obs.drop(columns=task.concept), split.intervene.obs.drop(columns=task.concept)
    )
    expected = simulate_counterfactual(data, {task.concept: 1}, cells=split.intervene.obs_names)
    np.testing.assert_array_equal(split.test.X, expected.X)
    coef = data.uns["simulation"]["concept_coef"][CONCEPTS.index(task.concept)]
    np.testing.assert_array_equal(split.test.X[:, coef == 0], split.intervene.X[:, coef == 0])
    again = intervention_split(data, task, seed=1)
    assert list(again.intervene.obs_names) == list(split.intervene.obs_names)
    np.testing.assert_array_equal(
        simulate_counterfactual(split.intervene, {}).X, split.intervene.X
    )


def test_split_validation(data: ad.AnnData) -> None:
    with pytest.raises(SCCBGMError, match="unknown cell type"):
        intervention_split(data, InterventionTask("celltype_9", "concept_0"))
    with pytest.raises(SCCBGMError, match="unknown concept"):
        intervention_split(data, InterventionTask("celltype_0", "concept_9"))
    with pytest.raises(SCCBGMError, match="InterventionTask"):
        intervention_split(data, ("celltype_0", "concept_0"))


def test_eligible_tasks_are_what_choose_samples_from(data: ad.AnnData) -> None:
    from sccbgm.simulation import eligible_intervention_tasks

    eligible = eligible_intervention_tasks(data, min_cells=5)
    chosen = choose_intervention_tasks(data, n_tasks=len(eligible), seed=3, min_cells=5)
    assert sorted(chosen, key=str) == sorted(eligible, key=str)
    ct = data.obs["cell_type"].astype(str).to_numpy()
    for task in eligible:
        on = data.obs[task.concept].to_numpy()[ct == task.cell_type]
        assert (on == 1).sum() >= 5 and (on == 0).sum() >= 10
