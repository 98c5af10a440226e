"""Many-to-many forecasting of metro flows: at every quarter-hour t predict t+1 .. t+H.

One `Forecaster` is shared by all stations: a sequence is one station's flows on one day, from a
window of random start and length (one length per batch, as in the classification experiment),
and every step is supervised on all H horizons (`forecast_targets`). Flows are divided by the
training maxima (the course's normalisation) and MSEs are in those units.

Test scoring uses whole test days (7 days x stations, start 05:30), so every test target is
scored once per horizon; the baselines are scored on exactly the same targets and mask:
persistence (x_t for every horizon), the time-of-day profile (mean of all training days at that
slot and station), and the day-type profile (the same mean over training days of the same type:
working day, or weekend/holiday), a stronger baseline reported for honesty.

Configurations: "<cell>-<flows>" (flows = in | inout) with only the flows as input, as in the
course, and "<cell>-<flows>-ctx" with context inputs after the flows (`covariates`, in order):
    station   one-hot station id (the first linear layer makes it an embedding)
    time      time of day: position in the day and its sine/cosine (3 columns)
    offday    1 for weekends and public holidays (calendar fact, known in advance)
    profile   the day-type profile at t+1..t+H for this station (H x F columns); for a training
              day it leaves that day out, so the model never sees its own target averaged in
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rnn_core import plots
from rnn_core.baselines import persistence_forecast, profile_forecast, time_of_day_profile
from rnn_core.checkpoints import LAST, seed_everything
from rnn_core.datasets.bucketing import RandomLengthWindowSampler
from rnn_core.datasets.metro import NUM_SLOTS, gather_windows
from rnn_core.experiments.metro_common import (
    EVAL_BATCH,
    FEATURE_SETS,
    all_windows,
    load_data,
    off_days,
    time_features,
    window_slots,
)
from rnn_core.metrics import ForecastMetrics
from rnn_core.models import Batch, build_model, config_dict, forecast_targets
from rnn_core.results import Headline, RunResult
from rnn_core.training import TrainConfig, evaluate, resolve_device, train

TASK = "metro_forecasting"
HEADLINE = Headline("test_mse_h1", "min")
COVARIATES = ("station", "time", "offday", "profile")  # the order they are appended in
INPUTS = {"flows": "", "context": "-ctx"}  # input set -> configuration name suffix


@dataclass
class Config:
    """Defaults = the `default` profile: one GRU on all 80 stations, in+out flows plus context."""

    cells: list[str] = field(default_factory=lambda: ["gru"])  # rnn | lstm | gru
    features: list[str] = field(default_factory=lambda: ["in", "inout"])  # flows read, predicted
    inputs: list[str] = field(default_factory=lambda: ["context"])  # flows | context
    covariates: list[str] = field(default_factory=lambda: ["time", "offday", "profile"])
    stations: int = 80  # stations 0..S-1, one shared model
    horizon: int = 4  # H: each step predicts t+1 .. t+H
    hidden_size: int = 64
    num_layers: int = 1
    backend: str = "fused"  # fused (torch.nn) | scratch (rnn_core.cells loop)
    residual: bool = True  # predict the change from x_t (persistence + learned correction)
    min_length: int = 8  # training windows: one length per batch from min..max_length
    max_length: int = 73
    batch_size: int = 64
    batches_per_epoch: int = 100
    epochs: int = 15
    lr: float = 3e-3  # Adam
    lr_decay: float = 0.9  # lr multiplier after each epoch
    grad_clip: float = 1.0
    device: str = "auto"  # auto = CUDA when present
    precision: str = "fp32"  # autocast on CUDA; MSEs near 1e-3 are worth full precision
    seed: int = 0


class Spec(NamedTuple):
    name: str
    cell: str
    features: str
    columns: list[int]  # flow columns of the last data axis, read and predicted
    covariates: tuple[str, ...]  # empty for the flows-only input set


class Windows(NamedTuple):
    """A batch plus what the baselines need: slots L x B, stations B, days B."""

    batch: Batch
    slots: torch.Tensor
    stations: torch.Tensor
    days: torch.Tensor


def _specs(config: Config) -> dict[str, Spec]:
    unknown = set(config.covariates) - set(COVARIATES)
    if unknown:
        raise ValueError(f"unknown covariates {sorted(unknown)}: expected some of {COVARIATES}")
    specs = {}
    for cell, features, inputs in itertools.product(config.cells, config.features, config.inputs):
        if features not in FEATURE_SETS or inputs not in INPUTS:
            raise ValueError(f"unknown features {features!r} or inputs {inputs!r}")
        name = f"{cell}-{features}{INPUTS[inputs]}"
        covariates = tuple(c for c in COVARIATES if c in config.covariates and inputs != "flows")
        specs[name] = Spec(name, cell, features, FEATURE_SETS[features], covariates)
    return specs


def plan(config: Config) -> list[str]:
    """Configuration names in training order: cells, then flow sets, then input sets."""
    return list(_specs(config))


def day_type_profiles(train: torch.Tensor, off_train, off_test):
    """Expected flows per day from training days of the same type -> (train, test) D x 73 x S x 2.

    A training day's profile leaves that day out (or, when it is the only day of its type, uses
    every other training day), so the input never contains the target it predicts.
    """
    expected_train, expected_test = [], []
    for d, off in enumerate(off_train.tolist()):
        same = [e for e, o in enumerate(off_train.tolist()) if o == off and e != d]
        others = same or [e for e in range(len(off_train)) if e != d]
        expected_train.append(train[others].mean(0))
    for off in off_test.tolist():
        same = [e for e, o in enumerate(off_train.tolist()) if o == off]
        expected_test.append(train[same or list(range(len(off_train)))].mean(0))
    return torch.stack(expected_train), torch.stack(expected_test)


def _at_targets(expected: torch.Tensor, days, slots, stations, horizon: int) -> torch.Tensor:
    """expected (D x 73 x S x F) at slots t+1..t+H of each window -> L x B x H x F."""
    target = (slots.unsqueeze(-1) + torch.arange(1, horizon + 1)).clamp(max=NUM_SLOTS - 1)
    day = days.view(1, -1, 1).expand_as(target)
    station = stations.view(1, -1, 1).expand_as(target)
    return expected[day, target, station]  # past the day's end: clamped, and masked as targets


def make_windows(x, windows, length: int, spec: Spec, context: dict, horizon: int) -> Windows:
    """Windows (B x 3 day, station, start) of x (D x 73 x S x 2) -> inputs, targets and indices.

    context: {"off": D floats, "expected": D x 73 x S x F, "stations": S} for this split.
    """
    flows, stations = gather_windows(x, length, windows)  # L x B x 2, B
    flows = flows[..., spec.columns]  # L x B x F
    windows = torch.as_tensor(windows).reshape(-1, 3)
    days, slots = windows[:, 0], window_slots(windows, length)  # B, L x B
    L, B = slots.shape
    parts = [flows]
    for name in spec.covariates:
        if name == "station":
            parts.append(F.one_hot(stations, context["stations"]).float().expand(L, B, -1))
        elif name == "time":
            parts.append(time_features(slots))
        elif name == "offday":
            parts.append(context["off"][days].view(1, B, 1).expand(L, B, 1))
        elif name == "profile":
            ahead = _at_targets(context["expected"], days, slots, stations, horizon)
            parts.append(ahead.reshape(L, B, -1))  # L x B x (H * F)
    y, _ = forecast_targets(flows, horizon)  # L x B x H x F
    return Windows(Batch(torch.cat(parts, dim=-1), y), slots, stations, days)


def num_covariates(spec: Spec, stations: int, horizon: int) -> int:
    sizes = {"station": stations, "time": 3, "offday": 1, "profile": horizon * len(spec.columns)}
    return sum(sizes[c] for c in spec.covariates)


def run_one(config: Config, name: str, data_dir: Path, work_dir: Path, callbacks=None) -> RunResult:
    """Train configuration `name`, score it and the baselines on whole test days, plot."""
    started = time.perf_counter()
    specs = _specs(config)
    if name not in specs:
        raise KeyError(f"{TASK}: unknown configuration {name!r}; planned: {list(specs)}")
    if config.horizon < 1 or not 1 <= config.min_length <= config.max_length <= NUM_SLOTS:
        raise ValueError(f"need horizon >= 1 and 1 <= min_length <= max_length <= {NUM_SLOTS}")
    spec, H, S = specs[name], config.horizon, config.stations
    run_dir = Path(work_dir) / name
    data = load_data(Path(data_dir), S)
    train_days, test_days = data.train.shape[0], data.test.shape[0]
    off = {"train": off_days("train", train_days), "test": off_days("test", test_days)}
    expected = dict(
        zip(("train", "test"), day_type_profiles(data.train, off["train"], off["test"]))
    )
    contexts = {
        split: {"off": off[split], "expected": expected[split][..., spec.columns], "stations": S}
        for split in ("train", "test")
    }

    seed_everything(config.seed)  # the initial weights depend on the seed alone
    model = build_model(
        {
            "kind": "forecaster",
            "cell": spec.cell,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "backend": config.backend,
            "num_flows": len(spec.columns),
            "num_covariates": num_covariates(spec, S, H),
            "horizon": H,
            "residual": config.residual,
        }
    )
    sampler = RandomLengthWindowSampler(
        train_days,
        S,
        NUM_SLOTS,
        config.batch_size,
        range(config.min_length, config.max_length + 1),
        config.batches_per_epoch,
        seed=config.seed,
    )

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        for length, windows in sampler:
            yield make_windows(data.train, windows, length, spec, contexts["train"], H).batch

    def whole_days(split: str, x: torch.Tensor) -> list[Windows]:
        windows = all_windows(x.shape[0], S, NUM_SLOTS)[0]  # every (day, station), start 0
        return [
            make_windows(x, windows[i : i + EVAL_BATCH], NUM_SLOTS, spec, contexts[split], H)
            for i in range(0, len(windows), EVAL_BATCH)
        ]

    test, train_eval = whole_days("test", data.test), whole_days("train", data.train)
    train_config = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        lr_decay=config.lr_decay,
        grad_clip=config.grad_clip,
        device=config.device,
        precision=config.precision,
        seed=config.seed,
    )
    trained = train(
        model,
        batches,
        train_config,
        eval_batches=[w.batch for w in test],
        callbacks=callbacks,
        checkpoint_dir=run_dir,
    )
    history = [
        {
            "epoch": row["epoch"],
            "epoch_train_loss": row["train_loss"],
            "epoch_test_mse": row["val_mse"],
            "epoch_test_mse_h1": row["val_mse_h1"],
            "lr": row["lr"],
            "seconds": row["seconds"],
        }
        for row in trained.history
    ]  # the test curve is only watched: no early stopping or selection on it

    # Final scores: the model and every baseline on the same whole-day targets and mask.
    profile = time_of_day_profile(data.train)[..., spec.columns]  # 73 x S x F
    predictors = {
        "persistence": lambda w: persistence_forecast(w.batch.x[..., : len(spec.columns)], H),
        "profile": lambda w: profile_forecast(profile, w.slots, w.stations, H),
        "daytype_profile": lambda w: _at_targets(
            contexts["test"]["expected"], w.days, w.slots, w.stations, H
        ),
    }
    metrics: dict[str, float] = {}
    for prefix, scores in [
        ("test", evaluate(model, [w.batch for w in test])),
        ("train", evaluate(model, [w.batch for w in train_eval])),
        *[(p, _score(f, test, H)) for p, f in predictors.items()],
    ]:
        metrics[f"{prefix}_mse"] = scores["mse"]
        metrics.update({f"{prefix}_mse_h{h}": scores[f"mse_h{h}"] for h in range(1, H + 1)})

    figures = _figures(run_dir / "plots", spec.name, H, history, metrics, model, test)
    model_config = config_dict(model)
    return RunResult(
        task=TASK,
        name=name,
        params={
            "model": model_config,
            "training": dataclasses.asdict(train_config),
            "experiment": dataclasses.asdict(config),
            "data": {"stations": S, "features": spec.features, "covariates": list(spec.covariates)},
        },
        metrics=metrics,
        headline=HEADLINE,
        history=history,
        figures=figures,
        tags={
            "model": spec.cell,
            "dataset": "metro",
            "data_variant": data.info["variant"],
            "features": spec.features,
            "covariates": ",".join(spec.covariates) or "none",
        },
        dataset={**data.info, "test_windows": f"{test_days * S} whole days (start 05:30)"},
        model_config=model_config,
        checkpoint=run_dir / LAST,
        device=str(resolve_device(config.device)),
        seconds=time.perf_counter() - started,
    )


def _score(predict, windows: list[Windows], horizon: int) -> dict[str, float]:
    scores = ForecastMetrics(horizon)
    for w in windows:
        scores.update(predict(w), w.batch)
    return scores.compute()


@torch.no_grad()
def _figures(folder: Path, title: str, H: int, history, metrics, model, test: list[Windows]):
    by_horizon = {
        label: {h: metrics[f"{prefix}_mse_h{h}"] for h in range(1, H + 1)}
        for label, prefix in [
            ("model", "test"),
            ("persistence", "persistence"),
            ("time-of-day profile", "profile"),
            ("day-type profile", "daytype_profile"),
        ]
    }
    figures = {
        "mse_by_horizon": plots.series_by_x(
            by_horizon,
            folder / "mse_by_horizon.png",
            xlabel="horizon (quarter-hours ahead)",
            ylabel="test MSE (normalised)",
            title=f"{title}: MSE by horizon",
            logy=True,
        ),
        "learning_curves": plots.learning_curves(
            history,
            ["epoch_train_loss", "epoch_test_mse", "epoch_test_mse_h1"],
            folder / "learning_curves.png",
            title=f"{title}: MSE per epoch",
        ),
    }
    # One example: the busiest station's inflow on the first test working day, t+1 forecasts.
    first = test[0]
    model.eval()
    device = next(model.parameters()).device
    pred = model(first.batch.x.to(device))[0].cpu()  # L x B x H x F
    working = [b for b in range(len(first.days)) if first.days[b] == 2]  # 21 Jan, a Monday
    if working:
        b = max(working, key=lambda i: float(first.batch.x[:, i, 0].sum()))
        hours = (5.5 + (first.slots[:, b].float() + 1) * 0.25).tolist()  # time of the target
        figures["example_day"] = plots.series_by_x(
            {
                "actual": dict(zip(hours[:-1], first.batch.y[:-1, b, 0, 0].tolist())),
                "model t+1": dict(zip(hours[:-1], pred[:-1, b, 0, 0].tolist())),
                "persistence": dict(zip(hours[:-1], first.batch.x[:-1, b, 0].tolist())),
            },
            folder / "example_day.png",
            xlabel="hour",
            ylabel="inflow (normalised)",
            title=f"{title}: station {int(first.stations[b])}, Mon 21 Jan",
        )
    return figures
