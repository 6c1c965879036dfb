"""Shared network blocks (paper D.4): residual MLPs with LayerNorm and dropout."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """h + Dropout(act(Linear(LayerNorm(h) [, extra]))): a pre-norm residual layer of width ``dim``.

    ``extra_dim`` > 0 concatenates an extra input (e.g. the concepts c, paper Eq. 5) to the
    normalised hidden state before the linear map.
    """

    def __init__(self, dim: int, dropout: float = 0.1, extra_dim: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim + extra_dim, dim)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.extra_dim = extra_dim

    def forward(self, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(h)
        if self.extra_dim:
            x = torch.cat([x, extra], dim=-1)
        return h + self.dropout(self.act(self.linear(x)))


class ResidualMLP(nn.Module):
    """in_dim -> Linear -> ``n_layers`` residual blocks of width ``hidden_dim`` -> LayerNorm.

    Input (B, in_dim), output (B, hidden_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.ModuleList(ResidualBlock(hidden_dim, dropout) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out_norm(h)
