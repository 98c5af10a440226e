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

from typing import Any

from prefect import Flow, flow
from prefect.runtime import flow_run

from flows.grid import train_grid
from flows.prepare import prepare_data
from flows.profiles import load_profile
from flows.settings import DATA_DIR, WORK_DIR
from rnn_core import experiments
from tasks.tracking import SummaryRow


def run_tracked(name: str, config: Any, profile: str, manifests: dict[str, dict] | None,
                data_dir: str, work_dir: str, tracking_uri: str | None,
                pipeline_id: str | None, force: bool = False) -> list[SummaryRow]:
    """Train every planned configuration of experiment `name` and log it to MLflow."""
    exp = experiments.get(name)
    if config is None:
        config = load_profile(profile, only=[name]).config(name)
    if manifests is None:
        manifests = prepare_data(datasets=exp.needs(config), data_dir=data_dir)
    pipeline_id = pipeline_id or str(flow_run.id or "local")
    rows = train_grid(configs={name: config}, profile=profile, manifests=manifests,
                      work_dir=work_dir, tracking_uri=tracking_uri, pipeline_id=pipeline_id,
                      force=force)
    return rows[name]


_FLOWS: dict[str, Flow] = {}


def experiment_flow(name: str) -> Flow:
    """The Prefect flow of experiment `name` (made once, then reused)."""
    if name in _FLOWS:
        return _FLOWS[name]
    exp = experiments.get(name)

    def run_experiment(config=None, profile: str = "default",
                       manifests: dict[str, dict] | None = None, data_dir: str = DATA_DIR,
                       work_dir: str = WORK_DIR, tracking_uri: str | None = None,
                       pipeline_id: str | None = None, force: bool = False) -> list[SummaryRow]:
        return run_tracked(name, config, profile, manifests, data_dir, work_dir, tracking_uri,
                           pipeline_id, force)

    # Prefect builds the flow's parameter schema (UI form, validation) from these annotations.
    run_experiment.__annotations__ = {
        "config": exp.Config | None, "profile": str, "manifests": dict[str, dict] | None,
        "data_dir": str, "work_dir": str, "tracking_uri": str | None,
        "pipeline_id": str | None, "force": bool, "return": list[SummaryRow]}
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
