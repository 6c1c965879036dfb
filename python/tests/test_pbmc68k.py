"""A second real data set that ships with scanpy (no download): ``pbmc68k_reduced``.

Its ``X`` is scaled (centred, negative values) and its ``raw`` holds log-normalised expression of
765 genes for 700 PBMCs with ``bulk_labels`` (10 cell types).
"""

from __future__ import annotations

import numpy as np
import pytest

import sccbgm
from sccbgm.errors import SCCBGMError

sc = pytest.importorskip("scanpy")

B_MARKERS = ["CD79A", "CD79B", "MS4A1"]
MONO_MARKERS = ["LYZ", "S100A8", "S100A9", "FCN1"]


@pytest.fixture(scope="module")
def pbmc():
    return sc.datasets.pbmc68k_reduced()


def test_scaled_x_is_refused_with_the_fix_in_the_message(pbmc):
    with pytest.raises(SCCBGMError, match=r"negative values .*sc\.pp\.scale"):
        sccbgm.fit(pbmc, ["bulk_labels"], epochs=1, progress=False)


def test_cell_type_edit_moves_markers_on_real_cells(pbmc):
    """Fit on log-normalised ``raw`` with the cell type as a concept, then edit CD14+ monocytes to
    CD19+ B cells: B-cell markers rise (measured: 52-80% of the way to the real B cells) and
    monocyte markers fall (5-35% of the way), and the model reads the edited cells as more B-like."""
    data = pbmc.raw.to_adata()
    data.obs["bulk_labels"] = pbmc.obs["bulk_labels"].astype(str).astype("category")
    model = sccbgm.fit(data, ["bulk_labels"], seed=0, epochs=40, progress=False)
    assert model.transform.input_kind == "lognorm"
    mono = data.obs["bulk_labels"] == "CD14+ Monocyte"
    b_cells = data.obs["bulk_labels"] == "CD19+ B"
    edited = sccbgm.edit(model, data, {"bulk_labels": "CD19+ B"}, cells=mono.to_numpy())

    def mean(adata, genes):
        x = adata[:, genes].X
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x).mean(0)

    before, after, target = mean(data[mono], B_MARKERS), mean(edited, B_MARKERS), mean(data[b_cells], B_MARKERS)
    assert (after > before).all()
    assert np.all(after - before > 0.2 * (target - before))
    m_before, m_after = mean(data[mono], MONO_MARKERS), mean(edited, MONO_MARKERS)
    assert (m_after < m_before).all()

    # the model's own reading of the edited cells moves towards B (a cell-type swap is a large
    # edit: part of the monocyte identity stays in the unknown factors u, so it is not complete)
    b_col = model.concept_names.index("bulk_labels=CD19+ B")
    p_before = sccbgm.encode(model, data[mono]).X[:, b_col].mean()
    p_after = sccbgm.encode(model, edited).X[:, b_col].mean()
    assert p_after > 3 * p_before  # measured: 0.008 -> 0.048
