"""Parameters of the synthetic overdispersed-Poisson process (paper appendix C.1, C.5, Table S1).

Every symbol of Eq. 40 and its prior has a named field in :class:`SimulationParams`. Where the
paper gives no value (the Dirichlet concentrations) the default below is this package's choice
and is stated in the field's description.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from sccbgm.errors import SCCBGMError

_COUNT_FIELDS = ("n_cells", "n_genes", "n_concepts", "n_cell_types", "n_tissues", "n_batches")


@dataclass(frozen=True)
class SimulationParams:
    """All knobs of the generative process of paper Eq. 40-43 (defaults: preset ``synthetic1``).

    Sizes
        n_cells (N), n_genes (G), n_concepts (K), n_cell_types (U), n_tissues (T),
        n_batches (B). Paper C.5: 20,000 cells, 5,000 genes, 5 concepts, 4 cell types,
        3 tissues, 2 batches.

    Log-rate components (all added in natural-log space, Eq. 40)
        baseline_low, baseline_high: r_w, s_w in w_j ~ U(r_w, s_w); paper C.5 "between 1 and 5".
            Because w_j enters log lambda directly, baseline rates exp(w_j) span about 2.7-148.
        batch_effect_sd: sd of gamma_bj ~ N(0, .) (0.06).
        tissue_effect_sd: sd of tau_tj ~ N(0, .) (0.05).
        cell_type_effect_sd: sd of omega_uj ~ N(0, .) (0.04).
        library_sd_low, library_sd_high: r_l, s_l in sigma_b ~ U(r_l, s_l), one library-size
            sd per batch; then l_i ~ N(0, sigma_{b_i}) (0.01-0.03).
        noise_sd: sigma_eps of the residual eps_ij ~ N(0, sigma_eps), one draw per cell and gene
            (0.01; 0.08 in ``synthetic2``).
        concept_sd: sigma_c of the non-zero concept coefficients c_kj ~ N(0, sigma_c)
            (0.08; 0.02 in ``synthetic3``).
        zero_inflation_alpha, zero_inflation_beta: alpha, beta of pi_k ~ Beta(alpha, beta)
            (1 and 0.8). pi_k is the probability that a coefficient c_kj is exactly zero
            (the zero-inflation weight of ZINorm(pi_k, 0, sigma_c)), so on average a fraction
            alpha / (alpha + beta) = 0.556 of the genes is untouched by a concept.
        concept_cell_type_sd: sd of the cell-type-specific concept effects (an interaction term,
            not in the paper): with sd > 0 an active concept k adds c_kj + e_kuj to the log rate
            of a type-u cell, e_kuj ~ N(0, sd) on the genes the concept touches (c_kj != 0), so a
            concept's response differs between cell types and the mean shift seen in other types
            is no oracle. Default 0 (the paper's additive effects; the draws are then identical
            to the paper's process).

    Hierarchy of identities (the paper leaves the concentrations open; all are symmetric)
        batch_concentration: alpha_b of the batch proportions p ~ Dir(alpha_b 1_B). Default 10:
            batches of roughly equal size.
        tissue_concentration: alpha_t of the tissue proportions, one vector per batch,
            p_b ~ Dir(alpha_t 1_T). Default 10: tissue mix varies moderately between batches.
        cell_type_concentration: alpha_u of the cell-type proportions, one vector per tissue,
            p_t ~ Dir(alpha_u 1_U). Default 1 (flat): cell-type mix differs strongly by tissue.
        concept_concentration: alpha_c of the concept probabilities, one vector per cell type,
            p_u ~ Dir(alpha_c 1_K); then v_ik ~ Ber(p_{u_i k}) independently over k. Default 1
            (flat), so each concept is active in 1/K of a cell type's cells on average and
            sum_k p_uk = 1 (about one active concept per cell). With K = 1 the single concept is
            active in every cell.
    """

    n_cells: int = 20_000
    n_genes: int = 5_000
    n_concepts: int = 5
    n_cell_types: int = 4
    n_tissues: int = 3
    n_batches: int = 2
    baseline_low: float = 1.0
    baseline_high: float = 5.0
    batch_effect_sd: float = 0.06
    tissue_effect_sd: float = 0.05
    cell_type_effect_sd: float = 0.04
    library_sd_low: float = 0.01
    library_sd_high: float = 0.03
    noise_sd: float = 0.01
    concept_sd: float = 0.08
    zero_inflation_alpha: float = 1.0
    zero_inflation_beta: float = 0.8
    batch_concentration: float = 10.0
    tissue_concentration: float = 10.0
    cell_type_concentration: float = 1.0
    concept_concentration: float = 1.0
    concept_cell_type_sd: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _COUNT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SCCBGMError(f"{f.name} must be a positive integer, got {value!r}.")
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise SCCBGMError(f"{f.name} must be a finite number, got {value!r}.")
        for name in (
            "batch_effect_sd",
            "tissue_effect_sd",
            "cell_type_effect_sd",
            "library_sd_low",
            "noise_sd",
            "concept_sd",
            "concept_cell_type_sd",
        ):
            if getattr(self, name) < 0:
                raise SCCBGMError(f"{name} is a standard deviation and must be >= 0.")
        for low, high in (("baseline_low", "baseline_high"), ("library_sd_low", "library_sd_high")):
            if getattr(self, low) > getattr(self, high):
                raise SCCBGMError(f"{low} ({getattr(self, low)}) must not exceed {high} "
                                  f"({getattr(self, high)}).")
        for name in (
            "zero_inflation_alpha",
            "zero_inflation_beta",
            "batch_concentration",
            "tissue_concentration",
            "cell_type_concentration",
            "concept_concentration",
        ):
            if getattr(self, name) <= 0:
                raise SCCBGMError(f"{name} must be > 0, got {getattr(self, name)}.")

    def as_dict(self) -> dict[str, int | float]:
        """Field name -> value (plain Python scalars, safe for ``adata.uns``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


PRESETS: Mapping[str, SimulationParams] = MappingProxyType(
    {
        "synthetic1": SimulationParams(),
        "synthetic2": SimulationParams(noise_sd=0.08),
        "synthetic3": SimulationParams(concept_sd=0.02),
        "interaction": SimulationParams(concept_cell_type_sd=0.08),
    }
)
"""Table S1 datasets: ``synthetic1`` baseline, ``synthetic2`` more technical noise
(sigma_eps = 0.08), ``synthetic3`` weaker concept effects (sigma_c = 0.02); C.5 shared otherwise.
``interaction`` (not in the paper): ``synthetic1`` with cell-type-specific concept effects
(``concept_cell_type_sd`` = 0.08 = sigma_c), the validation protocol's second simulator variant."""


def make_params(preset: str = "synthetic1", **overrides: Any) -> SimulationParams:
    """The preset's parameters with ``overrides`` (field name -> value) applied and validated.

    ``None`` values in ``overrides`` are ignored, so callers can pass optional sizes through.
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise SCCBGMError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    valid = {f.name for f in fields(SimulationParams)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise SCCBGMError(
            f"unknown simulation parameter(s) {unknown}; valid names: {sorted(valid)}."
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[preset], **given)
