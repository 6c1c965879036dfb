"""Group calibration of the count-space edit (``fit(groupby=...)``, :mod:`sccbgm.groups`).

Data: the conftest toy where stim acts differently in each of three cell types (a shared effect
plus a type-specific one, in log rate), with exact counterfactual counts (same uniform draws).
Type 2 is seen only as control in training, so it has no response of its own: it gets the pooled
correction (the common miss of types 0 and 1). Shipped defaults, except fewer epochs (the checks
compare the calibrated and uncalibrated edits of one model).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import counterfactual_mse, make_toy

import sccbgm
from sccbgm.access import lognormalise
from sccbgm.editing import RATE_EPS
from sccbgm.errors import SCCBGMError
from sccbgm.groups import MIN_CELLS

EPOCHS = 30


def _split(adata: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Training cells (the first 1,000, without type2's stimulated ones) and test cells (the rest,
    control only)."""
    held = np.zeros(adata.n_obs, dtype=bool)
    held[1000:] = True  # test cells
    unseen = (adata.obs["cell_type"] == "type2").to_numpy() & (adata.obs["stim"] == 1).to_numpy()
    return adata[~held & ~unseen].copy(), adata[held & (adata.obs["stim"] == 0).to_numpy()].copy()


@pytest.fixture(scope="module")
def data():
    return _split(make_toy(n_cells=1500, n_genes=80, type_effect_sd=0.8))


@pytest.fixture(scope="module")
def model(data):
    return sccbgm.fit(data[0], ["stim"], seed=0, epochs=EPOCHS, groupby="cell_type", progress=False)


def test_calibration_moves_seen_groups_to_their_own_response_and_unseen_ones_by_the_common_miss(data, model):
    train, test = data
    calibrated = sccbgm.edit(model, test, {"stim": 1})
    plain = sccbgm.edit(model, test, {"stim": 1}, group_calibration=False)
    ctype = test.obs["cell_type"].astype(str).to_numpy()
    seen, unseen = ctype != "type2", ctype == "type2"
    assert calibrated.uns["sccbgm_edit"]["group_calibration"] == {
        "groupby": "cell_type", "n_cells": test.n_obs, "n_cells_pooled": int(unseen.sum()),
        "n_cells_unseen_group": 0}
    # the type-specific responses the decoder shares out are recovered on the seen types
    assert counterfactual_mse(calibrated, test, seen) < 0.8 * counterfactual_mse(plain, test, seen)
    # a type seen only as control gets the part of the others' misses they share, which brings it
    # closer to its true counterfactual too (0.319 vs 0.330 here: most of its miss is its own)
    assert counterfactual_mse(calibrated, test, unseen) < counterfactual_mse(plain, test, unseen)
    table = model.group_responses.summary()
    rows = table[(table["from"] == "0") & (table["to"] == "1")].set_index("group")
    assert list(rows["source"]) == ["own", "own", "pooled"]
    assert rows.loc["type2", "n_to"] == 0 and rows.loc["type2", "mean_abs_shift"] > 0
    mu2 = model.group_responses.pooled_mu2[model.group_responses.pairs.index("stim|0|1")]
    assert f"stim 0 -> 1: own response for type0, type1; pooled for type2 (sigma_mu^2 {mu2:.3g})" in (
        model.group_responses.describe())


def test_pooled_correction_recovers_a_response_the_model_misses_in_every_group():
    """Stim shifts all three types alike; after 30 epochs the model reproduces only part of it,
    the same part in each type, so type 2 (never seen stimulated) gets the common miss back."""
    train, test = _split(make_toy(n_cells=1500, n_genes=80, type_effect_sd=0.0))
    test = test[(test.obs["cell_type"] == "type2").to_numpy()].copy()
    model = sccbgm.fit(train, ["stim"], seed=0, epochs=EPOCHS, groupby="cell_type", progress=False)
    calibrated = sccbgm.edit(model, test, {"stim": 1})
    plain = sccbgm.edit(model, test, {"stim": 1}, group_calibration=False)
    assert calibrated.uns["sccbgm_edit"]["group_calibration"]["n_cells_pooled"] == test.n_obs
    cells = np.arange(test.n_obs)
    assert counterfactual_mse(calibrated, test, cells) < 0.8 * counterfactual_mse(plain, test, cells)  # measured 0.097 vs 0.145


