"""The overdispersed hierarchical Poisson process of paper Eq. 40-43, with exact counterfactuals.

For cell i and gene j (paper appendix C.1; Eq. 40 writes ``l_j`` but means the cell's l_i)::

    log lambda_ij = w_j + l_i + gamma_{b_i j} + omega_{u_i j} + tau_{t_i j}
                    + sum_k v_ik c_kj + eps_ij                                    (Eq. 40)
    x_ij = Q(delta_ij; lambda_ij) = min{k in N : F_Poi(k; lambda_ij) > delta_ij}  (Eq. 41)

with delta_ij ~ U(0, 1). A counterfactual (Eq. 43) keeps every exogenous draw (the identities
b_i, t_i, u_i, the library size l_i, eps_ij and delta_ij) and changes only the concept
activations v_ik, so cells and genes a change does not touch keep their counts exactly.

Random streams. ``numpy.random.SeedSequence(seed, spawn_key=...)`` keys four independent
streams: ``(0,)`` the dataset-level parameters, ``(1,)`` the per-cell identities, library sizes
and concept activations, ``(2, chunk)`` the residuals eps and ``(3, chunk)`` the uniforms delta
of the cells ``chunk * rng_chunk_size ...`` of the simulated dataset. The cells x genes eps and
delta are never stored; any cell's rows are regenerated from its chunk on demand, so the factual
data and every counterfactual see identical draws, and memory stays at one chunk.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import special, stats

from sccbgm.errors import SCCBGMError
from sccbgm.simulation.params import SimulationParams, make_params

UNS_KEY = "simulation"
FORMAT = "sccbgm.simulate/1"
RNG_CHUNK_SIZE = 128
_MAX_RATE = 1e9  # counts are int32; a larger Poisson rate could overflow
_MAX_STEPS = 200  # pmf-recurrence steps before the exact slow path (in practice 0 or 1)

CellSelection = None | np.ndarray | Sequence[int] | Sequence[str] | Sequence[bool] | pd.Index
ConceptSetting = Mapping[str, int | bool | np.ndarray | Sequence[int]]


# --------------------------------------------------------------------------- Poisson inverse CDF
def poisson_quantile(uniform: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Poisson inverse CDF of Eq. 41: the smallest k with F_Poi(k; rate) > uniform.

    Args:
        uniform: delta, values in [0, 1); any shape.
        rate: lambda > 0, broadcastable to ``uniform``.

    Returns:
        int64 counts of the broadcast shape. Equal to ``scipy.stats.poisson.ppf(uniform, rate)``
        except where ``uniform`` ties a CDF value to the last bit (probability ~1e-16 per
        entry), but several times faster: a Cornish-Fisher start, one exact CDF
        (``scipy.special.pdtr``) per entry, then steps with the Poisson pmf recurrence (in
        practice at most one). An entry's result depends only on its own (uniform, rate).
    """
    delta, lam = np.broadcast_arrays(
        np.asarray(uniform, dtype=np.float64), np.asarray(rate, dtype=np.float64)
    )
    shape = delta.shape
    delta = delta.ravel()
    lam = lam.ravel()
    z = np.clip(special.ndtri(delta), -10.0, 10.0)
    guess = lam + np.sqrt(lam) * z + (z * z - 1.0) / 6.0
    k = np.floor(np.clip(guess, 0.0, None))
    cdf = special.pdtr(k, lam)
    k_max = k.max(initial=0.0)
    if k_max < 1e6:
        log_factorial = special.gammaln(np.arange(1.0, k_max + 2.0))[k.astype(np.intp)]
    else:
        log_factorial = special.gammaln(k + 1.0)
    pmf = np.exp(special.xlogy(k, lam) - lam - log_factorial)

    # Step up while F(k) <= delta.
    todo = np.flatnonzero(cdf <= delta)
    went_up = np.zeros(delta.size, dtype=bool)
    went_up[todo] = True
    for _ in range(_MAX_STEPS):
        if todo.size == 0:
            break
        k[todo] += 1.0
        pmf[todo] *= lam[todo] / k[todo]
        cdf[todo] += pmf[todo]
        todo = todo[cdf[todo] <= delta[todo]]
    k[todo] = _exact_quantile(delta[todo], lam[todo])

    # Step down while F(k - 1) = F(k) - p(k) > delta.
    todo = np.flatnonzero(~went_up & (k > 0) & (cdf - pmf > delta))
    for _ in range(_MAX_STEPS):
        if todo.size == 0:
            break
        cdf[todo] -= pmf[todo]
        pmf[todo] *= k[todo] / lam[todo]
        k[todo] -= 1.0
        todo = todo[(k[todo] > 0) & (cdf[todo] - pmf[todo] > delta[todo])]
    k[todo] = _exact_quantile(delta[todo], lam[todo])
    return k.astype(np.int64).reshape(shape)


