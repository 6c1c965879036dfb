"""``sccbgm.evaluate``: the paper's metrics (Sec. 5.1, App. D.2, D.11) as one tidy table.

Composes :mod:`sccbgm.metrics` on AnnData or arrays: PCA features fitted on the reference
(training) cells, distribution metrics and their ratios against the observed concept
populations, and cell-level errors against true counterfactuals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from sccbgm import metrics as M
from sccbgm.access import dense_rows
from sccbgm.errors import SCCBGMError

__all__ = ["COLUMNS", "evaluate"]

COLUMNS = (
    "metric",
    "value",
    "numerator",
    "denominator",
    "closest_population",
    "space",
    "n_predicted",
    "n_target",
    "label",
)
"""Columns of the table returned by :func:`evaluate`, in order."""

_DISTRIBUTION_METRICS = ("mmd", "fid", "sd", "edist")


def _is_anndata(obj: Any) -> bool:
    try:
        import anndata
    except ImportError:
        return False
    return isinstance(obj, anndata.AnnData)


class _Cells:
    """One input set: its expression matrix ``(n_cells, n_genes)`` and names when known."""

    def __init__(self, obj: Any, name: str, layer: str | None) -> None:
        self.name = name
        self.adata = obj if _is_anndata(obj) else None
        self.var_names: pd.Index | None = None
        self.obs_names: pd.Index | None = None
        if self.adata is not None:
            if layer is not None:
                if layer not in self.adata.layers:
                    raise SCCBGMError(
                        f"{name} has no layer {layer!r} (layers: {list(self.adata.layers)})"
                    )
                x = self.adata.layers[layer]
            else:
                x = self.adata.X
            if x is None:
                raise SCCBGMError(f"{name}.X is empty (None); pass layer= or set .X")
            self.var_names = pd.Index(self.adata.var_names)
            self.obs_names = pd.Index(self.adata.obs_names)
        else:
            x = obj
        self.x = self._as_matrix(x)

    def _as_matrix(self, x: Any) -> NDArray[np.float64] | sp.csr_matrix:
        if sp.issparse(x):
            mat = sp.csr_matrix(x, dtype=np.float64)
            values = mat.data
        else:
            try:
                mat = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise SCCBGMError(f"{self.name} must be numeric: {err}") from err
            values = mat
        if mat.ndim != 2:
            raise SCCBGMError(
                f"{self.name} must be a 2-D (n_cells, n_genes) matrix, got shape {mat.shape}"
            )
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            raise SCCBGMError(f"{self.name} is empty (shape {mat.shape}); it needs cells and genes")
        if not np.isfinite(values).all():
            raise SCCBGMError(f"{self.name} contains NaN or infinite values")
        return mat

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])

    def align_genes(self, genes: pd.Index | None, n_genes: int, anchor: str) -> None:
        """Put the genes in the anchor's order (by name when both have names)."""
        if genes is not None and self.var_names is not None and not self.var_names.equals(genes):
            if self.var_names.is_unique and genes.is_unique and set(self.var_names) == set(genes):
                self.x = self.x[:, self.var_names.get_indexer(genes)]
                self.var_names = genes
                return
            missing = genes.difference(self.var_names)[:5].tolist()
            raise SCCBGMError(
                f"{self.name} and {anchor} have different genes (e.g. {missing} missing from "
                f"{self.name}); evaluate them in the same gene space"
            )
        if self.x.shape[1] != n_genes:
            raise SCCBGMError(
                f"{self.name} has {self.x.shape[1]} genes but {anchor} has {n_genes}; "
                "evaluate them in the same gene space"
            )

    def obs_column(self, key: str, what: str) -> NDArray:
        if self.adata is None:
            raise SCCBGMError(
                f"{what}={key!r} names an obs column, but {self.name} is an array; pass "
                f"AnnData or an array of {self.n_cells} labels"
            )
        if key not in self.adata.obs.columns:
            raise SCCBGMError(
                f"{what}={key!r} is not an obs column of {self.name} "
                f"(columns: {list(self.adata.obs.columns)})"
            )
        return self.adata.obs[key].to_numpy()


