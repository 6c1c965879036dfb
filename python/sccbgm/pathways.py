"""PROGENy pathway activities as continuous concepts (paper section 5.3 and D.1.3).

:func:`progeny_activities` scores every cell for the 14 PROGENy pathways with decoupler's own
methods (``decoupler.mt.ulm`` by default, or ``decoupler.mt.mlm``) from log-normalised
expression. :func:`add_pathway_concepts` turns the scores into ``obs`` columns in [0, 1]:

    scaled = clip((score - q_lo) / (q_hi - q_lo), 0, 1)

with ``q_lo`` / ``q_hi`` the ``clip_quantile`` / ``1 - clip_quantile`` quantiles of that pathway's
scores over the cells given (plain min-max scaling when ``clip_quantile=0``); a pathway whose
scores are constant gets 0.5. The bounds are stored in ``adata.uns`` so values can be mapped back.

Weights (decoupler network format: ``source,target,weight[,p_value]``) come from, in order:
``weights=`` (a CSV path), ``$SCCBGM_PROGENY_DIR/progeny_{organism}_top{top}.csv``,
the shared data folder (``$SCCBGM_SHARED_DATA``, else ``<repo root>/../shared/data``), then the network through
``decoupler.op.progeny``. A top-500 file also serves any ``top <= 500`` (the ``top`` genes with
the smallest p-value per pathway are kept, as decoupler does).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sccbgm.errors import SCCBGMError

Method = Literal["ulm", "mlm"]
ORGANISMS = ("human", "mouse")
PATHWAYS = (
    "Androgen", "EGFR", "Estrogen", "Hypoxia", "JAK-STAT", "MAPK", "NFkB",
    "PI3K", "TGFb", "TNFa", "Trail", "VEGF", "WNT", "p53",
)
_LOCAL_TOPS = (500,)


def _candidate_files(organism: str, top: int) -> list[Path]:
    from sccbgm.datasets import shared_data_dir

    dirs = []
    env = os.environ.get("SCCBGM_PROGENY_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(shared_data_dir())
    names = [f"progeny_{organism}_top{top}.csv"]
    names += [f"progeny_{organism}_top{t}.csv" for t in _LOCAL_TOPS if t > top]
    return [d / n for d in dirs for n in names]


def _keep_top(net: pd.DataFrame, top: int) -> pd.DataFrame:
    pcol = next((c for c in ("p_value", "padj", "pvalue") if c in net.columns), None)
    if pcol is not None:
        order = net.sort_values(pcol, kind="mergesort")
    else:
        order = net.reindex(net["weight"].abs().sort_values(ascending=False, kind="mergesort").index)
    return order.groupby("source", sort=False).head(top).reset_index(drop=True)


def read_weights(path: str | os.PathLike[str], top: int | None = None) -> pd.DataFrame:
    """A decoupler-format weights CSV (``source,target,weight[,p_value]``), optionally top-N per pathway."""
    path = Path(path)
    if not path.is_file():
        raise SCCBGMError(f"PROGENy weights file {path} not found.")
    net = pd.read_csv(path)
    missing = [c for c in ("source", "target", "weight") if c not in net.columns]
    if missing:
        raise SCCBGMError(
            f"{path}: missing column(s) {missing}; expected decoupler's format source,target,weight[,p_value]."
        )
    net = net.dropna(subset=["source", "target", "weight"])
    net["weight"] = net["weight"].astype(float)
    if top is not None:
        net = _keep_top(net, top)
    return net.drop_duplicates(["source", "target"]).reset_index(drop=True)


def progeny_weights(
    organism: str = "human", *, top: int = 500, weights: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """PROGENy weights from a local file or, failing that, the network (see module docstring)."""
    if not isinstance(top, int | np.integer) or top < 1:
        raise SCCBGMError(f"`top` must be a positive integer, got {top!r}.")
    if weights is not None:
        return read_weights(weights, top=int(top))
    if organism not in ORGANISMS:
        raise SCCBGMError(f"`organism` must be one of {ORGANISMS} (or pass `weights=`), got {organism!r}.")
    candidates = _candidate_files(organism, int(top))
    for path in candidates:
        if path.is_file():
            return read_weights(path, top=int(top))
    try:
        import decoupler as dc

        net = dc.op.progeny(organism=organism, top=int(top))
    except Exception as exc:  # offline, blocked, or a changed resource: say where weights can come from
        tried = ", ".join(str(p) for p in candidates)
        raise SCCBGMError(
            f"no PROGENy weights: no local file ({tried}) and the network download via "
            f"decoupler.op.progeny failed ({type(exc).__name__}: {exc}). Pass `weights=` a CSV with "
            "columns source,target,weight[,p_value], or set SCCBGM_PROGENY_DIR to a folder holding "
            f"progeny_{organism}_top{top}.csv."
        ) from exc
    return net.rename(columns={"padj": "p_value"}).reset_index(drop=True)


def _expression(adata: Any, layer: str | None) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise SCCBGMError(f"layer {layer!r} not found; available layers: {list(adata.layers)}.")
    return adata.layers[layer]


def _warn_if_counts(matrix: Any) -> None:
    import scipy.sparse as sp

    sample = matrix[: min(matrix.shape[0], 500)]
    vals = np.asarray(sample.data if sp.issparse(sample) else sample, dtype=float).ravel()
    if vals.size and vals.max() > 30 and np.all(vals == np.round(vals)):
        warnings.warn(
            "the expression matrix looks like raw counts; PROGENy scores expect log-normalised "
            "values (normalise + log1p first, or pass `layer=`).",
            UserWarning,
            stacklevel=3,
        )


def progeny_activities(
    adata: Any,
    *,
    organism: str = "human",
    weights: str | os.PathLike[str] | None = None,
    top: int = 500,
    layer: str | None = None,
    method: Method = "ulm",
    tmin: int = 5,
    batch_size: int = 10_000,
) -> pd.DataFrame:
    """PROGENy pathway activity per cell (cells x pathways; decoupler ``ulm`` / ``mlm`` t-values).

    ``adata.X`` (or ``layer``) should hold log-normalised expression with gene symbols as
    ``var_names`` of the given organism. Pathways with fewer than ``tmin`` target genes among the
    genes present score 0 (with a warning), as do cells without any detected gene.
    """
    if method not in ("ulm", "mlm"):
        raise SCCBGMError(f"`method` must be 'ulm' or 'mlm' (decoupler.mt.ulm / mlm), got {method!r}.")
    import anndata as ad
    import decoupler as dc
    import scipy.sparse as sp

    matrix = _expression(adata, layer)
    if not adata.var_names.is_unique:
        raise SCCBGMError("var_names repeat; make them unique (adata.var_names_make_unique()) first.")
    _warn_if_counts(matrix)
    net = progeny_weights(organism, top=top, weights=weights)
    pathways = sorted(net["source"].unique())
    shared = net["target"].isin(set(adata.var_names))
    n_targets = net.loc[shared].groupby("source").size().reindex(pathways, fill_value=0)
    too_few = [p for p in pathways if n_targets[p] < tmin]
    if len(too_few) == len(pathways):
        raise SCCBGMError(
            f"no pathway has {tmin} or more target genes among adata.var_names (organism={organism!r}); "
            "check that var_names are gene symbols of that organism."
        )
    if too_few:
        warnings.warn(
            f"PROGENy pathway(s) {too_few} have fewer than {tmin} target genes in the data; they score 0.",
            UserWarning,
            stacklevel=2,
        )
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
    data = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(index=adata.obs_names.astype(str)),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    run = dc.mt.ulm if method == "ulm" else dc.mt.mlm
    repaired = run(data, net[["source", "target", "weight"]], tmin=tmin, bsize=batch_size, verbose=False)
    scored = data if repaired is None else repaired
    scores = pd.DataFrame(scored.obsm[f"score_{method}"])
    scores = scores.reindex(index=data.obs_names, columns=pathways).astype(float).fillna(0.0)
    scores.index = adata.obs_names
    scores.columns.name = None
    return scores


def scale_unit(scores: pd.DataFrame, clip_quantile: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scale each column to [0, 1] between its ``clip_quantile`` and ``1 - clip_quantile`` quantiles.

    Returns the scaled frame and the bounds (rows ``lo``, ``hi``). A constant column becomes 0.5.
    """
    if not 0.0 <= clip_quantile < 0.5:
        raise SCCBGMError(f"`clip_quantile` must be in [0, 0.5), got {clip_quantile!r}.")
    values = scores.to_numpy(dtype=float)
    lo = np.quantile(values, clip_quantile, axis=0)
    hi = np.quantile(values, 1.0 - clip_quantile, axis=0)
    span = hi - lo
    flat = span <= 0
    scaled = np.clip((values - lo) / np.where(flat, 1.0, span), 0.0, 1.0)
    scaled[:, flat] = 0.5
    bounds = pd.DataFrame([lo, hi], index=["lo", "hi"], columns=scores.columns)
    return pd.DataFrame(scaled, index=scores.index, columns=scores.columns), bounds


