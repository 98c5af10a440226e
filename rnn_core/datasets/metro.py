"""Hangzhou metro flows (AMAL TP4): reader, Parquet round trip and the course's normalisation.

Raw file: a torch zip archive holding a tuple `(train, test)` of float32 tensors shaped
`D x 73 x 80 x 2` (days x quarter-hour slots 05:30-23:30 x stations x [inflow, outflow]);
train = 18 days (1-18 Jan 2019), test = 7 days (19-25 Jan 2019).

Processed layout (`out_dir`, e.g. `data/processed/metro`):
    train.parquet, test.parquet   one row per (day, slot, station), sorted by that triple;
                                  day is the index *within the split* (test day 0 = 19 Jan)
    schema: day int16, slot int16, station int16, inflow float32, outflow float32
    meta.json                     source + sha256, rows, days, flow totals and max per split
    manifest.json                 written last: every file above with its size and sha256
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from rnn_core.datasets.io import (
    DataFormatError,
    read_parquet_checked,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from rnn_core.datasets.manifest import DatasetManifest

NUM_SLOTS = 73  # quarter hours from 05:30 to 23:30
NUM_STATIONS = 80
NUM_DIRECTIONS = 2  # 0 = inflow, 1 = outflow
SPLITS = ("train", "test")

METRO_SCHEMA = pa.schema(
    [
        ("day", pa.int16()),
        ("slot", pa.int16()),
        ("station", pa.int16()),
        ("inflow", pa.float32()),
        ("outflow", pa.float32()),
    ]
)


def _check_split(raw_file: Path, split: str, x: object) -> np.ndarray:
    """Validate one split tensor; returns it as a float32 `D x 73 x 80 x 2` array."""
    if not isinstance(x, torch.Tensor):
        raise DataFormatError(raw_file, f"{split}: expected a tensor, got {type(x).__name__}")
    expected = (NUM_SLOTS, NUM_STATIONS, NUM_DIRECTIONS)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
        raise DataFormatError(
            raw_file, f"{split}: shape {tuple(x.shape)}, expected (days>=1, 73, 80, 2)"
        )
    if x.dtype != torch.float32:
        raise DataFormatError(raw_file, f"{split}: dtype {x.dtype}, expected torch.float32")
    arr = x.detach().cpu().numpy()
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataFormatError(
            raw_file,
            f"{split}: {int(bad.sum())} non-finite values, first at (day, slot, station, "
            f"direction) = {first}: {arr[first]}",
        )
    neg = arr < 0
    if neg.any():
        first = tuple(int(i) for i in np.argwhere(neg)[0])
        raise DataFormatError(
            raw_file, f"{split}: negative passenger count {arr[first]} at index {first}"
        )
    return arr


def read_metro_raw(raw_file: Path) -> dict[str, np.ndarray]:
    """Load and validate the raw archive -> {"train": D x 73 x 80 x 2, "test": ...} float32."""
    raw_file = Path(raw_file)
    try:
        # weights_only=True: a downloaded pickle must not be able to run code.
        data = torch.load(raw_file, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        # Unsafe content -> UnpicklingError; not a torch archive -> UnpicklingError/RuntimeError.
        raise DataFormatError(raw_file, f"cannot load with weights_only=True: {err}") from None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataFormatError(
            raw_file, f"expected a (train, test) tuple, got {type(data).__name__}"
        )
    return {split: _check_split(raw_file, split, x) for split, x in zip(SPLITS, data)}


def metro_table(x: np.ndarray) -> pa.Table:
    """`D x 73 x 80 x 2` array -> Arrow table, one row per (day, slot, station), sorted."""
    days, slots, stations, _ = x.shape
    # C-order flattening of the first three axes is exactly the (day, slot, station) sort order.
    day, slot, station = np.meshgrid(
        np.arange(days), np.arange(slots), np.arange(stations), indexing="ij"
    )
    flat = x.reshape(-1, NUM_DIRECTIONS)
    columns = [
        day.ravel().astype(np.int16),
        slot.ravel().astype(np.int16),
        station.ravel().astype(np.int16),
        np.ascontiguousarray(flat[:, 0], dtype=np.float32),
        np.ascontiguousarray(flat[:, 1], dtype=np.float32),
    ]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=METRO_SCHEMA)


def preprocess_metro(raw_file: Path, out_dir: Path, notes: list[str] | None = None
                     ) -> DatasetManifest:
    """Validate the raw archive and write train/test Parquet, meta.json, then manifest.json.

    Both splits are validated before anything is written, so a bad archive leaves earlier good
    output untouched. Returns the manifest; its `summary` is meta.json (rows, days, total in/out
    flow and max per split). `notes` (e.g. from the download step) are kept in the manifest.
    """
    raw_file, out_dir = Path(raw_file), Path(out_dir)
    splits = read_metro_raw(raw_file)
    tables = {split: metro_table(x) for split, x in splits.items()}
    meta: dict = {"dataset": "metro", "source": {"file": raw_file.name,
                                                 "sha256": sha256_file(raw_file)},
                  "slots": NUM_SLOTS, "stations": NUM_STATIONS}
    for split, table in tables.items():
        x = splits[split]
        meta[split] = {
            "rows": table.num_rows,
            "days": int(x.shape[0]),
            "inflow_total": float(x[..., 0].sum(dtype=np.float64)),
            "outflow_total": float(x[..., 1].sum(dtype=np.float64)),
            "max": float(x.max()),
        }
    for split, table in tables.items():
        write_parquet_atomic(table, out_dir / f"{split}.parquet")
    write_json_atomic(meta, out_dir / "meta.json")
    manifest = DatasetManifest.build(
        "metro", "full", out_dir, [f"{split}.parquet" for split in SPLITS] + ["meta.json"],
        rows={split: meta[split]["rows"] for split in SPLITS}, notes=notes, summary=meta)
    manifest.write()  # last: a manifest only ever lists files that are already complete
    return manifest


def load_metro(path: Path) -> np.ndarray:
    """Read one split's Parquet back into a float32 `D x 73 x 80 x 2` array.

    Insists on completeness: every (day, slot, station) with day in [0, D) present exactly once,
    where D = max(day) + 1; otherwise a DataFormatError naming the file and the first gap.
    """
    path = Path(path)
    table = read_parquet_checked(path, METRO_SCHEMA)
    if table.num_rows == 0:
        raise DataFormatError(path, "no rows")
    day, slot, station = (
        table.column(c).to_numpy().astype(np.int64) for c in METRO_SCHEMA.names[:3]
    )
    if (
        day.min() < 0
        or not (0 <= slot.min() and slot.max() < NUM_SLOTS)
        or not (0 <= station.min() and station.max() < NUM_STATIONS)
    ):
        raise DataFormatError(path, "day/slot/station index out of range")
    days = int(day.max()) + 1
    flat = (day * NUM_SLOTS + slot) * NUM_STATIONS + station
    counts = np.bincount(flat, minlength=days * NUM_SLOTS * NUM_STATIONS)
    if (counts != 1).any():
        first = int(np.flatnonzero(counts != 1)[0])
        d, rest = divmod(first, NUM_SLOTS * NUM_STATIONS)
        s, st = divmod(rest, NUM_STATIONS)
        what = "missing" if counts[first] == 0 else f"present {counts[first]} times"
        raise DataFormatError(path, f"(day, slot, station) = ({d}, {s}, {st}) {what}")
    x = np.empty((days * NUM_SLOTS * NUM_STATIONS, NUM_DIRECTIONS), dtype=np.float32)
    x[flat, 0] = table.column("inflow").to_numpy()
    x[flat, 1] = table.column("outflow").to_numpy()
    if not np.isfinite(x).all():
        raise DataFormatError(path, "non-finite flow values")
    return x.reshape(days, NUM_SLOTS, NUM_STATIONS, NUM_DIRECTIONS)


def training_maxima(train: np.ndarray) -> np.ndarray:
    """Per station and direction maximum over all training days and slots -> float32 `80 x 2`.

    A station that never moved anybody in training would have maximum 0 and divide by zero; its
    maximum is set to 1 so its (all-zero) series stays zero after normalisation.
    """
    train = np.asarray(train, dtype=np.float32)
    maxima = train.max(axis=(0, 1))  # (D, 73, 80, 2) -> (80, 2)
    return np.where(maxima > 0, maxima, np.float32(1.0)).astype(np.float32)


def normalise(x, maxima):
    """Divide flows `... x 80 x 2` by the training maxima (numpy in -> numpy, tensor -> tensor).

    Test days reuse the training maxima, so test values may exceed 1.
    """
    if isinstance(x, torch.Tensor):
        return x / torch.as_tensor(maxima, dtype=x.dtype, device=x.device)
    return (np.asarray(x, dtype=np.float32) / np.asarray(maxima, dtype=np.float32)).astype(
        np.float32
    )


def gather_windows(x, length: int, windows) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut windows of one `length` from `x` (D x 73 x 80 x 2) for station classification.

    `windows` is a list of (day, station, start) as yielded by RandomLengthWindowSampler.
    Returns (length x B x 2 float32 time-major inputs, B long station labels).
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    idx = torch.as_tensor(windows, dtype=torch.long).reshape(-1, 3)  # B x 3
    day, station, start = idx.unbind(1)
    steps = start[None, :] + torch.arange(length)[:, None]  # length x B slot indices
    if steps.numel() and (steps.max() >= x.shape[1] or steps.min() < 0):
        raise ValueError(f"window of length {length} runs past the {x.shape[1]} slots of a day")
    inputs = x[day[None, :], steps, station[None, :]]  # length x B x 2
    return inputs, station.clone()
