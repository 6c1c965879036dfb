"""Intervention tasks on simulated data, scored cell by cell against true counterfactuals.

Protocol (paper C.6 / Table S5): hold out one (cell type u, concept k = 1) population, train on
the rest, edit the held-out type-u cells with k = 0 to k = 1, compare with their exact
counterfactuals. Everything is scored on log-normalised expression (library size normalised to
the training median, log1p): cell-level MSE in gene space and in the space of a 50-component PCA
fitted on the training cells (the paper's Table S5 space), and rMMD of the edited population
against the true one, with the training populations (cell type x concept k) as the reference
populations of the denominator. The field's population metrics of ``bench real`` are reported
too, with the cells to edit as control and the true counterfactuals as the real population:
``r2_mean`` / ``r2_mean_deg`` (R^2 of the gene means, all genes / top-20 DEGs of the true change), ``pearson_delta``
/ ``pearson_delta_deg`` (PCC of the predicted and true change), ``deg_dir`` (DEG direction
accuracy) and ``edist`` (energy distance on the eval PCs).

Building blocks shared by every suite: :func:`prepare_task` (split + scoring context),
:func:`trivial_predictions` (the two floors), :class:`ModelRun` / :func:`run_models` (fit package
models, several edit outputs per fitted model, flow models reusing a fitted base) and
:func:`score`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.access import lognormalise
from sccbgm.bench.editors import mean_concept_shift, mean_shift_edit, no_edit
from sccbgm.bench.report import MEAN_SHIFT, NO_EDIT, TRIVIAL


@dataclass
class TaskResult:
    """Scores of each editor (a tidy table) plus what a report needs to draw pictures."""

    table: pd.DataFrame
    models: dict[str, Any]
    predictions: dict[str, np.ndarray]
    truth: np.ndarray
    factual: np.ndarray
    train_pca: np.ndarray
    pca: Any


@dataclass
class TaskData:
    """One C.6 split and everything needed to score edits of its held-out cells.

    ``x_train`` (n_train, G), ``x_intervene`` / ``truth`` (n, G): log-normalised expression
    (target sum = median training total); ``pca``: eval PCA fitted on ``x_train``;
    ``references``: training populations (cell type | concept value) in PCA space for rMMD.
    """

    task: Any
    train: Any
    intervene: Any
    concepts: list[str]
    target_sum: float
    x_train: np.ndarray
    x_intervene: np.ndarray
    truth: np.ndarray
    pca: Any
    train_pcs: np.ndarray
    truth_pcs: np.ndarray
    references: dict[str, np.ndarray]
    seed: int
    degs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))


def concept_columns(adata: Any) -> list[str]:
    """The simulated concept columns ``concept_*`` of ``adata.obs``."""
    return [c for c in adata.obs.columns if str(c).startswith("concept_")]


def prepare_task(
    adata: Any, task: Any, *, seed: int = 0, concepts: Sequence[str] | None = None, n_pcs_eval: int = 50
) -> TaskData:
    """Split ``adata`` for ``task`` (C.6, halving seeded by ``seed``) and set up the scoring."""
    from sccbgm import metrics
    from sccbgm.simulation import intervention_split

    split = intervention_split(adata, task, seed=seed)
    train, intervene, test = split.train, split.intervene, split.test
    target_sum = float(np.median(np.asarray(train.X.sum(1)).ravel()))
    x_train = lognormalise(train.X, target_sum)
    x_int = lognormalise(intervene.X, target_sum)
    truth = lognormalise(test.X, target_sum)
    pca = metrics.pca_features(x_train, n_components=min(n_pcs_eval, x_train.shape[1] - 1), seed=seed)
    train_pcs = pca.transform(x_train)
    groups = train.obs["cell_type"].astype(str) + "|" + task.concept + "=" + train.obs[task.concept].astype(str)
    references = {g: train_pcs[(groups == g).to_numpy()] for g in groups.unique()}
    return TaskData(
        task=task, train=train, intervene=intervene,
        concepts=list(concepts) if concepts is not None else concept_columns(adata),
        target_sum=target_sum, x_train=x_train, x_intervene=x_int, truth=truth, pca=pca,
        train_pcs=train_pcs, truth_pcs=pca.transform(truth), references=references, seed=seed,
        degs=metrics.top_degs(x_int, truth, min(metrics.DEFAULT_N_DEGS, x_int.shape[1])),
    )


def expected_counterfactual(td: TaskData, *, n_draws: int = 20) -> np.ndarray:
    """E[log-normalised counterfactual | every simulated term but the cell's Poisson draw], (n, G).

    Monte Carlo over ``n_draws`` fresh Poisson draws of the true counterfactual rates (Eq. 43,
    eps included). The exact counterfactual keeps each cell's own Poisson draw (the one of its
    factual counts), so this is the best an editor can do that regenerates cells instead of
    editing them (decoders, barycentres): its cell-level MSE is the irreducible sampling noise.
    """
    from sccbgm.simulation import true_log_rate

    rate = np.exp(true_log_rate(td.intervene, set={td.task.concept: 1}))
    rng = np.random.default_rng(td.seed)
    return np.mean([lognormalise(rng.poisson(rate), td.target_sum) for _ in range(n_draws)], axis=0)


def trivial_predictions(td: TaskData) -> dict[str, np.ndarray]:
    """The two floors: no edit, and the mean concept shift of the other cell types."""
    shift = mean_concept_shift(
        td.x_train, td.train.obs, concept=td.task.concept, source=0, target=1,
        group_key="cell_type", exclude_group=td.task.cell_type,
    )
    return {NO_EDIT: no_edit(td.x_intervene), MEAN_SHIFT: mean_shift_edit(td.x_intervene, shift)}


def score(td: TaskData, label: str, predicted: np.ndarray, *, seconds: float = 0.0, rmmd: bool = True) -> dict[str, Any]:
    """One row: cell-level MSE in gene and eval-PCA space, rMMD (and its parts) and the field's
    population metrics (see the module docstring) of ``predicted`` (n, G) log-normalised
    expression against the true counterfactuals."""
    from sccbgm import metrics

    x = np.asarray(predicted, dtype=np.float64)
    x_pcs = td.pca.transform(x)
    row: dict[str, Any] = {
        "editor": label,
        "task": f"{td.task.cell_type}/{td.task.concept}",
        "seed": td.seed,
        "mse_genes": metrics.cell_mse(x, td.truth),
        "mse_pca": float(np.mean((x_pcs - td.truth_pcs) ** 2)),
        "rmmd": np.nan, "mmd": np.nan, "closest_training_population": "",
        "r2_mean": metrics.r2_mean(x, td.truth),
        "r2_mean_deg": metrics.r2_mean(x, td.truth, genes=td.degs),
        "pearson_delta": metrics.pearson_delta(x, td.truth, td.x_intervene),
        "pearson_delta_deg": metrics.pearson_delta(x, td.truth, td.x_intervene, genes=td.degs),
        "deg_dir": metrics.deg_direction_accuracy(x, td.truth, td.x_intervene, genes=td.degs),
        "edist": metrics.e_distance(x_pcs, td.truth_pcs),
        "seconds": float(seconds),
        "trivial": label in TRIVIAL,
    }
    if rmmd:
        rm = metrics.rmmd(x_pcs, td.truth_pcs, td.references, seed=td.seed)
        row.update(rmmd=rm.ratio, mmd=rm.numerator, closest_training_population=rm.closest_population)
    return row


@dataclass
class ModelRun:
    """One model to fit and the edit outputs to score from it.

    ``fit``: ``sccbgm.fit`` keyword arguments (``model=...`` and options); ``base``: label of an
    earlier run whose fitted model conditions this flow (``sccbgm-fm`` / ``cvae-fm``);
    ``edits``: row label -> ``sccbgm.edit`` keyword arguments (default: one row named ``label``
    with the package defaults).
    """

    label: str
    fit: dict[str, Any]
    base: str | None = None
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_models(
    td: TaskData,
    runs: Sequence[ModelRun],
    *,
    train: Any = None,
    intervene: Any = None,
    concepts: Sequence[str] | None = None,
    progress: bool | None = False,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Fit each run on ``train`` (default ``td.train``) with ``concepts`` and edit ``intervene``
    (default ``td.intervene``) to ``task.concept = 1``. Returns (predictions by row label,
    fitted models by run label, seconds by row label: fit (+ base fit) + that edit)."""
    import sccbgm

    train = td.train if train is None else train
    intervene = td.intervene if intervene is None else intervene
    concepts = list(concepts if concepts is not None else td.concepts)
    preds: dict[str, np.ndarray] = {}
    fitted: dict[str, Any] = {}
    fit_seconds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for run in runs:
        t0 = time.perf_counter()
        kw = {"seed": td.seed, "progress": progress, **run.fit}
        if run.base is not None:
            kw["base"] = fitted[run.base]
        model = sccbgm.fit(train, concepts, **kw)
        fitted[run.label] = model
        fit_seconds[run.label] = time.perf_counter() - t0 + (fit_seconds.get(run.base, 0.0) if run.base else 0.0)
        for row, edit_kw in (run.edits or {run.label: {}}).items():
            t1 = time.perf_counter()
            edited = sccbgm.edit(model, intervene, set={td.task.concept: 1}, **edit_kw)
            preds[row] = np.asarray(edited.X, dtype=np.float64)
            seconds[row] = fit_seconds[run.label] + time.perf_counter() - t1
        log(f"  {run.label}: fitted and edited in {time.perf_counter() - t0:.1f} s")
    return preds, fitted, seconds


