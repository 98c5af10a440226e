"""The MLflow module against a real SQLite store in tmp_path: child runs, artifacts, registry."""

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from tasks import tracking
from tasks.tracking import names


@pytest.fixture
def client(tmp_path):
    return tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _result(tmp_path, accuracy=0.75) -> RunResult:
    config = {"kind": "classifier", "num_classes": 4, "vocab_size": 50, "embedding_dim": 8,
              "hidden_size": 6, "cell": "gru", "padding_idx": 0}
    model = build_model(config)
    checkpoint = tmp_path / "model.pt"
    torch.save({"model_state": model.state_dict(), "config": config_dict(model)}, checkpoint)
    figure = tmp_path / "curve.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    return RunResult(
        task="ag_news",
        name="gru6",
        params={"model": config, "train": {"epochs": 2, "lr": 0.01}},
        metrics={"test_accuracy": accuracy, "test_error": 1 - accuracy},
        headline=Headline("test_accuracy", "max"),
        history=[{"epoch": 0, "train_loss": 1.2}, {"epoch": 1, "train_loss": 0.9}],
        figures={"curve": figure},
        texts={"sample": "hello"},
        tags={"model": "gru", "data_variant": "subset"},
        dataset={"variant": "subset", "train_rows": 41342},
        model_config=config_dict(model),
        checkpoint=checkpoint,
    )


def test_child_run_holds_params_metrics_artifacts_and_a_loadable_model(client, tmp_path):
    import mlflow.pyfunc

    parent = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-1", {"profile": "smoke"})
    run_id, version = tracking.log_result(client, _result(tmp_path), parent,
                                          extra_tags=tracking.pipeline_tags("smoke", "pipe-1"))
    row = tracking.SummaryRow.from_result(_result(tmp_path), run_id, version, profile="smoke")
    tracking.finish_parent_run(client, parent, rows=[row])

    run = client.get_run(run_id)
    assert run.data.tags[names.PARENT_RUN_TAG] == parent
    assert run.data.tags[names.ROLE_TAG] == names.ROLE_CHILD
    assert run.data.tags[names.DATA_VARIANT_TAG] == "subset"
    assert run.data.params["model.hidden_size"] == "6"
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.75)
    assert run.data.tags[names.FINAL_METRICS_TAG] == "test_accuracy,test_error"
    history = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"plots", "samples", "dataset.json", "history.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent)} >= {"summary.csv", "summary.md"}
    parent_run = client.get_run(parent)
    assert parent_run.data.tags[names.ROLE_TAG] == names.ROLE_PARENT
    assert parent_run.data.tags[names.PIPELINE_ID_TAG] == "pipe-1"
    assert parent_run.info.status == "FINISHED"
    # The row read back from the store is the row made while logging, plus its start time (the
    # version and the decision are read from the champion's tags: this run never challenged).
    back = tracking.SummaryRow.from_run(run).as_dict()
    assert back.pop("started") and back.pop("model_version") == ""
    assert back == {k: v for k, v in row.as_dict().items() if k != "model_version"}

    assert version == "1"
    name = tracking.registered_name(_result(tmp_path))
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    tokens = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], dtype=np.int64)
    logits = model.predict(tokens)
    assert logits.shape == (2, 4) and np.isfinite(logits).all()


def test_experiment_per_task_and_failed_run_is_marked(client, tmp_path):
    parent = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-2", {})
    broken = _result(tmp_path)
    broken.figures = {"missing": tmp_path / "does-not-exist.png"}
    with pytest.raises(Exception, match="does-not-exist"):
        tracking.log_result(client, broken, parent, register=False)
    exp = client.get_experiment_by_name(names.EXPERIMENT_PREFIX + "ag_news")
    runs = client.search_runs([exp.experiment_id], f"tags.`{names.ROLE_TAG}` = 'child'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert isinstance(client, MlflowClient)


def test_report_figures_and_texts_go_on_the_parent_run(client, tmp_path):
    parent = tracking.start_parent_run(client, "vanishing_gradients", "smoke", "pipe-3", {})
    figure = tmp_path / "all_cells.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    tracking.log_report(client, parent, {"all_cells": figure}, {"notes": "three cells"})
    tracking.finish_parent_run(client, parent)
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/all_cells.png"]
    assert [a.path for a in client.list_artifacts(parent, "samples")] == ["samples/notes.txt"]


def test_a_retry_closes_the_runs_a_killed_attempt_left_running(client):
    killed = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-4", {})
    retry = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-4", {})
    stale = client.get_run(killed)
    assert stale.info.status == "KILLED" and names.INTERRUPTED_TAG in stale.data.tags
    assert client.get_run(retry).info.status == "RUNNING"
