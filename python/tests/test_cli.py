"""The command line: the demo writes its report, fit/edit work on h5ad files, errors exit 2."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sccbgm
from sccbgm.cli import main


def _write_cells(toy, tmp_path, n_cells: int):
    """The first ``n_cells`` toy cells as ``tmp_path / "cells.h5ad"``; returns (path, the cells)."""
    data = tmp_path / "cells.h5ad"
    small = toy[:n_cells].copy()
    del small.uns["stim_effect"]
    small.write_h5ad(data)
    return data, small


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
    data, small = _write_cells(toy, tmp_path, 300)
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
    data, _ = _write_cells(toy, tmp_path, 50)
    assert main(["fit", str(data), "--concepts", "dose", "--out", str(tmp_path / "m.sccbgm")]) == 2
    assert "sccbgm: error: concept column(s) ['dose'] not found" in capsys.readouterr().err


# ------------------------------------------------------------------ failure paths (issue 13)
@pytest.fixture()
def files(toy, tmp_path):
    """An input .h5ad, a model file fitted from it (2 epochs) and their bytes."""
    data, _ = _write_cells(toy, tmp_path, 120)
    model = tmp_path / "m.sccbgm"
    assert main(["fit", str(data), "--concepts", "stim", "cell_type", "--epochs", "2", "--out", str(model)]) == 0
    return data, model


def _one_error_line(capsys, code_expected, code, needle):
    err = capsys.readouterr().err
    assert code == code_expected, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("scCBGM", "  0%", "\r"))]
    assert len(lines) == 1 and lines[0].startswith("sccbgm: error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def test_cli_failure_paths_exit_2_with_one_line_and_destroy_nothing(files, tmp_path, capsys):
    data, model = files
    capsys.readouterr()
    data_bytes, model_bytes = data.read_bytes(), model.read_bytes()
    edit = ["edit", str(data), "--model", str(model), "--set", '{"stim": 1}']
    cases = [
        # never over an input, even with --overwrite
        (edit + ["--out", str(data)], "never writes over its inputs"),
        (edit + ["--out", str(data), "--overwrite"], "never writes over its inputs"),
        (edit + ["--out", str(model), "--overwrite"], "never writes over its inputs"),
        (["fit", str(data), "--concepts", "stim", "--out", str(data), "--overwrite"], "never writes over its inputs"),
        # an existing output needs --overwrite
        (["fit", str(data), "--concepts", "stim", "--epochs", "1", "--out", str(model)], "already exists; pass --overwrite"),
        # malformed --set
        (["edit", str(data), "--model", str(model), "--set", "{stim: 1}", "--out", str(tmp_path / "o.h5ad")],
         "--set is not valid JSON"),
        (["edit", str(data), "--model", str(model), "--set", "[1]", "--out", str(tmp_path / "o.h5ad")],
         "--set must be a non-empty JSON object"),
        (["edit", str(data), "--model", str(model), "--set", '{"dose": 1}', "--out", str(tmp_path / "o.h5ad")],
         "cannot edit 'dose'"),
        (["edit", str(data), "--model", str(model), "--set", '{"cell_type": "type9"}', "--out", str(tmp_path / "o.h5ad")],
         "unknown category ['type9']"),
        # missing / wrong files
        (["edit", str(tmp_path / "nope.h5ad"), "--model", str(model), "--set", '{"stim": 1}', "--out", str(tmp_path / "o.h5ad")],
         "input file"),
        (["edit", str(data), "--model", str(tmp_path / "nope.sccbgm"), "--set", '{"stim": 1}', "--out", str(tmp_path / "o.h5ad")],
         "model file"),
        (["edit", str(data), "--model", str(data), "--set", '{"stim": 1}', "--out", str(tmp_path / "o.h5ad")],
         "not an sccbgm model file"),
        (["fit", str(model), "--concepts", "stim", "--out", str(tmp_path / "m2.sccbgm")], "cannot read"),
        (edit + ["--out", str(tmp_path / "no_folder" / "o.h5ad")], "does not exist"),
        (edit + ["--out", str(tmp_path)], "is a folder"),
        # bad column / layer / option values
        (["fit", str(data), "--concepts", "dose", "--out", str(tmp_path / "m2.sccbgm")], "['dose'] not found"),
        (["fit", str(data), "--concepts", "stim", "--layer", "counts", "--out", str(tmp_path / "m2.sccbgm")],
         "layer 'counts' not found"),
        (["fit", str(data), "--concepts", "stim", "--epochs", "0", "--out", str(tmp_path / "m2.sccbgm")],
         "option epochs must be a whole number >= 1"),
        (["fit", str(data), "--concepts", "stim", "--model", "scgen", "--out", str(tmp_path / "m2.sccbgm")],
         "unknown model 'scgen'"),
        # argparse usage errors: one line too
        (["fit", str(data)], "--concepts"),
        (["fit", str(data), "--concepts", "stim", "--epochs", "many", "--out", "x"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
        (["demo", "--out", str(tmp_path)], "is not empty; pass --overwrite"),
    ]
    for argv, needle in cases:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        _one_error_line(capsys, 2, code, needle)
    assert data.read_bytes() == data_bytes and model.read_bytes() == model_bytes
    assert not (tmp_path / "m2.sccbgm").exists() and not (tmp_path / "o.h5ad").exists()


def test_cli_overwrite_replaces_the_output(files, tmp_path, capsys):
    data, model = files
    out = tmp_path / "edited.h5ad"
    out.write_text("old")
    assert main(["edit", str(data), "--model", str(model), "--set", '{"stim": 1}', "--out", str(out)]) == 2
    assert out.read_text() == "old"
    assert main(["edit", str(data), "--model", str(model), "--set", '{"stim": 1}', "--out", str(out), "--overwrite"]) == 0
    assert (ad.read_h5ad(out).obs["stim"] == 1).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "edited.h5ad", "m.sccbgm"], "temp file left"


def test_cli_internal_error_is_one_line_exit_1(files, tmp_path, capsys, monkeypatch):
    data, model = files
    capsys.readouterr()

    def broken(*args, **kwargs):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(sccbgm, "edit", broken)
    code = main(["edit", str(data), "--model", str(model), "--set", '{"stim": 1}', "--out", str(tmp_path / "o.h5ad")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "internal error (RuntimeError: something unexpected)" in err


def test_cli_process_prints_no_traceback(files, tmp_path):
    import subprocess
    import sys

    data, model = files
    proc = subprocess.run(
        [sys.executable, "-m", "sccbgm", "edit", str(data), "--model", str(model), "--set", "{bad json",
         "--out", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sccbgm: error: ") and proc.stderr.count("\n") == 1


def test_fit_an_ensemble_and_edit_with_uncertainty_layers(toy, tmp_path):
    data, _ = _write_cells(toy, tmp_path, 300)
    model_path = tmp_path / "ens.sccbgm"
    assert main(["fit", str(data), "--concepts", "stim", "--epochs", "2", "--members", "2",
                 "--out", str(model_path)]) == 0
    assert sccbgm.load(model_path).n_members == 2
    out = tmp_path / "edited.h5ad"
    assert main(["edit", str(data), "--model", str(model_path), "--set", json.dumps({"stim": 1}),
                 "--out", str(out)]) == 0
    edited = ad.read_h5ad(out)
    assert {"edit_sd", "edit_lower", "edit_upper"} <= set(edited.layers)
    assert edited.uns["sccbgm_edit"]["n_members"] == 2


def test_bench_errors_are_one_line_too(tmp_path, capsys):
    code = main(["bench", "real", "--data", str(tmp_path / "no.h5ad"), "--tasks", str(tmp_path / "no.json"),
                 "--out", str(tmp_path / "out")])
    _one_error_line(capsys, 2, code, "no such file")
    _one_error_line(capsys, 2, main(["bench", "overhead", "--epochs", "0"]), "epochs must be >= 1")


def test_fit_with_groupby_and_edit_streamed_with_and_without_the_calibration(toy, tmp_path, capsys):
    data, small = _write_cells(toy, tmp_path, 300)
    model_path = tmp_path / "grouped.sccbgm"
    assert main(["fit", str(data), "--concepts", "stim", "--epochs", "2", "--groupby", "cell_type",
                 "--out", str(model_path)]) == 0
    assert sccbgm.load(model_path).group_responses.groupby == "cell_type"
    printed = capsys.readouterr().out
    assert "group calibration by cell_type:\n  stim 0 -> 1: own response for type0, type1, type2" in printed
    outs = {}
    for name, extra in (("on", []), ("off", ["--no-group-calibration"])):
        outs[name] = tmp_path / f"edited_{name}.h5ad"
        assert main(["edit", str(data), "--model", str(model_path), "--set", json.dumps({"stim": 1}),
                     "--out", str(outs[name]), *extra]) == 0
        printed = capsys.readouterr().out
        n_ctrl = int((small.obs["stim"] == 0).sum())
        said = f"(group calibration by cell_type: {n_ctrl} cells corrected, 0 of them by the pooled correction"
        assert (said in printed) == (name == "on")
        assert f"{small.n_obs} cells in 6 groups of cell_type share their group's mean response" in printed
    on, off = ad.read_h5ad(outs["on"]), ad.read_h5ad(outs["off"])
    n_ctrl = int((small.obs["stim"] == 0).sum())
    assert on.uns["sccbgm_edit"]["group_calibration"]["n_cells"] == n_ctrl
    assert "group_calibration" not in off.uns["sccbgm_edit"]
    ctrl = (small.obs["stim"] == 0).to_numpy()
    assert np.abs(on.X[ctrl] - off.X[ctrl]).max() > 0.01
    np.testing.assert_array_equal(on.X[~ctrl], off.X[~ctrl])
    # by default the cells of a group edited alike share their mean rate ratio; the flag turns it off
    shared = on.uns["sccbgm_edit"]["shared_response"]
    assert shared["column"] == "cell_type" and shared["n_cells"] == small.n_obs
    own_path = tmp_path / "edited_own.h5ad"
    assert main(["edit", str(data), "--model", str(model_path), "--set", json.dumps({"stim": 1}),
                 "--out", str(own_path), "--no-shared-response"]) == 0
    assert "share their group's mean response" not in capsys.readouterr().out
    own = ad.read_h5ad(own_path)
    assert "shared_response" not in own.uns["sccbgm_edit"]
    assert np.abs(on.X[ctrl] - own.X[ctrl]).max() > 1e-3
    # cells of a group the model never saw keep the model's edit, and the summary line says so
    renamed = small.copy()
    renamed.obs["cell_type"] = renamed.obs["cell_type"].astype(str).replace("type2", "type9")
    renamed.write_h5ad(tmp_path / "renamed.h5ad")
    assert main(["edit", str(tmp_path / "renamed.h5ad"), "--model", str(model_path), "--set", json.dumps({"stim": 1}),
                 "--out", str(tmp_path / "edited_renamed.h5ad")]) == 0
    n_type2 = int((small.obs["cell_type"] == "type2").sum())
    assert f"; {n_type2} cells of groups not in the training data, not corrected)" in capsys.readouterr().out
    renamed_out = ad.read_h5ad(tmp_path / "edited_renamed.h5ad")
    type2 = (small.obs["cell_type"] == "type2").to_numpy()
    np.testing.assert_array_equal(renamed_out.X[type2], off.X[type2])
    np.testing.assert_array_equal(renamed_out.X[~type2], on.X[~type2])
