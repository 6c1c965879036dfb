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
from sccbgm.fitting import (
    FAMILIES,
    FLOW_MODULE_OPTIONS,
    FLOW_TRAIN_OPTIONS,
    MODULE_OPTIONS,
    TRAIN_OPTIONS,
    FitJob,
    fit_ensemble,
)
from sccbgm.model import Model

MODELS = tuple(FAMILIES)
_ALL_OPTIONS = MODULE_OPTIONS | TRAIN_OPTIONS | FLOW_MODULE_OPTIONS | FLOW_TRAIN_OPTIONS
# option -> (kind, smallest allowed value): a wrong type or range is an SCCBGMError up front
_OPTION_RANGES = {
    "hidden_dim": ("int", 1), "n_layers": ("int", 1), "latent_dim": ("int", 1), "unknown_dim": ("int", 1),
    "concept_embedding_dim": ("int", 1), "epochs": ("int", 1), "batch_size": ("int", 2),
    "flow_hidden_dim": ("int", 1), "flow_n_layers": ("int", 1), "flow_time_dim": ("int", 2),
    "flow_epochs": ("int", 1), "flow_batch_size": ("int", 2),
    "dropout": ("float", 0.0), "concept_weight": ("float", 0.0), "cross_cov_weight": ("float", 0.0),
    "kl_weight": ("float", 0.0), "lr": ("float", 0.0), "lr_decay": ("float", 0.0),
    "weight_decay": ("float", 0.0), "grad_clip": ("float", 0.0), "flow_dropout": ("float", 0.0),
    "flow_lr": ("float", 0.0), "flow_lr_decay": ("float", 0.0), "flow_weight_decay": ("float", 0.0),
    "flow_grad_clip": ("float", 0.0),
}


