"""Conditional velocity field for flow matching (paper sec. 2.5, D.4; Lipman et al. 2023).

Shapes: B cells, D input features (PCs by default), C condition width, H hidden width.

Probability path: linear (rectified-flow) interpolation from noise x_0 ~ N(0, I) at t = 0 to a
data point x_1 at t = 1, x_t = (1 - t) x_0 + t x_1, whose conditional velocity is
v* = x_1 - x_0. The loss is L_FM = E_{t ~ U(0, 1), x_0, x_1} ||v_theta(x_t, t; s) - v*||^2 / D.

The flow lives in a standardised copy of the model space: y = (x - mean) / scale with the
training cells' per-feature mean and ONE global scale (the root mean feature variance), so the
noise matches the data's overall size while the PCs keep their relative variances. The
condition s is standardised per dimension (dimensions without variance are only centred). The
statistics are buffers set once by :meth:`VelocityField.set_statistics` and saved with the
weights.

Network (residual MLP with LayerNorm and dropout, as scCBGM):
  e = MLP_t(sinusoidal(t)) + MLP_s(s) (B, H)           -- time and condition embeddings
  h_0 = Linear(y_t) (B, H); h_l = h_{l-1} + Dropout(SiLU(W_l [LN(h_{l-1}), e]))
  v = Linear(LN(h_L)) (B, D)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sccbgm.errors import SCCBGMError
from sccbgm.modules._blocks import ResidualBlock


@dataclass
class FlowConfig:
    """Velocity-field architecture. ``cond_dim`` 0 gives an unconditional field."""

    in_dim: int
    cond_dim: int
    hidden_dim: int = 256
    n_layers: int = 3
    dropout: float = 0.1
    time_dim: int = 64

    def __post_init__(self) -> None:
        if self.time_dim < 2 or self.time_dim % 2:
            raise SCCBGMError(f"flow_time_dim must be an even number >= 2, not {self.time_dim}.")
        if self.n_layers < 1 or self.hidden_dim < 1:
            raise SCCBGMError("flow_n_layers and flow_hidden_dim must be >= 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, dim): sin / cos at ``dim // 2`` frequencies from 1 to 1000."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=t.dtype))
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class VelocityField(nn.Module):
    """v_theta(y_t, t; s). ``forward(batch)`` returns the flow matching loss on
    {"x": x_1 (B, D) in model space, "cond": s (B, C)}."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        h = cfg.hidden_dim
        self.register_buffer("x_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("cond_mean", torch.zeros(cfg.cond_dim))
        self.register_buffer("cond_scale", torch.ones(cfg.cond_dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.cond_embedding = (
            nn.Sequential(nn.Linear(cfg.cond_dim, h), nn.SiLU(), nn.Linear(h, h)) if cfg.cond_dim else None
        )
        self.inp = nn.Linear(cfg.in_dim, h)
        self.blocks = nn.ModuleList(ResidualBlock(h, cfg.dropout, extra_dim=h) for _ in range(cfg.n_layers))
        self.out_norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, cfg.in_dim)

    # ------------------------------------------------------------- statistics
    @torch.no_grad()
    def set_statistics(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        """Standardisation from the training cells: x (N, D) model space, s (N, C)."""
        self.x_mean.copy_(x.mean(0))
        self.x_scale.copy_(x.var(0).mean().sqrt().clamp_min(1e-6))
        if self.config.cond_dim:
            self.cond_mean.copy_(cond.mean(0))
            std = cond.std(0)
            self.cond_scale.copy_(torch.where(std > 1e-4, std, torch.ones_like(std)))

    def to_flow(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, D) -> standardised flow space y (B, D)."""
        return (x - self.x_mean) / self.x_scale

    def from_flow(self, y: torch.Tensor) -> torch.Tensor:
        """Flow space y (B, D) -> model space (B, D)."""
        return y * self.x_scale + self.x_mean

    # ---------------------------------------------------------------- network
    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """s (B, C) -> condition embedding (B, H) (zeros for an unconditional field)."""
        if self.cond_embedding is None:
            return cond.new_zeros(cond.shape[0], self.config.hidden_dim)
        return self.cond_embedding((cond - self.cond_mean) / self.cond_scale)

    def velocity(self, y: torch.Tensor, t: torch.Tensor, cond_emb: torch.Tensor) -> torch.Tensor:
        """v_theta: y_t (B, D), t (B,) or scalar, condition embedding (B, H) -> (B, D)."""
        if t.dim() == 0:
            t = t.expand(y.shape[0])
        emb = self.time_embedding(sinusoidal_embedding(t, self.config.time_dim)) + cond_emb
        h = self.inp(y)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h))

    # ------------------------------------------------------------------- loss
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Conditional flow matching loss with the linear path (module docstring)."""
        y1 = self.to_flow(batch["x"])
        y0 = torch.randn_like(y1)
        t = torch.rand(y1.shape[0], device=y1.device, dtype=y1.dtype)
        yt = (1.0 - t[:, None]) * y0 + t[:, None] * y1
        v = self.velocity(yt, t, self.embed_condition(batch["cond"]))
        fm = ((v - (y1 - y0)) ** 2).mean()
        return {"loss": fm, "flow_matching": fm}

    def loss_weights(self) -> dict[str, float]:
        """The active loss terms and their weights in ``"loss"``."""
        return {"flow_matching": 1.0}
