"""Tests of sccbgm.metrics against hand computations and POT (App. D.2, Eq. 50-55; D.11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from sccbgm import metrics as M
from sccbgm.errors import SCCBGMError


def _gauss(n: int, d: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# ---------------------------------------------------------------------------------------- MMD


def test_mmd_by_hand_1d() -> None:
    # x = {0, 1}, y = {0, 2}, k = exp(-d^2 / 2):
    # Kxx = [[1, e^-1/2], [e^-1/2, 1]], Kyy = [[1, e^-2], [e^-2, 1]],
    # Kxy = [[k(0,0), k(0,2)], [k(1,0), k(1,2)]] = [[1, e^-2], [e^-1/2, e^-1/2]]
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    e5, e2 = math.exp(-0.5), math.exp(-2.0)
    kxx, kyy, kxy = (2 + 2 * e5) / 4, (2 + 2 * e2) / 4, (1 + e2 + 2 * e5) / 4
    expected = kxx + kyy - 2 * kxy
    assert expected == pytest.approx((1 - e5) / 2)
    assert M.mmd(x, y, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)


def test_mmd_by_hand_2d_single_target_cell() -> None:
    # x = {(0,0), (1,1)}, y = {(0,0)}, sigma = 1: ||x0 - x1||^2 = 2 -> k = e^-1
    x, y = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0]])
    e1 = math.exp(-1.0)
    expected = (2 + 2 * e1) / 4 + 1.0 - 2 * (1 + e1) / 2
    assert M.mmd(x, y, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)


def test_mmd_default_bandwidth_is_median_of_target() -> None:
    y = np.array([[0.0], [2.0], [3.0]])  # pairwise distances 2, 3, 1 -> median 2
    x = np.array([[0.5], [4.0]])
    assert M.median_bandwidth(y) == pytest.approx(2.0)
    assert M.mmd(x, y) == pytest.approx(M.mmd(x, y, bandwidth=2.0), rel=1e-12)
    # the kernel depends on y only: the same target gives the same sigma for any x
    assert M.mmd(x * 10, y) == pytest.approx(M.mmd(x * 10, y, bandwidth=2.0), rel=1e-12)


def test_mmd_against_dense_kernel_matrices() -> None:
    x, y = _gauss(40, 3, seed=1), _gauss(30, 3, 0.5, seed=2)
    sigma = 1.7
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))  # noqa: E731
    expected = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
    assert M.mmd(x, y, bandwidth=sigma, max_cells=None) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 39])
def test_chunked_mmd_equals_unchunked(chunk_size: int) -> None:
    x, y = _gauss(50, 4, seed=3), _gauss(45, 4, 0.3, seed=4)
    whole = M.mmd(x, y, max_cells=None, chunk_size=10_000)
    assert M.mmd(x, y, max_cells=None, chunk_size=chunk_size) == pytest.approx(whole, rel=1e-10)


def test_mmd_subsampling_rule() -> None:
    x, y = _gauss(40, 2, seed=5), _gauss(30, 2, 1.0, seed=6)
    sub = lambda a: a[np.sort(np.random.default_rng(7).choice(len(a), 10, replace=False))]  # noqa: E731
    value = M.mmd(x, y, bandwidth=1.0, max_cells=10, seed=7)
    assert value == pytest.approx(M.mmd(sub(x), sub(y), bandwidth=1.0, max_cells=None))
    assert value == M.mmd(x, y, bandwidth=1.0, max_cells=10, seed=7)
    assert value != M.mmd(x, y, bandwidth=1.0, max_cells=10, seed=8)
    assert M.mmd(x, x, max_cells=10, seed=3) == 0.0  # same draw for a set against itself


# ------------------------------------------------------------------------------------ Frechet


def test_frechet_by_hand_1d() -> None:
    # x = {0, 2}: mean 1, var 2; y = {1, 3, 5}: mean 3, var 4 (ddof=1)
    # FID = (1 - 3)^2 + 2 + 4 - 2 sqrt(2 * 4) = 10 - 4 sqrt(2)
    x, y = np.array([[0.0], [2.0]]), np.array([[1.0], [3.0], [5.0]])
    assert M.frechet_distance(x, y) == pytest.approx(10 - 4 * math.sqrt(2), rel=1e-12)


def test_frechet_by_hand_2d() -> None:
    # x: mean 0, cov diag(2/3, 8/3); y: mean (1, 1), cov diag(8/3, 2/3)
    # FID = 2 + 20/3 - 2 (sqrt(16/9) + sqrt(16/9)) = 10/3
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    y = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + 1.0
    assert M.frechet_distance(x, y) == pytest.approx(10 / 3, rel=1e-12)


def test_frechet_matches_sqrtm_formula() -> None:
    x, y = _gauss(60, 4, seed=8), _gauss(50, 4, seed=9) @ np.array(
        [[1, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 2, 0], [0.2, 0, 0, 1]]
    )
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * covmean)
    assert M.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_frechet_translation_and_rank_deficient() -> None:
    x = _gauss(30, 3, seed=10)
    t = np.array([0.5, -1.0, 2.0])
    assert M.frechet_distance(x, x + t) == pytest.approx(float(t @ t), rel=1e-9)
    few = _gauss(3, 10, seed=11)  # 3 cells in 10 dims: singular covariance
    assert M.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)


def test_frechet_needs_two_cells() -> None:
    with pytest.raises(SCCBGMError, match="2 cells"):
        M.frechet_distance(np.zeros((1, 2)), np.ones((3, 2)))


# ----------------------------------------------------------------------------------- Sinkhorn


def _pot_sinkhorn_divergence(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    import ot

    def ot_eps(a: np.ndarray, b: np.ndarray) -> float:
        res = ot.solve(ot.dist(a, b), reg=eps, reg_type="KL", max_iter=100_000, tol=1e-12)
        return float(res.value)

    return ot_eps(x, y) - 0.5 * (ot_eps(x, x) + ot_eps(y, y))


def test_sinkhorn_divergence_matches_pot() -> None:
    import ot

    x, y = _gauss(25, 2, seed=12), _gauss(20, 2, 0.7, seed=13)
    eps = 0.5
    expected = _pot_sinkhorn_divergence(x, y, eps)
    value = M.sinkhorn_divergence(x, y, epsilon=eps, tol=1e-12)
    assert value == pytest.approx(expected, rel=1e-7)
    debiased = ot.solve_sample(x, y, reg=eps, debias=True, max_iter=100_000, tol=1e-12)
    assert value == pytest.approx(float(debiased.value), rel=1e-7)


def test_sinkhorn_by_hand_two_points() -> None:
    # x = {0}, y = {1}: every plan is the product plan, so OT_eps(x, y) = 1, OT_eps(x, x) = 0
    assert M.sinkhorn_divergence(np.array([[0.0]]), np.array([[1.0]]), epsilon=0.1) == (
        pytest.approx(1.0, rel=1e-12)
    )


def test_sinkhorn_default_epsilon_and_translation() -> None:
    y = np.array([[0.0], [2.0]])  # mean squared distance over all pairs (i, j) = 2
    assert M.sinkhorn_epsilon(y) == pytest.approx(M.RELATIVE_EPSILON * 2.0)
    x = _gauss(40, 3, seed=14)
    t = np.array([1.0, 0.0, -0.5])
    # for the squared Euclidean cost, SD_eps(p, p shifted by t) = ||t||^2 for every eps
    assert M.sinkhorn_divergence(x, x + t, tol=1e-10) == pytest.approx(float(t @ t), rel=1e-6)


def test_sinkhorn_log_domain_fallback_small_epsilon() -> None:
    x, y = _gauss(15, 2, seed=15), _gauss(15, 2, 3.0, seed=16)
    value = M.sinkhorn_divergence(x, y, epsilon=1e-3)  # exp(-C / eps) underflows
    assert math.isfinite(value)
    assert value == pytest.approx(_pot_sinkhorn_divergence(x, y, 1e-3), rel=1e-4)


# --------------------------------------------------------------------- shared metric properties

DISTANCES = [M.mmd, M.frechet_distance, M.sinkhorn_divergence]


@pytest.mark.parametrize("fn", DISTANCES, ids=lambda f: f.__name__)
def test_distance_of_set_to_itself_is_zero(fn) -> None:
    x = _gauss(80, 5, seed=17)
    assert fn(x, x) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("fn", DISTANCES, ids=lambda f: f.__name__)
def test_shifted_gaussian_is_farther(fn) -> None:
    y = _gauss(150, 4, seed=18)
    near, far = _gauss(150, 4, 0.0, seed=19), _gauss(150, 4, 1.0, seed=19)
    assert fn(far, y) > fn(near, y) > 0.0


@pytest.mark.parametrize("fn", DISTANCES, ids=lambda f: f.__name__)
def test_bad_inputs_raise(fn) -> None:
    ok = np.ones((4, 2))
    with pytest.raises(SCCBGMError, match="NaN"):
        fn(np.array([[np.nan, 0.0], [1.0, 1.0]]), ok)
    with pytest.raises(SCCBGMError, match="empty"):
        fn(np.zeros((0, 2)), ok)
    with pytest.raises(SCCBGMError, match="2-D"):
        fn(np.ones(4), ok)
    with pytest.raises(SCCBGMError, match="features"):
        fn(np.ones((4, 3)), ok)


def test_sparse_input_equals_dense() -> None:
    x, y = _gauss(30, 3, seed=20), _gauss(30, 3, 1.0, seed=21)
    for fn in DISTANCES:
        assert fn(sp.csr_matrix(x), sp.csr_matrix(y)) == pytest.approx(fn(x, y), rel=1e-12)


# ------------------------------------------------------------------------------------- ratios


def test_ratio_by_hand() -> None:
    # 1-D sets with equal spread: FID = squared mean difference
    target = np.array([[0.0], [2.0]])
    predicted = np.array([[1.0], [3.0]])  # FID 1
    populations = {"a": np.array([[3.0], [5.0]]), "b": np.array([[-2.0], [0.0]])}  # 9, 4
    res = M.rfid(predicted, target, populations)
    assert res.numerator == pytest.approx(1.0)
    assert res.denominators == pytest.approx({"a": 9.0, "b": 4.0})
    assert res.denominator == pytest.approx(4.0)
    assert res.closest_population == "b"
    assert res.ratio == pytest.approx(0.25)
    generic = M.ratio(M.frechet_distance, predicted, target, populations)
    assert generic == res


def test_ratio_with_custom_metric_and_edge_cases() -> None:
    gap = lambda x, y: float(abs(np.mean(x) - np.mean(y)))  # noqa: E731
    pops = {"near": np.array([[1.0]]), "far": np.array([[5.0]])}
    res = M.ratio(gap, np.array([[0.5]]), np.array([[0.0]]), pops)
    assert (res.numerator, res.denominator, res.closest_population) == (0.5, 1.0, "near")
    assert res.ratio == 0.5
    assert M.ratio(gap, [[1.0]], [[0.0]], {"same": [[0.0]]}).ratio == math.inf
    assert math.isnan(M.ratio(gap, [[0.0]], [[0.0]], {"same": [[0.0]]}).ratio)
    with pytest.raises(SCCBGMError, match="non-empty"):
        M.ratio(gap, [[0.0]], [[0.0]], {})


def test_rmmd_and_rsd_share_one_scale_across_terms() -> None:
    target = _gauss(60, 3, seed=22)
    predicted = _gauss(60, 3, 0.3, seed=23)
    pops = {"p": _gauss(60, 3, 1.0, seed=24), "q": _gauss(60, 3, -2.0, seed=25)}
    sigma = M.median_bandwidth(target)
    r = M.rmmd(predicted, target, pops)
    assert r.numerator == pytest.approx(M.mmd(predicted, target, bandwidth=sigma))
    assert r.denominators["q"] == pytest.approx(M.mmd(pops["q"], target, bandwidth=sigma))
    assert r.numerator == pytest.approx(M.mmd(predicted, target))  # default = target's sigma
    assert r.closest_population == "p"
    assert r.ratio == pytest.approx(r.numerator / r.denominator)
    eps = M.sinkhorn_epsilon(target)
    s = M.rsd(predicted, target, pops)
    assert s.numerator == pytest.approx(M.sinkhorn_divergence(predicted, target, epsilon=eps))
    assert s.denominators["p"] == pytest.approx(M.sinkhorn_divergence(pops["p"], target))
    assert s.ratio < 1.0  # the prediction is closer to the target than any population


# -------------------------------------------------------------------------- cell-level metrics


def test_cell_mse_by_hand() -> None:
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    true = np.array([[1.0, 0.0], [0.0, 4.0]])
    # per-cell MSE: (0 + 4) / 2 = 2 and (9 + 0) / 2 = 4.5 -> mean 3.25
    assert M.cell_mse(pred, true) == pytest.approx(3.25)
    assert M.cell_mse(sp.csr_matrix(pred), sp.csr_matrix(true), chunk_size=1) == 3.25
    # project on the first gene: differences 0 and 3 -> per-cell 0 and 9 -> 4.5
    assert M.cell_mse(pred, true, pca=(np.array([[1.0, 0.0]]), np.zeros(2))) == 4.5


def test_cell_mse_pca_objects() -> None:
    from sklearn.decomposition import PCA

    ref = _gauss(50, 6, seed=26)
    pred, true = _gauss(10, 6, seed=27), _gauss(10, 6, seed=28)
    sk = PCA(3).fit(ref)
    expected = np.mean(np.mean((sk.transform(pred) - sk.transform(true)) ** 2, axis=1))
    assert M.cell_mse(pred, true, pca=sk) == pytest.approx(expected)
    pair = (sk.components_, sk.mean_)
    assert M.cell_mse(pred, true, pca=pair) == pytest.approx(expected)
    with pytest.raises(SCCBGMError, match="aligned"):
        M.cell_mse(pred, true[:9])
    with pytest.raises(SCCBGMError, match="transform"):
        M.cell_mse(pred, true, pca="pca")


def test_knn_subtype_accuracy_by_hand() -> None:
    reference = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    labels = ["a", "a", "a", "b", "b", "b"]
    edited = np.array([[0.05], [5.05], [4.9]])
    # predicted subtypes: a, b, b; true: a, b, a -> 2 / 3
    assert M.knn_subtype_accuracy(edited, reference, labels, ["a", "b", "a"], k=3) == (
        pytest.approx(2 / 3)
    )
    assert M.knn_subtype_accuracy(edited, reference, labels, ["a", "b", "b"], k=1) == 1.0
    with pytest.raises(SCCBGMError, match="true_labels"):
        M.knn_subtype_accuracy(edited, reference, labels, ["a"], k=3)


def test_pca_features() -> None:
    from sklearn.decomposition import PCA

    ref = _gauss(40, 8, seed=29) @ np.diag(np.arange(1, 9, dtype=float))
    proj = M.pca_features(ref, n_components=3)
    assert proj.components.shape == (3, 8) and proj.n_components == 3
    sk = PCA(3).fit(ref)
    x = _gauss(5, 8, seed=30)
    assert np.abs(proj.transform(x)) == pytest.approx(np.abs(sk.transform(x)), rel=1e-8)
    sparse = M.pca_features(sp.csr_matrix(ref), n_components=3)
    assert np.abs(sparse.transform(sp.csr_matrix(x))) == pytest.approx(
        np.abs(proj.transform(x)), rel=1e-6
    )
    assert M.pca_features(ref, n_components=50).n_components == 8  # capped
    assert M.pca_features(sp.csr_matrix(ref[:5]), n_components=50).n_components == 5


def test_sparse_sets_are_subsampled_before_densifying() -> None:
    """max_cells draws the cells before any conversion: a sparse set is densified only for the
    drawn cells (peak memory far below one dense copy of x; what remains is the median-heuristic
    bandwidth's 1,000 cells of y), with the same value as on dense input."""
    import tracemalloc

    x = sp.random(20000, 1000, density=0.01, format="csr", random_state=1)
    y = sp.random(4000, 1000, density=0.01, format="csr", random_state=2)
    dense_bytes = 20000 * 1000 * 8
    for fn, cap in ((M.mmd, 200), (M.sinkhorn_divergence, 100)):
        fn(y[:50], y[50:100])  # imports (POT) happen outside the measurement
        tracemalloc.start()
        value = fn(x, y, max_cells=cap)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 0.15 * dense_bytes, (fn.__name__, peak)
        assert value == pytest.approx(fn(x.toarray(), y.toarray(), max_cells=cap), rel=1e-8)
    refs = {"a": x[:3000], "b": y[2000:]}
    sparse_r = M.rmmd(x[3000:6000], y[:2000], refs, max_cells=200)
    dense_r = M.rmmd(
        x[3000:6000].toarray(), y[:2000].toarray(), {k: v.toarray() for k, v in refs.items()}, max_cells=200
    )
    assert sparse_r.ratio == pytest.approx(dense_r.ratio, rel=1e-8)
    bad = x.copy()
    bad.data[-1] = np.nan  # a NaN in any cell is still caught, drawn or not
    with pytest.raises(SCCBGMError, match="NaN"):
        M.mmd(bad, y, max_cells=10)


# --- field metrics: r2_mean, pearson_delta, deg_direction_accuracy, top_degs, e_distance ---


def test_e_distance_by_hand_pertpy_definition() -> None:
    x, y = np.array([[0.0], [2.0]]), np.array([[5.0]])
    # pertpy Edistance: 2 * mean|x - y| - mean|x - x'| - mean|y - y'| (diagonal included)
    # delta = (5 + 3) / 2 = 4; sigma_x = (0 + 2 + 2 + 0) / 4 = 1; sigma_y = 0
    assert M.e_distance(x, y) == pytest.approx(7.0)
    # sqeuclidean: delta = (25 + 9) / 2 = 17, sigma_x = 8 / 4 = 2 -> 32 = 2 * (1 - 5)^2
    assert M.e_distance(x, y, metric="sqeuclidean") == pytest.approx(32.0)
    assert M.e_distance(y, x) == pytest.approx(7.0)


def test_e_distance_matches_dense_formula_and_chunks() -> None:
    x, y = _gauss(37, 4, seed=1), _gauss(23, 4, shift=1.0, seed=2)
    dense = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    assert M.e_distance(x, y) == pytest.approx(dense, rel=1e-7)
    assert M.e_distance(x, y, chunk_size=5) == pytest.approx(M.e_distance(x, y), rel=1e-12)
    assert M.e_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SCCBGMError, match="metric"):
        M.e_distance(x, y, metric="cosine")


