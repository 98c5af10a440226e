"""Scale-out against a real PostgreSQL MLflow store: the smoke grid of two experiments on a
2-worker Dask LocalCluster, every worker logging straight to a throwaway PostgreSQL server
started here (tests/postgres_support.py), the Prefect API the session's test harness.

What multi-host setups rely on, checked on one host: several processes writing one
`postgresql://` store (no SQLite, no mlflow server in front) end with every child run logged
once, under its own experiment's parent, every parent FINISHED, and one Completed `train-*`
task run per configuration in Prefect.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from postgres_support import postgres_unavailable, throwaway_postgres

pytestmark = pytest.mark.slow

# Two experiments, five configurations on the smoke profile (2 AG News + 3 gradient models):
# more configurations than workers, so each worker trains several and both run at once.
ONLY = ["ag_news", "vanishing_gradients"]
WORKERS = 2


def _planned() -> dict[str, list[str]]:
    """{experiment: configuration names} the smoke profile plans for ONLY."""
    from flows.profiles import load_profile
    from rnn_core import experiments

    chosen = load_profile("smoke", only=ONLY)
    return {name: list(experiments.get(name).plan(chosen.config(name))) for name in ONLY}


@pytest.fixture(scope="module")
def postgres_grid(prefect_harness, mirror_dir, tmp_path_factory):
    """The 2-worker smoke grid into a fresh PostgreSQL store; the server outlives the tests of
    this module (they read the store) and is always stopped afterwards."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(f"no throwaway PostgreSQL server: {reason}")
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("scale-out-postgres")
    with throwaway_postgres() as pg, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNN_DATA_MIRROR", str(mirror_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        # A postgresql:// store without an mlflow server puts artifacts in ./mlruns of the
        # process that creates the experiment (this one): keep them in the temp folder.
        mp.chdir(root)
        started = time.perf_counter()
        state = pipeline(profile="smoke", only=ONLY, workers=WORKERS, tracking_uri=pg.uri,
                         data_dir=str(root / "data"), work_dir=str(root / "checkpoints"),
                         return_state=True)
        seconds = time.perf_counter() - started
        assert state.is_completed(), state
        yield SimpleNamespace(results=state.result(), uri=pg.uri, seconds=seconds,
                              pipeline_id=str(state.state_details.flow_run_id), pg=pg)


def test_grid_plans_more_configurations_than_workers():
    planned = _planned()
    assert sum(len(configs) for configs in planned.values()) >= 2 * WORKERS, planned


def test_every_child_logged_once_under_its_parent_in_postgres(postgres_grid):
    from mlflow import MlflowClient

    planned = _planned()
    assert {name: sorted(r.config for r in rows) for name, rows in postgres_grid.results.items()} \
        == {name: sorted(configs) for name, configs in planned.items()}
    client = MlflowClient(tracking_uri=postgres_grid.uri, registry_uri=postgres_grid.uri)
    assert client.tracking_uri.startswith("postgresql")
    for name, configs in planned.items():
        experiment = client.get_experiment_by_name(f"rnnflow/{name}")
        assert experiment is not None, name
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("rnnflow.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("rnnflow.role") == "child"]
        assert len(parents) == 1, (name, [p.info.run_id for p in parents])
        parent = parents[0]
        assert parent.info.status == "FINISHED", (name, parent.info.status)
        assert parent.data.tags["rnnflow.pipeline_id"] == postgres_grid.pipeline_id
        counts = Counter(c.data.tags.get("rnnflow.config") for c in children)
        assert counts == Counter(configs), (name, counts)  # each configuration exactly once
        for child in children:
            assert child.info.status == "FINISHED", (name, child.data.tags.get("rnnflow.config"))
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.data.tags["rnnflow.pipeline_id"] == postgres_grid.pipeline_id
            assert child.data.tags["rnnflow.headline_metric"] in child.data.metrics
    # The summary run across experiments went to the same store.
    summary = client.get_experiment_by_name("rnnflow/pipeline")
    assert summary is not None
    assert client.search_runs([summary.experiment_id],
                              f"tags.`rnnflow.pipeline_id` = '{postgres_grid.pipeline_id}'")


def test_every_train_task_run_completed_in_prefect(postgres_grid):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterName,
    )

    planned = _planned()
    expected = Counter(f"train-{name}-{config}" for name, configs in planned.items()
                       for config in configs)
    with get_client(sync_client=True) as client:
        # The grid is a subflow of this pipeline run; its task runs are the configurations.
        grids = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["rnnflow-grid"])),
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
                any_=[postgres_grid.pipeline_id])))
        assert len(grids) == 1, [g.name for g in grids]
        of_the_grid = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[grids[0].id]),
                                    name=TaskRunFilterName(like_="train-"))
        # Task states reach the API as events, a moment after the flow returns: poll.
        deadline = time.monotonic() + 30
        while True:
            task_runs = client.read_task_runs(task_run_filter=of_the_grid, limit=200)
            final = [r for r in task_runs if r.state is not None and r.state.is_final()]
            if len(final) >= sum(expected.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    states = {run.name: run.state.type.value if run.state else None for run in task_runs}
    assert Counter(run.name for run in task_runs) == expected, states
    assert all(state == "COMPLETED" for state in states.values()), states
    # Two workers really overlapped: some training ran while another was still going.
    spans = sorted((run.start_time, run.end_time) for run in task_runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans


def test_the_server_is_a_real_postgres_on_localhost(postgres_grid):
    import psycopg2

    conn = psycopg2.connect(postgres_grid.pg.libpq_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            assert cur.fetchone()[0].split(".")[0].isdigit()
            cur.execute("SELECT count(*) FROM runs")  # MLflow's schema lives in this database
            assert cur.fetchone()[0] >= 1 + sum(len(c) for c in _planned().values())
    finally:
        conn.close()
