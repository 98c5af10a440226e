"""Metro reader: Parquet round trip, validation errors that name the file, atomic outputs."""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnn_core.datasets.io import DataFormatError, sha256_file
from rnn_core.datasets.metro import (
    METRO_SCHEMA,
    gather_windows,
    load_metro,
    normalise,
    preprocess_metro,
    training_maxima,
)


def _flows(days: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 500, (days, 73, 80, 2), generator=g).float()


@pytest.fixture
def raw(tmp_path) -> Path:
    path = tmp_path / "hz.pch"
    torch.save((_flows(3, 0), _flows(2, 1)), path)
    return path


def test_round_trip_schema_and_order(raw, tmp_path):
    out = tmp_path / "out"
    manifest = preprocess_metro(raw, out)
    assert manifest.rows == {"train": 3 * 73 * 80, "test": 2 * 73 * 80}
    assert manifest.summary["test"]["days"] == 2 and manifest.variant == "full"
    assert sorted(manifest.files) == ["meta.json", "test.parquet", "train.parquet"]
    assert manifest.summary["source"]["sha256"] == sha256_file(raw)
    table = pq.read_table(out / "train.parquet")
    assert table.schema.equals(METRO_SCHEMA)
    keys = np.stack([table.column(c).to_numpy() for c in ("day", "slot", "station")], 1)
    assert (keys[0] == 0).all() and tuple(keys[-1]) == (2, 72, 79)
    assert (np.diff(keys[:, 0] * 10_000 + keys[:, 1] * 100 + keys[:, 2]) > 0).all()  # sorted
    train, test = torch.load(raw, weights_only=True)
    np.testing.assert_array_equal(load_metro(out / "train.parquet"), train.numpy())
    np.testing.assert_array_equal(load_metro(out / "test.parquet"), test.numpy())


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 73, 79, 2), "shape"),
        (torch.zeros(2, 73, 80, 2, dtype=torch.float64), "dtype"),
        ("not a tensor", "expected a tensor"),
    ],
)
def test_bad_tensor_names_file_and_split(tmp_path, bad, message):
    path = tmp_path / "bad.pch"
    torch.save((_flows(1, 0), bad), path)
    with pytest.raises(DataFormatError, match=message) as err:
        preprocess_metro(path, tmp_path / "out")
    assert str(path) in str(err.value) and "test" in str(err.value)


def test_nan_names_first_bad_index_and_keeps_good_output(raw, tmp_path):
    out = tmp_path / "out"
    preprocess_metro(raw, out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    train = _flows(2, 0)
    train[1, 5, 7, 1] = float("nan")
    train[1, 9, 0, 0] = float("inf")
    bad = tmp_path / "nan.pch"
    torch.save((train, _flows(1, 1)), bad)
    with pytest.raises(DataFormatError, match=r"train: 2 non-finite.*\(1, 5, 7, 1\)") as err:
        preprocess_metro(bad, out)
    assert str(bad) in str(err.value)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before  # no temp files left, good files untouched


def test_negative_and_not_a_tuple(tmp_path):
    train = _flows(1, 0)
    train[0, 0, 3, 0] = -1
    path = tmp_path / "neg.pch"
    torch.save((train, _flows(1, 1)), path)
    with pytest.raises(DataFormatError, match="negative"):
        preprocess_metro(path, tmp_path / "out")
    torch.save({"train": train}, path)
    with pytest.raises(DataFormatError, match=r"\(train, test\) tuple"):
        preprocess_metro(path, tmp_path / "out")


def test_load_rejects_missing_and_duplicate_rows(raw, tmp_path):
    preprocess_metro(raw, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "test.parquet")
    holed = tmp_path / "holed.parquet"
    pq.write_table(pa.concat_tables([table.slice(0, 100), table.slice(101)]), holed)
    with pytest.raises(DataFormatError, match=r"holed.parquet.*\(0, 1, 20\) missing"):
        load_metro(holed)
    doubled = tmp_path / "doubled.parquet"
    pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), doubled)
    with pytest.raises(DataFormatError, match="present 2 times"):
        load_metro(doubled)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(table.cast(table.schema.set(3, pa.field("inflow", pa.float64()))), wrong)
    with pytest.raises(DataFormatError, match="wrong.parquet.*schema"):
        load_metro(wrong)


def test_maxima_guard_and_normalise():
    train = np.zeros((2, 73, 80, 2), dtype=np.float32)
    train[1, 4, 0, 0] = 10.0
    train[0, 2, 0, 1] = 4.0
    maxima = training_maxima(train)
    assert maxima.shape == (80, 2) and maxima[0, 0] == 10 and maxima[0, 1] == 4
    assert (maxima[1:] == 1).all()  # never-used stations: no division by zero
    scaled = normalise(train, maxima)
    assert scaled.dtype == np.float32 and scaled.max() == 1.0 and np.isfinite(scaled).all()
    as_tensor = normalise(torch.from_numpy(train), maxima)
    assert torch.equal(as_tensor, torch.from_numpy(scaled))


def test_gather_windows_time_major():
    x = torch.arange(2 * 73 * 80 * 2, dtype=torch.float32).reshape(2, 73, 80, 2)
    inputs, labels = gather_windows(x, 4, [(1, 7, 10), (0, 3, 69)])
    assert inputs.shape == (4, 2, 2) and labels.tolist() == [7, 3]
    assert torch.equal(inputs[:, 0], x[1, 10:14, 7]) and torch.equal(inputs[:, 1], x[0, 69:73, 3])
    with pytest.raises(ValueError, match="runs past"):
        gather_windows(x, 5, [(0, 0, 69)])


@pytest.mark.slow
def test_real_mirror_file(tmp_path):
    raw = Path(os.environ.get("RNN_DATA_MIRROR", "/work/shared/datasets")) / "metro/hzdataset.pch"
    if not raw.is_file():
        pytest.skip(f"{raw} not available")
    manifest = preprocess_metro(raw, tmp_path)
    assert manifest.rows == {"train": 18 * 73 * 80, "test": 7 * 73 * 80}
    assert manifest.summary["train"]["max"] == 4876.0
    train = load_metro(tmp_path / "train.parquet")
    assert train.shape == (18, 73, 80, 2) and load_metro(tmp_path / "test.parquet").shape[0] == 7
    assert (training_maxima(train) > 1).all()


def test_not_a_torch_archive(tmp_path):
    path = tmp_path / "garbage.pch"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(DataFormatError, match="garbage.pch.*weights_only=True"):
        preprocess_metro(path, tmp_path / "out")
