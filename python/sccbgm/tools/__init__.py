"""Tools on top of the API that tell users how far to trust an edit, and that search for edits.

* :func:`validate` -- a trust report on the user's own data: per group, hold the edited state
  out, fit, edit, and compare with the real held-out cells and the trivial floors;
* :func:`sweep` -- dose response: per-gene mean response curves along one concept;
* :func:`search_concepts` -- which pathway edits move source cells toward target cells
  (paper section 5.3, automated).

Each returns a tidy ``pandas.DataFrame`` and has a ``plot_*`` companion that returns a
matplotlib figure (and saves it when given a path).
"""

from __future__ import annotations

from sccbgm.tools.search import plot_search, search_concepts
from sccbgm.tools.sweep import plot_sweep, sweep
from sccbgm.tools.validate import plot_validation, validate

__all__ = ["plot_search", "plot_sweep", "plot_validation", "search_concepts", "sweep", "validate"]
