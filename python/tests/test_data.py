"""Input transform (paper D.4 PCA, plus concept effect directions): basis, inverse, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sccbgm
from sccbgm.concepts import ConceptSpec
from sccbgm.data import InputTransform


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
