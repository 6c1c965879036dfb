"""Named hyper-parameter presets.

``paper`` reproduces appendix D.4 (GPU scale). ``cpu`` is the documented default: a smaller
network and fewer epochs that still learns the demo data in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

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
    },
    "cpu": {
        "module": {
            "hidden_dim": 256, "n_layers": 2, "latent_dim": 64, "unknown_dim": 64, "dropout": 0.1,
            "concept_weight": 0.1, "cross_cov_weight": 0.5, "kl_weight": 1e-5,
        },
        "train": {"epochs": 60, "batch_size": 128, "lr": 1e-3, "lr_decay": 0.98},
        "n_pcs": 64,
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``."""
    if name not in PRESETS:
        raise SCCBGMError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    p = PRESETS[name]
    return {"module": dict(p["module"]), "train": dict(p["train"]), "n_pcs": p["n_pcs"]}