def add_pathway_concepts(
    adata: Any,
    *,
    organism: str = "human",
    weights: str | os.PathLike[str] | None = None,
    top: int = 500,
    layer: str | None = None,
    method: Method = "ulm",
    prefix: str = "progeny_",
    pathways: list[str] | None = None,
    clip_quantile: float = 0.01,
) -> list[str]:
    """Add PROGENy activities as [0, 1] concept columns ``obs[prefix + pathway]``; return their names.

    Raw scores go to ``adata.obsm[prefix + "scores"]`` and the scaling bounds and settings to
    ``adata.uns[prefix + "concepts"]`` (scaling as in the module docstring).
    """
    scores = progeny_activities(
        adata, organism=organism, weights=weights, top=top, layer=layer, method=method
    )
    if pathways is not None:
        unknown = [p for p in pathways if p not in scores.columns]
        if unknown:
            raise SCCBGMError(f"unknown pathway(s) {unknown}; available: {list(scores.columns)}.")
        scores = scores[list(pathways)]
    scaled, bounds = scale_unit(scores, clip_quantile)
    names = []
    for pathway in scaled.columns:
        name = f"{prefix}{pathway}"
        adata.obs[name] = scaled[pathway].to_numpy(dtype=np.float32)
        names.append(name)
    adata.obsm[f"{prefix}scores"] = scores.astype(np.float32)
    adata.uns[f"{prefix}concepts"] = {
        "columns": names,
        "pathways": list(scaled.columns),
        "organism": organism,
        "method": method,
        "top": int(top),
        "clip_quantile": float(clip_quantile),
        "lo": bounds.loc["lo"].to_numpy(dtype=float),
        "hi": bounds.loc["hi"].to_numpy(dtype=float),
        "scaling": "clip((score - lo) / (hi - lo), 0, 1); lo/hi = clip_quantile / 1 - clip_quantile quantiles",
    }
    return names
