"""A tiny test-only experiment for the fault tests, trained by the real runner and logged by the
real grid flow: the sign of a noisy sequence's last quarter, two configurations (GRU, RNN), three
epochs of a second or so each.

`HOOKS[epoch]` (in-process) runs when that epoch's batches are drawn, e.g. to stop the tracking
server while a configuration trains; with `log_dir` set, every epoch start is appended to
`<log_dir>/epochs.log` as "<pid> <config> <epoch>", so a test can tell what was trained again.

Run as a script it is one writer of the many-writers test:

    python tests/fault_support.py race URI WORK_DIR PIPELINE_ID BARRIER_DIR INDEX
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rnn_core import experiments
from rnn_core.config import knob
from rnn_core.experiments.protocol import Batches, Experiment, Splits
from rnn_core.models import Batch, build_model
from rnn_core.results import Headline
from rnn_core.training import TrainConfig, evaluate

NAME = "fault_standin"  # test-only; never part of the package
LENGTH = 20
HOOKS: dict[int, Callable[[], None]] = {}


@dataclass
class Config:
    cells: list[str] = knob(["gru", "rnn"])
    hidden_size: int = 8
    train_size: int = 512
    log_dir: str | None = None
    train: TrainConfig = knob(TrainConfig(epochs=3, lr=1e-2, torch_threads=1))


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LENGTH, n, 1, generator=g)
    return x, (x[-LENGTH // 4:].sum(dim=(0, 2)) > 0).long()


def _batches(x, y, size: int = 64) -> list[Batch]:
    return [Batch(x[:, i:i + size], y[i:i + size]) for i in range(0, x.shape[1], size)]


class FaultStandin(Experiment):
    """Sign of a noisy sequence's last quarter (the fault tests' stand-in)."""

    name = NAME
    Config = Config
    headline = Headline("test_accuracy", "max")

    def plan(self, config):
        return list(config.cells)

    def data(self, config, name, manifests):
        seed = config.train.seed
        return Splits(_data(config.train_size, seed), _data(128, seed + 2),
                      _data(256, seed + 1), {"variant": "synthetic", "test_rows": 256})

    def model(self, config, name, data):
        return build_model({"kind": "classifier", "num_classes": 2, "input_size": 1,
                            "cell": name, "hidden_size": config.hidden_size})

    def batches(self, config, name, data):
        def train(epoch: int):
            if config.log_dir:
                Path(config.log_dir).mkdir(parents=True, exist_ok=True)
                with (Path(config.log_dir) / "epochs.log").open("a") as fh:
                    fh.write(f"{os.getpid()} {name} {epoch}\n")
            if epoch in HOOKS:
                HOOKS[epoch]()
            return _batches(*data.train)

        return Batches(train, _batches(*data.val))

    def score(self, config, name, model, data):
        scores = evaluate(model, _batches(*data.test))
        return {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"]}


def register() -> FaultStandin:
    return experiments.register(FaultStandin())


def trained_epochs(log_dir: Path) -> list[tuple[str, str, int]]:
    """(pid, config, epoch) of every epoch started, in order."""
    path = Path(log_dir) / "epochs.log"
    if not path.exists():
        return []
    return [(p, c, int(e)) for p, c, e in (ln.split() for ln in path.read_text().splitlines())]


def _race(uri: str, work_dir: str, pipeline_id: str, barrier: str, index: str) -> None:
    """One of several writers started together on one fresh store."""
    from flows.experiments import experiment_flow

    register()
    flow = experiment_flow(NAME)
    barrier_dir = Path(barrier)
    (barrier_dir / f"ready-{index}").touch()
    deadline = time.monotonic() + 120
    while not (barrier_dir / "go").exists():  # everyone starts at the same moment
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.01)
    flow(config=Config(log_dir=str(Path(work_dir) / "epochs")), profile="race", manifests={},
         work_dir=work_dir, tracking_uri=uri, pipeline_id=pipeline_id)


if __name__ == "__main__" and sys.argv[1:2] == ["race"]:
    torch.set_num_threads(1)
    _race(*sys.argv[2:7])