def test_r2_mean_by_hand() -> None:
    real = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])  # mean (2, 3, 4)
    pred = np.array([[2.0, 3.0, 5.0]])  # mean (2, 3, 5)
    # SS_res = 1, SS_tot = 1 + 0 + 1 = 2
    assert M.r2_mean(pred, real) == pytest.approx(0.5)
    # genes 1, 2: mr = (3, 4), mp = (3, 5): SS_res = 1, SS_tot = 0.5
    assert M.r2_mean(pred, real, genes=[1, 2]) == pytest.approx(-1.0)
    assert M.r2_mean(pred, real, genes=np.array([False, True, True])) == pytest.approx(-1.0)
    assert M.r2_mean(real, real) == pytest.approx(1.0)
    assert M.r2_mean(sp.csr_matrix(pred), sp.csr_matrix(real)) == pytest.approx(0.5)
    with pytest.raises(SCCBGMError, match="genes"):
        M.r2_mean(pred, real[:, :2])


def test_pearson_delta_by_hand() -> None:
    control = np.ones((2, 3))
    real = control + np.array([1.0, 2.0, 3.0])
    pred = control + np.array([1.0, 2.0, 4.0])
    # deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 42 / 9) = 9 / sqrt(84)
    assert M.pearson_delta(pred, real, control) == pytest.approx(9 / np.sqrt(84))
    assert M.pearson_delta(pred, real, control, genes=[0, 1]) == pytest.approx(1.0)
    assert np.isnan(M.pearson_delta(control, real, control))  # no edit: no predicted change


