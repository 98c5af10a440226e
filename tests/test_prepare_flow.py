"""prepare_data end to end on the real mirror (mirror only: nothing is downloaded), its cache,
and the download task's retry policy against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.settings import (
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from test_download import MirrorServer, closed_port_url

from flows.prepare import ALL_DATASETS, prepare_data, step_count, step_states, summarise
from rnn_core.datasets.io import read_json
from rnn_core.datasets.manifest import DatasetManifest
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
        manifests = first.result()

        processed = data_dir / "processed"
        assert list(manifests) == ALL_DATASETS
        for name, manifest in manifests.items():  # what training receives is what is on disk
            assert DatasetManifest.read(processed / name).to_json() == manifest
            DatasetManifest.from_json(manifest).verify()
        parquets = sorted(str(p.relative_to(processed)) for p in processed.rglob("*.parquet"))
        assert parquets == [f"{d}/{s}.parquet" for d in ("ag_news", "metro", "moliere", "trump")
                            for s in ("test", "train")]
        rows = {p: pq.ParquetFile(processed / p).metadata.num_rows for p in parquets}
        assert rows["metro/train.parquet"] == 18 * 73 * 80
        assert rows["metro/test.parquet"] == 7 * 73 * 80
        assert rows["ag_news/test.parquet"] == 7_600
        assert rows["ag_news/train.parquet"] == 41_342  # the mirror only has the subset
        ag = manifests["ag_news"]
        assert ag["variant"] == "subset" and "41,342" in ag["notes"][0]
        assert read_json(processed / "ag_news" / "meta.json")["train_variant"] == "subset"
        assert ag["vocab_size"] == 20_000
        assert ag["summary"]["padding"]["buckets"] <= 0.05 < ag["summary"]["padding"]["random"]
        assert not list(processed.rglob("buckets.json"))  # bucketing is training's business
        for corpus in ("trump", "moliere"):  # the two text splits add up to the cleaned text
            meta = manifests[corpus]["summary"]
            assert meta["train"]["chars"] + meta["test"]["chars"] == meta["clean_chars"]
            assert manifests[corpus]["rows"] == {s: rows[f"{corpus}/{s}.parquet"]
                                                 for s in ("train", "test")}
        assert summarise(ag)["padding"]["num_buckets"] == len(ag["summary"]["padding"]
                                                              ["boundaries"])
        assert summarise(manifests["metro"])["chars"] is None
        assert task_states(first)["preprocess-ag_news"] == "Completed"

        # Second run: every data step is reused, and the outputs are the same files.
        before = {p: (processed / p).stat().st_mtime_ns for p in parquets}
        second, second_s = timed_run(data_dir, mirror_dir)
        assert second.result() == manifests
        states = task_states(second)
        cached_steps = [n for n in states if n.startswith("preprocess")]
        assert len(cached_steps) == 4 and all(states[n] == "Cached" for n in cached_steps)
        assert all(states[f"download-{d}"] == "Completed" for d in manifests)  # verify, no copy
        assert {p: (processed / p).stat().st_mtime_ns for p in parquets} == before
        assert second_s < first_s

        # Outputs that no longer match their manifest are not "cached": that step runs again
        # and rewrites them. Metro's train split truncated (what a full disk or a copy cut short
        # leaves), trump's deleted, moliere's manifest gone. A killed write's temp file goes.
        metro_train = processed / "metro" / "train.parquet"
        metro_train.write_bytes(metro_train.read_bytes()[:5000])
        (processed / "trump" / "train.parquet").unlink()
        (processed / "moliere" / "manifest.json").unlink()
        leftover = processed / "ag_news" / f".train.parquet.{uuid.uuid4().hex}.tmp"
        leftover.write_bytes(b"PAR1 cut")
        os.utime(leftover, (time.time() - 3600,) * 2)
        third, _ = timed_run(data_dir, mirror_dir)
        assert third.result() == manifests  # the same bytes again
        states = task_states(third)
        assert {n: states[n] for n in cached_steps} == {
            "preprocess-metro": "Completed", "preprocess-trump": "Completed",
            "preprocess-moliere": "Completed", "preprocess-ag_news": "Cached"}
        DatasetManifest.read(processed / "metro").verify()  # the file matches again
        assert pq.ParquetFile(metro_train).metadata.num_rows == rows["metro/train.parquet"]
        assert pq.ParquetFile(processed / "trump" / "train.parquet").metadata.num_rows == rows[
            "trump/train.parquet"]
        assert not leftover.exists()

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


def test_prepare_only_what_is_asked_and_never_a_stale_cached_manifest(prefect_harness,
                                                                      mirror_dir, tmp_path):
    """The pipeline asks for the datasets its experiments need and gets exactly their manifests;
    a cached manifest from earlier parameters is not handed out once the folder was rewritten."""
    data_dir = str(tmp_path / "data")

    def run(vocab_size):
        state = prepare_data(datasets=["ag_news"], data_dir=data_dir, vocab_size=vocab_size,
                             mirror=str(mirror_dir), mirror_only=True, return_state=True)
        return state.result(), step_states(state, expected=step_count(["ag_news"]))

    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        big, _ = run(20_000)
        assert list(big) == ["ag_news"] and big["ag_news"]["vocab_size"] == 20_000
        small, _ = run(500)  # rewrites processed/ag_news
        assert small["ag_news"]["vocab_size"] == 500
        # vocab 20000 again: its cached manifest describes files that were overwritten since.
        again, states = run(20_000)
        assert again == big and states["preprocess-ag_news"] == "Completed"
        folder = Path(big["ag_news"]["folder"])
        assert DatasetManifest.read(folder).to_json() == big["ag_news"]
        DatasetManifest.read(folder).verify()


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


def test_download_task_does_not_retry_a_checksum_mismatch(lone_task_run, tmp_path):
    """The served copy has other bytes and the second source is unreachable (as upstream is on
    an offline machine): one attempt, no retries."""
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.txt").write_bytes(b"hellO\n")
    server = MirrorServer(tmp_path / "served")
    try:
        sources = _one_file_sources(tmp_path, f"{server.url}/a.txt", b"hello\n")
        unreachable = closed_port_url("/a.txt")
        sources.write_text(sources.read_text().replace(" }]", f' }}, {{ url = "{unreachable}" }}]'))
        quick = download_dataset.with_options(retry_delay_seconds=0)
        with pytest.raises(PermanentFetchError, match="toy/a.txt") as info:
            quick("toy", str(tmp_path / "raw"), mirror="", sources_file=str(sources))
        assert "sha256 is" in str(info.value)
        assert server.requests == ["/a.txt"]
    finally:
        server.close()
