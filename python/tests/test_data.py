"""Input transform (paper D.4 PCA, plus concept effect directions): basis, inverse, persistence."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sccbgm
from sccbgm.concepts import ConceptSpec
from sccbgm.data import InputTransform
from sccbgm.errors import SCCBGMError


def _effect_kept(transform: InputTransform, effect: np.ndarray) -> float:
    """Fraction of ||effect||^2 inside the span of the transform's basis."""
    c = transform.components
    return float(np.sum((c @ effect) ** 2) / np.sum(effect**2))


@pytest.fixture(scope="module")
def fitted(toy):
    spec = ConceptSpec.from_obs(toy.obs, ["stim", "cell_type"])
    values, mask = spec.encode(toy.obs)
    genes = list(toy.var_names)
    plain = InputTransform.fit(toy.X, genes, n_pcs=3)
    with_dirs = InputTransform.fit(toy.X, genes, n_pcs=3, concepts=values, concept_mask=mask)
    return plain, with_dirs, spec


def test_basis_is_orthonormal_and_extends_the_pcs(fitted):
    plain, with_dirs, spec = fitted
    c = with_dirs.components
    np.testing.assert_allclose(c @ c.T, np.eye(c.shape[0]), atol=1e-8)
    np.testing.assert_allclose(c[:3], plain.components)
    # stim (1) + cell_type (3 one-hot, collinear with the intercept -> rank 2) at most
    assert 1 <= with_dirs.n_concept_directions <= spec.n_concepts
    assert with_dirs.n_features == 3 + with_dirs.n_concept_directions


def test_concept_directions_capture_a_weak_effect():
    """A weak, sparse concept effect (log-rate shift 0.15 on 20 of 200 genes) under strong cell
    type and noise variation: the top PCs miss most of it, the concept directions bring it into
    the model space (the mean log-normalised shift is the reference direction)."""
    rng = np.random.default_rng(1)
    n, g = 2000, 200
    ct = rng.integers(0, 4, n)
    stim = rng.integers(0, 2, n)
    effect = np.zeros(g)
    effect[:20] = 0.15
    log_rate = rng.uniform(1, 3, g) + rng.normal(0, 0.8, (4, g))[ct] + stim[:, None] * effect
    counts = rng.poisson(np.exp(log_rate + rng.normal(0, 0.3, (n, g)))).astype(np.float32)
    obs = pd.DataFrame({"stim": stim, "cell_type": pd.Categorical(ct.astype(str))})
    spec = ConceptSpec.from_obs(obs, ["stim", "cell_type"])
    values, mask = spec.encode(obs)
    genes = [f"g{j}" for j in range(g)]
    plain = InputTransform.fit(counts, genes, n_pcs=16)
    with_dirs = InputTransform.fit(counts, genes, n_pcs=16, concepts=values, concept_mask=mask)
    x = plain.lognorm(counts.astype(float))
    shift = np.mean([x[(ct == t) & (stim == 1)].mean(0) - x[(ct == t) & (stim == 0)].mean(0) for t in range(4)], 0)
    kept_plain, kept_dirs = _effect_kept(plain, shift), _effect_kept(with_dirs, shift)
    assert kept_plain < 0.5
    assert kept_dirs > 0.9


def test_features_round_trip_within_span(toy, fitted):
    _, with_dirs, _ = fitted
    x = with_dirs.lognorm(np.asarray(toy.X[:50], dtype=float))
    back = with_dirs.to_genes(with_dirs.features(x))
    # projecting again changes nothing (the inverse maps back into the span exactly)
    np.testing.assert_allclose(with_dirs.features(back), with_dirs.features(x), atol=1e-4)


def test_missing_labels_carry_no_signal(toy):
    """Masked labels are imputed with the observed mean: flipping them changes nothing."""
    spec = ConceptSpec.from_obs(toy.obs, ["stim"])
    values, mask = spec.encode(toy.obs)
    mask = mask.copy()
    mask[:300] = 0
    flipped = values.copy()
    flipped[:300] = 1 - flipped[:300]
    a = InputTransform.fit(toy.X, list(toy.var_names), n_pcs=3, concepts=values, concept_mask=mask)
    b = InputTransform.fit(toy.X, list(toy.var_names), n_pcs=3, concepts=flipped, concept_mask=mask)
    np.testing.assert_allclose(a.components, b.components, atol=1e-10)


