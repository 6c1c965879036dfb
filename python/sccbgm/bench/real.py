"""Held-out tasks on prepared real data (paper Tables 1/2, App. D.2 and D.11).

``sccbgm bench real --data PREPARED.h5ad --tasks TASKS.json`` reads the two files a
``data_scripts/prepare_*.py`` script writes (tasks schema in :mod:`sccbgm.datasets`) and, for
every task and seed:

1. trains every in-package model on the cells *not* matched by ``holdout`` with the concept
   columns of the tasks file (``X`` = log-normalised expression, so every output is in the
   space of the prepared file);
2. edits the ``source`` cells with the concept values in ``set``, each output scored as labelled
   (:data:`EDITORS`): a bare model name is the package's default, residual-preserving output;
   "(decoder output)" is the paper's decoder output (``residual=False``); flow models' "(edit)"
   and "(decode)" are the paper's flow outputs in that mode (``residual=False``: the flow's own
   prediction; in edit mode this equals the residual default up to the inversion round-trip
   error, in decode mode it is the fresh-noise sample the paper scores);
3. runs the peers (biolord, CINEMA-OT, scGen, CPA, CellFlow; :mod:`sccbgm.bench.peers`, each in
   its own environment) on the same training cells and source cells: each is trained on the
   training cells and predicts the ``set`` value of the one binary concept edited, with the
   selector's shared column (e.g. ``cell_type``) as its cell-type covariate;
4. adds the two trivial editors every model must beat: *no edit*, and the *mean shift seen in the
   other groups* (mean(target side) - mean(source side) of the training cells of every other
   group, averaged, clipped at 0; the group is the selector column source and target share,
   e.g. ``cell_type``);
5. scores each editor against the real ``target`` cells, overall and per ``group_key`` value
   (e.g. Kang subtypes), in the space of ``n_eval_pcs`` principal components fitted on the
   training cells:

   * rMMD, rFID, rSD (Eq. 10, 50, 52, 54): D(edited, target) / min_gamma D(p_gamma, target), with
     p_gamma the training populations of every combination of the (categorical / binary /
     few-valued) concept columns; MMD bandwidth and Sinkhorn epsilon from the target;
   * ``mean_dist``: ||mean(edited) - mean(target)||_2 over the log-normalised genes;
   * ``pearson_delta`` / ``pearson_delta_deg``: Pearson correlation over all genes / the top-k DEGs
     of the predicted change mean(edited) - mean(source) with the real one mean(target) -
     mean(source) (NaN for no edit; :func:`sccbgm.metrics.pearson_delta`);
   * ``r2_mean`` / ``r2_mean_deg``: R^2 of mean(edited) vs mean(target) over all genes / the
     top-k DEGs (CPA's metric, :func:`sccbgm.metrics.r2_mean`); ``deg_dir``: fraction of the
     top-k DEGs whose predicted change has the real sign; the DEGs are the ``n_degs`` genes with
     the largest |mean(target) - mean(source)| of the group (:func:`sccbgm.metrics.top_degs`);
   * ``edist``: pertpy's energy distance between edited and target cells on the same PCs
     (:func:`sccbgm.metrics.e_distance`);
   * ``knn_acc`` (D.11, per group only): fraction of edited cells whose subtype a 15-NN classifier
     fitted on the real target cells (e.g. the type's stimulated cells, labelled by subtype)
     predicts as their own.

Writes ``results.csv`` (one row per task x group x editor x seed), ``report.md`` (per task:
subtype-level means, i.e. the mean over the groups as in Table 1, with the verdict against the
floors) and PNGs. Scales: ``quick`` (1 seed, short training; minutes on 2 CPU cores) and
``default`` (3 seeds, the ``cpu`` preset).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.access import dense_rows
from sccbgm.bench.editors import mean_concept_shift, mean_shift_edit, no_edit
from sccbgm.errors import SCCBGMError

NO_EDIT, MEAN_SHIFT = "no edit", "mean shift (other types)"
ALL_GROUPS = "(all)"
METRICS = ("rmmd", "rfid", "rsd", "mean_dist", "r2_mean", "r2_mean_deg", "pearson_delta", "pearson_delta_deg",
           "response_share", "deg_dir", "edist", "knn_acc")
LOWER_IS_BETTER = ("rmmd", "rfid", "rsd", "mean_dist", "edist")
N_DEGS = 20
"""k of the top-k DEGs of the field metrics (CPA's Kang tutorial reports 20)."""

# label -> (model key of sccbgm.fit, edit keyword arguments, always with an explicit `residual`
# so that a row is the output its label names); flows and CVAE-FM reuse the fitted scCBGM / CVAE
# of the same task and seed as their base.
EDITORS: dict[str, tuple[str, dict[str, Any]]] = {
    "scCBGM": ("sccbgm", {"residual": True}),
    "scCBGM (decoder output)": ("sccbgm", {"residual": False}),
    "scCBGM-FM (edit)": ("sccbgm-fm", {"mode": "edit", "residual": False}),
    "scCBGM-FM (decode)": ("sccbgm-fm", {"mode": "decode", "residual": False}),
    "vanilla-FM (edit)": ("vanilla-fm", {"mode": "edit", "residual": False}),
    "vanilla-FM (decode)": ("vanilla-fm", {"mode": "decode", "residual": False}),
    "CVAE": ("cvae", {"residual": True}),
    "CVAE-FM (edit)": ("cvae-fm", {"mode": "edit", "residual": False}),
    "CVAE-FM (decode)": ("cvae-fm", {"mode": "decode", "residual": False}),
    "CBGM": ("cbgm", {"residual": True}),
}
MODEL_KEYS = ("sccbgm", "sccbgm-fm", "vanilla-fm", "cvae", "cvae-fm", "cbgm")

SCALES: dict[str, dict[str, Any]] = {
    # quick: one seed and short training (a smoke run of the whole protocol on 2 CPU cores);
    # default: the "cpu" preset, three seeds (the numbers in the README).
    # peer_epochs: the peers' epochs (None: each one's own default / tutorial value).
    "quick": {"seeds": [0], "fit": {"epochs": 30}, "flow": {"flow_epochs": 40}, "peer_epochs": 30},
    "default": {"seeds": [0, 1, 2], "fit": {}, "flow": {}, "peer_epochs": None},
}


def _concept_columns(spec: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in spec["concepts"]]


def _selector_parts(task: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(shared, source-only, target-only) parts of the source / target selectors: ``shared`` are
    the columns with the same value in both (the group, e.g. ``cell_type``), the others say which
    side of the edit a cell is on (e.g. ``condition``)."""
    src, tgt = dict(task["source"]), dict(task["target"])
    shared = {k: v for k, v in src.items() if k in tgt and tgt[k] == v}
    return shared, {k: v for k, v in src.items() if k not in shared}, {k: v for k, v in tgt.items() if k not in shared}


def reference_labels(obs: pd.DataFrame, concepts: Sequence[str], max_values: int = 20) -> pd.Series:
    """Population label of each cell for the ratio denominators: the combination of the concept
    columns that have at most ``max_values`` distinct values (continuous pathway scores do not
    define populations)."""
    cols = [c for c in concepts if obs[c].nunique(dropna=True) <= max_values]
    if not cols:
        raise SCCBGMError(f"no concept column with <= {max_values} values to define reference populations.")
    return obs[cols].astype(str).agg("|".join, axis=1)


class _Scorer:
    """Distribution metrics of many editors against one target population: the reference
    denominators (min over training populations) are computed once."""

    def __init__(self, target: np.ndarray, references: Mapping[str, np.ndarray], seed: int) -> None:
        from sccbgm import metrics as M

        self.M, self.target, self.seed = M, target, seed
        self.bandwidth = M.median_bandwidth(target, seed=seed) or 1.0
        self.epsilon = M.sinkhorn_epsilon(target) or 1.0
        self.denominators = {}
        for name in ("mmd", "fid", "sd"):
            values = {g: self.distance(name, x) for g, x in references.items() if len(x) >= 2}
            closest = min(values, key=values.__getitem__)
            self.denominators[name] = (values[closest], closest)

    def distance(self, name: str, x: np.ndarray) -> float:
        M = self.M
        if name == "mmd":
            return M.mmd(x, self.target, bandwidth=self.bandwidth, seed=self.seed)
        if name == "fid":
            return M.frechet_distance(x, self.target)
        return M.sinkhorn_divergence(x, self.target, epsilon=self.epsilon, seed=self.seed)

    def ratios(self, x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (den, closest) in self.denominators.items():
            num = self.distance(name, x)
            out[name] = num
            out[f"r{name}"] = num / den if den > 0 else float("nan")
            out[f"closest_{name}"] = closest
        return out


class _PeerTask:
    """A ``run_task`` split in the form :func:`sccbgm.bench.peers.run_peer` reads: training cells
    without the source cells (``train``), the source cells (``intervene``, also training cells),
    ``cell_type`` = the selector's shared group, the one binary concept edited."""

    def __init__(self, train: Any, source: Any, x_train: np.ndarray, x_src: np.ndarray, concept: str, group: pd.Series,
                 src_group: pd.Series, held_out: str, seed: int) -> None:
        from types import SimpleNamespace

        keep = ~train.obs_names.isin(source.obs_names)
        self.train, self.intervene = train[keep].copy(), source.copy()
        self.train.obs["cell_type"] = group.to_numpy()[keep]
        self.intervene.obs["cell_type"] = src_group.to_numpy()
        for a in (self.train, self.intervene):
            a.obs[concept] = a.obs[concept].astype(float).round().astype(int)
        self.x_train, self.x_intervene = x_train[keep], x_src
        self.concepts = [concept]
        self.task = SimpleNamespace(concept=concept, cell_type=held_out)
        self.seed = seed


def _peer_task(train: Any, source: Any, x_train: np.ndarray, x_src: np.ndarray, task: Mapping[str, Any],
               seed: int) -> tuple[_PeerTask | None, str]:
    """(peer split, "") or (None, why the peers cannot run this task)."""
    set_ = dict(task["set"])
    shared, _, _ = _selector_parts(task)
    if len(set_) != 1 or not shared:
        return None, "peers need one edited concept and a shared group (e.g. cell_type) in the selectors"
    concept, value = next(iter(set_.items()))
    values = set(pd.unique(train.obs[concept].dropna()))
    if not values <= {0, 1} or value != 1 or set(pd.unique(source.obs[concept])) != {0}:
        return None, f"peers edit a binary concept 0 -> 1; {concept}={value} from {sorted(values)[:5]} is not one"
    cols = list(shared)
    group = train.obs[cols].astype(str).agg("|".join, axis=1)
    src_group = source.obs[cols].astype(str).agg("|".join, axis=1)
    held_out = "|".join(str(shared[c]) for c in cols)
    return _PeerTask(train, source, x_train, x_src, concept, group, src_group, held_out, seed), ""


def _fit_kwargs(key: str, fit: Mapping[str, Any], flow: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """The options of ``fit`` / ``flow`` that apply to model ``key`` (concept-loss weights and the
    unknown width do not exist in the CVAE; a flow on a fitted base takes flow options only)."""
    from sccbgm.fitting import CVAE_OPTIONS, MODULE_OPTIONS

    if key == "vanilla-fm" or (key.endswith("-fm") and base is not None):
        return dict(flow)
    if key.startswith("cvae"):
        fit = {k: v for k, v in fit.items() if k in CVAE_OPTIONS or k not in MODULE_OPTIONS}
    return {**fit, **flow} if key.endswith("-fm") else dict(fit)


def fit_models(
    train: Any, concepts: Sequence[str], keys: Sequence[str], *, seed: int, fit: Mapping[str, Any],
    flow: Mapping[str, Any], preset: str = "cpu", log: Callable[[str], None] = print,
    counts_layer: str | None = None, groupby: str | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the models ``keys`` on ``train`` (log-normalised X, or the raw counts in
    ``counts_layer``); FM models reuse the scCBGM / CVAE. ``groupby``: passed to the scCBGM's fit
    only (its group calibration, :mod:`sccbgm.groups`; needs ``counts_layer``)."""
    import sccbgm

    data = {"input_kind": "lognorm"} if counts_layer is None else {"input_kind": "counts", "layer": counts_layer}

    order = [k for k in MODEL_KEYS if k in keys]
    models: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for key in order:
        base_key = {"sccbgm-fm": "sccbgm", "cvae-fm": "cvae"}.get(key)
        base = models.get(base_key) if base_key else None
        kwargs = _fit_kwargs(key, fit, flow, base)
        if key == "sccbgm" and groupby is not None:
            kwargs["groupby"] = groupby
        t0 = time.perf_counter()
        models[key] = sccbgm.fit(
            train, list(concepts), model=key, base=base, seed=seed, preset=preset, progress=False, **data, **kwargs,
        )
        seconds[key] = time.perf_counter() - t0
        log(f"    fitted {key} in {seconds[key]:.1f} s")
    return models, seconds


def edit_all(
    models: Mapping[str, Any], source: Any, set_: Mapping[str, Any], editors: Sequence[str], seed: int,
    counts_layer: str | None = None, target_sum: float | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Edited log-normalised expression (n_source, G) of every editor whose model is fitted. Models
    fitted on the counts in ``counts_layer`` edit those counts (their default edit), and their
    output is rescaled from the model's library size to ``target_sum``, that of X (a number, or
    (n_source,) one per source cell)."""
    import sccbgm
    from sccbgm.access import rescale

    out = {}
    for label in editors:
        key, kw = EDITORS[label]
        if key not in models:
            continue
        kw = dict(kw)
        if kw.get("mode") == "decode":
            kw["seed"] = seed
        edited = sccbgm.edit(models[key], source, set=dict(set_), layer=counts_layer, **kw)
        x = np.asarray(edited.X, dtype=np.float64)
        if counts_layer is not None:
            x = rescale(x, models[key].transform.target_sum, target_sum)
        out[label] = x
    return out


def run_task(
    adata: Any,
    spec: Mapping[str, Any],
    task: Mapping[str, Any],
    *,
    seed: int = 0,
    models: Sequence[str] = MODEL_KEYS,
    editors: Sequence[str] | None = None,
    fit: Mapping[str, Any] | None = None,
    flow: Mapping[str, Any] | None = None,
    preset: str = "cpu",
    n_eval_pcs: int = 50,
    knn_k: int = 15,
    n_degs: int = N_DEGS,
    peers: Sequence[str] = (),
    peers_venv: str | Path | None = None,
    install_peers: bool = True,
    peer_epochs: int | None = None,
    log: Callable[[str], None] = print,
    counts_layer: str | None = None,
    groupby: str | None = None,
) -> dict[str, Any]:
    """One task at one seed: returns ``{"table": DataFrame, "predictions", "source", "target",
    "train_pcs", "pca", "models", "peer_status"}`` (see the module docstring for the protocol
    and columns); ``peer_status`` maps each peer's label to what it did or why it did not run.
    ``counts_layer``: a layer of ``adata`` with the raw counts X was log-normalised from; the
    in-package models are then fitted on those counts and edited with their default edit (for
    scCBGM: in count space, with its ensemble and any group calibration), scored in X's space,
    each edited cell with its source cell's size factor of X (X normalised over these genes gives
    every cell the same one; :func:`run_real` makes it so). ``groupby``: an obs column the scCBGM
    is fitted with (:func:`fit_models`)."""
    from sccbgm import metrics as M
    from sccbgm.access import match_obs

    concepts = _concept_columns(spec)
    editors = list(editors if editors is not None else EDITORS)
    unknown = [e for e in editors if e not in EDITORS]
    if unknown:
        raise SCCBGMError(f"unknown editor(s) {unknown}; available: {list(EDITORS)}.")
    obs = adata.obs
    holdout = match_obs(obs, task["holdout"])
    src_mask, tgt_mask = match_obs(obs, task["source"]), match_obs(obs, task["target"])
    if (src_mask & holdout).any():
        raise SCCBGMError(f"task {task['name']!r}: source cells must stay in the training data.")
    train = adata[~holdout].copy()
    source = adata[src_mask].copy()
    x_train, x_src, x_tgt = dense_rows(train.X), dense_rows(source.X), dense_rows(adata[tgt_mask].X)

    preds: dict[str, np.ndarray] = {NO_EDIT: no_edit(x_src).astype(np.float64)}
    shared, src_side, tgt_side = _selector_parts(task)
    side = np.full(train.n_obs, "other", dtype=object)
    if src_side and tgt_side:
        side[match_obs(train.obs, src_side)] = "source"
        side[match_obs(train.obs, tgt_side)] = "target"
    if shared and src_side:
        group_cols = list(shared)
        group = train.obs[group_cols].astype(str).agg("|".join, axis=1)
        frame = pd.DataFrame({"side": side, "group": group.to_numpy()}, index=train.obs_names)
        own = "|".join(str(shared[c]) for c in group_cols)
        try:
            shift = mean_concept_shift(x_train, frame, concept="side", source="source", target="target",
                                       group_key="group", exclude_group=own)
            preds[MEAN_SHIFT] = mean_shift_edit(x_src, shift).astype(np.float64)
        except SCCBGMError as err:
            log(f"    mean-shift floor unavailable: {err}")
    keys = sorted({EDITORS[e][0] for e in editors} & set(models), key=MODEL_KEYS.index)
    if "sccbgm-fm" in keys and "sccbgm" not in keys:
        keys.insert(0, "sccbgm")
    if "cvae-fm" in keys and "cvae" not in keys:
        keys.insert(0, "cvae")
    fitted, seconds = fit_models(train, concepts, keys, seed=seed, fit=fit or {}, flow=flow or {},
                                 preset=preset, log=log, counts_layer=counts_layer, groupby=groupby)
    target_sum = None
    if counts_layer is not None:
        # each source cell's library size in X: its expm1(X) row sum. An edited cell keeps its factual
        # cell's size factor of X, which holds also where X was normalised over more genes than it keeps
        # (the prepared files: normalised, then cut to the variable genes)
        target_sum = np.expm1(x_src).sum(axis=1)
    preds.update(edit_all(fitted, source, task["set"], [e for e in editors if EDITORS[e][0] in models], seed,
                          counts_layer=counts_layer, target_sum=target_sum))
    peer_status: dict[str, str] = {}
    if peers:
        from sccbgm.bench import peers as peer_mod

        ptask, why = _peer_task(train, source, x_train, x_src, task, seed)
        for peer in peers:
            label = peer_mod.LABELS[peer]
            if ptask is None:
                peer_status[label] = f"not run: {why}"
                continue
            res = peer_mod.run_peer(peer, ptask, root=peers_venv, epochs=peer_epochs, install=install_peers,
                                    intervene_in_train=True, log=log)
            peer_status[label] = res.status
            if res.prediction is None:
                log(f"    {label}: not run ({res.status})")
                continue
            preds[label] = res.prediction
            seconds[label] = res.seconds

    pca = M.pca_features(x_train, n_components=min(n_eval_pcs, x_train.shape[0] - 1, x_train.shape[1]), seed=seed)
    train_pcs = pca.transform(x_train)
    ref_labels = reference_labels(train.obs, concepts).to_numpy()
    references = {g: train_pcs[ref_labels == g] for g in np.unique(ref_labels)}
    pred_pcs = {label: pca.transform(x) for label, x in preds.items()}
    tgt_pcs = pca.transform(x_tgt)

    group_key = task.get("group_key")
    groups: list[tuple[str, np.ndarray, np.ndarray]] = [(ALL_GROUPS, np.ones(len(x_src), bool), np.ones(len(x_tgt), bool))]
    knn = None
    if group_key:
        src_groups = source.obs[group_key].astype(str).to_numpy()
        tgt_groups = obs.loc[tgt_mask, group_key].astype(str).to_numpy()
        for g in task.get("groups") or []:
            groups.append((g, src_groups == g, tgt_groups == g))
        knn = (tgt_pcs, tgt_groups, src_groups)

    rows = []
    for g, s_in, t_in in groups:
        if s_in.sum() < 2 or t_in.sum() < 2:
            continue
        scorer = _Scorer(tgt_pcs[t_in], references, seed)
        tgt_mean = x_tgt[t_in].mean(0)
        x_s, x_t = x_src[s_in], x_tgt[t_in]
        degs = M.top_degs(x_s, x_t, n_degs)
        for label, x in preds.items():
            edited_mean = x[s_in].mean(0)
            row = {"task": task["name"], "group": g, "editor": label, "seed": seed,
                   "n_source": int(s_in.sum()), "n_target": int(t_in.sum())}
            row.update(scorer.ratios(pred_pcs[label][s_in]))
            row["mean_dist"] = float(np.linalg.norm(edited_mean - tgt_mean))
            row["r2_mean"] = M.r2_mean(x[s_in], x_t)
            row["r2_mean_deg"] = M.r2_mean(x[s_in], x_t, genes=degs)
            row["pearson_delta"] = M.pearson_delta(x[s_in], x_t, x_s)
            row["pearson_delta_deg"] = M.pearson_delta(x[s_in], x_t, x_s, genes=degs)
            row["response_share"] = M.response_share(x[s_in], x_t, x_s)
            row["deg_dir"] = M.deg_direction_accuracy(x[s_in], x_t, x_s, genes=degs)
            row["edist"] = M.e_distance(pred_pcs[label][s_in], tgt_pcs[t_in])
            row["knn_acc"] = (M.knn_subtype_accuracy(pred_pcs[label][s_in], knn[0], knn[1], knn[2][s_in], k=knn_k)
                              if knn is not None and g != ALL_GROUPS else float("nan"))
            key = EDITORS.get(label, (label,))[0]
            row["fit_seconds"] = seconds.get(key, 0.0)
            row["trivial"] = label in (NO_EDIT, MEAN_SHIFT)
            row["peer"] = label in peer_status
            rows.append(row)
    return {"table": pd.DataFrame(rows), "predictions": preds, "source": x_src, "target": x_tgt,
            "train_pcs": train_pcs, "pca": pca, "models": fitted, "peer_status": peer_status}


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per task, editor and seed: the mean over the groups (subtype level, as Table 1) when the
    task has groups, else the whole-population row."""
    has_groups = table.groupby("task")["group"].transform(lambda g: (g != ALL_GROUPS).any())
    level = table[(table["group"] != ALL_GROUPS) | ~has_groups]
    cols = [c for c in METRICS if c in level]
    return level.groupby(["task", "editor", "seed"], sort=False)[cols].mean().reset_index()


PEER_NOTES = {
    "CellFlow": "population prediction: CellFlow transports the control population (OT flow), so its "
                "cells are a sample of the predicted population, not per-cell counterfactuals; scored "
                "as the population it produces (the per-cell kNN subtype accuracy is not meaningful)",
    "CINEMA-OT": "counterfactual = the OT match among the stimulated cells of the training data",
    "CPA": "Gaussian loss on log-normalised values (its Kang tutorial: NB on counts)",
}


def _group_sizes(rows: pd.DataFrame) -> str:
    """``"g (n_source / n_target), ..."`` of a task's scored groups (one seed's rows), or ``""``
    without groups."""
    first = rows[rows["seed"] == rows["seed"].iloc[0]].drop_duplicates("group")
    first = first[first["group"] != ALL_GROUPS]
    return ", ".join(f"{g} ({s} / {t})" for g, s, t in
                     zip(first["group"], first["n_source"], first["n_target"], strict=True))


def write_report(table: pd.DataFrame, out: Path, *, title: str, notes: Sequence[str] = (),
                 last: Mapping[str, Any] | None = None, peer_status: Mapping[str, Sequence[str]] | None = None) -> Path:
    """``report.md`` + ``summary.csv`` + PNGs for a results table of :func:`run_task` rows."""
    from sccbgm.bench import report

    per_seed = summarise(table)
    per_seed.to_csv(out / "summary.csv", index=False)
    lines = [f"# {title}", "", *notes, ""]
    for task, sub in per_seed.groupby("task", sort=False):
        shown = report.mean_sem(sub, ["editor"], [c for c in METRICS if sub[c].notna().any()])
        mean = sub.groupby("editor", sort=False)[list(METRICS)].mean().reset_index()
        lines += [f"## {task}", "", report.markdown_table(shown), ""]
        sizes = _group_sizes(table[table["task"] == task])
        if sizes:
            lines += [f"Groups (source / target cells): {sizes}. The group-level rows depend on these "
                      "labels; compare runs only on identical groups.", ""]
        models = [e for e in mean["editor"] if e not in report.TRIVIAL]
        for metric in ("rmmd", "mean_dist"):
            means = dict(zip(mean["editor"], mean[metric], strict=True))
            lines.append(f"- {report.floor_statement(means, models, metric=metric)}")
        lines.append("")
    if peer_status:
        lines += ["## Peers", ""]
        for label, statuses in peer_status.items():
            ran = [st for st in statuses if st.startswith("ran")]
            state = f"ran on {len(ran)}/{len(statuses)} task-seeds" if ran else "did not run"
            why = "" if len(ran) == len(statuses) else f" ({next(st for st in statuses if not st.startswith('ran'))})"
            extra = f"; {PEER_NOTES[label]}" if label in PEER_NOTES and ran else ""
            detail = f" [{ran[0][len('ran: '):]}]" if ran else ""
            lines.append(f"- **{label}**: {state}{why}{detail}{extra}.")
        lines.append("")
    report.plot_errors(per_seed, out / "ratios.png", metrics=("rmmd", "rfid", "rsd"))
    lines += ["![ratio metrics, mean over tasks](ratios.png)", ""]
    if last is not None:
        pred = {k: v for k, v in last["predictions"].items() if k in (NO_EDIT, MEAN_SHIFT, "scCBGM", "scCBGM-FM (edit)")}
        report.plot_embedding(last["train_pcs"], last["source"], last["target"], pred, last["pca"], out / "embedding.png")
        lines += [f"![edited cells of {last['task']} on the first two PCs](embedding.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_real(
    data: str | Path,
    tasks: str | Path,
    out: str | Path,
    *,
    scale: str = "default",
    seeds: Sequence[int] | None = None,
    task_names: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    editors: Sequence[str] | None = None,
    fit: Mapping[str, Any] | None = None,
    flow: Mapping[str, Any] | None = None,
    preset: str = "cpu",
    n_eval_pcs: int = 50,
    peers: Sequence[str] | None = None,
    peers_venv: str | Path | None = None,
    install_peers: bool = True,
    log: Callable[[str], None] = print,
    counts_layer: str | None = None,
    groupby: str | None = None,
) -> Path:
    """Run the benchmark on a prepared ``data`` h5ad and its ``tasks`` JSON; returns report.md.

    ``peers``: among :data:`sccbgm.bench.peers.PEERS` (None: all; ``[]``: none), each in its own
    environment under ``peers_venv``, built on first use unless ``install_peers`` is False.
    ``counts_layer``: fit the in-package models on the raw counts of this layer (the prepared
    files keep them in ``"counts"``) and score their default edit -- for scCBGM the count-space
    edit a user of raw counts gets; every row, floors and peers included, is then scored in the
    counts' own log-normalisation over the file's genes (log1p of counts / total x the median
    total), which replaces X (a prepared X was normalised over all genes before the variable
    ones were kept, a space a model of the kept counts does not edit in); None (default): fit on
    X, as the README's tables. ``groupby``: an obs column the scCBGM is fitted with (the
    validated default fits with the cell types; needs ``counts_layer``)."""
    import anndata as ad

    from sccbgm.bench.peers import PEERS
    from sccbgm.datasets import load_tasks, validate_tasks

    if scale not in SCALES:
        raise SCCBGMError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}.")
    data, out = Path(data), Path(out)
    if not data.is_file():
        raise SCCBGMError(f"--data {data}: no such file.")
    spec = load_tasks(tasks)
    adata = ad.read_h5ad(data)
    validate_tasks(spec, adata.obs)
    if counts_layer is not None and counts_layer not in adata.layers:
        raise SCCBGMError(f"--counts-layer {counts_layer!r}: {data.name} has no such layer "
                          f"(layers: {sorted(adata.layers) or 'none'}).")
    if groupby is not None:
        if counts_layer is None:
            raise SCCBGMError("--groupby calibrates the scCBGM's count-space edit; pass --counts-layer too.")
        from sccbgm.groups import check_groupby

        check_groupby(groupby, adata.obs, "sccbgm", "counts")  # before any fit
    if counts_layer is not None:
        # one space for every row, floors and peers included: the counts' own log-normalisation over the
        # file's genes, where a model fitted on them edits (a prepared X was normalised over all genes first)
        from sccbgm.access import lognormalise

        adata.X = lognormalise(adata.layers[counts_layer]).astype(np.float32)
    models = list(models or MODEL_KEYS)
    bad = [m for m in models if m not in MODEL_KEYS]
    if bad:
        raise SCCBGMError(f"unknown model(s) {bad}; available: {list(MODEL_KEYS)}.")
    chosen = spec["tasks"]
    if task_names:
        names = [t["name"] for t in chosen]
        missing = [n for n in task_names if n not in names]
        if missing:
            raise SCCBGMError(f"task(s) {missing} not in {tasks}; tasks: {names}.")
        chosen = [t for t in chosen if t["name"] in task_names]
    cfg = SCALES[scale]
    fit_opts = {**cfg["fit"], **(fit or {})}
    flow_opts = {**cfg["flow"], **(flow or {})}
    out.mkdir(parents=True, exist_ok=True)
    peer_names = list(PEERS if peers is None else peers)
    bad = [p for p in peer_names if p not in PEERS]
    if bad:
        raise SCCBGMError(f"unknown peer(s) {bad}; available: {list(PEERS)}.")
    frames, last = [], None
    peer_status: dict[str, list[str]] = {}
    for task in chosen:
        for seed in seeds if seeds is not None else cfg["seeds"]:
            log(f"{task['name']}: seed {seed}")
            res = run_task(adata, spec, task, seed=seed, models=models, editors=editors, fit=fit_opts,
                           flow=flow_opts, preset=preset, n_eval_pcs=n_eval_pcs, peers=peer_names,
                           peers_venv=peers_venv, install_peers=install_peers, peer_epochs=cfg["peer_epochs"],
                           log=log, counts_layer=counts_layer, groupby=groupby)
            frames.append(res["table"])
            for label, status in res["peer_status"].items():
                peer_status.setdefault(label, []).append(status)
            last = {**res, "task": task["name"]}
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "results.csv", index=False)
    notes = [
        f"Data: `{data.name}` ({adata.n_obs} cells x {adata.n_vars} genes), tasks `{Path(tasks).name}` "
        f"({spec['dataset']}); scale `{scale}`, preset `{preset}`, fit options {fit_opts or 'preset'}, "
        f"flow options {flow_opts or 'preset'}.",
        "In-package models fitted on "
        + (f"the raw counts of `layers[{counts_layer!r}]` and scored with their default edit (scCBGM: in "
           "count space); every row, floors included, is scored in those counts' own log-normalisation "
           "over the file's genes (to their median total), not in the file's X" if counts_layer is not None
           else "X (log-normalised; scCBGM's default there is the additive, residual-preserving edit)")
        + (f"; scCBGM fitted with `groupby={groupby!r}`." if groupby is not None else "."),
        "Each task: train on every cell not held out, edit the source cells, compare with the real "
        f"held-out target cells on {n_eval_pcs} PCs of the training cells. rMMD / rFID / rSD < 1: closer "
        "to the target than the closest training population. Rows are means (± s.e.m. over seeds) "
        "of the per-group (subtype) values. The first two editors are the floors every model must beat.",
        f"Field metrics on the log-normalised genes: R^2 of the mean (`r2_mean`, all genes; `r2_mean_deg`, top "
        f"{N_DEGS} DEGs = largest |mean(target) - mean(source)|), Pearson correlation of the predicted and real "
        "change from the source cells (`pearson_delta`, `pearson_delta_deg`), fraction of the top DEGs moved in the "
        "right direction (`deg_dir`), and pertpy's energy distance on the PCs (`edist`, lower is better).",
        "Peers: " + (", ".join(peer_names) if peer_names else "none (`--peers none`)") + "; epochs "
        + (f"{cfg['peer_epochs']} (shortened; CellFlow {cfg['peer_epochs']} x 20 iterations at 1/8 of its "
              "tutorial's widths, batches of 256)"
           if cfg["peer_epochs"] else "each peer's own default / tutorial value") + ".",
    ]
    path = write_report(table, out, title=f"sccbgm real-data benchmark: {spec['dataset']}", notes=notes, last=last,
                        peer_status=peer_status)
    log(f"wrote {path}")
    return path


def add_parser(sub: Any) -> Any:
    """The ``real`` sub-command of ``sccbgm bench``."""
    p = sub.add_parser("real", help="held-out tasks on prepared real data (Tables 1/2) vs trivial editors")
    p.add_argument("--data", required=True, help="prepared h5ad (data_scripts/prepare_*.py)")
    p.add_argument("--tasks", required=True, help="its tasks JSON")
    p.add_argument("--out", default="out/bench-real", help="output folder (report.md, results.csv, PNGs)")
    p.add_argument("--quick", action="store_const", const="quick", dest="scale", help="one seed, short training")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--task", dest="task_names", nargs="+", help="only these tasks (names in the JSON)")
    p.add_argument("--models", nargs="+", choices=MODEL_KEYS, help="only these models (floors always run)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--epochs", type=int, help="training epochs of the autoencoders")
    p.add_argument("--flow-epochs", type=int, help="training epochs of the flows")
    p.add_argument("--concept-weight", type=float, help="lambda_c of scCBGM / CBGM")
    p.add_argument("--cross-cov-weight", type=float, help="lambda_cc of scCBGM / CBGM (orthogonality loss)")
    p.add_argument("--eval-pcs", type=int, default=50, help="principal components of the metrics (default 50)")
    p.add_argument("--counts-layer", help="fit the in-package models on the raw counts of this layer (prepared files: "
                   "counts) and score their default edit (scCBGM: count space); default: fit on X")
    p.add_argument("--groupby", help="obs column the scCBGM is fitted with (e.g. cell_type; needs --counts-layer)")
    return p


def main_real(args: Any, **peer_kwargs: Any) -> Path:
    """Run ``sccbgm bench real`` from parsed arguments (``peer_kwargs``: peers, peers_venv,
    install_peers)."""
    fit: dict[str, Any] = {}
    if args.epochs is not None:
        fit["epochs"] = args.epochs
    flow = {"flow_epochs": args.flow_epochs} if args.flow_epochs is not None else {}
    if args.concept_weight is not None:
        fit["concept_weight"] = args.concept_weight
    if args.cross_cov_weight is not None:
        fit["cross_cov_weight"] = args.cross_cov_weight
    models = args.models
    return run_real(args.data, args.tasks, args.out, scale=args.scale or "default", seeds=args.seeds,
                    task_names=args.task_names, models=models, fit=fit, flow=flow, preset=args.preset,
                    n_eval_pcs=args.eval_pcs, counts_layer=args.counts_layer, groupby=args.groupby, **peer_kwargs)
