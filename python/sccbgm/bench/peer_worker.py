"""Run one peer method in its own virtual environment (a sibling process of the bench).

Usage: ``<peers-venv>/bin/python peer_worker.py job.json``. This file imports nothing from
sccbgm (the peers' environment does not have it); it exchanges h5ad files with the bench.

Job (JSON): ``peer`` ("biolord" | "cinemaot" | "scgen" | "cpa" | "cellflow"), ``data`` (h5ad: log-normalised
expression in X, obs with the concept columns, ``cell_type`` and ``bench_split`` in {"train",
"intervene"}), ``concept`` (the intervened column, edited 0 -> 1), ``concepts`` (all known
concept columns), ``cell_type`` (the held-out type), ``epochs`` (None: the peer's default),
``seed``, ``intervene_in_train`` (true when the "intervene" cells are also training cells, as
the control cells of the held-out type in ``bench real``; false when they are held out),
``out`` (h5ad written: the predicted log-normalised expression of the "intervene"
cells, obs_names = the cell each row predicts, as named by the peer's own output where it names
them, var_names = the input's genes; the bench realigns rows and genes by these names and checks
the scale) and ``status`` (JSON written: versions, seconds, notes).

Each runner returns ``(prediction (n, G), obs_names of its rows or None, info)``; None means the
rows follow the order of the "intervene" cells in the input (CellFlow's population sample).

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
* CPA 0.8.8 (Lotfollahi et al. 2023), with the settings of its Kang tutorial
  (``docs/tutorials/Kang.ipynb`` in theislab/cpa): ``perturbation_key="condition"`` (ctrl /
  stimulated = concept 0 / 1), a dummy dose of 1.0, ``categorical_covariate_keys=["cell_type"]``,
  ``max_comb_len=1``, the marker-gene masks ``deg_uns_key="rank_genes_groups_cov"`` (top 50 genes
  of scanpy ``rank_genes_groups`` of each cell type's stimulated vs control training cells, as the
  tutorial's preprocessing), the tutorial's ``model_params`` and ``trainer_params``, a
  train / valid split of the training cells (90 / 10 %, seeded) with the cells to predict as
  ``ood``, ``train(max_epochs=2000, batch_size=512, early_stopping_patience=5,
  check_val_every_n_epoch=5)`` (``max_epochs`` = ``epochs`` when given). Two departures, both
  forced by the bench's input: ``recon_loss="gauss"`` and ``is_count_data=False`` (the bench
  exchanges log-normalised expression, not counts; the tutorial uses "nb" on counts). The
  counterfactual: the cells to edit with ``condition`` set to "stimulated", ``model.predict``.
* CellFlow 0.0.9 (Klein et al. 2025), with the settings of its PBMC cytokine tutorial
  (``docs/notebooks/100_pbmc.ipynb``): ``centered_pca`` of the training cells (100 components
  at most), solver "otfm", ``prepare_data(sample_rep="X_pca", control_key=is_control,
  perturbation_covariates={"treatment": ("treatment",)}, sample_covariates=["cell_type"],
  sample_covariate_reps = mean PCA embedding of each type's control cells, split_covariates=
  ["cell_type"])``, the tutorial's ``prepare_model`` arguments (layers, widths, constant-noise
  path 0.5, ``match_linear(epsilon=0.5)``, ``MultiSteps(adam(5e-5), 20)``), ``train(batch_size=
  1024)`` for ``iterations`` steps (the tutorial: 500,000; a shortened run, ``epochs`` given,
  divides every width by 8 and uses batches of 256 -- at the tutorial's widths one step costs
  ~0.4 TFLOP), ``predict`` from the control cells
  of the held-out type, ``reconstruct_pca`` back to genes. CellFlow transports the control
  *population*: its output is a sample of the predicted population (one cell per control cell,
  from an OT-matched flow), not a per-cell counterfactual, so its cell-level pairing carries no
  meaning; the bench scores the population it produces.
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
    target = preds[(preds.obs[job["concept"]].astype(str) == "1").to_numpy()]
    # biolord names each prediction "<source obs_name>_<target value>"
    names = [str(n)[: -len("_1")] if str(n).endswith("_1") else str(n) for n in target.obs_names]
    return _dense(target.X), names, {"version": biolord.__version__, "epochs": kw.get("max_epochs", "default"),
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
    return counterfactual[rows], list(te.obs_names[rows]), {"version": version, "n_cells": int(adata.n_obs)}


def run_scgen(adata, job):
    import scgen
    import scvi

    scvi.settings.seed = int(job["seed"])
    concept = job["concept"]
    adata.obs[concept] = adata.obs[concept].astype(int).astype(str)
    train = adata[_train_mask(adata, job)].copy()
    intervene = adata[(adata.obs["bench_split"] == "intervene").to_numpy()].copy()
    scgen.SCGEN.setup_anndata(train, batch_key=concept, labels_key="cell_type")
    model = scgen.SCGEN(train)
    kw = {"max_epochs": job["epochs"]} if job.get("epochs") else {}
    model.train(**kw)
    pred, _ = model.predict(ctrl_key="0", stim_key="1", adata_to_predict=intervene)
    return _dense(pred.X), list(pred.obs_names), {"version": scgen.__version__, "scvi_tools": scvi.__version__,
                            "epochs": kw.get("max_epochs", "default")}


def _train_mask(adata, job):
    split = adata.obs["bench_split"].to_numpy()
    return (split == "train") | ((split == "intervene") & bool(job.get("intervene_in_train")))


def run_cpa(adata, job):
    import cpa
    import scanpy as sc

    concept, seed = job["concept"], int(job["seed"])
    adata.obs["condition"] = np.where(adata.obs[concept].astype(int).to_numpy() == 1, "stimulated", "ctrl")
    adata.obs["dose"] = "1.0"
    adata.obs["cov_cond"] = adata.obs["cell_type"].astype(str) + "_" + adata.obs["condition"]
    train = _train_mask(adata, job)
    intervene = (adata.obs["bench_split"] == "intervene").to_numpy()
    # marker-gene masks: each cell type's stimulated vs control training cells, top 50 genes
    degs = {}
    for ct in adata.obs.loc[train, "cell_type"].astype(str).unique():
        sub = adata[train & (adata.obs["cell_type"].astype(str) == ct).to_numpy()].copy()
        if (sub.obs["condition"] == "ctrl").sum() < 2 or (sub.obs["condition"] == "stimulated").sum() < 2:
            continue
        sc.tl.rank_genes_groups(sub, groupby="condition", reference="ctrl", groups=["stimulated"], n_genes=50)
        degs[f"{ct}_stimulated"] = list(sub.uns["rank_genes_groups"]["names"]["stimulated"])
    adata.uns["rank_genes_groups_cov"] = degs
    rng = np.random.default_rng(seed)
    split = np.where(intervene & ~train, "ood", "train").astype(object)
    valid = train & (rng.random(adata.n_obs) < 0.1)
    split[valid] = "valid"
    adata.obs["split"] = split
    for col in ("condition", "dose", "cov_cond", "cell_type", "split"):
        adata.obs[col] = adata.obs[col].astype(str).astype("category")
    cpa.CPA.setup_anndata(adata, perturbation_key="condition", control_group="ctrl", dosage_key="dose",
                          categorical_covariate_keys=["cell_type"], is_count_data=False,
                          deg_uns_key="rank_genes_groups_cov", deg_uns_cat_key="cov_cond", max_comb_len=1)
    model_params = {"n_latent": 64, "recon_loss": "gauss", "doser_type": "linear", "n_hidden_encoder": 128,
                    "n_layers_encoder": 2, "n_hidden_decoder": 512, "n_layers_decoder": 2,
                    "use_batch_norm_encoder": True, "use_layer_norm_encoder": False,
                    "use_batch_norm_decoder": False, "use_layer_norm_decoder": True,
                    "dropout_rate_encoder": 0.0, "dropout_rate_decoder": 0.1, "variational": False, "seed": seed}
    trainer_params = {"n_epochs_kl_warmup": None, "n_epochs_pretrain_ae": 30, "n_epochs_adv_warmup": 50,
                      "n_epochs_mixup_warmup": 0, "mixup_alpha": 0.0, "adv_steps": None, "n_hidden_adv": 64,
                      "n_layers_adv": 3, "use_batch_norm_adv": True, "use_layer_norm_adv": False,
                      "dropout_rate_adv": 0.3, "reg_adv": 20.0, "pen_adv": 5.0, "lr": 0.0003, "wd": 4e-07,
                      "adv_lr": 0.0003, "adv_wd": 4e-07, "adv_loss": "cce", "doser_lr": 0.0003, "doser_wd": 4e-07,
                      "do_clip_grad": True, "gradient_clip_value": 1.0, "step_size_lr": 10}
    if job.get("epochs"):
        # shortened runs keep the tutorial's schedule proportions (pretraining / adversary warm-up)
        scale = min(1.0, int(job["epochs"]) / 100)
        trainer_params["n_epochs_pretrain_ae"] = max(1, round(30 * scale))
        trainer_params["n_epochs_adv_warmup"] = max(1, round(50 * scale))
    model = cpa.CPA(adata=adata, split_key="split", train_split="train", valid_split="valid", test_split="ood",
                    **model_params)
    max_epochs = int(job["epochs"]) if job.get("epochs") else 2000
    model.train(max_epochs=max_epochs, use_gpu=False, batch_size=512, plan_kwargs=trainer_params,
                early_stopping_patience=5, check_val_every_n_epoch=5, enable_progress_bar=False)
    cf = adata[intervene].copy()
    cf.obs["condition"] = cf.obs["condition"].cat.set_categories(["ctrl", "stimulated"])
    cf.obs["condition"] = "stimulated"
    cf.obs["condition"] = cf.obs["condition"].astype("category")
    cf.obs["cov_cond"] = (cf.obs["cell_type"].astype(str) + "_stimulated").astype("category")
    model.predict(cf, batch_size=2048)
    pred = _dense(cf.obsm["CPA_pred"])
    return pred, list(cf.obs_names), {"version": cpa.__version__, "epochs": max_epochs, "recon_loss": "gauss",
                  "n_deg_groups": len(degs), "n_valid": int(valid.sum())}


def run_cellflow(adata, job):
    import functools
    from importlib.metadata import version

    import anndata as ad
    import flax.linen as nn
    import optax
    import pandas as pd
    from cellflow.model import CellFlow
    from cellflow.preprocessing import centered_pca, project_pca, reconstruct_pca
    from cellflow.utils import match_linear

    concept, seed = job["concept"], int(job["seed"])
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    adata.obs["treatment"] = np.where(adata.obs[concept].astype(int).to_numpy() == 1, "stim", "ctrl")
    adata.obs["is_control"] = adata.obs["treatment"] == "ctrl"
    train_mask = _train_mask(adata, job)
    intervene = (adata.obs["bench_split"] == "intervene").to_numpy()
    # CellFlow pairs each type's control population with its treated one: control cells of a type
    # without treated training cells (the held-out type) are prediction sources only
    treated_types = set(adata.obs.loc[train_mask & ~adata.obs["is_control"].to_numpy(), "cell_type"])
    train_mask &= adata.obs["cell_type"].isin(treated_types).to_numpy()
    train = adata[train_mask].copy()
    n_comps = int(min(100, train.n_obs - 1, train.n_vars - 1))
    centered_pca(train, n_comps=n_comps, keep_centered_data=False)
    ctrl = adata[intervene].copy()
    ctrl.obs["is_control"] = True
    project_pca(query_adata=ctrl, ref_adata=train)
    ct_emb = {}
    for ct in pd.unique(pd.concat([train.obs["cell_type"], ctrl.obs["cell_type"]])):
        pool = train[(train.obs["cell_type"] == ct).to_numpy() & train.obs["is_control"].to_numpy()]
        src = pool.obsm["X_pca"] if pool.n_obs else ctrl[(ctrl.obs["cell_type"] == ct).to_numpy()].obsm["X_pca"]
        ct_emb[ct] = np.asarray(src, dtype=np.float32).mean(0)
    train.uns["cell_type_embeddings"] = ct_emb
    train.uns["treatment_embeddings"] = {"stim": np.array([1.0, 0.0], np.float32),
                                         "ctrl": np.array([0.0, 1.0], np.float32)}
    cf = CellFlow(train, solver="otfm")
    cf.prepare_data(sample_rep="X_pca", control_key="is_control",
                    perturbation_covariates={"treatment": ("treatment",)},
                    perturbation_covariate_reps={"treatment": "treatment_embeddings"},
                    sample_covariates=["cell_type"], sample_covariate_reps={"cell_type": "cell_type_embeddings"},
                    split_covariates=["cell_type"], max_combination_length=1, null_value=0.0)
    # the tutorial's widths; a shortened run (``epochs`` given) divides them by 8 and uses batches of
    # 256: at full width one iteration costs ~0.4 TFLOP, tens of seconds on a CPU
    shrink, batch_size = (8, 256) if job.get("epochs") else (1, 1024)

    def w(n):
        return max(16, n // shrink)

    layers_before_pool = {"treatment": {"layer_type": "mlp", "dims": [w(1024)] * 2, "dropout_rate": 0.5},
                          "cell_type": {"layer_type": "mlp", "dims": [w(256)] * 2, "dropout_rate": 0.0}}
    layers_after_pool = {"layer_type": "mlp", "dims": [w(1024)] * 2, "dropout_rate": 0.0}
    cf.prepare_model(condition_mode="deterministic", regularization=0.0, pooling="attention_token",
                     pooling_kwargs={}, layers_before_pool=layers_before_pool, layers_after_pool=layers_after_pool,
                     condition_embedding_dim=w(256), cond_output_dropout=0.9, condition_encoder_kwargs={},
                     pool_sample_covariates=True, time_freqs=w(1024), time_encoder_dims=[w(1024)] * 3,
                     time_encoder_dropout=0.0, hidden_dims=[w(2048)] * 3, hidden_dropout=0.0,
                     decoder_dims=[w(4096)] * 3, vf_act_fn=nn.silu, vf_kwargs=None,
                     probability_path={"constant_noise": 0.5},
                     match_fn=functools.partial(match_linear, epsilon=0.5, tau_a=1.0, tau_b=1.0),
                     optimizer=optax.MultiSteps(optax.adam(5e-5), 20), solver_kwargs={},
                     layer_norm_before_concatenation=False, linear_projection_before_concatenation=False,
                     seed=seed)
    iterations = int(job.get("iterations") or 500_000)
    cf.train(num_iterations=iterations, batch_size=batch_size, valid_freq=iterations + 1)
    held_type = str(ctrl.obs["cell_type"].iloc[0])
    covariates = pd.DataFrame({"treatment": ["stim"], "cell_type": [held_type], "condition": ["target"],
                               "is_control": [False]})
    covariates["treatment"] = covariates["treatment"].astype("category")
    covariates["cell_type"] = covariates["cell_type"].astype("category")
    ctrl.uns = train.uns
    out = cf.predict(ctrl, covariate_data=covariates, sample_rep="X_pca", condition_id_key="condition")
    pcs = np.asarray(next(iter(out.values())), dtype=np.float32)
    rec = ad.AnnData(X=np.zeros((pcs.shape[0], train.n_vars), np.float32), obsm={"X_pca": pcs})
    reconstruct_pca(rec, use_rep="X_pca", ref_adata=train, layers_key_added="X_recon")
    pred = _dense(rec.layers["X_recon"])
    return pred, None, {"version": version("cellflow-tools"), "iterations": iterations, "n_pcs": n_comps,
                  "width": "tutorial" if shrink == 1 else f"tutorial / {shrink}", "batch_size": batch_size,
                  "note": "population prediction (OT flow of the control cells)"}


RUNNERS = {"biolord": run_biolord, "cinemaot": run_cinemaot, "scgen": run_scgen, "cpa": run_cpa,
           "cellflow": run_cellflow}


def main(path):
    import anndata as ad
    import pandas as pd

    with open(path) as fh:
        job = json.load(fh)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(job["data"])
    cells = adata.obs_names[(adata.obs["bench_split"] == "intervene").to_numpy()]
    genes = adata.var_names.copy()
    edited, names, info = RUNNERS[job["peer"]](adata, job)
    if edited.shape != (len(cells), len(genes)):
        raise RuntimeError(f"{job['peer']} returned {edited.shape}, expected {(len(cells), len(genes))}")
    obs = pd.DataFrame(index=pd.Index([str(n) for n in (cells if names is None else names)]))
    ad.AnnData(X=np.asarray(edited, dtype=np.float32), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(job["out"])
    info["seconds"] = time.perf_counter() - t0
    with open(job["status"], "w") as fh:
        json.dump(info, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
