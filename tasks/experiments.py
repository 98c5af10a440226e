"""Prefect tasks around the experiments: train one configuration, log one result.

Training is neither cached (its input is a model to be trained) nor retried by Prefect: a crash
is resumed from the configuration's last checkpoint when the flow run is run again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from rnn_core import experiments
from rnn_core.results import RunResult
from tasks import tracking
from tasks.progress import PrefectProgress
from tasks.tracking import champion
from tasks.tracking.names import PROFILE_TAG
from tasks.tracking.summaries import SummaryRow


@task(
    name="train",
    task_run_name="train-{experiment}-{config_name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_configuration(
    experiment: str, config, config_name: str, data_dir: str, work_dir: str
) -> RunResult:
    """Train and evaluate one configuration of one experiment (resumes from its checkpoint)."""
    module = experiments.get(experiment)
    progress = PrefectProgress(f"{experiment}/{config_name}", get_run_logger())
    return module.run_one(config, config_name, Path(data_dir), Path(work_dir), callbacks=[progress])


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
    if version is not None:  # the new version challenges the champion (tasks/tracking/champion)
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
