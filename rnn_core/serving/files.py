"""Raw input files, as `rnnflow predict --input FILE` reads them, per serving kind (csv + numpy).

    text_classifier     .csv with a `title` column (and `description`), or .txt: a title a line
    char_lm             .csv with a `prompt` column, or .txt: one prompt a line
    station_classifier  .csv with `inflow` (and `outflow`) columns, a row per quarter-hour: one
                        window; or .npy shaped L x F or B x L x F (F = inflow[, outflow])
    flow_forecaster     .csv with `station`, `inflow` (and `outflow`) columns, each station's rows
                        in time order; or .npy shaped L x S x F (time x stations x flows)
    tensor              .npy: the model's batch-first array

`start` (the time of the first value) applies to every window. A file that cannot be read
raises `InputFileError` naming it (and the line); what it holds is checked by the server.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

FLOWS = ("inflow", "outflow")


class InputFileError(ValueError):
    """An input file is missing, unreadable or not in the expected layout."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {problem}")


def read_csv(path: Path, required: tuple[str, ...]) -> dict[str, list[str]]:
    """A CSV with a header -> {column: values as text}; the required columns must be there."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, strict=True)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise InputFileError(path, f"not UTF-8 text ({err.reason})") from None
    except csv.Error as err:
        raise InputFileError(path, f"malformed CSV: {err}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputFileError(path, f"no {', '.join(missing)} column in the header "
                                   f"{header or '(empty file)'}", line=1)
    if not rows:
        raise InputFileError(path, "no rows after the header")
    for number, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InputFileError(path, f"expected {len(header)} fields", line=number)
    return {c: [row[c] for row in rows] for c in header}


def _lines(path: Path) -> list[str]:
    try:
        lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as err:
        raise InputFileError(path, f"not UTF-8 text ({err.reason})") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise InputFileError(path, "no text in the file")
    return lines


def _numbers(path: Path, column: str, values: list[str]) -> list[float]:
    out = []
    for number, value in enumerate(values, start=2):
        try:
            out.append(float(value))
        except ValueError:
            raise InputFileError(path, f"{column} {value!r} is not a number",
                                 line=number) from None
    return out


def _npy(path: Path, ndims: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputFileError(path, f"not a readable .npy array ({err})") from None
    if ndims and arr.ndim not in ndims:
        raise InputFileError(path, f"array of shape {arr.shape}: expected "
                                   f"{' or '.join(f'{n} dimensions' for n in ndims)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputFileError(path, f"array of {arr.dtype}: expected numbers")
    return arr


def read_inputs(kind: str, path: str | Path, start: str | None = None) -> Any:
    """The raw input columns in `path` for a model of serving `kind` (an array for "tensor")."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    suffix = path.suffix.lower()
    if kind in ("text_classifier", "char_lm"):
        column = "title" if kind == "text_classifier" else "prompt"
        if suffix == ".txt":
            return {column: _lines(path)}
        if suffix != ".csv":
            raise InputFileError(path, f"expected a .csv with a {column} column or a .txt")
        table = read_csv(path, (column,))
        return {k: v for k, v in table.items() if k in (column, "description")}
    if kind == "tensor":
        if suffix != ".npy":
            raise InputFileError(path, "this model takes a .npy batch-first array")
        return _npy(path, ())
    if kind not in ("station_classifier", "flow_forecaster"):
        raise InputFileError(path, f"no file reader for models of kind {kind!r}")
    columns = _flows_file(kind, path, suffix)
    rows = len(next(iter(columns.values())))
    if start:
        columns["start"] = [start] * rows
    return columns


def _flows_file(kind: str, path: Path, suffix: str) -> dict[str, list]:
    if suffix == ".npy":
        if kind == "station_classifier":
            arr = _npy(path, (2, 3))
            arr = arr[None] if arr.ndim == 2 else arr  # B x L x F
        else:
            arr = _npy(path, (3,)).transpose(1, 0, 2)  # L x S x F -> S x L x F
        if arr.shape[-1] not in (1, 2):
            raise InputFileError(path, f"last dimension {arr.shape[-1]}: expected 1 (inflow) "
                                       "or 2 (inflow, outflow)")
        return {FLOWS[k]: [row[:, k].astype(float).tolist() for row in arr]
                for k in range(arr.shape[-1])}
    if suffix != ".csv":
        raise InputFileError(path, "expected a .csv or a .npy of flows")
    if kind == "station_classifier":
        table = read_csv(path, ("inflow",))
        return {c: [_numbers(path, c, table[c])] for c in FLOWS if c in table}
    table = read_csv(path, ("station", "inflow"))
    order: dict[int, list[int]] = {}
    for i, value in enumerate(table["station"]):
        try:
            order.setdefault(int(value), []).append(i)
        except ValueError:
            raise InputFileError(path, f"station {value!r} is not a whole number",
                                 line=i + 2) from None
    columns: dict[str, list] = {"station": list(order)}
    for c in FLOWS:
        if c in table:
            values = _numbers(path, c, table[c])
            columns[c] = [[values[i] for i in rows] for rows in order.values()]
    return columns
