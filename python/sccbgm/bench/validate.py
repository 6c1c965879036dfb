"""Validation protocol that cannot be overfit (``sccbgm bench validate``, issue 12).

Tasks
-----
* **Kang** (the shared 1,975 PBMCs, ``../shared/data``): leave-one-type-out on every cell type.
  The type's stimulated cells are held out; the model is fitted on all other cells (raw counts,
  concepts ``condition`` + ``cell_type``); the type's control cells are edited to
  ``condition=stim`` and compared with the held-out stimulated cells.
* **Simulator** (:func:`sccbgm.simulate`, 2,000 cells x 500 genes per seed), two variants: the
  paper's additive concept effects (``synthetic1``) and cell-type-specific concept effects
  (``interaction``, ``concept_cell_type_sd=0.08``). One C.6 task per seed: the eligible
  (cell type, concept) pair with the largest true effect; cells are compared with their exact
  counterfactuals. ``-seen`` variants: the same tasks, but half of the held-out type's
  concept-on cells are in training (an edit of a population seen in both states, the common
  case in practice); the within-type shift then comes from training cells only.

The split into halves is FIXED here, before any measurement: defaults are chosen on
:data:`HALVES` ``["choose"]`` and confirmed on ``["confirm"]``; both are reported.
On Kang both halves hold all 7 types (the criterion is per type) and differ in the seeds (model
initialisation and minibatch order; the cells are the same); on the simulator the seeds are
different data sets.

Editors
-------
Floors: ``no edit``; ``mean shift (other types)``: the mean stimulation / concept shift of the
other types' training cells (log-normalised, averaged over types, NOT clipped, as in the issue);
its clipped version is reported too; on the simulator ``mean shift (within type)``: the shift
between the held-out type's own concept-on and concept-off cells (in the C.6 variants it sees
the held-out population, which no model sees, so it is an oracle-like floor; in the ``-seen``
variants it uses training cells only). Candidates: :data:`CANDIDATES` (name -> fit options,
edit options); ``"default"`` is whatever ``sccbgm.fit`` / ``sccbgm.edit`` do with no options
beyond the data's description: every scCBGM is fitted with ``groupby=``:data:`GROUPBY`
(the cell types, which the within-type floor uses too), so a type seen in both states of the
edited concept gets the group calibration of :mod:`sccbgm.groups`. Reference, on the variants with
cell-type-specific effects: :data:`ORACLE_SHARED`, the exact counterfactual without the held-out
type's own effect (it shows what the hold-out alone costs; ``kind="reference"``, not counted in
the wins).

Metrics (lower is better, except the diagnostics ``response_share``, ``slope_*``: best near 1)
------------------------------------------------------------------------------------------
* ``rmmd_z``: the issue's space -- log-normalise (target sum 1e4, log1p), z-score each gene over
  all cells of the data set, 50 PCs of all cells; unbiased squared MMD with an RBF kernel,
  gamma = 1/50, as a ratio to the MMD of the unedited source cells (< 1 beats no edit);
* ``rmmd_pkg``: the package's own rMMD (:func:`sccbgm.metrics.rmmd`, Eq. 10): 50 PCs of the
  training cells, median-heuristic bandwidth on the target, ratio to the closest training
  population;
* ``mean_dist``: ||mean(edited) - mean(target)||_2 over log-normalised genes (1e4);
* ``response_share``: how much of the real mean response the editor reproduces
  (:func:`sccbgm.metrics.response_share`: <d_edit, d_true> / <d_true, d_true>, d = mean(cells) -
  mean(source cells) over log-normalised genes; 1 = the full response, 0 = none; a diagnostic);
* ``cell_mse`` (simulator): mean squared error to the true counterfactual cells, log-normalised;
* ``slope_shared``, ``slope_type`` (simulator, a diagnostic): least-squares coefficients of the
  editor's mean change per gene (log-normalised) on the true log-rate effects of the edited
  concept, its shared part c_kj and the held-out type's own part e_kuj (interaction variants
  only). The exact counterfactuals give about 0.94 on both (log1p compresses low counts); an
  editor that learns only the shared response has ``slope_type`` near 0.

Also per fitted scCBGM: ``leak_acc``, the 5-fold balanced accuracy of a logistic regression
predicting the edited concept from u (0.5 = no leakage), and ``fit_s``.

Writes ``results.csv`` (task x seed x editor), ``report.md`` and ``predictions.npz`` (optional).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.access import dense_rows, lognormalise, rescale
from sccbgm.errors import SCCBGMError

TARGET_SUM = 1e4  # library size of the metric space (log-normalise, then z-score)

KANG_FILE = "kang2018_pbmc_ifnb_scgen_subset.h5ad"
KANG_TYPES = ("B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK")
SIM_VARIANTS = {"sim-additive": "synthetic1", "sim-interaction": "interaction",
                "sim-additive-seen": "synthetic1", "sim-interaction-seen": "interaction"}
"""Simulator data sets -> simulator preset; ``-seen``: the held-out type was also seen with the
concept on (half of those cells are in training), so the within-type shift is computed on
training cells only and is a floor a model can beat."""

# Fixed before measuring (issue 12): choose on one half, confirm on the other.
HALVES: dict[str, dict[str, tuple[int, ...]]] = {
    "choose": {"kang": (0, 1), "sim": (0, 1)},
    "confirm": {"kang": (2, 3), "sim": (2, 3)},
}

NO_EDIT = "no edit"
SHIFT_OTHER = "mean shift (other types)"
SHIFT_OTHER_CLIP = "mean shift (other types, clipped)"
SHIFT_WITHIN = "mean shift (within type)"
FLOORS = (NO_EDIT, SHIFT_OTHER, SHIFT_OTHER_CLIP, SHIFT_WITHIN)
ORACLE_SHARED = "reference: exact but for the type's own effect"
"""Simulator variants with cell-type-specific effects only: the exact counterfactual of every source
cell (its own exogenous draws included) with the held-out type's own effect e_ku set to 0. It
knows everything a model could learn from cells of other types, and more; what it still misses is
what no editor that respects the hold-out can know. Scored with ``kind="reference"``, not a
candidate, not a floor."""
REFERENCES = (ORACLE_SHARED,)

# name -> (sccbgm.fit options, sccbgm.edit options); fits with equal options are shared.
ADDITIVE = {"count_edit": None, "shift_unknown": False}
CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "additive (paper abduction)": ({}, ADDITIVE),
    "decoder output": ({}, {**ADDITIVE, "residual": False}),
    "additive, shift u": ({}, {"count_edit": None, "shift_unknown": True}),
    "count mean, no shift u": ({}, {"count_edit": "mean", "shift_unknown": False}),
    "count sample": ({}, {"count_edit": "sample"}),
    "count mean": ({}, {"count_edit": "mean"}),
    "shift u": ({}, {"shift_unknown": True}),
    "shift u, count sample": ({}, {"shift_unknown": True, "count_edit": "sample"}),
    "recon sum": ({"reconstruction": "sum"}, {}),
    "recon sum, count sample": ({"reconstruction": "sum"}, {"count_edit": "sample"}),
    "recon sum, paper weights": (
        {"reconstruction": "sum", "concept_weight": 0.1, "cross_cov_weight": 0.5}, {}),
    "FM on PCs (edit)": ({"model": "sccbgm-fm"}, {"mode": "edit"}),
    "FM on PCs (edit), count sample": ({"model": "sccbgm-fm"}, {"mode": "edit", "count_edit": "sample"}),
    "FM on genes (edit)": ({"model": "sccbgm-fm", "representation": "genes"}, {"mode": "edit"}),
    "cell type as a concept": ({"extra_concepts": ["cell_type"]}, {}),
    "FM on PCs (edit), count mean": ({"model": "sccbgm-fm"}, {"mode": "edit", "count_edit": "mean"}),
    "FM on genes (edit), count mean": (
        {"model": "sccbgm-fm", "representation": "genes"}, {"mode": "edit", "count_edit": "mean"}),
    "default, no group calibration": ({}, {"group_calibration": False}),
    "default, own response per cell": ({}, {"share_response": False}),
}
GROUPBY = "cell_type"
"""The obs column every scCBGM of the protocol is fitted with as ``groupby`` (the cell
types, which the within-type floor uses too): data the user has, not a setting
(:mod:`sccbgm.groups`)."""
ENSEMBLE = "default, ensemble of the half's seeds"
"""The default edit averaged over the models of the half's seeds (one per task and half): the
members' log rate ratios are averaged, then applied in count space as a single model's are."""
DEFAULT_CANDIDATES = ("default", "additive (paper abduction)", "decoder output", "additive, shift u",
                      "count mean, no shift u", "count sample")

SCALES = {
    "full": {"n_genes": 2000, "sim_cells": 2000, "sim_genes": 500, "fit": {}},
    "quick": {"n_genes": 200, "sim_cells": 600, "sim_genes": 100,
              "fit": {"epochs": 3, "flow_epochs": 3, "hidden_dim": 32, "latent_dim": 8, "unknown_dim": 8,
                      "flow_hidden_dim": 32}},
}


# ----------------------------------------------------------------------------- metric helpers
def mmd_unbiased(x: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """Unbiased squared MMD (U-statistic), RBF kernel exp(-gamma ||a - b||^2)."""
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(d, 0.0))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * k(x, y).mean())


class ZSpace:
    """The issue's metric space: z-scored log-normalised genes (all cells) -> 50 PCs."""

    def __init__(self, all_log: np.ndarray, n_pcs: int = 50) -> None:
        self.mean = all_log.mean(0)
        sd = all_log.std(0)
        self.sd = np.where(sd > 0, sd, 1.0)
        z = (all_log - self.mean) / self.sd
        _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        self.center = z.mean(0)
        self.components = vt[: min(n_pcs, vt.shape[0])]

    def __call__(self, x_log: np.ndarray) -> np.ndarray:
        return ((x_log - self.mean) / self.sd - self.center) @ self.components.T


