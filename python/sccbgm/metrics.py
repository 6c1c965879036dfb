"""Evaluation metrics of the paper (Sec. 5.1, Eq. 10; App. D.2, Eq. 50-55; App. D.11).

Plain functions in the style of POT: explicit arguments, arrays in, floats out. Every array is
``(n_cells, n_features)``: cells in rows, features (PCA components or genes) in columns, all sets
in the same feature space. The package depends on nothing here but :class:`SCCBGMError`.

Distribution metrics between a sample ``x`` (p) and a sample ``y`` (q):

* :func:`mmd`: squared maximum mean discrepancy with an RBF kernel (Eq. 51).
* :func:`frechet_distance`: Frechet distance between Gaussian fits, "FID" (Eq. 53).
* :func:`sinkhorn_divergence`: debiased entropic OT divergence ``SD_eps`` (Eq. 55), via POT.

Scale rule shared by the defaults: the MMD bandwidth and the Sinkhorn ``epsilon`` are derived
from ``y`` alone (the *target* sample), so every comparison against one target uses one kernel
and one ``epsilon`` -- which is what the ratio metrics need (numerator and denominators of
Eq. 10 / 50 / 52 / 54 all compare against the same target).

Subsampling rule (``max_cells``, MMD and Sinkhorn only): a set with more than ``max_cells``
cells is replaced by ``max_cells`` of its cells drawn uniformly without replacement with a fresh
``numpy.random.default_rng(seed)``; the draw therefore depends only on ``seed`` and the set's
size, so a set compared with itself keeps the same cells. ``max_cells=None`` uses every cell.
The draw is taken before any conversion: a sparse set is densified only for the drawn cells
(the target-derived scales use all cells of ``y``, computed sparse). MMD is then still exact and memory-bounded (kernel sums are accumulated over blocks of
``chunk_size`` x ``chunk_size`` cells); Sinkhorn builds dense ``n x m`` matrices (about
``3 * 8 * n * m`` bytes), which is why it subsamples by default.

Ratio metrics (Eq. 10, 50, 52, 54): :func:`ratio`, :func:`rmmd`, :func:`rfid`, :func:`rsd`.
Cell-level metrics: :func:`cell_mse`, :func:`knn_subtype_accuracy` (App. D.11).
Metrics of the perturbation-prediction field (CPA, scPerturBench, pertpy): :func:`r2_mean`,
:func:`pearson_delta`, :func:`response_share`, :func:`deg_direction_accuracy` on all genes or the
:func:`top_degs`, and
:func:`e_distance` (pertpy's energy distance).
Features: :func:`pca_features` (PCA fitted on the reference / training cells).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.distance import pdist

from sccbgm.access import dense_rows
from sccbgm.errors import SCCBGMError

__all__ = [
    "DEFAULT_MAX_CELLS",
    "MEDIAN_MAX_CELLS",
    "RELATIVE_EPSILON",
    "PCAProjection",
    "RatioResult",
    "DEFAULT_N_DEGS",
    "cell_mse",
    "deg_direction_accuracy",
    "e_distance",
    "frechet_distance",
    "knn_subtype_accuracy",
    "median_bandwidth",
    "mmd",
    "pca_features",
    "pearson_delta",
    "r2_mean",
    "ratio",
    "response_share",
    "rfid",
    "rmmd",
    "rsd",
    "sinkhorn_divergence",
    "sinkhorn_epsilon",
    "top_degs",
]

DEFAULT_MAX_CELLS = 5000
"""Default cap on the cells per set entering MMD and Sinkhorn (see the module docstring)."""

MEDIAN_MAX_CELLS = 1000
"""Cells of ``y`` (at most) whose pairwise distances give the median-heuristic bandwidth."""

RELATIVE_EPSILON = 0.05
"""Default Sinkhorn ``epsilon``, as a fraction of the mean squared distance in ``y``."""

_CHUNK = 2048
_MARGINAL_TOL = 1e-3

Matrix = ArrayLike | sp.spmatrix | sp.sparray


class _Transformer(Protocol):
    def transform(self, x: Any) -> Any: ...


# --------------------------------------------------------------------------------------------
# input checks and helpers


def _points(
    x: Matrix, name: str, max_cells: int | None = None, seed: int = 0
) -> NDArray[np.float64]:
    """``x`` as a dense float64 ``(n_cells, n_features)`` array; raise on empty, 1-D or NaN.

    With ``max_cells``, the rows of :func:`_subsample_rows` are taken *before* the conversion,
    so a large (sparse) input is densified only for the drawn cells; the NaN check covers every
    cell (on the non-zeros of a sparse input).
    """
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        _check_shape(x.shape, name)
        if not np.isfinite(x.data).all():
            raise SCCBGMError(f"{name} contains NaN or infinite values")
        rows = _subsample_rows(x.shape[0], max_cells, seed)
        return np.asarray((x if rows is None else x[rows]).toarray(), dtype=np.float64)
    try:
        arr = np.asarray(x)
        rows = _subsample_rows(arr.shape[0], max_cells, seed) if arr.ndim == 2 else None
        if rows is not None:
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                raise SCCBGMError(f"{name} contains NaN or infinite values")
            arr = arr[rows]
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SCCBGMError(f"{name} must be a numeric (n_cells, n_features) array: {err}") from err
    _check_shape(arr.shape, name)
    if not np.isfinite(arr).all():
        raise SCCBGMError(f"{name} contains NaN or infinite values")
    return arr


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise SCCBGMError(
            f"{name} must be a 2-D (n_cells, n_features) array, got shape {shape}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise SCCBGMError(f"{name} is empty (shape {shape}); it needs cells and features")


def _checked(x: Matrix, name: str) -> Any:
    """``x`` validated like :func:`_points` but not densified: CSR float64 if sparse, else dense."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        _check_shape(x.shape, name)
        if not np.isfinite(x.data).all():
            raise SCCBGMError(f"{name} contains NaN or infinite values")
        return x
    return _points(x, name)


