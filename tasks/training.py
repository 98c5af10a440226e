"""The Prefect task of one configuration: open its MLflow run, train and score it with the one
runner while the run fills in, then complete the run.

One task per configuration, so a task runner (serial, or Dask workers) can train several at
once and the Prefect UI shows one task run per configuration. While it trains:
- its MLflow child run is RUNNING from the first second, per-epoch figures streamed (one
  `log_batch` per epoch) beside MLflow's system metrics (CPU, memory; GPU when present);
- its Prefect task run shows a progress artifact, "epoch k of N", and one log line per epoch.
Then the log step (a nested task, retried on its own) completes that same run: params, final
metrics, artifacts, dataset inputs, the model. Training is neither cached (its input is a model
to be trained) nor retried here: a crash resumes from the configuration's last checkpoint when
the task or flow run runs again, and that retry closes the crashed attempt's run as KILLED.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from rnn_core import experiments
from rnn_core.experiments.protocol import Experiment
from rnn_core.experiments.runner import run_configuration
from rnn_core.results import RunResult
from rnn_core.training import resolve_device
from tasks import tracking
from tasks.artifacts import TrainingProgress
from tasks.progress import PrefectProgress
from tasks.tracking import SummaryRow
from tasks.tracking.live import EpochMetrics, start_child_run, system_metrics
from tasks.tracking.names import PROFILE_TAG
from tasks.tracking.store import retry_unless_unreachable, tracking_guard


@task(
    name="train",
    task_run_name="train-{experiment}-{config_name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_configuration(
    experiment: str | Experiment, config, config_name: str, manifests: dict[str, dict],
    work_dir: str, parent_run_id: str, tracking_uri: str, tags: dict[str, str],
) -> tuple[SummaryRow, RunResult]:
    """Train and evaluate one configuration (resuming from work_dir) as a live child run of
    `parent_run_id`; returns its summary row and the result."""
    client = tracking.configure(tracking_uri)
    run_id, result = train_tracked(experiment, config, config_name, manifests, work_dir, client,
                                   parent_run_id, tags, get_run_logger())
    row = log_child_run(result, run_id, parent_run_id, client.tracking_uri, tags, manifests)
    return row, result


def train_tracked(experiment: str | Experiment, config, config_name: str,
                  manifests: dict[str, Any], work_dir: str, client: MlflowClient,
                  parent_run_id: str, tags: dict[str, str],
                  logger: logging.Logger | logging.LoggerAdapter) -> tuple[str, RunResult]:
    """The train task's body (no Prefect needed): open the child run, train with the runner
    while epochs and system metrics stream into it; returns (run id, result). The run is left
    RUNNING for the log step, or FAILED when training raised."""
    exp = experiments.get(experiment) if isinstance(experiment, str) else experiment
    with tracking_guard(client.tracking_uri):  # a store that is gone: one line, nothing trained
        run_id = start_child_run(client, exp.name, config_name, parent_run_id,
                                 exp.headline.metric, str(resolve_device(config.train.device)),
                                 extra_tags=tags)
    callbacks = [PrefectProgress(f"{exp.name}/{config_name}", logger),
                 TrainingProgress(exp.name, config_name, config.train.epochs),
                 EpochMetrics(client, run_id)]
    try:
        with system_metrics(run_id, client.tracking_uri):
            result = run_configuration(exp, config, config_name, manifests, work_dir,
                                       callbacks=callbacks)
    except Exception:
        with contextlib.suppress(Exception):  # the training's error is the one to report
            client.set_terminated(run_id, status="FAILED")
        raise
    return run_id, result


@task(name="log-to-mlflow", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_unreachable)
def log_child_run(result: RunResult, run_id: str, parent_run_id: str, tracking_uri: str,
                  tags: dict[str, str], manifests: dict[str, Any]) -> SummaryRow:
    """Complete the live child run `run_id` with the result (model registered); its row.
    The champion is challenged later, in the flow (`tasks.experiments.challenge_champion`)."""
    client = tracking.configure(tracking_uri)
    with tracking_guard(client.tracking_uri, result.checkpoint):  # names the kept checkpoint
        run_id, version = tracking.log_result(client, result, parent_run_id, extra_tags=tags,
                                              run_id=run_id, manifests=manifests)
    return SummaryRow.from_result(result, run_id, version, profile=tags.get(PROFILE_TAG, ""))
