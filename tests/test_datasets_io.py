"""Atomic writers: a failure half-way through leaves the previous file and no temp files."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnn_core.datasets import io
from rnn_core.datasets.io import (
    DataFormatError,
    read_json,
    read_parquet_checked,
    write_json_atomic,
    write_parquet_atomic,
)


def test_failure_mid_write_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "t.parquet"
    good = pa.table({"x": pa.array([1, 2, 3], pa.int32())})
    write_parquet_atomic(good, path)

    def half_written(table, f, **kwargs):
        f.write(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(io.pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(pa.table({"x": [9]}), path)
    monkeypatch.undo()
    assert pq.read_table(path).equals(good)
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]  # temp file removed


def test_json_round_trip_and_errors_name_the_file(tmp_path):
    path = write_json_atomic({"tokens": ["é", "<pad>"]}, tmp_path / "v.json")
    assert read_json(path) == {"tokens": ["é", "<pad>"]}
    assert "é" in path.read_text(encoding="utf-8")  # readable, not \u-escaped
    path.write_text("{broken")
    with pytest.raises(DataFormatError, match=r"v.json: not valid JSON"):
        read_json(path)
    with pytest.raises(DataFormatError, match=r"missing.json: file not found"):
        read_json(tmp_path / "missing.json")


def test_read_parquet_checked_rejects_other_schema(tmp_path):
    path = write_parquet_atomic(pa.table({"x": pa.array([1], pa.int64())}), tmp_path / "t.parquet")
    assert read_parquet_checked(path, pa.schema([("x", pa.int64())])).num_rows == 1
    with pytest.raises(DataFormatError, match=r"t.parquet: schema"):
        read_parquet_checked(path, pa.schema([("x", pa.int32())]))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match=r"junk.parquet: not a readable Parquet"):
        read_parquet_checked(tmp_path / "junk.parquet", pa.schema([("x", pa.int64())]))
