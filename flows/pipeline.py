"""The whole job: validate the profile, prepare the data the chosen experiments need, then run
each experiment on the prepared manifests, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.grid import train_grid
from flows.housekeeping import prune_old_checkpoints
from flows.prepare import ALL_DATASETS, prepare_data
from flows.profiles import load_profile
from flows.runners import check_shared_store, shared_tracking, task_runner, uses_dask
from flows.settings import DATA_DIR, WORK_DIR
from flows.supervise import clear_record, record_run
from rnn_core import experiments
from tasks import tracking
from tasks.artifacts import publish_run_link, publish_summary
from tasks.experiments import log_backend_agreement, log_pipeline_summary
from tasks.tracking import SummaryRow


def datasets_needed(names: list[str], configs: dict) -> list[str]:
    """The datasets the experiments `names` read under `configs`, in preparation order."""
    needed = {d for name in names for d in experiments.get(name).needs(configs[name])}
    return [d for d in ALL_DATASETS if d in needed] + sorted(needed - set(ALL_DATASETS))


def run_name() -> str:
    """Flow runs named after their profile: pipeline-default, pipeline-smoke, pipeline-mine."""
    return f"pipeline-{Path(str(flow_run.parameters.get('profile', 'default'))).stem}"


@flow(name="rnnflow-pipeline", flow_run_name=run_name)
def pipeline(
    profile: str = "default",
    data_dir: str = DATA_DIR,
    work_dir: str = WORK_DIR,
    tracking_uri: str | None = None,
    only: list[str] | None = None,
    workers: int = 0,
    cluster: str | None = None,
    force: bool = False,
    resume: str | None = None,
) -> dict[str, list[SummaryRow]]:
    """Prepare data, then train and evaluate each experiment of `profile` (or only those named).

    `workers` > 1 trains that many configurations at once on a local Dask cluster; `cluster`
    (tcp://HOST:PORT) uses an existing Dask scheduler instead; neither = one at a time here.
    A configuration whose data, config, code and seed are unchanged since a logged run reuses
    that run; `force` retrains it. `resume`: the pipeline id of a killed run to continue
    (its finished configurations are kept, the interrupted one resumes from its checkpoint).
    """
    chosen = load_profile(profile, only=only)  # the whole profile is checked before any work
    store = tracking_uri or tracking.default_tracking_uri()  # resolved once, before any run
    check_shared_store(cluster, store)  # remote workers need a store they can reach
    names = list(only or chosen.experiments)
    configs = {name: chosen.config(name) for name in names}
    manifests = prepare_data(datasets=datasets_needed(names, configs), data_dir=data_dir,
                             **chosen.data)
    pipeline_id = resume or str(flow_run.id or "local")
    runner = task_runner(workers, cluster)  # a scheduler that cannot be reached fails here
    # Absolute, so a worker (or a task retried on another worker) finds the same checkpoints.
    work_dir = str(Path(work_dir).resolve())
    log_dir = Path(work_dir) / pipeline_id / "logs"
    # A record of this run while it runs: if its process is killed, the next start finds it.
    record_run(str(flow_run.id or "local"), pipeline_id, store, str(profile), only)
    # With workers: a temporary mlflow server in front of a SQLite store, for the grid only.
    with shared_tracking(store, log_dir, many_writers=uses_dask(workers, cluster)) as uri:
        # Every configuration of every experiment is one task of the grid (one flow run).
        results = train_grid.with_options(task_runner=runner)(
            configs=configs, profile=chosen.name, manifests=manifests, work_dir=work_dir,
            tracking_uri=uri, pipeline_id=pipeline_id, force=force)
    # One run in rnnflow/pipeline with the table across every task of this pipeline run.
    rows = [row for task_rows in results.values() for row in task_rows]
    summary_run = log_pipeline_summary(rows, pipeline_id, chosen.name, store)
    publish_summary(rows, "pipeline")  # Prefect UI: the table across tasks, a link to its run
    publish_run_link(store, summary_run, "pipeline")
    # The hand-written backend against torch.nn, where the grid trained a configuration on both.
    log_backend_agreement(rows, summary_run, store)
    # Bounded disk: checkpoints of older runs' logged configurations go (the last K runs stay).
    prune_old_checkpoints(work_dir, store, current=pipeline_id)
    clear_record(str(flow_run.id or "local"))  # finished: nothing to resume
    if resume:
        clear_record(resume)  # the killed run it continued
    return results
