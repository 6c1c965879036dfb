"""Fitting: one registry of model families, name -> its options and how to fit one member.

:func:`sccbgm.fit` (:mod:`sccbgm.api`) validates its arguments, resolves the preset and the
input transform, and calls :func:`fit_ensemble`, which fits K members with the family's
``fit`` (member m seeded ``seed + m - 1``) and joins them. Prediction for every family lives
in :mod:`sccbgm.predict`.

=============  ======================================================================
family         fit (parts trained here)
=============  ======================================================================
sccbgm, cbgm   :func:`fit_vae`: the concept-bottleneck VAE ("vae"), then B_u for
               ``shift_unknown`` (cbgm: CEM bottleneck, cosine orthogonality, no skip)
cvae           :func:`fit_cvae` ("cvae")
sccbgm-fm      a given scCBGM ``base`` (else one trained first) + :func:`fit_flow`
cvae-fm        a given CVAE ``base`` (else one trained first) + :func:`fit_flow`
vanilla-fm     :func:`fit_flow` on the labels alone ("flow")
=============  ======================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from sccbgm.errors import SCCBGMError
from sccbgm.model import Model

if TYPE_CHECKING:
    import torch

    from sccbgm.concepts import ConceptSpec
    from sccbgm.data import CellData, InputTransform

# option names by what they configure (``sccbgm.fit(**options)``)
MODULE_OPTIONS = frozenset({
    "hidden_dim", "n_layers", "latent_dim", "unknown_dim", "dropout", "concept_weight",
    "cross_cov_weight", "kl_weight", "skip", "orthogonality", "variational", "bottleneck",
    "concept_embedding_dim", "reconstruction",
})
CVAE_OPTIONS = frozenset({"hidden_dim", "n_layers", "latent_dim", "dropout", "kl_weight", "skip", "variational"})
TRAIN_OPTIONS = frozenset({"epochs", "batch_size", "lr", "lr_decay", "weight_decay", "grad_clip"})
FLOW_MODULE_OPTIONS = frozenset({"flow_hidden_dim", "flow_n_layers", "flow_dropout", "flow_time_dim"})
FLOW_TRAIN_OPTIONS = frozenset(f"flow_{k}" for k in TRAIN_OPTIONS)


@dataclass(frozen=True)
class FitJob:
    """What one member's fit needs: training matrix (n, G), its transform, concepts and labels
    ``values``/``mask`` (n, K), the resolved preset ``cfg``, the options ``record`` stored in the
    model, its ``seed``, device, progress switch and the ``tag`` of its progress bars."""

    matrix: Any
    transform: InputTransform
    spec: ConceptSpec
    values: np.ndarray
    mask: np.ndarray
    cfg: dict[str, Any]
    record: dict[str, Any]
    seed: int | None
    device: str
    progress: bool | None
    tag: str = ""


@dataclass(frozen=True)
class Family:
    """A model family: ``module_options`` its autoencoder takes (empty: none), ``flow`` whether it
    has a velocity field, ``base_part`` the part a given ``base`` model supplies (None: takes no
    base), ``fit(job, base)`` one member."""

    name: str
    module_options: frozenset[str]
    flow: bool
    base_part: str | None
    fit: Callable[[FitJob, Model | None], Model]

    def applicable_options(self, with_base: bool) -> tuple[set[str], set[str], set[str]]:
        """(module, training, flow) option names that apply (a given base is already trained)."""
        flow = set(FLOW_MODULE_OPTIONS | FLOW_TRAIN_OPTIONS) if self.flow else set()
        if with_base or not self.module_options:
            return set(), set(), flow
        return set(self.module_options), set(TRAIN_OPTIONS), flow

    def configure(self, cfg: dict[str, Any], given: set[str], n_concepts: int) -> None:
        """Narrow the preset's module/training entries of ``cfg`` to what this family trains."""
        if not self.module_options:
            cfg["module"], cfg["train"] = {}, {}
        elif self.name == "cbgm":
            from sccbgm.modules.cbgm import cbgm_module_options

            cfg["module"] = cbgm_module_options(cfg["module"], given, n_concepts)
        else:
            cfg["module"] = {k: v for k, v in cfg["module"].items() if k in self.module_options}


