"""Pieces of the standard CBGM (Ismail et al. 2023) used as scCBGM ablations (paper sec. 3, D.8).

Shapes: B cells, d_z latent, K concepts, m concept-embedding width, d_u unknown factors.

* :class:`ConceptEmbeddingBottleneck` -- the concept embedding model (CEM, Espinosa Zarlenga et
  al. 2022) bottleneck: per concept k a positive and a negative embedding e_k^+, e_k^- (each
  (B, m), ReLU) computed from z, a probability p_k = sigmoid(w_k . [e_k^+, e_k^-] + b_k), and the
  mixed embedding e_k = p_k e_k^+ + (1 - p_k) e_k^-. The decoder sees the K mixed embeddings
  flattened, (B, K * m); an edit sets p_k to the target value.
* :func:`cosine_penalty` -- the CBGM orthogonality loss: the mean over cells of
  |cos(known embedding, u)|. It compares the two vectors entry by entry, so the known embedding
  (K for a scalar bottleneck, K * m for a CEM) must have exactly d_u entries; this is the
  dimensional constraint the cross-covariance penalty of scCBGM removes (paper sec. 2.3, D.8.1).
* :data:`CBGM_DEFAULTS` and :func:`cbgm_module_options` -- ``model="cbgm"``: the scCBGM network
  with a CEM bottleneck, no decoder skip connections and the cosine loss (Table S8, first row of
  the CBGM family), d_u set to K * m so that the cosine loss is defined.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CBGM_DEFAULTS: dict[str, Any] = {"bottleneck": "cem", "skip": False, "orthogonality": "cosine"}


def default_embedding_dim(unknown_dim: int, n_concepts: int) -> int:
    """CEM width m when none is given: d_u // K (at least 1), so K * m is close to d_u."""
    return max(1, int(unknown_dim) // max(int(n_concepts), 1))


def cbgm_module_options(
    module: Mapping[str, Any], user_keys: Collection[str], n_concepts: int
) -> dict[str, Any]:
    """Module options of ``model="cbgm"``: the preset + user options with the CBGM defaults.

    ``module`` holds the preset's options already updated with the user's (whose names are
    ``user_keys``). CBGM defaults fill what the user did not set; when the user did not set
    ``unknown_dim``, d_u becomes K * m so the cosine loss is defined. An explicit d_u that does
    not match is left for :class:`~sccbgm.modules.sccbgm.SCCBGMConfig` to reject.
    """
    out = dict(module)
    for key, value in CBGM_DEFAULTS.items():
        if key not in user_keys:
            out[key] = value
    if out.get("orthogonality") == "cosine" and "unknown_dim" not in user_keys:
        if out.get("bottleneck", "cbm") == "cem":
            m = out.get("concept_embedding_dim") or default_embedding_dim(out["unknown_dim"], n_concepts)
            out["concept_embedding_dim"] = int(m)
            out["unknown_dim"] = n_concepts * int(m)
        else:
            out["unknown_dim"] = n_concepts
    return out


class ConceptEmbeddingBottleneck(nn.Module):
    """z (B, d_z) -> concept logits (B, K) and embeddings (B, K, 2, m) (index 0: e^+, 1: e^-)."""

    def __init__(self, latent_dim: int, n_concepts: int, embedding_dim: int) -> None:
        super().__init__()
        self.n_concepts = n_concepts
        self.embedding_dim = embedding_dim
        # one Linear(d_z, 2m) per concept, stored as a single (K * 2m, d_z) map
        self.context = nn.Linear(latent_dim, n_concepts * 2 * embedding_dim)
        bound = 1.0 / math.sqrt(2 * embedding_dim)
        self.prob_weight = nn.Parameter(torch.empty(n_concepts, 2 * embedding_dim).uniform_(-bound, bound))
        self.prob_bias = nn.Parameter(torch.empty(n_concepts).uniform_(-bound, bound))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = F.relu(self.context(z)).view(z.shape[0], self.n_concepts, 2 * self.embedding_dim)
        logits = (ctx * self.prob_weight).sum(-1) + self.prob_bias
        return logits, ctx.view(z.shape[0], self.n_concepts, 2, self.embedding_dim)

    @staticmethod
    def mix(embeddings: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """e_k = c_k e_k^+ + (1 - c_k) e_k^-: (B, K, 2, m), (B, K) -> (B, K * m)."""
        w = c.unsqueeze(-1)
        mixed = w * embeddings[:, :, 0] + (1.0 - w) * embeddings[:, :, 1]
        return mixed.reshape(c.shape[0], -1)


def cosine_penalty(known: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """mean_i |cos(known_i, u_i)|: (B, n), (B, n) -> scalar (CBGM orthogonality loss)."""
    return F.cosine_similarity(known, unknown, dim=1, eps=1e-6).abs().mean()
