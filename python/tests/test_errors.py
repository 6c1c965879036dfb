"""Bad input gets a clear SCCBGMError that says what is wrong, and the input is never modified."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sccbgm
from sccbgm.errors import SCCBGMError

FAST = {"epochs": 1, "hidden_dim": 16, "latent_dim": 4, "unknown_dim": 4, "n_pcs": 8, "progress": False}


@pytest.fixture()
def small(toy):
    return toy[:200].copy()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_x(small, bad):
    small.X[3, 5] = bad
    with pytest.raises(SCCBGMError, match="NaN/Inf"):
        sccbgm.fit(small, ["stim"], **FAST)


def test_nan_in_x_at_edit_time(toy, toy_model):
    cells = toy[:20].copy()
    cells.X[0, 0] = np.nan
    with pytest.raises(SCCBGMError, match="1 NaN/Inf values"):
        sccbgm.edit(toy_model, cells, {"stim": 1})


def test_negative_values_name_scaled_data(small):
    small.X = small.X - 1.0
    with pytest.raises(SCCBGMError, match=r"negative values .*sc\.pp\.scale"):
        sccbgm.fit(small, ["stim"], **FAST)


def test_negative_values_in_sparse_input(small):
    x = sp.csr_matrix(small.X)
    x.data[0] = -2.0
    small.X = x
    with pytest.raises(SCCBGMError, match="negative values"):
        sccbgm.fit(small, ["stim"], **FAST)


def test_missing_concept_column(small):
    with pytest.raises(SCCBGMError, match=r"\['dose'\] not found in adata.obs; available columns"):
        sccbgm.fit(small, ["stim", "dose"], **FAST)


def test_constant_concept(small):
    small.obs["batch"] = 1
    with pytest.raises(SCCBGMError, match="'batch' is constant"):
        sccbgm.fit(small, ["stim", "batch"], **FAST)


def test_constant_continuous_concept(small):
    small.obs["dose"] = 0.5
    with pytest.raises(SCCBGMError, match="'dose' is constant"):
        sccbgm.fit(small, ["dose"], **FAST)


def test_all_missing_concept(small):
    small.obs["dose"] = np.nan
    with pytest.raises(SCCBGMError, match="'dose' has no labels"):
        sccbgm.fit(small, ["dose"], **FAST)


def test_unknown_category_in_set(toy, toy_model):
    with pytest.raises(SCCBGMError, match=r"unknown category \['type9'\].*known categories"):
        sccbgm.edit(toy_model, toy[:10], {"cell_type": "type9"})


def test_unknown_concept_name_in_set(toy, toy_model):
    with pytest.raises(SCCBGMError, match="'dose'") as err:
        sccbgm.edit(toy_model, toy[:10], {"dose": 1})
    assert "stim" in str(err.value), "the message should list the model's concepts"


def test_binary_concept_set_to_non_binary(toy, toy_model):
    with pytest.raises(SCCBGMError, match="binary: set it to 0/1"):
        sccbgm.edit(toy_model, toy[:10], {"stim": 2})


def test_per_cell_target_of_wrong_length(toy, toy_model):
    with pytest.raises(SCCBGMError, match="has 3 values but 10 cells"):
        sccbgm.edit(toy_model, toy[:10], {"stim": [0, 1, 1]})


def test_genes_missing_from_data(toy, toy_model):
    fewer = toy[:10, 5:].copy()
    with pytest.raises(SCCBGMError, match="lack 5 of the model's 120 genes"):
        sccbgm.edit(toy_model, fewer, {"stim": 1})


def test_genes_in_another_order_are_aligned(toy, toy_model):
    cells = toy[:30].copy()
    shuffled = cells[:, np.random.default_rng(0).permutation(cells.n_vars)].copy()
    a = sccbgm.edit(toy_model, cells, {"stim": 1})
    b = sccbgm.edit(toy_model, shuffled, {"stim": 1})
    assert list(b.var_names) == list(a.var_names)
    np.testing.assert_allclose(b.X, a.X, rtol=1e-5, atol=1e-5)


def test_empty_selection(toy, toy_model):
    with pytest.raises(SCCBGMError, match="selection is empty"):
        sccbgm.edit(toy_model, toy, {"stim": 1}, cells=np.zeros(toy.n_obs, dtype=bool))
    with pytest.raises(SCCBGMError, match="is empty"):
        sccbgm.edit(toy_model, toy[:0], {"stim": 1})


def test_unknown_cell_names(toy, toy_model):
    with pytest.raises(SCCBGMError, match="not found in adata.obs_names"):
        sccbgm.edit(toy_model, toy, {"stim": 1}, cells=["cell1", "no-such-cell"])


def test_counts_model_refuses_lognormalised_data(toy, toy_model):
    cells = toy[:10].copy()
    cells.X = np.log1p(cells.X)
    with pytest.raises(SCCBGMError, match="trained on raw counts"):
        sccbgm.edit(toy_model, cells, {"stim": 1})


def test_not_anndata_and_not_a_model(toy, toy_model):
    with pytest.raises(SCCBGMError, match="must be an anndata.AnnData, not ndarray"):
        sccbgm.fit(np.ones((20, 5)), ["stim"])
    with pytest.raises(SCCBGMError, match="must be a fitted sccbgm model"):
        sccbgm.edit("model.sccbgm", toy[:5], {"stim": 1})


def test_unknown_option_and_model(small):
    with pytest.raises(SCCBGMError, match=r"unknown option\(s\) \['hiden_dim'\]"):
        sccbgm.fit(small, ["stim"], hiden_dim=8)
    with pytest.raises(SCCBGMError, match="unknown model 'scgen'"):
        sccbgm.fit(small, ["stim"], model="scgen")


def test_wrong_file_on_load(tmp_path):
    with pytest.raises(SCCBGMError, match="no model file"):
        sccbgm.load(tmp_path / "missing.sccbgm")
    junk = tmp_path / "junk.sccbgm"
    junk.write_bytes(b"\x80\x04not a model at all")
    with pytest.raises(SCCBGMError, match="not an sccbgm model file"):
        sccbgm.load(junk)
    import torch

    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(SCCBGMError, match="not an sccbgm model file"):
        sccbgm.load(pickled)


def test_foreign_safetensors_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(SCCBGMError, match="not an sccbgm model \\(no sccbgm header\\)"):
        sccbgm.load(path)


def test_input_is_never_modified(toy, toy_model):
    cells = toy[:40].copy()
    cells.X = sp.csr_matrix(cells.X)
    before_x = cells.X.copy()
    before_obs = cells.obs.copy()
    sccbgm.edit(toy_model, cells, {"stim": 1, "cell_type": "type0"})
    assert (cells.X != before_x).nnz == 0
    pd.testing.assert_frame_equal(cells.obs, before_obs)


def test_import_is_cheap_no_torch_no_anndata():
    """R users wait for ``import sccbgm`` through reticulate: it must not load torch (or the
    data stack); the public names resolve lazily."""
    import subprocess
    import sys

    code = (
        "import sys, sccbgm; heavy = [m for m in ('torch', 'anndata', 'scanpy', 'scipy') if m in sys.modules]; "
        "print(','.join(heavy)); assert callable(sccbgm.fit) and 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
