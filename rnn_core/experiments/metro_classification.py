"""Which station is it? Many-to-one classification of windows of metro flows (AMAL TP4).

A window is `length` consecutive quarter-hours of one station's flows on one day; the model reads
it and names the station. As in the course, flows are divided by each station's training maxima,
and training draws ONE random window length per batch (RandomLengthWindowSampler), so one model
handles every length.

Splits (rnn_core.experiments.metro_common): train = 1-15 Jan, val = the last `val_days` (3)
training days, 16-18 Jan, test = 19-25 Jan. After every epoch the model is scored on a seeded
sample of `curve_windows` validation windows per eval length (the curves, and the epoch choice
with `train.select_epoch = "best_val"`). The chosen model then scores every window of each
length in `eval_lengths` on each split (days x stations x start positions), or a seeded sample
of `max_eval_windows` when there are more (dataset["eval_windows"] says which).

Configurations: cell x station count x feature set, named "<cell>-<S>st-<features>", e.g.
"rnn-10st-in", "gru-80st-inout", plus any listed by name in `extra`. Cells: "course" is the
course's own model, the tanh `RNN` class of rnn_core.cells (its one_step / forward / decode, on
the hand-written backend, one layer of `model.hidden_size`); rnn, lstm and gru are Recurrent
stacks on `model.backend`. Feature sets: "in" (inflow), "inout" (inflow, outflow), and a
"-tod" suffix ("inout-tod") that adds the time of day of each step as three inputs - known
information the course's protocol leaves out, added here as a practitioner would.
`backend_twins` trains a configuration a second time on the other backend ("<name>-fused" /
"-scratch"; a course-* twin is torch.nn's RNN + Linear, equal at init): rnn_core.comparisons.

Metrics (L = window length, each of `eval_lengths`):
    test_error_L<L>, test_loss_L<L>, test_accuracy_L73, test_loss (L73)   the model, test days
    val_error_L<L>, val_loss_L<L>              the model, every validation window (or a sample)
    val_error, val_loss (chosen epoch)         the per-epoch sample of validation windows
    train_error_L<L>, train_error (L73), train_eval_loss (L73)   the model, training days
    majority_error                             always predicting the training majority station
History (the runner's names): train_loss, val_loss, val_error, val_accuracy, lr, seconds.
Figures: learning_curves_loss, learning_curves_error, error_vs_length, confusion_L73 (test,
20 stations or fewer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from rnn_core import plots
from rnn_core.baselines import majority_error
from rnn_core.config import knob
from rnn_core.datasets.metro import NUM_SLOTS, NUM_STATIONS, gather_windows
from rnn_core.experiments.metro_common import (
    CELLS,
    MetroConfig,
    MetroExperiment,
    RecurrentBlock,
    Spec,
    all_windows,
    chunked,
    feature_sets,
    model_fields,
    parse_features,
    product_specs,
    time_features,
    window_slots,
)
from rnn_core.experiments.protocol import Report, Splits
from rnn_core.metrics import ClassificationMetrics
from rnn_core.models import Batch, ClassifierConfig
from rnn_core.results import Headline
from rnn_core.significance import PerExampleOutcome
from rnn_core.training import TrainConfig, evaluate


@dataclass
class Config(MetroConfig):
    """Defaults = the `default` profile: the course's RNN class and a GRU on 10 stations, inflow
    then in+out flows (the course's first step); the GRU on all 80 stations (its second step);
    the 10-station in+out GRU also on the scratch backend (its backend twin).

    The course's class could pair with torch.nn's RNN (course-10st-inout-fused: equal at init,
    equal losses for the first ~20 steps), but a tanh RNN's training here is chaotic: the float
    differences grow until step ~40 and the two runs end 0.16 and 0.40 apart in test error, as
    two seeds would; the GRU's trajectories stay together far longer (4e-3 in the loss after
    200 steps), so the GRU is the pair whose test metrics are compared."""

    cells: list[str] = knob(["course", "gru"], choices=CELLS, nonempty=True)
    stations: list[int] = knob([10], min=2, max=NUM_STATIONS, nonempty=True)  # stations 0..S-1
    features: list[str] = knob(["in", "inout"], choices=feature_sets(("tod",)), nonempty=True)
    input_noise: float = knob(0.0, min=0)  # std of Gaussian noise on training flows (augmentation)
    eval_lengths: list[int] = knob([5, 10, 20, 40, 73], min=1, max=NUM_SLOTS, nonempty=True)
    max_eval_windows: int = knob(50_000, min=1)  # per split and length: all windows, or a sample
    curve_windows: int = knob(256, min=1)  # validation windows per eval length after every epoch
    extra: list[str] = knob(["gru-80st-inout"])  # more configurations by name
    backend_twins: list[str] = knob(["gru-10st-inout"])  # also on the other backend
    # ~25 s of CPU per configuration; fp32: small models gain little from autocast on CUDA
    train: TrainConfig = knob(TrainConfig(epochs=20, lr=3e-3, lr_decay=1.0, grad_clip=1.0,
                                          precision="fp32"))
    model: RecurrentBlock = knob(RecurrentBlock)


def make_batch(x: torch.Tensor, length: int, windows, spec: Spec) -> Batch:
    """Windows (B x 3 day, station, start) of `x` (D x 73 x S x 2) -> Batch(L x B x D, B)."""
    flows, labels = gather_windows(x, length, windows)  # L x B x 2, B station ids
    inputs = flows[..., spec.columns]
    if "time" in spec.covariates:
        inputs = torch.cat([inputs, time_features(window_slots(windows, length))], dim=-1)
    return Batch(inputs, labels)


def eval_batches(x: torch.Tensor, windows: torch.Tensor, length: int, spec: Spec) -> list[Batch]:
    return chunked(windows, lambda w: make_batch(x, length, w, spec))


class MetroClassification(MetroExperiment):
    """Which station is it? Many-to-one on windows of flows; error against test length."""

    name = "metro_classification"
    axes = ("cells", "stations", "features", "extra", "backend_twins")  # which configurations
    Config = Config
    headline = Headline("test_error_L73", "min")
    select_on = ("error", "min")

    @staticmethod
    def spec(cell: str, stations: int, features: str) -> Spec:
        columns, extra = parse_features(features, ("tod",))
        return Spec(f"{cell}-{stations}st-{features}", cell, stations, features, columns,
                    ("time",) if extra else ())

    def product(self, config: Config) -> dict[str, Spec]:
        """Configuration names in training order: cells, then station counts, then features."""
        return product_specs(self.spec, config.cells, config.stations, config.features)

    def parse(self, config: Config, name: str) -> Spec:
        """"gru-80st-inout" -> its Spec."""
        match = re.fullmatch(r"([a-z]+)-(\d+)st-([a-z-]+)", name)
        if not match or match[1] not in CELLS or not 2 <= int(match[2]) <= NUM_STATIONS:
            raise ValueError(f"metro_classification: bad configuration name {name!r}; expected "
                             f"<cell>-<S>st-<features>, cell in {CELLS}, S in 2..{NUM_STATIONS}")
        return self.spec(match[1], int(match[2]), match[3])

    def plan(self, config: Config) -> list[str]:
        if NUM_SLOTS not in config.eval_lengths:
            raise ValueError(f"eval_lengths {config.eval_lengths} must contain {NUM_SLOTS} "
                             "(the headline length: whole days)")
        return super().plan(config)

    def data(self, config: Config, name: str, manifests) -> Splits:
        data = super().data(config, name, manifests)
        S = data.spec.stations
        data.info["eval_windows"] = {
            split: {L: {"windows": min(n, config.max_eval_windows),
                        "sampled": n > config.max_eval_windows}
                    for L in config.eval_lengths
                    for n in [days * S * (NUM_SLOTS - L + 1)]}
            for split, days in data.info["days"].items()
        }
        return data

    def model_config(self, config: Config, spec: Spec) -> ClassifierConfig:
        return ClassifierConfig(**model_fields(config.model, spec), num_classes=spec.stations,
                                input_size=len(spec.columns) + 3 * ("time" in spec.covariates))

    def train_batch(self, config: Config, data: Splits, length: int, windows) -> Batch:
        spec = data.spec
        batch = make_batch(data.train.x, length, windows, spec)
        if config.input_noise > 0:  # jitter the flows only, never the time-of-day inputs
            noise = torch.zeros_like(batch.x)
            noise[..., : len(spec.columns)].normal_(0.0, config.input_noise)
            batch = batch._replace(x=batch.x + noise)
        return batch

    def val_batches(self, config: Config, data: Splits) -> list[Batch]:
        """A fixed seeded sample of `curve_windows` validation windows of every eval length."""
        spec, days = data.spec, data.val.num_days
        return [batch for L in config.eval_lengths
                for batch in eval_batches(data.val.x, all_windows(
                    days, spec.stations, L, config.curve_windows, config.train.seed)[0], L, spec)]

    def score(self, config: Config, name: str, model, data: Splits) -> dict:
        """Every window of each length (or a seeded sample) on each split; majority baseline."""
        spec, S = data.spec, data.spec.stations
        scores: dict = {}
        for split in ("train", "val", "test"):
            days = getattr(data, split)
            for L in config.eval_lengths:
                windows, _ = all_windows(days.num_days, S, L, config.max_eval_windows,
                                         config.train.seed)
                accuracy = ClassificationMetrics(S)
                wrong = PerExampleOutcome(errors=True)  # 0/1 per window: the paired test
                result = evaluate(model, eval_batches(days.x, windows, L, spec), [accuracy, wrong])
                scores[f"{split}_error_L{L}"] = result["error"]
                scores[f"{split}_loss_L{L}"] = result["loss"]
                if split == "test" and L == NUM_SLOTS:
                    scores["confusion"] = accuracy.confusion.numpy()  # for the report only
                    scores["per_example"] = wrong.values()  # mean = the headline test_error_L73
        day = f"L{NUM_SLOTS}"
        scores["train_error"] = scores[f"train_error_{day}"]  # whole-day windows
        scores["train_eval_loss"] = scores[f"train_loss_{day}"]
        scores["test_loss"] = scores[f"test_loss_{day}"]
        scores[f"test_accuracy_{day}"] = 1.0 - scores[f"test_error_{day}"]
        labels = {split: all_windows(getattr(data, split).num_days, S, NUM_SLOTS)[0][:, 1]
                  for split in ("train", "test")}
        scores["majority_error"] = majority_error(labels["train"], labels["test"])
        return scores

    def report(self, config, name, model, data, history, scores, folder) -> Report:
        lengths = config.eval_lengths
        figures = {
            "learning_curves_loss": plots.learning_curves(
                history, ["train_loss", "val_loss"], folder / "learning_curves_loss.png",
                title=f"{name}: cross-entropy (val: mixed lengths)"),
            "learning_curves_error": plots.learning_curves(
                history, ["val_error"], folder / "learning_curves_error.png",
                title=f"{name}: validation 0-1 error (mixed lengths)"),
            "error_vs_length": plots.series_by_x(
                {split: {L: scores[f"{split}_error_L{L}"] for L in lengths}
                 for split in ("test", "val", "train")}
                | {"majority class": {L: scores["majority_error"] for L in lengths}},
                folder / "error_vs_length.png", xlabel="window length (quarter-hours)",
                ylabel="0-1 error", title=f"{name}: error against window length"),
        }
        if data.spec.stations <= 20:  # unreadable beyond that
            figures["confusion_L73"] = plots.confusion_matrix(
                scores["confusion"], [str(s) for s in range(data.spec.stations)],
                folder / "confusion_L73.png", title=f"{name}: test, whole days")
        return Report(figures=figures)

    def serving(self, config: Config, name: str, data: Splits) -> dict:
        """Raw flows in passengers -> station: the training maxima per station, the flow columns
        and the time-of-day inputs this configuration reads (rnn_core.serving.metro)."""
        from rnn_core.serving.metro import station_classifier_spec

        spec = data.spec
        return station_classifier_spec(spec.stations, spec.columns, spec.covariates,
                                       data.maxima)


EXPERIMENT = MetroClassification()
