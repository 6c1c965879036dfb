"""Fixtures for the R <-> Python tests: an embedded R (rpy2 + anndata2ri) and fresh R processes
running the R package (``r-package/``, installed from the source tree into a temporary library).

Why two ways into R: rpy2 releases the GIL while R runs, and reticulate (1.28 on Debian 12;
newer versions not tried) calls Python without taking it back, so the R package -- which reaches Python through
reticulate -- aborts the process when it runs inside rpy2 ("PyThreadState_Get: the function must
be called with the GIL held"; rstudio/reticulate#208). The R package therefore runs in an
``Rscript`` child (its own R and its own embedded Python, the same interpreter as this one), and
objects cross as ``.rds`` files (written and read by rpy2 here) and ``.h5ad`` files.

When ``SCCBGM_PYTHON`` is set (``make test``, CI) a missing R, rpy2 or anndata2ri is a failure;
otherwise these tests are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SCCBGM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
R_PACKAGE = REPO / "r-package"


def _unavailable(reason: str) -> None:
    if os.environ.get("SCCBGM_PYTHON"):
        pytest.fail(f"SCCBGM_PYTHON is set (CI) but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def r() -> Any:
    """``rpy2.robjects`` with SingleCellExperiment and SeuratObject attached."""
    try:
        import anndata2ri  # noqa: F401
        import rpy2.robjects as ro
    except Exception as err:  # ImportError, or rpy2 failing to find / load libR
        _unavailable(f"rpy2 / anndata2ri cannot be used: {err}")
    ro.r("suppressPackageStartupMessages({library(SingleCellExperiment); library(SeuratObject)})")
    return ro


@pytest.fixture(scope="session")
def r_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The R package of this source tree, installed into a temporary library (always current)."""
    lib = tmp_path_factory.mktemp("rlib")
    try:
        done = subprocess.run(
            ["R", "CMD", "INSTALL", "--no-docs", "--no-html", "--no-multiarch", "--no-test-load",
             "-l", str(lib), str(R_PACKAGE)],
            capture_output=True, text=True, timeout=600,
        )
    except FileNotFoundError:
        _unavailable("R is not installed")
    if done.returncode != 0:
        pytest.fail(f"R CMD INSTALL r-package failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return lib


@pytest.fixture(scope="session")
def run_r(r_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Run R code in a fresh ``Rscript`` with the R package loaded and this Python as its Python;
    returns stdout, fails the test with R's output on an error."""
    workdir = tmp_path_factory.mktemp("rscript")

    def run(code: str) -> str:
        script = workdir / "script.R"
        script.write_text("suppressPackageStartupMessages(library(sccbgm))\n" + code)
        env = dict(os.environ)
        env["R_LIBS"] = os.pathsep.join([str(r_library)] + [p for p in [env.get("R_LIBS")] if p])
        env["RETICULATE_PYTHON"] = sys.executable
        env["SCCBGM_PYTHON"] = sys.executable
        done = subprocess.run(["Rscript", "--vanilla", str(script)], capture_output=True, text=True,
                              env=env, cwd=workdir, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"Rscript failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done.stdout

    return run


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("exchange")
