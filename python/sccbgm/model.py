"""The fitted model object and its file format.

A :class:`Model` bundles the trained torch module(s), the :class:`~sccbgm.concepts.ConceptSpec`,
the fitted :class:`~sccbgm.data.InputTransform`, the options it was fitted with and the training
history. On disk it is ONE safetensors file: tensors (module weights under ``"<part>.*"``, the
transform's arrays) plus a JSON header stored in the safetensors metadata. Loading reads tensors
and JSON only: no pickle, no arbitrary code (the safetensors format has no object loading at all,
stricter than ``torch.load(weights_only=True)``).

Compatibility policy (``format_version`` in the header; docs/reliability.md):

* a file of this or an OLDER format version is read (each version's golden file under
  ``python/tests/golden/`` is loaded and edited by the tests);
* a NEWER format version is refused with an SCCBGMError naming both versions (upgrade sccbgm);
* unknown top-level header keys and unknown keys in ``options`` / ``history`` are ignored
  (information a newer writer may add without changing what the weights mean); an unknown key
  in a module's ``config``, an unknown module class or a missing / mis-shaped tensor changes the
  network, so it is refused with an SCCBGMError that names it. Any change a reader must
  understand bumps ``FORMAT_VERSION``.

Versions: v1 single models; v2 (ensembles, ``fit(n_members=K)``) adds the header list
``more_members`` (one parts entry per member 2..K) and their tensors ``member<m>/<part>.*``. A
single model is still written as v1, so older readers keep reading it. v3 (group calibration,
``fit(groupby=...)``, :mod:`sccbgm.groups`) adds the header entry ``group_responses`` and the
tensors ``groups.shift`` / ``groups.sd``; a model without it is still written as v1 / v2. v4 (the
pooled correction of groups seen in one state) adds ``source``, ``pooled_tau2`` and
``pooled_mu2`` to ``group_responses``: a v3 reader would silently leave those groups uncorrected,
so such a file is v4; a calibration without pooled corrections is still written as v3.

Saving is atomic: the file is written to a temporary file in the target folder and moved over
the target with ``os.replace``, so an interrupted save leaves any earlier model intact. The
folder must exist (a missing folder is an SCCBGMError; sccbgm does not create folders).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sccbgm.concepts import ConceptSpec
from sccbgm.data import InputTransform
from sccbgm.errors import SCCBGMError

FORMAT = "sccbgm-model"
FORMAT_VERSION = 4  # v2: ensembles, v3: group calibration, v4: its pooled correction; older content keeps its version


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
    history: per-epoch loss terms of each trained part, ``{"vae": {"loss": [...], ...}}``;
        members 2..K of an ensemble add ``"<part> (member m)"`` entries.
    more_members: an ensemble's members 2..K (``parts`` is member 1), each a parts dict like
        ``parts``: same concepts and input transform, other seeds (``sccbgm.fit(n_members=K)``).
    group_responses: the per-group corrections of the count-space edit
        (:class:`sccbgm.groups.GroupResponses`, ``sccbgm.fit(groupby=...)``), or None.
    """

    name: str
    spec: ConceptSpec
    transform: InputTransform
    parts: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    more_members: list[dict[str, Any]] = field(default_factory=list)
    group_responses: Any = None

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
    def members(self) -> list[dict[str, Any]]:
        """The parts dicts of all ensemble members (one for a single model)."""
        return [self.parts, *self.more_members]

    @property
    def n_members(self) -> int:
        """Ensemble size K (1: a single model)."""
        return 1 + len(self.more_members)

    def member(self, m: int) -> Model:
        """Ensemble member m (0-based) as a single model (shares spec, transform and modules)."""
        if not 0 <= m < self.n_members:
            raise SCCBGMError(f"member index {m} out of range for an ensemble of {self.n_members}.")
        options = {k: v for k, v in self.options.items() if k not in ("n_members", "member_seeds")}
        if "member_seeds" in self.options:
            options["seed"] = self.options["member_seeds"][m]
        history = {k: v for k, v in self.history.items() if "(member" not in k} if m == 0 else {
            k.split(" (member")[0]: v for k, v in self.history.items() if k.endswith(f"(member {m + 1})")
        }
        return Model(name=self.name, spec=self.spec, transform=self.transform, parts=self.members[m],
                     options=options, history=history)

    @property
    def default_residual(self) -> bool:
        return bool(self.options.get("residual", True))

    def __repr__(self) -> str:
        n_par = sum(p.numel() for parts in self.members for m in parts.values() for p in m.parameters())
        ensemble = f", ensemble of {self.n_members}" if self.n_members > 1 else ""
        if self.group_responses is not None:
            ensemble += f", calibrated by groupby={self.group_responses.groupby!r}"
        return (
            f"sccbgm.Model({self.name!r}{ensemble}, {len(self.genes)} genes, concepts={self.concepts}, "
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
    def format_version(self) -> int:
        """The oldest file format version that holds everything this model needs (module docstring)."""
        if self.group_responses is not None:
            return 4 if self.group_responses.has_pooled else 3
        return 2 if self.more_members else 1

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to one safetensors file, atomically (see module docstring)."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = _path(path)
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise SCCBGMError(f"cannot save the model to {path!r}: it is a folder; give a file name.")
        if not os.path.isdir(folder):
            raise SCCBGMError(f"cannot save the model to {path!r}: the folder {folder!r} does not exist.")
        tensors = {}
        for m, parts in enumerate(self.members):
            for part, module in parts.items():
                for key, value in module.state_dict().items():
                    tensors[f"{_member_prefix(m)}{part}.{key}"] = value.detach().cpu().contiguous()
        for key, value in self.transform.arrays().items():
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        if self.group_responses is not None:
            for key, value in self.group_responses.arrays().items():
                tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        header = {
            "format": FORMAT,
            "format_version": self.format_version(),
            "name": self.name,
            "spec": self.spec.to_dict(),
            "transform": self.transform.header(),
            "parts": {
                part: {"class": type(m).__name__, "config": m.config.to_dict()} for part, m in self.parts.items()
            },
            "more_members": [
                {part: {"class": type(m).__name__, "config": m.config.to_dict()} for part, m in parts.items()}
                for parts in self.more_members
            ],
            "options": self.options,
            "history": self.history,
        }
        if self.group_responses is not None:
            header["group_responses"] = self.group_responses.header()
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as err:
            raise SCCBGMError(f"cannot save the model to {path!r}: {err.strerror}.") from None
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"sccbgm": json.dumps(header)})
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(err, (OSError, SafetensorError)):
                raise SCCBGMError(f"cannot save the model to {path!r}: {err}.") from None
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> Model:
        """Read a model written by :meth:`save`; never unpickles anything.

        Every failure (missing, truncated or foreign file, newer format, unknown module class or
        config key, missing tensor) is an :class:`SCCBGMError` that says what is wrong.
        """
        from safetensors import SafetensorError, safe_open

        path = _path(path)
        if not os.path.isfile(path):
            raise SCCBGMError(f"no model file at {path!r}.")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise SCCBGMError(
                f"{path!r} is not an sccbgm model file, or it is truncated / corrupt (expected a file "
                f"written by sccbgm.save): {err}"
            ) from None
        if "sccbgm" not in meta:
            raise SCCBGMError(f"{path!r} is a safetensors file but not an sccbgm model (no sccbgm header).")
        try:
            header = json.loads(meta["sccbgm"])
        except ValueError as err:
            raise SCCBGMError(f"{path!r}: the sccbgm header is not valid JSON ({err}); the file is corrupt.") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else None
            raise SCCBGMError(f"{path!r} has format {fmt!r}, not {FORMAT!r}; it is not an sccbgm model file.")
        version = header.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SCCBGMError(f"{path!r} has an invalid format_version {version!r}; the file is corrupt.")
        if version > FORMAT_VERSION:
            raise SCCBGMError(
                f"{path!r} is model format v{version}, written by a newer sccbgm; this sccbgm reads "
                f"{FORMAT!r} up to v{FORMAT_VERSION}. Upgrade sccbgm to read it."
            )
        try:
            return cls._from_header(header, tensors, device)
        except SCCBGMError as err:
            raise SCCBGMError(f"{path!r}: {err}") from None
        except KeyError as err:
            raise SCCBGMError(f"{path!r}: the model file lacks the entry {err}; the file is corrupt.") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise SCCBGMError(f"{path!r}: the sccbgm header is malformed ({err}); the file is corrupt.") from None

    @classmethod
    def _from_header(cls, header: dict[str, Any], tensors: dict[str, Any], device: str) -> Model:
        """Rebuild the model from a version-checked header and its tensors (see :meth:`load`)."""

        registry = module_registry()
        members = []
        # files written before ensembles (v1) have no "more_members": a single model
        for m, descs in enumerate([header["parts"], *header.get("more_members", [])]):
            parts = {}
            for part, desc in descs.items():
                parts[part] = _load_part(part, desc, tensors, _member_prefix(m), registry, device)
            if not parts:
                raise SCCBGMError("the model file holds no network." if m == 0 else f"ensemble member {m + 1} holds no network.")
            members.append(parts)
        arrays = _arrays(tensors, ("transform.mean", "transform.components"))
        transform = InputTransform.from_saved(header["transform"], arrays)
        if arrays["transform.mean"].shape != (len(transform.genes),) or (
            arrays["transform.components"].ndim != 2 or arrays["transform.components"].shape[1] != len(transform.genes)
        ):
            raise SCCBGMError("the input transform's arrays do not match its gene list; the file is corrupt.")
        responses = None
        if "group_responses" in header:
            from sccbgm.groups import GroupResponses

            responses = GroupResponses.from_saved(header["group_responses"],
                                                  _arrays(tensors, ("groups.shift", "groups.sd")))
        return cls(
            name=header["name"],
            spec=ConceptSpec.from_dict(header["spec"]),
            transform=transform,
            parts=members[0],
            options=dict(header.get("options", {})),
            history=dict(header.get("history", {})),
            more_members=members[1:],
            group_responses=responses,
        )


