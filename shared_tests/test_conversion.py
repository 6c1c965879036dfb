"""SingleCellExperiment / Seurat <-> AnnData: anndata2ri (rpy2) and the R package's own converters.

The R package's converters (``sce_to_anndata`` / ``anndata_to_sce`` / ``seurat_to_anndata`` /
``anndata_to_seurat``) must be loss-free. anndata2ri 2.0 is checked for what it carries; it is
not fully loss-free, and ``same_after_anndata2ri`` below lists exactly what it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from r_helpers import from_r, r_true, to_r

# An SCE with every kind of content: sparse double counts, dense logcounts, an integer assay,
# colData with a factor (unused level, NA), an ordered factor, double / integer / character /
# logical columns with NAs, rowData, two reducedDims (one with column names).
MAKE_SCE = r"""
local({
  set.seed(1); g <- 8; n <- 12
  counts <- Matrix::rsparsematrix(g, n, 0.5, rand.x = function(k) as.double(rpois(k, 3) + 1))
  dimnames(counts) <- list(paste0("gene", 1:g), paste0("cell", 1:n))
  icounts <- matrix(as.integer(as.matrix(counts)) * 2L, g, n, dimnames = dimnames(counts))
  sce <- SingleCellExperiment(list(counts = counts, logcounts = as.matrix(log1p(counts)),
                                   icounts = icounts))
  sce$ct <- factor(rep(c("b", "a", NA, "b"), 3), levels = c("b", "a", "unused"))
  sce$ord <- factor(rep(c("lo", "hi"), 6), levels = c("lo", "hi"), ordered = TRUE)
  sce$dose <- c(NA, seq(0.1, 1.1, length.out = n - 1))
  sce$n <- c(1:(n - 1), NA)
  sce$lab <- c(rep(c("x", "y"), (n - 2) / 2), "z", NA)
  sce$ok <- c(TRUE, FALSE, NA, rep(TRUE, n - 3))
  rowData(sce)$symbol <- paste0("S", 1:g)
  rowData(sce)$len <- c(NA, 2:g) + 0.5
  reducedDim(sce, "PCA") <- matrix(rnorm(n * 3), n, 3,
                                   dimnames = list(colnames(sce), paste0("PC", 1:3)))
  reducedDim(sce, "UMAP") <- matrix(rnorm(n * 2), n, 2, dimnames = list(colnames(sce), NULL))
  sce
})
"""

# What anndata2ri 2.0.1 changes on SCE -> AnnData -> SCE (everything else must be identical):
# X comes back as assay "X" (the first assay's name is lost), colData / rowData columns gain
# names, ordered factors become plain factors, logical columns become integer (NA kept),
# reducedDim column names are dropped.
SAME_AFTER_ANNDATA2RI = r"""
function(back, orig) {
  problems <- character()
  check <- function(ok, what) if (!isTRUE(ok)) problems <<- c(problems, what)
  check(identical(assayNames(back), c("X", assayNames(orig)[-1])), "assay names")
  for (i in seq_along(assayNames(orig))) {
    check(identical(assay(back, i), assay(orig, i)), paste("assay", assayNames(orig)[i]))
  }
  check(identical(dimnames(back), dimnames(orig)), "dimnames")
  norm <- function(df) {
    df <- as.data.frame(df)
    for (nm in names(df)) {
      x <- unname(df[[nm]])
      if (is.ordered(x)) x <- factor(x, levels = levels(x), ordered = FALSE)
      if (is.logical(x)) x <- as.integer(x)
      df[[nm]] <- x
    }
    df
  }
  check(identical(norm(colData(back)), norm(colData(orig))), "colData")
  check(identical(levels(back$ct), levels(orig$ct)), "factor levels")
  check(identical(norm(rowData(back)), norm(rowData(orig))), "rowData")
  check(identical(reducedDimNames(back), reducedDimNames(orig)), "reducedDim names")
  for (r in reducedDimNames(orig)) {
    check(identical(unname(reducedDim(back, r)), unname(reducedDim(orig, r))), paste("reducedDim", r))
    check(identical(rownames(reducedDim(back, r)), colnames(orig)), paste("reducedDim rows", r))
  }
  if (length(problems)) paste("differs:", paste(problems, collapse = ", ")) else TRUE
}
"""


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _python_side_checks(adata: ad.AnnData, pca_key: str) -> None:
    """What the AnnData made from MAKE_SCE holds, whichever converter made it (anndata2ri names
    reducedDim "PCA" obsm "X_pca"; the R package keeps names as they are)."""
    assert adata.shape == (12, 8)
    assert list(adata.obs_names) == [f"cell{i}" for i in range(1, 13)]
    assert list(adata.var_names) == [f"gene{j}" for j in range(1, 9)]
    assert sp.issparse(adata.X)
    assert np.array_equal(_dense(adata.layers["icounts"]), 2 * _dense(adata.X))
    assert adata.layers["icounts"].dtype == np.int32
    np.testing.assert_allclose(adata.layers["logcounts"], np.log1p(_dense(adata.X)), rtol=1e-12)
    ct = adata.obs["ct"]
    assert isinstance(ct.dtype, pd.CategoricalDtype)
    assert list(ct.cat.categories) == ["b", "a", "unused"]
    assert ct.isna().tolist() == [False, False, True, False] * 3
    assert np.isnan(adata.obs["dose"].iloc[0]) and adata.obs["dose"].iloc[1:].notna().all()
    assert adata.obs["n"].isna().tolist() == [False] * 11 + [True]
    assert adata.obs["lab"].isna().tolist() == [False] * 11 + [True]
    assert adata.obs["lab"].iloc[-2] == "z"
    assert list(adata.var["symbol"]) == [f"S{j}" for j in range(1, 9)]
    assert adata.obsm[pca_key].shape == (12, 3)


def test_sce_anndata_roundtrip_with_anndata2ri(r: Any) -> None:
    r.globalenv["sce"] = r.r(MAKE_SCE)
    adata = from_r(r, "sce")
    _python_side_checks(adata, "X_pca")
    to_r(r, "back", adata)
    r_true(r, f"({SAME_AFTER_ANNDATA2RI})(back, sce)")


@pytest.fixture(scope="module")
def package_conversions(r: Any, run_r: Any, workdir: Path) -> dict[str, Path]:
    """One Rscript run of the R package's converters on the shared inputs (paths of results)."""
    paths = {k: workdir / f"conv_{k}" for k in
             ("sce.rds", "sce_ad.h5ad", "sce_back.rds", "py.h5ad", "py_sce.rds", "py_back.h5ad",
              "seurat_ad.h5ad", "seurat_back.rds")}
    r.r["saveRDS"](r.r(MAKE_SCE), str(paths["sce.rds"]))
    _python_made_anndata().write_h5ad(paths["py.h5ad"])
    run_r(f"""
sce <- readRDS("{paths['sce.rds']}")
adata <- sce_to_anndata(sce)
saveRDS(anndata_to_sce(adata), "{paths['sce_back.rds']}")
# (after the way back: anndata's writer turns string columns into categoricals in place)
adata$write_h5ad("{paths['sce_ad.h5ad']}")
from_py <- anndata_to_sce("{paths['py.h5ad']}")
saveRDS(from_py, "{paths['py_sce.rds']}")
sce_to_anndata(from_py)$write_h5ad("{paths['py_back.h5ad']}")
obj <- SeuratObject::pbmc_small
adata <- seurat_to_anndata(obj)
saveRDS(anndata_to_seurat(adata), "{paths['seurat_back.rds']}")
adata$write_h5ad("{paths['seurat_ad.h5ad']}")
""")
    return paths