def _same_features(x: NDArray, y: NDArray, names: tuple[str, str] = ("x", "y")) -> None:
    if x.shape[1] != y.shape[1]:
        raise SCCBGMError(
            f"{names[0]} has {x.shape[1]} features but {names[1]} has {y.shape[1]}; "
            "both must be in the same feature space (same genes or the same PCA)"
        )


def _check_max_cells(max_cells: int | None) -> None:
    if max_cells is not None and (not isinstance(max_cells, int | np.integer) or max_cells < 2):
        raise SCCBGMError(f"max_cells must be an integer >= 2 or None, got {max_cells!r}")


def _subsample_rows(n: int, max_cells: int | None, seed: int) -> NDArray | None:
    """Sorted indices of ``max_cells`` of ``n`` rows, uniform without replacement with
    ``default_rng(seed)``; None when every row is kept."""
    if max_cells is None or n <= max_cells:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def _sq_dists(a: NDArray, b: NDArray, a_sq: NDArray, b_sq: NDArray) -> NDArray:
    """Squared Euclidean distances ``(len(a), len(b))``, clipped at 0."""
    d = a @ b.T
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _kernel_sum(a: NDArray, b: NDArray, gamma: float, chunk: int, symmetric: bool) -> float:
    """``sum_ij exp(-gamma ||a_i - b_j||^2)`` in ``chunk x chunk`` blocks (exact).

    ``symmetric=True`` (``a is b``) visits each off-diagonal block once and doubles it.
    """
    a_sq = np.einsum("ij,ij->i", a, a)
    b_sq = a_sq if symmetric else np.einsum("ij,ij->i", b, b)
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        ai, ai_sq = a[i : i + chunk], a_sq[i : i + chunk]
        for j in range(i if symmetric else 0, b.shape[0], chunk):
            block = _sq_dists(ai, b[j : j + chunk], ai_sq, b_sq[j : j + chunk])
            block *= -gamma
            np.exp(block, out=block)
            weight = 2.0 if symmetric and j != i else 1.0
            total += weight * float(block.sum())
    return total


