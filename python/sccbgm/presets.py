"""Named hyper-parameter presets.

``paper`` reproduces appendix D.4 (GPU scale). ``cpu`` is the documented default: a smaller
network and fewer epochs that still learns the demo data in a few minutes on 2 CPU cores. With
Eq. 7's per-cell normalisation (mean over observed labels) and only 60 epochs, the paper's
concept_weight 0.1 leaves the concept head under-trained (held-out accuracy 0.91 vs 1.00 on the
test toy data after 25 epochs), so the CPU preset uses concept_weight 1.0.

The CPU preset's cross_cov_weight is 2.0 (paper: 0.5). Evidence (``sccbgm bench validate``,
docs/validation.md: Kang leave-one-type-out on all 7 types, choose half = seeds 0-1, confirm
half = seeds 2-3, plus two simulator variants): these network values were kept from earlier
work and NOT re-chosen in the protocol (the earlier choice was made on four of the Kang tasks
it was scored on, which is why only the edit was chosen here, on the choose half). What the
protocol chose is the form of the edit (:mod:`sccbgm.editing`: the rate-ratio edit in count
space with the u shift) and, for the lead, an ensemble of 2 members; its verdict against the
floors, both halves, is in docs/validation.md. Measured and not adopted: the reconstruction
loss summed over the input features (``reconstruction="sum"``, the scale of the KL term) at
these weights barely edits (simulator cell MSE 0.0045 vs 0.0022 with the mean, one task);
the additive log edit and the decoder output lose to the other types' mean shift on most
Kang types. Eq. 8 pushes u to be uncorrelated with c_hat, which is right for a designed
intervention such as Kang's stimulation; the simulator draws concept activations with
cell-type-dependent probabilities (C.1), where a lower weight (0.5) suits better.
"""

from __future__ import annotations

import copy
from typing import Any

from sccbgm.errors import SCCBGMError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "module": {
            "hidden_dim": 1024, "n_layers": 4, "latent_dim": 128, "unknown_dim": 128, "dropout": 0.1,
            "concept_weight": 0.1, "cross_cov_weight": 0.5, "kl_weight": 1e-5,
        },
        "train": {"epochs": 200, "batch_size": 128, "lr": 5e-4, "lr_decay": 0.997},
        "n_pcs": 128,
        "flow": {
            "module": {"hidden_dim": 1024, "n_layers": 4, "dropout": 0.1, "time_dim": 128},
            "train": {"epochs": 200, "batch_size": 128, "lr": 3e-4, "lr_decay": 0.997},
        },
    },
    "cpu": {
        "module": {
            "hidden_dim": 256, "n_layers": 2, "latent_dim": 64, "unknown_dim": 64, "dropout": 0.1,
            "concept_weight": 1.0, "cross_cov_weight": 2.0, "kl_weight": 1e-5,
        },
        "train": {"epochs": 60, "batch_size": 128, "lr": 1e-3, "lr_decay": 0.98},
        "n_pcs": 64,
        # ensemble size per model family when fit(n_members=None): 2 scCBGMs (docs/validation.md)
        "n_members": {"sccbgm": 2},
        "flow": {
            "module": {"hidden_dim": 256, "n_layers": 3, "dropout": 0.1, "time_dim": 64},
            "train": {"epochs": 100, "batch_size": 128, "lr": 1e-3, "lr_decay": 0.98},
        },
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``."""
    if name not in PRESETS:
        raise SCCBGMError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