def _exact_quantile(delta: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Slow path for far-off starts: scipy's ppf (F >= delta) moved to the F > delta rule.

    delta = 0 gives 0 exactly (F(0) = exp(-lambda) > 0 even where it underflows).
    """
    k = np.maximum(stats.poisson.ppf(delta, lam), 0.0)
    tie = (delta > 0) & (special.pdtr(k, lam) <= delta)
    while tie.any():
        k[tie] += 1.0
        tie &= special.pdtr(k, lam) <= delta
    k[delta <= 0] = 0.0
    return k


# --------------------------------------------------------------------------- the stored record
@dataclass(frozen=True)
class _Record:
    """``adata.uns["simulation"]`` as typed arrays (see :func:`simulate` for the layout)."""

    seed: int
    chunk_size: int
    n_cells: int
    noise_sd: float
    cell_names: pd.Index
    concept_names: list[str]
    cell_type_names: list[str]
    batch_index: np.ndarray
    tissue_index: np.ndarray
    cell_type_index: np.ndarray
    library_size: np.ndarray
    concepts: np.ndarray
    baseline: np.ndarray
    batch_effect: np.ndarray
    tissue_effect: np.ndarray
    cell_type_effect: np.ndarray
    concept_coef: np.ndarray
    concept_cell_type_coef: np.ndarray | None = None

    @classmethod
    def from_adata(cls, adata: ad.AnnData) -> _Record:
        if not isinstance(adata, ad.AnnData):
            raise SCCBGMError(f"expected an AnnData, got {type(adata).__name__}.")
        sim = adata.uns.get(UNS_KEY)
        if not isinstance(sim, Mapping):
            raise SCCBGMError(
                f"adata.uns[{UNS_KEY!r}] is missing: ground truth is only available for data "
                "made by sccbgm.simulate (keep uns when subsetting or saving)."
            )
        return cls.from_uns(sim)

    @classmethod
    def from_uns(cls, sim: Mapping[str, Any]) -> _Record:
        if sim.get("format") != FORMAT:
            raise SCCBGMError(
                f"adata.uns[{UNS_KEY!r}] has format {sim.get('format')!r}, expected {FORMAT!r}; "
                "it was not written by this version of sccbgm.simulation."
            )
        try:
            return cls(
                seed=int(sim["seed"]),
                chunk_size=int(sim["rng_chunk_size"]),
                n_cells=int(sim["n_cells"]),
                noise_sd=float(sim["params"]["noise_sd"]),
                cell_names=pd.Index(np.asarray(sim["cell_names"]).astype(str)),
                concept_names=[str(n) for n in np.asarray(sim["concept_names"])],
                cell_type_names=[str(n) for n in np.asarray(sim["cell_type_names"])],
                batch_index=np.asarray(sim["batch_index"], dtype=np.int64),
                tissue_index=np.asarray(sim["tissue_index"], dtype=np.int64),
                cell_type_index=np.asarray(sim["cell_type_index"], dtype=np.int64),
                library_size=np.asarray(sim["library_size"], dtype=np.float64),
                concepts=np.asarray(sim["concepts"], dtype=np.int8),
                baseline=np.asarray(sim["baseline"], dtype=np.float64),
                batch_effect=np.asarray(sim["batch_effect"], dtype=np.float64),
                tissue_effect=np.asarray(sim["tissue_effect"], dtype=np.float64),
                cell_type_effect=np.asarray(sim["cell_type_effect"], dtype=np.float64),
                concept_coef=np.asarray(sim["concept_coef"], dtype=np.float64),
                concept_cell_type_coef=(
                    np.asarray(sim["concept_cell_type_coef"], dtype=np.float64)
                    if "concept_cell_type_coef" in sim else None
                ),
            )
        except KeyError as err:
            raise SCCBGMError(
                f"adata.uns[{UNS_KEY!r}] lacks entry {err}; it was not written by this version "
                "of sccbgm.simulation."
            ) from None

    def original_index(self, obs_names: pd.Index) -> np.ndarray:
        """Row of each named cell in the simulated dataset (names are the stable cell key)."""
        index = self.cell_names.get_indexer(pd.Index(obs_names))
        if (index < 0).any():
            missing = list(pd.Index(obs_names)[index < 0][:5])
            raise SCCBGMError(
                f"cell(s) {missing} are not in the simulation record; counterfactuals find cells "
                "by their original obs_names, so do not rename cells of simulated data."
            )
        return index.astype(np.int64)

    def _block(self, stream: int, chunk: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(stream, chunk)))

    def evaluate(self, cell_index: np.ndarray, concepts: np.ndarray, *, counts: bool) -> np.ndarray:
        """Counts x (int32) or log lambda (float64), shape (len(cell_index), G), Eq. 40-41/43.

        ``cell_index`` are rows of the simulated dataset, ``concepts`` the (n, K) activations v.
        """
        n_genes = self.baseline.shape[0]
        out = np.empty((cell_index.size, n_genes), dtype=np.int32 if counts else np.float64)
        chunk_of = cell_index // self.chunk_size
        for chunk in np.unique(chunk_of):
            rows = np.flatnonzero(chunk_of == chunk)
            start = int(chunk) * self.chunk_size
            n_block = min(start + self.chunk_size, self.n_cells) - start
            local = cell_index[rows] - start
            eps = self._block(2, int(chunk)).standard_normal((n_block, n_genes))[local]
            log_rate = self._structured(cell_index[rows], concepts[rows])
            log_rate += self.noise_sd * eps
            if not counts:
                out[rows] = log_rate
                continue
            if log_rate.max(initial=-np.inf) > np.log(_MAX_RATE):
                raise SCCBGMError(
                    f"a Poisson rate exceeds {_MAX_RATE:g}, too large for int32 counts; lower "
                    "baseline_high or the effect standard deviations."
                )
            delta = self._block(3, int(chunk)).random((n_block, n_genes))[local]
            out[rows] = poisson_quantile(delta, np.exp(log_rate))
        return out

    def _structured(self, cell_index: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """All of Eq. 40 except eps, as a fresh (n, G) array; entry-wise, so order-independent."""
        log_rate = self.baseline[None, :] + self.library_size[cell_index][:, None]
        log_rate += self.batch_effect[self.batch_index[cell_index]]
        log_rate += self.cell_type_effect[self.cell_type_index[cell_index]]
        log_rate += self.tissue_effect[self.tissue_index[cell_index]]
        for k in range(concepts.shape[1]):
            active = np.flatnonzero(concepts[:, k])
            if active.size:
                log_rate[active] += self.concept_coef[k]
                if self.concept_cell_type_coef is not None:
                    log_rate[active] += self.concept_cell_type_coef[k][self.cell_type_index[cell_index[active]]]
        return log_rate


# --------------------------------------------------------------------------- simulation
def simulate(
    preset: str = "synthetic1",
    *,
    n_cells: int | None = None,
    n_genes: int | None = None,
    n_concepts: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> ad.AnnData:
    """Simulate a synthetic count dataset (paper appendix C.1, presets of C.5 / Table S1).

    Args:
        preset: ``"synthetic1"`` (baseline), ``"synthetic2"`` (noise sd 0.08) or
            ``"synthetic3"`` (concept sd 0.02), or ``"interaction"`` (synthetic1 with
            cell-type-specific concept effects, ``concept_cell_type_sd=0.08``; not in the paper).
        n_cells, n_genes, n_concepts: size overrides (paper: 20,000 / 5,000 / 5).
        seed: non-negative integer; the same seed and parameters give identical data.
        **overrides: any other :class:`SimulationParams` field, e.g. ``noise_sd=0.05``.

    Returns:
        AnnData with

        * ``X``: dense int32 counts x_ij, shape (n_cells, n_genes);
        * ``obs``: ``batch``, ``tissue``, ``cell_type`` (Categorical of ``"batch_0"``,
          ``"tissue_1"``, ``"celltype_2"``, ...) and ``concept_0`` ... ``concept_{K-1}``
          (int64 0/1: v_ik); obs_names ``"cell_0"``, ...; var_names ``"gene_0"``, ...;
        * ``uns["simulation"]``: everything needed for exact counterfactuals, only numpy arrays,
          scalars, strings and one dict of scalars (``params``), so it survives
          ``write_h5ad`` / ``read_h5ad``: ``format``, ``preset``, ``seed``, ``params``,
          ``rng_chunk_size``, ``n_cells``; names ``cell_names`` (N), ``concept_names`` (K),
          ``batch_names`` (B), ``tissue_names`` (T), ``cell_type_names`` (U); per cell
          ``batch_index`` b_i, ``tissue_index`` t_i, ``cell_type_index`` u_i, ``library_size``
          l_i (N), ``concepts`` v (N, K, int8; the true activations, whatever the obs columns
          later say); per gene ``baseline`` w (G), ``batch_effect`` gamma (B, G),
          ``tissue_effect`` tau (T, G), ``cell_type_effect`` omega (U, G), ``concept_coef``
          c (K, G) and, with ``concept_cell_type_sd`` > 0 only, ``concept_cell_type_coef``
          (K, U, G), the cell-type-specific part of each concept's effect; priors ``zero_inflation`` pi (K), ``library_sd`` sigma_b (B),
          ``batch_proportions`` (B), ``tissue_proportions`` (B, T, rows: batch),
          ``cell_type_proportions`` (T, U, rows: tissue), ``concept_probability`` (U, K,
          rows: cell type). eps and delta are regenerated from ``seed`` (module docstring).
    """
    params = make_params(
        preset, n_cells=n_cells, n_genes=n_genes, n_concepts=n_concepts, **overrides
    )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SCCBGMError(f"seed must be a non-negative integer, got {seed!r}.")
    sim = _draw(params, int(seed))
    sim["preset"] = preset
    record = _Record.from_uns(sim)
    counts = record.evaluate(np.arange(params.n_cells), record.concepts, counts=True)
    columns: dict[str, Any] = {
        column: pd.Categorical.from_codes(sim[f"{column}_index"], categories=list(names))
        for column, names in (
            ("batch", sim["batch_names"]),
            ("tissue", sim["tissue_names"]),
            ("cell_type", sim["cell_type_names"]),
        )
    }
    for k, name in enumerate(sim["concept_names"]):
        columns[str(name)] = sim["concepts"][:, k].astype(np.int64)
    obs = pd.DataFrame(columns, index=pd.Index(sim["cell_names"]))
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(params.n_genes)]))
    return ad.AnnData(X=counts, obs=obs, var=var, uns={UNS_KEY: sim})


def _categorical_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One Cat(p_i) draw per row of ``probabilities`` (n, m), by inverse CDF."""
    cumulative = np.cumsum(probabilities, axis=1)
    draws = (rng.random(probabilities.shape[0])[:, None] >= cumulative).sum(axis=1)
    return np.minimum(draws, probabilities.shape[1] - 1).astype(np.int64)


def _draw(params: SimulationParams, seed: int) -> dict[str, Any]:
    """All stored draws of the process: dataset-level parameters and per-cell exogenous values."""
    p = params
    n_b, n_t, n_u, n_k, n_g, n_c = (
        p.n_batches, p.n_tissues, p.n_cell_types, p.n_concepts, p.n_genes, p.n_cells
    )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    batch_proportions = rng.dirichlet(np.full(n_b, p.batch_concentration))
    tissue_proportions = rng.dirichlet(np.full(n_t, p.tissue_concentration), size=n_b)
    cell_type_proportions = rng.dirichlet(np.full(n_u, p.cell_type_concentration), size=n_t)
    concept_probability = rng.dirichlet(np.full(n_k, p.concept_concentration), size=n_u)
    library_sd = rng.uniform(p.library_sd_low, p.library_sd_high, size=n_b)
    baseline = rng.uniform(p.baseline_low, p.baseline_high, size=n_g)
    batch_effect = rng.normal(0.0, p.batch_effect_sd, size=(n_b, n_g))
    tissue_effect = rng.normal(0.0, p.tissue_effect_sd, size=(n_t, n_g))
    cell_type_effect = rng.normal(0.0, p.cell_type_effect_sd, size=(n_u, n_g))
    zero_inflation = rng.beta(p.zero_inflation_alpha, p.zero_inflation_beta, size=n_k)
    is_zero = rng.random((n_k, n_g)) < zero_inflation[:, None]
    concept_coef = np.where(is_zero, 0.0, rng.normal(0.0, p.concept_sd, size=(n_k, n_g)))

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    batch_index = _categorical_rows(rng, np.broadcast_to(batch_proportions, (n_c, n_b)))
    tissue_index = _categorical_rows(rng, tissue_proportions[batch_index])
    cell_type_index = _categorical_rows(rng, cell_type_proportions[tissue_index])
    library_size = rng.normal(0.0, library_sd[batch_index])
    concepts = (rng.random((n_c, n_k)) < concept_probability[cell_type_index]).astype(np.int8)

    extra: dict[str, Any] = {}
    if p.concept_cell_type_sd > 0:
        # own stream (4,): the paper's draws above stay identical with and without the interaction
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
        interaction = rng.normal(0.0, p.concept_cell_type_sd, size=(n_k, n_u, n_g))
        extra["concept_cell_type_coef"] = np.where(is_zero[:, None, :], 0.0, interaction)

    return {
        **extra,
        "format": FORMAT,
        "seed": seed,
        "params": params.as_dict(),
        "rng_chunk_size": RNG_CHUNK_SIZE,
        "n_cells": n_c,
        "cell_names": np.array([f"cell_{i}" for i in range(n_c)]),
        "concept_names": np.array([f"concept_{k}" for k in range(n_k)]),
        "batch_names": np.array([f"batch_{b}" for b in range(n_b)]),
        "tissue_names": np.array([f"tissue_{t}" for t in range(n_t)]),
        "cell_type_names": np.array([f"celltype_{u}" for u in range(n_u)]),
        "batch_index": batch_index,
        "tissue_index": tissue_index,
        "cell_type_index": cell_type_index,
        "library_size": library_size,
        "concepts": concepts,
        "baseline": baseline,
        "batch_effect": batch_effect,
        "tissue_effect": tissue_effect,
        "cell_type_effect": cell_type_effect,
        "concept_coef": concept_coef,
        "zero_inflation": zero_inflation,
        "library_sd": library_sd,
        "batch_proportions": batch_proportions,
        "tissue_proportions": tissue_proportions,
        "cell_type_proportions": cell_type_proportions,
        "concept_probability": concept_probability,
    }


# --------------------------------------------------------------------------- counterfactuals
def resolve_cells(adata: ad.AnnData, cells: CellSelection) -> np.ndarray:
    """Positions (int64) in ``adata`` of a selection: None (all), bool mask, ints or obs names."""
    n_obs = adata.n_obs
    if cells is None:
        return np.arange(n_obs, dtype=np.int64)
    if isinstance(cells, str):
        cells = [cells]
    selection = np.asarray(cells)
    if selection.ndim != 1:
        raise SCCBGMError(f"`cells` must be one-dimensional, got shape {selection.shape}.")
    if selection.dtype == bool:
        if selection.size != n_obs:
            raise SCCBGMError(
                f"boolean `cells` mask has length {selection.size}, but adata has {n_obs} cells."
            )
        return np.flatnonzero(selection).astype(np.int64)
    if selection.size == 0:
        return np.zeros(0, dtype=np.int64)
    if selection.dtype.kind in "iu":
        if selection.min() < 0 or selection.max() >= n_obs:
            raise SCCBGMError(f"`cells` indices must lie in [0, {n_obs}); got out-of-range values.")
        return selection.astype(np.int64)
    if selection.dtype.kind in "OUS":
        if not adata.obs_names.is_unique:
            raise SCCBGMError("selecting cells by name needs unique obs_names.")
        positions = adata.obs_names.get_indexer(selection.astype(str))
        if (positions < 0).any():
            missing = list(selection[positions < 0][:5])
            raise SCCBGMError(f"cell name(s) {missing} not found in adata.obs_names.")
        return positions.astype(np.int64)
    raise SCCBGMError(
        "`cells` must be None, a boolean mask, integer positions or obs names; "
        f"got dtype {selection.dtype}."
    )


def _set_concepts(record: _Record, concepts: np.ndarray, setting: ConceptSetting) -> dict:
    """Apply ``setting`` (concept name -> 0/1 scalar or per-cell array) to ``concepts`` in place."""
    if not isinstance(setting, Mapping):
        raise SCCBGMError(
            f"`set` must be a mapping of concept name -> 0/1, got {type(setting).__name__}."
        )
    n_cells = concepts.shape[0]
    applied: dict[str, np.ndarray] = {}
    for name, value in setting.items():
        if name not in record.concept_names:
            raise SCCBGMError(
                f"unknown concept {name!r} in `set`; simulated concepts: {record.concept_names}."
            )
        values = np.asarray(value)
        if values.ndim == 0:
            values = np.full(n_cells, values)
        if values.shape != (n_cells,):
            raise SCCBGMError(
                f"`set[{name!r}]` must be a scalar or have one value per selected cell "
                f"({n_cells}), got shape {values.shape}."
            )
        if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
            raise SCCBGMError(f"`set[{name!r}]` must contain only 0 or 1 (binary concepts).")
        values = values.astype(np.int8)
        concepts[:, record.concept_names.index(name)] = values
        applied[name] = values
    return applied


def true_log_rate(
    adata: ad.AnnData, cells: CellSelection = None, set: ConceptSetting | None = None
) -> np.ndarray:
    """Ground-truth log lambda_ij (Eq. 40, or Eq. 43 with ``set``), float64 (n_selected, G).

    Uses the true concept activations stored in ``uns["simulation"]`` (not the possibly
    corrupted obs columns), with the concepts in ``set`` replaced; includes eps_ij.
    """
    record = _Record.from_adata(adata)
    positions = resolve_cells(adata, cells)
    index = record.original_index(adata.obs_names[positions])
    concepts = record.concepts[index].copy()
    _set_concepts(record, concepts, {} if set is None else set)
    return record.evaluate(index, concepts, counts=False)


def simulate_counterfactual(
    adata: ad.AnnData, set: ConceptSetting, cells: CellSelection = None
) -> ad.AnnData:
    """True counterfactual counts x'_ij of Eq. 43 for the selected cells.

    Args:
        adata: data from :func:`simulate` (any subset, reordering or h5ad round trip of it, as
            long as obs_names and ``uns["simulation"]`` are kept).
        set: concept name -> 0/1, a scalar for all selected cells or one value per cell, e.g.
            ``{"concept_2": 1}``. Unnamed concepts keep their true values.
        cells: None (all), boolean mask (n_obs), integer positions or obs names; the output
            follows this order.

    Returns:
        AnnData of the selected cells with int32 counts in ``X`` computed from the same
        exogenous draws (l, eps, delta, identities) as the factual counts, so with unchanged
        concepts the counts are identical. ``obs`` is the input's obs for those cells with the
        ``set`` concept columns overwritten; ``uns["simulation"]["concepts"]`` records the new
        activations, so a counterfactual of the result is again exact.
    """
    record = _Record.from_adata(adata)
    positions = resolve_cells(adata, cells)
    index = record.original_index(adata.obs_names[positions])
    concepts = record.concepts[index].copy()
    applied = _set_concepts(record, concepts, set)
    counts = record.evaluate(index, concepts, counts=True)

    obs = adata.obs.iloc[positions].copy()
    for name, values in applied.items():
        if name in obs.columns:
            obs[name] = values.astype(np.int64)
    uns = copy.deepcopy(dict(adata.uns))
    true_concepts = np.array(record.concepts, dtype=np.int8)
    true_concepts[index] = concepts
    uns[UNS_KEY]["concepts"] = true_concepts
    return ad.AnnData(X=counts, obs=obs, var=adata.var.copy(), uns=uns)