def test_fit_option_and_save_load(toy, tmp_path):
    opts = {"epochs": 1, "hidden_dim": 16, "latent_dim": 4, "unknown_dim": 4, "n_pcs": 5, "progress": False}
    on = sccbgm.fit(toy[:300], ["stim"], seed=0, **opts)
    off = sccbgm.fit(toy[:300], ["stim"], seed=0, concept_directions=False, **opts)
    assert on.transform.n_features == 6 and on.options["concept_directions"] == 1
    assert off.transform.n_features == 5 and off.options["concept_directions"] == 0
    sccbgm.save(on, tmp_path / "m.sccbgm")
    again = sccbgm.load(tmp_path / "m.sccbgm")
    assert again.transform.n_concept_directions == 1
    np.testing.assert_array_equal(again.transform.components, on.transform.components)


# ------------------------------------------------------------------- data access (sccbgm.access)
def _cells_adata() -> ad.AnnData:
    obs = pd.DataFrame({"group": ["a", "b", "a", "c", "b"], "dose": [0.0, 1.0, 1.0, 3.0, 0.0]},
                       index=[f"cell{i}" for i in range(5)])
    return ad.AnnData(np.arange(15, dtype=np.float32).reshape(5, 3), obs=obs)


def test_select_cells_one_rule_for_every_form() -> None:
    from sccbgm.access import select_cells

    a = _cells_adata()
    np.testing.assert_array_equal(select_cells(a, None), np.arange(5))
    np.testing.assert_array_equal(select_cells(a, np.array([True, False, True, False, False])), [0, 2])
    np.testing.assert_array_equal(select_cells(a, [3, 0]), [3, 0])  # order kept
    np.testing.assert_array_equal(select_cells(a, ["cell4", "cell1"]), [4, 1])
    np.testing.assert_array_equal(select_cells(a, "cell2"), [2])
    np.testing.assert_array_equal(select_cells(a, {"group": "b"}), [1, 4])
    np.testing.assert_array_equal(select_cells(a, {"group": ["a", "c"], "dose": 1}), [2])
    with pytest.raises(SCCBGMError, match="negative positions"):
        select_cells(a, [-1])
    with pytest.raises(SCCBGMError, match=r"\[0, 5\)"):
        select_cells(a, [5])
    with pytest.raises(SCCBGMError, match="more than once"):
        select_cells(a, [1, 1])
    np.testing.assert_array_equal(select_cells(a, [1, 1], unique=False), [1, 1])
    with pytest.raises(SCCBGMError, match="selection is empty"):
        select_cells(a, {"group": "zzz"})
    assert select_cells(a, {"group": "zzz"}, allow_empty=True).size == 0
    with pytest.raises(SCCBGMError, match="mask has length"):
        select_cells(a, np.ones(3, dtype=bool))
    with pytest.raises(SCCBGMError, match="not found"):
        select_cells(a, ["nope"])


def test_lognormalise_by_hand_dense_sparse_and_median() -> None:
    from sccbgm.access import dense_chunks, lognormalise, take_rows

    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]])
    out = lognormalise(counts, 10.0)
    np.testing.assert_allclose(out[0], np.log1p([2.5, 7.5, 0.0]))
    np.testing.assert_allclose(out[1], 0.0)  # a cell with no counts stays 0
    sparse = lognormalise(sp.csr_matrix(counts), 10.0)
    assert sp.issparse(sparse)
    np.testing.assert_allclose(sparse.toarray(), out)
    np.testing.assert_allclose(lognormalise(counts)[2], np.log1p(counts[2] / 8.0 * 4.0))  # median total 4
    np.testing.assert_array_equal(take_rows(sp.csr_matrix(counts), np.array([2, 0, 2])).toarray(), counts[[2, 0, 2]])
    chunks = list(dense_chunks(sp.csr_matrix(counts), step=2))
    assert [c[0].tolist() for c in chunks] == [[0, 1], [2]]
    np.testing.assert_array_equal(np.vstack([c[1] for c in chunks]), counts)
