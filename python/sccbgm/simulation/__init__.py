"""Synthetic single-cell counts with ground-truth counterfactuals (paper section 3, appendix C).

* :func:`simulate` - the overdispersed hierarchical Poisson process of Eq. 40-42, presets
  ``synthetic1`` / ``synthetic2`` / ``synthetic3`` (Table S1) with sizes scalable down, and
  ``interaction`` (cell-type-specific concept effects, not in the paper);
* :func:`simulate_counterfactual` - exact counterfactual counts of Eq. 43 (same exogenous
  draws, changed concepts); :func:`true_log_rate` - the ground-truth log lambda;
* :func:`corrupt_concepts` - noisy concept annotations of C.4;
* :func:`eligible_intervention_tasks`, :func:`choose_intervention_tasks`, :func:`intervention_split` - the evaluation splits of C.6.

Only numpy, scipy, pandas and anndata are used.

The package root exposes :func:`simulate` and :func:`simulate_counterfactual` as
``sccbgm.simulate`` / ``sccbgm.simulate_counterfactual`` (this subpackage is named
``simulation`` so that no submodule shadows those functions).
"""

from sccbgm.simulation.noise import CORRUPTION_KINDS, corrupt_concepts
from sccbgm.simulation.params import PRESETS, SimulationParams, make_params
from sccbgm.simulation.process import (
    poisson_quantile,
    simulate,
    simulate_counterfactual,
    true_log_rate,
)
from sccbgm.simulation.splits import (
    InterventionSplit,
    InterventionTask,
    choose_intervention_tasks,
    eligible_intervention_tasks,
    intervention_split,
)

__all__ = [
    "CORRUPTION_KINDS",
    "PRESETS",
    "InterventionSplit",
    "InterventionTask",
    "SimulationParams",
    "choose_intervention_tasks",
    "corrupt_concepts",
    "eligible_intervention_tasks",
    "intervention_split",
    "make_params",
    "poisson_quantile",
    "simulate",
    "simulate_counterfactual",
    "true_log_rate",
]

