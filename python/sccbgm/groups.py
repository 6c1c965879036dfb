"""Group calibration of the count-space edit: each group's observed response, shrunk by
empirical Bayes (``sccbgm.fit(..., groupby=column)``).

A concept-bottleneck decoder shares its response to a concept across cell types; real responses
(and the simulator's ``interaction`` variant) differ by type. Where the training data hold cells
of a group g (a value of ``groupby``, e.g. a cell type) in both states a and b of a concept
column, that group's own response can be measured, and the edit a -> b of the group's cells is
pulled towards it, by how precisely it was measured. Per gene j, in log rate (normalised counts
m at the model's ``target_sum``, eps = :data:`sccbgm.editing.RATE_EPS`):

* observed response  y_gj = log((m_bgj + eps) / (m_agj + eps)), the group's mean normalised counts
  in state b and a, with sampling variance v_gj = s_b^2 / (n_b (m_b + eps)^2) + s_a^2 / (n_a
  (m_a + eps)^2) (delta method; s^2 the per-cell variances, n the cell counts);
* the model's response  f_gj = the same log ratio between the mean of its expected count edit
  a -> b of the group's state-a cells (at most :data:`MAX_CELLS`, a seeded subsample) and those
  cells' own mean;
* d_gj = y_gj - f_gj, what the model misses in group g. Over the G' eligible groups (at least
  :data:`MIN_CELLS` cells in each state), tau^2 = max(0, mean(d^2) - mean(v)) (pooled over groups
  and genes) is the spread of true group deviations from the model;
* the edit of a cell of group g from a to b adds w_gj d_gj to the model's log rate ratio, with
  w_gj = tau^2 / (tau^2 + v_gj) (every ensemble member's ratio, so the uncertainty layers are
  centred on the corrected edit). The correction's posterior sd sqrt(w_gj v_gj) is stored and
  summarised, not added to the interval: on the choose half that made the 90% interval cover
  0.94-0.99 of the exact counterfactuals (0.91-0.96 without it; docs/validation.md).

A group seen in only one state (a held-out type) has no response of its own, but what the model
misses in the measured groups may be common to them: d_gj = mu_j + eta_gj, with eta_gj (spread
tau_eta^2 across groups) the group's own part. From the G' >= :data:`MIN_POOLED_GROUPS` eligible
groups, tau_eta^2 = max(0, mean_j sum_g (d_gj - dbar_j)^2 / (G' - 1) - mean(v)) (dbar_j here the
plain mean), and per gene the weighted mean miss dbar_j = sum_g k_g d_gj, k_g proportional to the
group's precision 1 / (tau_eta^2 + vbar_g) (vbar_g its mean v over genes: a group measured on few
cells counts less; random-effects weights), has sampling variance s_j^2 = sum_g k_g^2 (tau_eta^2 +
v_gj) (k summing to 1); the spread of the common miss over genes is sigma_mu^2 = max(0,
mean(dbar^2) - mean(s^2)). Such a group's edit adds w_j dbar_j, w_j = sigma_mu^2 / (sigma_mu^2 +
s_j^2) (the "pooled" correction; stored sd sqrt(w_j s_j^2 + tau_eta^2), its own deviation being
unknown). Where the groups' misses are their own and unrelated (the simulator's
cell-type-specific variant) sigma_mu^2 is about 0 and the edit stays the model's; where the model
misses a response common to the groups (on Kang it reproduces about 60% of the mean interferon
response) the held-out group gets about half of the common miss. The mean over measured groups
is also weighted by how alike the groups are: the precision of group h times exp(-D_gh^2 /
(2 b^2)), D_gh the distance between the mean model inputs (PCs of the log-normalised expression)
of group g's and group h's state-a training cells; dbar_j, s_j^2, sigma_mu^2 and w_j as above
with these weights. The bandwidth b is chosen per concept edit by predicting each measured
group's miss from the others' (leave one group out, similarity weights only) over b in
:data:`POOLED_BANDWIDTHS` x the median distance between measured groups, and b = infinity (no
similarity weights), which is kept unless another predicts strictly better; a group without
state-a training cells gets no similarity weights. ``sigma_mu^2`` reported per concept edit
(``pooled_mu2``) is the one without similarity weights. A concept whose groups all respond as the
model predicts (tau^2 = 0, sigma_mu^2 = 0) leaves the edit unchanged. Concept columns with more
than :data:`MAX_STATES` values, continuous concepts and the ``groupby`` column itself are not
calibrated, and a group not in the training data keeps the model's edit. Chosen against a
per-gene tau^2 and full or half corrections on the choose half of ``sccbgm bench validate`` and
confirmed on the other half; the pooled correction likewise, against its full and half forms,
its similarity weights against the unweighted mean, and its precision weights against equal
ones (docs/validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sccbgm.access import dense_rows
from sccbgm.errors import SCCBGMError

MIN_CELLS = 5
"""Cells a group needs in each of the two states for its response to be measured."""
MAX_CELLS = 1000
"""At most this many state-a cells per group are edited to measure the model's response."""
MAX_STATES = 4
"""Concept columns with more values than this are not calibrated (pairs grow quadratically)."""
MIN_POOLED_GROUPS = 2
"""Eligible groups needed to estimate the pooled correction of the others (their spread needs two)."""
POOLED_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0)
"""Similarity-weight bandwidths tried for the pooled correction, in units of the median distance
between the measured groups (besides infinity: no similarity weights)."""
NONE, OWN, POOLED = 0, 1, 2
"""``GroupResponses.source`` codes: no correction, the group's own response, the pooled one."""