def test_sce_anndata_roundtrip_with_the_package(r: Any, package_conversions: dict[str, Path]) -> None:
    r.globalenv["sce"] = r.r["readRDS"](str(package_conversions["sce.rds"]))
    r.globalenv["back"] = r.r["readRDS"](str(package_conversions["sce_back.rds"]))
    # the package's way back is exact: every assay, colData, rowData, reducedDims, names
    r_true(r, "identical(assays(back), assays(sce))")
    r_true(r, "identical(colData(back), colData(sce))")
    r_true(r, "identical(rowData(back), rowData(sce))")
    r_true(r, "identical(reducedDims(back), reducedDims(sce))")
    r_true(r, "identical(dimnames(back), dimnames(sce))")
    r_true(r, "is.ordered(back$ord) && identical(levels(back$ct), c('b', 'a', 'unused'))")
    # the package's AnnData (read from disk here) holds what anndata2ri's does, and more exactly
    mine = ad.read_h5ad(package_conversions["sce_ad.h5ad"])
    _python_side_checks(mine, "PCA")
    theirs = from_r(r, "sce")
    assert (mine.X != theirs.X).nnz == 0
    for key in ("logcounts", "icounts"):
        assert np.array_equal(mine.layers[key], theirs.layers[key])
    np.testing.assert_array_equal(mine.obsm["PCA"], theirs.obsm["X_pca"])
    assert mine.uns["sccbgm_r"]["X_name"] == "counts"
    assert list(mine.uns["sccbgm_r"]["obsm_colnames"]["PCA"]) == ["PC1", "PC2", "PC3"]
    assert mine.obs["ok"].dtype == "boolean" and mine.obs["ok"].isna().sum() == 1
    assert mine.obs["ord"].cat.ordered
    for column in ("ct", "dose", "n"):
        pd.testing.assert_series_equal(mine.obs[column], theirs.obs[column], check_dtype=False, check_index_type=False)


