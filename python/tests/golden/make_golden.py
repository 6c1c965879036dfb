"""Write the golden model file of the current format version (test data, committed).

    PYTHONPATH=python python python/tests/golden/make_golden.py

writes ``python/tests/golden/model_v<FORMAT_VERSION>.sccbgm`` (a tiny scCBGM, a few KB; from v2,
the version that added ensembles, an ensemble of 2, since a single model is still written as v1) and
``model_v<FORMAT_VERSION>.expected.npy`` (its residual edit of the first 8 golden cells to
stim=STIM); from v3, the version that added group calibration, a model fitted with
``groupby="cell_type"`` and also ``model_v<N>.expected_groups.npy``, its default (count-space,
group-calibrated) edit of the same cells; from v4, the version that added the pooled correction of
groups seen in one state, the calibration is by ``groupby="cluster"`` with the STIM cells of
cluster k0 (which holds the first cells) left out of the fit, so that k0 gets the pooled
correction. ``test_model_files.py`` loads every ``model_v*.sccbgm`` here and checks that it still
loads, encodes and edits, and gives the same edit. Run it once per new format version; never
regenerate an existing version's file (the point is that old files keep working).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import poisson

HERE = Path(__file__).resolve().parent
N_CELLS, N_GENES, N_UP = 240, 24, 6
EXPECTED_CELLS = 8


def golden_data() -> ad.AnnData:
    """240 cells x 24 genes of Poisson counts; stim=STIM multiplies genes 0-5 by e (ctrl/STIM
    alternate), two cell types shift genes 12-17. Uniform draws + Poisson quantiles only, so the
    same numbers on every platform."""
    rng = np.random.default_rng(13)
    u = rng.random((N_CELLS, N_GENES))
    stim = np.arange(N_CELLS) % 2
    cell_type = (np.arange(N_CELLS) // 2) % 2
    log_rate = np.full((N_CELLS, N_GENES), 1.0)
    log_rate[:, :N_UP] += stim[:, None] * 1.0
    log_rate[:, 12:18] += cell_type[:, None] * 0.8
    x = poisson.ppf(u, np.exp(log_rate)).astype(np.float32)
    obs = pd.DataFrame(
        {"stim": pd.Categorical(np.where(stim == 1, "STIM", "ctrl")),
         "cell_type": pd.Categorical(np.where(cell_type == 1, "B", "T")),
         "cluster": pd.Categorical([f"k{(i // 4) % 4}" for i in range(N_CELLS)])},  # v4's groups (no effect)
        index=[f"c{i}" for i in range(N_CELLS)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


def golden_edit(model, adata: ad.AnnData) -> np.ndarray:
    import sccbgm

    # the additive residual edit the golden files were made with (the default edit changed later)
    return sccbgm.edit(model, adata[:EXPECTED_CELLS], {"stim": "STIM"}, count_edit=None, shift_unknown=False).X


def golden_group_edit(model, adata: ad.AnnData) -> np.ndarray:
    import sccbgm

    # the count-space edit with the group calibration as the files were made (each cell its own
    # rate ratio: the shared response became the default later; it reads nothing from the file)
    return sccbgm.edit(model, adata[:EXPECTED_CELLS], {"stim": "STIM"}, share_response=False).X


def main() -> None:
    import sccbgm
    from sccbgm.model import FORMAT_VERSION

    adata = golden_data()
    train, groupby = adata, "cell_type" if FORMAT_VERSION >= 3 else None
    if FORMAT_VERSION >= 4:
        train, groupby = adata[~((adata.obs["cluster"] == "k0") & (adata.obs["stim"] == "STIM")).to_numpy()], "cluster"
    model = sccbgm.fit(train, ["stim", "cell_type"], seed=0, epochs=40, hidden_dim=16, n_layers=1,
                       latent_dim=4, unknown_dim=4, n_pcs=6, batch_size=64, progress=False,
                       num_threads=1, n_members=1 if FORMAT_VERSION == 1 else 2, groupby=groupby)
    path = HERE / f"model_v{FORMAT_VERSION}.sccbgm"
    sccbgm.save(model, path)
    np.save(HERE / f"model_v{FORMAT_VERSION}.expected.npy", golden_edit(sccbgm.load(path), adata))
    if FORMAT_VERSION >= 3:
        np.save(HERE / f"model_v{FORMAT_VERSION}.expected_groups.npy", golden_group_edit(sccbgm.load(path), adata))
    print(f"wrote {path} ({path.stat().st_size} bytes): {model}")


if __name__ == "__main__":
    main()
