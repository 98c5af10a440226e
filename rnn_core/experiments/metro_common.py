"""What both metro experiments share: normalised data, calendar, windows and input features.

    data = load_data(data_dir, stations=10)          # D x 73 x S x 2 tensors, normalised
    windows = all_windows(7, 10, length=20)          # N x 3 (day, station, start), every window
    x, labels = gather_windows(data.test, 20, windows[:64])   # 20 x 64 x 2, 64

Normalisation follows the course: each station and direction is divided by its maximum over the
training days, and the test days reuse those maxima (so test values may exceed 1).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_core.datasets.io import sha256_file
from rnn_core.datasets.metro import (
    NUM_SLOTS,
    NUM_STATIONS,
    load_metro,
    normalise,
    training_maxima,
)

# First calendar day of each split (dataset README: train 1-18 Jan 2019, test 19-25 Jan 2019).
FIRST_DAY = {"train": dt.date(2019, 1, 1), "test": dt.date(2019, 1, 19)}
# Public holidays inside the data. 1 Jan 2019 (New Year) behaves like a Sunday: its 07:30-08:45
# share of the day's traffic is 4 % against 15-18 % on working days (measured on the train split).
HOLIDAYS = frozenset({dt.date(2019, 1, 1)})
FEATURE_SETS = {"in": [0], "inout": [0, 1]}  # flow columns of the last axis (0 in, 1 out)
EVAL_BATCH = 4096  # windows per evaluation batch: large, evaluation keeps no graph


@dataclass
class MetroData:
    """Both splits, normalised by the training maxima, for the first `stations` stations."""

    train: torch.Tensor  # train_days x 73 x S x 2 float32
    test: torch.Tensor  # test_days x 73 x S x 2 float32
    maxima: torch.Tensor  # S x 2, the training maxima used for both splits
    info: dict[str, Any] = field(default_factory=dict)  # what RunResult.dataset records


def load_data(data_dir: Path, stations: int = NUM_STATIONS) -> MetroData:
    """Read processed/metro/{train,test}.parquet, normalise, keep stations 0..stations-1."""
    if not 2 <= stations <= NUM_STATIONS:
        raise ValueError(f"stations must lie in 2..{NUM_STATIONS}, got {stations}")
    folder = Path(data_dir) / "processed" / "metro"
    paths = {split: folder / f"{split}.parquet" for split in ("train", "test")}
    raw = {split: load_metro(path) for split, path in paths.items()}  # D x 73 x 80 x 2
    maxima = training_maxima(raw["train"])  # 80 x 2, all stations, as the course does
    splits = {
        split: torch.from_numpy(normalise(x, maxima)[:, :, :stations].copy())
        for split, x in raw.items()
    }
    info: dict[str, Any] = {
        "name": "metro",
        "variant": "full",  # the whole AMAL TP4 file; the station subset is recorded below
        "stations_used": stations,
        "slots_per_day": NUM_SLOTS,
        "days": {split: int(x.shape[0]) for split, x in splits.items()},
        "rows_used": {split: int(x.shape[0] * NUM_SLOTS * stations) for split, x in splits.items()},
        "files": {split: {"file": p.name, "sha256": sha256_file(p)} for split, p in paths.items()},
        "normalisation": "per station and direction: divided by the training maximum",
    }
    meta = folder / "meta.json"  # written by newer prepare steps; recorded when present
    if meta.is_file():
        info["meta"] = json.loads(meta.read_text(encoding="utf-8"))
    maxima_t = torch.from_numpy(maxima[:stations].copy())
    return MetroData(splits["train"], splits["test"], maxima_t, info)


def off_days(split: str, num_days: int) -> torch.Tensor:
    """1.0 for weekends and public holidays, 0.0 for working days (num_days floats)."""
    first = FIRST_DAY[split]
    days = [first + dt.timedelta(days=d) for d in range(num_days)]
    return torch.tensor([float(d.weekday() >= 5 or d in HOLIDAYS) for d in days])


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
