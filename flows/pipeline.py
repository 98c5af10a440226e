"""The whole job: prepare the data, then run every experiment of a profile, tracked in MLflow."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.experiments import FLOWS
from flows.prepare import prepare_data
from flows.profiles import experiment_config, load_profile
from tasks.experiments import log_pipeline_summary


@flow(name="rnnflow-pipeline")
def pipeline(
    profile: str = "default",
    data_dir: str = "data",
    work_dir: str = "checkpoints",
    tracking_uri: str | None = None,
    only: list[str] | None = None,
) -> dict[str, list[dict]]:
    """Prepare data, then train and evaluate each experiment of `profile` (or only those named)."""
    chosen = load_profile(profile)
    prepare_data(data_dir=data_dir, **chosen.data)
    pipeline_id = str(flow_run.id or "local")
    results = {}
    for name in only or chosen.experiments:
        results[name] = FLOWS[name](
            config=experiment_config(chosen, name),
            profile=chosen.name,
            data_dir=data_dir,
            work_dir=work_dir,
            tracking_uri=tracking_uri,
            pipeline_id=pipeline_id,
        )
    # One run in rnnflow/pipeline with the table across every task of this pipeline run.
    rows = [row for task_rows in results.values() for row in task_rows]
    log_pipeline_summary(rows, pipeline_id, chosen.name, tracking_uri)
    return results