def _labels(cells: _Cells, key: Any, what: str) -> NDArray:
    """Labels per cell from an obs column (str), several columns (joined by "|") or an array."""
    is_columns = (
        cells.adata is not None
        and isinstance(key, list | tuple)
        and len(key) > 0
        and all(isinstance(k, str) and k in cells.adata.obs.columns for k in key)
    )
    if isinstance(key, str):
        labels = cells.obs_column(key, what)
    elif is_columns:
        cols = [cells.obs_column(k, what).astype(str) for k in key]
        labels = np.array(["|".join(parts) for parts in zip(*cols, strict=True)], dtype=object)
    else:
        labels = np.asarray(key, dtype=object).ravel()
    if labels.shape[0] != cells.n_cells:
        raise SCCBGMError(
            f"{what} gives {labels.shape[0]} labels but {cells.name} has {cells.n_cells} cells"
        )
    return labels


def _populations(
    features: NDArray, labels: NDArray, key_name: str
) -> dict[str, NDArray[np.float64]]:
    """Reference populations ``{group: cells}``; groups with < 2 cells are skipped (warned)."""
    keep = pd.notna(labels)
    names = np.asarray(labels[keep]).astype(str)
    feats = features[keep]
    populations: dict[str, NDArray[np.float64]] = {}
    small = []
    for group in pd.unique(names):
        cells = feats[names == group]
        if cells.shape[0] < 2:
            small.append(group)
        else:
            populations[str(group)] = cells
    if small:
        warnings.warn(
            f"reference populations with fewer than 2 cells are ignored: {small[:10]}",
            UserWarning,
            stacklevel=3,
        )
    if not populations:
        raise SCCBGMError(f"reference_key {key_name} defines no population with at least 2 cells")
    return populations


def _align_cells(pred: _Cells, truth: _Cells) -> None:
    """Make ``truth`` row-aligned with ``pred`` (reorder by obs names) or raise."""
    if pred.obs_names is not None and truth.obs_names is not None:
        if pred.obs_names.equals(truth.obs_names):
            return
        if (
            pred.obs_names.is_unique
            and truth.obs_names.is_unique
            and set(pred.obs_names) == set(truth.obs_names)
        ):
            truth.x = truth.x[truth.obs_names.get_indexer(pred.obs_names)]
            truth.obs_names = pred.obs_names
            return
        raise SCCBGMError(
            "true_counterfactual is misaligned with predicted: their obs_names differ; "
            "the true counterfactual must hold the same cells as the prediction"
        )
    if truth.n_cells != pred.n_cells:
        raise SCCBGMError(
            f"true_counterfactual has {truth.n_cells} cells but predicted has {pred.n_cells}; "
            "it must be aligned cell by cell with the prediction"
        )


def _row(metric: str, value: float, space: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "metric": metric,
        "value": float(value),
        "numerator": math.nan,
        "denominator": math.nan,
        "closest_population": None,
        "space": space,
    }
    row.update(extra)
    return row


