"""The scCBGM network (paper section 2.2-2.3): a concept-bottleneck VAE with a skip decoder.

Shapes: B cells, D input features (PCs or genes), K concepts, d_u unknown factors, d_z latent,
d_k the width of the known-factor vector the decoder sees (K, or K * m for a CEM bottleneck).

* encoder E: x (B, D) -> residual MLP -> (mu_z, log sigma_z^2), each (B, d_z)
* bottleneck: concept head f_c(z) -> concept logits (B, K); c_hat = sigmoid(logits) for binary
  concepts, identity for continuous ones. Unknown head f_u(z) -> u = ReLU(.) (B, d_u).
* decoder D with concept skip connections (Eq. 5): h_1 = D_1([u, c]),
  h_l = h_{l-1} + D_l([LN(h_{l-1}), c]) for l = 2..L, x_hat = D_final(h_L).
* loss (Eq. 6-9): MSE reconstruction (``reconstruction="mean"``: mean over the D input features;
  ``"sum"``: summed over them, the scale on which the KL, a sum over d_z, is written) + concept_weight * L_concept (Eq. 7, masked, normalised by
  the number of observed labels) + kl_weight * KL(q(z|x) || N(0, I)) + cross_cov_weight *
  ||Cov(c_hat, u)||_F^2 (Eq. 8, over the minibatch).

Ablation switches (paper sec. 3, D.8), each a different network or objective:

* ``bottleneck="cem"``: the CBGM concept embedding bottleneck
  (:class:`~sccbgm.modules.cbgm.ConceptEmbeddingBottleneck`) replaces the scalar concept head;
  the decoder sees the mixed embeddings (B, K * m) instead of c_hat (B, K).
* ``skip=False``: the known factors enter the decoder's first layer only (no Eq. 5 re-injection,
  so the residual layers are (H, H) instead of (H + d_k, H) maps).
* ``orthogonality``: ``"cross_cov"`` (Eq. 8), ``"cosine"`` (CBGM: mean |cos(known, u)|, needs
  d_k == d_u) or ``"none"``; ``cross_cov_weight`` weighs whichever is active.
* ``variational=False``: the AE ablation of D.8.3 -- no log-variance head, z = E_mu(x), no KL.

``forward`` returns exactly the terms of the configured objective (plus ``"loss"``, their sum
weighted by :meth:`ConceptBottleneckVAE.loss_weights`).

During training the decoder receives the *predicted* concepts c_hat (as in the paper: the
bottleneck is the only route from x to the concepts the decoder sees), never the labels; labels
only enter through L_concept. At edit time c_hat is replaced on the edited dimensions (Sec. 2.4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sccbgm.distributed import batch_mean, gather_batch
from sccbgm.errors import SCCBGMError
from sccbgm.modules._blocks import ResidualBlock, ResidualMLP
from sccbgm.modules.cbgm import ConceptEmbeddingBottleneck, cosine_penalty, default_embedding_dim


@dataclass
class SCCBGMConfig:
    """Architecture and loss weights. Defaults = the documented CPU preset (see ``presets``).

    ``concept_embedding_dim`` (m) is used by the CEM bottleneck only; None resolves to
    d_u // K. Raises SCCBGMError for an unknown switch value or, with the cosine loss, when the
    known-factor width d_k differs from d_u.
    """

    in_dim: int
    n_concepts: int
    is_binary: list[bool] = field(default_factory=list)
    hidden_dim: int = 256
    n_layers: int = 2
    latent_dim: int = 64
    unknown_dim: int = 64
    dropout: float = 0.1
    concept_weight: float = 0.1
    cross_cov_weight: float = 0.5
    kl_weight: float = 1e-5
    skip: bool = True
    orthogonality: Literal["cross_cov", "cosine", "none"] = "cross_cov"
    variational: bool = True
    bottleneck: Literal["cbm", "cem"] = "cbm"
    concept_embedding_dim: int | None = None
    reconstruction: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        if self.reconstruction not in ("mean", "sum"):
            raise SCCBGMError(f"reconstruction must be 'mean' or 'sum', not {self.reconstruction!r}.")
        if self.bottleneck not in ("cbm", "cem"):
            raise SCCBGMError(f"bottleneck must be 'cbm' or 'cem', not {self.bottleneck!r}.")
        if self.orthogonality not in ("cross_cov", "cosine", "none"):
            raise SCCBGMError(
                f"orthogonality must be 'cross_cov', 'cosine' or 'none', not {self.orthogonality!r}."
            )
        for name in ("skip", "variational"):
            if not isinstance(getattr(self, name), bool):
                raise SCCBGMError(f"{name} must be True or False, not {getattr(self, name)!r}.")
        if self.bottleneck == "cem":
            if self.concept_embedding_dim is None:
                self.concept_embedding_dim = default_embedding_dim(self.unknown_dim, self.n_concepts)
            if int(self.concept_embedding_dim) < 1:
                raise SCCBGMError(f"concept_embedding_dim must be >= 1, not {self.concept_embedding_dim}.")
            self.concept_embedding_dim = int(self.concept_embedding_dim)
        if self.orthogonality == "cosine" and self.known_dim != self.unknown_dim:
            what = (
                f"K * concept_embedding_dim = {self.n_concepts} * {self.concept_embedding_dim}"
                if self.bottleneck == "cem" else "the number of concept dimensions K"
            )
            raise SCCBGMError(
                f"orthogonality='cosine' compares the known and unknown embeddings entry by entry, so "
                f"they need equal sizes, but {what} = {self.known_dim} != unknown_dim = "
                f"{self.unknown_dim}. Set unknown_dim={self.known_dim}, or use "
                "orthogonality='cross_cov', which has no such constraint (paper sec. 2.3)."
            )

    @property
    def known_dim(self) -> int:
        """d_k: width of the known factors the decoder sees (K, or K * m for the CEM)."""
        if self.bottleneck == "cem":
            return self.n_concepts * int(self.concept_embedding_dim or 1)
        return self.n_concepts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_covariance_penalty(c_hat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """||1/(B-1) (C - 1 mu_c^T)^T (U - 1 mu_u^T)||_F^2 (paper Eq. 8); (B, K), (B, d_u) -> scalar.

    Under DDP training the rows of every rank are gathered first, so B is the global batch
    (:mod:`sccbgm.distributed`).
    """
    c_hat, u = gather_batch(c_hat), gather_batch(u)
    b = c_hat.shape[0]
    cov = (c_hat - c_hat.mean(0)).T @ (u - u.mean(0)) / max(b - 1, 1)
    return (cov**2).sum()


def masked_concept_loss(
    logits: torch.Tensor, c_hat: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, is_binary: torch.Tensor
) -> torch.Tensor:
    """Paper Eq. 7: per cell, (1 / sum_k m_k) sum_k m_k loss_k (BCE binary, MSE continuous).

    Averaged over the cells with at least one observed label; 0 when none has a label. Under DDP
    training the count of such cells is the global batch's (:func:`sccbgm.distributed.batch_mean`).
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mse = (c_hat - target) ** 2
    per = torch.where(is_binary, bce, mse) * mask
    n_obs = mask.sum(1)
    has = n_obs > 0
    per_cell = per.sum(1)[has] / n_obs[has]
    return batch_mean(per_cell.sum(), has.sum())


