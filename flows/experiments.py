"""One Prefect flow per registered experiment, all made by `experiment_flow(name)`.

Each trains the configurations its config plans, logs each as a child run under one parent run
in the experiment's MLflow experiment, and returns the summary rows. A config left empty comes
from the named profile; manifests left empty come from `prepare_data` for just the datasets the
experiment needs (cached, so a deployment run alone costs a few seconds of data checks).

The built-in experiments' flows are module attributes (`flows.experiments.ag_news`), which is
what prefect.yaml's entrypoints name; an experiment registered later (a test, a plugin) gets
its flow from `experiment_flow(name)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow, flow
from prefect.runtime import flow_run

from flows.prepare import prepare_data
from flows.profiles import load_profile
from flows.settings import DATA_DIR, WORK_DIR
from rnn_core import experiments
from tasks import tracking
from tasks.tracking import SummaryRow
from tasks.experiments import log_result
from tasks.tracking.compare import finished_child, run_row
from tasks.training import train_configuration


def run_tracked(name: str, config: Any, profile: str, manifests: dict[str, dict] | None,
                data_dir: str, work_dir: str, tracking_uri: str | None,
                pipeline_id: str | None) -> list[SummaryRow]:
    """Train every planned configuration of experiment `name` and log it to MLflow."""
    exp = experiments.get(name)
    if config is None:
        config = load_profile(profile, only=[name]).config(name)
    if manifests is None:
        manifests = prepare_data(datasets=exp.needs(config), data_dir=data_dir)
    pipeline_id = pipeline_id or str(flow_run.id or "local")
    client = tracking.configure(tracking_uri)
    # Stable across retries of the same flow run, so a crashed training resumes from here.
    run_dir = Path(work_dir) / pipeline_id / name
    parent = tracking.start_parent_run(client, name, profile, pipeline_id, {"config": config})
    tags = tracking.pipeline_tags(profile, pipeline_id)
    rows, results = [], []
    try:
        for config_name in exp.plan(config):
            logged = finished_child(client, name, pipeline_id, config_name)
            if logged is not None:  # an earlier attempt of this flow run finished and logged it
                rows.append(run_row(logged))
                continue
            result = train_configuration(name, config, config_name, manifests, str(run_dir))
            results.append(result)
            rows.append(log_result(result, parent, client.tracking_uri, tags))
        if results:
            report = exp.summarise(config, results, run_dir / "summary")
            tracking.log_report(client, parent, report.figures, report.texts)
    except BaseException:
        tracking.finish_parent_run(client, parent, status="FAILED")
        raise
    tracking.finish_parent_run(client, parent, rows=rows)
    return rows


_FLOWS: dict[str, Flow] = {}


def experiment_flow(name: str) -> Flow:
    """The Prefect flow of experiment `name` (made once, then reused)."""
    if name in _FLOWS:
        return _FLOWS[name]
    exp = experiments.get(name)

    def run_experiment(config=None, profile: str = "default",
                       manifests: dict[str, dict] | None = None, data_dir: str = DATA_DIR,
                       work_dir: str = WORK_DIR, tracking_uri: str | None = None,
                       pipeline_id: str | None = None) -> list[SummaryRow]:
        return run_tracked(name, config, profile, manifests, data_dir, work_dir, tracking_uri,
                           pipeline_id)

    # Prefect builds the flow's parameter schema (UI form, validation) from these annotations.
    run_experiment.__annotations__ = {
        "config": exp.Config | None, "profile": str, "manifests": dict[str, dict] | None,
        "data_dir": str, "work_dir": str, "tracking_uri": str | None,
        "pipeline_id": str | None, "return": list[SummaryRow]}
    run_experiment.__name__ = run_experiment.__qualname__ = name
    run_experiment.__module__ = __name__
    run_experiment.__doc__ = exp.title
    slug = name.replace("_", "-")
    _FLOWS[name] = flow(name=slug, description=exp.title,
                        flow_run_name=f"{slug}-{{profile}}")(run_experiment)
    return _FLOWS[name]


# The built-in experiments' flows as module attributes, for prefect.yaml's entrypoints.
for _name in experiments.names():
    globals()[_name] = experiment_flow(_name)
FLOWS = {name: experiment_flow(name) for name in experiments.names()}
