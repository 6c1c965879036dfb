"""Peer methods (biolord, CINEMA-OT, scGen, CPA, CellFlow) in separate virtual environments,
created on demand.

The peers are never dependencies of sccbgm: the bench installs them into their own venvs (they
need numpy 2 / other scvi-tools versions than the main environment, whose numpy < 2 pin comes
from R's reticulate) and runs :mod:`sccbgm.bench.peer_worker` there as a sibling process that
exchanges h5ad files with the bench, on the same split, cells and metrics as our models.

Environments (``--peers-venv DIR``, default ``$SCCBGM_PEERS_VENV`` or
``~/.cache/sccbgm/venv-peers``; scGen, CPA and CellFlow get ``DIR-scgen``, ``DIR-cpa``,
``DIR-cellflow``):

* ``main``: biolord 0.0.3 and CINEMA-OT 0.0.5 with today's scvi-tools (measured to import);
* ``scgen``: scGen 2.1.0, which imports ``scvi._compat.Literal`` and ``LossRecorder`` (gone or
  raising from scvi-tools 0.20 on), so it gets scvi-tools 0.19.0 and the era's jax / anndata /
  lightning pins listed in :data:`ENVIRONMENTS`.
* ``cpa``: cpa-tools 0.8.8, whose releases 0.8.2-0.8.8 declare Python < 3.11 (on 3.11 pip offers
  only 0.8.1, which needs torch < 2), so this venv is built from a Python 3.10 interpreter found
  by :func:`find_python` (PATH, pyenv, uv); a plain ``pip install cpa-tools`` stalls in
  dependency resolution, so the era's set is pinned (torch 2.0.1 -- the PyPI wheel is the CUDA
  build, about 2.5 GB with its nvidia-* wheels; PyPI has no CPU-only 2.0.1 wheel), then ray /
  rdkit (imported by ``cpa``; pyarrow 14, as ray 2.9 needs ``pa.PyExtensionType``), then
  cpa-tools with ``--no-deps``.
* ``cellflow``: cellflow-tools 0.0.9 (JAX on CPU) with the set pip resolved on Python 3.11.

The main and scGen environments use the CPU torch wheel pin of the main environment. If an environment cannot be built or a
peer fails, :func:`run_peer` returns the reason, and the report prints it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sccbgm.errors import SCCBGMError

PEERS = ("biolord", "cinemaot", "scgen", "cpa", "cellflow")
LABELS = {"biolord": "biolord", "cinemaot": "CINEMA-OT", "scgen": "scGen", "cpa": "CPA", "cellflow": "CellFlow"}
TORCH_PIN = "torch==2.13.0"
PIP_PIN = "pip==26.3"
ENVIRONMENTS: dict[str, list[str]] = {
    "main": [TORCH_PIN, "biolord==0.0.3", "cinemaot==0.0.5"],
    # scGen 2.1.0 imports scvi._compat.Literal / LossRecorder (scvi-tools <= 0.19); these pins are
    # the set measured to import and train on Python 3.11 with the CPU torch wheel.
    "scgen": [TORCH_PIN, "scgen==2.1.0", "scvi-tools==0.19.0", "pytorch-lightning==1.7.7",
              "torchmetrics==0.11.4", "anndata==0.9.2", "mudata==0.2.3", "scanpy==1.9.8", "numpy==1.26.4", "pandas==2.1.4",
              "scipy==1.11.4", "jax==0.4.23", "jaxlib==0.4.23", "flax==0.7.5", "optax==0.1.7",
              "chex==0.1.85", "orbax-checkpoint==0.4.4", "numpyro==0.13.2", "setuptools<81", "requests"],
    "cpa": ["torch==2.0.1", "scvi-tools==0.20.3", "pytorch-lightning==1.9.5", "lightning==2.2.5", "anndata==0.9.2",
            "scanpy==1.9.8", "numpy==1.23.5", "scipy==1.12.0", "pandas==2.1.4", "jax==0.4.23", "jaxlib==0.4.23",
            "flax==0.7.5", "optax==0.1.7", "chex==0.1.8"],
    "cellflow": ["cellflow-tools==0.0.9", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
                 "ott-jax==0.6.0", "diffrax==0.7.2", "numpy==2.4.6", "scipy==1.15.3", "scikit-learn==1.5.1",
                 "anndata==0.12.19", "scanpy==1.11.5", "pandas==2.3.3", "requests"],
}
"""The pinned requirement set of each environment (the first ``pip install``)."""
FOLLOW_UP: dict[str, list[list[str]]] = {
    "cpa": [["ray[tune]==2.9.3", "pyarrow==14.0.2", "rdkit==2023.9.5", "seaborn==0.13.2", "adjustText==1.1.1"],
            ["--no-deps", "cpa-tools==0.8.8"]],
}
"""Further ``pip install`` steps run after :data:`ENVIRONMENTS` (each resolved on its own)."""
PYTHON_VERSION = {"cpa": "3.10"}
"""Environments that need a given Python (``major.minor``); others use the running one."""
PEER_ENVIRONMENT = {"biolord": "main", "cinemaot": "main", "scgen": "scgen", "cpa": "cpa", "cellflow": "cellflow"}
IMPORTS = {"biolord": "biolord", "cinemaot": "cinemaot", "scgen": "scgen", "cpa": "cpa", "cellflow": "cellflow"}
CELLFLOW_ITERATIONS_PER_EPOCH = 20
"""CellFlow trains for iterations, not epochs: a shortened run of ``epochs`` takes this many
iterations per epoch (its tutorial: 500,000 iterations)."""


@dataclass
class PeerResult:
    """A peer's prediction (n, G) for the intervene cells, or None with the reason."""

    name: str
    prediction: np.ndarray | None
    seconds: float
    status: str


