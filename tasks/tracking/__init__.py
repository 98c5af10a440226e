"""The one place rnnflow talks to MLflow.

Layout in the store:
- one experiment per task, named `rnnflow/<task>` (e.g. `rnnflow/ag_news`);
- one parent run per pipeline run and task, tagged with the profile and the pipeline run id;
- one child run per trained configuration: params (whole configs), per-epoch metrics with
  steps, final metrics with stable names, PNG plots, text samples, dataset facts, and the model
  logged as a pyfunc (rebuilt from config + state_dict) and registered as `rnnflow-<task>-<name>`.

The client API is used with explicit run ids (not the fluent "active run"), because Prefect may
run tasks in worker threads; only `log_model`, which needs an active run, uses the fluent API.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from rnn_core.results import RunResult, flatten_params

EXPERIMENT_PREFIX = "rnnflow/"
PARENT_TAG = "mlflow.parentRunId"
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# Explicit requirements: inferring them costs ~10 s per logged model (../shared/STACK.md).
_PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "mlflow==3.17.2"]
_MLFLOW_PARAM_LIMIT = 6000  # characters in one param value


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in `<root>/mlruns/mlflow.db`."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = (root or Path.cwd()).resolve()
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (default: the project's SQLite store) and return a client."""
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, task: str) -> str:
    """Get or create the task's experiment; local stores keep artifacts beside the database."""
    name = EXPERIMENT_PREFIX + task
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        store_dir = Path(uri.removeprefix("sqlite:///")).parent
        artifact_location = (store_dir / "artifacts" / task).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent task
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(
    client: MlflowClient, task: str, profile: str, pipeline_id: str, params: dict[str, Any]
) -> str:
    """Open the parent run of one task within one pipeline run; returns its run id.

    Runs of the same task and pipeline run still marked RUNNING were left by a killed attempt of
    this flow run (a retry keeps the pipeline id): they are closed as KILLED first.
    """
    exp_id = experiment_id(client, task)
    interrupted = client.search_runs(
        [exp_id], f"tags.`rnnflow.pipeline_id` = '{pipeline_id}' and attributes.status = 'RUNNING'"
    )
    for stale in interrupted:
        client.set_tag(stale.info.run_id, "rnnflow.interrupted", "a retry of this flow run began")
        client.set_terminated(stale.info.run_id, status="KILLED")
    run = client.create_run(
        exp_id,
        run_name=f"{task}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "rnnflow.task": task,
            "rnnflow.profile": profile,
            "rnnflow.pipeline_id": pipeline_id,
            "rnnflow.role": "parent",
            "mlflow.source.git.commit": git_commit(),
        },
    )
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    flat = flatten_params(params)
    items = [Param(k, v[:_MLFLOW_PARAM_LIMIT]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i : i + 100])


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), 1000):  # at most 1000 metrics per call
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_result(
    client: MlflowClient,
    result: RunResult,
    parent_run_id: str,
    extra_tags: dict[str, str] | None = None,
    register: bool = True,
) -> tuple[str, str | None]:
    """Log one configuration as a child run; returns (run id, registered model version or None)."""
    tags = {
        PARENT_TAG: parent_run_id,
        "rnnflow.task": result.task,
        "rnnflow.config": result.name,
        "rnnflow.role": "child",
        "rnnflow.device": result.device,
        "rnnflow.headline_metric": result.headline.metric,
        # Which metrics are final (not per-epoch series): `rnnflow compare` rebuilds rows from it.
        "rnnflow.final_metrics": ",".join(sorted(result.metrics))[:8000],
        "mlflow.source.git.commit": git_commit(),
        **result.tags,
        **(extra_tags or {}),
    }
    # The run is logged after training: back-date its start so MLflow's Duration is the training.
    started_ms = int((time.time() - max(result.seconds, 0.0)) * 1000)
    run = client.create_run(
        experiment_id(client, result.task), start_time=started_ms, run_name=result.name, tags=tags
    )
    run_id = run.info.run_id
    try:
        _log_params(client, run_id, result.params)
        now = int(time.time() * 1000)
        series = [
            Metric(key, float(value), now, int(row.get("epoch", step)))
            for step, row in enumerate(result.history)
            for key, value in row.items()
            if key != "epoch"
        ]
        # Final metrics go after the last epoch (same step, a later timestamp): a key that is also
        # a series (e.g. val_accuracy of the chosen epoch) then reads back as its final value, and
        # no (key, step, timestamp) appears twice — log_model copies the run's metrics to the
        # logged model under that unique key and fails on a duplicate.
        last = max((m.step for m in series), default=0)
        final = [Metric(k, float(v), now + 1, last) for k, v in sorted(result.metrics.items())]
        final.append(Metric("train_seconds", float(result.seconds), now + 1, last))
        _log_metrics(client, run_id, series + final)
        _log_artifacts(client, run_id, result)
        version = _log_model(run_id, result) if register and result.checkpoint else None
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, version


