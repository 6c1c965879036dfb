"""The peer harness without any peer environment: a fake peer worker (run by this interpreter)
returns its input cells shuffled, unnamed or as counts, and the harness must realign them to the
truth by name or report the peer as failed -- never score misaligned or rescaled cells. Also the
synthetic suite's field metrics and its sampling-noise floor, checked by hand."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

FAKE_WORKER = textwrap.dedent('''
    import json, os, sys
    import anndata as ad
    import numpy as np
    import pandas as pd

    job = json.load(open(sys.argv[1]))
    data = ad.read_h5ad(job["data"])
    cells = data[(data.obs["bench_split"] == "intervene").to_numpy()]
    x, names, genes = np.asarray(cells.X, dtype=np.float64), list(cells.obs_names), list(data.var_names)
    mode = os.environ["FAKE_PEER_MODE"]
    rng = np.random.default_rng(0)
    rows, cols = rng.permutation(len(names)), np.arange(len(genes))[::-1]
    x, names, genes = x[rows][:, cols], [names[i] for i in rows], [genes[j] for j in cols]
    if mode == "unnamed":
        names = [str(i) for i in range(len(names))]
    elif mode == "counts":
        x = np.round(np.expm1(x) * 3.0)
    elif mode == "normalised":
        x = np.expm1(x)
    ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame(index=names),
               var=pd.DataFrame(index=genes)).write_h5ad(job["out"])
    json.dump({"mode": mode}, open(job["status"], "w"))
''')


@pytest.fixture(scope="module")
def task_data():
    import sccbgm
    from sccbgm.bench.synthetic import prepare_task
    from sccbgm.simulation import choose_intervention_tasks

    adata = sccbgm.simulate("synthetic1", n_cells=600, n_genes=60, seed=0)
    task = choose_intervention_tasks(adata, n_tasks=1, seed=0)[0]
    return prepare_task(adata, task, seed=0, n_pcs_eval=10)


def _run_fake(td, mode, tmp_path, monkeypatch):
    from sccbgm.bench import peers

    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    monkeypatch.setenv("FAKE_PEER_MODE", mode)
    return peers.run_peer("fake", td, python=sys.executable, worker=worker, workdir=tmp_path, log=lambda s: None)


def test_shuffled_peer_output_is_realigned_to_the_truth(task_data, tmp_path, monkeypatch):
    from sccbgm.bench.synthetic import score

    td = task_data
    res = _run_fake(td, "shuffled", tmp_path, monkeypatch)
    assert res.prediction is not None, res.status
    # the fake peer returns its input (shuffled cells, reversed genes): realigned, it is "no edit"
    np.testing.assert_allclose(res.prediction, td.x_intervene, rtol=1e-6, atol=1e-6)
    peer, floor = score(td, "fake", res.prediction), score(td, "no edit", td.x_intervene)
    assert peer["mse_pca"] == pytest.approx(floor["mse_pca"], rel=1e-5)
    # scored in the peer's own order it would have been an order of magnitude worse
    rows = np.random.default_rng(0).permutation(td.x_intervene.shape[0])
    assert score(td, "misaligned", td.x_intervene[rows])["mse_pca"] > 10 * floor["mse_pca"]


@pytest.mark.parametrize(("mode", "message"), [("unnamed", "cells that are not the"),
                                                ("counts", "not on the log-normalised scale"),
                                                ("normalised", "not on the log-normalised scale")])
def test_misnamed_or_rescaled_peer_output_is_reported_not_scored(task_data, tmp_path, monkeypatch, mode, message):
    res = _run_fake(task_data, mode, tmp_path, monkeypatch)
    assert res.prediction is None
    assert res.status.startswith("failed:") and message in res.status


def test_worker_names_each_row_as_its_runner_does(task_data, tmp_path, monkeypatch):
    """peer_worker.main writes the runner's row names (not the input order) and the input genes."""
    import json

    import anndata as ad

    from sccbgm.bench import peer_worker, peers

    td = task_data

    def reversed_runner(adata, job):
        cells = adata[(adata.obs["bench_split"] == "intervene").to_numpy()]
        return np.asarray(cells.X)[::-1] + 1.0, list(cells.obs_names[::-1]), {"runner": "reversed"}

    monkeypatch.setitem(peer_worker.RUNNERS, "reversed", reversed_runner)
    peers.write_job_data(td, tmp_path / "data.h5ad")
    job = {"peer": "reversed", "data": str(tmp_path / "data.h5ad"), "out": str(tmp_path / "pred.h5ad"),
           "status": str(tmp_path / "status.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert peer_worker.main(tmp_path / "job.json") == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(pred.obs_names) == list(td.intervene.obs_names[::-1])
    assert list(pred.var_names) == list(td.train.var_names)
    np.testing.assert_allclose(peers.align_prediction(pred, td), td.x_intervene + 1.0, rtol=1e-6)


def test_synthetic_field_metrics_by_hand(task_data):
    from sccbgm import metrics
    from sccbgm.bench.synthetic import score

    td = task_data
    perfect = score(td, "truth", td.truth)
    assert perfect["r2_mean"] == pytest.approx(1.0) and perfect["r2_mean_deg"] == pytest.approx(1.0)
    assert perfect["pearson_delta"] == pytest.approx(1.0) and perfect["deg_dir"] == 1.0
    assert perfect["edist"] == pytest.approx(0.0, abs=1e-9)
    none = score(td, "no edit", td.x_intervene)
    assert np.isnan(none["pearson_delta"]) and none["deg_dir"] == 0.0
    mr, mp = td.truth.mean(0), td.x_intervene.mean(0)
    assert none["r2_mean"] == pytest.approx(1 - np.sum((mr - mp) ** 2) / np.sum((mr - mr.mean()) ** 2))
    assert len(td.degs) == metrics.DEFAULT_N_DEGS
    change = np.abs(mr - mp)
    assert change[td.degs].min() >= np.delete(change, td.degs).max()


def test_expected_counterfactual_is_the_regeneration_floor(task_data):
    """The expected counterfactual loses only each cell's own Poisson draw: a fresh draw (a perfect
    sampler) is about twice as far from the exact counterfactuals, and both are far above no edit
    on this small-effect task."""
    from sccbgm.bench.synthetic import expected_counterfactual, lognormalise, score
    from sccbgm.simulation import true_log_rate

    td = task_data
    floor = score(td, "expected", expected_counterfactual(td, n_draws=40), rmmd=False)["mse_genes"]
    rate = np.exp(true_log_rate(td.intervene, set={td.task.concept: 1}))
    fresh = lognormalise(np.random.default_rng(7).poisson(rate), td.target_sum)
    one_draw = score(td, "fresh draw", fresh, rmmd=False)["mse_genes"]
    assert 1.6 * floor < one_draw < 2.4 * floor
    assert score(td, "no edit", td.x_intervene, rmmd=False)["mse_genes"] < floor
