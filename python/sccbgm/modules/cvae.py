"""Conditional VAE baseline (paper sec. 5.1, D.4): the scCBGM backbone with concepts as inputs.

Shapes: B cells, D input features, K concepts, d_z latent.

The concepts enter as the condition vector s = [c * m, m] (B, 2K) -- the observed labels with
missing ones zeroed, and the mask m (Eq. 7) -- so cells with missing labels are conditioned on
"unknown" rather than on a false 0. The encoder E([x, s]) -> (mu_z, log sigma_z^2) is the same
residual MLP as scCBGM's; the decoder D([z, s]) is scCBGM's decoder with s in place of c_hat
(with ``skip=True`` s is re-injected at every layer, default: first layer only, a plain CVAE).
Loss: MSE reconstruction + kl_weight * KL(q(z|x, s) || N(0, I)) (no KL with
``variational=False``).

Editing (abduction-action-prediction): z = E_mu([x, s]) with the factual labels, then
x_hat' = D([z, s']) with the edited ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sccbgm.errors import SCCBGMError
from sccbgm.modules._blocks import ResidualMLP
from sccbgm.modules.sccbgm import SkipDecoder


@dataclass
class CVAEConfig:
    """Architecture and KL weight; defaults as scCBGM's CPU preset."""

    in_dim: int
    n_concepts: int
    hidden_dim: int = 256
    n_layers: int = 2
    latent_dim: int = 64
    dropout: float = 0.1
    kl_weight: float = 1e-5
    skip: bool = False
    variational: bool = True

    def __post_init__(self) -> None:
        for name in ("skip", "variational"):
            if not isinstance(getattr(self, name), bool):
                raise SCCBGMError(f"{name} must be True or False, not {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def concept_condition(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Observed labels as a condition: (B, K) values, (B, K) mask -> [c * m, m] (B, 2K)."""
    return torch.cat([values * mask, mask], dim=-1)


class ConditionalVAE(nn.Module):
    """CVAE module: ``forward(batch)`` returns the loss terms; :meth:`abduct` / :meth:`decode`
    implement editing. Batches: {"x": (B, D), "concepts": (B, K), "mask": (B, K)}."""

    def __init__(self, config: CVAEConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        cond_dim = 2 * cfg.n_concepts
        self.encoder = ResidualMLP(cfg.in_dim + cond_dim, cfg.hidden_dim, cfg.n_layers, cfg.dropout)
        self.mu_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        self.logvar_head = nn.Linear(cfg.hidden_dim, cfg.latent_dim) if cfg.variational else None
        self.decoder = SkipDecoder(
            cfg.latent_dim, cond_dim, cfg.hidden_dim, cfg.n_layers, cfg.in_dim, cfg.dropout, cfg.skip
        )

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x (B, D), s (B, 2K)) -> (mu_z, logvar_z) each (B, d_z); logvar None without KL."""
        h = self.encoder(torch.cat([x, cond], dim=-1))
        mu = self.mu_head(h)
        logvar = self.logvar_head(h).clamp(-12.0, 8.0) if self.logvar_head is not None else None
        return mu, logvar

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(z (B, d_z), s (B, 2K)) -> x_hat (B, D)."""
        return self.decoder(z, cond)

    @torch.no_grad()
    def abduct(self, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior mean z = E_mu([x, s]) under the factual condition: {"latent": (B, d_z)}."""
        mu, _ = self.encode(x, cond)
        return {"latent": mu}

    def loss_weights(self) -> dict[str, float]:
        """The active loss terms and their weights in ``"loss"``."""
        weights = {"reconstruction": 1.0}
        if self.config.variational:
            weights["kl"] = self.config.kl_weight
        return weights

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms (unweighted) and their weighted total ``"loss"`` on a minibatch."""
        x = batch["x"]
        cond = concept_condition(batch["concepts"], batch["mask"])
        mu, logvar = self.encode(x, cond)
        terms: dict[str, torch.Tensor] = {}
        if logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            terms["kl"] = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        else:
            z = mu
        terms["reconstruction"] = F.mse_loss(self.decode(z, cond), x)
        total = sum(w * terms[k] for k, w in self.loss_weights().items())
        return {"loss": total, **terms}
