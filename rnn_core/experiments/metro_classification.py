"""Which station is it? Many-to-one classification of windows of metro flows (AMAL TP4).

A window is `length` consecutive quarter-hours of one station's flows on one day; the model reads
it and names the station. As in the course, flows are divided by each station's training maxima,
and training draws ONE random window length per batch (RandomLengthWindowSampler), so one model
handles every length. Evaluation scores every test window of each length in `eval_lengths`
(7 days x stations x start positions), or a seeded sample of `max_eval_windows` when there are
more (dataset["eval_windows"] says which).

Configurations: cell x station count x feature set, named "<cell>-<S>st-<features>", e.g.
"rnn-10st-in", "gru-80st-inout". Feature sets: "in" (inflow), "inout" (inflow, outflow), and a
"-tod" suffix ("inout-tod") that adds the time of day of each step as three inputs — known
information the course's protocol leaves out, added here as a practitioner would.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rnn_core import plots
from rnn_core.baselines import majority_error
from rnn_core.checkpoints import LAST, seed_everything
from rnn_core.datasets.bucketing import RandomLengthWindowSampler
from rnn_core.datasets.metro import NUM_SLOTS, gather_windows
from rnn_core.experiments.metro_common import (
    EVAL_BATCH,
    FEATURE_SETS,
    all_windows,
    load_data,
    time_features,
    window_slots,
)
from rnn_core.metrics import ClassificationMetrics
from rnn_core.models import Batch, build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.training import TrainConfig, evaluate, resolve_device, train

TASK = "metro_classification"
HEADLINE = Headline("test_error_L73", "min")


@dataclass
class Config:
    """Defaults = the `default` profile: one GRU on 10 stations, in+out flows."""

    cells: list[str] = field(default_factory=lambda: ["gru"])  # rnn | lstm | gru
    stations: list[int] = field(default_factory=lambda: [10])  # classes: stations 0..S-1
    features: list[str] = field(default_factory=lambda: ["in", "inout"])  # in | inout [+ "-tod"]
    hidden_size: int = 64  # recurrent units
    num_layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # between stacked layers (num_layers >= 2)
    backend: str = "fused"  # fused (torch.nn) | scratch (rnn_core.cells loop)
    min_length: int = 5  # each training batch draws its window length from min..max_length
    max_length: int = 73  # 73 = a whole day
    batch_size: int = 64  # windows per training batch
    batches_per_epoch: int = 100  # training windows are drawn with replacement: no fixed epoch
    epochs: int = 20
    lr: float = 3e-3  # Adam
    lr_decay: float = 1.0  # lr multiplier after each epoch
    grad_clip: float = 1.0  # max global gradient norm
    weight_decay: float = 0.0  # L2 penalty (Adam)
    input_noise: float = 0.0  # std of Gaussian noise added to training flows (augmentation)
    eval_lengths: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 73])  # must hold 73
    max_eval_windows: int = 50_000  # per split and length: all windows, or a seeded sample
    curve_windows: int = 256  # test windows per eval length scored after every epoch
    device: str = "auto"  # auto = CUDA when present
    precision: str = "fp32"  # autocast on CUDA (bf16 | fp16 | fp32); small models gain little
    seed: int = 0  # model init, batch draws and evaluation samples


class Spec(NamedTuple):
    """One planned configuration."""

    name: str
    cell: str
    stations: int
    features: str  # e.g. "inout-tod"
    columns: list[int]  # flow columns of the last data axis
    time_of_day: bool  # append time_features to every step


def _parse_features(features: str) -> tuple[list[int], bool]:
    flows, _, extra = features.partition("-")
    if flows not in FEATURE_SETS or extra not in ("", "tod"):
        raise ValueError(f"unknown feature set {features!r}: expected in|inout, optionally -tod")
    return FEATURE_SETS[flows], extra == "tod"


def _specs(config: Config) -> dict[str, Spec]:
    specs = {}
    for cell, stations, features in itertools.product(
        config.cells, config.stations, config.features
    ):
        name = f"{cell}-{stations}st-{features}"
        specs[name] = Spec(name, cell, stations, features, *_parse_features(features))
    return specs


def plan(config: Config) -> list[str]:
    """Configuration names in training order: cells, then station counts, then features."""
    return list(_specs(config))


def make_batch(x: torch.Tensor, length: int, windows, spec: Spec) -> Batch:
    """Windows (B x 3 day, station, start) of `x` (D x 73 x S x 2) -> Batch(L x B x D, B)."""
    flows, labels = gather_windows(x, length, windows)  # L x B x 2, B station ids
    inputs = flows[..., spec.columns]
    if spec.time_of_day:
        inputs = torch.cat([inputs, time_features(window_slots(windows, length))], dim=-1)
    return Batch(inputs, labels)


def _eval_batches(x, windows: torch.Tensor, length: int, spec: Spec) -> list[Batch]:
    return [
        make_batch(x, length, windows[i : i + EVAL_BATCH], spec)
        for i in range(0, len(windows), EVAL_BATCH)
    ]


def _check(config: Config) -> None:
    if NUM_SLOTS not in config.eval_lengths:
        raise ValueError(f"eval_lengths must contain {NUM_SLOTS} (the headline length)")
    if not 1 <= config.min_length <= config.max_length <= NUM_SLOTS:
        raise ValueError(f"need 1 <= min_length <= max_length <= {NUM_SLOTS}")


def run_one(config: Config, name: str, data_dir: Path, work_dir: Path, callbacks=None) -> RunResult:
    """Train configuration `name`, evaluate on both splits, write plots; resumes from work_dir."""
    started = time.perf_counter()
    _check(config)
    specs = _specs(config)
    if name not in specs:
        raise KeyError(f"{TASK}: unknown configuration {name!r}; planned: {list(specs)}")
    spec = specs[name]
    run_dir = Path(work_dir) / name
    data = load_data(Path(data_dir), spec.stations)
    train_days, test_days = data.train.shape[0], data.test.shape[0]

    seed_everything(config.seed)  # the initial weights depend on the seed alone
    model = build_model(
        {
            "kind": "classifier",
            "cell": spec.cell,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "backend": config.backend,
            "dropout": config.dropout,
            "num_classes": spec.stations,
            "input_size": len(spec.columns) + (3 if spec.time_of_day else 0),
        }
    )
    sampler = RandomLengthWindowSampler(
        train_days,
        spec.stations,
        NUM_SLOTS,
        config.batch_size,
        range(config.min_length, config.max_length + 1),
        config.batches_per_epoch,
        seed=config.seed,
    )

    def batches(epoch: int):
        sampler.set_epoch(epoch)  # a new, reproducible draw of lengths and windows per epoch
        for length, windows in sampler:
            batch = make_batch(data.train, length, windows, spec)
            if config.input_noise > 0:  # jitter the flows only, never the time-of-day inputs
                noise = torch.zeros_like(batch.x)
                noise[..., : len(spec.columns)].normal_(0.0, config.input_noise)
                batch = batch._replace(x=batch.x + noise)
            yield batch

    # Learning curve: a fixed seeded sample of test windows of every eval length, only watched
    # (no early stopping, no model selection on it).
    curve = [
        batch
        for length in config.eval_lengths
        for batch in _eval_batches(
            data.test,
            all_windows(test_days, spec.stations, length, config.curve_windows, config.seed)[0],
            length,
            spec,
        )
    ]
    train_config = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        lr_decay=config.lr_decay,
        grad_clip=config.grad_clip,
        weight_decay=config.weight_decay,
        device=config.device,
        precision=config.precision,
        seed=config.seed,
    )
    trained = train(
        model,
        batches,
        train_config,
        eval_batches=curve,
        callbacks=callbacks,
        checkpoint_dir=run_dir,
    )
    history = [
        {
            "epoch": row["epoch"],
            "epoch_train_loss": row["train_loss"],  # running mean over the epoch's batches
            "epoch_test_loss": row["val_loss"],
            "epoch_test_error": row["val_error"],
            "lr": row["lr"],
            "seconds": row["seconds"],
        }
        for row in trained.history
    ]

    # Final scores: every window of each length (or a seeded sample), on both splits.
    metrics: dict[str, float] = {}
    eval_windows: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "test": {}}
    confusion = None
    for split, x in (("train", data.train), ("test", data.test)):
        for length in config.eval_lengths:
            windows, sampled = all_windows(
                x.shape[0], spec.stations, length, config.max_eval_windows, config.seed
            )
            eval_windows[split][length] = {"windows": len(windows), "sampled": sampled}
            scores = ClassificationMetrics(spec.stations)
            result = evaluate(model, _eval_batches(x, windows, length, spec), [scores])
            metrics[f"{split}_error_L{length}"] = result["error"]
            metrics[f"{split}_loss_L{length}"] = result["loss"]
            if split == "test" and length == NUM_SLOTS:
                confusion = scores.confusion
    full_day = f"L{NUM_SLOTS}"
    metrics["train_error"] = metrics[f"train_error_{full_day}"]  # whole-day windows
    metrics["train_loss"] = metrics[f"train_loss_{full_day}"]
    metrics["test_loss"] = metrics[f"test_loss_{full_day}"]
    metrics[f"test_accuracy_{full_day}"] = 1.0 - metrics[f"test_error_{full_day}"]
    train_labels = all_windows(train_days, spec.stations, NUM_SLOTS)[0][:, 1]
    test_labels = all_windows(test_days, spec.stations, NUM_SLOTS)[0][:, 1]
    metrics["majority_error"] = majority_error(train_labels, test_labels)

    figures = _figures(run_dir / "plots", spec, config, history, metrics, confusion)
    model_config = config_dict(model)
    return RunResult(
        task=TASK,
        name=name,
        params={
            "model": model_config,
            "training": dataclasses.asdict(train_config),
            "experiment": dataclasses.asdict(config),
            "data": {"stations": spec.stations, "features": spec.features},
        },
        metrics=metrics,
        headline=HEADLINE,
        history=history,
        figures=figures,
        tags={
            "model": spec.cell,
            "dataset": "metro",
            "data_variant": data.info["variant"],
            "stations": str(spec.stations),
            "features": spec.features,
        },
        dataset={**data.info, "eval_windows": eval_windows},
        model_config=model_config,
        checkpoint=run_dir / LAST,
        device=str(resolve_device(config.device)),
        seconds=time.perf_counter() - started,
    )


def _figures(folder: Path, spec: Spec, config: Config, history, metrics, confusion):
    title = spec.name
    figures = {
        "learning_curves_loss": plots.learning_curves(
            history,
            ["epoch_train_loss", "epoch_test_loss"],
            folder / "learning_curves_loss.png",
            title=f"{title}: cross-entropy (test: mixed lengths)",
        ),
        "learning_curves_error": plots.learning_curves(
            history,
            ["epoch_test_error"],
            folder / "learning_curves_error.png",
            title=f"{title}: test 0-1 error (mixed lengths)",
        ),
        "error_vs_length": plots.series_by_x(
            {
                split: {L: metrics[f"{split}_error_L{L}"] for L in config.eval_lengths}
                for split in ("test", "train")
            }
            | {"majority class": {L: metrics["majority_error"] for L in config.eval_lengths}},
            folder / "error_vs_length.png",
            xlabel="window length (quarter-hours)",
            ylabel="0-1 error",
            title=f"{title}: error against window length",
        ),
    }
    if confusion is not None and spec.stations <= 20:  # unreadable beyond that
        figures["confusion_L73"] = plots.confusion_matrix(
            confusion.numpy(),
            [str(s) for s in range(spec.stations)],
            folder / "confusion_L73.png",
            title=f"{title}: test, whole days",
        )
    return figures