def default_venv() -> Path:
    """``$SCCBGM_PEERS_VENV`` or ``~/.cache/sccbgm/venv-peers`` (outside the repository)."""
    env = os.environ.get("SCCBGM_PEERS_VENV")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sccbgm" / "venv-peers"


def venv_path(root: Path, environment: str) -> Path:
    return Path(root) if environment == "main" else Path(f"{root}-{environment}")


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _base_python() -> str:
    """The interpreter to create venvs from (the base of the running venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def find_python(version: str) -> str | None:
    """A Python ``version`` ("3.10") interpreter: on PATH, under pyenv or uv, else None."""
    import glob
    import shutil

    home = Path.home()
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(home / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR", str(home / ".local/share/uv/python"))
    candidates += sorted(glob.glob(f"{uv_dir}/cpython-{version}.*/bin/python{version}"), reverse=True)
    for exe in candidates:
        if not exe or not Path(exe).exists():
            continue
        try:
            out = subprocess.run([exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None


def ensure_environment(
    root: Path, environment: str, *, install: bool = True, log: Callable[[str], None] = print
) -> tuple[Path | None, str]:
    """(python of the peers venv, "") when it exists with the pinned packages, else (None, why).

    With ``install`` a missing or outdated venv is created and filled with pip (minutes, once);
    a stamp file records the requirement set.
    """
    venv = venv_path(root, environment)
    reqs = ENVIRONMENTS[environment]
    steps = [reqs, *FOLLOW_UP.get(environment, [])]
    text = "\n".join(reqs) + "".join("\n--\n" + " ".join(step) for step in steps[1:])
    stamp = hashlib.sha256(text.encode()).hexdigest()[:16]
    stamp_file = venv / ".sccbgm-peers-stamp"
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp and _python(venv).exists():
        return _python(venv), ""
    if not install:
        return None, f"peer environment {venv} is not built (run the bench with --install-peers)"
    base = _base_python()
    if environment in PYTHON_VERSION:
        found = find_python(PYTHON_VERSION[environment])
        if found is None:
            return None, (f"no Python {PYTHON_VERSION[environment]} interpreter found (PATH, pyenv, uv); "
                          f"{environment} needs one")
        base = found
    try:
        if not _python(venv).exists():
            log(f"creating peer environment {venv} from {base}")
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
            # an old interpreter's bundled pip (23.0 on 3.10) downloads every candidate wheel while
            # resolving (no PEP 658 metadata): minutes of backtracking; a current pip first
            subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q", PIP_PIN], capture_output=True,
                           text=True, timeout=600)
        for step in steps:
            log(f"installing {' '.join(step)} into {venv} (once; a few minutes)")
            proc = subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q", *step],
                                  capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                tail = [ln for ln in proc.stderr.splitlines() if "is ignored" not in ln][-5:]
                return None, f"pip install {' '.join(step)} failed: " + " | ".join(tail)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"could not build peer environment {venv}: {err}"
    stamp_file.write_text(stamp)
    return _python(venv), ""


def check_import(python: Path, peer: str) -> str:
    """"" when ``peer`` imports in that environment, else the last line of the error."""
    proc = subprocess.run([str(python), "-c", f"import {IMPORTS[peer]}"], capture_output=True, text=True,
                          timeout=600, env=_worker_env())
    if proc.returncode == 0:
        return ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"import {IMPORTS[peer]} failed"


def _worker_env() -> dict[str, str]:
    """Environment of a peer process: warnings off, JAX on the CPU."""
    return dict(os.environ, PYTHONWARNINGS="ignore", JAX_PLATFORMS="cpu")


def write_job_data(td: Any, path: Path) -> None:
    """The h5ad a peer reads: training + intervene cells, log-normalised, obs with the concept
    columns, ``cell_type`` and ``bench_split``."""
    import anndata as ad
    import pandas as pd

    cols = list(dict.fromkeys([*td.concepts, td.task.concept]))
    obs = pd.concat([td.train.obs[cols + ["cell_type"]], td.intervene.obs[cols + ["cell_type"]]])
    obs["cell_type"] = obs["cell_type"].astype(str)
    obs["bench_split"] = ["train"] * td.train.n_obs + ["intervene"] * td.intervene.n_obs
    x = np.vstack([td.x_train, td.x_intervene]).astype(np.float32)
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=td.train.var_names.astype(str))).write_h5ad(path)


MAX_SCALE_RATIO = 10.0
"""A peer's cells may differ from the input's median library size (sum of expm1) by this factor."""


class PeerOutputError(SCCBGMError):
    """A peer's prediction cannot be matched to the cells, genes or scale it is scored against."""