# ----------------------------------------------------------------------- training parts
def _train_part(
    module: Any, data: CellData, make_batch: Callable[[np.ndarray], dict[str, torch.Tensor]],
    train_options: dict[str, Any], seed: int, progress: bool | None, description: str,
) -> dict[str, list[float]]:
    from sccbgm.train import TrainConfig, train

    try:
        train_cfg = TrainConfig(**train_options)
    except TypeError as err:
        raise SCCBGMError(f"bad option: {err}") from None
    return train(module, data.n_cells, make_batch, train_cfg, seed=seed, progress=progress, description=description)


def _labelled_batches(data: CellData, values: np.ndarray, mask: np.ndarray, device: Any) -> Callable:
    """rows -> {"x": model input, "concepts", "mask"} minibatch on ``device``."""
    import torch

    concepts_t = torch.from_numpy(values).to(device)
    mask_t = torch.from_numpy(mask).to(device)

    def make_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": torch.from_numpy(data.inputs(rows)).to(device), "concepts": concepts_t[rows], "mask": mask_t[rows]}

    return make_batch


def fit_vae(job: FitJob) -> Model:
    """Train the concept-bottleneck VAE (scCBGM / CBGM) with ``job.record``'s options and store
    B_u (:func:`set_unknown_shift`); returns the model."""
    import torch

    from sccbgm.data import CellData
    from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig
    from sccbgm.train import resolve_device, seed_everything

    dev = resolve_device(job.device)
    seed = seed_everything(job.seed)
    record = job.record
    record["seed"] = seed
    data = CellData(job.matrix, job.transform)
    try:
        module_cfg = SCCBGMConfig(
            in_dim=job.transform.n_features, n_concepts=job.spec.n_concepts,
            is_binary=[bool(b) for b in job.spec.is_binary], **record["module"],
        )
    except TypeError as err:
        raise SCCBGMError(f"bad option: {err}") from None
    vae = ConceptBottleneckVAE(module_cfg).to(dev)
    history = _train_part(
        vae, data, _labelled_batches(data, job.values, job.mask, dev), record["train"], seed, job.progress,
        "scCBGM" + job.tag,
    )
    set_unknown_shift(vae, data, torch.from_numpy(job.values).to(dev), torch.from_numpy(job.mask).to(dev), dev)
    return Model(name=record["model"], spec=job.spec, transform=job.transform, parts={"vae": vae}, options=record,
                 history={"vae": history})


def set_unknown_shift(vae: Any, data: CellData, values: Any, mask: Any, dev: Any) -> None:
    """Store B_u, the linear leakage of the concepts into u on the training cells (see
    :func:`sccbgm.modules.sccbgm.estimate_unknown_shift`), for ``edit(..., shift_unknown=True)``."""
    import torch

    from sccbgm.data import CHUNK
    from sccbgm.modules.sccbgm import estimate_unknown_shift

    vae.eval()
    us = []
    with torch.no_grad():
        for s in range(0, data.n_cells, CHUNK):
            rows = np.arange(s, min(s + CHUNK, data.n_cells))
            us.append(vae.abduct(torch.from_numpy(data.inputs(rows)).to(dev))["unknown"])
        vae.unknown_shift.copy_(estimate_unknown_shift(torch.cat(us), values, mask).to(dev))


