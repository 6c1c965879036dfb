"""Pure torch modules. Each returns its named loss terms from ``forward(batch)``.

``REGISTRY`` maps a module class name to (class, config dataclass), used to rebuild saved models.
"""

from __future__ import annotations

from sccbgm.modules.cvae import ConditionalVAE, CVAEConfig
from sccbgm.modules.flow import FlowConfig, VelocityField
from sccbgm.modules.sccbgm import ConceptBottleneckVAE, SCCBGMConfig

REGISTRY: dict[str, tuple[type, type]] = {
    "ConceptBottleneckVAE": (ConceptBottleneckVAE, SCCBGMConfig),
    "ConditionalVAE": (ConditionalVAE, CVAEConfig),
    "VelocityField": (VelocityField, FlowConfig),
}

__all__ = [
    "CVAEConfig", "ConceptBottleneckVAE", "ConditionalVAE", "FlowConfig", "REGISTRY", "SCCBGMConfig",
    "VelocityField",
]