def _median_library_size(x: np.ndarray) -> float:
    """Median over cells of sum_g expm1(x) (the target sum of log-normalised cells), log scale safe."""
    return float(np.median(np.expm1(np.clip(x, 0.0, 60.0)).sum(1)))


def align_prediction(pred: Any, td: Any) -> np.ndarray:
    """The rows / genes of a peer's output AnnData ``pred`` in the order of ``td.intervene``'s
    obs_names / ``td.train``'s var_names (the order of the truth they are scored against), as
    float64 (n, G), after checking it is on the log-normalised scale of the input.

    Raises :class:`PeerOutputError` when names are missing, duplicated or not the expected ones, or
    when the cells' median library size (sum of expm1) is more than :data:`MAX_SCALE_RATIO` from the
    input's (counts, or normalised values without the log).
    """
    import pandas as pd

    cells = pd.Index(td.intervene.obs_names.astype(str))
    genes = pd.Index(td.train.var_names.astype(str))
    got_cells, got_genes = pd.Index(pred.obs_names.astype(str)), pd.Index(pred.var_names.astype(str))
    for what, got, want in (("cells", got_cells, cells), ("genes", got_genes, genes)):
        if got.has_duplicates or len(got) != len(want) or not got.isin(want).all():
            missing = list(want.difference(got)[:3])
            raise PeerOutputError(
                f"the peer returned {len(got)} {what} that are not the {len(want)} expected ones "
                f"(e.g. missing {missing}, unexpected {list(got.difference(want)[:3])})")
    x = np.asarray(pred.X.toarray() if hasattr(pred.X, "toarray") else pred.X, dtype=np.float64)
    x = x[got_cells.get_indexer(cells)][:, got_genes.get_indexer(genes)]
    want_size, got_size = _median_library_size(np.asarray(td.x_intervene)), _median_library_size(x)
    if not (want_size / MAX_SCALE_RATIO <= got_size <= want_size * MAX_SCALE_RATIO):
        raise PeerOutputError(
            f"the peer's cells are not on the log-normalised scale of its input: median sum of expm1 per "
            f"cell {got_size:.4g} vs {want_size:.4g} (counts, or values without log1p?)")
    return x


