"""Ablation switches of scCBGM (paper sec. 3, D.8) and the CBGM / CVAE baselines change the
network and the objective, not only a flag: parameter shapes, which loss terms forward() returns,
and what the decoder can depend on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sccbgm
from sccbgm.errors import SCCBGMError
from sccbgm.modules import ConceptBottleneckVAE, ConditionalVAE, CVAEConfig, SCCBGMConfig
from sccbgm.modules.cbgm import ConceptEmbeddingBottleneck

D, K, H, L, DZ, DU, B = 20, 3, 32, 3, 16, 12, 64


def make_vae(**switches) -> ConceptBottleneckVAE:
    torch.manual_seed(0)
    cfg = SCCBGMConfig(
        in_dim=D, n_concepts=K, is_binary=[True, True, False], hidden_dim=H, n_layers=L,
        latent_dim=DZ, unknown_dim=DU, **switches,
    )
    return ConceptBottleneckVAE(cfg)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    concepts = torch.cat([torch.randint(0, 2, (B, 2), generator=g).float(), torch.rand(B, 1, generator=g)], 1)
    return {"x": torch.randn(B, D, generator=g), "concepts": concepts, "mask": torch.ones(B, K)}


# ------------------------------------------------------------------------ skip connections
@pytest.mark.parametrize("bottleneck", ["cbm", "cem"])
def test_skip_switch_changes_decoder_layer_shapes(bottleneck):
    on = make_vae(skip=True, bottleneck=bottleneck)
    off = make_vae(skip=False, bottleneck=bottleneck)
    d_k = on.config.known_dim
    assert d_k == (K if bottleneck == "cbm" else K * on.config.concept_embedding_dim)
    for vae in (on, off):
        # first layer sees [u, known] in both
        assert vae.decoder.first.weight.shape == (H, DU + d_k)
        assert len(vae.decoder.blocks) == L - 1
    for block in on.decoder.blocks:  # Eq. 5: the known factors re-enter every later layer
        assert block.linear.weight.shape == (H, H + d_k)
    for block in off.decoder.blocks:
        assert block.linear.weight.shape == (H, H)
    n_on = sum(p.numel() for p in on.parameters())
    n_off = sum(p.numel() for p in off.parameters())
    assert n_on - n_off == (L - 1) * H * d_k


def test_without_skips_the_decoder_sees_concepts_only_through_its_first_layer():
    """Cut the concept columns of the first layer: the output then ignores c iff skip is off."""
    u = torch.rand(B, DU)
    c0, c1 = torch.zeros(B, K), torch.ones(B, K)
    for skip, depends in ((True, True), (False, False)):
        vae = make_vae(skip=skip).eval()
        with torch.no_grad():
            vae.decoder.first.weight[:, DU:] = 0.0
            diff = (vae.decode(u, c1) - vae.decode(u, c0)).abs().max().item()
        assert (diff > 1e-3) == depends, (skip, diff)


# ------------------------------------------------------------------------------ bottleneck
def test_cem_bottleneck_replaces_the_scalar_concept_head():
    cbm, cem = make_vae(bottleneck="cbm"), make_vae(bottleneck="cem")
    m = cem.config.concept_embedding_dim
    assert m == DU // K  # default width: K * m close to d_u
    assert cbm.concept_embedding is None and cbm.concept_head[-1].weight.shape == (K, DZ)
    assert cem.concept_head is None and isinstance(cem.concept_embedding, ConceptEmbeddingBottleneck)
    assert cem.concept_embedding.context.weight.shape == (K * 2 * m, DZ)
    assert cem.concept_embedding.prob_weight.shape == (K, 2 * m)
    # the decoder input width is d_u + K * m for the CEM, d_u + K for the CBM
    assert cem.decoder.first.weight.shape == (H, DU + K * m)
    assert cbm.decoder.first.weight.shape == (H, DU + K)
    x = make_batch()["x"]
    out_cbm, out_cem = cbm.abduct(x), cem.abduct(x)
    assert "concept_embeddings" not in out_cbm
    assert out_cem["concept_embeddings"].shape == (B, K, 2, m)
    assert out_cem["concepts"].shape == out_cbm["concepts"].shape == (B, K)


def test_cem_edit_mixes_the_positive_and_negative_embeddings():
    cem = make_vae(bottleneck="cem").eval()
    emb = cem.abduct(make_batch()["x"])["concept_embeddings"]
    m = cem.config.concept_embedding_dim
    ones, zeros = torch.ones(B, K), torch.zeros(B, K)
    np.testing.assert_allclose(cem.known_factors(ones, emb).numpy(), emb[:, :, 0].reshape(B, K * m).numpy())
    np.testing.assert_allclose(cem.known_factors(zeros, emb).numpy(), emb[:, :, 1].reshape(B, K * m).numpy())
    half = cem.known_factors(0.5 * ones, emb)
    np.testing.assert_allclose(half.numpy(), emb.mean(2).reshape(B, K * m).numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="embeddings"):
        cem.known_factors(ones, None)


# ----------------------------------------------------------------------- variational / AE
def test_variational_switch_removes_logvar_head_and_kl_term():
    torch.manual_seed(0)
    vae, ae = make_vae(variational=True, dropout=0.0), make_vae(variational=False, dropout=0.0)
    assert vae.logvar_head.weight.shape == (DZ, H)
    assert ae.logvar_head is None
    assert not any("logvar" in name for name, _ in ae.named_parameters())
    batch = make_batch()
    vae.train(), ae.train()
    assert "kl" in vae(batch) and "kl" in vae.loss_weights()
    assert "kl" not in ae(batch) and "kl" not in ae.loss_weights()
    # z = E_mu(x) for the AE: two training steps on the same batch see the same loss;
    # the VAE samples z, so they differ
    assert ae(batch)["loss"].item() == ae(batch)["loss"].item()
    assert vae(batch)["loss"].item() != vae(batch)["loss"].item()


# -------------------------------------------------------------------------- orthogonality
@pytest.mark.parametrize(
    ("orthogonality", "unknown_dim", "term"),
    [("cross_cov", DU, "cross_cov"), ("cosine", K, "cosine"), ("none", DU, None)],
)
def test_orthogonality_switch_selects_the_loss_term(orthogonality, unknown_dim, term):
    torch.manual_seed(0)
    cfg = SCCBGMConfig(
        in_dim=D, n_concepts=K, is_binary=[True, True, False], hidden_dim=H, n_layers=L, latent_dim=DZ,
        unknown_dim=unknown_dim, orthogonality=orthogonality, variational=False, dropout=0.0,
        cross_cov_weight=0.7, concept_weight=0.3,
    )
    vae = ConceptBottleneckVAE(cfg).train()
    batch = make_batch(1)
    terms = vae(batch)
    expected = {"reconstruction", "concept"} | ({term} if term else set())
    assert set(terms) == expected | {"loss"}
    weights = vae.loss_weights()
    assert set(weights) == expected
    total = sum(w * terms[k].item() for k, w in weights.items())
    assert terms["loss"].item() == pytest.approx(total, rel=1e-6)
    if term:
        assert weights[term] == 0.7
    # the active penalty checked by hand on the same (deterministic, AE) bottleneck outputs
    with torch.no_grad():
        bn = vae.bottleneck(vae.encode(batch["x"])[0])
    c, u = bn["concepts"].numpy().astype(np.float64), bn["unknown"].numpy().astype(np.float64)
    if term == "cross_cov":
        cov = (c - c.mean(0)).T @ (u - u.mean(0)) / (B - 1)
        assert terms["cross_cov"].item() == pytest.approx((cov**2).sum(), rel=1e-4)
    elif term == "cosine":
        cos = (c * u).sum(1) / np.maximum(np.linalg.norm(c, axis=1) * np.linalg.norm(u, axis=1), 1e-6)
        assert terms["cosine"].item() == pytest.approx(np.abs(cos).mean(), rel=1e-4)


def test_cosine_loss_needs_equal_known_and_unknown_widths():
    with pytest.raises(SCCBGMError, match="equal sizes.*unknown_dim=3"):
        make_vae(orthogonality="cosine")  # K = 3 != d_u = 12
    make_vae(orthogonality="cosine", bottleneck="cem", concept_embedding_dim=4)  # K * m = 12 = d_u
    with pytest.raises(SCCBGMError, match="K \\* concept_embedding_dim = 3 \\* 5"):
        make_vae(orthogonality="cosine", bottleneck="cem", concept_embedding_dim=5)
    make_vae(orthogonality="cross_cov", bottleneck="cem", concept_embedding_dim=5)  # no constraint


@pytest.mark.parametrize(
    ("switch", "value"),
    [("bottleneck", "cnn"), ("orthogonality", "hsic"), ("skip", "yes"), ("variational", 1)],
)
def test_bad_switch_values_are_clear_errors(switch, value):
    with pytest.raises(SCCBGMError, match=switch):
        make_vae(**{switch: value})


# -------------------------------------------------------------------------------- CVAE
def test_cvae_switches_change_its_network():
    def cvae(**kw):
        return ConditionalVAE(CVAEConfig(in_dim=D, n_concepts=K, hidden_dim=H, n_layers=L, latent_dim=DZ, **kw))

    plain, skip, ae = cvae(), cvae(skip=True), cvae(variational=False, dropout=0.0)
    # concepts enter as [c * m, m] (2K) in the encoder and the decoder's first layer
    assert plain.encoder.inp.weight.shape == (H, D + 2 * K)
    assert plain.decoder.first.weight.shape == (H, DZ + 2 * K)
    assert all(b.linear.weight.shape == (H, H) for b in plain.decoder.blocks)
    assert all(b.linear.weight.shape == (H, H + 2 * K) for b in skip.decoder.blocks)
    assert ae.logvar_head is None
    batch = make_batch()
    assert set(plain(batch)) == {"loss", "reconstruction", "kl"}
    assert set(ae(batch)) == {"loss", "reconstruction"}


# ------------------------------------------------------------------------ through the API
@pytest.fixture(scope="module")
def small(toy):
    return toy[:200].copy()


FAST = dict(seed=0, epochs=2, hidden_dim=32, latent_dim=8, unknown_dim=8, n_pcs=10, progress=False)


def test_switches_reach_the_fitted_module_and_its_history(small, tmp_path):
    model = sccbgm.fit(
        small, ["stim", "cell_type"], bottleneck="cem", skip=False, variational=False,
        orthogonality="none", concept_embedding_dim=3, **FAST,
    )
    vae = model.parts["vae"]
    assert vae.concept_embedding is not None and vae.logvar_head is None
    assert vae.decoder.first.weight.shape == (32, 8 + 4 * 3)  # K = 4 (stim + 3 cell types)
    assert all(b.linear.weight.shape == (32, 32) for b in vae.decoder.blocks)
    assert set(model.history["vae"]) == {"loss", "reconstruction", "concept", "lr"}
    assert model.options["module"]["bottleneck"] == "cem"
    # the ablated architecture survives save -> load and edits the same
    path = tmp_path / "ablated.sccbgm"
    sccbgm.save(model, path)
    loaded = sccbgm.load(path)
    assert loaded.parts["vae"].config == vae.config
    a = sccbgm.edit(model, small, set={"stim": 1})
    b = sccbgm.edit(loaded, small, set={"stim": 1})
    np.testing.assert_array_equal(a.X, b.X)


def test_cbgm_model_is_the_cem_cosine_no_skip_variant(small):
    model = sccbgm.fit(small, ["stim", "cell_type"], model="cbgm", **{**FAST, "unknown_dim": 12})
    cfg = model.parts["vae"].config
    assert (cfg.bottleneck, cfg.skip, cfg.orthogonality) == ("cem", False, "cosine")
    assert cfg.known_dim == cfg.unknown_dim == 12 and cfg.concept_embedding_dim == 3
    assert "cosine" in model.history["vae"] and "cross_cov" not in model.history["vae"]
    # without an explicit unknown_dim, d_u is set to K * m so the cosine loss is defined
    auto = sccbgm.fit(small, ["stim", "cell_type"], model="cbgm", concept_embedding_dim=5, seed=0, epochs=1,
                      hidden_dim=32, n_pcs=10, progress=False)
    assert auto.parts["vae"].config.unknown_dim == 4 * 5
    # a user's switch overrides the CBGM default
    skip = sccbgm.fit(small, ["stim", "cell_type"], model="cbgm", skip=True, **{**FAST, "unknown_dim": 12})
    assert skip.parts["vae"].config.skip is True


def test_cbgm_equal_dims_limitation_is_a_clear_error(small):
    with pytest.raises(SCCBGMError, match="orthogonality='cosine'.*need equal sizes.*cross_cov"):
        sccbgm.fit(small, ["stim", "cell_type"], model="cbgm", **{**FAST, "unknown_dim": 10})
    with pytest.raises(SCCBGMError, match="concept dimensions K = 4 != unknown_dim = 8"):
        sccbgm.fit(small, ["stim", "cell_type"], orthogonality="cosine", **FAST)
    ok = sccbgm.fit(small, ["stim", "cell_type"], orthogonality="cosine", **{**FAST, "unknown_dim": 4})
    assert "cosine" in ok.history["vae"]
