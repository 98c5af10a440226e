"""Atomic writers: a failure half-way through leaves the previous file and no temp files; the
temp files a killed write leaves are cleaned up later."""

import os
import tempfile
import time
import uuid
from pathlib import Path

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


def test_remove_partial_writes_only_old_temp_files_of_our_writers(tmp_path):
    sub = tmp_path / "processed" / "metro"
    sub.mkdir(parents=True)
    killed = sub / f".train.parquet.{uuid.uuid4().hex}.tmp"  # _write_bytes_atomic's name
    killed.write_bytes(b"PAR1 half")
    fd, part = tempfile.mkstemp(dir=tmp_path, prefix=".a.txt.", suffix=".part")  # the fetcher's
    os.close(fd)
    fresh = sub / f".test.parquet.{uuid.uuid4().hex}.tmp"  # maybe another run's write in flight
    fresh.write_bytes(b"PAR1")
    others = [sub / "train.parquet", sub / ".keep", sub / "notes.tmp", sub / ".x.tmp"]
    for path in others:
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in [killed, Path(part), *others]:
        os.utime(path, (hour_ago, hour_ago))

    removed = io.remove_partial_writes(tmp_path)
    assert sorted(removed) == sorted([killed, Path(part)])
    assert not killed.exists() and not Path(part).exists()
    assert fresh.exists() and all(p.exists() for p in others)
    assert io.remove_partial_writes(tmp_path, min_age_s=0) == [fresh]
    assert io.remove_partial_writes(tmp_path / "absent") == []
