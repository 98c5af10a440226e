"""Comparisons read back from a real SQLite store: `rnnflow compare` prints the same rows the
parent run's summary table holds, filters work, the pipeline summary run carries the table across
tasks, and `rnnflow predict` serves the champion."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from tasks import tracking
from tasks.experiments import challenge_champion, log_result
from tasks.tracking import compare, names

pytestmark = pytest.mark.slow  # one SQLite store per module: ~8 s of MLflow migrations

CONFIG = {"kind": "classifier", "num_classes": 3, "vocab_size": 30, "embedding_dim": 4,
          "hidden_size": 5, "cell": "lstm", "padding_idx": 0}


def _result(tmp, task, name, metrics, headline) -> RunResult:
    model = build_model(CONFIG)
    checkpoint = tmp / f"{task}-{name}.pt"
    torch.save({"model_state": model.state_dict(), "config": config_dict(model)}, checkpoint)
    return RunResult(task=task, name=name, params={"model": CONFIG}, metrics=metrics,
                     headline=headline,
                     # val_loss is a series and a final metric (e.g. of the chosen epoch)
                     history=[{"epoch": 0, "train_loss": 1.0, "val_loss": 1.1},
                              {"epoch": 1, "train_loss": 0.8, "val_loss": 1.2}],
                     tags={"model": "lstm", "data_variant": "full"},
                     dataset={"test_rows": 10}, model_config=config_dict(model),
                     checkpoint=checkpoint, seconds=2.0, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tasks, three child runs logged through the flow's logging task, then summaries."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = tracking.configure(uri)
    acc = Headline("test_accuracy", "max")
    mse = Headline("test_mse_h1", "min")
    plan = [
        ("ag_news", [("lstm", {"test_accuracy": 0.8, "majority_accuracy": 0.25, "val_loss": 1.05},
                      acc),
                     ("gru", {"test_accuracy": 0.7, "majority_accuracy": 0.25}, acc)]),
        ("metro_forecasting", [("lstm", {"test_mse_h1": 0.01, "persistence_mse_h1": 0.02}, mse)]),
    ]
    rows_by_task = {}
    for task, configs in plan:
        # Not the smoke profile: smoke-scoped versions register under their own -smoke names.
        parent = tracking.start_parent_run(client, task, "nightly", "pipe-A", {})
        rows = []
        for name, metrics, headline in configs:  # logged, then challenged, as the grid does
            result = _result(tmp, task, name, metrics, headline)
            row = log_result.fn(result, parent, uri, tracking.pipeline_tags("nightly", "pipe-A"))
            rows.append(challenge_champion.fn(row, result, uri))
        tracking.finish_parent_run(client, parent, rows=rows)
        rows_by_task[task] = (parent, rows)
    return uri, client, rows_by_task, tmp


def test_compare_rows_match_the_parent_summary_table(store):
    _, client, rows_by_task, _ = store
    parent, _ = rows_by_task["ag_news"]
    summary = pd.read_csv(client.download_artifacts(parent, "summary.csv"))
    table = compare.recent_runs_table(client, last=10, task="ag_news")
    assert list(table["config"]) == ["gru", "lstm"]  # newest first
    by_run = table.set_index("run_id")
    for row in summary.to_dict("records"):
        mine = by_run.loc[row["run_id"]]
        for column in ("task", "config", "headline_metric", "profile", "data_variant",
                       "champion", "model_version", "device"):
            assert str(mine[column]) == str(row[column]), column
        for column in ("headline", "test_accuracy", "majority_accuracy", "seconds"):
            assert mine[column] == pytest.approx(row[column]), column
    # Per-epoch series are not final metrics: they stay out of the table; a key that is both
    # reads back as its final value (1.05), not the last epoch's (1.2).
    assert "train_loss" not in table.columns
    by_config = table.set_index("config")
    assert by_config.loc["lstm", "val_loss"] == pytest.approx(1.05)
    assert pd.isna(by_config.loc["gru", "val_loss"])


def test_compare_filters_and_limits(store):
    _, client, _, _ = store
    assert len(compare.recent_runs_table(client, last=10)) == 3
    assert len(compare.recent_runs_table(client, last=2)) == 2
    assert compare.recent_runs_table(client, 10, task="metro_forecasting")["config"].tolist() == [
        "lstm"]
    assert compare.recent_runs_table(client, 10, profile="default").empty
    assert len(compare.recent_runs_table(client, 10, pipeline_id="pipe-A")) == 3


def test_compare_command_prints_the_table(store):
    uri, _, _, _ = store
    result = CliRunner().invoke(app, ["compare", "--last", "5", "--format", "csv",
                                      "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    printed = pd.read_csv(io.StringIO(result.output))
    assert len(printed) == 3 and set(printed["task"]) == {"ag_news", "metro_forecasting"}
    shown = CliRunner().invoke(app, ["compare", "--task", "ag_news", "--tracking-uri", uri])
    assert shown.exit_code == 0 and "test_accuracy" in shown.output and "gru" in shown.output
    champions = CliRunner().invoke(app, ["compare", "--champions", "--format", "csv",
                                         "--tracking-uri", uri])
    frame = pd.read_csv(io.StringIO(champions.output))
    assert set(frame["model"]) == {"rnnflow-ag-news-lstm", "rnnflow-ag-news-gru",
                                   "rnnflow-metro-forecasting-lstm"}
    assert (frame["champion_version"] == 1).all()


def test_pipeline_summary_run_holds_every_task(store):
    _, client, rows_by_task, _ = store
    rows = [r for _, task_rows in rows_by_task.values() for r in task_rows]
    run_id = tracking.log_pipeline_summary(client, "pipe-A", "nightly", rows)
    run = client.get_run(run_id)
    assert run.data.tags[names.ROLE_TAG] == names.ROLE_PIPELINE and run.info.status == "FINISHED"
    assert run.data.tags[names.TASKS_TAG] == "ag_news,metro_forecasting"
    assert run.data.tags[names.PIPELINE_ID_TAG] == "pipe-A"
    table = pd.read_csv(client.download_artifacts(run_id, "summary.csv"))
    assert sorted(table["task"]) == ["ag_news", "ag_news", "metro_forecasting"]
    html = Path(client.download_artifacts(run_id, "summary.html")).read_text()
    assert "<table" in html and "metro_forecasting" in html
    # The pipeline run is not a child run: compare does not list it.
    assert len(compare.recent_runs_table(client, last=10)) == 3


def test_predict_command_loads_the_champion(store, tmp_path):
    uri, _, _, _ = store
    batch = tmp_path / "x.npy"
    np.save(batch, np.array([[3, 4, 5], [6, 7, 0]], dtype=np.int64))
    out = tmp_path / "y.npy"
    result = CliRunner().invoke(app, ["predict", "ag_news", "--config", "lstm", "--input",
                                      str(batch), "--output", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (2, 3) and "argmax" in result.output
    missing = CliRunner().invoke(app, ["predict", "rnnflow-nope", "--input", str(batch),
                                       "--tracking-uri", uri])
    assert missing.exit_code == 2 and "no champion" in missing.output  # one line, no traceback


def test_finished_child_finds_what_an_earlier_attempt_logged(store):
    _, client, rows_by_task, _ = store
    _, rows = rows_by_task["ag_news"]
    found = compare.finished_child(client, "ag_news", "pipe-A", "gru")
    assert found is not None and found.info.run_id == next(
        r.run_id for r in rows if r.config == "gru")
    assert compare.finished_child(client, "ag_news", "pipe-B", "gru") is None
    assert compare.finished_child(client, "char_generation", "pipe-A", "gru") is None
