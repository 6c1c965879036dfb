"""The stable functional API: ``fit``, ``edit``, ``encode``, ``save``, ``load``.

This is the surface the R package and the command line call. Every bad-input error is raised
here (or in :mod:`sccbgm.concepts` / :mod:`sccbgm.data`) as :class:`~sccbgm.errors.SCCBGMError`
with a message that says what to fix, before any torch code runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sccbgm.errors import SCCBGMError
from sccbgm.model import Model

MODELS = ("sccbgm",)

_MODULE_OPTIONS = {
    "hidden_dim", "n_layers", "latent_dim", "unknown_dim", "dropout", "concept_weight",
    "cross_cov_weight", "kl_weight", "skip", "orthogonality", "variational",
}
_TRAIN_OPTIONS = {"epochs", "batch_size", "lr", "lr_decay", "weight_decay", "grad_clip"}


def _check_adata(adata: Any, what: str = "adata") -> None:
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        raise SCCBGMError(f"`{what}` must be an anndata.AnnData, not {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SCCBGMError(f"`{what}` is empty ({adata.n_obs} cells x {adata.n_vars} genes).")


def fit(
    adata: Any,
    concepts: Sequence[str],
    *,
    model: str = "sccbgm",
    seed: int | None = None,
    layer: str | None = None,
    preset: str = "cpu",
    representation: str = "pca",
    n_pcs: int | None = None,
    input_kind: str = "auto",
    residual: bool = True,
    device: str = "auto",
    num_threads: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> Model:
    """Fit a model on ``adata`` with ``concepts`` (obs column names).

    Parameters
    ----------
    adata
        AnnData, cells x genes: raw counts (non-negative integers; library-size normalised to the
        median total and log1p-transformed inside) or log-normalised expression, in X or ``layer``.
    concepts
        obs columns: a categorical/string column gives one binary concept per category; bool or
        0/1 columns are binary; other numeric columns are continuous (scaled to [0, 1] with the
        training range). NaN marks a missing label (masked in the concept loss, Eq. 7).
    model
        ``"sccbgm"``.
    seed
        Seeds weight initialisation and minibatch order; the same seed gives the same model on CPU.
    preset
        ``"cpu"`` (default; hidden 256 x 2 layers, latent/unknown 64, 60 epochs, 64 PCs) or
        ``"paper"`` (appendix D.4: 1024 x 4, latent/unknown 128, 200 epochs, 128 PCs).
    representation, n_pcs
        ``"pca"``: the model works on the top ``n_pcs`` principal components of the log-normalised
        training cells (D.4); ``"genes"``: on all log-normalised genes.
    input_kind
        ``"auto"`` (integers -> counts), ``"counts"`` or ``"lognorm"``.
    residual
        Default edit output of this model (see :func:`edit`).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    num_threads
        torch CPU threads while fitting (None: env ``SCCBGM_NUM_THREADS`` or torch's default).
    progress
        Show a progress bar (None: only on an interactive terminal).
    **options
        Module options (``hidden_dim``, ``n_layers``, ``latent_dim``, ``unknown_dim``, ``dropout``,
        ``concept_weight`` lambda_c, ``cross_cov_weight`` lambda_cc, ``kl_weight`` beta, ``skip``,
        ``orthogonality`` ("cross_cov" | "none"), ``variational``) and training options
        (``epochs``, ``batch_size``, ``lr``, ``lr_decay``, ``weight_decay``, ``grad_clip``).

    Returns
    -------
    A :class:`sccbgm.model.Model`; ``model.history`` holds the per-epoch loss terms and
    ``model.plot_history()`` draws them.
    """
    from sccbgm.concepts import ConceptSpec
    from sccbgm.data import InputTransform, get_matrix
    from sccbgm.presets import get_preset

    _check_adata(adata)
    if model not in MODELS:
        raise SCCBGMError(f"unknown model {model!r}; available models: {list(MODELS)}.")
    unknown_opts = sorted(set(options) - _MODULE_OPTIONS - _TRAIN_OPTIONS)
    if unknown_opts:
        raise SCCBGMError(
            f"unknown option(s) {unknown_opts}; module options: {sorted(_MODULE_OPTIONS)}, "
            f"training options: {sorted(_TRAIN_OPTIONS)}."
        )
    if adata.var_names.has_duplicates:
        raise SCCBGMError("adata.var_names has duplicates; call adata.var_names_make_unique() first.")
    if adata.n_obs < 10:
        raise SCCBGMError(f"need at least 10 training cells, got {adata.n_obs}.")
    cfg = get_preset(preset)
    cfg["module"].update({k: v for k, v in options.items() if k in _MODULE_OPTIONS})
    cfg["train"].update({k: v for k, v in options.items() if k in _TRAIN_OPTIONS})
    n_pcs = int(n_pcs if n_pcs is not None else cfg["n_pcs"])

    spec = ConceptSpec.from_obs(adata.obs, concepts)
    values, mask = spec.encode(adata.obs)
    matrix = get_matrix(adata, layer)
    transform = InputTransform.fit(
        matrix, [str(g) for g in adata.var_names], representation=representation,  # type: ignore[arg-type]
        n_pcs=n_pcs, input_kind=input_kind,  # type: ignore[arg-type]
    )
    options_record = {
        "model": model, "concepts": list(spec.column_names), "preset": preset, "layer": layer,
        "representation": representation, "n_pcs": n_pcs, "input_kind": transform.input_kind,
        "residual": bool(residual), "module": cfg["module"], "train": cfg["train"],
        "n_train_cells": int(adata.n_obs),
    }
    from sccbgm.train import torch_threads

    with torch_threads(num_threads):
        return _fit_vae(matrix, transform, spec, values, mask, cfg, options_record, seed, device, progress)


def _fit_vae(matrix, transform, spec, values, mask, cfg, record, seed, device, progress) -> Model:
    import torch

    from sccbgm.data import CellData
    from sccbgm.modules import ConceptBottleneckVAE, SCCBGMConfig
    from sccbgm.train import TrainConfig, resolve_device, seed_everything, train

    dev = resolve_device(device)
    seed = seed_everything(seed)
    record["seed"] = seed
    data = CellData(matrix, transform, values, mask)
    try:
        module_cfg = SCCBGMConfig(
            in_dim=transform.n_features, n_concepts=spec.n_concepts,
            is_binary=[bool(b) for b in spec.is_binary], **record["module"],
        )
        train_cfg = TrainConfig(**record["train"])
    except TypeError as err:
        raise SCCBGMError(f"bad option: {err}") from None
    vae = ConceptBottleneckVAE(module_cfg).to(dev)
    concepts_t = torch.from_numpy(values).to(dev)
    mask_t = torch.from_numpy(mask).to(dev)

    def make_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": torch.from_numpy(data.inputs(rows)).to(dev), "concepts": concepts_t[rows], "mask": mask_t[rows]}

    history = train(vae, data.n_cells, make_batch, train_cfg, seed=seed, progress=progress, description="scCBGM")
    return Model(name=record["model"], spec=spec, transform=transform, parts={"vae": vae}, options=record,
                 history={"vae": history})


def edit(
    model: Model,
    adata: Any,
    set: Mapping[str, Any],  # noqa: A002 (the user-facing name)
    *,
    residual: bool | None = None,
    cells: Any = None,
    layer: str | None = None,
) -> Any:
    """Counterfactual edit: what would these cells look like with the concepts in ``set``?

    Abduction (posterior mean) -> action (assign the named concepts) -> prediction (decoder).

    Parameters
    ----------
    model
        A fitted model.
    adata
        Cells x genes with (at least) the model's genes, same kind of values as at fit time.
    set
        ``{column: value}``: a category for a categorical column (swaps the one-hot), 0/1 for a
        binary one, a number in the column's own units for a continuous one; or a per-cell array.
    residual
        True: residual-preserving counterfactual x + D(u, c') - D(u, c_hat) in gene space (keeps
        what the model cannot explain); False: the paper's decoder output D(u, c'). None: the
        model's default (True).
    cells
        Subset to edit: bool mask, integer indices or obs names (default all).
    layer
        Expression layer (default X).

    Returns
    -------
    A new AnnData (edited cells x model genes): X = edited log-normalised expression (float32,
    >= 0); obs = the input obs with the edited columns set to their new values; obsm
    ``X_concepts_factual`` / ``X_concepts_edited`` (n, K) and ``X_unknown`` (n, d_u); uns
    ``sccbgm_edit`` records the edit. The input is never modified.
    """
    from sccbgm.editing import edit_cells
    from sccbgm.train import torch_threads

    _check_model(model)
    _check_adata(adata)
    with torch_threads(None):
        return edit_cells(model, adata, set, residual=residual, cells=cells, layer=layer)


def encode(model: Model, adata: Any, *, layer: str | None = None, cells: Any = None) -> Any:
    """Concepts and unknown factors of cells.

    Returns an AnnData (cells x K concept dimensions): X = predicted concepts c_hat (probabilities
    for binary concepts, [0, 1]-scaled values for continuous ones), var_names = concept names;
    obsm ``X_unknown`` (n, d_u) = unknown factors u, ``X_latent`` (n, d_z) = posterior mean z.
    """
    from sccbgm.editing import encode_cells
    from sccbgm.train import torch_threads

    _check_model(model)
    _check_adata(adata)
    with torch_threads(None):
        return encode_cells(model, adata, layer=layer, cells=cells)


def save(model: Model, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` (one safetensors file: weights + JSON header, no pickle)."""
    _check_model(model)
    model.save(path)


def load(path: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """Read a model written by :func:`save`. Never unpickles: a wrong file raises SCCBGMError."""
    return Model.load(path, device=device)


def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise SCCBGMError(f"`model` must be a fitted sccbgm model (from sccbgm.fit/load), not {type(model).__name__}.")
