"""Many-to-many forecasting of metro flows: at every quarter-hour t predict t+1 .. t+H.

One `Forecaster` is shared by all stations: a sequence is one station's flows on one day, from a
window of random start and length (one length per batch, as in the classification experiment),
and every step is supervised on all H horizons (`forecast_targets`). Flows are divided by the
training maxima (the course's normalisation) and MSEs are in those units.

Splits (rnn_core.experiments.metro_common): train = 1-15 Jan, val = the last `val_days` (3)
training days, 16-18 Jan, test = 19-25 Jan. After every epoch the model is scored on whole
validation days (val_mse, val_mse_h<h>: the curves, and the epoch choice with
`train.select_epoch = "best_val"`). The chosen model then scores whole test days (7 days x
stations, start 05:30), so every test target is scored once per horizon; the baselines are
scored on exactly the same targets and mask: persistence (x_t for every horizon), the time-of-day
profile (mean of the training days at that slot and station), and the day-type profile (the same
mean over training days of the same type: working day, or weekend/holiday), a stronger baseline
reported for honesty.

Configurations: "<cell>-<flows>" (flows = in | inout) with only the flows as input, as in the
course, and "<cell>-<flows>-ctx" with context inputs after the flows (`covariates`, in order);
`extra` lists more by name. Cell "course" is the course's own model, the tanh `RNN` class of
rnn_core.cells (hand-written; its decoder maps every state to the H x F forecasts), so
"course-inout" is the course's setting exactly: flows only, one model for all stations, every
step supervised. `backend_twins` trains a configuration again on the other backend
("<name>-scratch" / "-fused", rnn_core.comparisons). The context inputs:
    station   one-hot station id (the first linear layer makes it an embedding)
    time      time of day: position in the day and its sine/cosine (3 columns)
    offday    1 for weekends and public holidays (calendar fact, known in advance)
    profile   the day-type profile at t+1..t+H for this station (H x F columns), from the
              training days only; for a training day it leaves that day out, so the model never
              sees its own target averaged in

Against the input length (the course varies both): for each L of `eval_lengths`, every test
window of L quarter-hours (day, station, start; a seeded sample of `max_eval_windows` when
there are more), every step supervised as in training (targets inside the window): the MSE by
horizon of the model and of the baselines on the same targets. L = 73 is the whole-day score.

Metrics (h = 1..H): test_mse, test_mse_h<h> (the model), train_mse[_h<h>] (training days),
persistence_/profile_/daytype_profile_mse[_h<h>] (baselines, test days; the day-type profile is
the honest one to beat), val_mse[_h<h>] (the chosen epoch); per input length L:
test_mse_L<L>, test_mse_L<L>_h<h>, and persistence_/profile_/daytype_profile_mse_L<L>. History
(the runner's names): train_loss, val_loss, val_mse, val_mse_h<h>, lr, seconds. Figures:
mse_by_horizon (model and the three baselines), mse_by_length (each horizon and the baselines
against L), learning_curves, example_day (the model's t+1 forecast of the busiest station on
the first working test day, Mon 21 Jan).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rnn_core import plots
from rnn_core.baselines import persistence_forecast, profile_forecast, time_of_day_profile
from rnn_core.config import knob
from rnn_core.datasets.metro import NUM_SLOTS, NUM_STATIONS, gather_windows
from rnn_core.experiments.metro_common import (
    CELLS,
    Days,
    MetroConfig,
    MetroExperiment,
    RecurrentBlock,
    Spec,
    all_windows,
    check_known,
    chunked,
    feature_sets,
    model_fields,
    parse_features,
    product_specs,
    time_features,
    window_slots,
)
from rnn_core.experiments.protocol import Report, Splits
from rnn_core.metrics import ForecastMetrics
from rnn_core.models import Batch, ForecasterConfig, forecast_targets
from rnn_core.results import Headline
from rnn_core.significance import PerWindowSquaredError
from rnn_core.training import TrainConfig, evaluate

COVARIATES = ("station", "time", "offday", "profile")  # the order they are appended in
INPUTS = {"flows": "", "context": "-ctx"}  # input set -> configuration name suffix


@dataclass
class Model(RecurrentBlock):
    """[metro_forecasting.model]: the recurrent stack plus the residual output."""

    residual: bool = True  # predict the change from x_t (persistence + learned correction)


@dataclass
class Config(MetroConfig):
    """Defaults = the `default` profile, all 80 stations, one model shared by them: the course's
    setting (flows only) with the course's RNN class and with a GRU, next to the GRU with
    context inputs; in then in+out flows; the in+out context GRU also on the scratch backend."""

    min_length: int = knob(8, min=2, max=NUM_SLOTS)  # a one-step window has no target
    cells: list[str] = knob(["gru"], choices=CELLS, nonempty=True)
    features: list[str] = knob(["in", "inout"], choices=feature_sets(), nonempty=True)  # flows
    # read and predicted
    inputs: list[str] = knob(["flows", "context"], choices=tuple(INPUTS), nonempty=True)
    extra: list[str] = knob(["course-in", "course-inout"])  # more configurations by name
    backend_twins: list[str] = knob(["gru-inout-ctx"])  # also trained on the other backend
    eval_lengths: list[int] = knob([8, 16, 32, NUM_SLOTS], min=2, max=NUM_SLOTS, nonempty=True)
    max_eval_windows: int = knob(50_000, min=1)  # test windows per input length (a sample)
    covariates: list[str] = knob(["time", "offday", "profile"], choices=COVARIATES)
    stations: int = knob(80, min=2, max=NUM_STATIONS)  # stations 0..S-1, one shared model
    horizon: int = knob(4, min=1, max=NUM_SLOTS - 1)  # H: each step predicts t+1 .. t+H
    # ~20 s of CPU per configuration; fp32: MSEs near 1e-3 are worth full precision
    train: TrainConfig = knob(TrainConfig(epochs=15, lr=3e-3, lr_decay=0.9, grad_clip=1.0,
                                          precision="fp32"))
    model: Model = knob(Model)


class Windows(NamedTuple):
    """A batch plus what the baselines need: slots L x B, stations B, days B."""

    batch: Batch
    slots: torch.Tensor
    stations: torch.Tensor
    days: torch.Tensor


def day_type_profiles(train: torch.Tensor, off_train: torch.Tensor,
                      off: torch.Tensor | None = None) -> torch.Tensor:
    """Expected flows per day from training days of the same type -> D x 73 x S x F.

    For other days (`off`: their off-day flags) the mean over the training days of their type.
    For the training days themselves (`off` None) each leaves itself out (or, when it is the
    only day of its type, uses every other training day), so the input never contains the
    target it predicts. A type no training day has falls back to every training day.
    """
    flags = off_train.tolist()
    expected = []
    for d, o in enumerate(flags if off is None else off.tolist()):
        skip = d if off is None else -1
        same = [e for e, f in enumerate(flags) if f == o and e != skip]
        expected.append(train[same or [e for e in range(len(flags)) if e != skip]].mean(0))
    return torch.stack(expected)


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


def num_covariates(spec: Spec, horizon: int) -> int:
    sizes = {"station": spec.stations, "time": 3, "offday": 1,
             "profile": horizon * len(spec.columns)}
    return sum(sizes[c] for c in spec.covariates)


def context(data: Splits, days: Days) -> dict:
    """The covariates' inputs for one split: off-day flags and the day-type profiles."""
    off = None if days is data.train else days.off  # training days: leave each one out
    expected = day_type_profiles(data.train.x, data.train.off, off)
    return {"off": days.off, "expected": expected[..., data.spec.columns],
            "stations": data.spec.stations}