def fit_cvae(
    data: CellData, values: np.ndarray, mask: np.ndarray, module_options: dict[str, Any],
    train_options: dict[str, Any], *, seed: int, device: Any, progress: bool | None,
    description: str = "CVAE",
) -> tuple[Any, dict[str, list[float]]]:
    """Train the CVAE on the cells of ``data`` with labels (n, K); returns (module, history)."""
    import torch

    from sccbgm.modules import ConditionalVAE, CVAEConfig

    try:
        cfg = CVAEConfig(in_dim=data.transform.n_features, n_concepts=values.shape[1], **module_options)
    except TypeError as err:
        raise SCCBGMError(f"bad option for the CVAE: {err}") from None
    torch.manual_seed(seed)
    cvae = ConditionalVAE(cfg).to(device)
    history = _train_part(
        cvae, data, _labelled_batches(data, values, mask, device), train_options, seed, progress, description
    )
    return cvae, history


def fit_flow(
    parts: dict[str, Any], data: CellData, values: np.ndarray, mask: np.ndarray, flow_options: dict[str, Any],
    *, seed: int, device: Any, progress: bool | None, description: str = "flow",
) -> tuple[Any, dict[str, list[float]]]:
    """Train a velocity field conditioned as the (trained, frozen) ``parts`` dictate.

    The conditions s of all training cells are computed once (abduction with the posterior
    mean, eval mode); returns (VelocityField, history).
    """
    import torch

    from sccbgm.data import CHUNK
    from sccbgm.modules import FlowConfig, VelocityField
    from sccbgm.predict import abduct, flow_condition

    feats, conds = [], []
    for s in range(0, data.n_cells, CHUNK):
        rows = np.arange(s, min(s + CHUNK, data.n_cells))
        x = torch.from_numpy(data.inputs(rows)).to(device)
        ab = abduct(parts, x, torch.from_numpy(values[rows]).to(device), torch.from_numpy(mask[rows]).to(device))
        feats.append(x)
        conds.append(flow_condition(parts, ab, ab["concepts"]))
    x_all, cond_all = torch.cat(feats), torch.cat(conds)
    try:
        cfg = FlowConfig(in_dim=x_all.shape[1], cond_dim=cond_all.shape[1], **flow_options["module"])
    except TypeError as err:
        raise SCCBGMError(f"bad flow option: {err}") from None
    torch.manual_seed(seed)
    field = VelocityField(cfg).to(device)
    field.set_statistics(x_all, cond_all)

    def make_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(rows).to(device)
        return {"x": x_all[idx], "cond": cond_all[idx]}

    history = _train_part(field, data, make_batch, flow_options["train"], seed, progress, description)
    return field, history


# ------------------------------------------------------------------ families' fit
def _fit_generator(job: FitJob, base: Model | None, own_cvae: bool) -> Model:
    """A CVAE (``own_cvae``: trained here) and/or a flow on the frozen part of ``base``."""
    from sccbgm.data import CellData
    from sccbgm.train import resolve_device, seed_everything

    name, record, cfg = job.record["model"], job.record, job.cfg
    dev = resolve_device(job.device)
    seed = seed_everything(job.seed)
    record["seed"] = seed
    data = CellData(job.matrix, job.transform)
    history: dict[str, dict[str, list[float]]] = {}
    parts: dict[str, Any] = {}
    if own_cvae:
        parts["cvae"], history["cvae"] = fit_cvae(
            data, job.values, job.mask, cfg["module"], cfg["train"], seed=seed, device=dev, progress=job.progress,
            description="CVAE" + job.tag,
        )
    elif base is not None:
        part = FAMILIES[name].base_part
        if part not in base.parts or "flow" in base.parts:
            wanted = "a scCBGM/CBGM model (model='sccbgm' or 'cbgm')" if part == "vae" else "a CVAE (model='cvae')"
            raise SCCBGMError(f"`base` of {name!r} must be {wanted}, not a {base.name!r} model.")
        parts[part] = copy.deepcopy(base.parts[part]).to(dev).eval()
        history[part] = base.history.get(part, {})
        record["base"] = base.options
    if FAMILIES[name].flow:
        parts["flow"], history["flow"] = fit_flow(
            parts, data, job.values, job.mask, cfg["flow"], seed=seed, device=dev, progress=job.progress,
            description="flow" + job.tag,
        )
    return Model(name=name, spec=job.spec, transform=job.transform, parts=parts, options=record, history=history)


