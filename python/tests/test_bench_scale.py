"""bench scale: the simulated counts file, the edit verification and the report (no child runs)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import sccbgm
from sccbgm.bench.scale import plot_scale, verify_edit, write_counts, write_report


def test_write_counts_is_a_valid_sparse_h5ad(tmp_path):
    path = write_counts(tmp_path / "c.h5ad", 1000, 300, chunk=256)
    a = ad.read_h5ad(path)
    assert a.shape == (1000, 300) and sp.issparse(a.X)
    x = a.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x)) and (x.sum(1) > 0).all()
    assert 0.02 < (x > 0).mean() < 0.2
    assert set(a.obs["cell_type"].cat.categories) == {f"type{t}" for t in range(4)}
    assert set(np.unique(a.obs["stim"])) == {0, 1}
    # the simulated stim effect is real: some genes differ between stim groups
    stim = a.obs["stim"].to_numpy() == 1
    assert np.abs(np.log1p(x[stim].mean(0)) - np.log1p(x[~stim].mean(0))).max() > 0.3
    # the same seed gives the same file content
    again = ad.read_h5ad(write_counts(tmp_path / "d.h5ad", 1000, 300, chunk=256))
    np.testing.assert_array_equal(again.X.toarray(), x)


def test_verify_edit_counts_every_written_cell(toy_model, toy, tmp_path):
    cells = toy[900:].copy()
    out = tmp_path / "e.h5ad"
    sccbgm.edit(toy_model, cells, {"stim": 1}, out=out).file.close()
    assert verify_edit(out, cells.n_obs, cells.n_vars) == {"cells_written": cells.n_obs, "verified": True}
    import h5py

    with h5py.File(out, "r+") as f:  # a cell that was never written reads as zeros
        f["X"][5] = 0.0
    assert verify_edit(out, cells.n_obs, cells.n_vars) == {"cells_written": cells.n_obs - 1, "verified": False}


def test_report_and_plot(tmp_path):
    table = pd.DataFrame([
        {"task": "fit", "n_cells": 100, "n_genes": 50, "method": "sccbgm.fit", "seconds": 3.0,
         "peak_rss_gib": 0.5, "beyond_data_gib": 0.1, "error": ""},
        {"task": "fit", "n_cells": 100, "n_genes": 50, "method": "scanpy normalise+PCA + bare torch loop",
         "seconds": 2.0, "peak_rss_gib": 0.6, "beyond_data_gib": 0.2, "error": ""},
    ])
    plot_scale(table, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 1000
    text = write_report(table, tmp_path, scale="quick", seconds=1.0).read_text()
    assert "= 1.50x" in text and "![scale](scale.png)" in text
