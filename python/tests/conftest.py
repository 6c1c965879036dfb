"""Shared fixtures: a small toy data set with known structure and a model fitted on it once."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("SCCBGM_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_toy(n_cells: int = 1200, n_genes: int = 120, seed: int = 0):
    """Poisson counts with additive log-rate effects of cell type (3) and stim (binary).

    Returns (adata, true_log_rate(cell_type, stim, eps) helper data) where the stim effect is
    sparse: ``adata.uns['stim_effect']`` (G,) is the true log-scale shift of stim=1.
    """
    rng = np.random.default_rng(seed)
    ct = rng.integers(0, 3, n_cells)
    stim = rng.integers(0, 2, n_cells)
    base = rng.uniform(0.5, 2.5, n_genes)
    ct_eff = rng.normal(0, 0.6, (3, n_genes))
    stim_eff = rng.normal(0, 0.8, n_genes) * (rng.random(n_genes) < 0.3)
    eps = rng.normal(0, 0.1, (n_cells, n_genes))
    delta = rng.random((n_cells, n_genes))
    from scipy.stats import poisson

    def counts(stim_values: np.ndarray) -> np.ndarray:
        lam = np.exp(base + ct_eff[ct] + stim_values[:, None] * stim_eff + eps)
        return poisson.ppf(delta, lam).astype(np.float32)

    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type{i}" for i in ct]), "stim": stim},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(counts(stim), obs=obs, var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
    adata.uns["stim_effect"] = stim_eff
    adata.obsm["counterfactual_counts"] = counts(1 - stim)
    return adata


@pytest.fixture(scope="session")
def toy() -> ad.AnnData:
    return make_toy()


@pytest.fixture(scope="session")
def toy_model(toy):
    import sccbgm

    return sccbgm.fit(toy[:900].copy(), ["stim", "cell_type"], seed=0, epochs=25, progress=False)
