"""Streamed edits: edit(..., out=path) / `sccbgm edit --out` write an .h5ad chunk by chunk."""

from __future__ import annotations

import json

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import sccbgm
from sccbgm.errors import SCCBGMError


@pytest.fixture(scope="module")
def held_out(toy, tmp_path_factory):
    """The toy model's held-out cells as sparse counts in an .h5ad, and that file's path."""
    cells = toy[900:].copy()
    cells.X = sp.csr_matrix(cells.X)
    del cells.obsm["counterfactual_counts"]
    path = tmp_path_factory.mktemp("stream") / "cells.h5ad"
    cells.write_h5ad(path)
    return cells, path


def _assert_same_edit(streamed, in_memory) -> None:
    np.testing.assert_allclose(np.asarray(streamed.X[:]), in_memory.X, rtol=1e-6, atol=1e-6)
    assert list(streamed.obs_names) == list(in_memory.obs_names)
    assert list(streamed.var_names) == list(in_memory.var_names)
    for col in in_memory.obs:
        assert (streamed.obs[col].astype(str) == in_memory.obs[col].astype(str)).all()
    assert set(streamed.obsm) == set(in_memory.obsm)
    for key in in_memory.obsm:
        np.testing.assert_allclose(np.asarray(streamed.obsm[key]), in_memory.obsm[key], rtol=1e-6, atol=1e-6)
    assert streamed.uns["sccbgm_edit"]["set"] == in_memory.uns["sccbgm_edit"]["set"]
    assert streamed.uns["sccbgm_edit"]["model"] == in_memory.uns["sccbgm_edit"]["model"]


def test_streamed_edit_equals_the_in_memory_edit(toy_model, held_out, tmp_path):
    cells, path = held_out
    expected = sccbgm.edit(toy_model, cells, {"stim": 1})
    source = ad.read_h5ad(path, backed="r")
    out = tmp_path / "edited.h5ad"
    streamed = sccbgm.edit(toy_model, source, {"stim": 1}, out=out)
    assert streamed.isbacked and streamed.filename == out
    _assert_same_edit(streamed, expected)
    # the on-disk contract the R side reads: dense float32 X, chunked by rows over all genes
    with h5py.File(out, "r") as f:
        x = f["X"]
        assert isinstance(x, h5py.Dataset) and x.dtype == np.float32
        assert x.shape == (cells.n_obs, cells.n_vars) and x.chunks[1] == cells.n_vars
        assert x.attrs["encoding-type"] == "array"
    again = ad.read_h5ad(out)  # a plain, valid .h5ad
    assert again.shape == expected.shape and (again.obs["stim"] == 1).all()
    streamed.file.close()
    source.file.close()


def test_streamed_edit_of_a_shuffled_subset(toy_model, held_out, tmp_path):
    """Cells in any order are read as sorted rows and written in the order given."""
    cells, path = held_out
    pick = np.array([250, 3, 120, 0, 299, 4])
    expected = sccbgm.edit(toy_model, cells, {"cell_type": "type0"}, cells=pick)
    source = ad.read_h5ad(path, backed="r")
    streamed = sccbgm.edit(toy_model, source, {"cell_type": "type0"}, cells=pick, out=tmp_path / "sub.h5ad")
    _assert_same_edit(streamed, expected)
    streamed.file.close()
    source.file.close()