def _pooled_by_hand(d: np.ndarray, v: np.ndarray, similarity: np.ndarray | None = None) -> tuple:
    """The pooled correction's pieces by the module docstring's formulas: tau_eta^2, the weights k
    (similarity times precision, summing to 1), dbar, s^2 and sigma_mu^2 (not clipped at 0)."""
    eta2 = max(0.0, ((d - d.mean(0)) ** 2).sum(0).mean() / (len(d) - 1) - v.mean())
    k = (np.ones(len(d)) if similarity is None else similarity) / (eta2 + v.mean(1))
    k = k / k.sum()
    dbar = k @ d
    s2 = (k[:, None] ** 2 * (eta2 + v)).sum(0)
    return eta2, k, dbar, s2, (dbar**2).mean() - s2.mean()


def test_pooled_correction_by_hand_and_where_there_is_nothing_common():
    from sccbgm.groups import pooled_correction

    rng = np.random.default_rng(0)
    n_groups, n_genes = 6, 4000
    v = rng.uniform(0.005, 0.02, (n_groups, n_genes))
    noise = rng.normal(0, np.sqrt(v))
    own = rng.normal(0, 0.1, (n_groups, n_genes))
    # only the groups' own deviations: almost nothing is passed on (sigma_mu^2 is 0 up to its
    # sampling error, 1.3e-4 here against tau_eta^2 = 0.01)
    shift, sd, eta2, mu2 = pooled_correction(own + noise, v)
    assert eta2 == pytest.approx(0.01, rel=0.1) and mu2 < 0.05 * eta2
    assert np.abs(shift).mean() < 0.05 * np.abs(own + noise).mean()
    # plus a miss common to all groups: passed on, shrunk by its precision
    common = rng.normal(0, 0.2, n_genes)
    d = common + own + noise
    shift, sd, eta2, mu2 = pooled_correction(d, v)
    eta2_hand, _, dbar, s2, mu2_hand = _pooled_by_hand(d, v)
    w = mu2_hand / (mu2_hand + s2)
    assert eta2 == pytest.approx(eta2_hand) and mu2 == pytest.approx(mu2_hand)
    assert mu2 == pytest.approx(0.04, rel=0.1)
    np.testing.assert_allclose(shift, w * dbar)
    np.testing.assert_allclose(sd, np.sqrt(w * s2 + eta2_hand))
    assert np.corrcoef(shift, common)[0, 1] > 0.95
    # one measured group cannot tell its own deviation from a common one
    assert not pooled_correction(d[:1], v[:1])[0].any()


def test_pooled_correction_weighs_a_group_measured_on_few_cells_less():
    """Random-effects weights: two of five groups measured on few cells (sampling variance 0.2
    against 0.005) count less, and the common miss is recovered better than by the same
    empirical Bayes over equal weights; with equal variances the weights are equal."""
    from sccbgm.groups import pooled_correction

    rng = np.random.default_rng(2)
    n_genes = 3000
    v = np.full((5, n_genes), 0.005)
    v[:2] = 0.2
    common = rng.normal(0, 0.2, n_genes)
    d = common + rng.normal(0, 0.05, (5, n_genes)) + rng.normal(0, np.sqrt(v))
    shift, _, eta2, _ = pooled_correction(d, v)
    k = 1 / (eta2 + v.mean(1))
    assert k[0] / k[-1] < 0.1  # measured: 0.035 (eta2 0.0021)
    dbar, s2 = d.mean(0), (eta2 + v.mean(0)) / 5  # equal weights, by hand
    mu2 = (dbar**2).mean() - s2.mean()
    equal = mu2 / (mu2 + s2) * dbar
    assert np.mean((shift - common) ** 2) < 0.5 * np.mean((equal - common) ** 2)  # measured 0.0023 vs 0.012
    same = np.full_like(v, 0.01)
    np.testing.assert_allclose(pooled_correction(d, same)[0], pooled_correction(d, same, np.full(5, 3.0))[0])


