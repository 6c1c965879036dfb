"""Former home of prediction and fitting, kept so that existing imports keep working:
prediction is :mod:`sccbgm.predict`, fitting :mod:`sccbgm.fitting`."""

from sccbgm.fitting import fit_cvae, fit_flow
from sccbgm.predict import (
    DEFAULT_MODE,
    DEFAULT_N_STEPS,
    FLOW_MODELS,
    MODES,
    SOLVER,
    ChunkPrediction,
    Counterfactual,
    abduct,
    decode,
    flow_condition,
    integrate,
)

__all__ = [
    "DEFAULT_MODE", "DEFAULT_N_STEPS", "FLOW_MODELS", "MODES", "SOLVER", "ChunkPrediction", "Counterfactual",
    "abduct", "decode", "fit_cvae", "fit_flow", "flow_condition", "integrate",
]