def _log_artifacts(client: MlflowClient, run_id: str, result: RunResult) -> None:
    for name, path in result.figures.items():
        client.log_artifact(run_id, str(path), artifact_path="plots")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in result.texts.items():
            file = Path(tmp) / (name if "." in name else f"{name}.txt")
            file.write_text(text, encoding="utf-8")
            client.log_artifact(run_id, str(file), artifact_path="samples")
        info = Path(tmp) / "dataset.json"
        info.write_text(json.dumps(result.dataset, indent=2, default=str), encoding="utf-8")
        client.log_artifact(run_id, str(info))
        history = Path(tmp) / "history.json"
        history.write_text(json.dumps(result.history, indent=2), encoding="utf-8")
        client.log_artifact(run_id, str(history))


def registered_name(result: RunResult) -> str:
    return f"rnnflow-{result.task}-{result.name}".replace("_", "-")


def _signature(result: RunResult) -> ModelSignature:
    """Batch-first tensors with free batch and length, so any sequence length is accepted."""
    cfg = result.model_config or {}
    f32, i64 = np.dtype("float32"), np.dtype("int64")
    if cfg.get("kind") == "forecaster":
        flows = int(cfg["num_flows"])
        inputs = TensorSpec(f32, (-1, -1, flows + int(cfg.get("num_covariates", 0))))
        outputs = TensorSpec(f32, (-1, -1, int(cfg["horizon"]), flows))
    elif cfg.get("kind") == "char_lm":
        inputs = TensorSpec(i64, (-1, -1))
        outputs = TensorSpec(f32, (-1, -1, int(cfg["vocab_size"])))
    else:
        if cfg.get("vocab_size"):
            inputs = TensorSpec(i64, (-1, -1))
        else:
            inputs = TensorSpec(f32, (-1, -1, int(cfg.get("input_size", 1))))
        outputs = TensorSpec(f32, (-1, int(cfg["num_classes"])))
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema([outputs]))


def _log_model(run_id: str, result: RunResult) -> str:
    """Log the pyfunc into the child run and register it; returns the new version number."""
    name = registered_name(result)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # Deliberate choices MLflow warns about on every model: the signature is given
        # explicitly (so no input example is needed) and predict takes a plain array.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_PYFUNC_CODE),
            artifacts={"checkpoint": str(result.checkpoint)},
            signature=_signature(result),
            pip_requirements=_PIP_REQUIREMENTS,
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def summary_table(rows: list[dict]):
    """One row per child run: config, headline, baselines and other metrics, time, device."""
    import pandas as pd

    front = ["task", "config", "profile", "data_variant", "headline_metric", "headline",
             "champion", "model_version", "seconds", "device", "started", "run_id"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    rest = sorted(c for c in frame.columns if c not in front)
    return frame[[c for c in front if c in frame.columns] + rest]


def finish_parent_run(
    client: MlflowClient, run_id: str, status: str = "FINISHED", rows: list[dict] | None = None
) -> None:
    """Close a parent run; with rows, attach the comparison table (CSV, Markdown, HTML)."""
    if rows:
        table = summary_table(rows)
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "summary.csv", index=False)
            (Path(tmp) / "summary.md").write_text(
                table.to_markdown(index=False, floatfmt=".4g"), encoding="utf-8"
            )
            (Path(tmp) / "summary.html").write_text(
                table.to_html(index=False, float_format=lambda v: f"{v:.4g}"), encoding="utf-8"
            )
            for name in ("summary.csv", "summary.md", "summary.html"):
                client.log_artifact(run_id, str(Path(tmp) / name))
    client.set_terminated(run_id, status=status)