def test_similarity_weights_follow_groups_that_miss_alike():
    from sccbgm.groups import pooled_bandwidth, pooled_correction, similarity_weights

    rng = np.random.default_rng(1)
    n_genes = 2000
    # two families of three measured groups (profiles 10 apart, 1 within), each family with its
    # own common miss; the target group belongs to family A
    profiles = np.array([[0.0, 0], [1, 0], [0, 1], [10, 0], [11, 0], [10, 1]])
    miss_a, miss_b = rng.normal(0, 0.3, n_genes), rng.normal(0, 0.3, n_genes)
    v = np.full((6, n_genes), 0.01)
    d = np.stack([miss_a] * 3 + [miss_b] * 3) + rng.normal(0, 0.1, (6, n_genes))
    bandwidth = pooled_bandwidth(profiles, d)
    assert bandwidth is not None  # the family predicts a group's miss better than all groups do
    target = np.array([0.5, 0.5])
    weights = similarity_weights(profiles, target, bandwidth)
    shift, sd, eta2, mu2 = pooled_correction(d, v, weights)
    uniform = pooled_correction(d, v)[0]
    assert np.mean((shift - miss_a) ** 2) < 0.2 * np.mean((uniform - miss_a) ** 2)
    # by hand: similarity times precision (equal here: v is), the mean and its variance
    eta2_hand, _, dbar, s2, mu2_hand = _pooled_by_hand(d, v, weights)
    assert eta2 == pytest.approx(eta2_hand) and mu2 == pytest.approx(mu2_hand)
    np.testing.assert_allclose(shift, mu2_hand / (mu2_hand + s2) * dbar)
    np.testing.assert_allclose(sd, np.sqrt(mu2_hand / (mu2_hand + s2) * s2 + eta2_hand))
    # equal weights are the unweighted correction
    np.testing.assert_allclose(pooled_correction(d, v, np.ones(6))[0], uniform)
    # misses unrelated to the profiles: at most a wide bandwidth (here 2 x the median distance,
    # weights 0.86-1), so about the unweighted mean
    d_unrelated = rng.normal(0, 0.3, n_genes) + rng.normal(0, 0.3, (6, n_genes))
    wide = pooled_bandwidth(profiles, d_unrelated)
    weighted = pooled_correction(d_unrelated, v, None if wide is None else similarity_weights(profiles, target, wide))[0]
    plain = pooled_correction(d_unrelated, v)[0]
    assert np.mean((weighted - plain) ** 2) < 0.01 * np.mean(plain**2)
    # two groups cannot tell: unweighted
    assert pooled_bandwidth(profiles[:2], d[:2]) is None


def _misses_by_hand(model, train: ad.AnnData, groupby: str, groups: list[str]) -> tuple[dict, dict]:
    """Per group: the miss d (observed minus the model's stim 0 -> 1 response, log rate) and its
    sampling variance v, from the module docstring's formulas."""
    ts = model.transform.target_sum
    x = np.asarray(train.X, dtype=np.float64)
    norm = x / x.sum(1, keepdims=True) * ts
    label = train.obs[groupby].astype(str).to_numpy()
    stim = train.obs["stim"].to_numpy()
    d, v = {}, {}
    for g in groups:
        a, b = norm[(label == g) & (stim == 0)], norm[(label == g) & (stim == 1)]
        assert len(a) >= MIN_CELLS and len(b) >= MIN_CELLS
        observed = np.log((b.mean(0) + RATE_EPS) / (a.mean(0) + RATE_EPS))
        v[g] = b.var(0, ddof=1) / (len(b) * (b.mean(0) + RATE_EPS) ** 2) + a.var(0, ddof=1) / (
            len(a) * (a.mean(0) + RATE_EPS) ** 2)
        cells = train[(label == g) & (stim == 0)]
        # the calibration measures the model's own edit, each cell with its own rate ratio
        after = np.expm1(np.asarray(sccbgm.edit(model, cells, {"stim": 1}, group_calibration=False,
                                                share_response=False).X, np.float64))
        d[g] = observed - np.log((after.mean(0) + RATE_EPS) / (a.mean(0) + RATE_EPS))
    return d, v


