"""Shared response of the count-space edit (``edit(share_response=...)``, :mod:`sccbgm.editing`).

Data: the conftest toy where stim acts differently in each of three cell types (a shared effect
plus a type-specific one, in log rate, the same for every cell of a type), with exact
counterfactual counts. The model is fitted with ``groupby="cell_type"``, so by default the
cells of a type edited alike share one log rate ratio. Shipped defaults, except fewer epochs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import counterfactual_mse, make_toy

import sccbgm
import sccbgm.editing as editing
from sccbgm.access import lognormalise
from sccbgm.errors import SCCBGMError

EPOCHS = 30


@pytest.fixture(scope="module")
def data():
    adata = make_toy(n_cells=1200, n_genes=80, type_effect_sd=0.8)
    train, test = adata[:900].copy(), adata[900:].copy()
    return train, test[(test.obs["stim"] == 0).to_numpy()].copy()


@pytest.fixture(scope="module")
def model(data):
    return sccbgm.fit(data[0], ["stim"], seed=0, epochs=EPOCHS, groupby="cell_type", progress=False)


def _two_way_residual(edited, test, cells: np.ndarray) -> float:
    """Largest residual of an additive (cell + gene) fit to log(edited / factual normalised
    expression) over the genes the edit lowers in every one of ``cells`` (counts > 0): where the
    rate falls, the expected edited count is x r, so that log ratio is log r_g plus the cell's
    library factor, additive exactly when r_g is the same for all the cells."""
    before = lognormalise(np.asarray(test.X, dtype=np.float64), edited.uns["sccbgm_edit"]["target_sum"])
    expressed = (np.asarray(test.X)[cells] > 0).all(axis=0)
    after = np.asarray(edited.X, dtype=np.float64)[cells][:, expressed]
    ratio = np.log(np.expm1(after) / np.expm1(before[cells][:, expressed]))
    down = np.median(ratio, axis=0) < -0.3
    assert down.sum() >= 3, "the toy's edit should lower some genes"
    m = ratio[:, down]
    resid = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()
    return float(np.abs(resid).max())


def test_shared_response_is_the_default_and_brings_cells_closer(data, model):
    _, test = data
    shared = sccbgm.edit(model, test, {"stim": 1})
    own = sccbgm.edit(model, test, {"stim": 1}, share_response=False)
    assert shared.uns["sccbgm_edit"]["shared_response"] == {"column": "cell_type", "n_groups": 3, "n_cells": test.n_obs}
    assert "shared_response" not in own.uns["sccbgm_edit"]
    # every cell of a type has the same true response here: sharing drops the model's per-cell noise
    assert counterfactual_mse(shared, test) < 0.97 * counterfactual_mse(own, test)
    for t in ("type0", "type1", "type2"):
        cells = (test.obs["cell_type"] == t).to_numpy()
        # one log rate ratio per gene within the type (float32 output), not one per cell
        assert _two_way_residual(shared, test, cells) < 1e-4
        assert _two_way_residual(own, test, cells) > 0.02
    # the uncertainty layers follow the shared edit
    x = np.asarray(shared.X)
    assert (shared.layers["edit_lower"] <= x + 1e-6).all() and (x <= shared.layers["edit_upper"] + 1e-6).all()


def test_groups_share_only_within_themselves_and_a_lone_cell_keeps_its_own(data, model):
    _, test = data
    full = sccbgm.edit(model, test, {"stim": 1})
    type0 = (test.obs["cell_type"] == "type0").to_numpy()
    alone = sccbgm.edit(model, test[type0].copy(), {"stim": 1})
    np.testing.assert_array_equal(np.asarray(alone.X), np.asarray(full.X)[type0])
    one_each = [int(np.flatnonzero((test.obs["cell_type"] == t).to_numpy())[0]) for t in ("type0", "type1", "type2")]
    lone = sccbgm.edit(model, test, {"stim": 1}, cells=one_each)
    np.testing.assert_array_equal(np.asarray(lone.X), np.asarray(sccbgm.edit(
        model, test, {"stim": 1}, cells=one_each, share_response=False).X))
    assert lone.uns["sccbgm_edit"]["shared_response"]["n_groups"] == 0


def test_cells_without_a_label_or_edited_differently_do_not_share(data, model):
    _, test = data
    test = test.copy()
    labels = test.obs["cell_type"].astype(object).to_numpy()
    labels[:5] = None
    test.obs["cell_type"] = pd.Categorical(labels)
    shared = sccbgm.edit(model, test, {"stim": 1})
    own = sccbgm.edit(model, test, {"stim": 1}, share_response=False)
    np.testing.assert_array_equal(np.asarray(shared.X)[:5], np.asarray(own.X)[:5])
    assert shared.uns["sccbgm_edit"]["shared_response"]["n_cells"] == test.n_obs - 5
    # a cell already at the target is not edited, so it shares nothing with the edited ones
    mixed = test.copy()
    mixed.obs["stim"] = np.where(np.arange(mixed.n_obs) < 10, 1, 0)
    observed, mask = model.spec.encode(mixed.obs, require=False)
    target, assigned = model.spec.target_values({"stim": 1}, mixed.n_obs)
    assigned &= ~((mask > 0) & (observed == target))  # as edit_cells: a cell at its target is kept
    keys = editing.share_keys(mixed.obs["cell_type"], model.spec, ["stim"], observed, mask, target, assigned)
    assert (keys[:5] == -1).all()
    ct = mixed.obs["cell_type"].astype(str).to_numpy()
    for i in range(5, 10):
        assert not np.isin(keys[i], keys[10:][ct[10:] == ct[i]]).any()
    for t in np.unique(ct[10:]):
        assert len(set(keys[10:][ct[10:] == t])) == 1


def test_a_group_larger_than_the_cap_shares_the_mean_of_a_fixed_sample(data, model, monkeypatch):
    _, test = data
    full = np.asarray(sccbgm.edit(model, test, {"stim": 1}).X)
    monkeypatch.setattr(editing, "SHARE_MAX_CELLS", 20)
    capped = np.asarray(sccbgm.edit(model, test, {"stim": 1}).X)
    np.testing.assert_array_equal(capped, np.asarray(sccbgm.edit(model, test, {"stim": 1}).X))
    assert 0 < np.abs(capped - full).max() < 0.2
    assert np.abs(capped - full).mean() < 0.01


def test_share_response_by_a_column_and_errors(data, model):
    train, test = data
    plain = sccbgm.fit(train, ["stim"], seed=0, epochs=3, progress=False)
    assert "shared_response" not in sccbgm.edit(plain, test, {"stim": 1}).uns["sccbgm_edit"]
    by_column = sccbgm.edit(plain, test, {"stim": 1}, share_response="cell_type")
    assert by_column.uns["sccbgm_edit"]["shared_response"]["column"] == "cell_type"
    with pytest.raises(SCCBGMError, match="needs a model fitted with groupby"):
        sccbgm.edit(plain, test, {"stim": 1}, share_response=True)
    with pytest.raises(SCCBGMError, match="'nope' is not one"):
        sccbgm.edit(model, test, {"stim": 1}, share_response="nope")
    with pytest.raises(SCCBGMError, match="count_edit=None"):
        sccbgm.edit(model, test, {"stim": 1}, share_response=True, count_edit=None)
    flow = sccbgm.fit(train, ["stim"], model="sccbgm-fm", epochs=1, flow_epochs=1, n_members=1, progress=False)
    with pytest.raises(SCCBGMError, match="flow model edits each cell on its own"):
        sccbgm.edit(flow, test, {"stim": 1}, count_edit="mean", share_response="cell_type")
    additive = sccbgm.edit(model, test, {"stim": 1}, count_edit=None, group_calibration=False)
    assert "shared_response" not in additive.uns["sccbgm_edit"]
