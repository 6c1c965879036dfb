"""Helpers the tools share: log-normalised expression and figure saving."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sccbgm.errors import SCCBGMError


def read_expression(adata: Any, layer: str | None = None) -> tuple[np.ndarray, str]:
    """``X`` (or ``layer``) read once, as a dense (n_cells, G) float64 array, and the input kind:
    ``"counts"`` when every value is an integer, else ``"lognorm"`` (errors on negative or
    non-finite values)."""
    from sccbgm.access import dense_rows, get_matrix
    from sccbgm.data import check_values

    x = dense_rows(get_matrix(adata, layer))
    return x, "counts" if check_values(x) else "lognorm"


def lognormalise_input(x: np.ndarray, kind: str) -> np.ndarray:
    """:func:`read_expression`'s values as log-normalised expression: counts library-size
    normalised to the median total of the given cells and log1p-transformed (as
    :class:`sccbgm.data.InputTransform` does); log-normalised input as it is."""
    from sccbgm.access import lognormalise

    if kind != "counts":
        return x
    totals = x.sum(axis=1)
    if (totals == 0).any():
        raise SCCBGMError(
            f"{int((totals == 0).sum())} cells have zero total counts; filter them out first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))."
        )
    return lognormalise(x)


def lognormalised(adata: Any, layer: str | None = None) -> tuple[np.ndarray, str]:
    """Dense log-normalised expression (n_cells, G) float64 and the input kind
    (:func:`read_expression`, :func:`lognormalise_input`)."""
    x, kind = read_expression(adata, layer)
    return lognormalise_input(x, kind), kind


def check_columns(adata: Any, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise SCCBGMError(f"{what} column(s) {missing} not found in adata.obs; columns: {list(adata.obs.columns)}.")


def save_figure(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    """Save ``fig`` (a ``matplotlib.figure.Figure``, no pyplot state) to ``path`` when given; return it."""
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def say(progress: bool | None, message: str) -> None:
    """Progress line to stderr (``progress`` None: only on an interactive terminal)."""
    import sys

    if progress or (progress is None and sys.stderr.isatty()):
        print(message, file=sys.stderr, flush=True)
