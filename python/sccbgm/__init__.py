"""sccbgm: Single-Cell Concept Bottleneck Generative Models.

Interpretable, controllable counterfactual editing of single cells (scCBGM). The public surface is
a small functional API; importing the package is cheap (torch is loaded on first use)::

    import sccbgm
    adata = sccbgm.simulate("synthetic1", n_cells=2000, n_genes=500, seed=0)
    model = sccbgm.fit(adata, concepts=["concept_0", "cell_type"], seed=0)
    edited = sccbgm.edit(model, adata, set={"concept_0": 1})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute); resolved lazily so `import sccbgm` does not import torch.
_LAZY = {
    "fit": ("sccbgm.api", "fit"),
    "edit": ("sccbgm.api", "edit"),
    "encode": ("sccbgm.api", "encode"),
    "save": ("sccbgm.api", "save"),
    "load": ("sccbgm.api", "load"),
    "evaluate": ("sccbgm.evaluation", "evaluate"),
    "simulate": ("sccbgm.simulation", "simulate"),
    "simulate_counterfactual": ("sccbgm.simulation", "simulate_counterfactual"),
    "metrics": ("sccbgm.metrics", None),
    "validate": ("sccbgm.tools.validate", "validate"),
    "sweep": ("sccbgm.tools.sweep", "sweep"),
    "search_concepts": ("sccbgm.tools.search", "search_concepts"),
    "tools": ("sccbgm.tools", None),
    "SCCBGMError": ("sccbgm.errors", "SCCBGMError"),
}

__all__ = [
    "SCCBGMError", "__version__", "edit", "encode", "evaluate", "fit", "load", "metrics", "save",
    "search_concepts", "simulate", "simulate_counterfactual", "sweep", "tools", "validate",
]

if TYPE_CHECKING:
    from sccbgm import metrics, tools
    from sccbgm.api import edit, encode, fit, load, save
    from sccbgm.errors import SCCBGMError
    from sccbgm.evaluation import evaluate
    from sccbgm.simulation import simulate, simulate_counterfactual
    from sccbgm.tools.search import search_concepts
    from sccbgm.tools.sweep import sweep
    from sccbgm.tools.validate import validate


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sccbgm' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
