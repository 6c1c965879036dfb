"""Helpers for moving objects between Python and the embedded R (rpy2 + anndata2ri)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_r(r: Any, name: str, adata: Any) -> None:
    """Python AnnData -> R SingleCellExperiment ``name`` in R's global environment (anndata2ri)."""
    import anndata2ri
    from rpy2.robjects.conversion import localconverter

    with localconverter(anndata2ri.converter):
        r.globalenv[name] = adata


def from_r(r: Any, expr: str) -> Any:
    """Evaluate R ``expr`` (a SingleCellExperiment) and convert it to AnnData (anndata2ri)."""
    import anndata2ri
    from rpy2.robjects.conversion import localconverter

    with localconverter(anndata2ri.converter):
        return r.r(expr)


def r_matrix(r: Any, expr: str) -> tuple[np.ndarray, list[str], list[str]]:
    """R numeric matrix ``expr`` -> (values (rows, cols) float64, row names, column names)."""
    m = r.r(f"local({{ m <- as.matrix({expr}); storage.mode(m) <- 'double'; m }})")
    nrow, ncol = (int(v) for v in r.r["dim"](m))
    values = np.asarray(list(m), dtype=np.float64).reshape(ncol, nrow).T  # column-major
    rows = [str(v) for v in r.r["rownames"](m)]
    cols = [str(v) for v in r.r["colnames"](m)]
    return values, rows, cols


def r_true(r: Any, expr: str) -> None:
    """Assert that R ``expr`` is TRUE; show the R value (e.g. an all.equal message) if not."""
    value = r.r(f"local({{ v <- {expr}; if (isTRUE(v)) 'TRUE' else paste(format(v), collapse = '; ') }})")
    assert str(value[0]) == "TRUE", f"{expr}: {value[0]}"