class SkipDecoder(nn.Module):
    """[u, c] -> x_hat with the known factors c (B, d_k) re-injected at every layer (Eq. 5) when
    ``skip`` is True; without skips they enter the first layer only."""

    def __init__(
        self, unknown_dim: int, known_dim: int, hidden_dim: int, n_layers: int, out_dim: int,
        dropout: float, skip: bool = True,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.first = nn.Linear(unknown_dim + known_dim, hidden_dim)
        extra = known_dim if skip else 0
        self.blocks = nn.ModuleList(
            ResidualBlock(hidden_dim, dropout, extra_dim=extra) for _ in range(max(n_layers - 1, 0))
        )
        self.out_norm = nn.LayerNorm(hidden_dim)
        self.final = nn.Linear(hidden_dim, out_dim)

    def forward(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.first(torch.cat([u, c], dim=-1))
        for block in self.blocks:
            h = block(h, c if self.skip else None)
        return self.final(self.out_norm(h))


def estimate_unknown_shift(u: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Leakage of the concepts into u: B_u (K, d_u) of the least-squares fit u ~ 1 + c over
    cells, from u (N, d_u) and labels ``values``/``mask`` (N, K) (missing labels imputed with the
    observed mean, so they carry no signal). Minimum-norm solution, so one-hot blocks (collinear
    with the intercept) get identified differences."""
    v = values.double()
    m = mask.bool()
    col_mean = torch.where(m.any(0), (v * m).sum(0) / m.sum(0).clamp(min=1), torch.zeros_like(v[0]))
    v = torch.where(m, v, col_mean)
    v = v - v.mean(0)
    uc = u.double() - u.double().mean(0)
    return torch.linalg.lstsq(v, uc, driver="gelsd").solution.float()


class ConceptBottleneckVAE(nn.Module):
    """scCBGM module: ``forward(batch)`` returns the loss terms (training); :meth:`abduct` and
    :meth:`decode` implement editing."""

    def __init__(self, config: SCCBGMConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        if len(cfg.is_binary) != cfg.n_concepts:
            raise ValueError("is_binary must have one entry per concept")
        self.register_buffer("is_binary", torch.tensor(cfg.is_binary, dtype=torch.bool))
        # B_u (K, d_u): least-squares change of u per unit of each concept over the training cells
        # (set after training by :func:`estimate_unknown_shift`; 0 = no leakage of c into u)
        self.register_buffer("unknown_shift", torch.zeros(cfg.n_concepts, cfg.unknown_dim))
        self.encoder = ResidualMLP(cfg.in_dim, cfg.hidden_dim, cfg.n_layers, cfg.dropout)
        self.mu_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        self.logvar_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim) if cfg.variational else None
        if cfg.bottleneck == "cem":
            self.concept_head = None
            self.concept_embedding = ConceptEmbeddingBottleneck(
                cfg.latent_dim, cfg.n_concepts, int(cfg.concept_embedding_dim or 1)
            )
        else:
            self.concept_head = nn.Sequential(
                nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.ReLU(), nn.Linear(cfg.latent_dim, cfg.n_concepts)
            )
            self.concept_embedding = None
        self.unknown_head = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.ReLU(), nn.Linear(cfg.latent_dim, cfg.unknown_dim), nn.ReLU()
        )
        self.decoder = SkipDecoder(
            cfg.unknown_dim, cfg.known_dim, cfg.hidden_dim, cfg.n_layers, cfg.in_dim, cfg.dropout, cfg.skip
        )

    # ------------------------------------------------------------------ pieces
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, D) -> (mu_z, logvar_z) each (B, d_z); logvar is None for the AE ablation."""
        h = self.encoder(x)
        mu = self.mu_head(h)
        logvar = self.logvar_head(h).clamp(-12.0, 8.0) if self.logvar_head is not None else None
        return mu, logvar

    def bottleneck(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """z (B, d_z) -> {"logits" (B, K), "concepts" c_hat (B, K), "unknown" u (B, d_u)}, plus
        "concept_embeddings" (B, K, 2, m) for the CEM bottleneck."""
        out: dict[str, torch.Tensor] = {}
        if self.concept_embedding is not None:
            logits, out["concept_embeddings"] = self.concept_embedding(z)
        else:
            logits = self.concept_head(z)
        out["logits"] = logits
        out["concepts"] = torch.where(self.is_binary, torch.sigmoid(logits), logits)
        out["unknown"] = self.unknown_head(z)
        return out

    def known_factors(self, c: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Concepts c (B, K) -> what the decoder sees (B, d_k): c itself, or the CEM mixture."""
        if self.concept_embedding is None:
            return c
        if embeddings is None:
            raise ValueError("a CEM bottleneck decodes from the cell's concept embeddings")
        return ConceptEmbeddingBottleneck.mix(embeddings, c)

    def decode(self, u: torch.Tensor, c: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """(u (B, d_u), c (B, K)[, CEM embeddings (B, K, 2, m)]) -> x_hat (B, D)."""
        return self.decoder(u, self.known_factors(c, embeddings))

    @torch.no_grad()
    def abduct(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Abduction with the posterior mean z = E_mu(x) (Sec. 2.4): latent, c_hat, u (and the
        CEM embeddings, which :meth:`decode` needs)."""
        mu, _ = self.encode(x)
        out = self.bottleneck(mu)
        del out["logits"]
        out["latent"] = mu
        return out

    # -------------------------------------------------------------------- loss
    def loss_weights(self) -> dict[str, float]:
        """The active loss terms and their weights in ``"loss"`` (depends on the switches)."""
        cfg = self.config
        weights = {"reconstruction": 1.0, "concept": cfg.concept_weight}
        if cfg.variational:
            weights["kl"] = cfg.kl_weight
        if cfg.orthogonality != "none":
            weights[cfg.orthogonality] = cfg.cross_cov_weight
        return weights

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training step terms; ``forward`` so that DistributedDataParallel can wrap the module."""
        return self.loss(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 9 on a minibatch {"x": (B, D), "concepts": (B, K), "mask": (B, K)}.

        Returns the active terms (unweighted, see :meth:`loss_weights`) and ``"loss"``, the
        weighted total.
        """
        cfg = self.config
        x = batch["x"]
        mu, logvar = self.encode(x)
        terms: dict[str, torch.Tensor] = {}
        if logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            terms["kl"] = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        else:
            z = mu
        bn = self.bottleneck(z)
        known = self.known_factors(bn["concepts"], bn.get("concept_embeddings"))
        x_hat = self.decoder(bn["unknown"], known)
        if cfg.reconstruction == "sum":
            terms["reconstruction"] = ((x_hat - x) ** 2).sum(1).mean()
        else:
            terms["reconstruction"] = F.mse_loss(x_hat, x)
        terms["concept"] = masked_concept_loss(
            bn["logits"], bn["concepts"], batch["concepts"], batch["mask"], self.is_binary
        )
        if cfg.orthogonality == "cross_cov":
            terms["cross_cov"] = cross_covariance_penalty(bn["concepts"], bn["unknown"])
        elif cfg.orthogonality == "cosine":
            terms["cosine"] = cosine_penalty(known, bn["unknown"])
        total = sum(w * terms[k] for k, w in self.loss_weights().items())
        return {"loss": total, **terms}