def _check_option_values(options: Mapping[str, Any]) -> None:
    """Integer options are whole numbers >= their minimum; numeric ones finite and >= 0."""
    for name, value in options.items():
        if name not in _OPTION_RANGES or (value is None and name == "concept_embedding_dim"):
            continue
        kind, low = _OPTION_RANGES[name]
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if kind == "int":
            ok = number and float(value).is_integer() and value >= low
            want = f"a whole number >= {low}"
        else:
            ok = number and bool(np.isfinite(value)) and value >= low
            want = "a finite number >= 0"
        if not ok:
            raise SCCBGMError(f"option {name} must be {want}, not {value!r}.")


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
    base: Model | None = None,
    seed: int | None = None,
    n_members: int | None = None,
    layer: str | None = None,
    preset: str = "cpu",
    representation: str = "pca",
    n_pcs: int | None = None,
    input_kind: str = "auto",
    concept_directions: bool = True,
    residual: bool = True,
    device: str = "auto",
    num_threads: int | None = None,
    progress: bool | None = None,
    distributed: bool | None = None,
    groupby: str | None = None,
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
        0/1 columns are binary; an integer column with at most 20 distinct values (cluster ids) is
        categorical, with a warning; other numeric columns are continuous (scaled to [0, 1] with
        the training range). NaN marks a missing label (masked in the concept loss, Eq. 7).
    model
        ``"sccbgm"`` (scCBGM), ``"cbgm"`` (CBGM of Ismail et al. 2023: CEM bottleneck, no skip
        connections, cosine orthogonality loss), ``"cvae"`` (conditional VAE on the same
        backbone), or a flow matching model on the input space (paper sec. 2.5):
        ``"sccbgm-fm"`` (conditioned on [u, c_hat] of a scCBGM), ``"vanilla-fm"`` (on the
        observed concepts and their mask), ``"cvae-fm"`` (on a CVAE latent and the concepts).
    base
        ``"sccbgm-fm"`` / ``"cvae-fm"`` only: an already fitted scCBGM/CBGM (resp. CVAE) model to
        condition on (its concepts and input space are used); None trains one first with the
        module and training options.
    seed
        Seeds weight initialisation and minibatch order; the same seed gives the same model on CPU.
        Ensemble member m (1..K) uses ``seed + m - 1``.
    n_members
        Ensemble size K; None: the preset's (``"cpu"``: 2 for ``model="sccbgm"``, chosen by
        ``sccbgm bench validate`` (docs/validation.md), 1 for every other model; ``"paper"``: 1).
        K > 1 trains K members that share the input transform and concepts and
        differ in their seed; :func:`edit` then returns their mean edit and per-cell uncertainty
        (``docs/uncertainty.md``). Costs K times the fit time. ``"sccbgm-fm"``: each member is its
        own scCBGM + flow (with ``base``: member m's flow conditions on the base's member m, or
        on the single base model).
    preset
        ``"cpu"`` (default; hidden 256 x 2 layers, latent/unknown 64, 60 epochs, 64 PCs) or
        ``"paper"`` (appendix D.4: 1024 x 4, latent/unknown 128, 200 epochs, 128 PCs).
    representation, n_pcs
        ``"pca"``: the model works on the top ``n_pcs`` principal components of the log-normalised
        training cells (D.4); ``"genes"``: on all log-normalised genes.
    input_kind
        ``"auto"`` (integers -> counts), ``"counts"`` or ``"lognorm"``.
    concept_directions
        With ``representation="pca"``: complete the PCs with the concepts' least-squares effect
        directions (at most K more features), so that weak concept effects, which the top PCs
        miss, can be represented and edited (see :mod:`sccbgm.data`). False: PCs only (D.4).
    residual
        Default edit output of this model (see :func:`edit`).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    num_threads
        torch CPU threads while fitting (None: env ``SCCBGM_NUM_THREADS`` or torch's default).
    progress
        Show a progress bar (None: only on an interactive terminal).
    distributed
        Train on several processes with torch DistributedDataParallel (docs/distributed.md).
        None (default): when launched by ``torchrun`` (``WORLD_SIZE`` > 1) or inside an
        initialised torch.distributed process group; False: never; True: required. Every rank
        calls ``fit`` with the same arguments and data and gets the same model; ``batch_size``
        is the global minibatch (a multiple of the number of processes).
    groupby
        obs column of the populations (e.g. cell types) whose own responses the count-space edit
        is calibrated to: where a group has training cells in both states of a concept, an edit
        of that concept for the group's cells is pulled towards the group's observed response,
        by empirical Bayes (:mod:`sccbgm.groups`; ``model.group_responses.summary()``). A group
        seen in one state only gets the part of the measured groups' misses that they share
        (a pooled correction, shrunk to 0 where their misses are their own). ``model="sccbgm"``
        on raw counts only. None
        (default): no calibration. The validation protocol passes the cell type
        (docs/validation.md).
    **options
        Module options (``hidden_dim``, ``n_layers``, ``latent_dim``, ``unknown_dim``, ``dropout``,
        ``concept_weight`` lambda_c, ``cross_cov_weight`` lambda_cc (weight of whichever
        orthogonality loss is active), ``kl_weight`` beta, and the ablation switches ``skip``
        (decoder skip connections), ``orthogonality`` ("cross_cov" | "cosine" | "none"),
        ``variational`` (False: the autoencoder ablation), ``bottleneck`` ("cbm" | "cem"),
        ``concept_embedding_dim`` (CEM width m), ``reconstruction`` ("mean" over input features or
        "sum")); the CVAE takes ``hidden_dim``, ``n_layers``,
        ``latent_dim``, ``dropout``, ``kl_weight``, ``skip`` and ``variational``. Training
        options (``epochs``, ``batch_size``, ``lr``, ``lr_decay``, ``weight_decay``,
        ``grad_clip``). Flow models add ``flow_hidden_dim``, ``flow_n_layers``,
        ``flow_dropout``, ``flow_time_dim`` and ``flow_epochs``, ``flow_batch_size``,
        ``flow_lr``, ``flow_lr_decay``, ``flow_weight_decay``, ``flow_grad_clip`` (preset
        ``"flow"`` entry). An option that does not apply to ``model`` is an error.

    Returns
    -------
    A :class:`sccbgm.model.Model`; ``model.history`` holds the per-epoch loss terms and
    ``model.plot_history()`` draws them.
    """
    from sccbgm.concepts import ConceptSpec
    from sccbgm.data import InputTransform, get_matrix
    from sccbgm.presets import get_preset

    _check_adata(adata)
    if not isinstance(model, str) or model not in MODELS:
        raise SCCBGMError(f"unknown model {model!r}; available models: {list(MODELS)}.")
    _check_fit_arguments(concepts, seed, n_pcs, representation, input_kind)
    family = FAMILIES[model]
    if base is not None:
        if family.base_part is None:
            takers = [f"{f.name!r}" for f in FAMILIES.values() if f.base_part]
            raise SCCBGMError(f"`base` applies to model={' or '.join(takers)} only, not {model!r}.")
        _check_model(base)
    options, (module_keys, train_keys) = _check_options(family, base, options)
    if adata.var_names.has_duplicates:
        raise SCCBGMError("adata.var_names has duplicates; call adata.var_names_make_unique() first.")
    if adata.n_obs < 10:
        raise SCCBGMError(f"need at least 10 training cells, got {adata.n_obs}.")
    cfg = get_preset(preset)
    if n_members is None:
        n_members = int(cfg.get("n_members", {}).get(model, 1)) if base is None else base.n_members
    if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or n_members < 1:
        raise SCCBGMError(f"n_members must be a positive integer, not {n_members!r}.")
    if base is not None and base.n_members not in (1, n_members):
        raise SCCBGMError(
            f"`base` is an ensemble of {base.n_members} members; fit the flow with n_members="
            f"{base.n_members} (one flow per base member) or pass a single base model."
        )
    cfg["module"].update({k: v for k, v in options.items() if k in module_keys})
    cfg["train"].update({k: v for k, v in options.items() if k in train_keys})
    cfg["flow"]["module"].update({k[5:]: v for k, v in options.items() if k in FLOW_MODULE_OPTIONS})
    cfg["flow"]["train"].update({k[5:]: v for k, v in options.items() if k in FLOW_TRAIN_OPTIONS})
    if base is not None and n_pcs is not None:
        raise SCCBGMError("n_pcs cannot be set with `base`: the flow works in the base model's input space.")
    n_pcs = int(n_pcs if n_pcs is not None else cfg["n_pcs"])

    from sccbgm import distributed as ddp

    if ddp.setup(distributed, device):
        device = ddp.device_for(device)
    if base is not None:
        spec, transform, matrix = _base_inputs(base, adata, concepts, layer, representation)
        n_pcs = int(base.options.get("n_pcs", n_pcs))
        cfg["module"], cfg["train"] = base.options.get("module", {}), base.options.get("train", {})
        values, mask = spec.encode(adata.obs)
    else:
        spec = ConceptSpec.from_obs(adata.obs, concepts)
        matrix = get_matrix(adata, layer)
        _check_fit_memory(matrix, representation, cfg, flow=family.flow)
        values, mask = spec.encode(adata.obs)
        transform = ddp.run_on_rank0(  # fitted once, the same on every rank
            InputTransform.fit, matrix, [str(g) for g in adata.var_names], representation=representation,  # type: ignore[arg-type]
            n_pcs=n_pcs, input_kind=input_kind,  # type: ignore[arg-type]
            concepts=values if concept_directions else None, concept_mask=mask,
        )
    if base is None:
        family.configure(cfg, set(options), spec.n_concepts)
    options_record = {
        "model": model, "concepts": list(spec.column_names), "preset": preset, "layer": layer,
        "representation": representation, "n_pcs": n_pcs, "input_kind": transform.input_kind,
        "concept_directions": transform.n_concept_directions,
        "residual": bool(residual), "module": cfg["module"], "train": cfg["train"],
        "n_train_cells": int(adata.n_obs),
    }
    if ddp.world_size() > 1:
        options_record["world_size"] = ddp.world_size()
    if family.flow:
        options_record["flow"] = cfg["flow"]
    if groupby is not None:
        from sccbgm.groups import check_groupby

        check_groupby(groupby, adata.obs, model, transform.input_kind)  # before any training
        options_record["groupby"] = groupby
    job = FitJob(matrix, transform, spec, values, mask, cfg, options_record, seed, device, progress)
    fitted = fit_ensemble(job, int(n_members), base, num_threads)
    if groupby is not None:
        from sccbgm.groups import fit_group_responses

        fitted.group_responses = fit_group_responses(fitted, adata, groupby, layer)
    return fitted


def _check_options(
    family: Any, base: Model | None, options: dict[str, Any]
) -> tuple[dict[str, Any], tuple[set[str], set[str]]]:
    """Known, well-typed options that apply to ``family`` (with or without ``base``); returns them
    (integers as int) and the (module, training) option names that apply."""
    unknown_opts = sorted(set(options) - _ALL_OPTIONS)
    if unknown_opts:
        raise SCCBGMError(
            f"unknown option(s) {unknown_opts}; module options: {sorted(MODULE_OPTIONS)}, "
            f"training options: {sorted(TRAIN_OPTIONS)}, flow options: "
            f"{sorted(FLOW_MODULE_OPTIONS | FLOW_TRAIN_OPTIONS)}."
        )
    _check_option_values(options)
    options = {k: int(v) if _OPTION_RANGES.get(k, ("",))[0] == "int" and v is not None else v
               for k, v in options.items()}
    module_keys, train_keys, flow_keys = family.applicable_options(base is not None)
    misplaced = sorted(set(options) - module_keys - train_keys - flow_keys)
    if misplaced:
        why = "the given `base` is already trained" if base is not None else "they belong to another model"
        raise SCCBGMError(
            f"option(s) {misplaced} do not apply to model={family.name!r} ({why}); it takes "
            f"{sorted(module_keys | train_keys | flow_keys) or 'no options'}."
        )
    return options, (module_keys, train_keys)


def _check_fit_arguments(concepts: Any, seed: Any, n_pcs: Any, representation: Any, input_kind: Any) -> None:
    """Types and values of ``fit``'s own arguments (options are checked by _check_option_values)."""
    try:
        names = [concepts] if isinstance(concepts, str) else list(concepts)
    except TypeError:
        names = [None]
    if isinstance(concepts, Mapping) or not all(isinstance(c, str) for c in names):
        raise SCCBGMError(f"`concepts` must be an obs column name or a list of them, not {concepts!r}.")

    def whole(value: Any, low: int) -> bool:
        return (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low)

    if seed is not None and not whole(seed, 0):
        raise SCCBGMError(f"seed must be a non-negative whole number or None, not {seed!r}.")
    if n_pcs is not None and not whole(n_pcs, 1):
        raise SCCBGMError(f"n_pcs must be a whole number >= 1, not {n_pcs!r}.")
    if representation not in ("pca", "genes"):
        raise SCCBGMError(f"representation must be 'pca' or 'genes', not {representation!r}.")
    if input_kind not in ("auto", "counts", "lognorm"):
        raise SCCBGMError(f"input_kind must be 'auto', 'counts' or 'lognorm', not {input_kind!r}.")


def _check_fit_memory(matrix: Any, representation: str, cfg: dict[str, Any], *, flow: bool = False) -> None:
    """Refuse a fit whose dense working memory exceeds the available memory (SCCBGMError).

    Both: the network with gradients and Adam moments, and the dense chunks streamed through X
    (:func:`sccbgm.data.chunk_rows`). PCA adds the randomized PCA's G x (k + oversample) float64
    blocks (:func:`sccbgm.data._pca`: basis, X^T X basis, centred product); genes adds the dense
    minibatches.
    """
    from sccbgm.data import PCA_OVERSAMPLE, chunk_rows, require_memory

    n, g = (int(v) for v in matrix.shape)
    net = _network_bytes(cfg, g if representation == "genes" else int(cfg.get("n_pcs", 64)) + 16, flow=flow)
    require_memory(
        net, "the network (weights, gradients and Adam moments)",
        "lower hidden_dim / n_layers (or flow_hidden_dim / flow_n_layers)",
    )
    chunks = min(n, chunk_rows(g)) * g * 8 * 3
    if representation == "genes":
        batch = int(cfg["train"].get("batch_size", 128))
        need = net + min(batch, n) * g * 8 * 6 + chunks
        advice = "use fewer genes (e.g. highly variable genes) or representation='pca'"
    else:
        width = min(int(cfg.get("n_pcs", 64)) + PCA_OVERSAMPLE, g)
        need = net + 3 * g * width * 8 + chunks
        advice = ("select fewer genes first, e.g. sc.pp.highly_variable_genes(adata, n_top_genes=5000, "
                  "subset=True)")
    require_memory(need, f"fitting on {g:,} genes with representation={representation!r}", advice)


def _network_bytes(cfg: dict[str, Any], in_dim: int, *, flow: bool = False) -> float:
    """Rough float32 bytes of the autoencoder and flow networks with gradients and Adam moments
    (16 bytes per parameter): encoder + decoder of ``n_layers`` hidden x hidden layers and their
    input/output layers; the flow likewise."""
    def mlp(hidden: Any, layers: Any, width: float) -> float:
        try:
            h, n_layers = float(hidden or 0), float(layers or 0)
        except (TypeError, ValueError):  # a bad option value: the module config reports it
            return 0.0
        return n_layers * h * h + 2 * h * width

    def num(value: Any) -> float:
        try:
            return float(value or 0)
        except (TypeError, ValueError):
            return 0.0

    m, f = cfg.get("module", {}), cfg.get("flow", {}).get("module", {})
    wide = in_dim + 2 * num(m.get("latent_dim")) + num(m.get("unknown_dim"))
    params = 2 * mlp(m.get("hidden_dim", 256), m.get("n_layers", 2), wide)
    if flow:
        params += mlp(f.get("hidden_dim", 0), f.get("n_layers", 0), 2 * in_dim)
    return 16 * params


def _base_inputs(
    base: Model, adata: Any, concepts: Sequence[str], layer: str | None, representation: str
) -> tuple[Any, Any, Any]:
    """A flow on a given ``base`` uses its concepts and input space: (spec, transform, matrix)."""
    from sccbgm.editing import model_matrix

    wanted = [concepts] if isinstance(concepts, str) else list(concepts)
    if wanted != base.concepts:
        raise SCCBGMError(
            f"`concepts` {wanted} differ from those of `base` {base.concepts}; a flow conditioned "
            "on a base model uses the base model's concepts."
        )
    if representation != base.transform.representation:
        raise SCCBGMError(
            f"representation={representation!r} differs from the base model's "
            f"{base.transform.representation!r}; the flow works in the base model's input space."
        )
    missing = [c for c in base.concepts if c not in adata.obs.columns]
    if missing:
        raise SCCBGMError(f"concept column(s) {missing} not found in adata.obs.")
    matrix = model_matrix(base, adata, np.arange(adata.n_obs), layer)
    return base.spec, base.transform, matrix


def edit(
    model: Model,
    adata: Any,
    set: Mapping[str, Any],  # noqa: A002 (the user-facing name)
    *,
    residual: bool | None = None,
    cells: Any = None,
    layer: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    n_steps: int | None = None,
    count_edit: str | None = "auto",
    shift_unknown: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    group_calibration: bool | None = None,
    share_response: bool | str | None = None,
) -> Any:
    """Counterfactual edit: what would these cells look like with the concepts in ``set``?

    Abduction (posterior mean) -> action (assign the named concepts) -> prediction (decoder, or
    for flow matching models the flow, see ``mode``).

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
        True: residual-preserving counterfactual x + T^-1(x_hat') - T^-1(x_hat) in gene space,
        with x_hat' the model's prediction under the edited concepts and x_hat the same
        prediction under the factual ones (for scCBGM D(u, c') and D(u, c_hat); for a flow the
        same noise y_0 decoded under both conditions); keeps what the model cannot explain.
        False: the model's prediction T^-1(x_hat') (the paper's output). None: the model's
        default (True).
    cells
        Subset to edit (default all): bool mask, 0-based positions (negatives are an error), obs
        names or a selector {obs column: value}; see :mod:`sccbgm.access`.
    layer
        Expression layer (default X).
    mode
        Flow matching models only: ``"edit"`` (default; invert the cell to noise under the
        factual condition, then integrate forward under the edited one) or ``"decode"``
        (integrate fresh noise N(0, I) under the edited condition). An error for other models.
    seed
        Flow models, ``mode="decode"``: seeds the noise (None: random, recorded in uns).
    n_steps
        Flow models: fixed RK4 steps over t in [0, 1] (default 50), each way.
    count_edit
        Models fitted on raw counts: ``"sample"`` applies the model's predicted rate ratio to
        each cell's own counts through a Poisson likelihood (thinning where the rate falls,
        added Poisson counts where it rises, so zeros and detection rates change) and
        re-normalises; ``seed`` seeds the sampling. ``"mean"``: the expected counts instead of a
        sample. None (or ``"none"``): the additive edit of log expression chosen by ``residual``. ``"auto"``
        (default): ``"mean"`` for a scCBGM (``model="sccbgm"``) fitted on counts with the
        residual output, else None.
        Chosen on held-out cells (docs/validation.md). Details: :mod:`sccbgm.editing`.
    shift_unknown
        Concept-bottleneck models: also move the unknown factors u by as much as they varied with
        the edited concepts on the training cells (a linear correction of concept leakage into
        u, stored at fit time). False: u is kept as abducted (the paper). None (default): True
        (chosen on held-out cells, docs/validation.md).
    out
        Path of an ``.h5ad`` to stream the result to, chunk by chunk (memory independent of the
        number of cells; a backed input, ``anndata.read_h5ad(path, backed="r")``, is read in
        sorted chunks). The file's ``X`` is a dense float32 HDF5 dataset (n_cells, n_genes)
        chunked by rows; obs / var / obsm / uns are those of the in-memory result. The input
        file cannot be the output. An ensemble's uncertainty layers are written as dense datasets
        under ``layers/``. Returns the result opened backed (X on disk) with the layers left in
        the file, not in memory (:func:`sccbgm.editing.open_backed`).
    group_calibration
        Models fitted with ``groupby``: add each group's empirical-Bayes correction to the
        count-space edit of its cells (:mod:`sccbgm.groups`; read from ``adata.obs[groupby]``;
        cells of a group the model could not calibrate, of a group not in the training data,
        without a label or without the column keep the model's edit; the uncertainty layers are
        centred on the corrected edit). None (default): on for such models with a count-space
        edit; False: off; True: required (an error otherwise). uns
        ``sccbgm_edit["group_calibration"]`` records the column, the cells corrected
        (``n_cells``), those of them corrected by the pooled correction (``n_cells_pooled``) and
        the cells whose label is not among the fitted groups (``n_cells_unseen_group``).
    share_response
        The count-space edit: cells of one group (an obs column) that undergo the same edit (same
        concept values before and after) share one predicted log rate ratio, the mean of their
        own (over at most :data:`sccbgm.editing.SHARE_MAX_CELLS` of them; member by member for
        an ensemble), applied to each cell's own counts; the model's per-cell variation of the
        response is dropped. None (default): by the model's ``groupby`` column for a model
        fitted with ``groupby`` and a count-space edit (cells without a label or without the
        column keep their own); True: the same, required; a column name: by that column;
        False: each cell its own ratio. Chosen on held-out cells (docs/validation.md, "Shared
        response"). uns ``sccbgm_edit["shared_response"]`` records the column, the groups of
        more than one cell (``n_groups``) and their cells (``n_cells``). A group's response is
        the mean over the cells edited in the same call.

    Returns
    -------
    A new AnnData (edited cells x model genes): X = edited log-normalised expression (float32,
    >= 0); obs = the input obs with the edited columns set to their new values; obsm
    ``X_concepts_factual`` / ``X_concepts_edited`` (n, K) (c_hat for concept-bottleneck models;
    the labels, NaN where missing, for CVAE and vanilla FM) and ``X_unknown`` (n, d): the fixed
    factors (u; z for CVAE models; width 0 for vanilla FM); flow models add ``X_noise`` (n, D),
    the noise y_0 the flow decoded. uns ``sccbgm_edit`` records the edit (``mode``: "abduction"
    for autoencoders; flows add ``solver``, ``n_steps`` and, for decode, ``seed``). The input is
    never modified. With ``out``: the same, read back backed from that file (ensemble layers
    included).

    An ensemble (``sccbgm.fit(..., n_members=K)``, K > 1) edits with every member: X = the mean
    of the members' edited expression (clipped at 0; with the count-space edit, one count edit
    with the members' mean log rate ratio, as validated in docs/validation.md); ``layers["edit_sd"]`` = the sd (ddof 1)
    over members of the predicted change per cell x gene; ``layers["edit_lower"]`` /
    ``layers["edit_upper"]``, a 90% interval of the edited expression: for a count-space edit a
    predictive interval (the members' doubt about the rate ratio and the count noise of the edit,
    :func:`sccbgm.editing.count_space_interval`), for an additive edit X -/+ z_0.95 * a * edit_sd
    (clipped at 0), a being the model's calibration scale (``docs/uncertainty.md``); obsm concepts are the members'
    mean, ``X_unknown`` / ``X_noise`` member 1's; uns ``sccbgm_edit["uncertainty"]`` records how
    the layers were computed. Decode mode seeds member m with ``seed + m - 1``.
    """
    from sccbgm.editing import edit_cells
    from sccbgm.train import torch_threads

    _check_model(model)
    _check_adata(adata)
    with torch_threads(None):
        return edit_cells(
            model, adata, set, residual=residual, cells=cells, layer=layer, mode=mode, seed=seed, n_steps=n_steps,
            count_edit=count_edit, shift_unknown=shift_unknown,
            out=out, group_calibration=group_calibration, share_response=share_response,
        )


def encode(model: Model, adata: Any, *, layer: str | None = None, cells: Any = None) -> Any:
    """Concepts and unknown factors of cells.

    Returns an AnnData (cells x K concept dimensions): X = predicted concepts c_hat (probabilities
    for binary concepts, [0, 1]-scaled values for continuous ones), var_names = concept names;
    obsm ``X_unknown`` (n, d_u) = unknown factors u, ``X_latent`` (n, d_z) = posterior mean z.
    An ensemble (``n_members`` > 1): X = the members' mean c_hat, ``layers["concepts_sd"]`` =
    their sd (ddof 1); u and z are member 1's (each member has its own latent basis, so they are
    not averaged). uns ``sccbgm_encode`` records ``n_members``.
    """
    from sccbgm.editing import encode_cells
    from sccbgm.train import torch_threads

    _check_model(model)
    _check_adata(adata)
    with torch_threads(None):
        return encode_cells(model, adata, layer=layer, cells=cells)


def save(model: Model, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` (one safetensors file: weights + JSON header, no pickle).

    Under distributed training (:mod:`sccbgm.distributed`) only rank 0 writes.
    """
    from sccbgm import distributed as ddp

    _check_model(model)
    if ddp.rank() == 0:
        model.save(path)


def load(path: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """Read a model written by :func:`save`. Never unpickles: a wrong file raises SCCBGMError."""
    from sccbgm.train import resolve_device

    return Model.load(path, device=str(resolve_device(device)))


def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise SCCBGMError(f"`model` must be a fitted sccbgm model (from sccbgm.fit/load), not {type(model).__name__}.")
