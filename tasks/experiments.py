"""Prefect tasks that log what the experiments return: one result, one pipeline summary.
(Training itself is tasks/training.py.)"""

from __future__ import annotations

import dataclasses
import logging

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from rnn_core.results import RunResult
from tasks import tracking
from tasks.tracking import champion
from tasks.tracking.names import PROFILE_TAG
from tasks.tracking.summaries import SummaryRow


def _logger():
    """The run logger inside a flow or task run, a plain logger when called directly (`.fn`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="log-to-mlflow", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def log_result(result: RunResult, parent_run_id: str, tracking_uri: str,
               tags: dict[str, str]) -> SummaryRow:
    """Log one result as a child run (model registered); returns its summary row.

    `tags` are the pipeline's (`tracking.pipeline_tags(profile, pipeline_id)`). The champion is
    challenged later, by `challenge_champion` in the flow, one decision at a time.
    """
    client = tracking.configure(tracking_uri)
    run_id, version = tracking.log_result(client, result, parent_run_id, extra_tags=tags)
    return SummaryRow.from_result(result, run_id, version, profile=tags.get(PROFILE_TAG, ""))


@task(name="challenge-champion", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def challenge_champion(row: SummaryRow, result: RunResult, tracking_uri: str) -> SummaryRow:
    """The row's new model version challenges its champion; returns the row with the outcome.

    Called from the flow for one row at a time, never from parallel workers: two challengers of
    one registered model must not move its alias at once.
    """
    # A diagnostic's headline (the gradient study's ratios) is not a model score: never gates.
    if row.model_version is None or result.diagnostic:
        return row
    client = tracking.configure(tracking_uri)
    decision = champion.challenge_result(
        client, result, row.run_id, tracking.registered_name(result), row.model_version,
        profile=row.profile or None)
    _logger().info("%s v%s: %s", decision.model, row.model_version, decision.reason)
    return dataclasses.replace(row, champion=decision.outcome)


@task(name="log-pipeline-summary", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def log_pipeline_summary(rows: list[SummaryRow], pipeline_id: str, profile: str,
                         tracking_uri: str | None) -> str:
    """One run in `rnnflow/pipeline` carrying the summary table of every task; returns its id."""
    client = tracking.configure(tracking_uri)
    return tracking.log_pipeline_summary(client, pipeline_id, profile, rows)


@task(name="log-backend-agreement", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def log_backend_agreement(rows: list[SummaryRow], summary_run_id: str,
                          tracking_uri: str | None) -> list[dict]:
    """Scratch vs fused twins of the run (rnn_core.comparisons): one row per pair and metric,
    logged on the pipeline's summary run (backend_agreement.json / .md) and shown in Prefect."""
    import pandas as pd

    from rnn_core.comparisons import backend_agreement
    from tasks.artifacts import publish_table

    agreement = backend_agreement([(r.task, r.config, r.metrics) for r in rows])
    if not agreement:
        return []
    client = tracking.configure(tracking_uri)
    client.log_dict(summary_run_id, agreement, "backend_agreement.json")
    table = pd.DataFrame(agreement).drop(columns=["why"], errors="ignore")
    client.log_text(summary_run_id, table.to_markdown(index=False, floatfmt=".4g"),
                    "backend_agreement.md")
    publish_table(agreement, "backend-agreement", "the hand-written backend against torch.nn: "
                  "the same configuration trained from one seed on both, its test metrics")
    return agreement
