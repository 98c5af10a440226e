"""Kill a training process mid-run, retry the flow run, and watch it resume from its checkpoint.

A served deployment runs one tracked experiment (a tiny stand-in defined here, trained by the
real loop, logged by the real tasks). Once a checkpoint exists, the flow run's process gets
SIGKILL; the runner marks the run Crashed; `prefect flow-run retry` schedules the same flow run
again, so its id — the pipeline id keying the checkpoint folder — is unchanged and training
resumes. Fewer epochs run the second time, and the logged result matches an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from prefect import flow

from rnn_core import experiments
from rnn_core.config import knob
from rnn_core.experiments.protocol import Batches, Experiment, Splits
from rnn_core.experiments.runner import run_configuration
from rnn_core.models import Batch, build_model
from rnn_core.results import Headline
from rnn_core.training import TrainConfig, evaluate

STANDIN = "resume_standin"  # test-only experiment name; never part of the package
LENGTH = 60  # time steps per sequence


# --- a tiny stand-in experiment with the package's shape (test-only) ----------------------------
@dataclass
class Config:
    hidden_size: int = 48
    train_size: int = 3072
    test_size: int = 512
    log_dir: str | None = None  # where each epoch's start is logged as '<pid> <epoch>'
    train: TrainConfig = knob(TrainConfig(epochs=6, lr=1e-2))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: L x n x 1 noise; y: whether the last quarter sums above zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LENGTH, n, 1, generator=g)
    return x, (x[-LENGTH // 4 :].sum(dim=(0, 2)) > 0).long()


def _batches(x, y, seed: int, size: int = 64) -> list[Batch]:
    order = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    return [Batch(x[:, idx], y[idx]) for idx in order.split(size)]


class Standin(Experiment):
    """Sign of a noisy sequence's last quarter (a resume test's stand-in)."""

    name = STANDIN
    Config = Config
    headline = Headline("test_accuracy", "max")

    def plan(self, config):
        return ["gru"]

    def data(self, config, name, manifests):
        torch.set_num_threads(1)  # same arithmetic in every process: results comparable
        seed = config.train.seed
        return Splits(_data(config.train_size, seed), _data(256, seed + 2),
                      _data(config.test_size, seed + 1), {"variant": "synthetic"})

    def model(self, config, name, data):
        return build_model({"kind": "classifier", "num_classes": 2, "input_size": 1,
                            "cell": "gru", "hidden_size": config.hidden_size})

    def batches(self, config, name, data):
        log = Path(config.log_dir) if config.log_dir else None

        def train(epoch: int):
            if log is not None:  # which process started which epoch; the pid the test kills
                log.mkdir(parents=True, exist_ok=True)
                (log / "pid").write_text(str(os.getpid()))
                with (log / "epochs.log").open("a") as fh:
                    fh.write(f"{os.getpid()} {epoch}\n")
            return _batches(*data.train, epoch)

        return Batches(train, _batches(*data.val, 0))

    def score(self, config, name, model, data):
        scores = evaluate(model, _batches(*data.test, 0))
        return {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"]}


@flow(name="resume-standin")
def standin_flow(work_dir: str, log_dir: str, pipeline_id: str | None = None) -> list:
    """The real tracked-experiment recipe (flows.experiments.run_tracked) on the stand-in."""
    from flows.experiments import run_tracked

    experiments.register(Standin())
    return run_tracked(STANDIN, Config(log_dir=log_dir), "resume-test", {}, "unused", work_dir,
                       None, pipeline_id)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:  # the serving process of the test
    standin_flow.serve(name="resume", limit=1)


def _state(api: str, flow_run_id: str):
    from operate_support import client

    with client(api) as c:
        return c.read_flow_run(flow_run_id).state


# --- the test ----------------------------------------------------------------------------------
pytestmark = pytest.mark.slow


def test_killed_training_resumes_when_the_flow_run_is_retried(local_stack, tmp_path):
    from operate_support import (
        UUID_RE,
        deployment_or_none,
        flow_run_state,
        mlflow_client,
        prefect_cli,
        stack_env,
        start_process,
        stop_group,
        wait_for,
    )

    from rnn_core.checkpoints import LAST, load_checkpoint

    api = local_stack.prefect.api_url
    work_dir = tmp_path / "checkpoints"
    env = stack_env(local_stack, tmp_path / "prefect-home")
    log = tmp_path / "serve.log"
    server = start_process([sys.executable, str(Path(__file__)), "serve"], env, log)
    try:
        wait_for(lambda: deployment_or_none(api, "resume-standin/resume"), 120,
                 "the stand-in deployment", server, log)
        log_dir = tmp_path / "epochs"
        started = prefect_cli(["deployment", "run", "resume-standin/resume",
                               "-p", f"work_dir={work_dir}", "-p", f"log_dir={log_dir}"],
                              env, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = UUID_RE.search(started.stdout).group(1)
        folder = work_dir / run_id / STANDIN / "gru"  # keyed by the flow run id
        epochs_log = log_dir / "epochs.log"

        # -- kill the flow run's process once a checkpoint of epoch >= 2 exists -----------------
        def checkpointed_epoch():
            try:
                return load_checkpoint(folder / LAST)["epoch"] >= 2
            except (FileNotFoundError, ValueError):
                return False

        wait_for(checkpointed_epoch, 240, "a checkpoint after two epochs", server, log, 0.1)
        os.kill(int((log_dir / "pid").read_text()), signal.SIGKILL)
        wait_for(lambda: flow_run_state(api, run_id) == "CRASHED", 60, "the run to crash",
                 server, log)
        first = [line.split() for line in epochs_log.read_text().splitlines()]
        assert len(first) < 6, "the kill came too late to interrupt training"

        # -- retry the same flow run; the runner picks it up again ------------------------------
        retried = prefect_cli(["flow-run", "retry", run_id], env, timeout=120)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        wait_for(lambda: flow_run_state(api, run_id) in ("COMPLETED", "FAILED", "CRASHED"),
                 300, "the retried run to finish", server, log)
        assert flow_run_state(api, run_id) == "COMPLETED", log.read_text()[-3000:]
        trained = epochs_log.read_text()

        # -- retrying a completed run neither trains nor logs the finished configuration again --
        again = prefect_cli(["flow-run", "retry", run_id], env, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        completed_at = _state(api, run_id).timestamp
        wait_for(lambda: (s := _state(api, run_id)).is_completed() and s.timestamp > completed_at,
                 300, "the second retry to finish", server, log)
        assert epochs_log.read_text() == trained
    finally:
        stop_group(server)

    lines = [line.split() for line in epochs_log.read_text().splitlines()]
    first_pid = first[0][0]
    second = [int(epoch) for pid, epoch in lines if pid != first_pid]
    resumed_at = second[0]
    assert 2 <= resumed_at <= len(first)  # from the last checkpoint, not from scratch
    assert second == list(range(resumed_at, 6))  # fewer epochs the second time
    assert len(second) < 6
    print(f"first attempt ran epochs {[int(e) for _, e in first]}, killed; retry ran {second}")

    # -- the logged result equals an uninterrupted run's -----------------------------------------
    reference = run_configuration(Standin(), Config(), "gru", {}, tmp_path / "reference")
    assert reference.metrics["resumed_from_epoch"] == 0
    client = mlflow_client(local_stack)
    experiment = client.get_experiment_by_name(f"rnnflow/{STANDIN}")
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.`rnnflow.pipeline_id` = '{run_id}' and tags.`rnnflow.role` = 'child'")
    # The killed attempt's live child run was closed as KILLED by the retry; one FINISHED.
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    [finished] = [c for c in children if c.info.status == "FINISHED"]
    logged = finished.data.metrics
    assert logged["resumed_from_epoch"] == resumed_at
    assert logged["test_loss"] == pytest.approx(reference.metrics["test_loss"], rel=1e-4)
    assert logged["test_accuracy"] == pytest.approx(reference.metrics["test_accuracy"], abs=1e-6)
    assert len(client.get_metric_history(finished.info.run_id, "train_loss")) == 6
    # The killed attempt's parent run was closed by the retry, not left RUNNING forever.
    parents = client.search_runs(
        [experiment.experiment_id],
        f"tags.`rnnflow.pipeline_id` = '{run_id}' and tags.`rnnflow.role` = 'parent'")
    # (the second retry's parent only reuses the logged row)
    assert sorted(p.info.status for p in parents) == ["FINISHED", "FINISHED", "KILLED"]