def _check_positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise SCCBGMError(f"{name} must be a positive finite number, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# MMD (Eq. 51)


def median_bandwidth(y: Matrix, *, seed: int = 0) -> float:
    """Median-heuristic RBF bandwidth ``sigma`` of a sample ``y`` ``(m, d)``.

    ``sigma`` = median Euclidean distance between distinct cells of ``y`` (over at most
    :data:`MEDIAN_MAX_CELLS` cells drawn with ``default_rng(seed)``), in the units of ``y``.
    Returns 0.0 when ``y`` has fewer than two distinct cells.
    """
    pts = _points(y, "y", MEDIAN_MAX_CELLS, seed)
    if pts.shape[0] < 2:
        return 0.0
    return float(np.median(pdist(pts)))


def _stack(x: Matrix, y: Matrix) -> Any:
    """Cells of ``x`` then ``y`` (sparse when either is)."""
    if sp.issparse(x) or sp.issparse(y):
        return sp.vstack([sp.csr_matrix(x), sp.csr_matrix(y)], format="csr")
    return np.vstack([x, y])


def _resolve_bandwidth(x: Matrix, y: Matrix, bandwidth: float | None, seed: int) -> float:
    if bandwidth is not None:
        return _check_positive(bandwidth, "bandwidth")
    sigma = median_bandwidth(y, seed=seed)
    if sigma == 0.0:
        sigma = median_bandwidth(_stack(x, y), seed=seed)
    return sigma if sigma > 0.0 else 1.0


def mmd(
    x: Matrix,
    y: Matrix,
    *,
    bandwidth: float | None = None,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    seed: int = 0,
    chunk_size: int = _CHUNK,
) -> float:
    """Squared MMD between samples ``x`` ``(n, d)`` and ``y`` ``(m, d)`` (Eq. 51).

    ``MMD(p, q) = E_p k(X, X') - 2 E_{p,q} k(X, Y) + E_q k(Y, Y')`` with the RBF kernel
    ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, estimated by the *biased* (V-statistic)
    estimator: plain means over all pairs, diagonal included. It is >= 0 and exactly 0 for a set
    against itself.

    Args:
        x, y: samples in the same feature space (dense or scipy sparse).
        bandwidth: ``sigma`` in feature units. Default: :func:`median_bandwidth` of ``y`` (the
            target), so comparisons against one ``y`` share one kernel; if ``y`` has < 2
            distinct cells the median over ``x`` and ``y`` pooled is used, then 1.0.
        max_cells: per-set cap, uniform subsample with ``default_rng(seed)``; ``None``: all.
        seed: seed of the subsampling.
        chunk_size: block side of the exact chunked kernel sums (memory ``8 * chunk_size^2``
            bytes per block).

    Returns:
        Squared MMD (unitless, in ``[0, 2]``).
    """
    _check_max_cells(max_cells)
    xs, ys = _points(x, "x", max_cells, seed), _points(y, "y", max_cells, seed)
    _same_features(xs, ys)
    if chunk_size < 1:
        raise SCCBGMError(f"chunk_size must be >= 1, got {chunk_size}")
    sigma = _resolve_bandwidth(x, y, bandwidth, seed)
    gamma = 1.0 / (2.0 * sigma**2)
    n, m = xs.shape[0], ys.shape[0]
    kxx = _kernel_sum(xs, xs, gamma, chunk_size, symmetric=True) / (n * n)
    kyy = _kernel_sum(ys, ys, gamma, chunk_size, symmetric=True) / (m * m)
    kxy = _kernel_sum(xs, ys, gamma, chunk_size, symmetric=False) / (n * m)
    return max(kxx + kyy - 2.0 * kxy, 0.0)


# --------------------------------------------------------------------------------------------
# Frechet distance (Eq. 53)


def _sqrt_psd(s: NDArray) -> NDArray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(x: Matrix, y: Matrix) -> float:
    """Frechet distance between Gaussian fits of ``x`` ``(n, d)`` and ``y`` ``(m, d)`` (Eq. 53).

    ``FID(p, q) = ||mu_p - mu_q||^2 + Tr(S_p + S_q - 2 (S_p S_q)^{1/2})`` with sample means and
    unbiased covariances (``ddof=1``; each set needs >= 2 cells). The trace term is computed as
    ``sum_i sqrt(lambda_i)`` over the eigenvalues of the symmetric PSD matrix
    ``S_p^{1/2} S_q S_p^{1/2}`` (same spectrum as ``S_p S_q``), with tiny negative eigenvalues
    clipped to 0, so no complex square root is ever formed. Units: squared feature units.
    """
    xp, yp = _points(x, "x"), _points(y, "y")
    _same_features(xp, yp)
    for arr, name in ((xp, "x"), (yp, "y")):
        if arr.shape[0] < 2:
            raise SCCBGMError(f"frechet_distance needs >= 2 cells in {name} for a covariance")
    mu_diff = xp.mean(axis=0) - yp.mean(axis=0)
    sx = np.atleast_2d(np.cov(xp, rowvar=False))
    sy = np.atleast_2d(np.cov(yp, rowvar=False))
    root_x = _sqrt_psd(sx)
    cross = root_x @ sy @ root_x
    eig = np.linalg.eigvalsh((cross + cross.T) / 2.0)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(mu_diff @ mu_diff) + float(np.trace(sx) + np.trace(sy)) - 2.0 * tr_sqrt
    return max(value, 0.0)


# --------------------------------------------------------------------------------------------
# Sinkhorn divergence (Eq. 55)


def sinkhorn_epsilon(y: Matrix, *, relative_epsilon: float = RELATIVE_EPSILON) -> float:
    """Default Sinkhorn ``epsilon`` for target ``y`` ``(m, d)``, in squared feature units.

    ``epsilon = relative_epsilon * mean_{i,j} ||y_i - y_j||^2 = relative_epsilon * 2 Tr Cov(y)``
    (covariance with ``1/m``; exact, all cells of ``y``). 0.0 when all cells of ``y`` coincide.
    """
    yp = _checked(y, "y")
    rel = _check_positive(relative_epsilon, "relative_epsilon")
    if sp.issparse(yp):  # E[y^2] - E[y]^2 per feature, without densifying
        mean = np.asarray(yp.mean(axis=0)).ravel()
        var = np.asarray(yp.multiply(yp).mean(axis=0)).ravel() - mean**2
        return rel * 2.0 * float(np.clip(var, 0.0, None).sum())
    return rel * 2.0 * float(yp.var(axis=0).sum())


def _entropic_ot(
    a_pts: NDArray, b_pts: NDArray, epsilon: float, max_iter: int, tol: float
) -> float:
    """``OT_eps(a, b) = min_P <P, C> + eps KL(P | a x b)`` for uniform weights, via POT.

    Scaling-domain Sinkhorn (``ot.sinkhorn(method="sinkhorn")``); if it under/overflows or its
    marginals miss by more than 1e-3 in L1, it is redone in the log domain (``sinkhorn_log``).
    The value is the dual objective at the returned potentials ``f = eps log(u / a)``,
    ``g = eps log(v / b)``: ``<a, f> + <b, g> - eps (sum P - 1)``.
    """
    import ot

    cost = _sq_dists(
        a_pts, b_pts, np.einsum("ij,ij->i", a_pts, a_pts), np.einsum("ij,ij->i", b_pts, b_pts)
    )
    a = np.full(a_pts.shape[0], 1.0 / a_pts.shape[0])
    b = np.full(b_pts.shape[0], 1.0 / b_pts.shape[0])
    kw: dict[str, Any] = {"numItermax": max_iter, "stopThr": tol, "log": True}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        plan, log = ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn", **kw)
        log_u, log_v = np.log(log["u"]), np.log(log["v"])
        if not _converged(plan, a, b, log_u, log_v):
            plan, log = ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn_log", **kw)
            log_u, log_v = log["log_u"], log["log_v"]
    if not _converged(plan, a, b, log_u, log_v):
        warnings.warn(
            f"Sinkhorn did not converge in {max_iter} iterations (epsilon={epsilon:.3g}); "
            "increase max_iter or epsilon",
            RuntimeWarning,
            stacklevel=3,
        )
    del cost
    value = a @ (log_u - np.log(a)) + b @ (log_v - np.log(b)) - (float(plan.sum()) - 1.0)
    return float(epsilon * value)


def _converged(plan: NDArray, a: NDArray, b: NDArray, log_u: NDArray, log_v: NDArray) -> bool:
    if not (np.isfinite(log_u).all() and np.isfinite(log_v).all() and np.isfinite(plan).all()):
        return False
    err = np.abs(plan.sum(axis=1) - a).sum() + np.abs(plan.sum(axis=0) - b).sum()
    return bool(err <= _MARGINAL_TOL)


def _resolve_epsilon(
    x: Matrix, y: Matrix, epsilon: float | None, relative_epsilon: float
) -> float:
    if epsilon is not None:
        return _check_positive(epsilon, "epsilon")
    eps = sinkhorn_epsilon(y, relative_epsilon=relative_epsilon)
    if eps == 0.0:
        eps = sinkhorn_epsilon(_stack(x, y), relative_epsilon=relative_epsilon)
    return eps


def sinkhorn_divergence(
    x: Matrix,
    y: Matrix,
    *,
    epsilon: float | None = None,
    relative_epsilon: float = RELATIVE_EPSILON,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-6,
) -> float:
    """Debiased Sinkhorn divergence between ``x`` ``(n, d)`` and ``y`` ``(m, d)`` (Eq. 55).

    ``SD_eps(p, q) = OT_eps(p, q) - (OT_eps(p, p) + OT_eps(q, q)) / 2`` (Feydy et al., 2019) with
    ``OT_eps(p, q) = min_P <P, C> + eps KL(P | p x q)`` -- the entropic term is included, unlike
    ``ot.bregman.empirical_sinkhorn_divergence``. Cost: *unnormalised* squared Euclidean
    distance ``C_ij = ||x_i - y_j||^2``; uniform weights; each ``OT_eps`` solved by
    ``ot.sinkhorn``. The result is in squared feature units, clipped at 0 (it is >= 0 in exact
    arithmetic) and exactly 0 for a set against itself.

    Args:
        x, y: samples in the same feature space.
        epsilon: entropic regularisation in squared feature units (same units as ``C``).
            Default: :func:`sinkhorn_epsilon` of ``y`` (``relative_epsilon`` times the mean
            squared distance between cells of the target); pooled ``x, y`` if that is 0.
        relative_epsilon: fraction used when ``epsilon`` is None.
        max_cells: per-set cap, uniform subsample with ``default_rng(seed)``; ``None``: all
            (memory about ``24 n m`` bytes).
        seed: seed of the subsampling.
        max_iter, tol: Sinkhorn iteration cap and stopping threshold (POT's ``stopThr``, the L2
            error of the column marginal).
    """
    _check_max_cells(max_cells)
    xp, yp = _checked(x, "x"), _checked(y, "y")
    _same_features(xp, yp)
    eps = _resolve_epsilon(xp, yp, epsilon, relative_epsilon)
    if eps == 0.0:
        return 0.0
    xs, ys = _points(xp, "x", max_cells, seed), _points(yp, "y", max_cells, seed)
    ot_xy = _entropic_ot(xs, ys, eps, max_iter, tol)
    ot_xx = _entropic_ot(xs, xs, eps, max_iter, tol)
    ot_yy = _entropic_ot(ys, ys, eps, max_iter, tol)
    return max(ot_xy - 0.5 * (ot_xx + ot_yy), 0.0)


# --------------------------------------------------------------------------------------------
# ratios (Eq. 10, 50, 52, 54)


@dataclass(frozen=True)
class RatioResult:
    """A ratio metric ``D(pred, target) / min_gamma D(p_gamma, target)`` (Eq. 10, 50, 52, 54).

    Attributes:
        numerator: ``D(predicted, target)``.
        denominator: ``min_gamma D(p_gamma, target)`` over the reference populations.
        closest_population: the name attaining the minimum (the "trivial baseline").
        ratio: ``numerator / denominator`` (< 1: better than mapping to the closest observed
            population); ``inf`` if the denominator is 0 and the numerator is not, ``nan`` if
            both are 0.
        denominators: ``D(p_gamma, target)`` for every population, by name.
    """

    numerator: float
    denominator: float
    closest_population: str
    ratio: float
    denominators: dict[str, float] = field(default_factory=dict)


def ratio(
    metric_fn: Callable[..., float],
    predicted: Matrix,
    target: Matrix,
    reference_populations: Mapping[str, Matrix],
    **kw: Any,
) -> RatioResult:
    """Ratio metric (Eq. 10): ``metric_fn(pred, target) / min_gamma metric_fn(p_gamma, target)``.

    Args:
        metric_fn: a distance ``(x, y, **kw) -> float`` (``mmd``, ``frechet_distance``,
            ``sinkhorn_divergence`` or any other).
        predicted: predicted counterfactual cells ``(f_c')#p_{s,c}``, ``(n, d)``.
        target: true counterfactual population ``p_{s,c'}``, ``(m, d)``.
        reference_populations: ``{name: cells (n_gamma, d)}``, one entry per observed concept
            population ``p_gamma`` of the *training* data. They must exclude the held-out
            target cells, otherwise the denominator is ~0 and the ratio meaningless.
        **kw: passed to every ``metric_fn`` call. ``target`` is always the second argument, so
            the default target-derived MMD bandwidth / Sinkhorn epsilon is shared by all calls.
    """
    if not isinstance(reference_populations, Mapping) or len(reference_populations) == 0:
        raise SCCBGMError(
            "reference_populations must be a non-empty mapping {name: cells} of the observed "
            "concept populations of the training data"
        )
    numerator = float(metric_fn(predicted, target, **kw))
    denominators = {
        str(name): float(metric_fn(cells, target, **kw))
        for name, cells in reference_populations.items()
    }
    closest = min(denominators, key=denominators.__getitem__)
    denominator = denominators[closest]
    if denominator > 0:
        value = numerator / denominator
    else:
        value = math.inf if numerator > 0 else math.nan
    return RatioResult(numerator, denominator, closest, value, denominators)


def rmmd(
    predicted: Matrix,
    target: Matrix,
    reference_populations: Mapping[str, Matrix],
    *,
    bandwidth: float | None = None,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    seed: int = 0,
) -> RatioResult:
    """rMMD (Eq. 10 / 50): :func:`ratio` of :func:`mmd`, one kernel for all terms.

    ``bandwidth=None`` resolves the default of :func:`mmd` for ``(predicted, target)`` once (the
    median heuristic on the target) and uses it for the numerator and every denominator.
    """
    pred, tgt = _checked(predicted, "predicted"), _checked(target, "target")
    _same_features(pred, tgt, ("predicted", "target"))
    sigma = _resolve_bandwidth(pred, tgt, bandwidth, seed)
    return ratio(
        mmd, pred, tgt, reference_populations, bandwidth=sigma, max_cells=max_cells, seed=seed
    )


def rfid(
    predicted: Matrix, target: Matrix, reference_populations: Mapping[str, Matrix]
) -> RatioResult:
    """rFID (Eq. 52): :func:`ratio` of :func:`frechet_distance`."""
    return ratio(frechet_distance, predicted, target, reference_populations)


def rsd(
    predicted: Matrix,
    target: Matrix,
    reference_populations: Mapping[str, Matrix],
    *,
    epsilon: float | None = None,
    relative_epsilon: float = RELATIVE_EPSILON,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-6,
) -> RatioResult:
    """rSD (Eq. 54): :func:`ratio` of :func:`sinkhorn_divergence`, one ``epsilon`` for all terms.

    ``epsilon=None`` resolves the default of :func:`sinkhorn_divergence` for
    ``(predicted, target)`` once (``relative_epsilon`` x the target's mean squared distance).
    """
    pred, tgt = _checked(predicted, "predicted"), _checked(target, "target")
    _same_features(pred, tgt, ("predicted", "target"))
    eps = _resolve_epsilon(pred, tgt, epsilon, relative_epsilon)
    if eps == 0.0:
        eps = 1.0
    return ratio(
        sinkhorn_divergence,
        pred,
        tgt,
        reference_populations,
        epsilon=eps,
        max_cells=max_cells,
        seed=seed,
        max_iter=max_iter,
        tol=tol,
    )


# --------------------------------------------------------------------------------------------
# features and cell-level metrics


@dataclass(frozen=True, eq=False)
class PCAProjection:
    """A fitted linear projection ``z = (x - mean) @ components.T``.

    Attributes:
        components: ``(n_components, n_genes)`` orthonormal rows.
        mean: ``(n_genes,)`` per-gene mean of the cells it was fitted on.
        explained_variance_ratio: ``(n_components,)``.
    """

    components: NDArray[np.float64]
    mean: NDArray[np.float64]
    explained_variance_ratio: NDArray[np.float64]

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, x: Matrix) -> NDArray[np.float64]:
        """Project cells ``(n, n_genes)`` (dense or sparse) to ``(n, n_components)``."""
        if not sp.issparse(x):
            x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise SCCBGMError(
                f"cannot project an array of shape {x.shape}: the PCA was fitted on "
                f"{self.mean.shape[0]} genes"
            )
        proj = np.asarray(x @ self.components.T, dtype=np.float64)
        return proj - self.mean @ self.components.T