def evaluate(
    predicted: Any,
    target: Any,
    *,
    reference: Any = None,
    reference_key: str | Sequence[str] | ArrayLike | None = None,
    true_counterfactual: Any = None,
    metrics: Sequence[str] | str = _DISTRIBUTION_METRICS,
    n_components: int | None = 50,
    layer: str | None = None,
    max_cells: int | None = M.DEFAULT_MAX_CELLS,
    seed: int = 0,
    label: str | None = None,
    bandwidth: float | None = None,
    epsilon: float | None = None,
    subtype_key: str | ArrayLike | None = None,
    true_subtypes: str | ArrayLike | None = None,
    k: int = 15,
    control: Any = None,
    n_degs: int = M.DEFAULT_N_DEGS,
) -> pd.DataFrame:
    """Evaluate predicted counterfactual cells against the true counterfactual population.

    Inputs are AnnData (``.X`` or ``.layers[layer]``) or ``(n_cells, n_genes)`` arrays, dense or
    scipy sparse, all in the *same expression space* (e.g. log-normalised the same way; nothing
    is normalised here) and with the same genes (AnnData genes are matched by name and reordered
    to ``target``'s order).

    Features: a PCA with ``n_components`` (:func:`sccbgm.metrics.pca_features`) is fitted on
    ``reference`` (the training cells) or, without a reference, on ``target``, and every set is
    projected on it; ``n_components=None`` evaluates in gene space (dense).

    Args:
        predicted: predicted counterfactuals ``(f_c')#p_{s,c}``, ``(n, G)``.
        target: true counterfactual population ``p_{s,c'}``, ``(m, G)``.
        reference: training cells ``(n_ref, G)``; they must not contain the held-out target.
        reference_key: groups of ``reference`` that are the observed concept populations
            ``p_gamma`` of the ratio denominators (Eq. 10): an obs column name, a list of obs
            columns (their combinations, named "a|b"), or an array of ``n_ref`` labels. Groups
            with < 2 cells are ignored. Without it no ratio is computed.
        true_counterfactual: true counterfactual of each predicted cell, aligned with
            ``predicted`` (same cells, same order, or same obs_names); adds ``mse_gene`` and,
            with a PCA, ``mse_pca`` (:func:`sccbgm.metrics.cell_mse`).
        metrics: distribution metrics among ``"mmd"``, ``"fid"``, ``"sd"``, ``"edist"``
            (pertpy's energy distance, :func:`sccbgm.metrics.e_distance`).
        layer: AnnData layer used for every AnnData input (default ``.X``).
        max_cells: per-set cap on the cells entering MMD and Sinkhorn (seeded uniform
            subsample, see :mod:`sccbgm.metrics`); FID always uses every cell.
        seed: seed of the PCA solver and of the subsampling.
        label: copied into the ``label`` column (e.g. the model name).
        bandwidth, epsilon: MMD bandwidth / Sinkhorn epsilon in feature units; default derived
            from ``target`` and shared by every comparison (recorded in ``DataFrame.attrs``).
        subtype_key, true_subtypes, k: when both are given, adds ``knn_subtype_accuracy``
            (App. D.11): a ``k``-NN classifier on the reference cells with subtype labels
            ``subtype_key`` (obs column of ``reference`` or array) predicts the subtype of each
            predicted cell, compared with ``true_subtypes`` (obs column of ``predicted`` or
            array), in the evaluation feature space.
        control: the unedited cells ``(n_ctrl, G)`` the prediction started from (e.g. the
            source cells); adds the change-from-control metrics below.
        n_degs: ``k`` of the top-k differentially expressed genes of ``target`` vs ``control``
            (:func:`sccbgm.metrics.top_degs`: largest ``|mean(target) - mean(control)|``).

    Returns:
        A DataFrame with columns :data:`COLUMNS`, one row per metric: ``mmd``, ``fid``, ``sd``
        (``value`` = distance ``D(predicted, target)``), ``rmmd``, ``rfid``, ``rsd`` (``value`` =
        ratio, ``numerator`` = ``D(predicted, target)``, ``denominator`` =
        ``min_gamma D(p_gamma, target)``, ``closest_population`` = that ``gamma``),
        ``mse_gene``, ``mse_pca``, ``knn_subtype_accuracy`` and, with ``control``, ``r2_mean``
        (R^2 of the gene means, all genes, :func:`sccbgm.metrics.r2_mean`), ``r2_mean_deg``,
        ``pearson_delta``, ``pearson_delta_deg``, ``response_share`` (share of the real mean change
        reproduced, :func:`sccbgm.metrics.response_share`) and ``deg_direction_accuracy`` (top-k DEGs).
        ``space`` is ``"pca"``, ``"gene"`` or ``"deg"``. ``attrs`` holds ``n_components``, ``pca_fitted_on``, ``bandwidth``,
        ``epsilon``, ``max_cells``, ``seed``.

    Raises:
        SCCBGMError: empty inputs, NaN/inf values, mismatched genes, a misaligned
            ``true_counterfactual``, unknown metrics or obs columns.
    """
    chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in chosen if m not in _DISTRIBUTION_METRICS]
    if unknown:
        raise SCCBGMError(f"unknown metrics {unknown}; choose among {list(_DISTRIBUTION_METRICS)}")
    if reference_key is not None and reference is None:
        raise SCCBGMError("reference_key needs reference (the training cells)")
    if (subtype_key is None) != (true_subtypes is None):
        raise SCCBGMError("knn subtype accuracy needs both subtype_key and true_subtypes")
    if subtype_key is not None and reference is None:
        raise SCCBGMError("subtype_key needs reference (the cells the kNN classifier is fit on)")

    tgt = _Cells(target, "target", layer)
    pred = _Cells(predicted, "predicted", layer)
    pred.align_genes(tgt.var_names, tgt.x.shape[1], "target")
    ref = None
    if reference is not None:
        ref = _Cells(reference, "reference", layer)
        ref.align_genes(tgt.var_names, tgt.x.shape[1], "target")
    ctrl = None
    if control is not None:
        ctrl = _Cells(control, "control", layer)
        ctrl.align_genes(tgt.var_names, tgt.x.shape[1], "target")
    truth = None
    if true_counterfactual is not None:
        truth = _Cells(true_counterfactual, "true_counterfactual", layer)
        truth.align_genes(tgt.var_names, tgt.x.shape[1], "target")
        _align_cells(pred, truth)

    ref_labels = None if reference_key is None else _labels(ref, reference_key, "reference_key")
    subtypes_ref = subtypes_true = None
    if subtype_key is not None:
        subtypes_ref = _labels(ref, subtype_key, "subtype_key")
        subtypes_true = _labels(pred, true_subtypes, "true_subtypes")

    fit_on = ref if ref is not None else tgt
    projection = None
    if n_components is not None:
        projection = M.pca_features(fit_on.x, n_components=n_components, seed=seed)
    space = "gene" if projection is None else "pca"
    features: Callable[[Any], NDArray[np.float64]] = (
        dense_rows if projection is None else projection.transform
    )
    pred_f, tgt_f = features(pred.x), features(tgt.x)
    ref_f = None if ref is None else features(ref.x)

    populations = None
    if ref_labels is not None:
        populations = _populations(ref_f, ref_labels, repr(reference_key))

    sigma = M._resolve_bandwidth(pred_f, tgt_f, bandwidth, seed) if "mmd" in chosen else None
    eps = M._resolve_epsilon(pred_f, tgt_f, epsilon, M.RELATIVE_EPSILON) if "sd" in chosen else None
    if eps == 0.0:
        eps = 1.0
    metric_fns = {
        "mmd": (M.mmd, {"bandwidth": sigma, "max_cells": max_cells, "seed": seed}),
        "fid": (M.frechet_distance, {}),
        "sd": (M.sinkhorn_divergence, {"epsilon": eps, "max_cells": max_cells, "seed": seed}),
        "edist": (M.e_distance, {}),
    }

    rows: list[dict[str, Any]] = []
    for name in chosen:
        fn, kw = metric_fns[name]
        if populations is None:
            rows.append(_row(name, fn(pred_f, tgt_f, **kw), space))
            continue
        res = M.ratio(fn, pred_f, tgt_f, populations, **kw)
        rows.append(_row(name, res.numerator, space))
        rows.append(
            _row(
                f"r{name}",
                res.ratio,
                space,
                numerator=res.numerator,
                denominator=res.denominator,
                closest_population=res.closest_population,
            )
        )

    if truth is not None:
        rows.append(_row("mse_gene", M.cell_mse(pred.x, truth.x), "gene"))
        if projection is not None:
            rows.append(_row("mse_pca", M.cell_mse(pred.x, truth.x, pca=projection), "pca"))

    if ctrl is not None:
        rows.append(_row("r2_mean", M.r2_mean(pred.x, tgt.x), "gene"))
        degs = M.top_degs(ctrl.x, tgt.x, n_degs)
        rows.append(_row("r2_mean_deg", M.r2_mean(pred.x, tgt.x, genes=degs), "deg"))
        rows.append(_row("pearson_delta", M.pearson_delta(pred.x, tgt.x, ctrl.x), "gene"))
        rows.append(_row("pearson_delta_deg", M.pearson_delta(pred.x, tgt.x, ctrl.x, genes=degs), "deg"))
        rows.append(_row("response_share", M.response_share(pred.x, tgt.x, ctrl.x), "gene"))
        rows.append(_row("deg_direction_accuracy",
                         M.deg_direction_accuracy(pred.x, tgt.x, ctrl.x, genes=degs), "deg"))

    if subtypes_ref is not None:
        acc = M.knn_subtype_accuracy(pred_f, ref_f, subtypes_ref, subtypes_true, k=k)
        rows.append(_row("knn_subtype_accuracy", acc, space))

    table = pd.DataFrame(rows, columns=list(COLUMNS[:6]))
    table["n_predicted"] = pred.n_cells
    table["n_target"] = tgt.n_cells
    table["label"] = label
    table = table[list(COLUMNS)]
    table.attrs.update(
        {
            "n_components": None if projection is None else projection.n_components,
            "pca_fitted_on": None if projection is None else fit_on.name,
            "bandwidth": sigma,
            "epsilon": eps,
            "max_cells": max_cells,
            "seed": seed,
            "n_degs": None if ctrl is None else n_degs,
        }
    )
    return table
