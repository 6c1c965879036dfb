"""Multi-process training (torch DDP, gloo on CPU) matches single-process training.

Two processes under ``torchrun`` train from the command line with a global batch of 64 (32 per
rank); the same fit in this process with ``batch_size=64`` must give the same weights. Some
concept labels are missing (some cells have none), so the ranks count different labelled cells.
Dropout is 0 and ``variational=False`` so that training is deterministic given the minibatches:
the only differences left are float32 rounding in the order of the gradient sums (the
all-reduce adds two half-batch means instead of summing one batch; ~1e-7 relative per step) and
in the gathered statistics. Adam moves every weight by ~lr = 1e-3 per step; over 3 epochs x 5
steps the weights move by up to ~1.5e-2. Measured (max over every weight of the default
2-member ensemble): DDP vs single process 1.2e-7; single process with the per-rank batch of 32
(the negative control below) 1.9e-1. With one member: DDP with the cross-covariance penalty
computed per rank instead of on the gathered global batch 1.6e-3; DDP with the concept loss
averaged over each rank's own labelled cells 1.8e-3. The tolerance 1e-4 on every weight sits
between them. The fit is calibrated by ``--groupby cell_type``: every rank measures the groups'
responses on the whole file after training, and the corrections must equal one process's.
"""


from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sccbgm
from sccbgm.errors import SCCBGMError

OPTIONS = {"dropout": 0.0, "variational": False, "batch_size": 64, "hidden_dim": 64, "latent_dim": 16,
           "unknown_dim": 16, "cross_cov_weight": 2.0}
EPOCHS = 3
TOL = 1e-4


def _weights(model) -> dict[str, np.ndarray]:
    """Every weight of every ensemble member (the cpu preset's default ensemble has 2)."""
    return {f"{m}.{k}": v.detach().numpy().copy() for m in range(model.n_members)
            for k, v in model.member(m).parts["vae"].state_dict().items()}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, SCCBGM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sccbgm", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, toy):
    tmp = tmp_path_factory.mktemp("ddp")
    data = toy[:320].copy()  # 320 = 5 global batches of 64: every batch splits evenly over 2 ranks
    del data.uns["stim_effect"]
    # missing labels (Eq. 7 mask), some cells with none: ranks count different labelled cells
    rng = np.random.default_rng(0)
    stim = data.obs["stim"].astype(float).to_numpy()
    stim[rng.random(stim.size) < 0.4] = np.nan
    data.obs["stim"] = stim
    data.obs.loc[rng.random(data.n_obs) < 0.4, "cell_type"] = np.nan
    data.write_h5ad(tmp / "cells.h5ad")
    out = tmp / "ddp.sccbgm"
    proc = _torchrun(["fit", str(tmp / "cells.h5ad"), "--concepts", "stim", "cell_type", "--groupby", "cell_type",
                      "--epochs", str(EPOCHS), "--seed", "0", "--options", json.dumps(OPTIONS), "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data, out, proc


def test_two_processes_match_one_process_with_the_same_global_batch(ddp_run):
    data, out, proc = ddp_run
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports (and saves) once
    ddp_model = sccbgm.load(out)
    assert ddp_model.options["world_size"] == 2
    assert ddp_model.n_members >= 2  # the default ensemble: each member trained under DDP
    single = sccbgm.fit(data, ["stim", "cell_type"], seed=0, epochs=EPOCHS, distributed=False, groupby="cell_type",
                        **OPTIONS)
    np.testing.assert_allclose(ddp_model.transform.components, single.transform.components, atol=1e-10)
    diff = _max_diff(_weights(ddp_model), _weights(single))
    print(f"max |DDP - single| = {diff:.2e}")
    assert diff < TOL, f"DDP weights differ from single-process ones by {diff:.2e}"
    for term in ("loss", "reconstruction", "concept", "cross_cov"):
        np.testing.assert_allclose(ddp_model.history["vae"][term], single.history["vae"][term], rtol=1e-4)
    # the group calibration, measured after training on every rank from the whole file: the same
    # groups, pairs and corrections as in one process (measured 1.2e-7 of shifts up to ~2)
    assert proc.stdout.count("group calibration by cell_type") == 1
    ddp_groups, single_groups = ddp_model.group_responses, single.group_responses
    assert (ddp_groups.groups, ddp_groups.pairs) == (single_groups.groups, single_groups.pairs) == (
        ["type0", "type1", "type2"], ["stim|0|1", "stim|1|0"])
    np.testing.assert_array_equal(ddp_groups.source, single_groups.source)
    assert np.abs(single_groups.shift).max() > 0.1  # a correction that matters, not zeros compared
    np.testing.assert_allclose(ddp_groups.shift, single_groups.shift, atol=1e-4)
    np.testing.assert_allclose(ddp_groups.tau2, single_groups.tau2, rtol=1e-4)
    # negative control: the per-rank batch alone gives a different model, far outside TOL
    per_rank = sccbgm.fit(data, ["stim", "cell_type"], seed=0, epochs=EPOCHS, distributed=False,
                          **(OPTIONS | {"batch_size": 32}))
    control = _max_diff(_weights(per_rank), _weights(single))
    print(f"max |per-rank batch - single| = {control:.2e}")
    assert control > 10 * TOL


def test_global_batch_must_split_evenly_over_processes(ddp_run, tmp_path):
    data, _, _ = ddp_run
    data.write_h5ad(tmp_path / "cells.h5ad")
    proc = _torchrun(["fit", str(tmp_path / "cells.h5ad"), "--concepts", "stim", "--epochs", "1",
                      "--options", json.dumps({"batch_size": 63}), "--out", str(tmp_path / "m.sccbgm")])
    assert proc.returncode != 0
    assert "batch_size (63) is the global minibatch and must be a multiple of the number of processes (2)" in proc.stderr
    assert not (tmp_path / "m.sccbgm").exists()


def test_distributed_true_outside_torchrun_is_a_clear_error(toy, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SCCBGMError, match="not launched by torchrun"):
        sccbgm.fit(toy[:50], ["stim"], epochs=1, distributed=True)
