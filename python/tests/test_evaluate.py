"""``sccbgm.evaluate``: the tidy table agrees with the metric functions and with hand computations."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sccbgm
from sccbgm import metrics
from sccbgm.errors import SCCBGMError
from sccbgm.evaluation import COLUMNS


def _populations(seed: int = 0):
    """Reference = two populations at 0 and 3 in 4 genes; target near 3 (so 'b' is closest)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (60, 4))
    b = rng.normal(3.0, 1.0, (60, 4))
    target = rng.normal(2.5, 1.0, (50, 4))
    predicted = target + rng.normal(0.0, 0.1, target.shape)
    reference = np.vstack([a, b])
    labels = np.array(["a"] * 60 + ["b"] * 60)
    return predicted, target, reference, labels


def test_gene_space_table_matches_metric_functions():
    predicted, target, reference, labels = _populations()
    table = sccbgm.evaluate(
        predicted, target, reference=reference, reference_key=labels, n_components=None,
        metrics=("mmd", "fid"), true_counterfactual=target, label="model",
    )
    assert list(table.columns) == list(COLUMNS)
    row = table.set_index("metric")
    bw = table.attrs["bandwidth"]
    assert row.loc["mmd", "value"] == pytest.approx(metrics.mmd(predicted, target, bandwidth=bw))
    assert row.loc["fid", "value"] == pytest.approx(metrics.frechet_distance(predicted, target))
    denom = min(metrics.mmd(reference[labels == g], target, bandwidth=bw) for g in ("a", "b"))
    assert row.loc["rmmd", "denominator"] == pytest.approx(denom)
    assert row.loc["rmmd", "value"] == pytest.approx(row.loc["mmd", "value"] / denom)
    assert row.loc["rmmd", "closest_population"] == "b"
    # cell-level error by hand: mean over cells and genes of the squared difference
    assert row.loc["mse_gene", "value"] == pytest.approx(np.mean((predicted - target) ** 2))
    assert (table["label"] == "model").all()
    assert set(table["space"]) == {"gene"}


def test_good_prediction_has_ratio_below_one_and_no_edit_above():
    predicted, target, reference, labels = _populations(1)
    good = sccbgm.evaluate(predicted, target, reference=reference, reference_key=labels, metrics="mmd", n_components=None)
    far = sccbgm.evaluate(reference[labels == "a"], target, reference=reference, reference_key=labels,
                          metrics="mmd", n_components=None)
    assert good.set_index("metric").loc["rmmd", "value"] < 0.5
    assert far.set_index("metric").loc["rmmd", "value"] > 1.0


def test_anndata_inputs_align_genes_and_use_obs_keys():
    predicted, target, reference, labels = _populations(2)
    genes = [f"g{i}" for i in range(4)]
    ref = ad.AnnData(reference, obs=pd.DataFrame({"group": labels}, index=[f"r{i}" for i in range(120)]),
                     var=pd.DataFrame(index=genes))
    tgt = ad.AnnData(target, var=pd.DataFrame(index=genes))
    # predicted genes in reverse order: matched by name
    pred = ad.AnnData(predicted[:, ::-1].copy(), var=pd.DataFrame(index=genes[::-1]))
    table = sccbgm.evaluate(pred, tgt, reference=ref, reference_key="group", metrics="mmd", n_components=2)
    direct = sccbgm.evaluate(predicted, target, reference=reference, reference_key=labels, metrics="mmd",
                             n_components=2)
    np.testing.assert_allclose(table["value"].to_numpy(dtype=float), direct["value"].to_numpy(dtype=float))
    assert table.attrs["n_components"] == 2


def test_knn_subtype_accuracy_in_table():
    predicted, target, reference, labels = _populations(3)
    # predicted cells sit near population 'b', so a kNN on the reference calls them 'b'
    table = sccbgm.evaluate(
        predicted, target, reference=reference, reference_key=labels, metrics="mmd", n_components=None,
        subtype_key=labels, true_subtypes=np.array(["b"] * 45 + ["a"] * 5), k=15,
    )
    acc = table.set_index("metric").loc["knn_subtype_accuracy", "value"]
    assert acc == pytest.approx(0.9, abs=0.06)


def test_evaluate_errors():
    predicted, target, reference, labels = _populations()
    with pytest.raises(SCCBGMError, match="unknown metrics"):
        sccbgm.evaluate(predicted, target, metrics=("mmd", "wasserstein"))
    with pytest.raises(SCCBGMError, match="reference_key needs reference"):
        sccbgm.evaluate(predicted, target, reference_key=labels)
    with pytest.raises(SCCBGMError):
        sccbgm.evaluate(predicted[:, :3], target)


def test_public_evaluate_is_the_function_even_after_importing_its_module():
    import importlib

    importlib.import_module("sccbgm.evaluation")
    assert callable(sccbgm.evaluate) and sccbgm.evaluate.__name__ == "evaluate"


def test_field_metrics_rows_match_functions_and_hand_values():
    control = np.array([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    target = np.array([[3.0, 1.0, 2.5, 2.0], [3.0, 1.0, 2.5, 2.0]])  # change (1, -1, 0.5, 0)
    predicted = np.array([[2.5, 2.5, 1.0, 2.0], [2.5, 2.5, 1.0, 2.0]])  # change (0.5, 0.5, -1, 0)
    table = sccbgm.evaluate(predicted, target, control=control, n_degs=2, n_components=None,
                            metrics=("edist",))
    row = table.set_index("metric")["value"]
    # top-2 DEGs: genes 0 and 1; signs right on gene 0 only
    assert row["deg_direction_accuracy"] == pytest.approx(0.5)
    # <(0.5, 0.5, -1, 0), (1, -1, 0.5, 0)> / 2.25 = -0.5 / 2.25
    assert row["response_share"] == pytest.approx(-0.5 / 2.25)
    # r2 of the means over all genes: SS_res = 0.25 + 2.25 + 2.25 = 4.75, SS_tot = 2.1875
    assert row["r2_mean"] == pytest.approx(1 - 4.75 / 2.1875)
    # DEGs: mr = (3, 1), mp = (2.5, 2.5): SS_res = 2.5, SS_tot = 2
    assert row["r2_mean_deg"] == pytest.approx(1 - 2.5 / 2.0)
    assert row["pearson_delta"] == pytest.approx(metrics.pearson_delta(predicted, target, control))
    assert np.isnan(row["pearson_delta_deg"])  # predicted change on the DEGs is constant (0.5, 0.5)
    assert row["edist"] == pytest.approx(metrics.e_distance(predicted, target))
    assert table.attrs["n_degs"] == 2
    assert "r2_mean_deg" not in sccbgm.evaluate(predicted, target, n_components=None, metrics="fid")["metric"].tolist()
