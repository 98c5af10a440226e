"""End to end: the pipeline flow on the smoke profile (tiny slices of the real data) into a
temporary MLflow store, then assertions on the runs and metric names it produced."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rnn_core import experiments

pytestmark = pytest.mark.slow

# The stable final-metric names each experiment promises (tasks/tracking logs them as is).
EXPECTED_METRICS = {
    "metro_classification": {"test_error_L5", "test_error_L10", "test_error_L20",
                             "test_error_L40", "test_error_L73", "train_error", "test_loss"},
    "metro_forecasting": {"test_mse_h1", "persistence_mse_h1", "profile_mse_h1"},
    "char_generation": {"test_bits_per_char", "test_nats_per_char", "bigram_nats_per_char",
                        "unigram_nats_per_char"},
    "ag_news": {"test_accuracy", "test_error", "majority_accuracy"},
    "vanishing_gradients": set(),
}


def test_smoke_pipeline_logs_every_experiment(prefect_harness, mirror_dir, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("RNN_DATA_MIRROR", str(mirror_dir))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    results = pipeline(profile="smoke", data_dir=str(tmp_path / "data"),
                       work_dir=str(tmp_path / "checkpoints"), tracking_uri=uri)

    assert set(results) == set(experiments.names())
    client = MlflowClient(uri)
    for name in experiments.names():
        experiment = client.get_experiment_by_name(f"rnnflow/{name}")
        assert experiment is not None, name
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get("rnnflow.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("rnnflow.role") == "child"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", name
        assert len(children) == len(results[name]) >= 1, name
        for child in children:
            assert child.info.status == "FINISHED"
            assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert child.data.tags["rnnflow.profile"] == "smoke"
            headline = child.data.tags["rnnflow.headline_metric"]
            assert headline in child.data.metrics
            assert EXPECTED_METRICS[name] <= set(child.data.metrics), name
            assert any(a.path == "plots" for a in client.list_artifacts(child.info.run_id))
            # Its splits are dataset inputs (the Datasets column, lineage), each with a digest.
            contexts = {t.value for i in child.inputs.dataset_inputs for t in i.tags
                        if t.key == "mlflow.data.context"}
            assert contexts == {"train", "validation", "test"}, (name, child.info.run_name)
            # Per-epoch curves come from validation only; test is scored once, at the end.
            history = json.loads(Path(client.download_artifacts(
                child.info.run_id, "history.json")).read_text())
            assert history and not [k for row in history for k in row if k.startswith("test_")]
        summary = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        assert "summary.md" in summary
