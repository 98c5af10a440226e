"""What both metro experiments share: splits, calendar, windows, batching and config fields.

    data = load_splits(manifest, stations=10, val_days=3)   # Splits of Days (D x 73 x S x 2)
    windows, sampled = all_windows(7, 10, length=20)        # N x 3 (day, station, start)
    x, labels = gather_windows(data.train.x, 20, windows[:64])

The splits (the dataset's README: 18 training days 1-18 Jan 2019, 7 test days 19-25 Jan 2019):

    train  1-15 Jan   the training days minus the last `val_days` (default 3)
    val    16-18 Jan  the last `val_days` training days, held out: the per-epoch curves, the
                      `best_val` epoch choice and any tuning are judged on them. Chronological,
                      like the test split after them; with the default 3 they are Wed-Fri, so
                      validation holds working days only (test holds Sat 19 and Sun 20 Jan too)
    test   19-25 Jan  sealed: read by the scoring phase only (rnn_core.experiments.protocol)

Normalisation follows the course: each station and direction is divided by its maximum over the
training days - the days left after the validation hold-out - and validation and test days
reuse those maxima (so their values may exceed 1). Day-type profiles (forecasting) also come
from those training days only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from rnn_core.config import knob
from rnn_core.datasets.bucketing import RandomLengthWindowSampler
from rnn_core.datasets.manifest import DatasetManifest
from rnn_core.datasets.metro import (
    NUM_SLOTS,
    NUM_STATIONS,
    load_metro,
    normalise,
    training_maxima,
)
from rnn_core.experiments.pairs import split_twin, with_twins
from rnn_core.experiments.protocol import Batches, Experiment, Splits
from rnn_core.layers import BACKENDS
from rnn_core.models import Batch, build_model, config_dict

# First calendar day of each prepared file (train.parquet: 1-18 Jan 2019, test.parquet: 19-25).
FIRST_DAY = {"train": dt.date(2019, 1, 1), "test": dt.date(2019, 1, 19)}
# Public holidays inside the data. 1 Jan 2019 (New Year) behaves like a Sunday: its 07:30-08:45
# share of the day's traffic is 4 % against 15-18 % on working days (measured on the train split).
HOLIDAYS = frozenset({dt.date(2019, 1, 1)})
# "course" is the course's own model: the tanh `RNN` class of rnn_core.cells (one_step / forward
# / decode), hand-written, one layer (models mode="course"); the others are Recurrent stacks.
CELLS = ("course", "rnn", "lstm", "gru")
COURSE = "course"
FEATURE_SETS = {"in": [0], "inout": [0, 1]}  # flow columns of the last axis (0 in, 1 out)
EVAL_BATCH = 4096  # windows per evaluation batch: large, evaluation keeps no graph


# --- config blocks both experiments embed -------------------------------------------------------


@dataclass
class MetroConfig:
    """The fields both metro Configs start with: the validation hold-out and training windows."""

    val_days: int = knob(3, min=1, max=17)  # the last training days held out for validation
    min_length: int = knob(5, min=1, max=NUM_SLOTS)  # each training batch draws its window
    max_length: int = knob(NUM_SLOTS, min=1, max=NUM_SLOTS)  # length from min..max (73 = a day)
    batch_size: int = knob(64, min=1)  # windows per training batch
    batches_per_epoch: int = knob(100, min=1)  # windows are drawn with replacement: no fixed epoch
    extra: list[str] = knob([])  # more configurations by name, outside the product of the lists
    backend_twins: list[str] = knob([])  # configurations also trained on the other backend,
    # named <name>-<backend> (rnn_core.experiments.pairs); course-* pairs with torch.nn's RNN


@dataclass
class RecurrentBlock:
    """The model block ([<experiment>.model]) both metro models share."""

    hidden_size: int = knob(64, min=1)  # recurrent units
    num_layers: int = knob(1, min=1)  # stacked recurrent layers
    dropout: float = knob(0.0, min=0, below=1)  # between stacked layers (num_layers >= 2)
    backend: str = knob("fused", choices=BACKENDS)  # fused (torch.nn) | scratch (rnn_core.cells)
    forget_bias: float | None = knob(None)  # LSTM cells: forget-gate bias at init (e.g. 1.0)


class Spec(NamedTuple):
    """One planned configuration."""

    name: str
    cell: str
    stations: int  # stations 0..S-1
    features: str  # the feature set as the config names it, e.g. "inout-tod"
    columns: list[int]  # flow columns of the last data axis
    covariates: tuple[str, ...]  # inputs after the flows, in order ("time", "station", ...)
    backend: str | None = None  # a backend twin's backend (None: the model block's)


def product_specs(make: Callable[..., Spec], *axes) -> dict[str, Spec]:
    """One Spec per combination of the axes' values (the first axis varies slowest), by name."""
    return {spec.name: spec for spec in map(make, *zip(*itertools.product(*axes)))}


