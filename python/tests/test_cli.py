"""The command line: the demo writes its report, fit/edit work on h5ad files, errors exit 2."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd

import sccbgm
from sccbgm.cli import main


def test_demo_writes_report_model_and_plots(tmp_path, capsys):
    # 2 ensemble members instead of the demo's 3 keep this test's fit time down
    assert main(["demo", "--out", str(tmp_path), "--cells", "800", "--genes", "60", "--members", "2"]) == 0
    report = (tmp_path / "report.md").read_text()
    for editor in ("no edit", "mean shift (other types)", "scCBGM"):
        assert f"| {editor} |" in report
    assert "Verdict" in report
    table = pd.read_csv(tmp_path / "results.csv")
    assert set(table["editor"]) == {"no edit", "mean shift (other types)", "scCBGM"}
    assert (table["mse_genes"] > 0).all()
    for png in ("errors.png", "embedding.png", "history.png", "uncertainty.png"):
        assert (tmp_path / png).stat().st_size > 1000
    model = sccbgm.load(tmp_path / "model.sccbgm")
    assert model.name == "sccbgm" and model.n_members == 2
    # the uncertainty section states the coverage of the true counterfactuals
    assert "## Per-cell uncertainty" in report
    coverage = float(report.split("target 90%): **")[1].split("%")[0])
    assert 0 < coverage <= 100
    assert "[4/4] report" in capsys.readouterr().out


def test_fit_then_edit_on_h5ad_files(toy, tmp_path):
    data = tmp_path / "cells.h5ad"
    small = toy[:300].copy()
    del small.uns["stim_effect"]
    small.write_h5ad(data)
    model_path = tmp_path / "m.sccbgm"
    assert main(["fit", str(data), "--concepts", "stim", "cell_type", "--epochs", "2", "--out", str(model_path)]) == 0
    out = tmp_path / "edited.h5ad"
    assert main(["edit", str(data), "--model", str(model_path), "--set", json.dumps({"stim": 1}), "--out", str(out)]) == 0
    edited = ad.read_h5ad(out)
    assert edited.shape == small.shape
    assert (edited.obs["stim"] == 1).all()
    again = sccbgm.edit(sccbgm.load(model_path), small, {"stim": 1})
    np.testing.assert_allclose(edited.X, again.X, rtol=1e-6, atol=1e-6)


def test_bad_input_exits_2_with_the_message(toy, tmp_path, capsys):
    data = tmp_path / "cells.h5ad"
    small = toy[:50].copy()
    del small.uns["stim_effect"]
    small.write_h5ad(data)
    assert main(["fit", str(data), "--concepts", "dose", "--out", str(tmp_path / "m.sccbgm")]) == 2
    assert "sccbgm: error: concept column(s) ['dose'] not found" in capsys.readouterr().err
