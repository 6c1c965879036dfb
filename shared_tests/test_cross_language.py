"""The same model, data and seed give the same edit from R as from Python, and model files move
both ways.

The data go to R the rpy2 way (anndata2ri -> SingleCellExperiment -> .rds); the R package runs
in an Rscript child (see conftest.py for why), which loads the model fitted and saved here,
fits its own with the same seed and options, and edits with both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from r_helpers import r_matrix, to_r

FIT_OPTIONS = dict(seed=7, epochs=4, hidden_dim=32, latent_dim=8, unknown_dim=4, n_pcs=10,
                   batch_size=64)
CONCEPTS = ["concept_0", "cell_type"]
# edit name -> (set, residual); the same edits are made in R and in Python
EDITS = {
    "concept": ({"concept_0": 1}, True),
    "cell_type": ({"cell_type": "celltype_1"}, False),
}


def _r_set(set_: dict[str, Any]) -> str:
    items = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in set_.items()]
    return "list(" + ", ".join(items).replace("'", '"') + ")"


@pytest.fixture(scope="module")
def exchange(r: Any, run_r: Any, workdir: Path) -> dict[str, Any]:
    import sccbgm

    adata = sccbgm.simulate(n_cells=300, n_genes=60, seed=0)
    adata.uns.clear()
    py_model = sccbgm.fit(adata, CONCEPTS, progress=False, **FIT_OPTIONS)
    py_model_path = workdir / "from_python.sccbgm"
    sccbgm.save(py_model, py_model_path)
    to_r(r, "sim", adata)
    r.r('SummarizedExperiment::assayNames(sim) <- "counts"')  # anndata2ri names X "X"
    sce_path = workdir / "sim.rds"
    r.r["saveRDS"](r.globalenv["sim"], str(sce_path))
    r_model_path = workdir / "from_r.sccbgm"
    out_path = workdir / "r_edits.rds"
    options = ", ".join(f"{k} = {v}" for k, v in FIT_OPTIONS.items())
    edits = "\n".join(
        f'out[["{m}_{name}"]] <- SummarizedExperiment::assay(sccbgm_edit(sce, {m}, set = {_r_set(set_)}, '
        f'residual = {"TRUE" if residual else "FALSE"}), "sccbgm")'
        for m in ("py_model", "r_model") for name, (set_, residual) in EDITS.items()
    )
    run_r(f"""
sce <- readRDS("{sce_path}")
py_model <- sccbgm_load("{py_model_path}")
r_model <- sccbgm_fit(sce, c({", ".join(f'"{c}"' for c in CONCEPTS)}), {options}, progress = FALSE)
sccbgm_save(r_model, "{r_model_path}")
out <- list(concept_names = py_model$concept_names, genes = py_model$genes)
{edits}
enc <- sccbgm_encode(sce, py_model)
out$concepts <- SingleCellExperiment::reducedDim(enc, "sccbgm_concepts")
out$unknown <- SingleCellExperiment::reducedDim(enc, "sccbgm_unknown")
saveRDS(out, "{out_path}")
""")
    r.globalenv["r_out"] = r.r["readRDS"](str(out_path))
    return {"adata": adata, "py_model": py_model, "r_model_path": r_model_path}


def _r_edit(r: Any, key: str) -> tuple[np.ndarray, list[str], list[str]]:
    values, genes, cells = r_matrix(r, f'r_out[["{key}"]]')
    return values.T, cells, genes  # cells x genes, as in Python


def _py_edit(model: Any, adata: Any, name: str) -> Any:
    import sccbgm

    set_, residual = EDITS[name]
    return sccbgm.edit(model, adata, set_, residual=residual)


@pytest.mark.parametrize("name", list(EDITS))
def test_python_model_edits_the_same_in_r(r: Any, exchange: dict[str, Any], name: str) -> None:
    adata, model = exchange["adata"], exchange["py_model"]
    expected = _py_edit(model, adata, name)
    values, cells, genes = _r_edit(r, f"py_model_{name}")
    assert cells == list(expected.obs_names)
    assert genes == list(expected.var_names)
    np.testing.assert_allclose(values, np.asarray(expected.X, dtype=np.float64), rtol=1e-5, atol=1e-6)
    # the compared numbers are an edit, not the factual cells: edited cells moved away from the
    # same model's edit toward their own concept values
    import sccbgm

    (column, target), = EDITS[name][0].items()
    own = sccbgm.edit(model, adata, {column: adata.obs[column].to_numpy()}, residual=EDITS[name][1])
    changed = (adata.obs[column].astype(str) != str(target)).to_numpy()
    shift = np.abs(np.asarray(expected.X) - np.asarray(own.X)).mean(axis=1)
    assert changed.any() and shift[changed].mean() > 1e-2
    assert shift[~changed].max() < 1e-5


def test_python_model_loads_in_r_with_its_concepts_and_encoding(r: Any, exchange: dict[str, Any]) -> None:
    import sccbgm

    model, adata = exchange["py_model"], exchange["adata"]
    assert [str(v) for v in r.r('r_out$concept_names')] == list(model.concept_names)
    assert [str(v) for v in r.r('r_out$genes')] == list(model.genes)
    encoded = sccbgm.encode(model, adata)
    concepts, _, names = r_matrix(r, "r_out$concepts")
    assert names == list(model.concept_names)
    np.testing.assert_allclose(concepts, np.asarray(encoded.X), rtol=1e-5, atol=1e-6)
    unknown, _, _ = r_matrix(r, "r_out$unknown")
    np.testing.assert_allclose(unknown, encoded.obsm["X_unknown"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(EDITS))
def test_r_model_loads_in_python_and_equals_the_python_fit(
    r: Any, exchange: dict[str, Any], name: str
) -> None:
    import sccbgm

    adata = exchange["adata"]
    r_model = sccbgm.load(exchange["r_model_path"])
    assert list(r_model.concept_names) == list(exchange["py_model"].concept_names)
    from_r_model = np.asarray(_py_edit(r_model, adata, name).X, dtype=np.float64)
    # the R model edits the same in Python as in R
    values, _, _ = _r_edit(r, f"r_model_{name}")
    np.testing.assert_allclose(from_r_model, values, rtol=1e-5, atol=1e-6)
    # same data + seed + options: fitting from R gives the model fitting from Python gives
    from_py_model = np.asarray(_py_edit(exchange["py_model"], adata, name).X, dtype=np.float64)
    np.testing.assert_allclose(from_r_model, from_py_model, rtol=1e-5, atol=1e-6)
