"""Counterfactual editing by abduction -> action -> prediction (paper section 2.4).

1. Abduction: z = E_mu(x) (posterior mean), c_hat = f_c(z), u = f_u(z).
2. Action: on the concept dimensions named in ``set``, c_hat_k <- c'_k. Following the paper, a
   cell whose observed label already equals the target keeps c_hat for that column; otherwise the
   column's whole block is assigned (a categorical column's one-hot is swapped). Where the label
   is missing, or the concept column is absent from ``adata.obs``, the block is assigned. A label a
   concept-bottleneck model cannot encode (a category unseen at fit time) counts as missing: the
   model abducts the concepts from expression, so it does not block the edit.
3. Prediction: x_hat' = D([u, c_hat']) in the model's input space, mapped back to genes.

Two outputs in gene space (log-normalised), chosen by ``residual``:

* ``residual=False`` -- the paper's decoder output: x' = T^-1(D(u, c_hat'));
* ``residual=True`` (default) -- residual-preserving: x' = x + T^-1(D(u, c_hat')) - T^-1(D(u, c_hat)),
  i.e. the model's predicted *change* added to the observed cell, so whatever the model cannot
  explain (its own noise, and everything the PCA drops) is kept. Clipped to >= 0.

A third output works in count space (``count_edit``, models fitted on raw counts only): the
model's predicted rate ratio r_g = (expm1(x_hat'_g) + eps) / (expm1(x_hat_g) + eps) (normalised
units, eps = :data:`RATE_EPS`) is applied to the cell's own counts x_g through a Poisson
likelihood, so zeros and detection rates change as in real cells:

* r < 1: binomial thinning, x'_g ~ Bin(x_g, r_g) (exact for a Poisson count);
* r > 1: x'_g = x_g + Poisson(lambda_g (r_g - 1)), lambda_g = the cell's posterior rate under a
  Gamma(theta, theta / mu_g) prior around the model's factual mean mu_g (counts of this cell's
  library): lambda_g = mu_g (theta + x_g) / (theta + mu_g), theta = :data:`COUNT_THETA`;
* ``"mean"`` takes the expectation of x' instead of a sample;

then x' is library-size normalised (its own total, to ``target_sum``) and log1p-transformed.

``shift_unknown=True`` (concept-bottleneck models) corrects for the leakage of concepts into u:
the abducted u is moved by (c' - c_hat) B_u before decoding, with B_u the least-squares change of
u per unit of each concept over the training cells (stored at fit time); u stays >= 0.

Defaults (``count_edit="auto"``, ``shift_unknown=None``): a scCBGM fitted on raw counts edits in
count space (expectation) with the u shift; a model fitted on log-normalised values, and the
other model families (not measured in the protocol), edit additively, residual-preserving;
flows keep u as abducted. Chosen on the choose half of
``sccbgm bench validate`` and confirmed on the other half (docs/validation.md): on the Kang
leave-one-type-out tasks the additive edit was worse than no edit on 4 of 7 types in the issue's
z-scored space, the count-space edit beat no edit on all 7; the residual output is kept over the
decoder output, which is 20-70 times worse cell by cell on the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.data import (
    CHUNK,
    check_values,
    dense_rows,
    get_matrix,
    matrix_bytes,
    require_memory,
    take_rows,
)
from sccbgm.errors import SCCBGMError
from sccbgm.model import Model
from sccbgm.uncertainty import LAYERS, edit_metadata, interval_half_width

RATE_EPS = 0.1
"""eps of the count-space rate ratio, in normalised counts (0.1 of a count at ``target_sum``)."""
COUNT_THETA = 1.0
"""theta of the Gamma prior of a cell's rate in the count-space edit (1: the cell's own count and
the model's mean weigh equally when mu = 1)."""
DEFAULT_SHIFT_UNKNOWN = True
"""Default of ``shift_unknown`` (chosen on the choose half of ``sccbgm bench validate``)."""
COUNT_EDITS = ("auto", None, "sample", "mean")