def run_peer(
    peer: str,
    td: Any,
    *,
    root: Path | None = None,
    epochs: int | None = None,
    install: bool = True,
    timeout: float = 3600,
    workdir: Path | None = None,
    intervene_in_train: bool = False,
    python: Path | None = None,
    worker: Path | None = None,
    log: Callable[[str], None] = print,
) -> PeerResult:
    """Run ``peer`` on task data ``td`` (:class:`~sccbgm.bench.synthetic.TaskData` or any object
    with its ``task``, ``train``, ``intervene``, ``x_train``, ``x_intervene``, ``concepts`` and
    ``seed``) in its venv. ``intervene_in_train``: the cells to edit are training cells too (the
    control cells of the held-out type in ``bench real``). ``python`` / ``worker``: run this
    interpreter and worker script instead of the peer's venv and :mod:`peer_worker` (tests).

    The prediction is realigned to the cells and genes of the truth by name and checked to be on
    the input's scale (:func:`align_prediction`); a mismatch is reported as a failed peer.
    """
    if python is None:
        root = Path(root) if root is not None else default_venv()
        python, why = ensure_environment(root, PEER_ENVIRONMENT[peer], install=install, log=log)
        if python is None:
            return PeerResult(peer, None, 0.0, why)
        why = check_import(python, peer)
        if why:
            return PeerResult(peer, None, 0.0, f"`import {IMPORTS[peer]}` fails in {python.parent.parent}: {why}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp_path = Path(tmp).resolve()
        write_job_data(td, tmp_path / "data.h5ad")
        job = {"peer": peer, "data": str(tmp_path / "data.h5ad"), "concept": td.task.concept,
               "concepts": list(td.concepts), "cell_type": td.task.cell_type, "epochs": epochs,
               "seed": int(td.seed), "out": str(tmp_path / "pred.h5ad"), "status": str(tmp_path / "status.json"),
               "intervene_in_train": bool(intervene_in_train),
               "iterations": None if epochs is None else int(epochs) * CELLFLOW_ITERATIONS_PER_EPOCH}
        (tmp_path / "job.json").write_text(json.dumps(job))
        env = _worker_env()
        worker = Path(worker) if worker is not None else Path(__file__).with_name("peer_worker.py")
        try:
            # cwd = the job folder: CPA writes model.pt / history.csv / CPA_info.json into the cwd
            proc = subprocess.run([str(python), str(worker), str(tmp_path / "job.json")], capture_output=True,
                                  text=True, timeout=timeout, env=env, cwd=tmp_path)
        except subprocess.TimeoutExpired:
            return PeerResult(peer, None, time.perf_counter() - t0, f"timed out after {timeout:.0f} s")
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return PeerResult(peer, None, seconds, "failed: " + (lines[-1] if lines else f"exit {proc.returncode}"))
        import anndata as ad

        try:
            pred = align_prediction(ad.read_h5ad(tmp_path / "pred.h5ad"), td)
        except PeerOutputError as err:
            return PeerResult(peer, None, seconds, f"failed: {err}")
        info = json.loads((tmp_path / "status.json").read_text())
    if not np.isfinite(pred).all():
        return PeerResult(peer, None, seconds, f"ran ({info}) but returned NaN/inf values")
    log(f"  {LABELS.get(peer, peer)}: {seconds:.1f} s ({info})")
    return PeerResult(peer, pred, seconds, "ran: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds"))