def test_response_share_by_hand() -> None:
    control = np.zeros((2, 3))
    real = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])  # change (1, 2, 0)
    assert M.response_share(control + np.array([0.5, 1.0, 0.0]), real, control) == pytest.approx(0.5)
    # change (1, 0, 3): <(1, 0, 3), (1, 2, 0)> / 5 = 0.2 -- the size along the real change only
    assert M.response_share(control + np.array([1.0, 0.0, 3.0]), real, control) == pytest.approx(0.2)
    assert M.response_share(control, real, control) == 0.0  # no edit
    assert M.response_share(real, real, control, genes=[1]) == pytest.approx(1.0)
    assert np.isnan(M.response_share(real, control, control))  # no real change


def test_deg_direction_and_top_degs_by_hand() -> None:
    control = np.full((1, 4), 2.0)
    real = np.array([[3.0, 1.0, 2.5, 2.0]])  # change (1, -1, 0.5, 0)
    pred = np.array([[2.5, 2.5, 1.0, 2.0]])  # change (0.5, 0.5, -1, 0)
    assert M.deg_direction_accuracy(pred, real, control) == pytest.approx(0.5)
    degs = M.top_degs(control, real, k=2)
    assert degs.tolist() == [0, 1]
    assert M.deg_direction_accuracy(pred, real, control, genes=degs) == pytest.approx(0.5)
    assert M.deg_direction_accuracy(pred, real, control, genes=[0]) == 1.0
    assert M.top_degs(control, real, k=10).tolist() == [0, 1, 2, 3]
    with pytest.raises(SCCBGMError, match="k must"):
        M.top_degs(control, real, k=0)
