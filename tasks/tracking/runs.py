"""Writing runs: a parent per task and pipeline run, a child per trained configuration, and one
pipeline run in `rnnflow/pipeline` carrying the table across tasks.

The client API is used with explicit run ids (not the fluent "active run"), because Prefect may
run tasks in worker threads; only `models.log_model`, which needs an active run, is fluent.

A child run is normally opened when its training starts (`live.start_child_run`, RUNNING, with
per-epoch and system metrics streamed while it trains); `log_result(..., run_id=...)` then
completes that same run. Without a run id it creates one after the fact, back-dated to when the
training started.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from rnn_core.results import RunResult, flatten_params
from tasks.tracking.integrity import record as record_digests
from tasks.tracking.lineage import log_dataset_inputs
from tasks.tracking.live import child_tags
from tasks.tracking.models import log_model, registered_name
from tasks.tracking.names import (
    FINAL_METRICS_TAG,
    GIT_COMMIT_TAG,
    INTERRUPTED_TAG,
    PER_EXAMPLE_ARTIFACT,
    PIPELINE_EXPERIMENT,
    PIPELINE_ID_TAG,
    PROFILE_TAG,
    ROLE_PARENT,
    ROLE_PIPELINE,
    ROLE_TAG,
    SERVING_KIND_TAG,
    TASK_TAG,
    TASKS_TAG,
    TRAIN_SECONDS_METRIC,
)
from tasks.tracking.store import experiment_id, git_commit, status_is, tag_is
from tasks.tracking.summaries import SummaryRow, attach_summary, flat

_PARAM_LIMIT = 6000  # characters MLflow keeps in one param value
_PARAMS_PER_BATCH = 100  # log_batch limits
_METRICS_PER_BATCH = 1000


def pipeline_tags(profile: str, pipeline_id: str) -> dict[str, str]:
    """The tags every run of one pipeline run carries (parents, children, the pipeline run):
    `rnnflow compare --profile/--pipeline-id` filters on them and a retry finds its runs by them.
    """
    return {PROFILE_TAG: profile, PIPELINE_ID_TAG: pipeline_id}


def start_parent_run(
    client: MlflowClient, task: str, profile: str, pipeline_id: str, params: dict[str, Any]
) -> str:
    """Open the parent run of one task within one pipeline run; returns its run id.

    Runs of the same task and pipeline run still marked RUNNING were left by a killed attempt of
    this flow run (a retry keeps the pipeline id): they are closed as KILLED first — the parent
    and its child runs alike (a child carries the pipeline's tags from the moment its training
    starts, see `live.start_child_run`).
    """
    exp_id = experiment_id(client, task)
    interrupted = client.search_runs(
        [exp_id], f"{tag_is(PIPELINE_ID_TAG, pipeline_id)} and {status_is('RUNNING')}"
    )
    for stale in interrupted:
        client.set_tag(stale.info.run_id, INTERRUPTED_TAG, "a retry of this flow run began")
        client.set_terminated(stale.info.run_id, status="KILLED")
    run = client.create_run(
        exp_id,
        run_name=f"{task}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            TASK_TAG: task,
            **pipeline_tags(profile, pipeline_id),
            ROLE_TAG: ROLE_PARENT,
            GIT_COMMIT_TAG: git_commit(),
        },
    )
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_result(
    client: MlflowClient,
    result: RunResult,
    parent_run_id: str,
    extra_tags: dict[str, str] | None = None,
    register: bool = True,
    run_id: str | None = None,
    manifests: dict[str, Any] | None = None,
) -> tuple[str, str | None]:
    """Log one configuration as a child run; returns (run id, registered model version or None).

    `run_id`: the child run opened when training started (`live.start_child_run`), completed
    here; None creates the run now. `extra_tags` are the pipeline's (`pipeline_tags`); the
    result's own tags (model, data variant, ...) are logged as they are. `manifests` (the
    prepared datasets' manifests) give the dataset inputs their file paths.
    """
    tags = {
        **child_tags(result.task, result.name, parent_run_id, result.headline.metric,
                     result.device),
        # Which metrics are final (not per-epoch series): `rnnflow compare` rebuilds rows from it.
        FINAL_METRICS_TAG: ",".join(sorted(result.metrics))[:8000],
        **result.tags,
        **(extra_tags or {}),
    }
    if run_id is None:
        # Logged after training: back-date the start so MLflow's Duration is the training.
        started_ms = int((time.time() - max(result.seconds, 0.0)) * 1000)
        run_id = client.create_run(experiment_id(client, result.task), start_time=started_ms,
                                   run_name=result.name, tags=tags).info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    try:
        _log_params(client, run_id, result.params)
        _log_metrics(client, run_id, _metrics(result, streamed=_streamed_epochs(client, run_id,
                                                                                  result)))
        _log_artifacts(client, run_id, result)
        log_dataset_inputs(client, run_id, result, manifests)
        # A seed repeat measures its configuration's spread; the first seed's model is the one
        # registered (and challenging the champion).
        register = register and result.checkpoint is not None and result.repeat_of is None
        version = _register(client, run_id, result) if register else None
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, version


def _register(client: MlflowClient, run_id: str, result: RunResult) -> str:
    """Log and register the model, then record its files' digests on the new version."""
    version, model_uri = log_model(run_id, result)
    name = registered_name(result)
    record_digests(client, run_id, model_uri, name, version)
    client.set_model_version_tag(name, version, SERVING_KIND_TAG,
                                 str(result.serving.get("kind", "tensor")))
    return version


