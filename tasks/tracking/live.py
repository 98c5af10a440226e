"""Live child runs: the run exists while its configuration trains.

    run_id = start_child_run(client, "ag_news", "lstm8", parent_run_id, "test_accuracy", "cpu",
                             extra_tags=pipeline_tags(profile, pipeline_id))
    with system_metrics(run_id, client.tracking_uri):        # CPU, memory (GPU when present)
        run_configuration(..., callbacks=[EpochMetrics(client, run_id)])
    log_result(client, result, parent_run_id, run_id=run_id)  # completes the same run

The run opens RUNNING when training starts and shows each epoch's figures as they come (one
`log_batch` per epoch, step = epoch) beside MLflow's system metrics (`system/...`); the log step
adds params, final metrics, artifacts, datasets and the model and ends it FINISHED. It carries
the pipeline's tags from the start, so when a killed attempt leaves it RUNNING, the retry's
`start_parent_run` closes it as KILLED with the parents. When the task itself runs again within
the same flow run (a Dask worker died), the new attempt continues the run it left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from tasks.tracking.names import (
    CONFIG_TAG,
    DEVICE_TAG,
    GIT_COMMIT_TAG,
    HEADLINE_METRIC_TAG,
    PARENT_RUN_TAG,
    ROLE_CHILD,
    ROLE_TAG,
    TASK_TAG,
)
from tasks.tracking.store import experiment_id, git_commit, status_is, tag_is

_log = logging.getLogger(__name__)


def child_tags(task: str, config_name: str, parent_run_id: str, headline_metric: str,
               device: str) -> dict[str, str]:
    """The tags a child run has from its first second (the result's own tags come at the end)."""
    return {PARENT_RUN_TAG: parent_run_id, TASK_TAG: task, CONFIG_TAG: config_name,
            ROLE_TAG: ROLE_CHILD, DEVICE_TAG: device, HEADLINE_METRIC_TAG: headline_metric,
            GIT_COMMIT_TAG: git_commit()}


def start_child_run(client: MlflowClient, task: str, config_name: str, parent_run_id: str,
                    headline_metric: str, device: str,
                    extra_tags: dict[str, str] | None = None) -> str:
    """Open the child run of one configuration (RUNNING) when its training starts; returns its
    id. `extra_tags` are the pipeline's (`pipeline_tags`): a retry finds it by them.

    A RUNNING child of the same configuration under the same parent is this task's earlier
    attempt in this very flow run (e.g. its Dask worker died and the task was run again): that
    run is continued, as training resumes from its checkpoint, so the configuration keeps one
    run. (A retried flow run has a new parent; `start_parent_run` closed the old ones KILLED.)
    """
    exp_id = experiment_id(client, task)
    tags = {**child_tags(task, config_name, parent_run_id, headline_metric, device),
            **(extra_tags or {})}
    earlier = client.search_runs(
        [exp_id], " and ".join([tag_is(ROLE_TAG, ROLE_CHILD), tag_is(CONFIG_TAG, config_name),
                                tag_is(PARENT_RUN_TAG, parent_run_id), status_is("RUNNING")]),
        max_results=1)
    if earlier:
        run_id = earlier[0].info.run_id
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run_id
    return client.create_run(exp_id, run_name=config_name, tags=tags).info.run_id


class EpochMetrics:
    """Training callback: every number of an epoch's row in one `log_batch`, step = epoch.

    Per-class figures stay out (the runner keeps them out of the history too). A store that
    cannot be reached costs a warning, never the training: the log step logs whatever epochs
    the run is still missing.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id, self.failed = client, run_id, False
        # Epochs a continued run already holds (an earlier attempt streamed them; a resumed
        # training repeats at most the one it was killed in, from the same RNG state).
        self.logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch in self.logged:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(epoch)) for k, v in metrics.items()
                 if k != "epoch" and "_class_" not in k and isinstance(v, (int, float))
                 and math.isfinite(float(v))]
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # noqa: BLE001  (tracking must not stop training)
            if not self.failed:
                _log.warning("epoch metrics of run %s not streamed (%s); the log step will "
                             "log them", self.run_id, err)
            self.failed = True


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, sampling_interval: float = 10.0):
    """MLflow's system-metrics monitor on `run_id` while the block runs (CPU, memory, disk,
    network; GPU with nvidia-ml-py). `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` overrides the
    interval. Without psutil it says so once and the block runs unmonitored."""
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval,
                                       resume_logging=True, tracking_uri=tracking_uri)
    except Exception as err:  # noqa: BLE001  (psutil missing, ...): train unmonitored
        _log.warning("no system metrics for run %s: %s", run_id, err)
        monitor = None
    if monitor is not None:
        monitor.start()
    try:
        yield monitor
    finally:
        if monitor is not None:
            monitor.finish()