def leakage_accuracy(u: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """5-fold balanced accuracy of a logistic regression predicting ``labels`` from u."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2 or np.bincount(pd.factorize(labels)[0]).min() < 5:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return float(cross_val_score(clf, u, labels, cv=5, scoring="balanced_accuracy").mean())


# ----------------------------------------------------------------------------- tasks
class Task:
    """One task: training data (counts AnnData), source cells to edit, target cells, floors."""

    def __init__(self, dataset: str, name: str, train: Any, source: Any, set_: dict[str, Any],
                 target_log: np.ndarray, zspace: ZSpace, floors: dict[str, np.ndarray],
                 concepts: list[str], edited_concept: str, truth_log: np.ndarray | None = None,
                 true_effects: np.ndarray | None = None) -> None:
        self.dataset, self.name, self.train, self.source, self.set = dataset, name, train, source, set_
        self.target_log, self.zspace, self.floors, self.concepts = target_log, zspace, floors, concepts
        self.edited_concept, self.truth_log = edited_concept, truth_log
        self.true_effects = true_effects  # (G, 1 or 2): shared [and type-specific] log-rate effect
        self.references: dict[str, np.ndarray] = {}  # name -> (n_source, G), see REFERENCES


def _shift(x_log: np.ndarray, groups: np.ndarray, on: np.ndarray, exclude: str | None) -> np.ndarray:
    shifts = []
    for g in np.unique(groups):
        if exclude is not None and g == exclude:
            continue
        a, b = (groups == g) & on, (groups == g) & ~on
        if a.any() and b.any():
            shifts.append(x_log[a].mean(0) - x_log[b].mean(0))
    if not shifts:
        raise SCCBGMError("no other group has both concept values; the mean-shift floor is undefined.")
    return np.mean(shifts, axis=0)


def load_kang(path: str | Path, n_genes: int | None) -> Any:
    """The shared Kang cells (counts), restricted to the ``n_genes`` most variable
    log-normalised genes (None: all)."""
    import anndata as ad

    path = Path(path)
    if path.is_dir():
        path = path / KANG_FILE
    if not path.is_file():
        raise SCCBGMError(f"Kang data not found at {path}; pass --kang PATH (see ../shared/data/README.md).")
    adata = ad.read_h5ad(path)
    if n_genes is not None and n_genes < adata.n_vars:
        var = lognormalise(dense_rows(adata.X), TARGET_SUM).var(0)
        keep = np.sort(np.argsort(var)[::-1][:n_genes])
        adata = adata[:, keep].copy()
    adata.obs["condition"] = adata.obs["condition"].astype(str)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    return adata


def kang_tasks(adata: Any, types: Sequence[str]) -> list[Task]:
    counts = dense_rows(adata.X)
    all_log = lognormalise(counts, TARGET_SUM)
    zspace = ZSpace(all_log)
    ctype, cond = adata.obs["cell_type"].to_numpy(), adata.obs["condition"].to_numpy()
    tasks = []
    for t in types:
        held = (ctype == t) & (cond == "stim")
        src = (ctype == t) & (cond == "ctrl")
        train_idx = np.flatnonzero(~held)
        shift = _shift(all_log[train_idx], ctype[train_idx], cond[train_idx] == "stim", exclude=t)
        x_src = all_log[src]
        floors = {NO_EDIT: x_src, SHIFT_OTHER: x_src + shift, SHIFT_OTHER_CLIP: np.clip(x_src + shift, 0, None)}
        tasks.append(Task("kang", t, adata[train_idx].copy(), adata[src].copy(), {"condition": "stim"},
                          all_log[held], zspace, floors, ["condition", "cell_type"], "condition"))
    return tasks


def _strongest(adata: Any) -> Any:
    from sccbgm.simulation import eligible_intervention_tasks

    sim = adata.uns["simulation"]
    coef = np.asarray(sim["concept_coef"])
    inter = sim.get("concept_cell_type_coef")
    names, types = list(map(str, sim["concept_names"])), list(map(str, sim["cell_type_names"]))

    def strength(task: Any) -> float:
        k, u = names.index(task.concept), types.index(task.cell_type)
        c = coef[k] + (np.asarray(inter)[k, u] if inter is not None else 0.0)
        return float(np.linalg.norm(c))

    return max(eligible_intervention_tasks(adata), key=strength)


def sim_task(variant: str, seed: int, n_cells: int, n_genes: int) -> Task:
    import sccbgm
    from sccbgm.simulation import intervention_split

    adata = sccbgm.simulate(SIM_VARIANTS[variant], n_cells=n_cells, n_genes=n_genes, seed=seed)
    task = _strongest(adata)
    split = intervention_split(adata, task, seed=seed)
    k = task.concept
    all_log = lognormalise(dense_rows(adata.X), TARGET_SUM)
    zspace = ZSpace(all_log)
    pos = {n: i for i, n in enumerate(adata.obs_names)}
    tr_idx = np.array([pos[n] for n in split.train.obs_names])
    ctype = adata.obs["cell_type"].astype(str).to_numpy()
    on = adata.obs[k].to_numpy() == 1
    in_type = ctype == task.cell_type
    seen = variant.endswith("-seen")
    if seen:
        pair = np.flatnonzero(in_type & on)
        shown = np.random.default_rng(seed).permutation(pair)[: pair.size // 2]
        tr_idx = np.sort(np.concatenate([tr_idx, shown]))
    x_src = lognormalise(dense_rows(split.intervene.X), TARGET_SUM)
    truth = lognormalise(dense_rows(split.test.X), TARGET_SUM)
    shift = _shift(all_log[tr_idx], ctype[tr_idx], on[tr_idx], exclude=task.cell_type)
    own_on = all_log[tr_idx][in_type[tr_idx] & on[tr_idx]] if seen else all_log[in_type & on]
    within = own_on.mean(0) - all_log[tr_idx][in_type[tr_idx] & ~on[tr_idx]].mean(0)
    floors = {NO_EDIT: x_src, SHIFT_OTHER: x_src + shift, SHIFT_OTHER_CLIP: np.clip(x_src + shift, 0, None),
              SHIFT_WITHIN: x_src + within}
    sim = adata.uns["simulation"]
    concepts = [str(c) for c in sim["concept_names"]]
    ki, ui = concepts.index(k), [str(u) for u in sim["cell_type_names"]].index(task.cell_type)
    effects = [np.asarray(sim["concept_coef"])[ki]]
    if sim.get("concept_cell_type_coef") is not None:
        effects.append(np.asarray(sim["concept_cell_type_coef"])[ki, ui])
    train = adata[tr_idx].copy() if seen else split.train
    out = Task(variant, f"seed{seed}:{task.cell_type}/{k}", train, split.intervene, {k: 1}, truth, zspace, floors,
               concepts, k, truth_log=truth, true_effects=np.stack(effects, axis=1))
    if len(effects) > 1:
        shared_only = without_own_effect(split.intervene, k, task.cell_type)
        out.references[ORACLE_SHARED] = lognormalise(dense_rows(shared_only.X), TARGET_SUM)
    return out


def without_own_effect(source: Any, concept: str, cell_type: str) -> Any:
    """Exact counterfactual counts of ``source`` (simulated, cell-type-specific effects) with
    ``concept`` switched on and ``cell_type``'s own effect e_ku of that concept set to 0: the
    same exogenous draws, the shared effect c_k only (:data:`ORACLE_SHARED`)."""
    from sccbgm.simulation import simulate_counterfactual

    edited = source.copy()
    sim = edited.uns["simulation"]
    coef = np.array(sim["concept_cell_type_coef"], copy=True)
    ki = [str(c) for c in sim["concept_names"]].index(concept)
    coef[ki, [str(u) for u in sim["cell_type_names"]].index(cell_type)] = 0.0
    sim["concept_cell_type_coef"] = coef
    return simulate_counterfactual(edited, {concept: 1})


# ----------------------------------------------------------------------------- scoring
def score(task: Task, pred_log: np.ndarray, seed: int) -> dict[str, float]:
    """Metrics of one edited population (log-normalised at 1e4, (n_source, G))."""
    from sccbgm import metrics as M

    zs = task.zspace
    src_z, tgt_z, pred_z = zs(task.floors[NO_EDIT]), zs(task.target_log), zs(pred_log)
    base = mmd_unbiased(src_z, tgt_z, 1 / 50)
    out = {"rmmd_z": mmd_unbiased(pred_z, tgt_z, 1 / 50) / base if base > 0 else float("nan")}
    out["rmmd_pkg"] = M.rmmd(task._pkg_pca(pred_log), task._pkg_target, task._pkg_refs, seed=seed).ratio
    out["mean_dist"] = float(np.linalg.norm(pred_log.mean(0) - task.target_log.mean(0)))
    out["response_share"] = M.response_share(pred_log, task.target_log, task.floors[NO_EDIT])
    if task.truth_log is not None:
        out["cell_mse"] = float(((pred_log - task.truth_log) ** 2).mean())
    if task.true_effects is not None:
        change = pred_log.mean(0) - task.floors[NO_EDIT].mean(0)
        slopes = np.linalg.lstsq(task.true_effects, change, rcond=None)[0]
        out["slope_shared"] = float(slopes[0])
        out["slope_type"] = float(slopes[1]) if slopes.size > 1 else float("nan")
    return out


def _prepare_pkg_space(task: Task, seed: int) -> None:
    from sccbgm import metrics as M

    x_train = lognormalise(dense_rows(task.train.X), TARGET_SUM)
    pca = M.pca_features(x_train, n_components=min(50, x_train.shape[0] - 1, x_train.shape[1]), seed=seed)
    labels = task.train.obs[task.concepts if task.dataset == "kang" else [task.edited_concept, "cell_type"]]
    labels = labels.astype(str).agg("|".join, axis=1).to_numpy()
    tp = pca.transform(x_train)
    task._pkg_pca = pca.transform  # type: ignore[attr-defined]
    task._pkg_target = pca.transform(task.target_log)  # type: ignore[attr-defined]
    task._pkg_refs = {g: tp[labels == g] for g in np.unique(labels) if (labels == g).sum() >= 2}  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- ensemble
def ensemble_edit(models: Sequence[Any], source: Any, set_: Mapping[str, Any], train: Any = None) -> np.ndarray:
    """The default edit of an ensemble made of member 0 of each of ``models`` (fitted on the same
    cells, so they share one input transform), log-normalised at 1e4 (n, G): ``sccbgm.edit`` of
    that ensemble, i.e. the members' log rate ratios averaged and applied once in count space.
    Members fitted with ``groupby``: the ensemble's group calibration is refitted on ``train``."""
    import sccbgm
    from sccbgm.model import Model

    first = models[0]
    for m in models[1:]:
        same = (m.spec.concept_names == first.spec.concept_names
                and np.array_equal(m.transform.components, first.transform.components)
                and np.array_equal(m.transform.mean, first.transform.mean))
        if not same:
            raise SCCBGMError("ensemble members must share their concepts and input transform (same training cells).")
    ensemble = Model(name=first.name, spec=first.spec, transform=first.transform, parts=first.parts,
                     options=first.options, more_members=[m.parts for m in models[1:]])
    if first.group_responses is not None:
        if train is None:
            raise SCCBGMError("members fitted with groupby need the training cells (train=) to calibrate the ensemble.")
        from sccbgm.groups import fit_group_responses

        ensemble.group_responses = fit_group_responses(ensemble, train, first.group_responses.groupby)
    edited = sccbgm.edit(ensemble, source, set=dict(set_))
    return rescale(np.asarray(edited.X, dtype=np.float64), first.transform.target_sum)


SIM_ENSEMBLE_OFFSET = 100
"""Simulator ensembles: members fitted with seeds s and s + 100 on the seed-s data set."""


def _ensemble_row(task: Task, models: Sequence[Any], seed: int) -> dict[str, Any]:
    _prepare_pkg_space(task, seed)
    pred = ensemble_edit(models, task.source, task.set, task.train)
    return {"editor": ENSEMBLE, "kind": "candidate", "dataset": task.dataset, "task": task.name, "seed": seed,
            "n_members": len(models), **score(task, pred, seed)}


# ----------------------------------------------------------------------------- runner
def run_task(task: Task, seed: int, candidates: Sequence[str], fit_extra: Mapping[str, Any],
             log: Callable[[str], None], predictions: dict[str, np.ndarray] | None = None,
             models_dir: Path | None = None, keep: dict[Any, Any] | None = None) -> list[dict[str, Any]]:
    """Score the floors and ``candidates`` on one task at one seed. With ``models_dir``, fitted
    models are saved there and a model already saved for the same task, seed and options is
    loaded instead of refitted (its recorded fit time is reused)."""
    import hashlib

    import sccbgm

    _prepare_pkg_space(task, seed)
    rows = []
    for name, pred in task.floors.items():
        rows.append({"editor": name, "kind": "floor", **score(task, pred, seed)})
    for name, pred in task.references.items():
        rows.append({"editor": name, "kind": "reference", **score(task, pred, seed)})
    fits: dict[str, tuple[Any, float]] = {}
    for cand in candidates:
        fit_opts, edit_opts = CANDIDATES[cand]
        fit_opts = {**fit_extra, **fit_opts}
        if fit_opts.get("model", "sccbgm") == "sccbgm":
            fit_opts = {"groupby": GROUPBY, **{k: v for k, v in fit_opts.items() if not k.startswith("flow_")}}
        key = json.dumps(fit_opts, sort_keys=True)
        path = None
        if models_dir is not None:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            safe = task.name.replace("/", "_").replace(":", "_").replace("+", "p")
            path = models_dir / f"{task.dataset}_{safe}_s{seed}_{digest}.sccbgm"
            if key not in fits and path.is_file():
                model = sccbgm.load(path)
                fits[key] = (model, float(model.options.get("fit_seconds", float("nan"))))
        if key not in fits:
            t0 = time.perf_counter()
            base_opts = {k: v for k, v in fit_opts.items() if k not in ("model",) and not k.startswith("flow_")}
            base_opts["groupby"] = GROUPBY
            base_key = json.dumps(base_opts, sort_keys=True)
            kwargs: dict[str, Any] = dict(fit_opts)
            if fit_opts.get("model") == "sccbgm-fm" and base_key in fits and "representation" not in fit_opts:
                kwargs = {k: v for k, v in fit_opts.items() if k == "model" or k.startswith("flow_")}
                kwargs["base"] = fits[base_key][0]
            extra = [c for c in kwargs.pop("extra_concepts", []) if c not in task.concepts]
            model = sccbgm.fit(task.train, [*task.concepts, *extra], seed=seed, progress=False, **kwargs)
            fits[key] = (model, time.perf_counter() - t0)
            log(f"    fitted {cand!r} in {fits[key][1]:.1f} s")
            if path is not None:
                model.options["fit_seconds"] = fits[key][1]
                sccbgm.save(model, path)
        model, fit_s = fits[key]
        if keep is not None and cand == "default":
            keep[(task.dataset, task.name, seed)] = model
        t0 = time.perf_counter()
        ed_opts = dict(edit_opts)
        if ed_opts.get("count_edit") == "sample":
            ed_opts["seed"] = seed
        edited = sccbgm.edit(model, task.source, set=dict(task.set), **ed_opts)
        pred = rescale(np.asarray(edited.X, dtype=np.float64), model.transform.target_sum)
        row = {"editor": cand, "kind": "candidate", "fit_s": fit_s, "edit_s": time.perf_counter() - t0,
               **score(task, pred, seed)}
        if "vae" in model.parts:
            enc = sccbgm.encode(model, task.train)
            row["leak_acc"] = leakage_accuracy(enc.obsm["X_unknown"],
                                               task.train.obs[task.edited_concept].astype(str).to_numpy(), seed)
        rows.append(row)
        if predictions is not None:
            predictions[f"{task.dataset}|{task.name}|{seed}|{cand}"] = pred.astype(np.float32)
    for r in rows:
        r.update({"dataset": task.dataset, "task": task.name, "seed": seed})
    return rows


def run_validate(
    out: str | Path, *, halves: Sequence[str] = ("choose", "confirm"), candidates: Sequence[str] = DEFAULT_CANDIDATES,
    scale: str = "full", kang: str | Path | None = None, types: Sequence[str] | None = None,
    datasets: Sequence[str] = ("kang", *SIM_VARIANTS), save_predictions: bool = False,
    seeds: Sequence[int] | None = None, models_dir: str | Path | None = None, log: Callable[[str], None] = print,
    n_members: int | None = None,
) -> Path:
    """Run the protocol; writes ``results.csv`` and ``report.md`` to ``out``; returns the report.
    ``n_members``: ensemble size of every fit (None: the preset's, as ``sccbgm.fit``)."""
    bad = [c for c in candidates if c not in CANDIDATES]
    if bad:
        raise SCCBGMError(f"unknown candidate(s) {bad}; available: {list(CANDIDATES)}.")
    bad = [h for h in halves if h not in HALVES]
    if bad:
        raise SCCBGMError(f"unknown half {bad}; choose from {list(HALVES)}.")
    cfg = dict(SCALES[scale])
    if n_members is not None:
        cfg["fit"] = {**cfg["fit"], "n_members": int(n_members)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mdir = None
    if models_dir is not None:
        mdir = Path(models_dir)
        mdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    preds: dict[str, np.ndarray] | None = {} if save_predictions else None
    keep: dict[Any, Any] = {}
    ensemble = "default" in candidates
    kang_tasks_: list[Task] = []
    if "kang" in datasets:
        if kang is None:
            raise SCCBGMError("the Kang tasks need --kang PATH (the shared data folder or its h5ad).")
        adata = load_kang(kang, cfg["n_genes"])
        kang_tasks_ = kang_tasks(adata, types or KANG_TYPES)
    csv = out / "results.csv"
    for half in halves:
        half_seeds = [s for s in HALVES[half]["kang"] if seeds is None or s in seeds]
        for seed in half_seeds:
            for task in kang_tasks_:
                log(f"[{half}] kang {task.name} seed {seed}")
                rows += [dict(r, half=half) for r in run_task(task, seed, candidates, cfg["fit"], log, preds, mdir,
                                                              keep)]
                pd.DataFrame(rows).to_csv(csv, index=False)
        if ensemble and len(half_seeds) > 1:
            for task in kang_tasks_:
                members = [keep[("kang", task.name, s)] for s in half_seeds]
                rows.append(dict(_ensemble_row(task, members, half_seeds[0]), half=half))
        for variant in (d for d in datasets if d in SIM_VARIANTS):
            for seed in (s for s in HALVES[half]["sim"] if seeds is None or s in seeds):
                task = sim_task(variant, seed, cfg["sim_cells"], cfg["sim_genes"])
                log(f"[{half}] {variant} {task.name} seed {seed}")
                rows += [dict(r, half=half) for r in run_task(task, seed, candidates, cfg["fit"], log, preds, mdir,
                                                              keep)]
                if ensemble:
                    second = run_task(task, seed + SIM_ENSEMBLE_OFFSET, ["default"], cfg["fit"], log, None, mdir, keep)
                    del second
                    members = [keep[(variant, task.name, s)] for s in (seed, seed + SIM_ENSEMBLE_OFFSET)]
                    rows.append(dict(_ensemble_row(task, members, seed), half=half))
                pd.DataFrame(rows).to_csv(csv, index=False)
    table = pd.DataFrame(rows)
    table.to_csv(csv, index=False)
    if preds:
        np.savez_compressed(out / "predictions.npz", **preds)
    report = out / "report.md"
    report.write_text(render_report(table))
    log(f"wrote {csv} and {report}")
    return report


# ----------------------------------------------------------------------------- report
def wins(table: pd.DataFrame) -> pd.DataFrame:
    """Per half x dataset x candidate: tasks (mean over seeds) where the candidate beats the
    floors -- Kang: rMMD (z space and package space) vs the other types' mean shift; simulator:
    cell MSE vs the within-type mean shift -- and the number of tasks."""
    per = table.groupby(["half", "dataset", "task", "editor"], as_index=False).mean(numeric_only=True)
    out = []
    for (half, ds), g in per.groupby(["half", "dataset"]):
        floor = g[g.editor == SHIFT_OTHER].set_index("task")
        within = g[g.editor == SHIFT_WITHIN].set_index("task")
        for ed, c in g[~g.editor.isin((*FLOORS, *REFERENCES))].groupby("editor"):
            c = c.set_index("task")
            rec = {"half": half, "dataset": ds, "editor": ed, "n_tasks": len(c)}
            for m in ("rmmd_z", "rmmd_pkg"):
                rec[f"{m} beats other-types shift"] = int((c[m] < floor.loc[c.index, m]).sum())
            if "cell_mse" in c and c["cell_mse"].notna().all():
                rec["cell_mse beats other-types shift"] = int((c["cell_mse"] < floor.loc[c.index, "cell_mse"]).sum())
                rec["cell_mse beats within-type shift"] = int((c["cell_mse"] < within.loc[c.index, "cell_mse"]).sum())
            for m in ("rmmd_z", "rmmd_pkg", "mean_dist", "cell_mse"):
                if m in c:
                    rec[f"mean {m}"] = float(c[m].mean())
            out.append(rec)
    return pd.DataFrame(out)


def render_report(table: pd.DataFrame) -> str:
    from sccbgm.bench.report import markdown_table

    lines = ["# sccbgm bench validate", "",
             "Lower is better, except response_share, slope_shared and slope_type (best near 1). "
             "Per task: mean over the half's seeds. Floors: " + ", ".join(FLOORS) + ". Reference (not an "
             "editor; cell-type-specific simulator variants): " + ORACLE_SHARED + ": what an editor that knows "
             "everything but the held-out type's own effect reaches.", ""]
    cols = [c for c in ("rmmd_z", "rmmd_pkg", "mean_dist", "response_share", "cell_mse", "slope_shared", "slope_type", "leak_acc",
                        "fit_s") if c in table]
    for half in table.half.unique():
        lines += [f"## half: {half}", "", "### wins", ""]
        w = wins(table[table.half == half])
        lines += [markdown_table(w, digits=3), ""]
        per = (table[table.half == half].groupby(["dataset", "task", "editor"], sort=False)[cols]
               .mean().reset_index())
        lines += ["### per task", "", markdown_table(per, digits=3), ""]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="issue-12 validation: Kang leave-one-type-out + 2 simulator variants, "
                       "fixed choose/confirm halves")
    p.add_argument("--quick", action="store_const", const="quick", dest="scale", default="full",
                   help="tiny data and networks (a smoke test)")
    p.add_argument("--kang", default=None, help="shared data folder or the Kang h5ad (needed for the Kang tasks)")
    p.add_argument("--halves", nargs="+", default=["choose", "confirm"], choices=list(HALVES))
    p.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--datasets", nargs="+", default=["kang", *SIM_VARIANTS], choices=["kang", *SIM_VARIANTS])
    p.add_argument("--types", nargs="+", choices=list(KANG_TYPES))
    p.add_argument("--save-predictions", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", help="only these seeds of the chosen halves")
    p.add_argument("--models-dir", help="save fitted models here and reuse those already there")
    p.add_argument("--from-csv", nargs="+", metavar="CSV",
                   help="no fitting: merge these results.csv files (e.g. of runs of each half) into --out/report.md")
    p.add_argument("--n-members", type=int, default=None,
                   help="ensemble size of every fit (default: the preset's, as sccbgm.fit)")
    p.add_argument("--out", default="out/bench/validate")


def main_validate(args: argparse.Namespace) -> None:
    if args.from_csv:
        table = pd.concat([pd.read_csv(f) for f in args.from_csv], ignore_index=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "results.csv", index=False)
        (out / "report.md").write_text(render_report(table))
        print(f"wrote {out / 'report.md'}")
        return
    run_validate(args.out, halves=args.halves, candidates=args.candidates, scale=args.scale, kang=args.kang,
                 types=args.types, datasets=args.datasets, save_predictions=args.save_predictions,
                 seeds=args.seeds, models_dir=args.models_dir, n_members=args.n_members)