def rate_log_ratio(factual: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """log r, the model's predicted log rate ratio per cell and gene, from its factual / edited
    log-normalised means (n, G)."""
    mu_f = np.expm1(np.clip(factual, 0.0, None))
    mu_e = np.expm1(np.clip(edited, 0.0, None))
    return np.log((mu_e + RATE_EPS) / (mu_f + RATE_EPS))


def count_space_edit(
    counts: np.ndarray, factual: np.ndarray, edited: np.ndarray, target_sum: float,
    rng: np.random.Generator | None, expectation: bool = False,
) -> np.ndarray:
    """Counts (n, G), the model's factual / edited log-normalised means (n, G) -> edited
    log-normalised cells (n, G) through the count likelihood of the module docstring."""
    counts = np.asarray(counts, dtype=np.float64)
    mu_f = np.expm1(np.clip(factual, 0.0, None))
    mu_e = np.expm1(np.clip(edited, 0.0, None))
    ratio = (mu_e + RATE_EPS) / (mu_f + RATE_EPS)
    lib = counts.sum(axis=1, keepdims=True)
    lib[lib == 0] = 1.0
    mu = mu_f * lib / target_sum
    rate = mu * (COUNT_THETA + counts) / (COUNT_THETA + mu)
    down = ratio < 1.0
    if expectation:
        new = np.where(down, counts * ratio, counts + rate * (ratio - 1.0))
    else:
        assert rng is not None
        thinned = rng.binomial(counts.astype(np.int64), np.minimum(ratio, 1.0))
        added = rng.poisson(np.where(down, 0.0, rate * (ratio - 1.0)))
        new = np.where(down, thinned, counts + added).astype(np.float64)
    total = new.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    return np.log1p(new / total * target_sum)


def select_cells(adata: Any, cells: Any) -> np.ndarray:
    """``cells`` (None | bool mask | int indices | obs names) -> sorted-as-given int indices."""
    n = adata.n_obs
    if cells is None:
        idx = np.arange(n)
    else:
        arr = np.asarray(cells)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise SCCBGMError(f"boolean `cells` mask has length {arr.size}, adata has {n} cells.")
            idx = np.flatnonzero(arr)
        elif arr.dtype.kind in "iu":
            idx = arr.astype(np.int64).ravel()
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise SCCBGMError(f"`cells` index out of range for {n} cells.")
            idx = idx % n
        else:
            names = pd.Index(adata.obs_names)
            if names.has_duplicates:
                raise SCCBGMError(
                    "adata.obs_names has duplicates, so cells cannot be selected by name; call "
                    "adata.obs_names_make_unique() first, or select by position."
                )
            pos = names.get_indexer(arr.astype(str).ravel())
            if (pos < 0).any():
                missing = arr.astype(str).ravel()[pos < 0][:5].tolist()
                raise SCCBGMError(f"`cells` names not found in adata.obs_names, e.g. {missing}.")
            idx = pos
    if idx.size == 0:
        raise SCCBGMError("the selection is empty: no cells to process.")
    if cells is not None and np.unique(idx).size != idx.size:
        dup = pd.Index(adata.obs_names[idx])
        example = dup[dup.duplicated()].unique()[:5].tolist()
        raise SCCBGMError(
            f"`cells` selects {idx.size - np.unique(idx).size} cell(s) more than once (e.g. {example}); "
            "each cell can be edited once per call. Pass unique cells (e.g. pd.unique(cells))."
        )
    return idx


def align_genes(adata: Any, genes: Sequence[str]) -> np.ndarray | None:
    """Column indices of the model's genes in ``adata`` (None when already identical)."""
    var = pd.Index(adata.var_names.astype(str))
    if len(var) == len(genes) and (var == pd.Index(genes)).all():
        return None
    if var.has_duplicates:
        raise SCCBGMError("adata.var_names has duplicates; call adata.var_names_make_unique() first.")
    pos = var.get_indexer(list(genes))
    missing = int((pos < 0).sum())
    if missing:
        example = [g for g, p in zip(genes, pos, strict=True) if p < 0][:5]
        raise SCCBGMError(
            f"the data lack {missing} of the model's {len(genes)} genes (e.g. {example}); the genes "
            "of the data must include every gene the model was trained on."
        )
    return pos


def model_matrix(
    model: Model, adata: Any, rows: np.ndarray, layer: str | None, *, output_genes: int = 0
) -> Any:
    """The selected cells x model genes (sparse stays sparse), validated against the model input.

    Refuses (SCCBGMError) a call whose memory would exceed the available memory: the selected
    rows' copy, the dense chunks streamed through them and, with ``output_genes`` G, the dense
    (cells x G) float32 output of an edit.
    """
    matrix = get_matrix(adata, layer)
    n, g = rows.size, len(model.genes)
    need = (matrix_bytes(matrix) * n / max(matrix.shape[0], 1) + min(n, CHUNK) * g * 8 * 6
            + n * output_genes * 4)
    require_memory(
        need, f"processing {n:,} cells x {g:,} genes",
        "process fewer cells per call (`cells=`), e.g. in batches of 50,000, and concatenate",
    )
    cols = align_genes(adata, model.genes)
    sub = take_rows(matrix, rows)
    if cols is not None:
        sub = sub[:, cols]
    is_int = check_values(sub)
    if model.transform.input_kind == "counts" and not is_int:
        raise SCCBGMError(
            "the model was trained on raw counts but these data are not integer counts; pass the "
            "counts (e.g. `layer='counts'`)."
        )
    return sub


def _abduct(model: Model, feats: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    if "vae" not in model.parts:
        raise SCCBGMError(
            f"a {model.name!r} model has no concept encoder; encode needs a concept bottleneck "
            "model ('sccbgm', 'cbgm' or 'sccbgm-fm')."
        )
    vae = model.parts["vae"]
    dev = next(vae.parameters()).device
    with torch.no_grad():
        out = vae.abduct(torch.from_numpy(feats).to(dev))
    return {k: v.cpu().numpy() for k, v in out.items()}


def encode_cells(model: Model, adata: Any, *, layer: str | None = None, cells: Any = None) -> Any:
    """Concept predictions c_hat, unknown factors u and latent z of the cells (see api.encode)."""
    import anndata as ad

    rows = select_cells(adata, cells)
    sub = model_matrix(model, adata, rows, layer)
    tr = model.transform
    parts: dict[str, list[np.ndarray]] = {"concepts": [], "concepts_sd": [], "unknown": [], "latent": []}
    members = [model.member(m) for m in range(model.n_members)]
    for _, block in tr.iter_chunks(sub, np.arange(sub.shape[0])):
        feats = tr.features(block)
        outs = [_abduct(member, feats) for member in members]
        chats = np.stack([o["concepts"] for o in outs])
        parts["concepts"].append(chats.mean(axis=0))
        if len(members) > 1:
            parts["concepts_sd"].append(chats.std(axis=0, ddof=1))
        # member 1's u and z: the members' latent spaces are not aligned, so no average of them
        parts["unknown"].append(outs[0]["unknown"])
        parts["latent"].append(outs[0]["latent"])
    res = {k: np.concatenate(v).astype(np.float32) for k, v in parts.items() if v}
    enc = ad.AnnData(
        X=res["concepts"],
        obs=pd.DataFrame(index=pd.Index(adata.obs_names[rows].astype(str), name=None)),
        var=pd.DataFrame(index=pd.Index(model.concept_names)),
    )
    enc.obsm["X_unknown"] = res["unknown"]
    enc.obsm["X_latent"] = res["latent"]
    if "concepts_sd" in res:
        enc.layers["concepts_sd"] = res["concepts_sd"]
    enc.uns["sccbgm_encode"] = {
        "concepts": model.concepts, "concept_names": model.concept_names, "n_members": model.n_members,
    }
    return enc


def edit_cells(
    model: Model,
    adata: Any,
    set_: Mapping[str, Any],
    *,
    residual: bool | None = None,
    cells: Any = None,
    layer: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    n_steps: int | None = None,
    count_edit: str | None = "auto",
    shift_unknown: bool | None = None,
) -> Any:
    """Counterfactual edit of the selected cells; returns a new AnnData (see module docstring).

    The prediction step of each model family (decoder, or flow with ``mode`` / ``seed`` /
    ``n_steps``) is :class:`sccbgm.flows.Counterfactual`.
    """
    import anndata as ad

    if count_edit not in COUNT_EDITS:
        raise SCCBGMError(f"count_edit must be one of {list(COUNT_EDITS)}, not {count_edit!r}.")
    residual = model.default_residual if residual is None else bool(residual)
    if count_edit == "auto":  # measured for scCBGM's decoder edit only (docs/validation.md)
        measured = model.name == "sccbgm" and "flow" not in model.parts
        count_edit = "mean" if residual and measured and model.transform.input_kind == "counts" else None
    if shift_unknown is None:  # the default was measured for the decoder edit, not for flows
        shift_unknown = DEFAULT_SHIFT_UNKNOWN and "flow" not in model.parts
    shift_unknown = bool(shift_unknown)
    if count_edit is not None and model.transform.input_kind != "counts":
        raise SCCBGMError(
            "count_edit needs a model fitted on raw counts (input_kind='counts'); this model was "
            f"fitted on {model.transform.input_kind!r} values."
        )
    # with count_edit="sample", ``seed`` seeds the count sampling (and a flow's decode noise)
    flow_seed = seed if count_edit != "sample" or mode == "decode" else None
    predictors = _member_predictors(model, mode, flow_seed, n_steps, shift_unknown)
    count_rng = np.random.default_rng(seed) if count_edit == "sample" else None
    rows = select_cells(adata, cells)
    sub = model_matrix(model, adata, rows, layer, output_genes=len(model.genes))
    n = rows.size
    spec, tr = model.spec, model.transform
    target, assigned = spec.target_values(set_, n)
    obs = adata.obs.iloc[rows]
    # a concept-bottleneck model abducts the concepts from expression, so a label it cannot encode
    # (a category unseen at fit time) only counts as missing; label-conditioned models need it
    observed, obs_mask = spec.encode(obs, require=False, unknown_as_missing="vae" in model.parts)
    # paper Sec. 2.4: a column already at its target (observed label) keeps c_hat; otherwise its
    # whole block is assigned (for a categorical column: the one-hot is swapped)
    for sl in spec.slices().values():
        same = ((obs_mask[:, sl] > 0) & (observed[:, sl] == target[:, sl])).all(axis=1)
        assigned[same, sl] = False

    n_members = len(predictors)
    out = np.empty((n, len(tr.genes)), dtype=np.float32)
    layers = {key: np.empty_like(out) for key in LAYERS} if n_members > 1 else {}
    half_width = interval_half_width(model)
    c_fact = np.zeros((n, spec.n_concepts), dtype=np.float32)
    c_edit = np.zeros_like(c_fact)
    unknown, noise = [], []
    for s in range(0, n, CHUNK):
        sl = slice(s, min(s + CHUNK, n))
        x_raw = dense_rows(sub, sl)
        x_log = tr.lognorm(x_raw)
        feats = tr.features(x_log)
        mean = np.zeros_like(x_log)
        sq_dev = np.zeros_like(x_log)
        log_ratio = np.zeros_like(x_log) if count_edit is not None else None
        fact_first = None
        for m, predict in enumerate(predictors):
            pred = predict(feats, observed[sl], obs_mask[sl], target[sl], assigned[sl],
                           residual or count_edit is not None)
            x_new = tr.to_genes(pred.edited)
            if count_edit is not None:
                fact = tr.to_genes(pred.factual)
                # members are combined by their mean log rate ratio, applied once in count space;
                # each member's own (expected) count edit gives the spread
                log_ratio += rate_log_ratio(fact, x_new) / n_members
                fact_first = fact if fact_first is None else fact_first
                x_new = count_space_edit(x_raw, fact, x_new, tr.target_sum, None, expectation=True)
            elif residual:
                x_new = x_log + x_new - tr.to_genes(pred.factual)
            # Welford: running mean and sum of squared deviations over the members
            delta = x_new - mean
            mean += delta / (m + 1)
            sq_dev += delta * (x_new - mean)
            c_fact[sl] += pred.concepts_factual / n_members
            c_edit[sl] += pred.concepts_edited / n_members
            if m == 0:
                unknown.append(pred.unknown)
                if pred.noise is not None:
                    noise.append(pred.noise)
        if count_edit is not None:
            assert fact_first is not None and log_ratio is not None
            mu_f = np.expm1(np.clip(fact_first, 0.0, None))
            edited_mean = np.log1p(np.exp(log_ratio) * (mu_f + RATE_EPS) - RATE_EPS)
            mean = count_space_edit(x_raw, fact_first, edited_mean, tr.target_sum, count_rng,
                                    expectation=count_edit == "mean")
        out[sl] = np.clip(mean, 0.0, None)
        if layers:
            sd = np.sqrt(sq_dev / (n_members - 1))
            layers["edit_sd"][sl] = sd
            layers["edit_lower"][sl] = np.clip(mean - half_width * sd, 0.0, None)
            layers["edit_upper"][sl] = np.clip(mean + half_width * sd, 0.0, None)

    new_obs = obs.copy()
    slices = spec.slices()
    for name in set_:
        values = spec.decode_column(name, target[:, slices[name]])
        col = next(c for c in spec.columns if c.name == name)
        if col.kind == "categorical":
            cats = list(col.categories)
            if name in new_obs and isinstance(new_obs[name].dtype, pd.CategoricalDtype):
                cats = list(dict.fromkeys([*map(str, new_obs[name].cat.categories), *cats]))
            new_obs[name] = pd.Categorical(values.astype(str), categories=cats)
        else:
            new_obs[name] = values
    var = adata.var.loc[model.genes].copy() if set(model.genes) <= set(adata.var_names) else None
    edited = ad.AnnData(X=out, obs=new_obs, var=var if var is not None else pd.DataFrame(index=model.genes))
    edited.layers.update(layers)
    edited.obsm["X_concepts_factual"] = c_fact
    edited.obsm["X_concepts_edited"] = c_edit
    edited.obsm["X_unknown"] = np.concatenate(unknown).astype(np.float32)
    if noise:
        edited.obsm["X_noise"] = np.concatenate(noise).astype(np.float32)
    edited.uns["sccbgm_edit"] = {
        "model": model.name,
        "concept_names": model.concept_names,
        "set": {k: _jsonable(v) for k, v in set_.items()},
        "residual": residual,
        "count_edit": count_edit or "none",
        "shift_unknown": bool(shift_unknown),
        "expression": "log1p-normalised" if tr.input_kind == "counts" else "input scale (log-normalised)",
        "target_sum": tr.target_sum,
        **predictors[0].metadata(),
    }
    if n_members > 1:
        edited.uns["sccbgm_edit"]["n_members"] = n_members
        if predictors[0].seed is not None:
            edited.uns["sccbgm_edit"]["member_seeds"] = [p.seed for p in predictors]
        edited.uns["sccbgm_edit"]["uncertainty"] = edit_metadata(model)
    return edited


def _member_predictors(
    model: Model, mode: str | None, seed: int | None, n_steps: int | None, shift_unknown: bool = False,
) -> list[Any]:
    """One :class:`~sccbgm.flows.Counterfactual` per ensemble member (decode seeds: seed + m)."""
    from sccbgm.flows import Counterfactual

    first = Counterfactual(model.member(0), mode=mode, seed=seed, n_steps=n_steps, shift_unknown=shift_unknown)
    others = [
        Counterfactual(model.member(m), mode=mode, n_steps=n_steps, shift_unknown=shift_unknown,
                       seed=None if first.seed is None else first.seed + m)
        for m in range(1, model.n_members)
    ]
    return [first, *others]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return f"per-cell array ({arr.size} values)"


def write_edit_h5ad(model: Model, adata: Any, set_: Mapping[str, Any], out: str, *, cells: Any = None,
                    chunk_cells: int = CHUNK, **options: Any) -> Any:
    """Stand-in for ``sccbgm.edit(..., out=path)`` (issue 11) until that lands; drop it then.

    Edits the selected cells in chunks of ``chunk_cells`` with :func:`edit_cells` and writes the
    result to the .h5ad ``out``: X (and any uncertainty layer) a dense float32 HDF5 dataset
    (n_cells, n_genes) chunked by rows, written chunk by chunk; obs / var / obsm / uns by anndata's
    writer at the end (small). Written under a temporary name, then renamed. Per-cell ``set``
    values are split with the cells; a flow model in ``mode="decode"`` draws its noise per chunk.
    Returns the file opened backed.
    """
    import os

    import anndata as ad
    import h5py
    from anndata.io import write_elem

    rows = select_cells(adata, cells)
    n, g = rows.size, len(model.genes)
    row_chunk = int(max(1, min(n, (1 << 20) // (4 * g))))
    tmp = f"{out}.tmp-{os.getpid()}"
    obs, obsm, first = [], {}, None
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
            datasets: dict[str, Any] = {}
            for s in range(0, n, chunk_cells):
                part_rows = rows[s : s + chunk_cells]
                part_set = {k: (np.asarray(v)[s : s + chunk_cells] if np.ndim(v) and len(v) == n else v)
                            for k, v in set_.items()}
                part = edit_cells(model, adata, part_set, cells=part_rows, **options)
                for key, values in [("X", part.X), *((f"layers/{k}", v) for k, v in part.layers.items())]:
                    if key not in datasets:
                        datasets[key] = f.create_dataset(key, shape=(n, g), dtype="float32", chunks=(row_chunk, g))
                        datasets[key].attrs["encoding-type"] = "array"
                        datasets[key].attrs["encoding-version"] = "0.2.0"
                    datasets[key][s : s + part_rows.size] = np.asarray(values, dtype=np.float32)
                obs.append(part.obs)
                for k, v in part.obsm.items():
                    obsm.setdefault(k, []).append(np.asarray(v))
                first = first if first is not None else part
            assert first is not None
            uns = dict(first.uns)
            uns["sccbgm_edit"] = dict(uns["sccbgm_edit"], set={k: _jsonable(v) for k, v in set_.items()})
            write_elem(f, "obs", pd.concat(obs))
            write_elem(f, "var", first.var)
            write_elem(f, "obsm", {k: np.concatenate(v) for k, v in obsm.items()})
            write_elem(f, "uns", uns)
            if "layers" not in f:
                write_elem(f, "layers", {})
            for key in ("obsp", "varm", "varp"):
                write_elem(f, key, {})
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return ad.read_h5ad(out, backed="r")
