"""Hold under faults, end to end on the real grid flow with a tiny test-only experiment
(tests/fault_support.py):

- the MLflow server is stopped while a configuration trains: the flow run fails within a stated
  bound (MLflow's HTTP client bounded by `store.configure`), the trained checkpoint stays, and
  once the server is back a retry of the same flow run logs it without training an epoch again;
  the registered model holds weights only (no optimizer state);
- two processes start on one fresh SQLite store at the same moment: both complete, each
  configuration is logged once per run, and each champion alias points at a valid version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_support import HOOKS, NAME, Config, register, trained_epochs

from tasks.tracking import store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# Measured 30 s: the logging task gives up after ~8 s against a refused connection (no Prefect
# retry of an unreachable store), then the grid's own calls to close its runs (~8 s each).
LOST_SERVER_BOUND_S = 90


def _children(client, pipeline_id: str):
    experiment = client.get_experiment_by_name(f"rnnflow/{NAME}")
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`rnnflow.pipeline_id` = '{pipeline_id}' and tags.`rnnflow.role` = 'child'")


def _train_task_messages(since: float) -> list[str]:
    """State messages of the stand-in's train task runs that ended after `since` (epoch s)."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(any_=[f"train-{NAME}-gru"])))
        return [r.state.message or "" for r in runs
                if r.state and r.state.timestamp.timestamp() >= since]

    import asyncio

    return asyncio.run(read())