def pca_features(reference: Matrix, n_components: int = 50, seed: int = 0) -> PCAProjection:
    """Fit the PCA on which distribution metrics are computed (paper: PCA features).

    By convention fit it on the reference / training cells (``reference``, ``(n, n_genes)``,
    dense or scipy sparse, already in the evaluation space e.g. log-normalised), never on the
    predictions, and apply it to every set compared. ``n_components`` is capped at
    ``min(n_cells, n_genes)``. scikit-learn's ``PCA`` (``random_state=seed``; for sparse input
    ``arpack``, or ``covariance_eigh`` at the cap), centring included.
    """
    from sklearn.decomposition import PCA

    if not sp.issparse(reference):
        reference = _points(reference, "reference")
    elif reference.shape[0] == 0 or reference.shape[1] == 0:
        raise SCCBGMError(f"reference is empty (shape {reference.shape})")
    n_cells, n_genes = reference.shape
    if n_cells < 2:
        raise SCCBGMError("pca_features needs at least 2 reference cells")
    if not isinstance(n_components, int | np.integer) or n_components < 1:
        raise SCCBGMError(f"n_components must be a positive integer, got {n_components!r}")
    k = int(min(n_components, n_cells, n_genes))
    solver = "covariance_eigh" if sp.issparse(reference) and k == min(n_cells, n_genes) else "auto"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(reference)
    return PCAProjection(
        components=np.asarray(pca.components_, dtype=np.float64),
        mean=np.asarray(pca.mean_, dtype=np.float64),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
    )