def test_memory_is_bounded_by_the_chunk_not_the_cells(toy_model, held_out, tmp_path, monkeypatch):
    """With 16-cell chunks every read of X takes <= 16 cells and the edit needs ceil(n / 16) reads,
    whatever n: nothing cells x genes is held beyond one chunk."""
    import sccbgm.access as access
    import sccbgm.editing as editing

    cells, path = held_out
    monkeypatch.setattr(access, "CHUNK_ELEMENTS", 16 * cells.n_vars)
    reads: list[int] = []

    class Recording:
        def __init__(self, matrix):
            self.matrix, self.shape = matrix, matrix.shape

        def __getitem__(self, key):
            block = self.matrix[key]
            reads.append(block.shape[0])
            return block

    real_get = editing.get_matrix
    monkeypatch.setattr(editing, "get_matrix", lambda adata, layer: Recording(real_get(adata, layer)))
    for n in (40, 300):
        reads.clear()
        source = ad.read_h5ad(path, backed="r")
        res = sccbgm.edit(toy_model, source, {"stim": 1}, cells=np.arange(n), out=tmp_path / f"e{n}.h5ad")
        assert res.n_obs == n
        assert max(reads) <= 16 and len(reads) == -(-n // 16)
        res.file.close()
        source.file.close()


def test_refuses_to_overwrite_the_input(toy_model, held_out, tmp_path):
    cells, _ = held_out
    path = tmp_path / "in.h5ad"
    cells.write_h5ad(path)
    before = path.read_bytes()
    source = ad.read_h5ad(path, backed="r")
    with pytest.raises(SCCBGMError, match="input file"):
        sccbgm.edit(toy_model, source, {"stim": 1}, out=path)
    source.file.close()
    from sccbgm.cli import main

    model_path = tmp_path / "m.sccbgm"
    sccbgm.save(toy_model, model_path)
    assert main(["edit", str(path), "--model", str(model_path), "--set", '{"stim": 1}', "--out", str(path)]) == 2
    assert path.read_bytes() == before


def test_a_failed_edit_leaves_no_file(toy_model, held_out, tmp_path):
    """Non-integer values in a late chunk stop a counts model's edit: no partial output remains."""
    cells, _ = held_out
    bad = cells.copy()
    bad.X = bad.X.toarray()
    bad.X[-1, 0] = 0.5
    out = tmp_path / "never.h5ad"
    with pytest.raises(SCCBGMError, match="integer counts"):
        sccbgm.edit(toy_model, bad, {"stim": 1}, out=out)
    assert list(tmp_path.iterdir()) == []


def test_cli_edit_streams_a_backed_file(toy_model, held_out, tmp_path):
    from sccbgm.cli import main

    cells, path = held_out
    model_path = tmp_path / "m.sccbgm"
    sccbgm.save(toy_model, model_path)
    out = tmp_path / "cli.h5ad"
    args = ["edit", str(path), "--model", str(model_path), "--set", json.dumps({"stim": 0}), "--out", str(out)]
    assert main(args) == 0
    _assert_same_edit(ad.read_h5ad(out), sccbgm.edit(toy_model, cells, {"stim": 0}))
    assert main([*args[:5], "{not json", "--out", str(tmp_path / "x.h5ad")]) == 2


def test_streamed_ensemble_edit_keeps_its_uncertainty_layers_on_disk(toy, tmp_path):
    """An ensemble's edit_sd / edit_lower / edit_upper are written under layers/ and equal the
    in-memory edit's; the returned backed object does not read them into memory (at 1M x 3,000
    cells they are 36 GB: reading them got the process killed for memory)."""
    model = sccbgm.fit(toy[:600].copy(), ["stim", "cell_type"], seed=0, epochs=3, n_members=2, progress=False)
    cells = toy[600:700].copy()
    in_memory = sccbgm.edit(model, cells, {"stim": 1})
    out = tmp_path / "edited.h5ad"
    streamed = sccbgm.edit(model, cells, {"stim": 1}, out=out)
    assert streamed.isbacked and len(streamed.layers) == 0
    np.testing.assert_allclose(np.asarray(streamed.X[:]), in_memory.X, rtol=1e-6, atol=1e-6)
    with h5py.File(out, "r") as f:
        for key in ("edit_sd", "edit_lower", "edit_upper"):
            np.testing.assert_allclose(f[f"layers/{key}"][:], in_memory.layers[key], rtol=1e-6, atol=1e-6)
    streamed.file.close()
    assert set(ad.read_h5ad(out).layers) == {"edit_sd", "edit_lower", "edit_upper"}