def _fit_autoencoder(job: FitJob, base: Model | None) -> Model:
    return fit_vae(job)


def _fit_cvae_model(job: FitJob, base: Model | None) -> Model:
    return _fit_generator(job, None, own_cvae=True)


def _fit_sccbgm_fm(job: FitJob, base: Model | None) -> Model:
    if base is None:
        base_record = {k: v for k, v in job.record.items() if k != "flow"} | {"model": "sccbgm"}
        base = fit_vae(replace(job, record=base_record))
    return _fit_generator(job, base, own_cvae=False)


def _fit_cvae_fm(job: FitJob, base: Model | None) -> Model:
    return _fit_generator(job, base, own_cvae=base is None)


def _fit_vanilla_fm(job: FitJob, base: Model | None) -> Model:
    return _fit_generator(job, None, own_cvae=False)


FAMILIES: dict[str, Family] = {
    "sccbgm": Family("sccbgm", MODULE_OPTIONS, flow=False, base_part=None, fit=_fit_autoencoder),
    "sccbgm-fm": Family("sccbgm-fm", MODULE_OPTIONS, flow=True, base_part="vae", fit=_fit_sccbgm_fm),
    "vanilla-fm": Family("vanilla-fm", frozenset(), flow=True, base_part=None, fit=_fit_vanilla_fm),
    "cvae": Family("cvae", CVAE_OPTIONS, flow=False, base_part=None, fit=_fit_cvae_model),
    "cvae-fm": Family("cvae-fm", CVAE_OPTIONS, flow=True, base_part="cvae", fit=_fit_cvae_fm),
    "cbgm": Family("cbgm", MODULE_OPTIONS, flow=False, base_part=None, fit=_fit_autoencoder),
}
"""Every model family ``sccbgm.fit(..., model=name)`` knows, in the order they are listed."""


# ------------------------------------------------------------------------ ensembles
def fit_ensemble(job: FitJob, n_members: int, base: Model | None = None, num_threads: int | None = None) -> Model:
    """Fit ``n_members`` members of ``job.record["model"]`` (member m: seed + m - 1; its flow on
    base member m mod the base's size) and join them; K > 1 also fits the calibration scale of
    the uncertainty layers (:mod:`sccbgm.uncertainty`). Restores the caller's torch RNG."""
    from sccbgm.train import preserve_rng, seed_everything, torch_threads

    family = FAMILIES[job.record["model"]]
    members = []
    with torch_threads(num_threads), preserve_rng():
        seed = seed_everything(job.seed)
        for m in range(int(n_members)):
            tag = f" {m + 1}/{n_members}" if n_members > 1 else ""
            base_m = None if base is None else base.member(m % base.n_members)
            member_job = replace(
                job, cfg=copy.deepcopy(job.cfg), record=copy.deepcopy(job.record), seed=seed + m, tag=tag
            )
            members.append(family.fit(member_job, base_m))
        joined = join_members(members)
        if joined.n_members > 1:
            from sccbgm.uncertainty import calibrate

            joined.options["uncertainty"] = calibrate(joined, job.matrix, job.values, job.mask, seed=seed)
    return joined


def join_members(members: list[Model]) -> Model:
    """One Model holding the members' parts (member 1 first)."""
    first = members[0]
    if len(members) == 1:
        return first
    history = dict(first.history)
    for m, member in enumerate(members[1:], start=2):
        history.update({f"{part} (member {m})": h for part, h in member.history.items()})
    options = dict(first.options)
    options["n_members"] = len(members)
    options["member_seeds"] = [int(member.options["seed"]) for member in members]
    return Model(name=first.name, spec=first.spec, transform=first.transform, parts=first.parts,
                 options=options, history=history, more_members=[member.parts for member in members[1:]])
