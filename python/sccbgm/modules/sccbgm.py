"""The scCBGM network (paper section 2.2-2.3): a concept-bottleneck VAE with a skip decoder.

Shapes: B cells, D input features (PCs or genes), K concepts, d_u unknown factors, d_z latent.

* encoder E: x (B, D) -> residual MLP -> (mu_z, log sigma_z^2), each (B, d_z)
* bottleneck: concept head f_c(z) -> concept logits (B, K); c_hat = sigmoid(logits) for binary
  concepts, identity for continuous ones. Unknown head f_u(z) -> u = ReLU(.) (B, d_u).
* decoder D with concept skip connections (Eq. 5): h_1 = D_1([u, c]),
  h_l = h_{l-1} + D_l([LN(h_{l-1}), c]) for l = 2..L, x_hat = D_final(h_L).
* loss (Eq. 6-9): MSE reconstruction + concept_weight * L_concept (Eq. 7, masked, normalised by
  the number of observed labels) + kl_weight * KL(q(z|x) || N(0, I)) + cross_cov_weight *
  ||Cov(c_hat, u)||_F^2 (Eq. 8, over the minibatch).

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

from sccbgm.modules._blocks import ResidualBlock, ResidualMLP


@dataclass
class SCCBGMConfig:
    """Architecture and loss weights. Defaults = the documented CPU preset (see ``presets``)."""

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
    orthogonality: Literal["cross_cov", "none"] = "cross_cov"
    variational: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_covariance_penalty(c_hat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """||1/(B-1) (C - 1 mu_c^T)^T (U - 1 mu_u^T)||_F^2 (paper Eq. 8); (B, K), (B, d_u) -> scalar."""
    b = c_hat.shape[0]
    cov = (c_hat - c_hat.mean(0)).T @ (u - u.mean(0)) / max(b - 1, 1)
    return (cov**2).sum()


def masked_concept_loss(
    logits: torch.Tensor, c_hat: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, is_binary: torch.Tensor
) -> torch.Tensor:
    """Paper Eq. 7: per cell, (1 / sum_k m_k) sum_k m_k loss_k (BCE binary, MSE continuous).

    Averaged over the cells with at least one observed label; 0 when none has a label.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mse = (c_hat - target) ** 2
    per = torch.where(is_binary, bce, mse) * mask
    n_obs = mask.sum(1)
    has = n_obs > 0
    if not bool(has.any()):
        return logits.new_zeros(())
    return (per.sum(1)[has] / n_obs[has]).mean()


class SkipDecoder(nn.Module):
    """[u, c] -> x_hat with c re-injected at every layer (Eq. 5) when ``skip`` is True."""

    def __init__(
        self, unknown_dim: int, n_concepts: int, hidden_dim: int, n_layers: int, out_dim: int,
        dropout: float, skip: bool = True,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.first = nn.Linear(unknown_dim + n_concepts, hidden_dim)
        extra = n_concepts if skip else 0
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
        self.encoder = ResidualMLP(cfg.in_dim, cfg.hidden_dim, cfg.n_layers, cfg.dropout)
        self.mu_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        self.logvar_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim) if cfg.variational else None
        self.concept_head = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.ReLU(), nn.Linear(cfg.latent_dim, cfg.n_concepts)
        )
        self.unknown_head = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.ReLU(), nn.Linear(cfg.latent_dim, cfg.unknown_dim), nn.ReLU()
        )
        self.decoder = SkipDecoder(
            cfg.unknown_dim, cfg.n_concepts, cfg.hidden_dim, cfg.n_layers, cfg.in_dim, cfg.dropout, cfg.skip
        )

    # ------------------------------------------------------------------ pieces
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, D) -> (mu_z, logvar_z) each (B, d_z); logvar is None for the AE ablation."""
        h = self.encoder(x)
        mu = self.mu_head(h)
        logvar = self.logvar_head(h).clamp(-12.0, 8.0) if self.logvar_head is not None else None
        return mu, logvar

    def bottleneck(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, d_z) -> (concept logits (B, K), c_hat (B, K), u (B, d_u))."""
        logits = self.concept_head(z)
        c_hat = torch.where(self.is_binary, torch.sigmoid(logits), logits)
        return logits, c_hat, self.unknown_head(z)

    def decode(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(u (B, d_u), c (B, K)) -> x_hat (B, D)."""
        return self.decoder(u, c)

    @torch.no_grad()
    def abduct(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Abduction with the posterior mean z = E_mu(x) (Sec. 2.4): latent, c_hat, u."""
        mu, _ = self.encode(x)
        _, c_hat, u = self.bottleneck(mu)
        return {"latent": mu, "concepts": c_hat, "unknown": u}

    # -------------------------------------------------------------------- loss
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training step terms; ``forward`` so that DistributedDataParallel can wrap the module."""
        return self.loss(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 9 on a minibatch {"x": (B, D), "concepts": (B, K), "mask": (B, K)}.

        Returns the named terms (unweighted) and ``"loss"``, the weighted total.
        """
        cfg = self.config
        x = batch["x"]
        mu, logvar = self.encode(x)
        if logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        else:
            z, kl = mu, x.new_zeros(())
        logits, c_hat, u = self.bottleneck(z)
        x_hat = self.decode(u, c_hat)
        recon = F.mse_loss(x_hat, x)
        concept = masked_concept_loss(logits, c_hat, batch["concepts"], batch["mask"], self.is_binary)
        cross_cov = cross_covariance_penalty(c_hat, u)
        total = recon + cfg.concept_weight * concept + cfg.kl_weight * kl
        if cfg.orthogonality == "cross_cov":
            total = total + cfg.cross_cov_weight * cross_cov
        return {"loss": total, "reconstruction": recon, "concept": concept, "kl": kl, "cross_cov": cross_cov}
