"""Scale-out: the grid on Dask workers through Prefect's task runner.

- a LocalCluster of 2 worker processes trains the smoke grid: every child run once, under the
  right parent, every `train-*` task run Completed;
- `rnnflow run --cluster tcp://...` against a scheduler and two workers started as processes;
- a worker killed while it trains: the task is rerun on a live worker and resumes from the last
  checkpoint, with the result of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
import torch

from rnn_core import experiments
from rnn_core.config import knob
from rnn_core.experiments.protocol import Batches, Experiment, Splits
from rnn_core.experiments.runner import run_configuration
from rnn_core.models import Batch, build_model
from rnn_core.results import Headline
from rnn_core.training import TrainConfig, evaluate

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMOKE_GRID = ["ag_news", "vanishing_gradients"]  # 2 + 3 configurations on the smoke profile


def _children(uri: str, pipeline_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`rnnflow.pipeline_id` = '{pipeline_id}'")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("rnnflow.role") == "parent"}
    children = [r for r in runs if r.data.tags.get("rnnflow.role") == "child"]
    return parents, children


def _check_tracked(uri: str, pipeline_id: str, results: dict) -> None:
    """Every configuration logged once, as a FINISHED child of its experiment's parent."""
    parents, children = _children(uri, pipeline_id)
    by_task = {p.data.tags["rnnflow.task"]: p for p in parents.values()}
    assert set(by_task) == set(results)
    assert all(p.info.status == "FINISHED" for p in parents.values())
    seen = sorted((c.data.tags["rnnflow.task"], c.data.tags["rnnflow.config"]) for c in children)
    expected = sorted((task, row.config) for task, rows in results.items() for row in rows)
    assert seen == expected  # each child once
    for child in children:
        parent = by_task[child.data.tags["rnnflow.task"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"


def _train_task_states(pipeline_run_id: str) -> list[tuple[str, str]]:
    """(name, state) of every train-* task run under the pipeline's grid subflow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        grid = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_run_id])))
        grid_ids = [r.id for r in grid if r.name.startswith("grid-")]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=grid_ids)))
    return sorted((r.name, r.state.name) for r in runs if r.name.startswith("train-"))


def test_local_cluster_of_two_workers_trains_the_smoke_grid(
        prefect_harness, mirror_dir, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("RNN_DATA_MIRROR", str(mirror_dir))
    # `make run`'s way: no store named, so the project's default one under the working folder;
    # the grid logs through a temporary mlflow server, the steps after it to the store itself.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    state = pipeline(profile="smoke", only=SMOKE_GRID, data_dir=str(tmp_path / "data"),
                     work_dir=str(tmp_path / "ck"), workers=2, return_state=True)
    results = state.result()
    assert sum(len(rows) for rows in results.values()) == 5
    pipeline_id = str(state.state_details.flow_run_id)
    _check_tracked(uri, pipeline_id, results)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [summary] = client.search_runs(
        [client.get_experiment_by_name("rnnflow/pipeline").experiment_id],
        f"tags.`rnnflow.pipeline_id` = '{pipeline_id}'")
    assert summary.info.status == "FINISHED"
    deadline = time.monotonic() + 20  # task states reach the API through events
    while (states := _train_task_states(pipeline_id)) and time.monotonic() < deadline:
        if len(states) == 5 and all(s == "Completed" for _, s in states):
            break
        time.sleep(0.5)
    assert len(states) == 5 and {s for _, s in states} == {"Completed"}, states


# --- an existing cluster: `dask scheduler` + `dask worker` processes ---------------------------


def _spawn(cmd: list[str], log: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def _stop(process: subprocess.Popen) -> None:
    from flows.servers import stop_group

    stop_group(process, grace=5.0)


def test_rnnflow_run_on_an_existing_dask_cluster(mirror_dir, tmp_path):
    from flows.servers import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    procs = [_spawn([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--no-dashboard"], tmp_path / "scheduler.log")]
    env = {**os.environ, "RNN_DATA_MIRROR": str(mirror_dir),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    try:
        time.sleep(2)
        for i in range(2):
            procs.append(_spawn([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                 "--name", f"w{i}"], tmp_path / f"worker{i}.log"))
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        cmd = [str(Path(sys.executable).with_name("rnnflow")), "run", "--profile", "smoke",
               *[a for name in SMOKE_GRID for a in ("--only", name)], "--cluster", address,
               "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "ck"),
               "--tracking-uri", uri]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=400, check=False)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        for process in reversed(procs):
            _stop(process)
    # Both workers trained something (the scheduler spread the grid), and the run logged it.
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all("train-" in log for log in logs), logs
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [pipeline_run] = client.search_runs(
        [client.get_experiment_by_name("rnnflow/pipeline").experiment_id])
    pipeline_id = pipeline_run.data.tags["rnnflow.pipeline_id"]
    parents, children = _children(uri, pipeline_id)
    assert len(parents) == 2
    from flows.profiles import load_profile

    smoke = load_profile("smoke")
    planned = [c for name in SMOKE_GRID for c in experiments.get(name).plan(smoke.config(name))]
    assert sorted(c.data.tags["rnnflow.config"] for c in children) == sorted(planned)


def test_an_unreachable_scheduler_fails_at_once_naming_the_address(tmp_path):
    from flows.servers import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    out = subprocess.run([str(Path(sys.executable).with_name("rnnflow")), "run", "--profile",
                          "smoke", "--cluster", address, "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"rnnflow run: no Dask scheduler reachable at {address}")
    assert not (tmp_path / "data").exists()


def test_local_workers_are_told_the_runs_prefect_api(monkeypatch):
    """LocalCluster workers get PREFECT_API_URL in their environment: the configured one, or
    the temporary server Prefect runs for this process (else each would start its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runners import prefect_api_env

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert prefect_api_env() == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        import prefect.server.api.server as server_module

        class Running:
            running, api_url = True, "http://127.0.0.1:8123/api"

        monkeypatch.setattr(server_module, "SubprocessASGIServer", lambda: Running())
        assert prefect_api_env() == {"PREFECT_API_URL": "http://127.0.0.1:8123/api"}
        Running.running = False
        assert prefect_api_env() == {}


def test_a_remote_cluster_with_a_local_sqlite_store_is_refused_before_any_work(tmp_path):
    from flows.runners import StoreNotShared, check_shared_store

    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(StoreNotShared, match="10.0.0.5:8786.*--tracking-uri"):
        check_shared_store("tcp://10.0.0.5:8786", sqlite)
    check_shared_store("tcp://127.0.0.1:8786", sqlite)  # workers on this machine: fine
    check_shared_store("tcp://10.0.0.5:8786", "http://10.0.0.5:5000")
    check_shared_store(None, sqlite)
    out = subprocess.run([str(Path(sys.executable).with_name("rnnflow")), "run", "--profile",
                          "smoke", "--cluster", "tcp://10.0.0.5:8786", "--tracking-uri", sqlite,
                          "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("rnnflow run: --cluster tcp://10.0.0.5:8786: the MLflow store")
    assert not (tmp_path / "data").exists()


# --- a worker killed while it trains -----------------------------------------------------------


@dataclass
class SlowConfig:
    log_dir: str = ""  # '<pid> <epoch>' per epoch started
    epoch_pause: float = 0.4  # seconds per epoch on top of training, so the kill lands mid-run
    train: TrainConfig = knob(TrainConfig(epochs=8, lr=1e-2))


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, n, 1, generator=g)
    return x, (x[-8:].sum(dim=(0, 2)) > 0).long()


class Slowpoke(Experiment):
    """A small GRU on noise, slow enough per epoch to be killed mid-training."""

    name = "slowpoke"
    Config = SlowConfig
    headline = Headline("test_accuracy", "max")

    def plan(self, config):
        return ["gru"]

    def data(self, config, name, manifests):
        torch.set_num_threads(1)
        return Splits(_data(1024, 0), _data(256, 1), _data(256, 2), {"variant": "synthetic"})

    def model(self, config, name, data):
        return build_model({"kind": "classifier", "num_classes": 2, "input_size": 1,
                            "cell": "gru", "hidden_size": 16})

    def batches(self, config, name, data):
        x, y = data.train

        def train(epoch: int):
            if config.log_dir:
                with (Path(config.log_dir) / "epochs.log").open("a") as fh:
                    fh.write(f"{os.getpid()} {epoch}\n")
            time.sleep(config.epoch_pause)
            order = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(epoch))
            return [Batch(x[:, i], y[i]) for i in order.split(64)]

        return Batches(train, [Batch(*data.val)])

    def score(self, config, name, model, data):
        return {"test_accuracy": evaluate(model, [Batch(*data.test)])["accuracy"]}


def test_a_worker_killed_mid_training_loses_only_its_task(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack this test file
    experiments.register(Slowpoke())
    log_dir = tmp_path / "epochs"
    log_dir.mkdir()
    profile = tmp_path / "slow.toml"
    profile.write_text(f'[pipeline]\nexperiments = ["slowpoke"]\n\n[slowpoke]\n'
                       f'log_dir = "{log_dir}"\n')
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    outcome: dict = {}

    def run():
        try:
            outcome["state"] = pipeline(profile=str(profile), data_dir=str(tmp_path / "data"),
                                        work_dir=str(tmp_path / "ck"), tracking_uri=uri,
                                        workers=2, return_state=True)
        except BaseException as err:  # noqa: BLE001  (reported by the assertions below)
            outcome["error"] = err

    thread = threading.Thread(target=run)
    try:
        thread.start()
        log = log_dir / "epochs.log"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # kill once epoch 3 has started (2 checkpoints)
            lines = log.read_text().split("\n")[:-1] if log.exists() else []
            if len(lines) >= 4:
                break
            time.sleep(0.1)
        assert len(lines) >= 4, f"training did not start: {outcome}"
        victim = int(lines[-1].split()[0])
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        experiments.unregister("slowpoke")
    assert not thread.is_alive() and "error" not in outcome, outcome
    results = outcome["state"].result()
    [row] = results["slowpoke"]
    lines = [line.split() for line in (log_dir / "epochs.log").read_text().splitlines()]
    after = [int(e) for pid, e in lines if int(pid) != victim]
    before = [int(e) for pid, e in lines if int(pid) == victim]
    assert after and after[0] >= 2 and after[-1] == 7, lines  # resumed, not from scratch
    assert len(after) < 8 and max(before) < 7, lines  # fewer epochs after the kill
    reference = run_configuration(Slowpoke(), SlowConfig(epoch_pause=0.0), "gru", {},
                                  tmp_path / "reference")
    assert row.headline == pytest.approx(reference.headline_value, abs=1e-6)
    _check_tracked(uri, str(outcome["state"].state_details.flow_run_id), results)
