"""Pure torch modules. Each returns its named loss terms from ``forward(batch)``.

``REGISTRY`` maps a module class name to (class, config dataclass), used to rebuild saved models.
"""

from __future__ import annotations

from sccbgm.modules.sccbgm import ConceptBottleneckVAE, SCCBGMConfig

REGISTRY: dict[str, tuple[type, type]] = {
    "ConceptBottleneckVAE": (ConceptBottleneckVAE, SCCBGMConfig),
}

__all__ = ["REGISTRY", "ConceptBottleneckVAE", "SCCBGMConfig"]