def whole_days(days: Days, spec: Spec, ctx: dict, horizon: int) -> list[Windows]:
    """Every (day, station) from 05:30 to 23:30: each target scored once per horizon."""
    windows = all_windows(days.num_days, spec.stations, NUM_SLOTS)[0]
    return chunked(windows, lambda w: make_windows(days.x, w, NUM_SLOTS, spec, ctx, horizon))


def _score(predict, windows: list[Windows], horizon: int) -> dict[str, float]:
    scores = ForecastMetrics(horizon)
    for w in windows:
        scores.update(predict(w), w.batch)
    return scores.compute()


@torch.no_grad()
def example_day(model, test: list[Windows], days: Days) -> dict | None:
    """The busiest station's inflow on the first working test day: actual, t+1, persistence."""
    working = [d for d, off in enumerate(days.off.tolist()) if not off]
    first = test[0]
    rows = [b for b in range(len(first.days)) if working and first.days[b] == working[0]]
    if not rows:
        return None
    b = max(rows, key=lambda i: float(first.batch.x[:, i, 0].sum()))
    x = first.batch.x[:, b : b + 1]
    pred = model(x.to(next(model.parameters()).device))[0].cpu()  # L x 1 x H x F
    hours = (5.5 + (first.slots[:-1, b].float() + 1) * 0.25).tolist()  # time of the target
    return {
        "title": f"station {int(first.stations[b])}, {days.dates[working[0]]:%a %d %b}",
        "series": {
            "actual": dict(zip(hours, first.batch.y[:-1, b, 0, 0].tolist())),
            "model t+1": dict(zip(hours, pred[:-1, 0, 0, 0].tolist())),
            "persistence": dict(zip(hours, first.batch.x[:-1, b, 0].tolist())),
        },
    }


