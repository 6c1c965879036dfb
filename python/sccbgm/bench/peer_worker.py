"""Run one peer method in its own virtual environment (a sibling process of the bench).

Usage: ``<peers-venv>/bin/python peer_worker.py job.json``. This file imports nothing from
sccbgm (the peers' environment does not have it); it exchanges h5ad files with the bench.

Job (JSON): ``peer`` ("biolord" | "cinemaot" | "scgen"), ``data`` (h5ad: log-normalised
expression in X, obs with the concept columns, ``cell_type`` and ``bench_split`` in {"train",
"intervene"}), ``concept`` (the intervened column, edited 0 -> 1), ``concepts`` (all known
concept columns), ``cell_type`` (the held-out type), ``epochs`` (None: the peer's default),
``seed``, ``out`` (h5ad written: the predicted log-normalised expression of the "intervene"
cells, same order) and ``status`` (JSON written: versions, seconds, notes).

Each peer is called through its documented default API:

* biolord (Piran et al. 2024): ``Biolord.setup_anndata(categorical_attributes_keys=concepts)``,
  ``Biolord(adata)`` with default module parameters, ``train(max_epochs=epochs,
  enable_checkpointing=False)`` (see run_biolord for why), then
  ``compute_prediction_adata(adata, source, target_attributes=[concept])``. biolord learns one
  unknown-attribute code per training cell and has no encoder, so the cells to edit are part of
  its training data (with their factual concept value 0; their counterfactuals are never seen).
* CINEMA-OT (Dong et al. 2023): ``sc.pp.pca`` then ``cinemaot_unweighted(adata, obs_label=
  concept, ref_label="0", expr_label="1")`` with default dim / thres / smoothness / eps on all
  cells; the counterfactual of a concept-0 cell is its optimal-transport match among the
  concept-1 cells (X_ref - TE).
* scGen (Lotfollahi et al. 2019): ``SCGEN.setup_anndata(batch_key=concept, labels_key=
  "cell_type")``, ``SCGEN(adata)``, ``train(max_epochs=epochs)`` on the training cells, then
  ``predict(ctrl_key="0", stim_key="1", adata_to_predict=intervene cells)``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _dense(x):
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def run_biolord(adata, job):
    import biolord
    import scvi

    scvi.settings.seed = int(job["seed"])
    concepts = list(job["concepts"])
    for c in concepts:
        adata.obs[c] = adata.obs[c].astype(int).astype(str).astype("category")
    biolord.Biolord.setup_anndata(adata, categorical_attributes_keys=concepts)
    model = biolord.Biolord(adata)
    kw = {"max_epochs": job["epochs"]} if job.get("epochs") else {}
    # enable_checkpointing=False: with scvi-tools >= 1.x, biolord 0.0.3's default checkpointing adds
    # scvi's SaveCheckpoint callback, which reads a loss that biolord's manual-optimisation
    # training step does not return (TypeError in on_train_batch_end); training is unchanged.
    model.train(enable_progress_bar=False, enable_checkpointing=False, **kw)
    source = adata[(adata.obs["bench_split"] == "intervene").to_numpy()].copy()
    preds = model.compute_prediction_adata(adata, source, target_attributes=[job["concept"]])
    edited = _dense(preds[(preds.obs[job["concept"]].astype(str) == "1").to_numpy()].X)
    return edited, {"version": biolord.__version__, "epochs": kw.get("max_epochs", "default"),
                    "n_train_cells": int(adata.n_obs)}


def run_cinemaot(adata, job):
    import cinemaot
    import scanpy as sc

    concept = job["concept"]
    adata.obs[concept] = adata.obs[concept].astype(int).astype(str)
    sc.pp.pca(adata, random_state=int(job["seed"]))
    _, _, te = cinemaot.cinemaot.cinemaot_unweighted(adata, obs_label=concept, ref_label="0", expr_label="1")
    ref = adata[(adata.obs[concept] == "0").to_numpy()]
    counterfactual = _dense(ref.X) - _dense(te.X)
    rows = (ref.obs["bench_split"] == "intervene").to_numpy()
    version = getattr(cinemaot, "__version__", "0.0.5")
    return counterfactual[rows], {"version": version, "n_cells": int(adata.n_obs)}


def run_scgen(adata, job):
    import scgen
    import scvi

    scvi.settings.seed = int(job["seed"])
    concept = job["concept"]
    adata.obs[concept] = adata.obs[concept].astype(int).astype(str)
    train = adata[(adata.obs["bench_split"] == "train").to_numpy()].copy()
    intervene = adata[(adata.obs["bench_split"] == "intervene").to_numpy()].copy()
    scgen.SCGEN.setup_anndata(train, batch_key=concept, labels_key="cell_type")
    model = scgen.SCGEN(train)
    kw = {"max_epochs": job["epochs"]} if job.get("epochs") else {}
    model.train(**kw)
    pred, _ = model.predict(ctrl_key="0", stim_key="1", adata_to_predict=intervene)
    return _dense(pred.X), {"version": scgen.__version__, "scvi_tools": scvi.__version__,
                            "epochs": kw.get("max_epochs", "default")}


RUNNERS = {"biolord": run_biolord, "cinemaot": run_cinemaot, "scgen": run_scgen}


def main(path):
    import anndata as ad

    with open(path) as fh:
        job = json.load(fh)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(job["data"])
    n_intervene = int((adata.obs["bench_split"] == "intervene").sum())
    edited, info = RUNNERS[job["peer"]](adata, job)
    if edited.shape != (n_intervene, adata.n_vars):
        raise RuntimeError(f"{job['peer']} returned {edited.shape}, expected {(n_intervene, adata.n_vars)}")
    ad.AnnData(X=np.asarray(edited, dtype=np.float32)).write_h5ad(job["out"])
    info["seconds"] = time.perf_counter() - t0
    with open(job["status"], "w") as fh:
        json.dump(info, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
