"""Data semantics and resource guards (issue 13): integer-coded concepts, duplicate cells, backed
AnnData in any row order, unseen labels in unedited columns, the caller's torch state, memory."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sccbgm
from sccbgm.errors import SCCBGMError

FAST = {"epochs": 2, "hidden_dim": 16, "latent_dim": 4, "unknown_dim": 4, "n_pcs": 8, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def cells(toy):
    a = toy[:300].copy()
    del a.uns["stim_effect"], a.obsm["counterfactual_counts"]
    return a


# ----------------------------------------------------------------- integer-coded concept columns
def test_few_distinct_integers_are_categories_with_a_warning(cells):
    a = cells.copy()
    a.obs["cluster"] = a.obs["cell_type"].cat.codes.astype(np.int64)  # 0, 1, 2
    with pytest.warns(UserWarning, match=r"'cluster' holds 3 distinct integers .* CATEGORICAL"):
        model = sccbgm.fit(a, ["cluster"], **FAST)
    assert model.concept_names == ["cluster=0", "cluster=1", "cluster=2"]
    # the int, the float and the string spelling are the same category; labels read back as float
    # (e.g. after a NaN) still match the model's categories
    b = a[:20].copy()
    b.obs["cluster"] = b.obs["cluster"].astype(float)
    b.obs.iloc[0, b.obs.columns.get_loc("cluster")] = np.nan
    x = [sccbgm.edit(model, b, {"cluster": v}).X for v in (2, 2.0, "2")]
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    with pytest.raises(SCCBGMError, match=r"unknown category \['7'\]"):
        sccbgm.edit(model, b, {"cluster": 7})


def test_binary_and_many_integers_and_floats_keep_their_meaning(cells):
    a = cells.copy()
    rng = np.random.default_rng(0)
    a.obs["age"] = rng.integers(20, 80, a.n_obs)  # > 20 distinct integers: continuous
    a.obs["score"] = rng.integers(0, 5, a.n_obs).astype(float)  # float: continuous
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = sccbgm.fit(a, ["stim", "age", "score"], **FAST)
    assert [c.kind for c in model.spec.columns] == ["binary", "continuous", "continuous"]


# --------------------------------------------------------------------------- duplicate cells
def test_duplicate_cells_are_refused(cells, toy_model):
    for dup in (np.array([3, 5, 3]), ["cell1", "cell2", "cell1"]):
        with pytest.raises(SCCBGMError, match="more than once"):
            sccbgm.edit(toy_model, cells, {"stim": 1}, cells=dup)
    a = cells[:10].copy()
    a.obs_names = ["c"] * 5 + [f"d{i}" for i in range(5)]
    with pytest.raises(SCCBGMError, match="obs_names has duplicates"):
        sccbgm.encode(toy_model, a, cells=["d1"])


# ------------------------------------------------------------------------------ backed AnnData
@pytest.mark.parametrize("storage", ["dense", "csr"])
@pytest.mark.parametrize("representation", ["pca", "genes"])
def test_backed_anndata_any_row_order(cells, tmp_path, storage, representation):
    a = cells.copy()
    if storage == "csr":
        a.X = sp.csr_matrix(a.X)
    a.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    # genes: random minibatch rows are read from the file; the model equals the in-memory one
    model = sccbgm.fit(backed, ["stim"], representation=representation, **FAST)
    ref = sccbgm.fit(a, ["stim"], representation=representation, **FAST)
    pick = np.array([250, 4, 99, 5])
    got = sccbgm.edit(model, backed, {"stim": 1}, cells=pick)
    want = sccbgm.edit(ref, a, {"stim": 1}, cells=pick)
    assert list(got.obs_names) == [f"cell{i}" for i in pick]
    np.testing.assert_allclose(got.X, want.X, rtol=1e-5, atol=1e-5)
    enc = sccbgm.encode(model, backed, cells=["cell9", "cell2"])
    np.testing.assert_allclose(enc.X, sccbgm.encode(ref, a, cells=["cell9", "cell2"]).X, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ labels the model cannot encode
def test_unseen_category_in_an_unedited_column_does_not_block_the_edit(cells, toy_model):
    a = cells[:30].copy()
    ref = sccbgm.edit(toy_model, a, {"stim": 1})
    a.obs["cell_type"] = pd.Categorical(["type9"] * 10 + list(a.obs["cell_type"][10:].astype(str)))
    got = sccbgm.edit(toy_model, a, {"stim": 1})  # scCBGM abducts cell_type from expression
    np.testing.assert_array_equal(got.X, ref.X)
    # editing that very column from an unseen label assigns the target
    moved = sccbgm.edit(toy_model, a, {"cell_type": "type0"})
    assert (moved.obs["cell_type"] == "type0").all()
    ct0 = toy_model.concept_names.index("cell_type=type0")
    assert (moved.obsm["X_concepts_edited"][:10, ct0] == 1).all()  # (cells already type0 keep c_hat)


def test_unseen_category_with_a_label_conditioned_model_is_a_clear_error(cells):
    model = sccbgm.fit(cells, ["stim", "cell_type"], model="cvae", epochs=2, hidden_dim=16, latent_dim=4,
                       n_pcs=8, progress=False, seed=0)
    a = cells[:10].copy()
    a.obs["cell_type"] = pd.Categorical(["type9"] * 10)
    with pytest.raises(SCCBGMError, match=r"'cell_type' has categories \['type9'\] that the model was not trained on"):
        sccbgm.edit(model, a, {"stim": 1})


# ------------------------------------------------------------------ the caller's torch state
def test_fit_leaves_the_torch_rng_and_thread_count_as_they_were(cells):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads != 2 else 3)
    try:
        before_threads = torch.get_num_threads()
        torch.manual_seed(123)
        state = torch.get_rng_state()
        expected_draw = torch.rand(3)
        torch.set_rng_state(state)
        np.random.seed(7)  # noqa: NPY002 (the legacy global state is what a caller may rely on)
        np_state = np.random.get_state()[1].copy()  # noqa: NPY002
        model = sccbgm.fit(cells, ["stim"], num_threads=1, **FAST)
        sccbgm.edit(model, cells[:20], {"stim": 1})
        assert torch.get_num_threads() == before_threads
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(torch.rand(3), expected_draw)
        assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------- memory
def test_fit_and_edit_beyond_available_memory_are_refused(cells, toy_model, monkeypatch):
    import sccbgm.data

    monkeypatch.setattr(sccbgm.data, "available_memory", lambda: 2**20)  # 1 MiB left
    with pytest.raises(SCCBGMError, match=r"fitting on 120 genes with representation='genes' needs about .* MiB of memory but only 1 MiB"):
        sccbgm.fit(cells, ["stim"], representation="genes", **FAST)
    with pytest.raises(SCCBGMError, match=r"fitting on 120 genes with representation='pca'.*highly_variable_genes"):
        sccbgm.fit(cells, ["stim"], **FAST)
    with pytest.raises(SCCBGMError, match=r"processing 300 cells x 120 genes in memory needs about \d+ MiB .*`out=`.*`cells=`"):
        sccbgm.edit(toy_model, cells, {"stim": 1})
    monkeypatch.setenv("SCCBGM_SKIP_MEMORY_CHECK", "1")
    assert sccbgm.edit(toy_model, cells[:5], {"stim": 1}).n_obs == 5


def test_memory_estimate_scales_like_the_dense_work(monkeypatch):
    """The randomized PCA keeps 3 G x (k + 16) float64 blocks plus one chunk: 30,000 genes at the
    CPU preset (64 PCs) need well under 1 GiB, not the 27 GiB of a G x G eigendecomposition."""
    import sccbgm.data
    from sccbgm.api import _check_fit_memory

    seen = {}
    monkeypatch.setattr(sccbgm.data, "require_memory", lambda need, what, advice: seen.update({what: need}))

    class Shape:
        shape = (100, 30_000)

    _check_fit_memory(Shape(), "pca", {"module": {}, "train": {}, "n_pcs": 64})
    need = seen["fitting on 30,000 genes with representation='pca'"]
    assert 3 * 30_000 * 80 * 8 < need < 2**30
    assert sccbgm.data.available_memory() is None or sccbgm.data.available_memory() > 0


def test_an_oversized_network_is_refused_before_any_allocation(cells):
    """hidden_dim=200,000 would need ~2 TB with Adam: an SCCBGMError, not an out-of-memory kill."""
    with pytest.raises(SCCBGMError, match=r"the network .* needs about \d+\.\d GiB .*lower hidden_dim"):
        sccbgm.fit(cells, ["stim"], epochs=1, hidden_dim=200_000, progress=False)
    with pytest.raises(SCCBGMError, match="hidden_dim"):
        sccbgm.fit(cells, ["stim"], epochs=1, hidden_dim="wide", progress=False)


@pytest.mark.parametrize(("option", "value"), [("epochs", 2.5), ("batch_size", True), ("lr", float("nan")),
                                               ("hidden_dim", -4), ("kl_weight", "small")])
def test_option_values_of_the_wrong_type_or_range_are_clear_errors(cells, option, value):
    with pytest.raises(SCCBGMError, match=rf"option {option} must be a"):
        sccbgm.fit(cells, ["stim"], progress=False, **{option: value})


def test_whole_float_options_are_accepted_as_integers(cells):
    model = sccbgm.fit(cells, ["stim"], **(FAST | {"epochs": 2.0, "hidden_dim": 16.0}))
    assert model.options["train"]["epochs"] == 2 and isinstance(model.options["module"]["hidden_dim"], int)


def test_30000_genes_fit_and_edit_without_crashing():
    """The scale issue's input (a G x G eigendecomposition used to crash at 30,000 genes): 200
    sparse cells x 30,000 genes fit at the CPU preset (2 epochs) and edit."""
    rng = np.random.default_rng(0)
    n, g = 200, 30_000
    stim = np.arange(n) % 2
    x = sp.random(n, g, density=0.05, random_state=1, format="csr", dtype=np.float32)
    x.data = rng.poisson(2.0, x.nnz).astype(np.float32) + 1
    x = sp.csr_matrix(x + sp.diags(stim.astype(np.float32) * 5) @ sp.csr_matrix(
        (np.ones(n * 20, np.float32), (np.repeat(np.arange(n), 20), np.tile(np.arange(20), n))), shape=(n, g)))
    adata = ad.AnnData(x, obs=pd.DataFrame({"stim": stim}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    model = sccbgm.fit(adata, ["stim"], epochs=2, progress=False, seed=0)
    assert model.transform.components.shape[1] == g
    edited = sccbgm.edit(model, adata[:50], {"stim": 1})
    assert edited.shape == (50, g) and np.isfinite(edited.X).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": "a"}, "seed must be a non-negative whole number"),
    ({"seed": 1.5}, "seed must be"),
    ({"n_pcs": 0}, "n_pcs must be a whole number >= 1"),
    ({"representation": "Genes"}, "representation must be 'pca' or 'genes'"),
    ({"input_kind": "raw"}, "input_kind must be"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda'"),
    ({"num_threads": "2"}, "num_threads must be >= 1"),
])
def test_fit_arguments_of_the_wrong_type_are_clear_errors(cells, kwargs, message):
    with pytest.raises(SCCBGMError, match=message):
        sccbgm.fit(cells, ["stim"], **(FAST | kwargs))


def test_concepts_save_and_load_arguments_of_the_wrong_type(cells, toy_model):
    for concepts in (None, 3, ["stim", 4]):
        with pytest.raises(SCCBGMError, match="`concepts` must be"):
            sccbgm.fit(cells, concepts, **FAST)
    for path in (None, 3, ""):
        with pytest.raises(SCCBGMError, match="`path` must be a file path"):
            sccbgm.save(toy_model, path)
        with pytest.raises(SCCBGMError, match="`path` must be a file path"):
            sccbgm.load(path)