def _projector(pca: Any) -> Callable[[Any], NDArray]:
    if hasattr(pca, "transform"):
        return lambda block: np.asarray(pca.transform(block), dtype=np.float64)
    if isinstance(pca, tuple | list) and len(pca) == 2:
        components = np.asarray(pca[0], dtype=np.float64)
        mean = np.asarray(pca[1], dtype=np.float64)
        if components.ndim != 2 or mean.shape != (components.shape[1],):
            raise SCCBGMError(
                "pca=(components, mean) needs components (n_components, n_genes) and mean "
                f"(n_genes,), got {components.shape} and {mean.shape}"
            )
        return PCAProjection(components, mean, np.full(components.shape[0], np.nan)).transform
    raise SCCBGMError(
        "pca must be a fitted projection with .transform (e.g. sklearn PCA or "
        "pca_features(...)) or a (components, mean) pair"
    )


def _matrix_shape(x: Matrix, name: str) -> tuple[int, int]:
    if not sp.issparse(x):
        x = np.asarray(x)
    if x.ndim != 2:
        raise SCCBGMError(f"{name} must be a 2-D (n_cells, n_genes) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise SCCBGMError(f"{name} is empty (shape {x.shape})")
    return int(x.shape[0]), int(x.shape[1])


def cell_mse(predicted: Matrix, true: Matrix, *, pca: Any = None, chunk_size: int = 4096) -> float:
    """Cell-level counterfactual error: ``mean_i mean_j (pred_ij - true_ij)^2``.

    Rows of ``predicted`` and ``true`` ``(n_cells, n_genes)`` are the same cells (predicted vs
    true counterfactual). With ``pca=None`` the error is in gene space; with a fitted projection
    (an object with ``.transform``, e.g. sklearn ``PCA`` or :func:`pca_features`, or a
    ``(components (k, n_genes), mean (n_genes,))`` pair) both are projected first and the error
    is in PCA space (mean over the ``k`` components). Dense or sparse input, processed in row
    blocks of ``chunk_size`` cells. Units: squared expression (or PCA) units.
    """
    shape_p = _matrix_shape(predicted, "predicted")
    shape_t = _matrix_shape(true, "true")
    if shape_p != shape_t:
        raise SCCBGMError(
            f"predicted {shape_p} and true {shape_t} counterfactuals must be aligned cell by "
            "cell and gene by gene (same shape)"
        )
    project = None if pca is None else _projector(pca)
    total, n_values = 0.0, 0
    for start in range(0, shape_p[0], chunk_size):
        p_blk = dense_rows(predicted, slice(start, start + chunk_size))
        t_blk = dense_rows(true, slice(start, start + chunk_size))
        if not (np.isfinite(p_blk).all() and np.isfinite(t_blk).all()):
            raise SCCBGMError("predicted or true contains NaN or infinite values")
        if project is not None:
            p_blk, t_blk = project(p_blk), project(t_blk)
        diff = p_blk - t_blk
        total += float(np.einsum("ij,ij->", diff, diff))
        n_values += diff.size
    return total / n_values


def knn_subtype_accuracy(
    predicted: Matrix,
    reference: Matrix,
    reference_labels: ArrayLike,
    true_labels: ArrayLike,
    k: int = 15,
) -> float:
    """Subtype preservation of edited cells (App. D.11), a fraction in ``[0, 1]``.

    A k-nearest-neighbour classifier (Euclidean, majority vote, ``k`` capped at the number of
    reference cells) is fitted on ``reference`` ``(n_ref, d)`` with its subtype labels
    ``reference_labels`` ``(n_ref,)``; it predicts the subtype of every edited cell in
    ``predicted`` ``(n, d)``, and the result is the fraction equal to ``true_labels`` ``(n,)``
    (the subtype each edited cell had before the edit). Labels are compared as strings.
    """
    from sklearn.neighbors import KNeighborsClassifier

    pred, ref = _points(predicted, "predicted"), _points(reference, "reference")
    _same_features(pred, ref, ("predicted", "reference"))
    ref_labels = np.asarray(reference_labels).astype(str).ravel()
    truth = np.asarray(true_labels).astype(str).ravel()
    if ref_labels.shape[0] != ref.shape[0]:
        raise SCCBGMError(
            f"reference_labels has {ref_labels.shape[0]} entries but reference has "
            f"{ref.shape[0]} cells"
        )
    if truth.shape[0] != pred.shape[0]:
        raise SCCBGMError(
            f"true_labels has {truth.shape[0]} entries but predicted has {pred.shape[0]} cells"
        )
    if not isinstance(k, int | np.integer) or k < 1:
        raise SCCBGMError(f"k must be a positive integer, got {k!r}")
    clf = KNeighborsClassifier(n_neighbors=int(min(k, ref.shape[0])))
    clf.fit(ref, ref_labels)
    return float(np.mean(clf.predict(pred) == truth))


# --------------------------------------------------------------------------------------------
# perturbation-prediction metrics of the field (CPA, scPerturBench, pertpy)

DEFAULT_N_DEGS = 20
"""Default ``k`` of the top-k differentially expressed genes (CPA's Kang tutorial reports 20)."""


def e_distance(x: Matrix, y: Matrix, *, metric: str = "euclidean", chunk_size: int = _CHUNK) -> float:
    """Energy distance ``E(x, y) = 2 delta - sigma_x - sigma_y`` as pertpy defines it.

    ``delta`` is the mean distance between the cells of ``x`` ``(n, d)`` and ``y`` ``(m, d)``,
    ``sigma_x`` / ``sigma_y`` the mean distance within each set, means over all ``n^2`` /
    ``m^2`` pairs (the zero diagonal included). This is pertpy's ``Edistance``
    (``pertpy.tools.Distance(metric="edistance")``, ``pertpy/tools/_distances/_distances.py`` in
    scverse/pertpy; Peidli et al. 2024, scPerturb), which pertpy applies to ``X_pca``. Its cell-wise
    ``metric`` is ``"euclidean"`` (current pertpy and pertpy < 0.6); pertpy 0.6-0.9 used
    ``"sqeuclidean"``, which gives ``2 ||mean(x) - mean(y)||^2``. Exact, accumulated over
    ``chunk_size`` x ``chunk_size`` blocks. Units: those of ``metric``; 0 for identical sets.
    """
    if metric not in ("euclidean", "sqeuclidean"):
        raise SCCBGMError(f"metric must be 'euclidean' or 'sqeuclidean', got {metric!r}")
    a, b = _points(x, "x"), _points(y, "y")
    _same_features(a, b)
    a_sq, b_sq = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)

    def mean_distance(p: NDArray, q: NDArray, p_sq: NDArray, q_sq: NDArray) -> float:
        total = 0.0
        for i in range(0, p.shape[0], chunk_size):
            for j in range(0, q.shape[0], chunk_size):
                block = _sq_dists(p[i : i + chunk_size], q[j : j + chunk_size], p_sq[i : i + chunk_size],
                                  q_sq[j : j + chunk_size])
                total += float((block if metric == "sqeuclidean" else np.sqrt(block)).sum())
        return total / (p.shape[0] * q.shape[0])

    return 2.0 * mean_distance(a, b, a_sq, b_sq) - mean_distance(a, a, a_sq, a_sq) - mean_distance(b, b, b_sq, b_sq)


