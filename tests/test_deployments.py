"""The two deployment routes agree: prefect.yaml (work pool) and `rnnflow serve` (one process)
declare the same deployments, entrypoints, parameters and nightly schedule."""

from pathlib import Path

import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import load_flow_from_entrypoint

from flows import deployments
from flows.experiments import FLOWS

REPO = Path(__file__).resolve().parents[1]


def _yaml_deployments() -> list[dict]:
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    PrefectYamlModel.model_validate(raw)  # the schema `prefect deploy` reads
    return raw["deployments"]


def test_served_deployments_cover_pipeline_and_each_experiment():
    served = deployments.deployments()
    names = {(d.flow_name, d.name) for d in served}
    assert names == {("rnnflow-pipeline", "nightly")} | {(f.name, "on-demand")
                                                         for f in FLOWS.values()}
    nightly = served[0]
    [schedule] = nightly.schedules
    assert schedule.active is True  # on by default
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Paris"
    assert all(not d.schedules for d in served[1:])
    assert all(d.parameters == {"profile": "default"} for d in served)
    # Parameters are validated against each flow's signature when a run is created.
    assert "profile" in nightly._parameter_openapi_schema.properties
    off = deployments.pipeline_deployment(schedule_active=False)
    assert off.schedules[0].active is False


def test_prefect_yaml_declares_the_same_deployments():
    by_flow = {}
    for entry in _yaml_deployments():
        flow = load_flow_from_entrypoint(str(REPO / entry["entrypoint"]))
        by_flow[flow.name] = (entry, flow)
    served = {d.flow_name: d for d in deployments.deployments()}
    assert set(by_flow) == set(served)
    for flow_name, (entry, flow) in by_flow.items():
        deployment = served[flow_name]
        assert entry["name"] == deployment.name
        assert entry["parameters"] == deployment.parameters
        assert entry["work_pool"]["name"] == "rnnflow"
        # flows/experiments.py:ag_news (file path) names the same object as flows.experiments.ag_news
        assert deployment.entrypoint == entry["entrypoint"].replace(".py:", ".").replace("/", ".")
        yaml_schedules = entry.get("schedules", [])
        assert [(s["cron"], s["timezone"], s["active"]) for s in yaml_schedules] == [
            (s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules or []]
