"""Runs left RUNNING by a killed process: closed as KILLED, with the reason on each."""

from __future__ import annotations

from mlflow import MlflowClient

from tasks.tracking.names import INTERRUPTED_TAG, PIPELINE_ID_TAG
from tasks.tracking.store import rnnflow_experiment_ids, status_is, tag_is


def close_running(client: MlflowClient, pipeline_id: str, reason: str) -> int:
    """Every RUNNING run (parent, child, pipeline summary) of `pipeline_id` -> KILLED; returns
    how many were closed."""
    ids = rnnflow_experiment_ids(client)
    if not ids:
        return 0
    stale = client.search_runs(
        ids, f"{tag_is(PIPELINE_ID_TAG, pipeline_id)} and {status_is('RUNNING')}")
    for run in stale:
        client.set_tag(run.info.run_id, INTERRUPTED_TAG, reason)
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)