class MetroForecasting(MetroExperiment):
    """Many-to-many forecast of t+1..t+H against persistence and time-of-day baselines."""

    name = "metro_forecasting"
    axes = ("cells", "features", "inputs", "extra", "backend_twins")  # which configurations
    Config = Config
    headline = Headline("test_mse_h1", "min")
    select_on = ("mse_h1", "min")

    @staticmethod
    def spec(config: Config, cell: str, features: str, inputs: str) -> Spec:
        covariates = () if inputs == "flows" else tuple(c for c in COVARIATES
                                                        if c in config.covariates)
        return Spec(f"{cell}-{features}{INPUTS[inputs]}", cell, config.stations, features,
                    parse_features(features)[0], covariates)

    def product(self, config: Config) -> dict[str, Spec]:
        """Configuration names in training order: cells, then flow sets, then input sets."""
        check_known("covariates", config.covariates, COVARIATES)
        check_known("inputs", config.inputs, tuple(INPUTS))
        return product_specs(partial(self.spec, config), config.cells, config.features,
                             config.inputs)

    def parse(self, config: Config, name: str) -> Spec:
        """"course-inout" / "gru-in-ctx" -> its Spec."""
        match = re.fullmatch(r"([a-z]+)-(in|inout)(-ctx)?", name)
        if not match or match[1] not in CELLS:
            raise ValueError(f"metro_forecasting: bad configuration name {name!r}; expected "
                             f"<cell>-<in|inout>[-ctx] with cell in {CELLS}")
        return self.spec(config, match[1], match[2], "context" if match[3] else "flows")

    def plan(self, config: Config) -> list[str]:
        if NUM_SLOTS not in config.eval_lengths:
            raise ValueError(f"eval_lengths {config.eval_lengths} must contain {NUM_SLOTS} "
                             "(whole days: the headline's windows)")
        return super().plan(config)

    def data(self, config: Config, name: str, manifests) -> Splits:
        data = super().data(config, name, manifests)
        data.contexts = {"train": context(data, data.train), "val": context(data, data.val)}
        S = data.spec.stations
        data.info |= {f"{split}_windows": f"{data.info['days'][split] * S} whole days "
                      "(start 05:30)" for split in ("val", "test")}
        return data

    def model_config(self, config: Config, spec: Spec) -> ForecasterConfig:
        return ForecasterConfig(**model_fields(config.model, spec),
                                num_flows=len(spec.columns), horizon=config.horizon,
                                num_covariates=num_covariates(spec, config.horizon))

    def train_batch(self, config: Config, data: Splits, length: int, windows) -> Batch:
        return make_windows(data.train.x, windows, length, data.spec, data.contexts["train"],
                            config.horizon).batch

    def val_batches(self, config: Config, data: Splits) -> list[Batch]:
        """Whole validation days."""
        return [w.batch for w in whole_days(data.val, data.spec, data.contexts["val"],
                                            config.horizon)]

    def score(self, config: Config, name: str, model, data: Splits) -> dict:
        """The model and every baseline on the same whole-day test targets and mask."""
        spec, H = data.spec, config.horizon
        test_context = context(data, data.test)
        test = whole_days(data.test, spec, test_context, H)
        train = whole_days(data.train, spec, data.contexts["train"], H)
        profile = time_of_day_profile(data.train.x)[..., spec.columns]  # 73 x S x F
        predictors = {
            "persistence": lambda w: persistence_forecast(w.batch.x[..., : len(spec.columns)], H),
            "profile": lambda w: profile_forecast(profile, w.slots, w.stations, H),
            "daytype_profile": lambda w: _at_targets(test_context["expected"], w.days, w.slots,
                                                     w.stations, H),
        }
        scores: dict = {}
        h1 = PerWindowSquaredError(H, h=1)  # per test window, mean = test_mse_h1: paired test
        for prefix, result in [
            ("test", evaluate(model, [w.batch for w in test], [model.make_metrics(), h1])),
            ("train", evaluate(model, [w.batch for w in train])),
            *[(p, _score(f, test, H)) for p, f in predictors.items()],
        ]:
            scores[f"{prefix}_mse"] = result["mse"]
            scores.update({f"{prefix}_mse_h{h}": result[f"mse_h{h}"] for h in range(1, H + 1)})
        scores |= self.by_length(config, model, data, test_context, predictors)
        scores["example_day"] = example_day(model, test, data.test)  # for the report only
        scores["per_example"] = h1.values()
        return scores

    def by_length(self, config: Config, model, data: Splits, test_context: dict,
                  predictors: dict) -> dict[str, float]:
        """MSE against the input length: every test window of each eval length L (or a seeded
        sample), all steps supervised; the baselines on the same targets (mean over h)."""
        spec, H, days, scores = data.spec, config.horizon, data.test, {}
        for L in config.eval_lengths:
            windows, _ = all_windows(days.num_days, spec.stations, L, config.max_eval_windows,
                                     config.train.seed)
            batches = chunked(windows, lambda w, L=L: make_windows(days.x, w, L, spec,
                                                                   test_context, H))
            result = evaluate(model, [w.batch for w in batches])
            scores[f"test_mse_L{L}"] = result["mse"]
            scores |= {f"test_mse_L{L}_h{h}": result[f"mse_h{h}"] for h in range(1, H + 1)}
            for prefix, predict in predictors.items():
                scores[f"{prefix}_mse_L{L}"] = _score(predict, batches, H)["mse"]
        return scores

    def report(self, config, name, model, data, history, scores, folder) -> Report:
        H = config.horizon
        by_horizon = {
            label: {h: scores[f"{prefix}_mse_h{h}"] for h in range(1, H + 1)}
            for label, prefix in [("model", "test"), ("persistence", "persistence"),
                                  ("time-of-day profile", "profile"),
                                  ("day-type profile", "daytype_profile")]
        }
        lengths = config.eval_lengths
        by_length = {f"model t+{h}": {L: scores[f"test_mse_L{L}_h{h}"] for L in lengths}
                     for h in range(1, H + 1)}
        by_length |= {f"{label} (mean over h)": {L: scores[f"{prefix}_mse_L{L}"] for L in lengths}
                      for label, prefix in [("persistence", "persistence"),
                                            ("time-of-day profile", "profile"),
                                            ("day-type profile", "daytype_profile")]}
        figures = {
            "mse_by_horizon": plots.series_by_x(
                by_horizon, folder / "mse_by_horizon.png", xlabel="horizon (quarter-hours ahead)",
                ylabel="test MSE (normalised)", logy=True,
                title=f"{name}: MSE by horizon\n(the day-type profile is the baseline to beat)"),
            "mse_by_length": plots.series_by_x(
                by_length, folder / "mse_by_length.png", xlabel="input length L (quarter-hours)",
                ylabel="test MSE (normalised)", logy=True,
                title=f"{name}: MSE against the input length"),
            "learning_curves": plots.learning_curves(
                history, ["train_loss", "val_mse", "val_mse_h1"], folder / "learning_curves.png",
                title=f"{name}: MSE per epoch (val: whole days)"),
        }
        example = scores.get("example_day")
        if example:
            figures["example_day"] = plots.series_by_x(
                example["series"], folder / "example_day.png", xlabel="hour",
                ylabel="inflow (normalised)", title=f"{name}: {example['title']}")
        return Report(figures=figures)

    def serving(self, config: Config, name: str, data: Splits) -> dict:
        """Recent flows in passengers (+ timestamp) -> t+1..t+H in passengers: the training
        maxima, the covariate recipe, and the day-type profiles of the training days for a new
        working day and a new off day (what `context` gives a test day)."""
        from rnn_core.experiments.metro_common import HOLIDAYS
        from rnn_core.serving.metro import flow_forecaster_spec

        spec = data.spec
        profiles = None
        if "profile" in spec.covariates:  # [working day, off day] x 73 x S x F, normalised
            profiles = day_type_profiles(data.train.x, data.train.off,
                                         torch.tensor([0.0, 1.0]))[..., spec.columns]
        return flow_forecaster_spec(spec.stations, spec.columns, spec.covariates,
                                    config.horizon, data.maxima, profiles, sorted(HOLIDAYS))


EXPERIMENT = MetroForecasting()
