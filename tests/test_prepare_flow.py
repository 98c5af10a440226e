"""prepare_data end to end on the real mirror (mirror only: nothing is downloaded), its cache,
and the download task's retry policy against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.settings import (
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from test_download import MirrorServer

from flows.prepare import ALL_DATASETS, prepare_data, step_count, step_states
from rnn_core.datasets.io import read_json
from rnn_core.datasets.sources import PermanentFetchError
from tasks.data import download_dataset

pytestmark = pytest.mark.slow


def task_states(flow_state) -> dict[str, str]:
    return step_states(flow_state, expected=step_count(ALL_DATASETS))


def timed_run(data_dir: Path, mirror: Path):
    started = time.perf_counter()
    state = prepare_data(data_dir=str(data_dir), mirror=str(mirror), mirror_only=True,
                         return_state=True)
    return state, time.perf_counter() - started


def test_prepare_data_end_to_end_then_cached(prefect_harness, mirror_dir, tmp_path):
    data_dir = tmp_path / "data"
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        first, first_s = timed_run(data_dir, mirror_dir)
        summary = first.result()

        processed = data_dir / "processed"
        parquets = sorted(str(p.relative_to(processed)) for p in processed.rglob("*.parquet"))
        assert parquets == [f"{d}/{s}.parquet" for d in ("ag_news", "metro", "moliere", "trump")
                            for s in ("test", "train")]
        rows = {p: pq.ParquetFile(processed / p).metadata.num_rows for p in parquets}
        assert rows["metro/train.parquet"] == 18 * 73 * 80
        assert rows["metro/test.parquet"] == 7 * 73 * 80
        assert rows["ag_news/test.parquet"] == 7_600
        assert rows["ag_news/train.parquet"] == 41_342  # the mirror only has the subset
        ag = summary["ag_news"]
        assert ag["variant"] == "subset" and "41,342" in ag["notes"][0]
        assert read_json(processed / "ag_news" / "meta.json")["train_variant"] == "subset"
        assert ag["vocab_size"] == 20_000
        assert ag["padding"]["buckets"] <= 0.05 < ag["padding"]["random"]
        assert read_json(processed / "ag_news" / "buckets.json")["boundaries"]
        for corpus in ("trump", "moliere"):  # the two text splits add up to the cleaned text
            meta = read_json(processed / corpus / "meta.json")
            assert meta["train"]["chars"] + meta["test"]["chars"] == meta["clean_chars"]
            assert summary[corpus]["rows"] == {s: rows[f"{corpus}/{s}.parquet"]
                                               for s in ("train", "test")}
        assert task_states(first)["preprocess-ag_news"] == "Completed"

        # Second run: every data step is reused, and the outputs are the same files.
        before = {p: (processed / p).stat().st_mtime_ns for p in parquets}
        second, second_s = timed_run(data_dir, mirror_dir)
        assert second.result() == summary
        states = task_states(second)
        cached_steps = [n for n in states if n.startswith(("preprocess", "bucket"))]
        assert len(cached_steps) == 5 and all(states[n] == "Cached" for n in cached_steps)
        assert all(states[f"download-{d}"] == "Completed" for d in summary)  # verify, no copy
        assert {p: (processed / p).stat().st_mtime_ns for p in parquets} == before
        assert second_s < first_s

        # A deleted output is not "cached": that step runs again and rewrites it.
        (processed / "trump" / "train.parquet").unlink()
        third, _ = timed_run(data_dir, mirror_dir)
        states = task_states(third)
        assert states["preprocess-trump"] == "Completed"
        assert states["preprocess-moliere"] == "Cached"
        assert pq.ParquetFile(processed / "trump" / "train.parquet").metadata.num_rows == rows[
            "trump/train.parquet"]

        # Bad input: a mirror whose moliere.txt is cut short. The run stops at that file, names
        # it, and leaves the earlier good raw and processed files as they were.
        bad_mirror = tmp_path / "bad_mirror"
        for src in mirror_dir.glob("*/*"):
            (bad_mirror / src.parent.name).mkdir(parents=True, exist_ok=True)
            (bad_mirror / src.parent.name / src.name).symlink_to(src)
        truncated = bad_mirror / "moliere" / "moliere.txt"
        truncated.unlink()
        truncated.write_bytes((mirror_dir / "moliere" / "moliere.txt").read_bytes()[:100_000])
        shutil.rmtree(data_dir / "raw" / "moliere")
        before = {p: (processed / p).stat().st_mtime_ns for p in parquets}
        failed, _ = timed_run(data_dir, bad_mirror)
        assert failed.is_failed()
        with pytest.raises(PermanentFetchError, match="moliere/moliere.txt") as info:
            failed.result()
        assert "size is 100,000 bytes" in str(info.value)
        assert list((data_dir / "raw" / "moliere").iterdir()) == []  # no partial copy
        assert {p: (processed / p).stat().st_mtime_ns for p in parquets} == before


@pytest.fixture
def lone_task_run(prefect_harness):
    """Tasks called outside a flow have no flow run to send their logs to: keep them local."""
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        yield


def _one_file_sources(tmp_path: Path, url: str, data: bytes) -> Path:
    sources = tmp_path / "sources.toml"
    sources.write_text(f'[toy]\n[[toy.files]]\nname = "a.txt"\n'
                       f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
                       f'sources = [{{ url = "{url}" }}]\n')
    return sources


def test_download_task_retries_a_503_then_succeeds(lone_task_run, tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.txt").write_bytes(b"hello\n")
    server = MirrorServer(tmp_path / "served")
    try:
        server.misbehave["/a.txt"] = [503, "truncate"]
        sources = _one_file_sources(tmp_path, f"{server.url}/a.txt", b"hello\n")
        quick = download_dataset.with_options(retry_delay_seconds=0)
        got = quick("toy", str(tmp_path / "raw"), mirror="", sources_file=str(sources))
        assert Path(got["files"]["a.txt"]).read_bytes() == b"hello\n"
        assert server.requests == ["/a.txt"] * 3  # 503, cut-off body, then the good copy
    finally:
        server.close()


def test_download_task_does_not_retry_a_404(lone_task_run, tmp_path):
    (tmp_path / "served").mkdir()
    server = MirrorServer(tmp_path / "served")
    try:
        sources = _one_file_sources(tmp_path, f"{server.url}/a.txt", b"hello\n")
        quick = download_dataset.with_options(retry_delay_seconds=0)
        with pytest.raises(PermanentFetchError, match="toy/a.txt"):
            quick("toy", str(tmp_path / "raw"), mirror="", sources_file=str(sources))
        assert server.requests == ["/a.txt"]
    finally:
        server.close()