def test_lost_tracking_server_fails_fast_and_a_retry_logs_without_retraining(
        prefect_harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from flows.experiments import experiment_flow
    from flows.servers import free_port, start_mlflow, stop_group, wait_healthy
    from rnn_core.checkpoints import LAST, load_checkpoint

    for key in store.HTTP_DEFAULTS:  # the project's defaults, not whatever the shell has
        monkeypatch.delenv(key, raising=False)
    register()
    flow = experiment_flow(NAME)
    port, logs = free_port(), tmp_path / "logs"
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    artifacts = str(tmp_path / "mlruns" / "artifacts")
    server = start_mlflow(port, uri, artifacts, logs)
    stopped: dict[str, float] = {}

    def stop_server():  # while the configuration trains its last epoch
        stop_group(server.process)
        stopped["at"] = time.monotonic()

    config = Config(cells=["gru"], log_dir=str(tmp_path / "epochs"))
    work_dir, pipeline_id = tmp_path / "checkpoints", "lost-server-run"
    kwargs = {"config": config, "profile": "faults", "manifests": {},
              "work_dir": str(work_dir), "tracking_uri": server.url, "pipeline_id": pipeline_id}
    try:
        wait_healthy(server)
        HOOKS[2] = stop_server
        started = time.time()
        state = flow(**kwargs, return_state=True)
        failed_after = time.monotonic() - stopped["at"]
        assert state.is_failed(), state
        print(f"flow run failed {failed_after:.0f} s after the tracking server stopped")
        assert failed_after < LOST_SERVER_BOUND_S
        messages = _train_task_messages(started)
        # Nothing lost: the trained checkpoint is on disk, all epochs done.
        folder = work_dir / pipeline_id / NAME / "gru"
        assert load_checkpoint(folder / LAST)["epoch"] == 3
        trained = trained_epochs(tmp_path / "epochs")
        assert [e for _, _, e in trained] == [0, 1, 2]

        # -- the server comes back; the same flow run (same pipeline id) is retried --------------
        HOOKS.clear()
        server = start_mlflow(port, uri, artifacts, logs)
        wait_healthy(server)
        state = flow(**kwargs, return_state=True)
        assert state.is_completed(), state
        assert trained_epochs(tmp_path / "epochs") == trained  # not one epoch trained again
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        # One FINISHED child; the failed attempt's child run (opened when training started) was
        # closed as KILLED by the retry.
        children = {}
        for child in _children(client, pipeline_id):
            children.setdefault(child.info.status, []).append(child)
        assert set(children) <= {"FINISHED", "KILLED"} and len(children["FINISHED"]) == 1
        [logged] = children["FINISHED"]
        assert logged.data.metrics["resumed_from_epoch"] == 3
        version = client.get_model_version_by_alias("rnnflow-fault-standin-gru", "champion")
        assert version.run_id == logged.info.run_id
        # The registered artefact is the weights-only model.pt, not last.pt with Adam's state.
        logged = Path(_download_model_checkpoint(client, version, tmp_path / "model"))
        payload = torch.load(logged, weights_only=True)
        assert "optimizer_state" not in payload and "model_state" in payload
        assert "optimizer_state" in load_checkpoint(folder / LAST)
        assert logged.stat().st_size < (folder / LAST).stat().st_size
    finally:
        HOOKS.clear()
        stop_group(server.process)

    # The one line that says what happened (tasks/training.py wraps logging in
    # store.tracking_guard): the URI and where the checkpoint is.
    line = next((m for m in messages if "TrackingUnavailable" in m or "unreachable" in m), None)
    if line is None:
        pytest.xfail("the train task does not raise store.TrackingUnavailable yet (wrap its "
                     "logging in store.tracking_guard): " + " | ".join(messages)[:300])
    assert server.url in line and str(folder) in line


def _download_model_checkpoint(client, version, dest: Path) -> str:
    """The `checkpoint` artefact of a registered version's logged model (a .pt file)."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    with _tracking(client.tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(
            f"models:/{version.name}/{version.version}", dst_path=str(dest)))
    found = sorted(local.rglob("*.pt"))
    assert found, f"no checkpoint in {sorted(p.name for p in local.rglob('*'))}"
    return str(found[0])


class _tracking:
    """Point the fluent API at a URI for a block (earlier tests may have pointed it elsewhere)."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        import mlflow

        self.saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def __exit__(self, *exc):
        import mlflow

        mlflow.set_tracking_uri(self.saved[0])
        mlflow.set_registry_uri(self.saved[1])


WRITERS = 4  # runs started at the same moment (scale-out makes many writers normal)


def test_four_runs_started_together_on_a_fresh_store_all_complete(prefect_harness, tmp_path):
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # does not exist yet
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1",
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs, logs = [], []
    try:
        for i in range(WRITERS):
            log = tmp_path / f"writer-{i}.log"
            logs.append(log)
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "fault_support.py"), "race", uri,
                     str(tmp_path / f"ckpt-{i}"), f"race-{i}", str(barrier), str(i)],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))
        deadline = time.monotonic() + 120
        while not all((barrier / f"ready-{i}").exists() for i in range(WRITERS)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
                "writers never got ready:\n" + "\n".join(log.read_text()[-2000:] for log in logs))
            time.sleep(0.05)
        (barrier / "go").touch()  # both at the same moment
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    assert codes == [0] * WRITERS, output[-6000:]
    assert "CircularDependencyError" not in output and "database is locked" not in output

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for i in range(WRITERS):
        children = _children(client, f"race-{i}")
        configs = sorted(c.data.tags["rnnflow.config"] for c in children)
        assert configs == ["gru", "rnn"], configs  # each configuration logged once per run
        assert all(c.info.status == "FINISHED" for c in children)
        epochs = trained_epochs(tmp_path / f"ckpt-{i}" / "epochs")
        assert sorted((c, e) for _, c, e in epochs) == [
            (c, e) for c in ("gru", "rnn") for e in range(3)]
    finished = {c.info.run_id for i in range(WRITERS) for c in _children(client, f"race-{i}")}
    for cell in ("gru", "rnn"):
        name = f"rnnflow-fault-standin-{cell}"
        versions = client.search_model_versions(f"name = '{name}'")
        assert sorted(int(v.version) for v in versions) == list(range(1, WRITERS + 1))
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id in finished
        decisions = sorted(client.get_model_version(name, v.version).tags.get(
            "rnnflow.champion.decision", "") for v in versions)
        # Same seed, same figures: one became champion, the others tied and kept it (the
        # decisions were taken one after the other, not all against "no champion yet").
        assert decisions == ["kept"] * (WRITERS - 1) + ["promoted"], decisions
