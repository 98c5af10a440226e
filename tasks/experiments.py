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
from tasks.tracking import champion, compare


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
               tags: dict[str, str]) -> dict:
    """Log one result as a child run; returns its summary row (run id, headline, version)."""
    client = tracking.configure(tracking_uri)
    run_id, version = tracking.log_result(client, result, parent_run_id, extra_tags=tags)
    decision = None
    if version is not None:  # the new version challenges the champion (tasks/tracking/champion)
        decision = champion.challenge_result(
            client, result, run_id, tracking.registered_name(result), version,
            profile=tags.get("rnnflow.profile"),
        )
        _logger().info("%s v%s: %s", decision.model, version, decision.reason)
    return {
        "task": result.task,
        "config": result.name,
        "profile": tags.get("rnnflow.profile", ""),
        "data_variant": result.tags.get("data_variant", ""),
        "run_id": run_id,
        "model_version": version,
        "headline_metric": result.headline.metric,
        "headline": result.headline_value,
        "champion": ("promoted" if decision.promoted else "kept") if decision else "",
        "seconds": round(result.seconds, 1),
        "device": result.device,
        **{k: v for k, v in result.metrics.items()},
    }


@task(name="log-pipeline-summary", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10])
def log_pipeline_summary(rows: list[dict], pipeline_id: str, profile: str,
                         tracking_uri: str | None) -> str:
    """One run in `rnnflow/pipeline` carrying the summary table of every task; returns its id."""
    client = tracking.configure(tracking_uri)
    return compare.log_pipeline_summary(client, pipeline_id, profile, rows)
