"""End to end, as the people who run rnnflow do: real servers on 127.0.0.1, `rnnflow serve`
registers the deployments, `prefect deployment run` triggers the smoke pipeline, the runs are found
through MLflow's client API; then the work-pool route (prefect.yaml, `prefect deploy`, a process
worker) runs one experiment. Servers and serving processes are stopped (whole process groups)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from operate_support import (
    UUID_RE,
    deployment_or_none,
    flow_run_state,
    mlflow_client,
    prefect_cli,
    stack_env,
    start_process,
    stop_group,
    tail,
    wait_for,
)

from rnn_core import experiments
from tasks.tracking import compare, inference

pytestmark = pytest.mark.slow
RNNFLOW = str(Path(sys.executable).parent / "rnnflow")


def _run_deployment(name: str, params: dict[str, str], env, log, timeout: int) -> str:
    """`prefect deployment run NAME -p k=v ... --watch`; returns the flow run id."""
    args = ["deployment", "run", name, "--watch", "--watch-timeout", str(timeout)]
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    done = prefect_cli(args, env, timeout=timeout + 60)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- runner log ---\n{tail(log)}"
    return UUID_RE.search(done.stdout).group(1)


def test_smoke_pipeline_through_served_deployments(local_stack, mirror_dir, tmp_path):
    api = local_stack.prefect.api_url
    env = stack_env(local_stack, tmp_path / "prefect-home", RNN_DATA_MIRROR=str(mirror_dir))
    log = tmp_path / "serve.log"
    serving = start_process([RNNFLOW, "serve", "--api-url", api], env, log)
    try:
        nightly = wait_for(lambda: deployment_or_none(api, "rnnflow-pipeline/nightly"), 180,
                           "the served deployments", serving, log)
        [schedule] = nightly.schedules
        assert schedule.active and schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "Europe/Paris"
        for flow_name in ("ag-news", "metro-classification", "metro-forecasting",
                          "char-generation", "vanishing-gradients"):
            served = wait_for(lambda f=flow_name: deployment_or_none(api, f"{f}/on-demand"), 60,
                              f"{flow_name}/on-demand", serving, log)
            assert not served.schedules
        run_id = _run_deployment(
            "rnnflow-pipeline/nightly",
            {"profile": "smoke", "data_dir": tmp_path / "data", "work_dir": tmp_path / "ckpt"},
            env, log, timeout=1200)
        assert flow_run_state(api, run_id) == "COMPLETED"
    finally:
        stop_group(serving)

    # -- its runs, found through MLflow's client API on the tracking server -----------------------
    client = mlflow_client(local_stack)
    ids = compare.rnnflow_experiment_ids(client)
    runs = client.search_runs(ids, f"tags.`rnnflow.pipeline_id` = '{run_id}'")
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags["rnnflow.role"], []).append(run)
    parents = {r.data.tags["rnnflow.task"]: r for r in by_role["parent"]}
    assert set(parents) == set(experiments.names())
    assert all(p.info.status == "FINISHED" for p in parents.values())
    children = by_role["child"]
    assert {c.data.tags["rnnflow.task"] for c in children} == set(experiments.names())
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parents[tags["rnnflow.task"]].info.run_id
        assert tags["rnnflow.profile"] == "smoke" and tags["model"] and tags["data_variant"]
        assert tags["rnnflow.headline_metric"] in child.data.metrics
    # The pipeline's own run carries the table across tasks: one row per child run.
    [summary_run] = by_role["pipeline"]
    table = compare.summary_table([compare.run_row(c) for c in children])
    logged = client.download_artifacts(summary_run.info.run_id, "summary.csv")
    assert sorted(pd.read_csv(logged)["run_id"]) == sorted(table["run_id"])
    # Each registered version challenged its champion; inference loads models:/<name>@champion.
    challenged = [c for c in children if "rnnflow.champion.model" in c.data.tags]
    assert {c.data.tags["rnnflow.task"] for c in challenged} >= {"ag_news"}
    for child in challenged:
        model = child.data.tags["rnnflow.champion.model"]
        assert client.get_model_version_by_alias(model, "champion").run_id == child.info.run_id
    ag_news = next(c for c in challenged if c.data.tags["rnnflow.task"] == "ag_news")
    # The champion takes a raw headline (its vocabulary and cleaner travel with it).
    labels = inference.predict(ag_news.data.tags["rnnflow.champion.model"],
                               pd.DataFrame({"title": ["Oil prices fall as stocks rally"]}),
                               tracking_uri=local_stack.mlflow.api_url)
    assert labels.shape[0] == 1 and labels["label"][0] in ("World", "Sports", "Business",
                                                          "Sci/Tech")
    assert np.isclose(labels[["World", "Sports", "Business", "Sci/Tech"]].sum(axis=1), 1).all()


def test_work_pool_route_runs_an_experiment(local_stack, mirror_dir, prepared_data, tmp_path):
    api = local_stack.prefect.api_url
    env = stack_env(local_stack, tmp_path / "prefect-home", RNN_DATA_MIRROR=str(mirror_dir))
    created = prefect_cli(["work-pool", "create", "rnnflow", "--type", "process"], env)
    assert created.returncode == 0 or "already exists" in created.stdout, created.stdout
    deployed = prefect_cli(["--no-prompt", "deploy", "--all"], env, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    nightly = deployment_or_none(api, "rnnflow-pipeline/nightly")
    assert nightly.work_pool_name == "rnnflow"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.schedules[0].schedule.timezone == "Europe/Paris"

    log = tmp_path / "worker.log"
    worker = start_process([str(Path(sys.executable).parent / "prefect"), "worker", "start",
                            "--pool", "rnnflow"], env, log)
    try:
        data = prepared_data("trump")  # what vanishing_gradients reads
        run_id = _run_deployment("vanishing-gradients/on-demand",
                                 {"profile": "smoke", "data_dir": data, "force": "true",  # JSON
                                  "work_dir": tmp_path / "ckpt"}, env, log, timeout=600)
    finally:
        stop_group(worker)
    client = mlflow_client(local_stack)
    runs = client.search_runs(compare.rnnflow_experiment_ids(client),
                              f"tags.`rnnflow.pipeline_id` = '{run_id}'")
    assert {r.data.tags["rnnflow.role"] for r in runs} == {"parent", "child"}
    assert all(r.info.status == "FINISHED" for r in runs)