@dataclass
class GroupResponses:
    """Per-group corrections of the count-space edit (module docstring).

    ``pairs``: ``"column|a|b"`` keys (an edit of ``column`` from value a to value b, values as
    strings: "0"/"1" for a binary concept, the category otherwise); ``shift`` / ``sd``: float32
    (n_pairs, n_groups, n_genes), w d and sqrt(w v) in log rate (for a pooled correction w dbar and
    its sd, module docstring); zero where a group has no correction; ``n_cells``: (n_pairs,
    n_groups, 2) cells in state a and b; ``tau2``: per pair; ``source``: int8 (n_pairs, n_groups),
    :data:`OWN` (the group's own response), :data:`POOLED` (the common miss of the others) or
    :data:`NONE`; ``pooled_tau2`` / ``pooled_mu2``: per pair, tau_eta^2 and sigma_mu^2 (without
    similarity weights) of the pooled correction; ``pooled_bandwidth``: per pair, the similarity
    weights' bandwidth b (None: no similarity weights). Edits of several columns at
    once add their corrections.
    """

    groupby: str
    groups: list[str]
    pairs: list[str]
    shift: np.ndarray
    sd: np.ndarray
    n_cells: np.ndarray
    tau2: list[float] = field(default_factory=list)
    source: np.ndarray | None = None
    pooled_tau2: list[float] = field(default_factory=list)
    pooled_mu2: list[float] = field(default_factory=list)
    pooled_bandwidth: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.source is None:  # written before the pooled correction (format v3): own responses only
            self.source = np.where((self.n_cells >= MIN_CELLS).all(axis=2), OWN, NONE).astype(np.int8)
        n_pairs = len(self.pairs)
        self.pooled_tau2 = list(self.pooled_tau2) or [0.0] * n_pairs
        self.pooled_mu2 = list(self.pooled_mu2) or [0.0] * n_pairs
        self.pooled_bandwidth = list(self.pooled_bandwidth) or [None] * n_pairs

    @property
    def has_pooled(self) -> bool:
        """Whether any group gets the pooled correction (a reader must know it: format v4)."""
        return bool((self.source == POOLED).any())

    def header(self) -> dict[str, Any]:
        out = {"groupby": self.groupby, "groups": self.groups, "pairs": self.pairs,
               "n_cells": self.n_cells.tolist(), "tau2": self.tau2}
        if self.has_pooled:
            out.update(source=self.source.tolist(), pooled_tau2=self.pooled_tau2, pooled_mu2=self.pooled_mu2,
                       pooled_bandwidth=self.pooled_bandwidth)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"groups.shift": self.shift, "groups.sd": self.sd}

    @classmethod
    def from_saved(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> GroupResponses:
        shift, sd = np.asarray(arrays["groups.shift"], np.float32), np.asarray(arrays["groups.sd"], np.float32)
        n_pairs, n_groups = len(header["pairs"]), len(header["groups"])
        if shift.shape[:2] != (n_pairs, n_groups) or sd.shape != shift.shape:
            raise SCCBGMError("the group calibration arrays do not match its header; the file is corrupt.")
        source = None
        if "source" in header:
            source = np.asarray(header["source"], dtype=np.int8)
            if source.shape != (n_pairs, n_groups) or not np.isin(source, (NONE, OWN, POOLED)).all():
                raise SCCBGMError("the group calibration's sources do not match its header; the file is corrupt.")
        for key in ("tau2", "pooled_tau2", "pooled_mu2", "pooled_bandwidth"):
            if key in header and len(header[key]) != n_pairs:
                raise SCCBGMError(f"the group calibration's {key} does not match its pairs; the file is corrupt.")
        return cls(groupby=str(header["groupby"]), groups=[str(g) for g in header["groups"]],
                   pairs=[str(p) for p in header["pairs"]], shift=shift, sd=sd,
                   n_cells=np.asarray(header["n_cells"], dtype=np.int64).reshape(n_pairs, n_groups, 2),
                   tau2=[float(t) for t in header["tau2"]], source=source,
                   pooled_tau2=[float(t) for t in header.get("pooled_tau2", [])],
                   pooled_mu2=[float(t) for t in header.get("pooled_mu2", [])],
                   pooled_bandwidth=[None if b is None else float(b) for b in header.get("pooled_bandwidth", [])])

    def describe(self) -> list[str]:
        """One line per concept edit: which groups get their own response, which the pooled one
        (with sigma_mu^2), which none."""
        lines = []
        for p, key in enumerate(self.pairs):
            col, a, b = key.split("|")
            parts = []
            for code, what in ((OWN, "own response"), (POOLED, "pooled"), (NONE, "none")):
                names = [g for g, src in zip(self.groups, self.source[p], strict=True) if src == code]
                if names:
                    extra = ""
                    if code == POOLED:
                        weighted = "" if self.pooled_bandwidth[p] is None else ", weighted by similarity"
                        extra = f" (sigma_mu^2 {self.pooled_mu2[p]:.3g}{weighted})"
                    parts.append(f"{what} for {', '.join(names)}{extra}")
            lines.append(f"{col} {a} -> {b}: " + "; ".join(parts))
        return lines

    def summary(self) -> pd.DataFrame:
        """One row per (pair, group): cells in each state, where its correction comes from
        (``source``: "own", "pooled" or "none"), tau^2 (own) / sigma_mu^2 (pooled), the mean |shift|
        over genes (log rate; 0: the model's edit is kept) and the mean posterior sd of the
        correction."""
        names = {NONE: "none", OWN: "own", POOLED: "pooled"}
        rows = []
        for p, key in enumerate(self.pairs):
            col, a, b = key.split("|")
            for g, name in enumerate(self.groups):
                rows.append({"concept": col, "from": a, "to": b, "group": name,
                             "n_from": int(self.n_cells[p, g, 0]), "n_to": int(self.n_cells[p, g, 1]),
                             "source": names[int(self.source[p, g])], "tau2": self.tau2[p],
                             "pooled_mu2": self.pooled_mu2[p],
                             "mean_abs_shift": float(np.abs(self.shift[p, g]).mean()),
                             "mean_sd": float(self.sd[p, g].mean())})
        return pd.DataFrame(rows)


def concept_states(spec: Any, values: np.ndarray, mask: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
    """Calibrated concept columns -> (their values as strings, per-cell value index; -1 where the
    label is missing), read off a concept matrix and its mask (n, K) as
    :meth:`sccbgm.concepts.ConceptSpec.encode` (labels) or ``target_values`` (an edit) give them."""
    out = {}
    for col, sl in zip(spec.columns, spec.slices().values(), strict=True):
        if col.kind == "continuous":
            continue
        names = ["0", "1"] if col.kind == "binary" else [str(c) for c in col.categories]
        if len(names) > MAX_STATES:
            continue
        block = values[:, sl]
        idx = block[:, 0].round().astype(np.int64) if col.kind == "binary" else block.argmax(axis=1)
        out[col.name] = (names, np.where((mask[:, sl] > 0).all(axis=1), idx, -1))
    return out


def group_index(series: pd.Series, groups: list[str]) -> np.ndarray:
    """Index of each cell's group (its label as a string) in ``groups`` (-1: missing or unknown);
    one lookup per distinct label."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    lookup = {g: i for i, g in enumerate(groups)}
    table = np.array([lookup.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)  # last: missing
    return table[codes]


def check_groupby(groupby: Any, obs: pd.DataFrame, model: str, input_kind: str) -> None:
    """SCCBGMError unless ``groupby`` names an obs column and the model is a scCBGM on raw counts
    (the count-space edit the calibration corrects is its default)."""
    if not isinstance(groupby, str) or groupby not in obs:
        raise SCCBGMError(f"groupby must name an obs column; {groupby!r} is not one.")
    if model != "sccbgm" or input_kind != "counts":
        raise SCCBGMError(
            "groupby calibrates the default count-space edit of model='sccbgm' fitted on raw counts "
            f"(here: model={model!r} on {input_kind!r} values)."
        )


def fit_group_responses(model: Any, adata: Any, groupby: str, layer: str | None = None,
                        seed: int = 0) -> GroupResponses:
    """Measure each group's responses on the training cells and shrink them (module docstring)."""
    from sccbgm.editing import RATE_EPS

    check_groupby(groupby, adata.obs, model.name, model.transform.input_kind)
    column = adata.obs[groupby]
    groups = sorted({str(v) for v in column[column.notna()]})
    gidx = group_index(column, groups)
    labels, mask = model.spec.encode(adata.obs, require=False, unknown_as_missing=True)
    states = {k: v for k, v in concept_states(model.spec, labels, mask).items() if k != groupby}
    moments = _group_moments(model, adata, layer, states, gidx, len(groups))
    rng = np.random.default_rng(seed)
    pairs, shifts, sds, counts, tau2s, sources, pooled, bandwidths = [], [], [], [], [], [], [], []
    for k, (vals, idx) in states.items():
        for a in range(len(vals)):
            for b in range(len(vals)):
                n_a, n_b = moments[(k, a)][2], moments[(k, b)][2]
                eligible = np.flatnonzero((n_a >= MIN_CELLS) & (n_b >= MIN_CELLS))
                if a == b or eligible.size == 0:
                    continue
                d = np.zeros((len(groups), len(model.genes)))
                v = np.zeros_like(d)
                for g in eligible:
                    (m_a, var_a), (m_b, var_b) = (_mean_var(moments[(k, s)], g) for s in (a, b))
                    v[g] = var_b / (n_b[g] * (m_b + RATE_EPS) ** 2) + var_a / (n_a[g] * (m_a + RATE_EPS) ** 2)
                    cells = np.flatnonzero((idx == a) & (gidx == g))
                    if cells.size > MAX_CELLS:
                        cells = np.sort(rng.choice(cells, MAX_CELLS, replace=False))
                    before, after = _model_edit(model, adata, layer, cells, {k: _value(model, k, vals[b])})
                    d[g] = np.log((m_b + RATE_EPS) / (m_a + RATE_EPS)) - np.log(
                        (after.mean(0) + RATE_EPS) / (before.mean(0) + RATE_EPS))
                tau2 = max(0.0, float((d[eligible] ** 2).mean() - v[eligible].mean()))
                w = np.zeros_like(d)
                w[eligible] = tau2 / (tau2 + v[eligible]) if tau2 > 0 else 0.0
                shift, sd = w * d, np.sqrt(w * v)
                source = np.full(len(groups), NONE, dtype=np.int8)
                source[eligible] = OWN
                plain = pooled_correction(d[eligible], v[eligible])
                eta2, mu2 = plain[2], plain[3]
                profiles = _profiles(moments[(k, a)])
                bandwidth = pooled_bandwidth(profiles[eligible], d[eligible])
                for g in np.setdiff1d(np.arange(len(groups)), eligible):
                    common, common_sd, _, mu2_g = plain
                    if bandwidth is not None and not np.isnan(profiles[g]).any():
                        weights = similarity_weights(profiles[eligible], profiles[g], bandwidth)
                        common, common_sd, _, mu2_g = pooled_correction(d[eligible], v[eligible], weights)
                    if mu2_g > 0:
                        shift[g], sd[g], source[g] = common, common_sd, POOLED
                pairs.append(f"{k}|{vals[a]}|{vals[b]}")
                shifts.append(shift.astype(np.float32))
                sds.append(sd.astype(np.float32))
                counts.append(np.stack([n_a, n_b], axis=1))
                tau2s.append(tau2)
                sources.append(source)
                pooled.append((eta2, mu2))
                bandwidths.append(bandwidth)
    if not pairs:
        raise SCCBGMError(
            f"no group of {groupby!r} has at least {MIN_CELLS} training cells in two states of a concept, "
            "so no group response can be measured; fit without groupby."
        )
    return GroupResponses(groupby=groupby, groups=groups, pairs=pairs, shift=np.stack(shifts), sd=np.stack(sds),
                          n_cells=np.stack(counts).astype(np.int64), tau2=tau2s, source=np.stack(sources),
                          pooled_tau2=[e for e, _ in pooled], pooled_mu2=[m for _, m in pooled],
                          pooled_bandwidth=bandwidths)


def pooled_correction(d: np.ndarray, v: np.ndarray, weights: np.ndarray | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The common miss of the measured groups, shrunk, for a group without its own response.

    ``d`` / ``v``: (G', n_genes) misses d_gj and their sampling variances v_gj of the eligible
    groups; ``weights``: (G',) similarity weights of the measured groups (None: equal), times
    each group's precision 1 / (tau_eta^2 + vbar_g) (vbar_g its mean v over genes). Returns
    the correction w_j dbar_j and its sd sqrt(w_j s_j^2 + tau_eta^2) (n_genes,), tau_eta^2 and
    sigma_mu^2 (module docstring); all zero below :data:`MIN_POOLED_GROUPS` groups or where
    sigma_mu^2 = 0.
    """
    n = d.shape[0]
    zero = np.zeros(d.shape[1])
    if n < MIN_POOLED_GROUPS:
        return zero, zero, 0.0, 0.0
    eta2 = max(0.0, float(((d - d.mean(axis=0)) ** 2).sum(axis=0).mean() / (n - 1) - v.mean()))
    spread = eta2 + v.mean(axis=1)  # (G',) a group's miss variance about mu_j, over genes
    k = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    k = k / spread if (spread > 0).all() else k
    k = k / k.sum()
    dbar = k @ d
    s2 = k**2 @ (eta2 + v)
    mu2 = max(0.0, float((dbar**2).mean() - s2.mean()))
    if mu2 == 0.0:
        return zero, zero, eta2, 0.0
    w = mu2 / (mu2 + s2)
    return w * dbar, np.sqrt(w * s2 + eta2), eta2, mu2


def similarity_weights(profiles: np.ndarray, target: np.ndarray, bandwidth: float) -> np.ndarray:
    """exp(-D^2 / (2 b^2)) of each measured group's profile (G', F) to ``target`` (F,); equal
    weights where all of them underflow."""
    weights = np.exp(-((profiles - target) ** 2).sum(axis=1) / (2 * bandwidth**2))
    return weights if weights.sum() > 0 else np.ones(len(profiles))


def pooled_bandwidth(profiles: np.ndarray, d: np.ndarray) -> float | None:
    """The similarity weights' bandwidth that best predicts each measured group's miss from the
    others' (leave one group out, mean squared error over genes), over :data:`POOLED_BANDWIDTHS`
    x the median distance between the groups; None (no similarity weights) unless one predicts
    strictly better. ``profiles``: (G', F) mean model inputs; ``d``: (G', n_genes) misses."""
    n = d.shape[0]
    if n < 3:  # with two groups every bandwidth predicts one group by the other alike
        return None
    dist = np.sqrt(((profiles[:, None] - profiles[None]) ** 2).sum(axis=-1))
    median = float(np.median(dist[~np.eye(n, dtype=bool)]))
    if not median > 0:
        return None

    def loo_error(bandwidth: float | None) -> float:
        err = 0.0
        for h in range(n):
            others = np.delete(np.arange(n), h)
            k = np.ones(n - 1) if bandwidth is None else similarity_weights(profiles[others], profiles[h], bandwidth)
            err += float(((d[h] - k @ d[others] / k.sum()) ** 2).mean())
        return err

    best, best_err = None, loo_error(None)
    for q in POOLED_BANDWIDTHS:
        err = loo_error(q * median)
        if err < best_err:
            best, best_err = q * median, err
    return best


def _lognormalised(model: Any, raw: Any) -> np.ndarray:
    """Raw counts block -> the model's log-normalised values (n, G), dense float64."""
    return model.transform.lognorm(dense_rows(raw))


def _normalised(model: Any, raw: Any) -> np.ndarray:
    """Raw counts block -> counts normalised to the model's ``target_sum`` (n, G) float64."""
    return np.expm1(_lognormalised(model, raw))


Moments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _group_moments(model: Any, adata: Any, layer: str | None, states: dict[str, Any], gidx: np.ndarray,
                   n_groups: int) -> dict[tuple[str, int], Moments]:
    """One chunked pass: per (column, value index) the per-group sum and sum of squares of the
    normalised counts (n_groups, G), the cell counts (n_groups,) and the sum of the model inputs
    (n_groups, n_features)."""
    from sccbgm.editing import read_chunks

    n_genes, n_features = len(model.genes), model.transform.n_features
    acc = {(k, s): (np.zeros((n_groups, n_genes)), np.zeros((n_groups, n_genes)), np.zeros(n_groups, dtype=np.int64),
                    np.zeros((n_groups, n_features)))
           for k, (vals, _) in states.items() for s in range(len(vals))}
    for pos, raw in read_chunks(model, adata, np.arange(adata.n_obs), layer):
        lognorm = _lognormalised(model, raw)
        norm, features = np.expm1(lognorm), model.transform.features(lognorm)
        g_chunk = gidx[pos]
        for k, (vals, idx) in states.items():
            s_chunk = idx[pos]
            for s in range(len(vals)):
                sums, sq, n, fsum = acc[(k, s)]
                for g in np.unique(g_chunk[(s_chunk == s) & (g_chunk >= 0)]):
                    sel = (s_chunk == s) & (g_chunk == g)
                    sums[g] += norm[sel].sum(0)
                    sq[g] += (norm[sel] ** 2).sum(0)
                    n[g] += int(sel.sum())
                    fsum[g] += features[sel].sum(0, dtype=np.float64)
    return acc


def _mean_var(moments: Moments, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof 1) per gene of group g from its sums (see :func:`_group_moments`)."""
    sums, sq, n, _ = moments
    mean = sums[g] / n[g]
    return mean, np.clip(sq[g] - n[g] * mean**2, 0, None) / (n[g] - 1)


def _profiles(moments: Moments) -> np.ndarray:
    """Each group's mean model input in this state (n_groups, n_features); NaN without cells."""
    _, _, n, fsum = moments
    with np.errstate(invalid="ignore", divide="ignore"):
        return fsum / n[:, None]


def _model_edit(model: Any, adata: Any, layer: str | None, cells: np.ndarray,
                set_: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised counts of ``cells`` before and after the model's own expected count edit (n, G),
    each cell with its own rate ratio (not the shared response, whatever the model holds)."""
    from sccbgm.editing import edit_cells, read_chunks

    edited = edit_cells(model, adata, set_, cells=cells, layer=layer, count_edit="mean",
                        group_calibration=False, uncertainty=False, share_response=False)
    before = np.concatenate([_normalised(model, r) for _, r in read_chunks(model, adata, cells, layer)])
    return before, np.expm1(np.asarray(edited.X, dtype=np.float64))


def _value(model: Any, column: str, value: str) -> Any:
    """The ``set`` value of ``sccbgm.edit`` for state ``value`` of ``column``."""
    col = next(c for c in model.spec.columns if c.name == column)
    return int(value) if col.kind == "binary" else value


def edit_codes(responses: GroupResponses, spec: Any, groups: pd.Series, observed: np.ndarray,
               observed_mask: np.ndarray, target: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """Per edited cell and calibrated column, the flat index p * n_groups + g into ``shift`` /
    ``sd`` of its correction, or -1 (n_cells, n_columns). ``groups``: the cells' ``groupby``
    labels; ``observed`` / ``observed_mask``: their encoded concept labels; ``target`` /
    ``assigned``: the edit (n, K), ``assigned`` False where the cell keeps its value."""
    n_groups = len(responses.groups)
    gi = group_index(groups, responses.groups)
    eligible = responses.source != NONE  # (n_pairs, n_groups)
    now = concept_states(spec, observed, observed_mask)
    new = concept_states(spec, target, assigned)
    codes = np.full((len(gi), max(len(now), 1)), -1, dtype=np.int64)
    for j, (name, (vals, idx)) in enumerate(now.items()):
        pair = np.full((len(vals), len(vals)), -1, dtype=np.int64)
        for p, key in enumerate(responses.pairs):
            col, a, b = key.split("|")
            if col == name:
                pair[vals.index(a), vals.index(b)] = p
        to = new[name][1]
        ok = (idx >= 0) & (to >= 0) & (gi >= 0)
        p = np.where(ok, pair[np.maximum(idx, 0), np.maximum(to, 0)], -1)
        ok &= p >= 0
        ok[ok] = eligible[p[ok], gi[ok]]
        codes[ok, j] = p[ok] * n_groups + gi[ok]
    return codes


def unseen_labels(responses: GroupResponses, groups: pd.Series) -> np.ndarray:
    """bool (n,): cells whose ``groupby`` label is not among the fitted groups (missing: False)."""
    return (group_index(groups, responses.groups) < 0) & np.asarray(groups.notna())


def corrections(responses: GroupResponses, codes: np.ndarray) -> np.ndarray:
    """Summed shift (n, G), in log rate, of the corrections ``codes`` (see :func:`edit_codes`)."""
    flat = responses.shift.reshape(-1, responses.shift.shape[-1])
    shift = np.zeros((codes.shape[0], flat.shape[1]))
    for j in range(codes.shape[1]):
        ok = codes[:, j] >= 0
        if ok.any():
            shift[ok] += flat[codes[ok, j]]
    return shift