def _gene_means(x: Matrix, name: str) -> NDArray[np.float64]:
    """Mean expression ``(n_genes,)`` of the cells of ``x``."""
    if sp.issparse(x):
        _matrix_shape(x, name)
        means = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    else:
        means = _points(x, name).mean(axis=0)
    if not np.isfinite(means).all():
        raise SCCBGMError(f"{name} contains NaN or infinite values")
    return means


def _gene_index(genes: ArrayLike | None, n_genes: int) -> NDArray[np.intp] | slice:
    if genes is None:
        return slice(None)
    idx = np.asarray(genes)
    if idx.dtype == bool:
        if idx.shape != (n_genes,):
            raise SCCBGMError(f"a boolean gene mask must have {n_genes} entries, got {idx.shape}")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.intp).ravel()
    if idx.size == 0:
        raise SCCBGMError("genes selects no gene")
    if idx.min() < -n_genes or idx.max() >= n_genes:
        raise SCCBGMError(f"gene indices must lie in [0, {n_genes}), got {idx.min()}..{idx.max()}")
    return idx


def top_degs(control: Matrix, real: Matrix, k: int = DEFAULT_N_DEGS) -> NDArray[np.intp]:
    """Indices ``(k,)`` of the top-``k`` differentially expressed genes of ``real`` vs ``control``.

    Genes are ranked by ``|mean(real) - mean(control)|`` (the absolute log fold change when the
    inputs are log-normalised), largest first, ties by gene order. This choice needs no test
    statistic, so every editor is scored on the same genes of one real contrast.
    """
    ctrl, tgt = _gene_means(control, "control"), _gene_means(real, "real")
    if ctrl.shape != tgt.shape:
        raise SCCBGMError(f"control has {ctrl.shape[0]} genes but real has {tgt.shape[0]}")
    if not isinstance(k, int | np.integer) or k < 1:
        raise SCCBGMError(f"k must be a positive integer, got {k!r}")
    order = np.argsort(-np.abs(tgt - ctrl), kind="stable")
    return order[: min(int(k), order.size)]