def _streamed_epochs(client: MlflowClient, run_id: str, result: RunResult) -> set[int]:
    """Epochs the live run already holds (streamed while training): not logged twice."""
    if not result.history:
        return set()
    key = next((k for k in result.history[-1] if k != "epoch"), None)
    if key is None:
        return set()
    return {m.step for m in client.get_metric_history(run_id, key)}


def _metrics(result: RunResult, streamed: set[int] | frozenset = frozenset()) -> list[Metric]:
    """The per-epoch series (step = epoch; epochs already `streamed` left out), then the final
    metrics and the training time."""
    now = int(time.time() * 1000)
    epochs = [(int(row.get("epoch", step)), row) for step, row in enumerate(result.history)]
    series = [
        Metric(key, float(value), now, epoch)
        for epoch, row in epochs if epoch not in streamed
        for key, value in row.items()
        if key != "epoch"
    ]
    # Final metrics go after the last epoch (same step, a later timestamp): a key that is also
    # a series (e.g. val_accuracy of the chosen epoch) then reads back as its final value, and
    # no (key, step, timestamp) appears twice — log_model copies the run's metrics to the
    # logged model under that unique key and fails on a duplicate.
    last = max((epoch for epoch, _ in epochs), default=0)
    final = [Metric(k, float(v), now + 1, last) for k, v in sorted(result.metrics.items())]
    final.append(Metric(TRAIN_SECONDS_METRIC, float(result.seconds), now + 1, last))
    return series + final


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    flat = flatten_params(params)
    items = [Param(k, v[:_PARAM_LIMIT]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _PARAMS_PER_BATCH])


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH])


def log_report(client: MlflowClient, run_id: str, figures: dict[str, Path],
               texts: dict[str, str]) -> None:
    """Figures (PNG paths) under plots/ and texts under samples/ of a run, e.g. the figures an
    experiment draws across all its configurations, on the parent run."""
    for path in figures.values():
        client.log_artifact(run_id, str(path), artifact_path="plots")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in texts.items():
            file = Path(tmp) / (name if "." in name else f"{name}.txt")
            file.write_text(text, encoding="utf-8")
            client.log_artifact(run_id, str(file), artifact_path="samples")


def _log_artifacts(client: MlflowClient, run_id: str, result: RunResult) -> None:
    """The result's report (plots/, samples/), its dataset facts and its epoch history."""
    log_report(client, run_id, result.figures, result.texts)
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "dataset.json"
        info.write_text(json.dumps(result.dataset, indent=2, default=str), encoding="utf-8")
        client.log_artifact(run_id, str(info))
        history = Path(tmp) / "history.json"
        history.write_text(json.dumps(result.history, indent=2), encoding="utf-8")
        client.log_artifact(run_id, str(history))
        if result.per_example is not None:  # what a later challenger is paired with
            import numpy as np

            outcomes = Path(tmp) / PER_EXAMPLE_ARTIFACT
            np.save(outcomes, np.asarray(result.per_example, dtype=np.float32).ravel(),
                    allow_pickle=False)
            client.log_artifact(run_id, str(outcomes))


def finish_parent_run(
    client: MlflowClient, run_id: str, status: str = "FINISHED",
    rows: Iterable[SummaryRow] | None = None,
) -> None:
    """Close a parent run; with rows, attach the comparison table (CSV, Markdown, HTML)."""
    rows = list(rows or [])
    if rows:
        attach_summary(client, run_id, rows)
    client.set_terminated(run_id, status=status)


def log_pipeline_summary(
    client: MlflowClient, pipeline_id: str, profile: str, rows: Iterable[SummaryRow]
) -> str:
    """One run in `rnnflow/pipeline` per pipeline run, carrying the table across all tasks."""
    rows = list(rows)
    run = client.create_run(
        experiment_id(client, PIPELINE_EXPERIMENT),
        run_name=f"pipeline-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={ROLE_TAG: ROLE_PIPELINE, **pipeline_tags(profile, pipeline_id),
              TASKS_TAG: ",".join(sorted({flat(r).get("task", "") for r in rows}))},
    )
    finish_parent_run(client, run.info.run_id, rows=rows)
    return run.info.run_id
