"""The Prefect task around the one runner: train and score one configuration of one experiment.

Training is neither cached (its input is a model to be trained) nor retried by Prefect: a crash
is resumed from the configuration's last checkpoint when the flow run is run again.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from rnn_core.experiments.runner import run_configuration
from rnn_core.results import RunResult
from tasks.progress import PrefectProgress


@task(
    name="train",
    task_run_name="train-{experiment}-{config_name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_configuration(
    experiment: str, config, config_name: str, manifests: dict[str, dict], work_dir: str
) -> RunResult:
    """Train and evaluate one configuration (resumes from its checkpoint under work_dir)."""
    progress = PrefectProgress(f"{experiment}/{config_name}", get_run_logger())
    return run_configuration(experiment, config, config_name, manifests, work_dir,
                             callbacks=[progress])
