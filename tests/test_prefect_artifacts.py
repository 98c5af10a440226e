"""The Prefect UI's view of a grid: a progress artifact per configuration (epoch k of N, 100 % at
the end), the experiment's summary table and a link to its MLflow parent run; and the artifact
helpers are no-ops outside a Prefect run."""

import pytest

from tasks import artifacts


@pytest.mark.slow
def test_a_grid_publishes_progress_summary_and_mlflow_link(prefect_harness, manifests,
                                                           tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.experiments import experiment_flow
    from flows.profiles import load_profile

    config = load_profile("smoke").config("metro_classification")
    config.train.epochs = 2
    config.cells, config.backend_twins = ["gru"], []  # one configuration is enough here
    name = "gru-10st-inout-tod"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = experiment_flow("metro_classification")(
        config=config, profile="smoke",
        manifests={d: m.to_json() for d, m in manifests("metro").items()},
        data_dir=str(tmp_path / "data"), work_dir=str(tmp_path / "ck"), tracking_uri=uri)
    [row] = rows
    keys = [f"progress-metro-classification-{name}", "summary-metro-classification",
            "mlflow-metro-classification"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    latest = {}
    for artifact in sorted(found, key=lambda a: a.created):
        latest[artifact.key] = artifact
    assert set(latest) == set(keys)
    progress = latest[keys[0]]
    assert progress.type == "progress" and float(progress.data) == pytest.approx(100.0)
    assert "epoch 2 of 2" in progress.description
    table = latest[keys[1]]
    assert table.type == "table" and row.run_id in str(table.data) and name in str(table.data)
    link = latest[keys[2]]
    assert link.type == "markdown"  # how Prefect stores a link artifact: [text](url)
    from mlflow import MlflowClient

    parent_id = MlflowClient(uri).get_run(row.run_id).data.tags["mlflow.parentRunId"]
    assert f"/runs/{parent_id}" in str(link.data) and "#/experiments/" in str(link.data)


def test_outside_a_prefect_run_the_helpers_do_nothing(monkeypatch):
    progress = artifacts.TrainingProgress("ag_news", "lstm8", epochs=3)
    progress.on_epoch_end(0, {"val_accuracy": 0.5})
    assert progress.id is None
    assert artifacts.publish_summary([{"task": "ag_news", "config": "x"}], "ag_news") is None
    assert artifacts.artifact_key("progress", "ag_news", "Sci/Tech") == "progress-ag-news-sci-tech"
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert artifacts.mlflow_run_url("http://127.0.0.1:5001/", "3", "abc") == \
        "http://127.0.0.1:5001/#/experiments/3/runs/abc"
    assert artifacts.mlflow_ui_url("sqlite:///x.db") == artifacts.DEFAULT_MLFLOW_UI