def test_stored_correction_is_the_empirical_bayes_shrinkage_by_hand(data, model):
    train, _ = data
    resp = model.group_responses
    p = resp.pairs.index("stim|0|1")
    d, v = _misses_by_hand(model, train, "cell_type", ["type0", "type1"])
    tau2 = max(0.0, np.mean([d[g] ** 2 for g in d]) - np.mean([v[g] for g in v]))
    assert tau2 > 0 and resp.tau2[p] == pytest.approx(tau2, rel=1e-3)
    for g in ("type0", "type1"):
        w = tau2 / (tau2 + v[g])
        gi = resp.groups.index(g)
        np.testing.assert_allclose(resp.shift[p, gi], w * d[g], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(resp.sd[p, gi], np.sqrt(w * v[g]), rtol=1e-3, atol=1e-4)
    # type2, seen only as control: the common miss of type0 and type1, weighted by their
    # precision and shrunk (module docstring; two measured groups: no similarity weights)
    assert resp.pooled_bandwidth[p] is None
    dd, vv = np.stack([d["type0"], d["type1"]]), np.stack([v["type0"], v["type1"]])
    _, _, dbar, s2, mu2 = _pooled_by_hand(dd, vv)
    assert mu2 > 0 and resp.pooled_mu2[p] == pytest.approx(mu2, rel=1e-2)
    w = mu2 / (mu2 + s2)
    np.testing.assert_allclose(resp.shift[p, resp.groups.index("type2")], w * dbar, rtol=1e-2, atol=1e-4)


def test_similarity_weighted_correction_of_a_fitted_model_by_hand(tmp_path):
    """Six groups (each cell type of the type-specific toy split in two at random), the
    stimulated cells of one left out: its correction weights the five measured groups by the
    distance between the groups' mean model inputs (control cells), with the bandwidth chosen by
    leave one group out."""
    from sccbgm.groups import pooled_bandwidth, pooled_correction, similarity_weights

    toy = make_toy(n_cells=1500, n_genes=80, type_effect_sd=0.8)
    train = toy[:1000].copy()
    half = np.random.default_rng(7).integers(0, 2, train.n_obs)  # not 0: the toy drew its types with seed 0
    train.obs["cluster"] = [f"{t}_{h}" for t, h in zip(train.obs["cell_type"].astype(str), half, strict=True)]
    train = train[~((train.obs["cluster"] == "type0_0") & (train.obs["stim"] == 1)).to_numpy()].copy()
    model = sccbgm.fit(train, ["stim"], seed=0, epochs=EPOCHS, groupby="cluster", progress=False)
    resp = model.group_responses
    p = resp.pairs.index("stim|0|1")
    measured = [g for g in resp.groups if g != "type0_0"]
    assert resp.source[p, resp.groups.index("type0_0")] == 2  # pooled
    assert f"pooled for type0_0 (sigma_mu^2 {resp.pooled_mu2[p]:.3g}, weighted by similarity)" in resp.describe()[
        resp.pairs.index("stim|0|1")]
    d, v = _misses_by_hand(model, train, "cluster", measured)
    dd, vv = np.stack([d[g] for g in measured]), np.stack([v[g] for g in measured])
    label, ctrl = train.obs["cluster"].astype(str).to_numpy(), (train.obs["stim"] == 0).to_numpy()
    x = np.asarray(train.X, dtype=np.float64)
    features = model.transform.features(lognormalise(x, model.transform.target_sum))
    profile = {g: features[(label == g) & ctrl].mean(0) for g in resp.groups}
    profiles = np.stack([profile[g] for g in measured])
    bandwidth = pooled_bandwidth(profiles, dd)
    assert bandwidth is not None  # clusters of one type share its own stim effect: they miss alike
    assert resp.pooled_bandwidth[p] == pytest.approx(bandwidth, rel=1e-3)
    sccbgm.save(model, tmp_path / "m.sccbgm")
    assert sccbgm.load(tmp_path / "m.sccbgm").group_responses.pooled_bandwidth == resp.pooled_bandwidth
    similarity = similarity_weights(profiles, profile["type0_0"], bandwidth)
    assert similarity[measured.index("type0_1")] == similarity.max()  # the other half of its own type
    _, k, dbar, s2, mu2 = _pooled_by_hand(dd, vv, similarity)  # times each group's precision
    assert k[measured.index("type0_1")] == k.max()  # weighs most
    np.testing.assert_allclose(resp.shift[p, resp.groups.index("type0_0")], mu2 / (mu2 + s2) * dbar,
                               rtol=1e-2, atol=1e-3)
    # and it brings type0_0's held-out control cells closer to their exact counterfactual than
    # the unweighted correction does (measured 0.028 vs 0.039; the model's own edit 0.047)
    import copy

    test = toy[1000:][((toy.obs["cell_type"] == "type0") & (toy.obs["stim"] == 0)).to_numpy()[1000:]].copy()
    test.obs["cluster"] = "type0_0"
    unweighted = copy.copy(model)
    unweighted.group_responses = copy.deepcopy(resp)
    unweighted.group_responses.shift[p, resp.groups.index("type0_0")] = pooled_correction(dd, vv)[0]
    cells = np.arange(test.n_obs)
    errors = [counterfactual_mse(sccbgm.edit(m, test, {"stim": 1}, group_calibration=gc), test, cells)
              for m, gc in ((model, None), (unweighted, None), (model, False))]
    assert errors[0] < 0.85 * errors[1] and errors[1] < errors[2]


def test_calibration_survives_save_and_load(data, model, tmp_path):
    import json

    path = tmp_path / "m.sccbgm"
    sccbgm.save(model, path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(json.loads(f.read(n))["__metadata__"]["sccbgm"])
    # v4: the pooled correction of type2 is in the file (a v3 reader would drop it, so it must refuse)
    assert header["format_version"] == 4 and header["group_responses"]["groupby"] == "cell_type"
    loaded = sccbgm.load(path)
    np.testing.assert_array_equal(loaded.group_responses.source, model.group_responses.source)
    test = data[1][:50]
    np.testing.assert_array_equal(sccbgm.edit(loaded, test, {"stim": 1}).X, sccbgm.edit(model, test, {"stim": 1}).X)
    # without any pooled correction the calibration is still written as v3
    import copy

    own_only = copy.copy(model)
    own_only.group_responses = copy.deepcopy(model.group_responses)
    pooled = own_only.group_responses.source == 2
    own_only.group_responses.source[pooled] = 0
    own_only.group_responses.shift[pooled] = 0
    assert own_only.format_version() == 3


def test_group_calibration_errors(data, model):
    train, test = data
    with pytest.raises(SCCBGMError, match="groupby must name an obs column"):
        sccbgm.fit(train, ["stim"], epochs=1, groupby="tissue", progress=False)
    lognorm = train.copy()
    lognorm.X = lognormalise(np.asarray(lognorm.X, dtype=np.float64), 1e4).astype(np.float32)
    with pytest.raises(SCCBGMError, match="raw counts"):
        sccbgm.fit(lognorm, ["stim"], epochs=1, groupby="cell_type", progress=False)
    with pytest.raises(SCCBGMError, match="count_edit=None"):
        sccbgm.edit(model, test, {"stim": 1}, count_edit=None, group_calibration=True)
    plain = sccbgm.fit(train, ["stim"], epochs=1, n_members=1, progress=False)
    with pytest.raises(SCCBGMError, match="fitted with groupby"):
        sccbgm.edit(plain, test, {"stim": 1}, group_calibration=True)
    # without the group column the cells keep the model's edit, and the record says so
    bare = test.copy()
    del bare.obs["cell_type"]
    edited = sccbgm.edit(model, bare, {"stim": 1})
    assert edited.uns["sccbgm_edit"]["group_calibration"]["n_cells"] == 0
    assert edited.uns["sccbgm_edit"]["shared_response"]["n_cells"] == 0  # nor is a response shared
    np.testing.assert_array_equal(edited.X, sccbgm.edit(model, test, {"stim": 1}, group_calibration=False,
                                                        share_response=False).X)


def test_a_label_unseen_at_fit_or_missing_keeps_the_models_edit(data, model):
    _, test = data
    ctype = test.obs["cell_type"].astype(str).to_numpy()
    calibrated = sccbgm.edit(model, test, {"stim": 1})
    plain = sccbgm.edit(model, test, {"stim": 1}, group_calibration=False)
    # a cell without a label shares no response either (an unseen label still does, by label)
    plain_own = sccbgm.edit(model, test, {"stim": 1}, group_calibration=False, share_response=False)
    relabelled = test.copy()
    labels = relabelled.obs["cell_type"].astype(object).to_numpy()
    labels[ctype == "type2"] = "type9"  # never seen at fit
    labels[ctype == "type0"] = np.nan
    relabelled.obs["cell_type"] = labels
    edited = sccbgm.edit(model, relabelled, {"stim": 1})
    kept = ctype != "type1"
    np.testing.assert_array_equal(edited.X[ctype == "type2"], plain.X[ctype == "type2"])
    np.testing.assert_array_equal(edited.X[ctype == "type0"], plain_own.X[ctype == "type0"])
    # (the shared mean is summed over other chunks of cells here: equal to float32 rounding)
    np.testing.assert_allclose(edited.X[~kept], calibrated.X[~kept], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(calibrated.X[kept], plain.X[kept])
    assert edited.uns["sccbgm_edit"]["group_calibration"] == {
        "groupby": "cell_type", "n_cells": int((~kept).sum()), "n_cells_pooled": 0,
        "n_cells_unseen_group": int((ctype == "type2").sum())}


def test_labels_are_read_as_the_model_reads_them():
    from sccbgm.concepts import ConceptSpec
    from sccbgm.groups import concept_states, group_index

    spec = ConceptSpec.from_obs(pd.DataFrame({"b": [0, 1, 0, 1], "c": pd.Categorical(["ctrl", "STIM"] * 2)}),
                                ["b", "c"])
    obs = pd.DataFrame({"b": pd.Series([0, 1.0, True, False, np.nan, 2, "1"], dtype=object),
                        "c": pd.Categorical(["ctrl", "STIM", None, "other", "ctrl", "ctrl", "ctrl"])})
    states = concept_states(spec, *spec.encode(obs, require=False, unknown_as_missing=True))
    assert states["b"][0] == ["0", "1"]
    np.testing.assert_array_equal(states["b"][1], [0, 1, 1, 0, -1, -1, 1])
    names, idx = states["c"]
    np.testing.assert_array_equal([names[i] if i >= 0 else None for i in idx],
                                  ["ctrl", "STIM", None, None, "ctrl", "ctrl", "ctrl"])
    np.testing.assert_array_equal(group_index(obs["c"], ["ctrl", "STIM"]), [0, 1, -1, -1, 0, 0, 0])
