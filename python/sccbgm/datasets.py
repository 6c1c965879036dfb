"""Prepared real data sets: where they live, the held-out tasks JSON, and cell selection.

The scripts in ``data_scripts/`` (``prepare_kang.py``, ``prepare_cui.py``, ``prepare_nault.py``)
write one ``<name>.h5ad`` and one ``<name>_tasks.json`` per data set. The tasks file follows the
schema ``sccbgm.tasks/1``::

    {
      "schema": "sccbgm.tasks/1",
      "dataset": "kang2018",
      "h5ad": "kang2018.h5ad",            # path relative to the JSON file
      "description": "...",
      "source": {...},                     # provenance: file, sha256, script, settings
      "concepts": [                        # obs columns to train on as concepts
        {"name": "stim", "kind": "binary", "description": "..."},
        {"name": "cell_type", "kind": "categorical", "categories": ["B", "CD4T", ...]},
        {"name": "dose", "kind": "continuous", "range": [0, 1], "transform": "..."}
      ],
      "tasks": [
        {
          "name": "kang_CD4T_stim",
          "kind": "cell_type",
          "description": "...",
          "holdout": {"cell_type": "CD4T", "condition": "stim"},
          "source":  {"cell_type": "CD4T", "condition": "ctrl"},
          "set":     {"stim": 1},
          "target":  {"cell_type": "CD4T", "condition": "stim"},
          "group_key": "subtype",
          "groups": ["CD4T 0", "CD4T 1"],
          "n_cells": {"holdout": 356, "source": 278, "target": 356}
        }
      ]
    }

How a benchmark consumes one task (generically, for any data set):

* **selector** -- ``{obs column: value or [values]}``; a cell matches when every listed column
  equals the value (or one of the list). Numeric columns compare numerically, others as strings
  (:func:`sccbgm.access.match_obs`).
* **training cells** -- every cell *not* matched by ``holdout``;
* **cells to edit** -- the cells matched by ``source`` (they stay in the training data);
* **edit** -- give the source cells the concept values in ``set`` (keys are concept columns of
  ``concepts``; values in the column's own units), all other concepts unchanged;
* **target** -- the real cells matched by ``target`` (always a subset of ``holdout``), the
  population the edited cells should resemble;
* **groups** -- when ``group_key`` is not null, also compare per group ``g`` in ``groups``: the
  edited ``source`` cells with ``obs[group_key] == g`` against the ``target`` cells of group ``g``
  (e.g. Kang subtypes: the counterfactual of a control subtype is the same subtype stimulated).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sccbgm.access import match_obs
from sccbgm.errors import SCCBGMError

select_cells = match_obs  # the name the tasks files and data_scripts use

SCHEMA = "sccbgm.tasks/1"
CONCEPT_KINDS = ("binary", "categorical", "continuous")
TASK_KEYS = ("name", "kind", "description", "holdout", "source", "set", "target", "group_key")
KANG_SUBSET_FILE = "kang2018_pbmc_ifnb_scgen_subset.h5ad"


def repo_root() -> Path:
    """The project root (the folder holding ``python/``)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$SCCBGM_SHARED_DATA`` if set, else ``<repo root>/../shared/data`` (may not exist)."""
    env = os.environ.get("SCCBGM_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return repo_root().parent / "shared" / "data"


def load_kang_subset() -> Any:
    """The shared Kang et al. subset (1,975 PBMCs x 6,998 genes, integer counts in ``X``)."""
    import anndata as ad

    path = shared_data_dir() / KANG_SUBSET_FILE
    if not path.is_file():
        raise SCCBGMError(
            f"{path} not found: the shared data folder is absent. Set SCCBGM_SHARED_DATA to the folder "
            f"holding {KANG_SUBSET_FILE}, or prepare the full data with data_scripts/prepare_kang.py."
        )
    return ad.read_h5ad(path)


def _check_concepts(concepts: Any) -> list[str]:
    if not isinstance(concepts, list) or not concepts:
        raise SCCBGMError("tasks file: 'concepts' must be a non-empty list.")
    names = []
    for c in concepts:
        if not isinstance(c, Mapping) or "name" not in c or c.get("kind") not in CONCEPT_KINDS:
            raise SCCBGMError(
                f"tasks file: each concept needs a 'name' and a 'kind' in {CONCEPT_KINDS}; got {c!r}."
            )
        names.append(c["name"])
    if len(set(names)) != len(names):
        raise SCCBGMError(f"tasks file: concept names repeat: {names}.")
    return names


def validate_tasks(spec: Mapping[str, Any], obs: pd.DataFrame | Any | None = None) -> list[dict[str, int]]:
    """Check a tasks document against the schema (and against ``obs`` when given).

    With ``obs``, every selector must match at least one cell, the target must lie inside the
    held-out cells, and every concept column must exist. Returns per-task cell counts.
    """
    if spec.get("schema") != SCHEMA:
        raise SCCBGMError(f"tasks file: 'schema' must be {SCHEMA!r}, got {spec.get('schema')!r}.")
    for key in ("dataset", "h5ad", "concepts", "tasks"):
        if key not in spec:
            raise SCCBGMError(f"tasks file: missing top-level key {key!r}.")
    concept_names = _check_concepts(spec["concepts"])
    tasks = spec["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise SCCBGMError("tasks file: 'tasks' must be a non-empty list.")
    if obs is not None and not isinstance(obs, pd.DataFrame):
        obs = obs.obs
    if obs is not None:
        missing = [c for c in concept_names if c not in obs.columns]
        if missing:
            raise SCCBGMError(f"tasks file: concept column(s) {missing} are not in obs.")
    seen: set[str] = set()
    counts = []
    for task in tasks:
        absent = [k for k in TASK_KEYS if k not in task]
        if absent:
            raise SCCBGMError(f"task {task.get('name', '?')!r}: missing key(s) {absent}.")
        name = task["name"]
        if name in seen:
            raise SCCBGMError(f"task name {name!r} is used twice.")
        seen.add(name)
        if not isinstance(task["set"], Mapping) or not task["set"]:
            raise SCCBGMError(f"task {name!r}: 'set' must be a non-empty mapping.")
        unknown = [k for k in task["set"] if k not in concept_names]
        if unknown:
            raise SCCBGMError(f"task {name!r}: 'set' names non-concept column(s) {unknown}.")
        if obs is None:
            continue
        masks = {k: match_obs(obs, task[k]) for k in ("holdout", "source", "target")}
        for k, m in masks.items():
            if not m.any():
                raise SCCBGMError(f"task {name!r}: the {k} selector matches no cell.")
        if (masks["target"] & ~masks["holdout"]).any():
            raise SCCBGMError(f"task {name!r}: some target cells are not held out of training.")
        group_key = task["group_key"]
        if group_key is not None and group_key not in obs.columns:
            raise SCCBGMError(f"task {name!r}: group_key {group_key!r} is not in obs.")
        counts.append({k: int(m.sum()) for k, m in masks.items()})
    return counts


def load_tasks(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and schema-check a tasks JSON written by a ``data_scripts/prepare_*.py`` script."""
    path = Path(path)
    if not path.is_file():
        raise SCCBGMError(f"tasks file {path} not found.")
    with path.open() as fh:
        spec = json.load(fh)
    validate_tasks(spec)
    return spec


def read_prepared(tasks_path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The prepared AnnData and its tasks document, checked against each other."""
    import anndata as ad

    tasks_path = Path(tasks_path)
    spec = load_tasks(tasks_path)
    h5ad = tasks_path.parent / spec["h5ad"]
    if not h5ad.is_file():
        raise SCCBGMError(f"{h5ad} (named by {tasks_path}) not found.")
    adata = ad.read_h5ad(h5ad)
    validate_tasks(spec, adata.obs)
    return adata, spec
