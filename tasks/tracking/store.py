"""Where the store is and how to address it: tracking URI, client, experiments, search filters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.tracking.names import EXPERIMENT_PREFIX


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in `<root>/mlruns/mlflow.db`."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = (root or Path.cwd()).resolve()
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (default: the project's SQLite store) and return a client.

    The fluent URIs are set too: `log_model` (the one fluent call) and `models:/` loading use them.
    """
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


def rnnflow_experiment_ids(client: MlflowClient) -> list[str]:
    """Ids of every `rnnflow/<task>` experiment in the store."""
    found = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    return [e.experiment_id for e in found]


def git_commit() -> str:
    """The checkout's commit, for the runs' source version ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tag_is(tag: str, value: str) -> str:
    """A search_runs clause matching one tag value; quotes in values (config labels) escaped."""
    quoted = value.replace("'", "''")
    return f"tags.`{tag}` = '{quoted}'"


def status_is(status: str) -> str:
    return f"attributes.status = '{status}'"
