"""Flow matching on scCBGM embeddings (paper sec. 2.5), the CVAE baseline, and the
counterfactual predictor of every model family.

Model families (``sccbgm.fit(..., model=...)``) and what conditions their generator:

=============  =========================  ====================================================
model          parts                      condition s of the flow / decoder
=============  =========================  ====================================================
sccbgm, cbgm   vae                        decoder D([u, c_hat])
cvae           cvae                       decoder D([z, c * m, m])
sccbgm-fm      vae (scCBGM) + flow        [u, c_hat] of the scCBGM posterior mean
cvae-fm        cvae + flow                [z, c * m, m]: CVAE posterior mean + labels
vanilla-fm     flow                       [c * m, m]: the observed labels and their mask
=============  =========================  ====================================================

(c: observed labels, m: their mask, Eq. 7; missing labels enter as value 0, mask 0.)

Counterfactuals (abduction -> action -> prediction). Abduction gives the cell's fixed factors
(u, or z) and its concepts (c_hat for concept-bottleneck models, the labels otherwise); the
action assigns the edited concept dimensions; the prediction is, for autoencoders, the decoder
output, and for flows one of two modes (sec. 2.5):

* ``mode="edit"`` (default; the paper finds it more accurate): encode the cell to noise under
  the factual condition, y_0 = phi_1^{-1}(y; s), then decode under the edited one,
  y_hat' = phi_1(y_0; s');
* ``mode="decode"``: draw y_0 ~ N(0, I) from a generator seeded with ``seed`` and decode,
  y_hat' = phi_1(y_0; s').

ODE solver: classical fixed-step Runge-Kutta 4 on t in [0, 1] with ``n_steps`` equal steps
(default :data:`DEFAULT_N_STEPS`; 4 evaluations of v_theta per step); the inverse map integrates
the same ODE from t = 1 back to t = 0 with the same steps. The velocity field sees the
standardised model space (:mod:`sccbgm.modules.flow`).

Every predictor also returns the factual reconstruction x_hat (the same prediction with the
factual condition, and for flows the same y_0), which the residual-preserving output
x + T^-1(x_hat') - T^-1(x_hat) of :func:`sccbgm.edit` needs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sccbgm.concepts import ConceptSpec
from sccbgm.data import CHUNK, CellData, InputTransform
from sccbgm.errors import SCCBGMError
from sccbgm.model import Model

FLOW_MODELS = ("sccbgm-fm", "vanilla-fm", "cvae-fm")
MODES = ("edit", "decode")
DEFAULT_MODE = "edit"
DEFAULT_N_STEPS = 50
SOLVER = "rk4"


# --------------------------------------------------------------------------- ODE
@torch.no_grad()
def integrate(
    field: Any, y: torch.Tensor, cond_emb: torch.Tensor, t0: float, t1: float, n_steps: int
) -> torch.Tensor:
    """Fixed-step RK4 solution of dy/dt = v_theta(y, t; s) from t0 to t1: y (B, D) -> (B, D).

    ``cond_emb`` (B, H) is the condition embedding (constant along the path); t1 < t0 runs the
    flow backwards (inversion).
    """
    h = (t1 - t0) / n_steps
    for i in range(n_steps):
        t = torch.tensor(t0 + i * h, dtype=y.dtype, device=y.device)
        k1 = field.velocity(y, t, cond_emb)
        k2 = field.velocity(y + 0.5 * h * k1, t + 0.5 * h, cond_emb)
        k3 = field.velocity(y + 0.5 * h * k2, t + 0.5 * h, cond_emb)
        k4 = field.velocity(y + h * k3, t + h, cond_emb)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


# ------------------------------------------------------------------ abduction
def _label_condition(concepts: torch.Tensor) -> torch.Tensor:
    """Labels with NaN for missing (B, K) -> [c * m, m] (B, 2K)."""
    from sccbgm.modules.cvae import concept_condition

    mask = torch.isfinite(concepts).to(concepts.dtype)
    return concept_condition(torch.nan_to_num(concepts), mask)


@torch.no_grad()
def abduct(parts: dict[str, Any], x: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cell's fixed factors and concepts under the model's abduction.

    x (B, D) model input; labels ``values``/``mask`` (B, K). Returns "unknown" (B, d): u of a
    concept-bottleneck model (posterior mean), z of a CVAE, (B, 0) for vanilla FM; "concepts"
    (B, K): c_hat for a concept-bottleneck model, else the labels with NaN where missing; and
    "concept_embeddings" (B, K, 2, m) for a CEM bottleneck.
    """
    if "vae" in parts:
        ab = parts["vae"].abduct(x)
        del ab["latent"]
        return ab
    labels = torch.where(mask > 0, values, torch.full_like(values, float("nan")))
    if "cvae" in parts:
        z = parts["cvae"].abduct(x, _label_condition(labels))["latent"]
        return {"unknown": z, "concepts": labels}
    return {"unknown": x.new_zeros(x.shape[0], 0), "concepts": labels}