def run_synthetic_task(
    adata: Any,
    task: Any,
    *,
    models: Mapping[str, Mapping[str, Any]] | Sequence[ModelRun] | None = None,
    concepts: Sequence[str] | None = None,
    seed: int = 0,
    n_pcs_eval: int = 50,
    progress: bool | None = False,
    extra_predictions: Callable[[TaskData], Mapping[str, np.ndarray]] | None = None,
    log: Callable[[str], None] = print,
) -> TaskResult:
    """Run one intervention task; ``models`` maps a label to ``sccbgm.fit`` keyword arguments
    (a ``residual`` key is passed to ``edit`` instead), or is a list of :class:`ModelRun`
    (default: ``{"scCBGM": {"model": "sccbgm"}}``). Every model is compared with the two trivial
    editors on the same cells; ``extra_predictions(td)`` adds rows (e.g. peers)."""
    td = prepare_task(adata, task, seed=seed, concepts=concepts, n_pcs_eval=n_pcs_eval)
    if models is None or isinstance(models, Mapping):
        runs = []
        for label, kwargs in dict(models or {"scCBGM": {"model": "sccbgm"}}).items():
            fit_kw = {k: v for k, v in kwargs.items() if k != "residual"}
            edit_kw = {"residual": kwargs["residual"]} if "residual" in kwargs else {}
            runs.append(ModelRun(label, fit_kw, edits={label: edit_kw}))
    else:
        runs = list(models)
    preds = trivial_predictions(td)
    model_preds, fitted, seconds = run_models(td, runs, progress=progress, log=log)
    preds.update(model_preds)
    if extra_predictions is not None:
        preds.update(extra_predictions(td))
    rows = [score(td, label, x, seconds=seconds.get(label, 0.0)) for label, x in preds.items()]
    return TaskResult(pd.DataFrame(rows), fitted, preds, td.truth, td.x_intervene, td.train_pcs, td.pca)
