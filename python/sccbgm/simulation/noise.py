"""Noisy concept annotations (paper appendix C.4): missing, irrelevant, incorrect, duplicate.

Only the concept columns of ``obs`` change; counts, the other obs columns and the ground truth
in ``uns["simulation"]`` (used by :func:`~sccbgm.simulation.simulate_counterfactual`) stay as they
were. The paper corrupts 1 or 3 concepts and never the intervened one (``protect``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np

from sccbgm.errors import SCCBGMError
from sccbgm.simulation.process import UNS_KEY

CorruptionKind = Literal["missing", "irrelevant", "incorrect", "duplicate"]
CORRUPTION_KINDS: tuple[str, ...] = ("missing", "irrelevant", "incorrect", "duplicate")
IRRELEVANT_ON_RATE = 0.5


def _current_concepts(adata: ad.AnnData, concepts: Sequence[str] | None) -> list[str]:
    if concepts is None:
        sim = adata.uns.get(UNS_KEY)
        if sim is None or "concept_names" not in sim:
            raise SCCBGMError(
                "adata has no uns['simulation']['concept_names']; pass `concepts=` (the concept "
                "columns of adata.obs) explicitly."
            )
        return [str(n) for n in np.asarray(sim["concept_names"]) if str(n) in adata.obs.columns]
    if isinstance(concepts, str):
        concepts = [concepts]
    names = [str(n) for n in concepts]
    missing = [n for n in names if n not in adata.obs.columns]
    if missing:
        raise SCCBGMError(f"concept column(s) {missing} not found in adata.obs.")
    if len(set(names)) != len(names):
        raise SCCBGMError(f"`concepts` names a column twice: {names}.")
    return names


def _fresh_name(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def corrupt_concepts(
    adata: ad.AnnData,
    kind: CorruptionKind,
    level: int,
    *,
    protect: Sequence[str] = (),
    p_flip: float = 0.2,
    seed: int = 0,
    concepts: Sequence[str] | None = None,
) -> tuple[ad.AnnData, list[str]]:
    """A copy of ``adata`` with noisy concept annotations (C.4), and its concept column names.

    Args:
        adata: simulated data (not modified).
        kind: ``"missing"`` drops ``level`` randomly chosen concept columns;
            ``"irrelevant"`` appends ``level`` columns ``irrelevant_0``, ... of independent
            Bernoulli(0.5) on/off values; ``"incorrect"`` picks ``level`` columns and flips each
            of their entries (0 <-> 1) independently with probability ``p_flip``;
            ``"duplicate"`` appends a copy of each of ``level`` chosen columns, named
            ``"<name>_dup"``.
        level: number of concepts corrupted (paper: 1 or 3); 0 returns an unchanged copy.
        protect: concept columns never dropped, flipped or duplicated (the intervened concept).
        p_flip: per-entry flip probability p_noise for ``"incorrect"``. The paper gives no value
            ("a certain percentage"); the default 0.2 is this package's choice.
        seed: seed of the column choice and the random values.
        concepts: the current concept columns; default: the simulated concepts
            (``uns["simulation"]["concept_names"]``) present in ``obs``.

    Returns:
        (corrupted copy, concept column names to train on, in order: kept originals, then any
        added columns). ``uns["concept_corruption"]`` records kind, level, p_flip, seed and the
        affected columns.
    """
    if kind not in CORRUPTION_KINDS:
        raise SCCBGMError(f"unknown corruption kind {kind!r}; choose one of {list(CORRUPTION_KINDS)}.")
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise SCCBGMError(f"level must be a non-negative integer (paper: 1 or 3), got {level!r}.")
    if not (0.0 <= float(p_flip) <= 1.0):
        raise SCCBGMError(f"p_flip must be a probability in [0, 1], got {p_flip!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SCCBGMError(f"seed must be a non-negative integer, got {seed!r}.")
    names = _current_concepts(adata, concepts)
    protected = [protect] if isinstance(protect, str) else [str(p) for p in protect]
    missing = [p for p in protected if p not in names]
    if missing:
        raise SCCBGMError(
            f"protected concept(s) {missing} are not among the concept columns {names}."
        )
    candidates = [n for n in names if n not in protected]
    level = int(level)
    if kind != "irrelevant" and level > len(candidates):
        raise SCCBGMError(
            f"level {level} exceeds the {len(candidates)} unprotected concept column(s) "
            f"available for {kind!r} corruption ({candidates})."
        )

    rng = np.random.default_rng(seed)
    out = adata.copy()
    obs = out.obs
    new_names = list(names)
    affected: list[str] = []
    if kind == "irrelevant":
        taken = set(obs.columns)
        for i in range(level):
            name = _fresh_name(f"irrelevant_{i}", taken)
            obs[name] = (rng.random(out.n_obs) < IRRELEVANT_ON_RATE).astype(np.int64)
            new_names.append(name)
            affected.append(name)
    elif level:
        chosen = sorted(rng.choice(len(candidates), size=level, replace=False))
        affected = [candidates[i] for i in chosen]
        if kind == "missing":
            obs.drop(columns=affected, inplace=True)
            new_names = [n for n in names if n not in affected]
        elif kind == "incorrect":
            for name in affected:
                values = obs[name].to_numpy()
                if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
                    raise SCCBGMError(f"column {name!r} is not a 0/1 concept; cannot flip it.")
                flip = rng.random(out.n_obs) < p_flip
                obs[name] = np.where(flip, values == 0, values != 0).astype(values.dtype)
        else:
            taken = set(obs.columns)
            for name in affected:
                copy_name = _fresh_name(f"{name}_dup", taken)
                obs[copy_name] = obs[name].to_numpy().copy()
                new_names.append(copy_name)
    out.uns["concept_corruption"] = {
        "kind": kind,
        "level": level,
        "p_flip": float(p_flip),
        "seed": int(seed),
        "columns": np.array(affected, dtype=str),
    }
    return out, new_names
