"""Summary rows without a store: one type whether made while logging or read back from a run,
one flat form for the tables, and serialisable the ways Prefect moves flow results."""

import math
import pickle
import re
from pathlib import Path

from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag
from prefect.serializers import JSONSerializer
from pydantic import TypeAdapter

from rnn_core.results import Headline, RunResult
from tasks.tracking import SummaryRow, names, summary_table
from tasks.tracking.summaries import FRONT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _result() -> RunResult:
    return RunResult(
        task="ag_news", name="lstm", params={}, headline=Headline("test_accuracy", "max"),
        metrics={"test_accuracy": 0.8125, "majority_accuracy": 0.25, "test_chars_scored": 7},
        tags={names.DATA_VARIANT_TAG: "subset"}, device="cuda", seconds=12.34,
    )


def _run(tags: dict[str, str], metrics: dict[str, float]) -> Run:
    info = RunInfo(run_id="r1", experiment_id="1", user_id="u", status="FINISHED",
                   start_time=1_700_000_000_000, end_time=None, lifecycle_stage="active",
                   run_name="lstm")
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                   tags=[RunTag(k, v) for k, v in tags.items()])
    return Run(info, data)


def test_row_from_a_result_and_its_flat_form():
    row = SummaryRow.from_result(_result(), "r1", "3", profile="smoke", champion=names.PROMOTED)
    assert (row.task, row.config, row.profile, row.data_variant) == (
        "ag_news", "lstm", "smoke", "subset")
    assert (row.headline_metric, row.headline, row.seconds, row.device) == (
        "test_accuracy", 0.8125, 12.3, "cuda")
    flat = row.as_dict()
    # Rows made while logging have no start time: the parent's table keeps its old columns.
    assert "started" not in flat and "metrics" not in flat
    assert flat["majority_accuracy"] == 0.25 and flat["model_version"] == "3"
    assert row["champion"] == names.PROMOTED  # the flat form by key, as the old dict rows
    shadow = SummaryRow(task="t", config="c", metrics={"config": 1.0, "x": 2.0})
    assert shadow.as_dict()["config"] == "c" and shadow["x"] == 2.0


def test_row_read_back_from_a_run_keeps_only_final_metrics():
    tags = {names.TASK_TAG: "ag_news", names.CONFIG_TAG: "lstm", names.PROFILE_TAG: "smoke",
            names.DATA_VARIANT_TAG: "subset", names.DEVICE_TAG: "cpu",
            names.HEADLINE_METRIC_TAG: "test_accuracy",
            names.FINAL_METRICS_TAG: "majority_accuracy,test_accuracy",
            names.CHAMPION_DECISION_TAG: names.KEPT, names.CHAMPION_VERSION_TAG: "2"}
    metrics = {"test_accuracy": 0.8, "majority_accuracy": 0.25, "train_loss": 0.4,
               names.TRAIN_SECONDS_METRIC: 3.26, names.CHALLENGER_VALUE_METRIC: 0.8}
    row = SummaryRow.from_run(_run(tags, metrics))
    assert row.metrics == {"majority_accuracy": 0.25, "test_accuracy": 0.8}
    assert (row.champion, row.model_version, row.seconds, row.run_id) == (names.KEPT, "2", 3.3,
                                                                           "r1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row.started)
    # Logged before the final-metrics tag existed: every metric but the bookkeeping ones.
    del tags[names.FINAL_METRICS_TAG]
    old = SummaryRow.from_run(_run(tags, metrics))
    assert set(old.metrics) == {"test_accuracy", "majority_accuracy", "train_loss"}


def test_table_puts_the_front_columns_first_then_metrics_by_name():
    rows = [SummaryRow.from_result(_result(), "r1", None),
            {"task": "metro", "config": "gru", "test_mse_h1": 0.1}]  # a flat row as read from CSV
    table = summary_table(rows)
    front = [c for c in FRONT_COLUMNS if c in table.columns]
    assert list(table.columns) == front + sorted(set(table.columns) - set(front))
    assert table["config"].tolist() == ["lstm", "gru"] and "started" not in table.columns
    assert summary_table([]).empty


def test_rows_survive_json_pydantic_and_pickle():
    row = SummaryRow.from_result(_result(), "r1", None)
    row.headline = math.nan  # a diverged run: NaN must come back as NaN, not fail validation
    adapter = TypeAdapter(list[SummaryRow])
    back = adapter.validate_json(adapter.dump_json([row]))[0]
    assert math.isnan(back.headline) and back.metrics == row.metrics and back.config == "lstm"
    serializer = JSONSerializer()  # what Prefect uses for result_serializer="json"
    again = serializer.loads(serializer.dumps([row]))[0]
    assert isinstance(again, SummaryRow) and again.run_id == "r1"
    assert pickle.loads(pickle.dumps(row)).as_dict().keys() == row.as_dict().keys()


def test_each_store_name_is_spelt_once_in_tasks_and_the_cli():
    """Tags and metrics in `names` are imported, not retyped: a misspelt search finds nothing
    instead of failing, so a second spelling is a bug waiting to happen."""
    # The dotted tags, the experiment prefix and metrics; the plain words in RunResult.tags
    # ("data_variant", "profile") are column names of the tables as well.
    spelt = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)
             and ("." in v or "/" in v or k.endswith("_METRIC"))]
    assert names.PARENT_RUN_TAG in spelt and names.TRAIN_SECONDS_METRIC in spelt
    sources = [p for p in (ROOT / "tasks").rglob("*.py") if p.name != "names.py"]
    sources.append(ROOT / "flows" / "cli.py")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for value in spelt:
            assert f'"{value}' not in text and f"'{value}" not in text, (path.name, value)

