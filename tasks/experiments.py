"""Prefect tasks that log what the experiments return: one result, one pipeline summary.
(Training itself is tasks/training.py.)"""

from __future__ import annotations

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
    """Log one result as a child run; returns its summary row (run id, headline, version).

    `tags` are the pipeline's (`tracking.pipeline_tags(profile, pipeline_id)`).
    """
    client = tracking.configure(tracking_uri)
    run_id, version = tracking.log_result(client, result, parent_run_id, extra_tags=tags)
    outcome = ""
    # The new version challenges the champion (tasks/tracking/champion); a diagnostic's
    # headline (the gradient study's ratios) is not a model score and never moves one.
    if version is not None and not result.diagnostic:
        decision = champion.challenge_result(
            client, result, run_id, tracking.registered_name(result), version,
            profile=tags.get(PROFILE_TAG),
        )
        _logger().info("%s v%s: %s", decision.model, version, decision.reason)
        outcome = decision.outcome
    return SummaryRow.from_result(result, run_id, version, profile=tags.get(PROFILE_TAG, ""),
                                  champion=outcome)


@task(name="log-pipeline-summary", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def log_pipeline_summary(rows: list[SummaryRow], pipeline_id: str, profile: str,
                         tracking_uri: str | None) -> str:
    """One run in `rnnflow/pipeline` carrying the summary table of every task; returns its id."""
    client = tracking.configure(tracking_uri)
    return tracking.log_pipeline_summary(client, pipeline_id, profile, rows)
