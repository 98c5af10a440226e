"""Reuse a logged run whose configuration has not changed (same data, config, code and seed).

    found = reusable_child(client, "ag_news", fingerprint["fingerprint"])   # Run or None

Every child run carries its fingerprint tags (tasks/training.py adds them); the newest FINISHED
child of the experiment with the same combined fingerprint is the run a retrain would repeat.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.tracking.compare import newest_finished_child
from tasks.tracking.names import FINGERPRINT_PART_TAG, FINGERPRINT_TAG, REUSED_FROM_TAG


def fingerprint_tags(fingerprint: dict[str, str]) -> dict[str, str]:
    """The tags a child run records: the combined fingerprint and its four parts."""
    return {FINGERPRINT_TAG: fingerprint["fingerprint"],
            **{FINGERPRINT_PART_TAG + k: v for k, v in fingerprint.items() if k != "fingerprint"}}


def reusable_child(client: MlflowClient, task: str, fingerprint: str) -> Run | None:
    """The newest FINISHED child run of `task` with this fingerprint, if any."""
    return newest_finished_child(client, task, **{FINGERPRINT_TAG: fingerprint})


def record_reuse(client: MlflowClient, parent_run_id: str, config: str, run: Run) -> None:
    """Link the parent run of this pipeline run to the run it reused for `config`."""
    client.set_tag(parent_run_id, f"{REUSED_FROM_TAG}.{config}", run.info.run_id)
