"""Truncated streamed PCA (data._pca) against an exact PCA; sparse-aware log-normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles

from sccbgm.data import InputTransform, _pca, chunk_rows


def _counts(n: int = 600, g: int = 400, seed: int = 0) -> np.ndarray:
    """Poisson counts with 6 cell types, a graded programme and noise: a decaying spectrum."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 6, n)
    log_rate = rng.uniform(-1, 1.5, g) + rng.normal(0, 0.9, (6, g))[types]
    log_rate += rng.uniform(0, 1, n)[:, None] * rng.normal(0, 0.6, g)
    return rng.poisson(np.exp(log_rate + rng.normal(0, 0.3, (n, g)))).astype(np.float32)


def _exact(tr: InputTransform, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = tr.lognorm(counts.astype(np.float64))
    np.testing.assert_allclose(tr.mean, x.mean(0), atol=1e-12)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return xc, s[:k] ** 2 / (x.shape[0] - 1), vt[:k]


@pytest.mark.parametrize("sparse", [False, True])
def test_truncated_pca_matches_exact_pca(sparse: bool) -> None:
    """Tolerances: the 6 signal axes (5 for 6 cell types + 1 graded programme, then a spectral gap
    of 4x) within 0.1 degree of the exact ones and their explained variances within 0.01%; the
    40 axes (most in the flat noise tail, where any basis is as good) keep >= 99% of the exact
    explained variance, and the reconstruction error is within 1% of the exact rank-40 optimum."""
    counts = _counts()
    k = 40
    matrix = sp.csr_matrix(counts) if sparse else counts
    tr = InputTransform.fit(matrix, [f"g{j}" for j in range(counts.shape[1])], n_pcs=k)
    xc, ev_exact, vt = _exact(tr, counts, k)
    c = tr.components
    assert c.shape == (k, counts.shape[1])
    np.testing.assert_allclose(c @ c.T, np.eye(k), atol=1e-8)
    ev = np.sum((xc @ c.T) ** 2, axis=0) / (xc.shape[0] - 1)
    assert ev_exact[5] > 4 * ev_exact[6]
    assert np.degrees(subspace_angles(c[:6].T, vt[:6].T)).max() < 0.1
    np.testing.assert_allclose(ev[:6], ev_exact[:6], rtol=1e-4)
    assert ev.sum() >= 0.99 * ev_exact.sum()
    rec = np.sum((xc - xc @ c.T @ c) ** 2)
    rec_exact = np.sum((xc - xc @ vt.T @ vt) ** 2)
    assert rec <= 1.01 * rec_exact
    # sign convention: the largest-magnitude loading of every component is positive
    assert (c[np.arange(k), np.abs(c).argmax(axis=1)] > 0).all()


def test_dense_and_sparse_give_the_same_transform() -> None:
    counts = _counts(n=300, g=200, seed=1)
    genes = [f"g{j}" for j in range(200)]
    dense = InputTransform.fit(counts, genes, n_pcs=12)
    sparse = InputTransform.fit(sp.csr_matrix(counts), genes, n_pcs=12)
    np.testing.assert_allclose(sparse.mean, dense.mean, atol=1e-10)
    np.testing.assert_allclose(sparse.components, dense.components, atol=1e-8)
    again = InputTransform.fit(counts, genes, n_pcs=12)
    np.testing.assert_array_equal(again.components, dense.components)  # deterministic


def test_chunking_does_not_change_the_pca(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming over many small chunks gives the same axes as one chunk."""
    import sccbgm.access as access

    counts = _counts(n=300, g=200, seed=2)
    tr = InputTransform.fit(counts, [f"g{j}" for j in range(200)], representation="genes")
    whole = _pca(tr, counts, 10)
    monkeypatch.setattr(access, "CHUNK_ELEMENTS", 16 * 200)
    assert access.chunk_rows(200) == 16
    chunks = len(list(tr.iter_chunks(counts, np.arange(300))))
    assert chunks == 19
    streamed = _pca(tr, counts, 10)
    np.testing.assert_allclose(streamed[0], whole[0], atol=1e-12)
    np.testing.assert_allclose(streamed[1], whole[1], atol=1e-8)


def test_sparse_lognorm_keeps_sparsity() -> None:
    counts = _counts(n=50, g=80, seed=3)
    counts[counts < 3] = 0
    tr = InputTransform.fit(counts, [f"g{j}" for j in range(80)], representation="genes")
    block = sp.csr_matrix(counts)
    out = tr.lognorm(block)
    assert sp.issparse(out) and out.nnz == block.nnz
    np.testing.assert_allclose(out.toarray(), tr.lognorm(counts.astype(np.float64)), atol=1e-12)
    assert block.data.max() >= 3  # the input is not modified in place


def test_chunk_rows_bounds_cells_times_genes() -> None:
    assert chunk_rows(3_000) * 3_000 <= 1 << 23
    assert chunk_rows(30_000) * 30_000 <= 1 << 23
    assert chunk_rows(10**9) == 16