def flow_condition(parts: dict[str, Any], ab: dict[str, torch.Tensor], concepts: torch.Tensor) -> torch.Tensor:
    """The flow's condition s for abducted factors and (possibly edited) concepts (B, K)."""
    if "vae" in parts:
        return torch.cat([ab["unknown"], concepts], dim=-1)
    return torch.cat([ab["unknown"], _label_condition(concepts)], dim=-1)


@torch.no_grad()
def decode(parts: dict[str, Any], ab: dict[str, torch.Tensor], concepts: torch.Tensor) -> torch.Tensor:
    """Autoencoder prediction x_hat (B, D) from abducted factors and concepts (B, K)."""
    if "vae" in parts:
        return parts["vae"].decode(ab["unknown"], concepts, ab.get("concept_embeddings"))
    return parts["cvae"].decode(ab["unknown"], _label_condition(concepts))


# ------------------------------------------------------------------- predictor
@dataclass
class ChunkPrediction:
    """Counterfactual of a chunk of n cells; model-space arrays are (n, D)."""

    edited: np.ndarray
    factual: np.ndarray | None
    concepts_factual: np.ndarray
    concepts_edited: np.ndarray
    unknown: np.ndarray
    noise: np.ndarray | None = None


class Counterfactual:
    """Abduction -> action -> prediction for any fitted model (see the module docstring).

    ``mode``, ``seed`` and ``n_steps`` apply to flow models only (None: defaults); for other
    models they must be None. Call it on chunks of cells in order: in decode mode the noise comes
    from one generator seeded once, so the same seed and cells give the same output.
    """

    def __init__(
        self, model: Model, *, mode: str | None = None, seed: int | None = None, n_steps: int | None = None,
        shift_unknown: bool = False,
    ) -> None:
        self.model = model
        self.shift_unknown = bool(shift_unknown) and "vae" in model.parts
        self.parts = model.parts
        self.is_flow = "flow" in self.parts
        if not self.is_flow:
            given = [k for k, v in (("mode", mode), ("seed", seed), ("n_steps", n_steps)) if v is not None]
            if given:
                raise SCCBGMError(
                    f"{', '.join(given)} only apply to flow matching models ({', '.join(FLOW_MODELS)}); "
                    f"model {model.name!r} edits by decoding the abducted factors, so leave "
                    f"{' / '.join(given)} unset."
                )
            self.mode = None
            self.seed = None
            self.n_steps = None
        else:
            mode = DEFAULT_MODE if mode is None else mode
            if mode not in MODES:
                raise SCCBGMError(f"mode must be one of {list(MODES)}, not {mode!r}.")
            if n_steps is None:
                n_steps = DEFAULT_N_STEPS
            if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
                raise SCCBGMError(f"n_steps must be a positive integer, not {n_steps!r}.")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
                raise SCCBGMError(f"seed must be a non-negative integer or None, not {seed!r}.")
            if mode == "edit" and seed is not None:
                raise SCCBGMError(
                    "seed applies to mode='decode' only: mode='edit' inverts each cell to its own "
                    "noise and draws none, so leave seed unset (or use mode='decode')."
                )
            if mode == "decode" and seed is None:
                seed = int(np.random.SeedSequence().generate_state(1)[0] % (2**31))
            self.mode, self.n_steps = mode, int(n_steps)
            self.seed = int(seed) if seed is not None else None
            self._generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        first = next(iter(self.parts.values()))
        self.device = next(first.parameters()).device

    def metadata(self) -> dict[str, Any]:
        """How the edit was predicted (for ``uns["sccbgm_edit"]``); JSON-able, no None."""
        if not self.is_flow:
            return {"mode": "abduction"}
        meta: dict[str, Any] = {"mode": self.mode, "solver": SOLVER, "n_steps": self.n_steps}
        if self.seed is not None:
            meta["seed"] = self.seed
        return meta

    @torch.no_grad()
    def __call__(
        self,
        features: np.ndarray,
        observed: np.ndarray,
        observed_mask: np.ndarray,
        target: np.ndarray,
        assigned: np.ndarray,
        need_factual: bool = True,
    ) -> ChunkPrediction:
        """features (n, D) model input; labels ``observed``/``observed_mask`` (n, K); edit
        ``target`` (n, K) on the ``assigned`` (n, K) dimensions."""
        dev = self.device

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)

        x = tensor(features)
        ab = abduct(self.parts, x, tensor(observed), tensor(observed_mask))
        c_fact = ab["concepts"]
        c_edit = torch.where(torch.from_numpy(np.array(assigned, dtype=bool)).to(dev), tensor(target), c_fact)
        noise = None
        ab_edit = ab
        if self.shift_unknown:
            # move u with the concepts as far as it leaked with them on the training cells
            shift = (c_edit - c_fact) @ self.parts["vae"].unknown_shift
            ab_edit = {**ab, "unknown": torch.relu(ab["unknown"] + shift)}
        if not self.is_flow:
            edited = decode(self.parts, ab_edit, c_edit)
            factual = decode(self.parts, ab, c_fact) if need_factual else None
        else:
            field = self.parts["flow"]
            emb_fact = field.embed_condition(flow_condition(self.parts, ab, c_fact))
            emb_edit = field.embed_condition(flow_condition(self.parts, ab_edit, c_edit))
            if self.mode == "edit":
                y0 = integrate(field, field.to_flow(x), emb_fact, 1.0, 0.0, self.n_steps)
            else:
                y0 = torch.randn(x.shape, generator=self._generator, dtype=torch.float32).to(dev)
            if need_factual:
                both = integrate(
                    field, torch.cat([y0, y0]), torch.cat([emb_edit, emb_fact]), 0.0, 1.0, self.n_steps
                )
                edited, factual = field.from_flow(both[: x.shape[0]]), field.from_flow(both[x.shape[0] :])
            else:
                edited = field.from_flow(integrate(field, y0, emb_edit, 0.0, 1.0, self.n_steps))
                factual = None
            noise = y0.cpu().numpy()
        return ChunkPrediction(
            edited=edited.cpu().numpy(),
            factual=None if factual is None else factual.cpu().numpy(),
            concepts_factual=c_fact.cpu().numpy(),
            concepts_edited=c_edit.cpu().numpy(),
            unknown=ab["unknown"].cpu().numpy(),
            noise=noise,
        )


