"""Benchmark machinery: paper-style tables, ordering / floor statements, trivial editors, and one
tiny end-to-end synthetic run (no peers; peer environments are never built in tests)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sccbgm.bench import report
from sccbgm.bench.editors import mean_concept_shift, mean_shift_edit, no_edit


def _row_cells(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"row {label!r} not in table:\n{md}")


def test_mean_sem_formatting_by_hand():
    # values 1, 2, 3: mean 2, sd (ddof 1) 1, SEM 1/sqrt(3) = 0.577
    assert report.format_mean_sem(2.0, 1 / math.sqrt(3), 3) == "2 ± 0.58"
    assert report.format_mean_sem(0.1234567, 0.01, 1) == "0.1235"  # one run: mean only
    assert report.format_number(float("nan")) == "-"
    df = pd.DataFrame({"editor": ["A"] * 3 + ["B"] * 2, "dataset": "d1", "mse": [1.0, 2.0, 3.0, 0.5, 0.7]})
    md = report.paper_table(df, "editor", "dataset", "mse")
    assert _row_cells(md, "A")[1] == "2 ± 0.58"
    # B: mean 0.6, sd 0.1414, SEM 0.1 -> best, bolded
    assert _row_cells(md, "B")[1] == "**0.6 ± 0.1**"


def test_best_is_bolded_per_column_and_floors_marked():
    df = pd.DataFrame({
        "editor": ["no edit", "no edit", "model", "model", "other", "other"],
        "dataset": ["d1", "d2"] * 3,
        "mse": [0.5, 0.1, 0.2, 0.3, 0.4, 0.05],
    })
    md = report.paper_table(df, "editor", "dataset", "mse", mean_column=True)
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header == ["editor", "d1", "d2", "Mean"]
    floor = _row_cells(md, "no edit" + report.FLOOR_MARK)
    model = _row_cells(md, "model")
    other = _row_cells(md, "other")
    assert model[1] == "**0.2**" and floor[1] == "0.5" and other[1] == "0.4"  # d1: model best
    assert other[2] == "**0.05**" and model[2] == "0.3"  # d2: other best
    # row means: no edit 0.3, model 0.25, other 0.225 -> other bolded
    assert other[3] == "**0.225**" and model[3] == "0.25" and floor[3] == "0.3"


def test_multi_column_rows_keep_order():
    df = pd.DataFrame({"model": ["CBGM", "CBGM", "scCBGM"], "skip": ["✓", "✗", "✓"], "mse": [0.3, 0.2, 0.1]})
    md = report.paper_table(df, ["model", "skip"], None, "mse", row_order=[("scCBGM", "✓"), ("CBGM", "✗")],
                            mark_trivial=None)
    body = [line for line in md.splitlines()[2:]]
    assert body[0].startswith("| scCBGM | ✓ | **0.1** |")
    assert body[1].startswith("| CBGM | ✗ | 0.2 |")
    assert body[2].startswith("| CBGM | ✓ | 0.3 |")


def test_ordering_statement_on_constructed_table():
    expected = ["a", "b", "c"]  # paper: a best
    held = report.ordering_statement({"a": 1.0, "b": 2.0, "c": 3.0}, expected, metric="mse", table="T")
    assert "HOLDS" in held and "3/3 pairs" in held and "Reversed" not in held
    broken = report.ordering_statement({"a": 1.0, "b": 3.0, "c": 2.0, "z": 0.1}, expected, metric="mse", table="T")
    assert "does NOT hold" in broken and "2/3 pairs" in broken
    assert "Reversed pairs: b 3 vs c 2." in broken
    assert "Ours: a (1) < c (2) < b (3)." in broken  # entries not in the paper's list are ignored
    partial = report.ordering_statement({"a": 1.0, "c": 0.5}, expected, metric="mse", table="T")
    assert "0/1 pairs" in partial and "Not run here: b." in partial


def test_floor_statement():
    means = {"no edit": 0.5, "mean shift (other types)": 0.4, "m1": 0.3, "m2": 0.45}
    text = report.floor_statement(means, ["m1", "m2"], metric="mse")
    assert "Beat both: m1 (0.3)" in text
    assert "Do not beat the better floor (mean shift (other types)): m2 (0.45)" in text
    none = report.floor_statement({"no edit": 0.1, "m1": 0.3}, ["m1"], metric="mse")
    assert "No model beats both trivial editors" in none


def test_trivial_editors_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [2.0, 2.0], [5.0, 5.0], [9.0, 9.0]])
    obs = pd.DataFrame({"cell_type": ["a", "a", "b", "b", "u", "u"], "k": [0, 1, 0, 1, 0, 1]})
    # a: [3,4]-[1,2] = [2,2]; b: [2,2]-[0,0] = [2,2]; u excluded -> mean [2,2]
    shift = mean_concept_shift(x, obs, concept="k", source=0, target=1, group_key="cell_type", exclude_group="u")
    np.testing.assert_allclose(shift, [2.0, 2.0])
    np.testing.assert_allclose(mean_shift_edit(np.array([[0.0, -5.0]]), shift), [[2.0, 0.0]])  # clipped at 0
    cells = np.array([[1.5, 0.5]])
    out = no_edit(cells)
    np.testing.assert_array_equal(out, cells)
    assert out is not cells


def test_missing_peer_environment_is_reported(tmp_path):
    from sccbgm.bench import peers

    python, why = peers.ensure_environment(tmp_path / "absent", "main", install=False)
    assert python is None and "not built" in why


@pytest.mark.filterwarnings("ignore")
def test_tiny_synthetic_run_end_to_end(tmp_path, monkeypatch):
    import sccbgm
    from sccbgm.bench.suites import SCALES, run_synthetic
    from sccbgm.bench.synthetic import lognormalise
    from sccbgm.simulation import choose_intervention_tasks, intervention_split

    monkeypatch.setenv("SCCBGM_NUM_THREADS", "1")
    path = run_synthetic(tmp_path, scale="tiny", peers=[], log=lambda s: None)
    table = pd.read_csv(tmp_path / "results.csv")
    labels = set(table["editor"])
    expected = {"no edit", "mean shift (other types)", "scCBGM", "scCBGM [raw]", "scCBGM-FM (edit)",
                "scCBGM-FM (decode) [raw]", "Vanilla-FM (edit)", "CVAE", "CVAE-FM (edit)", "CBGM"}
    assert expected <= labels
    assert np.isfinite(table[["mse_genes", "mse_pca", "rmmd"]].to_numpy()).all()

    # the no-edit row scores the factual cells against the simulator's counterfactuals
    cfg = SCALES["tiny"]["synthetic"]
    adata = sccbgm.simulate("synthetic1", n_cells=cfg["n_cells"], n_genes=cfg["n_genes"], seed=0)
    task = choose_intervention_tasks(adata, n_tasks=1, seed=0)[0]
    split = intervention_split(adata, task, seed=0)
    ts = float(np.median(np.asarray(split.train.X.sum(1)).ravel()))
    by_hand = float(np.mean((lognormalise(split.intervene.X, ts) - lognormalise(split.test.X, ts)) ** 2))
    assert by_hand > 0
    # (no_edit returns float32 cells, hence the tolerance)
    assert table.loc[table["editor"] == "no edit", "mse_genes"].item() == pytest.approx(by_hand, rel=1e-6)

    md = path.read_text()
    assert "no edit" + report.FLOOR_MARK in md
    assert "Does the paper's ordering hold?" in md and "Table S5" in md
    best = table.groupby("editor")["mse_pca"].mean().idxmin()
    pca_table = md.split("## Cell-level MSE in PCA space")[1].split("###")[0]
    bold = [line for line in pca_table.splitlines() if "**" in line]
    assert len(bold) == 1 and bold[0].startswith(f"| {best}")
    field = md.split("## The field's metrics")[1].split("## Peers")[0]
    assert "| editor | r2_mean | r2_mean_deg | pearson_delta | pearson_delta_deg | deg_dir | edist |" in field
    assert np.isfinite(table[["r2_mean", "deg_dir", "edist"]].to_numpy()).all()
    assert "Sampling-noise floor of editors that regenerate cells" in md
    for png in ("errors_synthetic.png", "embedding.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_python_finder_and_missing_interpreter_are_reported(tmp_path, monkeypatch):
    import sys

    from sccbgm.bench import peers

    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = peers.find_python(running)
    assert found is None or peers.find_python(running) == found  # deterministic when present
    assert peers.find_python("2.99") is None
    monkeypatch.setitem(peers.PYTHON_VERSION, "cpa", "2.99")
    python, why = peers.ensure_environment(tmp_path / "v", "cpa", install=True)
    assert python is None and "no Python 2.99 interpreter" in why
    assert not (tmp_path / "v-cpa").exists()


def test_real_peer_split_keeps_source_cells_once():
    import anndata as ad

    from sccbgm.bench.real import _peer_task

    obs = pd.DataFrame({"cell_type": ["A", "A", "B", "B", "B", "A"], "stim": [0, 1, 0, 0, 1, 1],
                        "condition": ["ctrl", "stim", "ctrl", "ctrl", "stim", "stim"]},
                       index=[f"c{i}" for i in range(6)])
    x = np.arange(12, dtype=float).reshape(6, 2)
    adata = ad.AnnData(X=x, obs=obs)
    task = {"name": "t", "source": {"cell_type": "A", "condition": "ctrl"},
            "target": {"cell_type": "A", "condition": "stim"}, "set": {"stim": 1}}
    train = adata[~((obs["cell_type"] == "A") & (obs["stim"] == 1)).to_numpy()].copy()
    source = adata[["c0"]].copy()
    td, why = _peer_task(train, source, x[[0, 2, 3, 4]], x[[0]], task, seed=3)
    assert why == "" and td.task.concept == "stim" and td.task.cell_type == "A"
    assert list(td.train.obs_names) == ["c2", "c3", "c4"] and list(td.intervene.obs_names) == ["c0"]
    assert td.x_train.tolist() == x[[2, 3, 4]].tolist() and td.concepts == ["stim"]
    bad = {**task, "set": {"stim": 1, "condition": "stim"}}
    assert _peer_task(train, source, x[[0, 2, 3, 4]], x[[0]], bad, seed=3)[0] is None
