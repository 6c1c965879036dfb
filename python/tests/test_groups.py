"""Group calibration of the count-space edit (``fit(groupby=...)``, :mod:`sccbgm.groups`).

Data: the conftest toy where stim acts differently in each of three cell types (a shared effect
plus a type-specific one, in log rate), with exact counterfactual counts (same uniform draws).
Type 2 is seen only as control in training, so it must keep the model's edit. Shipped defaults,
except fewer epochs (the checks compare the calibrated and uncalibrated edits of one model).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import make_toy

import sccbgm
from sccbgm.access import lognormalise
from sccbgm.editing import RATE_EPS
from sccbgm.errors import SCCBGMError
from sccbgm.groups import MIN_CELLS

EPOCHS = 30


@pytest.fixture(scope="module")
def data():
    adata = make_toy(n_cells=1500, n_genes=80, type_effect_sd=0.8)
    held = np.zeros(adata.n_obs, dtype=bool)
    held[1000:] = True  # test cells
    unseen = (adata.obs["cell_type"] == "type2").to_numpy() & (adata.obs["stim"] == 1).to_numpy()
    train = adata[~held & ~unseen].copy()
    test = adata[held & (adata.obs["stim"] == 0).to_numpy()].copy()
    return train, test


@pytest.fixture(scope="module")
def model(data):
    return sccbgm.fit(data[0], ["stim"], seed=0, epochs=EPOCHS, groupby="cell_type", progress=False)


def _mse(edited: ad.AnnData, test: ad.AnnData, cells: np.ndarray) -> float:
    truth = lognormalise(np.asarray(test.obsm["counterfactual_counts"], dtype=np.float64), edited.uns["sccbgm_edit"]["target_sum"])
    return float(((np.asarray(edited.X, dtype=np.float64)[cells] - truth[cells]) ** 2).mean())


def test_calibration_moves_seen_groups_to_their_own_response_and_keeps_unseen_ones(data, model):
    train, test = data
    calibrated = sccbgm.edit(model, test, {"stim": 1})
    plain = sccbgm.edit(model, test, {"stim": 1}, group_calibration=False)
    ctype = test.obs["cell_type"].astype(str).to_numpy()
    seen, unseen = ctype != "type2", ctype == "type2"
    assert calibrated.uns["sccbgm_edit"]["group_calibration"] == {"groupby": "cell_type", "n_cells": int(seen.sum())}
    # the type-specific responses the decoder shares out are recovered on the seen types
    assert _mse(calibrated, test, seen) < 0.8 * _mse(plain, test, seen)
    # a type seen only as control has no measured response: the model's own edit, interval included
    for key in (None, "edit_lower", "edit_upper", "edit_sd"):
        a = calibrated.X if key is None else calibrated.layers[key]
        b = plain.X if key is None else plain.layers[key]
        np.testing.assert_array_equal(np.asarray(a)[unseen], np.asarray(b)[unseen])
    assert not np.allclose(calibrated.X[seen], plain.X[seen])
    table = model.group_responses.summary()
    row = table[(table["from"] == "0") & (table["to"] == "1") & (table["group"] == "type2")].iloc[0]
    assert row["n_to"] == 0 and row["mean_abs_shift"] == 0.0


def test_stored_correction_is_the_empirical_bayes_shrinkage_by_hand(data, model):
    train, _ = data
    resp = model.group_responses
    p = resp.pairs.index("stim|0|1")
    ts = model.transform.target_sum
    x = np.asarray(train.X, dtype=np.float64)
    norm = x / x.sum(1, keepdims=True) * ts
    ctype = train.obs["cell_type"].astype(str).to_numpy()
    stim = train.obs["stim"].to_numpy()
    d, v = {}, {}
    for g in ("type0", "type1"):
        a, b = norm[(ctype == g) & (stim == 0)], norm[(ctype == g) & (stim == 1)]
        assert len(a) >= MIN_CELLS and len(b) >= MIN_CELLS
        observed = np.log((b.mean(0) + RATE_EPS) / (a.mean(0) + RATE_EPS))
        v[g] = b.var(0, ddof=1) / (len(b) * (b.mean(0) + RATE_EPS) ** 2) + a.var(0, ddof=1) / (
            len(a) * (a.mean(0) + RATE_EPS) ** 2)
        cells = train[(ctype == g) & (stim == 0)]
        after = np.expm1(np.asarray(sccbgm.edit(model, cells, {"stim": 1}, group_calibration=False).X, np.float64))
        d[g] = observed - np.log((after.mean(0) + RATE_EPS) / (a.mean(0) + RATE_EPS))
    tau2 = max(0.0, np.mean([d[g] ** 2 for g in d]) - np.mean([v[g] for g in v]))
    assert tau2 > 0 and resp.tau2[p] == pytest.approx(tau2, rel=1e-3)
    for g in ("type0", "type1"):
        w = tau2 / (tau2 + v[g])
        gi = resp.groups.index(g)
        np.testing.assert_allclose(resp.shift[p, gi], w * d[g], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(resp.sd[p, gi], np.sqrt(w * v[g]), rtol=1e-3, atol=1e-4)


def test_calibration_survives_save_and_load(data, model, tmp_path):
    import json

    path = tmp_path / "m.sccbgm"
    sccbgm.save(model, path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(json.loads(f.read(n))["__metadata__"]["sccbgm"])
    assert header["format_version"] == 3 and header["group_responses"]["groupby"] == "cell_type"
    loaded = sccbgm.load(path)
    test = data[1][:50]
    np.testing.assert_array_equal(sccbgm.edit(loaded, test, {"stim": 1}).X, sccbgm.edit(model, test, {"stim": 1}).X)


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
    np.testing.assert_array_equal(edited.X, sccbgm.edit(model, test, {"stim": 1}, group_calibration=False).X)


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