def _python_made_anndata() -> ad.AnnData:
    rng = np.random.default_rng(5)
    n, g = 15, 7
    counts = rng.poisson(2.0, (n, g)).astype(np.float64)
    obs = pd.DataFrame(
        {
            "stim": pd.Categorical(["ctrl", "stim", None] * 5, categories=["ctrl", "stim", "never"]),
            "dose": np.r_[rng.random(n - 1), np.nan],
            "flag": np.arange(n) % 2 == 0,
            "maybe": pd.array([True, None, False] * 5, dtype="boolean"),
            "count": np.arange(n, dtype=np.int32),
            "nullable": pd.array([1, None, 3] * 5, dtype="Int32"),
        },
        index=[f"c{i}" for i in range(n)],
    )
    var = pd.DataFrame({"length": rng.random(g)}, index=[f"g{j}" for j in range(g)])
    return ad.AnnData(
        X=sp.csr_matrix(counts), obs=obs, var=var,
        layers={"lognorm": np.log1p(counts), "int": counts.astype(np.int32)},
        obsm={"X_pca": rng.normal(size=(n, 3))},
    )


def test_anndata_sce_roundtrip_from_python_with_the_package(
    r: Any, package_conversions: dict[str, Path]
) -> None:
    orig = _python_made_anndata()
    back = ad.read_h5ad(package_conversions["py_back.h5ad"])
    assert list(back.obs_names) == list(orig.obs_names)
    assert list(back.var_names) == list(orig.var_names)
    assert sp.issparse(back.X) and (back.X != orig.X).nnz == 0
    for key in orig.layers:
        assert back.layers[key].dtype == orig.layers[key].dtype
        np.testing.assert_array_equal(back.layers[key], orig.layers[key])
    pd.testing.assert_frame_equal(back.obs, orig.obs, check_index_type=False)
    pd.testing.assert_frame_equal(back.var, orig.var, check_index_type=False)
    np.testing.assert_array_equal(back.obsm["X_pca"], orig.obsm["X_pca"])
    # the SCE in between, as R sees it
    r.globalenv["from_py"] = r.r["readRDS"](str(package_conversions["py_sce.rds"]))
    r_true(r, "identical(levels(from_py$stim), c('ctrl', 'stim', 'never'))")
    r_true(r, "identical(is.na(from_py$stim), rep(c(FALSE, FALSE, TRUE), 5))")
    r_true(r, "is.logical(from_py$flag) && !anyNA(from_py$flag)")
    r_true(r, "is.logical(from_py$maybe) && identical(which(is.na(from_py$maybe)), seq(2L, 14L, 3L))")
    r_true(r, "is.integer(from_py$nullable) && sum(is.na(from_py$nullable)) == 5")
    r_true(r, "is.integer(assay(from_py, 'int')) && is(assay(from_py, 'X'), 'dgCMatrix')")
    # and anndata2ri reads that SCE into the same numbers
    theirs = from_r(r, "from_py")
    assert (theirs.X != orig.X).nnz == 0
    np.testing.assert_array_equal(theirs.layers["lognorm"], orig.layers["lognorm"])
    pd.testing.assert_series_equal(theirs.obs["stim"], orig.obs["stim"], check_index_type=False)


def test_seurat_anndata_roundtrip(r: Any, package_conversions: dict[str, Path]) -> None:
    # R side: Seurat -> AnnData -> Seurat keeps counts, data, meta.data, embeddings
    r.globalenv["obj"] = r.r("SeuratObject::pbmc_small")
    r.globalenv["back"] = r.r["readRDS"](str(package_conversions["seurat_back.rds"]))
    get = ("function(o, layer) if (packageVersion('SeuratObject') >= '5.0.0') "
           "SeuratObject::LayerData(o, layer = layer) else SeuratObject::GetAssayData(o, slot = layer)")
    for layer in ("counts", "data"):
        r_true(r, f"identical(({get})(back, '{layer}'), ({get})(obj, '{layer}'))")
    r_true(r, "identical(back[[]], obj[[]])")
    for red in ("pca", "tsne"):
        r_true(r, f"identical(Embeddings(back, '{red}'), Embeddings(obj, '{red}'))")
    # Python side: the package's AnnData equals anndata2ri's view of Seurat's own SCE export
    mine = ad.read_h5ad(package_conversions["seurat_ad.h5ad"])
    theirs = from_r(r, "suppressMessages(Seurat::as.SingleCellExperiment(obj))")
    assert list(mine.obs_names) == list(theirs.obs_names)
    assert list(mine.var_names) == list(theirs.var_names)
    assert mine.uns["sccbgm_r"]["X_name"] == "counts"
    assert (sp.csr_matrix(mine.X) != sp.csr_matrix(theirs.X)).nnz == 0
    np.testing.assert_allclose(_dense(mine.layers["data"]), _dense(theirs.layers["logcounts"]), rtol=0)
    np.testing.assert_array_equal(mine.obsm["pca"], theirs.obsm["X_pca"])
    np.testing.assert_array_equal(mine.obsm["tsne"], theirs.obsm["X_tsne"])
    for column in ("nCount_RNA", "nFeature_RNA", "groups", "RNA_snn_res.1"):
        pd.testing.assert_series_equal(mine.obs[column], theirs.obs[column], check_dtype=False,
                                       check_categorical=False, check_index_type=False)
