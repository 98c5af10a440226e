"""Prefect tasks for the data stage: download -> Parquet -> buckets, each a call into rnn_core.

Tasks pass paths (as str) and small dicts, never DataFrames. Download is retried, but only on
transient failures; it is not cached by Prefect because fetch already skips a file that is on
disk and verified (a cached answer could point at a deleted file). Preprocess and bucket are
deterministic, so they are cached on their inputs (which carry the raw files' checksums), their
own source and the source of the library code they call; `rerun_if_outputs_missing` makes a
deleted data/processed count as not cached.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from rnn_core.datasets.ag_news import preprocess_ag_news as _preprocess_ag_news
from rnn_core.datasets.bucket_plan import write_bucket_plan
from rnn_core.datasets.corpus import preprocess_corpus as _preprocess_corpus
from rnn_core.datasets.io import sha256_file
from rnn_core.datasets.metro import preprocess_metro as _preprocess_metro
from rnn_core.datasets.sources import (
    DEFAULT_SOURCES_FILE,
    fetch_dataset,
    is_transient,
    load_sources,
)


@dataclass
class LibrarySource(CachePolicy):
    """Cache key part: the source of the rnn_core modules a task calls.

    TASK_SOURCE sees only the task's few lines; the real work lives in rnn_core, so a change
    there must invalidate the cache too.
    """

    modules: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        digest = hashlib.sha256()
        for name in self.modules:
            digest.update(inspect.getsource(importlib.import_module(name)).encode())
        return digest.hexdigest()


def _cached(*modules: str) -> dict[str, Any]:
    """Task options for a deterministic data step (JSON results: nothing to unpickle)."""
    library = LibrarySource(modules=("rnn_core.datasets.io", *modules))
    return {"cache_policy": INPUTS + TASK_SOURCE + library, "persist_result": True,
            "result_serializer": "json"}


# What each cached task writes into its out_dir: if any is gone, its cached result is ignored.
OUTPUTS = {
    "preprocess-metro": ("train.parquet", "test.parquet"),
    "preprocess-corpus": ("train.parquet", "test.parquet", "vocab.json", "meta.json"),
    "preprocess-ag-news": ("train.parquet", "test.parquet", "vocab.json", "meta.json"),
    "bucket-lengths": ("buckets.json",),
}


def rerun_if_outputs_missing(step: Task, out_dir: str | Path) -> Task:
    """`step` itself, or a copy that ignores its cache when a file it wrote is gone from disk."""
    missing = [f for f in OUTPUTS[step.name] if not (Path(out_dir) / f).is_file()]
    return step.with_options(refresh_cache=True) if missing else step


def retry_if_transient(task: Task, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry network hiccups, never a 404 or a checksum mismatch."""
    return is_transient(state.result(raise_on_failure=False))


@task(name="download", retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_if_transient, task_run_name="download-{dataset}")
def download_dataset(dataset: str, raw_dir: str, mirror: str | None = None,
                     mirror_only: bool = False,
                     sources_file: str = str(DEFAULT_SOURCES_FILE)) -> dict:
    """Fetch and verify one dataset's raw files; returns their paths, checksums and variant."""
    spec = load_sources(sources_file)[dataset]
    fetched = fetch_dataset(spec, raw_dir, mirror, upstream=not mirror_only)
    for note in fetched.notes:
        get_run_logger().warning("USING A SUBSET: %s", note)
    return {"dataset": dataset, "variant": fetched.variant, "notes": fetched.notes,
            "files": {name: str(path) for name, path in fetched.files.items()},
            "checksums": fetched.checksums}


def _with_outputs(raw: dict, out_dir: str, summary: dict, step: str) -> dict:
    """The library's summary plus the sha256 of every output, so later steps key on content."""
    outputs = {name: sha256_file(Path(out_dir) / name) for name in OUTPUTS[step]}
    return {"dataset": raw["dataset"], "variant": raw["variant"], "out_dir": out_dir,
            "outputs": outputs, "summary": summary}


@task(name="preprocess-metro", task_run_name="preprocess-metro", **_cached("rnn_core.datasets.metro"))
def preprocess_metro(raw: dict, out_dir: str) -> dict:
    """Metro archive -> train/test Parquet (one row per day, slot and station)."""
    summary = _preprocess_metro(Path(raw["files"]["hzdataset.pch"]), Path(out_dir))
    return _with_outputs(raw, out_dir, summary, "preprocess-metro")


@task(name="preprocess-corpus", task_run_name="preprocess-{raw[dataset]}",
      **_cached("rnn_core.datasets.corpus"))
def preprocess_corpus(raw: dict, out_dir: str, train_fraction: float = 0.9) -> dict:
    """A speech or play text -> cleaned train/test Parquet lines and a character vocabulary."""
    (text_file,) = raw["files"].values()
    summary = _preprocess_corpus(raw["dataset"], Path(text_file), Path(out_dir), train_fraction)
    return _with_outputs(raw, out_dir, summary, "preprocess-corpus")


@task(name="preprocess-ag-news", task_run_name="preprocess-ag_news",
      **_cached("rnn_core.datasets.ag_news"))
def preprocess_ag_news(raw: dict, out_dir: str, vocab_size: int = 20000) -> dict:
    """AG News CSVs -> tokenised train/test Parquet and a vocabulary built on train."""
    files = raw["files"]
    summary = _preprocess_ag_news(Path(files["train.csv"]), Path(files["test.csv"]),
                                  Path(out_dir), vocab_size, train_variant=raw["variant"])
    return _with_outputs(raw, out_dir, summary, "preprocess-ag-news")


@task(name="bucket-lengths", task_run_name="bucket-{processed[dataset]}",
      **_cached("rnn_core.datasets.bucketing", "rnn_core.datasets.bucket_plan"))
def bucket_lengths(processed: dict, batch_size: int = 64, max_padding: float = 0.05) -> dict:
    """Length buckets for the train split -> buckets.json, with padding random vs bucketed."""
    out_dir = Path(processed["out_dir"])
    return write_bucket_plan(out_dir / "train.parquet", out_dir / "buckets.json",
                             batch_size=batch_size, max_padding=max_padding)
