"""Reuse a logged run whose configuration has not changed (same data, config, code and seed).

    found = reusable_child(client, "ag_news", fingerprint["fingerprint"])   # Run or None

Every child run carries its fingerprint tags (tasks/training.py adds them); the newest FINISHED
child of the experiment with the same combined fingerprint is the run a retrain would repeat.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.tracking.names import (
    EXPERIMENT_PREFIX,
    FINGERPRINT_PART_TAG,
    FINGERPRINT_TAG,
    REUSED_FROM_TAG,
    ROLE_CHILD,
    ROLE_TAG,
)
from tasks.tracking.store import status_is, tag_is


def fingerprint_tags(fingerprint: dict[str, str]) -> dict[str, str]:
    """The tags a child run records: the combined fingerprint and its four parts."""
    return {FINGERPRINT_TAG: fingerprint["fingerprint"],
            **{FINGERPRINT_PART_TAG + k: v for k, v in fingerprint.items() if k != "fingerprint"}}


def reusable_child(client: MlflowClient, task: str, fingerprint: str) -> Run | None:
    """The newest FINISHED child run of `task` with this fingerprint, if any."""
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + task)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        f"{tag_is(ROLE_TAG, ROLE_CHILD)} and {status_is('FINISHED')} and "
        f"{tag_is(FINGERPRINT_TAG, fingerprint)}",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def record_reuse(client: MlflowClient, parent_run_id: str, config: str, run: Run) -> None:
    """Link the parent run of this pipeline run to the run it reused for `config`."""
    client.set_tag(parent_run_id, f"{REUSED_FROM_TAG}.{config}", run.info.run_id)