def feature_sets(suffixes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The feature-set names a config may list: in, inout, then each with "-<suffix>"."""
    return (*FEATURE_SETS, *(f"{f}-{s}" for s in suffixes for f in FEATURE_SETS))


def parse_features(features: str, suffixes: tuple[str, ...] = ()) -> tuple[list[int], str]:
    """"inout-tod" -> ([0, 1], "tod"): the flow columns and the suffix ("" for none)."""
    flows, _, extra = features.partition("-")
    if flows not in FEATURE_SETS or (extra and extra not in suffixes):
        raise ValueError(f"unknown feature set {features!r}: expected one of "
                         f"{', '.join(feature_sets(suffixes))}")
    return FEATURE_SETS[flows], extra


def check_known(what: str, values, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}: expected some of {', '.join(allowed)}")


def model_fields(block: RecurrentBlock, spec: Spec) -> dict[str, Any]:
    """The recurrent fields of a model config for `spec`, from the model block.

    The course's model is its RNN class (mode course: one tanh layer, always hand-written; the
    block's layers, dropout and backend do not apply); its fused twin is the torch.nn model the
    class equals at init (mode stack, cell rnn, one layer)."""
    values = dataclasses.asdict(block)
    if spec.cell == COURSE:
        values |= {"num_layers": 1, "dropout": 0.0, "forget_bias": None}
        if spec.backend == "fused":
            return values | {"cell": "rnn", "backend": "fused"}
        return values | {"cell": "rnn", "backend": "scratch", "mode": "course"}
    if spec.cell != "lstm":
        values["forget_bias"] = None  # only an LSTM has a forget gate
    return values | {"cell": spec.cell, "backend": spec.backend or block.backend}


def backend_of(spec: Spec, block: RecurrentBlock) -> str:
    """The backend a configuration trains on (the course's class: hand-written)."""
    return "scratch" if spec.cell == COURSE else block.backend


def check_lengths(config: MetroConfig) -> None:
    if not config.min_length <= config.max_length:
        raise ValueError(f"min_length {config.min_length} > max_length {config.max_length}: need "
                         f"1 <= min_length <= max_length <= {NUM_SLOTS}")


# --- calendar and data --------------------------------------------------------------------------


def off_days(first: dt.date, num_days: int) -> torch.Tensor:
    """1.0 for weekends and public holidays, 0.0 for working days, from `first` on (floats)."""
    days = [first + dt.timedelta(days=d) for d in range(num_days)]
    return torch.tensor([float(d.weekday() >= 5 or d in HOLIDAYS) for d in days])


@dataclass
class Days:
    """One split: consecutive calendar days of normalised flows."""

    x: torch.Tensor  # days x 73 x S x 2 float32
    first: dt.date  # calendar date of day 0

    @property
    def num_days(self) -> int:
        return int(self.x.shape[0])

    @property
    def dates(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=d) for d in range(self.num_days)]

    @property
    def off(self) -> torch.Tensor:
        return off_days(self.first, self.num_days)


def load_splits(manifest: DatasetManifest, stations: int, val_days: int) -> Splits:
    """train / val / test Days for stations 0..stations-1, normalised by the training maxima."""
    if not 2 <= stations <= NUM_STATIONS:
        raise ValueError(f"stations must lie in 2..{NUM_STATIONS}, got {stations}")
    raw = {split: load_metro(manifest.path(f"{split}.parquet")) for split in ("train", "test")}
    fit = len(raw["train"]) - val_days  # D x 73 x 80 x 2
    if fit < 1:
        raise ValueError(f"val_days {val_days} leaves no training day of {len(raw['train'])}")
    maxima = training_maxima(raw["train"][:fit])  # all 80 stations, as the course does

    def days(x: np.ndarray, first: dt.date) -> Days:
        return Days(torch.from_numpy(normalise(x, maxima)[:, :, :stations].copy()), first)

    first = FIRST_DAY["train"]
    train = days(raw["train"][:fit], first)
    val = days(raw["train"][fit:], first + dt.timedelta(days=fit))
    test = days(raw["test"], FIRST_DAY["test"])
    splits = {"train": train, "val": val, "test": test}
    info: dict[str, Any] = {
        "name": "metro",
        "variant": manifest.variant,  # the whole AMAL TP4 file; the station subset is below
        "stations_used": stations,
        "slots_per_day": NUM_SLOTS,
        "days": {s: d.num_days for s, d in splits.items()},
        "dates": {s: f"{d.dates[0]} .. {d.dates[-1]}" for s, d in splits.items()},
        "validation": f"the last {val_days} training days, held out of training and maxima",
        "rows_used": {s: d.num_days * NUM_SLOTS * stations for s, d in splits.items()},
        "files": {k: {"file": k, "sha256": f.sha256} for k, f in manifest.files.items()},
        "normalisation": "per station and direction: divided by the maximum over the train days",
        "meta": manifest.summary,
    }
    return Splits(train, val, test, info, maxima=torch.from_numpy(maxima[:stations].copy()))


# --- windows ------------------------------------------------------------------------------------


def all_windows(
    num_days: int, num_stations: int, length: int, cap: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, bool]:
    """Every (day, station, start) window of `length` slots -> (N x 3 int64, sampled?).

    When there are more than `cap`, a sample of `cap` of them drawn without replacement from a
    generator seeded by (seed, length), sorted, so reruns score exactly the same windows.
    """
    if not 1 <= length <= NUM_SLOTS:
        raise ValueError(f"window length must lie in 1..{NUM_SLOTS}, got {length}")
    grid = torch.cartesian_prod(
        torch.arange(num_days), torch.arange(num_stations), torch.arange(NUM_SLOTS - length + 1)
    ).reshape(-1, 3)
    if cap is None or len(grid) <= cap:
        return grid, False
    rng = np.random.default_rng([seed, length])
    keep = np.sort(rng.choice(len(grid), size=cap, replace=False))
    return grid[torch.from_numpy(keep)], True


def chunked(windows: torch.Tensor, make: Callable[[torch.Tensor], Any]) -> list[Any]:
    """Evaluation batching: `make` on consecutive slices of EVAL_BATCH windows."""
    return [make(windows[i : i + EVAL_BATCH]) for i in range(0, len(windows), EVAL_BATCH)]


def window_slots(windows: torch.Tensor, length: int) -> torch.Tensor:
    """Time-of-day slot of every step: L x B int64 (windows: B x 3 day, station, start)."""
    start = torch.as_tensor(windows).reshape(-1, 3)[:, 2]
    return start[None, :] + torch.arange(length)[:, None]


def time_features(slots: torch.Tensor) -> torch.Tensor:
    """L x B slots -> L x B x 3: position in the day (0..1) and its sine/cosine on a 24 h circle.

    The circle uses the clock (slot 0 = 05:30, 15 min per slot), so that 23:30 and 05:30 are
    six hours apart rather than neighbours.
    """
    hours = 5.5 + slots.float() * 0.25
    angle = hours * (2 * math.pi / 24)
    position = slots.float() / (NUM_SLOTS - 1)
    return torch.stack([position, torch.sin(angle), torch.cos(angle)], dim=-1)


# --- the phases both experiments share -----------------------------------------------------------


class MetroExperiment(Experiment):
    """Base of the two metro experiments: plan, data, model and training batches.

    A subclass gives `specs` (the planned configurations), `model_config`, `train_batch` (one
    training Batch from sampled windows) and `val_batches`; its `score` reads the test split.
    """

    datasets = ("metro",)

    def product(self, config: Any) -> dict[str, Spec]:
        """The configurations of the config's lists (their product), by name, in order."""
        raise NotImplementedError

    def parse(self, config: Any, name: str) -> Spec:
        """One configuration from its name (for `extra`)."""
        raise NotImplementedError

    def specs(self, config: Any) -> dict[str, Spec]:
        """Every planned configuration: the product, then `extra`, each followed by its backend
        twin when `backend_twins` lists it."""
        specs = dict(self.product(config))
        for name in config.backend_twins:
            self.parse(config, name)  # a name this experiment could plan, or a clear error
        for name in config.extra:
            spec = self.parse(config, name)
            specs.setdefault(spec.name, spec)
        names = with_twins(self.name, specs, config.backend_twins,
                           lambda n: backend_of(specs[n], config.model))
        out = {}
        for name in names:
            base, backend = split_twin(name)
            if name in specs:
                out[name] = specs[name]
            else:  # a twin: its configuration on the other backend
                out[name] = specs[base]._replace(name=name, backend=backend)
        return out

    def model_config(self, config: Any, spec: Spec) -> Any:
        raise NotImplementedError

    def train_batch(self, config: Any, data: Splits, length: int, windows) -> Batch:
        raise NotImplementedError

    def val_batches(self, config: Any, data: Splits) -> list[Batch]:
        raise NotImplementedError

    def plan(self, config: Any) -> list[str]:
        check_lengths(config)
        return list(self.specs(config))

    def data(self, config: Any, name: str, manifests: dict[str, DatasetManifest]) -> Splits:
        spec = self.specs(config)[name]
        data = load_splits(manifests["metro"], spec.stations, config.val_days)
        data.spec = spec
        return data

    def model(self, config: Any, name: str, data: Splits):
        return build_model(config_dict(self.model_config(config, data.spec)))

    def batches(self, config: Any, name: str, data: Splits) -> Batches:
        """Training: `batches_per_epoch` batches of one random window length each, redrawn per
        epoch from (seed, epoch) (the course's protocol); validation: the subclass's."""
        sampler = RandomLengthWindowSampler(
            data.train.num_days, data.spec.stations, NUM_SLOTS, config.batch_size,
            range(config.min_length, config.max_length + 1), config.batches_per_epoch,
            seed=config.train.seed)

        def train(epoch: int) -> Iterator[Batch]:
            sampler.set_epoch(epoch)
            for length, windows in sampler:
                yield self.train_batch(config, data, length, windows)

        return Batches(train, self.val_batches(config, data))

    def tags(self, config: Any, name: str, data: Splits) -> dict[str, str]:
        spec = data.spec
        backend = spec.backend or backend_of(spec, config.model)
        return {**super().tags(config, name, data), "cell": spec.cell,
                "stations": str(spec.stations), "features": spec.features,
                "covariates": ",".join(spec.covariates) or "none", "backend": backend}
