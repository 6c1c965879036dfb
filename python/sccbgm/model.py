"""The fitted model object and its file format.

A :class:`Model` bundles the trained torch module(s), the :class:`~sccbgm.concepts.ConceptSpec`,
the fitted :class:`~sccbgm.data.InputTransform`, the options it was fitted with and the training
history. On disk it is ONE safetensors file: tensors (module weights under ``"<part>.*"``, the
transform's arrays) plus a JSON header stored in the safetensors metadata. Loading reads tensors
and JSON only: no pickle, no arbitrary code (the safetensors format has no object loading at all,
stricter than ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sccbgm.concepts import ConceptSpec
from sccbgm.data import InputTransform
from sccbgm.errors import SCCBGMError

FORMAT = "sccbgm-model"
FORMAT_VERSION = 1


def module_registry() -> dict[str, tuple[type, type]]:
    """Module class name -> (nn.Module class, config dataclass). Imported lazily (torch)."""
    from sccbgm.modules import REGISTRY

    return REGISTRY


@dataclass
class Model:
    """A fitted sccbgm model (returned by :func:`sccbgm.fit`).

    Attributes
    ----------
    name: model family (``"sccbgm"``, ...).
    spec: concept columns -> K concept dimensions.
    transform: genes -> model input space (PCA on log-normalised training cells by default).
    parts: named torch modules (``{"vae": ConceptBottleneckVAE}``; flow models add ``"flow"``).
    options: everything ``fit`` was called with (presets resolved), JSON-able.
    history: per-epoch loss terms of each trained part, ``{"vae": {"loss": [...], ...}}``.
    """

    name: str
    spec: ConceptSpec
    transform: InputTransform
    parts: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def concepts(self) -> list[str]:
        """The obs columns used as concepts."""
        return self.spec.column_names

    @property
    def concept_names(self) -> list[str]:
        """The K concept dimensions (a categorical column gives one per category)."""
        return self.spec.concept_names

    @property
    def genes(self) -> list[str]:
        return list(self.transform.genes)

    @property
    def default_residual(self) -> bool:
        return bool(self.options.get("residual", True))

    def __repr__(self) -> str:
        n_par = sum(p.numel() for m in self.parts.values() for p in m.parameters())
        return (
            f"sccbgm.Model({self.name!r}, {len(self.genes)} genes, concepts={self.concepts}, "
            f"K={self.spec.n_concepts}, input={self.transform.input_kind}/{self.transform.representation}"
            f"[{self.transform.n_features}], {n_par:,} parameters)"
        )

    def plot_history(self, part: str | None = None, ax: Any = None) -> Any:
        """Plot the training loss terms per epoch (log scale); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        part = part or next(iter(self.history))
        hist = self.history[part]
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        for key, values in hist.items():
            if key != "lr" and np.all(np.asarray(values) > 0):
                ax.plot(np.arange(1, len(values) + 1), values, label=key)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss term (unweighted)")
        ax.set_title(f"{self.name}: {part} training history")
        ax.legend()
        return ax

    # -------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to one safetensors file (see module docstring)."""
        from safetensors.torch import save_file

        tensors = {}
        for part, module in self.parts.items():
            for key, value in module.state_dict().items():
                tensors[f"{part}.{key}"] = value.detach().cpu().contiguous()
        import torch

        for key, value in self.transform.arrays().items():
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "spec": self.spec.to_dict(),
            "transform": self.transform.header(),
            "parts": {
                part: {"class": type(m).__name__, "config": m.config.to_dict()} for part, m in self.parts.items()
            },
            "options": self.options,
            "history": self.history,
        }
        save_file(tensors, os.fspath(path), metadata={"sccbgm": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> Model:
        """Read a model written by :meth:`save`; never unpickles anything."""
        from safetensors import SafetensorError, safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SCCBGMError(f"no model file at {path!r}.")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
        except (SafetensorError, OSError, ValueError) as err:
            raise SCCBGMError(
                f"{path!r} is not an sccbgm model file (expected a file written by sccbgm.save): {err}"
            ) from None
        if "sccbgm" not in meta:
            raise SCCBGMError(f"{path!r} is a safetensors file but not an sccbgm model (no sccbgm header).")
        header = json.loads(meta["sccbgm"])
        if header.get("format") != FORMAT or header.get("format_version", 0) > FORMAT_VERSION:
            raise SCCBGMError(
                f"{path!r} has model format {header.get('format')!r} v{header.get('format_version')}; "
                f"this sccbgm reads {FORMAT!r} up to v{FORMAT_VERSION}."
            )
        registry = module_registry()
        parts = {}
        for part, desc in header["parts"].items():
            module_cls, config_cls = registry[desc["class"]]
            module = module_cls(config_cls(**desc["config"]))
            state = {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")}
            if hasattr(module, "unknown_shift") and "unknown_shift" not in state:
                state["unknown_shift"] = module.unknown_shift  # files written before the leak correction
            module.load_state_dict(state)
            parts[part] = module.to(device).eval()
        arrays = {k: tensors[k].numpy() for k in ("transform.mean", "transform.components")}
        return cls(
            name=header["name"],
            spec=ConceptSpec.from_dict(header["spec"]),
            transform=InputTransform.from_saved(header["transform"], arrays),
            parts=parts,
            options=header["options"],
            history=header["history"],
        )
