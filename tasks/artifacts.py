"""Prefect artifacts: what a flow run shows in the Prefect UI besides its logs.

    progress = TrainingProgress("ag_news", "lstm8", epochs=3)   # in the train task
    progress.on_epoch_end(epoch, metrics)                       # "epoch 2 of 3" and a bar
    publish_summary(rows, "ag_news")                            # the summary table of a grid
    publish_run_link(tracking_uri, parent_run_id, "ag_news")    # a link to the MLflow run

Each function is a no-op outside a Prefect flow or task run (a test calling `.fn`, a script), and
a failure to publish is logged, never raised: artifacts decorate a run, they must not fail it.
Keys (lowercase letters, digits and dashes, as Prefect requires) name the collection an artifact
belongs to on the Artifacts page: `progress-<experiment>-<config>`, `summary-<experiment>`,
`mlflow-<experiment>`, so the latest one and its history are one click away.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

_log = logging.getLogger(__name__)
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"  # `make ui`'s MLflow address


def artifact_key(*parts: str) -> str:
    """"ag_news", "Sci/Tech" -> "ag-news-sci-tech": what Prefect accepts as a key."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _publish(make, what: str) -> UUID | None:
    if not in_prefect_run():
        return None
    try:
        return make()
    except Exception as err:  # noqa: BLE001  (an artifact never fails the run it decorates)
        _log.warning("could not publish the %s artifact: %s", what, err)
        return None


class TrainingProgress:
    """Training callback: a progress artifact "epoch k of N" for one configuration, updated after
    every epoch with its validation figures; created at 0 % when training starts."""

    def __init__(self, experiment: str, config_name: str, epochs: int):
        from prefect.artifacts import create_progress_artifact

        self.label, self.epochs = f"{experiment}/{config_name}", max(int(epochs), 1)
        self.key = artifact_key("progress", experiment, config_name)
        self.id = _publish(lambda: create_progress_artifact(
            0.0, key=self.key, description=f"{self.label}: training, epoch 0 of {self.epochs}"),
            "progress")

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.id is None:
            return
        from prefect.artifacts import update_progress_artifact

        done = min(epoch + 1, self.epochs)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                          if k.startswith("val_") and "_class_" not in k)
        description = f"{self.label}: epoch {done} of {self.epochs}" + (f" ({shown})"
                                                                          if shown else "")
        _publish(lambda: update_progress_artifact(self.id, 100.0 * done / self.epochs,
                                                  description=description), "progress")


def _cell(value: Any) -> Any:
    """JSON-safe table cells: NaN/inf -> None, floats to 6 significant digits."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    return value


def summary_records(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Summary rows (`SummaryRow` or flat dicts) as the table's records, front columns first."""
    from tasks.tracking.summaries import summary_table

    frame = summary_table(list(rows))
    return [{k: _cell(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]


def publish_summary(rows: Iterable[Any], experiment: str, description: str | None = None
                    ) -> UUID | None:
    """A table artifact of a grid's (or pipeline's) summary rows, key `summary-<experiment>`."""
    from prefect.artifacts import create_table_artifact

    records = summary_records(rows)
    if not records:
        return None
    return _publish(lambda: create_table_artifact(
        records, key=artifact_key("summary", experiment),
        description=description or f"{experiment}: one row per configuration (headline on the "
                                    "test split, champion decision, MLflow run id)"), "summary")


def publish_table(records: list[dict[str, Any]], key: str, description: str) -> UUID | None:
    """Any list of flat records as a table artifact, key `<key>`."""
    from prefect.artifacts import create_table_artifact

    if not records:
        return None
    cells = [{k: _cell(v) for k, v in rec.items()} for rec in records]
    return _publish(lambda: create_table_artifact(cells, key=artifact_key(key),
                                                  description=description), key)


def mlflow_ui_url(tracking_uri: str | None) -> str:
    """The MLflow UI's base URL: `MLFLOW_UI_URL`, the tracking server itself when it is one,
    else `make ui`'s address (a SQLite store has no UI of its own)."""
    if os.environ.get("MLFLOW_UI_URL"):
        return os.environ["MLFLOW_UI_URL"].rstrip("/")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_MLFLOW_UI


def mlflow_run_url(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui_url(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def publish_run_link(tracking_uri: str | None, run_id: str, experiment: str,
                     description: str | None = None) -> UUID | None:
    """A link artifact to an MLflow run (e.g. an experiment's parent run), key
    `mlflow-<experiment>`; the run's experiment id is read from the store."""
    from prefect.artifacts import create_link_artifact

    def make() -> UUID:
        from tasks.tracking.store import configure

        run = configure(tracking_uri).get_run(run_id)
        url = mlflow_run_url(tracking_uri, run.info.experiment_id, run_id)
        return create_link_artifact(
            url, link_text=f"MLflow: {run.info.run_name}", key=artifact_key("mlflow", experiment),
            description=description or f"{experiment}: the MLflow run with its child runs, "
                                       "curves, summary table and models")

    return _publish(make, "MLflow link")
