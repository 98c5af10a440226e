"""The Prefect task of one configuration: train and score it with the one runner, then log it.

One task per configuration, so a task runner (serial, or Dask workers) can train several at
once and the Prefect UI shows one task run per configuration. Training is neither cached (its
input is a model to be trained) nor retried here: a crash resumes from the configuration's last
checkpoint when the task or flow run runs again. Logging (a nested task) retries on its own.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from rnn_core.experiments.runner import run_configuration
from rnn_core.results import RunResult
from tasks.experiments import log_result
from tasks.progress import PrefectProgress
from tasks.tracking import SummaryRow


@task(
    name="train",
    task_run_name="train-{experiment}-{config_name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_configuration(
    experiment: str, config, config_name: str, manifests: dict[str, dict], work_dir: str,
    parent_run_id: str, tracking_uri: str, tags: dict[str, str],
) -> tuple[SummaryRow, RunResult]:
    """Train and evaluate one configuration (resuming from work_dir), log it as a child run of
    `parent_run_id`; returns its summary row and the result."""
    progress = PrefectProgress(f"{experiment}/{config_name}", get_run_logger())
    result = run_configuration(experiment, config, config_name, manifests, work_dir,
                               callbacks=[progress])
    return log_result(result, parent_run_id, tracking_uri, tags), result