def r2_mean(predicted: Matrix, real: Matrix, *, genes: ArrayLike | None = None) -> float:
    """R^2 of the mean expression of ``predicted`` vs ``real`` cells, over genes (CPA's ``r2_mean``).

    With ``mp = mean(predicted)`` and ``mr = mean(real)`` (per gene, over cells; the sets may have
    different cells), ``R^2 = 1 - sum_g (mr_g - mp_g)^2 / sum_g (mr_g - mean_g(mr))^2``
    (``sklearn.metrics.r2_score(mr, mp)``), on all genes or on ``genes`` (indices or a boolean
    mask, e.g. :func:`top_degs`). 1 is perfect; it can be negative. NaN when ``mr`` is constant.
    """
    mp, mr = _gene_means(predicted, "predicted"), _gene_means(real, "real")
    if mp.shape != mr.shape:
        raise SCCBGMError(f"predicted has {mp.shape[0]} genes but real has {mr.shape[0]}")
    idx = _gene_index(genes, mr.shape[0])
    mp, mr = mp[idx], mr[idx]
    total = float(np.sum((mr - mr.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((mr - mp) ** 2)) / total


def _deltas(
    predicted: Matrix, real: Matrix, control: Matrix, genes: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mp, mr, mc = (_gene_means(predicted, "predicted"), _gene_means(real, "real"),
                  _gene_means(control, "control"))
    if not mp.shape == mr.shape == mc.shape:
        raise SCCBGMError(
            f"predicted, real and control must have the same genes, got {mp.shape[0]}, {mr.shape[0]}, "
            f"{mc.shape[0]}"
        )
    idx = _gene_index(genes, mr.shape[0])
    return (mp - mc)[idx], (mr - mc)[idx]


def pearson_delta(
    predicted: Matrix, real: Matrix, control: Matrix, *, genes: ArrayLike | None = None
) -> float:
    """Pearson correlation over genes of the predicted and the real change from control.

    ``corr(mean(predicted) - mean(control), mean(real) - mean(control))`` over all genes or over
    ``genes`` (indices or a boolean mask, e.g. :func:`top_degs`); in ``[-1, 1]``. NaN when either
    change is constant (e.g. "no edit", whose predicted change is 0).
    """
    dp, dr = _deltas(predicted, real, control, genes)
    if dp.size < 2 or np.std(dp) == 0.0 or np.std(dr) == 0.0:
        return math.nan
    return float(np.corrcoef(dp, dr)[0, 1])


def response_share(
    predicted: Matrix, real: Matrix, control: Matrix, *, genes: ArrayLike | None = None
) -> float:
    """How much of the real mean change the prediction reproduces, in its direction.

    With d_p = mean(predicted) - mean(control) and d_r = mean(real) - mean(control) over all genes
    or ``genes``: ``<d_p, d_r> / <d_r, d_r>`` (the least-squares slope of d_p on d_r through 0).
    1: the real response in full; 0: none of it (no edit); 0.5: half the size. Unlike
    :func:`pearson_delta` it sees the size of the change, not only its shape. NaN when the real
    change is 0.
    """
    dp, dr = _deltas(predicted, real, control, genes)
    norm = float(dr @ dr)
    return float(dp @ dr) / norm if norm > 0 else math.nan


def deg_direction_accuracy(
    predicted: Matrix, real: Matrix, control: Matrix, *, genes: ArrayLike | None = None
) -> float:
    """Fraction of genes whose predicted change from control has the real change's sign.

    ``mean_g [sign(mean(predicted) - mean(control))_g == sign(mean(real) - mean(control))_g]``
    over ``genes`` (usually the top-k DEGs of :func:`top_degs`; all genes when None), in
    ``[0, 1]``. A predicted change of exactly 0 (no edit) never counts as right unless the real
    one is 0 too.
    """
    dp, dr = _deltas(predicted, real, control, genes)
    return float(np.mean(np.sign(dp) == np.sign(dr)))