def _arrays(tensors: dict[str, Any], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named tensors of a model file as numpy arrays; a missing one is an SCCBGMError."""
    for key in keys:
        if key not in tensors:
            raise SCCBGMError(f"the model file lacks the tensor {key!r}; the file is incomplete.")
    return {key: tensors[key].numpy() for key in keys}


def _member_prefix(m: int) -> str:
    """Tensor-name prefix of ensemble member m (0-based): none for the first, as in v1 files."""
    return "" if m == 0 else f"member{m + 1}/"


def _load_part(part: str, desc: dict[str, Any], tensors: dict[str, Any], prefix: str, registry: Any, device: str) -> Any:
    """Rebuild one network from its header entry and its tensors ``<prefix><part>.*``."""
    import dataclasses

    name = f"{prefix}{part}"
    if desc["class"] not in registry:
        raise SCCBGMError(
            f"part {name!r} has unknown module class {desc['class']!r}; this sccbgm knows "
            f"{sorted(registry)}."
        )
    module_cls, config_cls = registry[desc["class"]]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(desc["config"]) - known)
    if unknown:
        raise SCCBGMError(
            f"part {name!r} ({desc['class']}) has unknown config key(s) {unknown}; it was "
            "written by another sccbgm version whose network this one cannot rebuild."
        )
    module = module_cls(config_cls(**desc["config"]))
    state = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
    if hasattr(module, "unknown_shift") and "unknown_shift" not in state:
        state["unknown_shift"] = module.unknown_shift  # files written before the leak correction (B_u = 0)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise SCCBGMError(f"part {name!r} lacks the tensor(s) {missing[:5]}; the file is incomplete.")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise SCCBGMError(f"part {name!r} has unexpected tensor(s) {extra[:5]}; the file does not match its header.")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise SCCBGMError(
            f"tensor {name}.{k} has shape {tuple(state[k].shape)}, the header's network needs "
            f"{tuple(expected[k].shape)}; the file does not match its header."
        )
    module.load_state_dict(state)
    return module.to(device).eval()


def _path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise SCCBGMError(f"`path` must be a file path (str or pathlib.Path), not {path!r}.")
    return os.fspath(path)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