# --------------------------------------------------------------------- fitting
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


def fit_cvae(
    data: CellData, values: np.ndarray, mask: np.ndarray, module_options: dict[str, Any],
    train_options: dict[str, Any], *, seed: int, device: torch.device, progress: bool | None,
    description: str = "CVAE",
) -> tuple[Any, dict[str, list[float]]]:
    """Train the CVAE on the cells of ``data`` with labels (n, K); returns (module, history)."""
    from sccbgm.modules import ConditionalVAE, CVAEConfig

    try:
        cfg = CVAEConfig(in_dim=data.transform.n_features, n_concepts=values.shape[1], **module_options)
    except TypeError as err:
        raise SCCBGMError(f"bad option for the CVAE: {err}") from None
    torch.manual_seed(seed)
    cvae = ConditionalVAE(cfg).to(device)
    concepts_t = torch.from_numpy(values).to(device)
    mask_t = torch.from_numpy(mask).to(device)

    def make_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": torch.from_numpy(data.inputs(rows)).to(device), "concepts": concepts_t[rows], "mask": mask_t[rows]}

    history = _train_part(cvae, data, make_batch, train_options, seed, progress, description)
    return cvae, history


def fit_flow(
    parts: dict[str, Any], data: CellData, values: np.ndarray, mask: np.ndarray, flow_options: dict[str, Any],
    *, seed: int, device: torch.device, progress: bool | None, description: str = "flow",
) -> tuple[Any, dict[str, list[float]]]:
    """Train a velocity field conditioned as the (trained, frozen) ``parts`` dictate.

    The conditions s of all training cells are computed once (abduction with the posterior
    mean, eval mode); returns (VelocityField, history).
    """
    from sccbgm.modules import FlowConfig, VelocityField

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


def fit_model(
    name: str,
    matrix: Any,
    transform: InputTransform,
    spec: ConceptSpec,
    values: np.ndarray,
    mask: np.ndarray,
    cfg: dict[str, Any],
    record: dict[str, Any],
    *,
    seed: int | None,
    device: str,
    progress: bool | None,
    base: Model | None = None,
    tag: str = "",
) -> Model:
    """Fit ``"cvae"`` or a flow model (``base``: its trained scCBGM / CVAE, trained here when
    None for ``"cvae-fm"``; ``"sccbgm-fm"`` needs it). ``cfg``: the resolved preset."""
    from sccbgm.train import resolve_device, seed_everything

    dev = resolve_device(device)
    seed = seed_everything(seed)
    record["seed"] = seed
    data = CellData(matrix, transform, values, mask)
    history: dict[str, dict[str, list[float]]] = {}
    if name in ("cvae", "cvae-fm") and base is None:
        cvae, history["cvae"] = fit_cvae(
            data, values, mask, cfg["module"], cfg["train"], seed=seed, device=dev, progress=progress,
            description="CVAE" + tag,
        )
        parts: dict[str, Any] = {"cvae": cvae}
        if name == "cvae":
            return Model(name=name, spec=spec, transform=transform, parts=parts, options=record, history=history)
    elif base is not None:
        part = "vae" if name == "sccbgm-fm" else "cvae"
        if part not in base.parts or "flow" in base.parts:
            wanted = "a scCBGM/CBGM model (model='sccbgm' or 'cbgm')" if part == "vae" else "a CVAE (model='cvae')"
            raise SCCBGMError(f"`base` of {name!r} must be {wanted}, not a {base.name!r} model.")
        parts = {part: copy.deepcopy(base.parts[part]).to(dev).eval()}
        history[part] = base.history.get(part, {})
        record["base"] = base.options
    elif name == "vanilla-fm":
        parts = {}
    else:
        raise SCCBGMError(f"{name!r} needs a trained base model.")
    field, history["flow"] = fit_flow(
        parts, data, values, mask, cfg["flow"], seed=seed, device=dev, progress=progress,
        description="flow" + tag,
    )
    parts["flow"] = field
    return Model(name=name, spec=spec, transform=transform, parts=parts, options=record, history=history)
