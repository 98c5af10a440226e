"""Prefect tasks for the data stage: download -> Parquet + manifest, each a call into rnn_core.

Tasks pass paths (as str) and small dicts, never DataFrames. Download is retried, but only on
transient failures; it is not cached by Prefect because fetch already skips a file that is on
disk and verified (a cached answer could point at a deleted file). Preprocess is deterministic,
so it is cached on its inputs (which carry the raw files' checksums), its own source and the
source of the library code it calls, and returns the dataset's manifest (`to_json()`). A cached
manifest is only trusted while the files on disk still match it: `preprocess_checked` runs the
step again when they do not.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.exceptions import MissingContextError

from rnn_core.datasets.ag_news import preprocess_ag_news as _preprocess_ag_news
from rnn_core.datasets.corpus import preprocess_corpus as _preprocess_corpus
from rnn_core.datasets.manifest import DatasetManifest, ManifestError
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
    library = LibrarySource(modules=("rnn_core.datasets.io", "rnn_core.datasets.manifest",
                                     *modules))
    return {"cache_policy": INPUTS + TASK_SOURCE + library, "persist_result": True,
            "result_serializer": "json"}


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


@task(name="preprocess-metro", task_run_name="preprocess-metro", **_cached("rnn_core.datasets.metro"))
def preprocess_metro(raw: dict, out_dir: str) -> dict:
    """Metro archive -> train/test Parquet (one row per day, slot and station); the manifest."""
    return _preprocess_metro(Path(raw["files"]["hzdataset.pch"]), Path(out_dir),
                             notes=raw["notes"]).to_json()


@task(name="preprocess-corpus", task_run_name="preprocess-{raw[dataset]}",
      **_cached("rnn_core.datasets.corpus"))
def preprocess_corpus(raw: dict, out_dir: str, train_fraction: float = 0.9) -> dict:
    """A speech or play text -> cleaned train/test Parquet lines, character vocabulary; manifest."""
    (text_file,) = raw["files"].values()
    return _preprocess_corpus(raw["dataset"], Path(text_file), Path(out_dir), train_fraction,
                              notes=raw["notes"]).to_json()


@task(name="preprocess-ag-news", task_run_name="preprocess-ag_news",
      **_cached("rnn_core.datasets.ag_news", "rnn_core.datasets.bucketing"))
def preprocess_ag_news(raw: dict, out_dir: str, vocab_size: int = 20000) -> dict:
    """AG News CSVs -> tokenised train/test Parquet, vocabulary built on train; the manifest."""
    files = raw["files"]
    return _preprocess_ag_news(Path(files["train.csv"]), Path(files["test.csv"]), Path(out_dir),
                               vocab_size, train_variant=raw["variant"],
                               notes=raw["notes"]).to_json()


# ---------------------------------------------------------------- trusting a cached manifest


def outputs_problem(out_dir: str | Path) -> str | None:
    """Why the files in `out_dir` differ from what its manifest.json recorded; None if they match.

    A missing or unreadable manifest, a manifest written for another folder, or any listed file
    missing or with another size or sha256 (a truncated Parquet, a hand edit) is a problem.
    """
    try:
        manifest = DatasetManifest.read(Path(out_dir))
        if Path(manifest.folder) != Path(out_dir).resolve():
            return f"{out_dir}: the manifest describes {manifest.folder}"
        manifest.verify()
    except ManifestError as err:
        return str(err)
    return None


def rerun_unless_intact(step: Task, out_dir: str | Path) -> Task:
    """`step` itself, or a copy that ignores its cache when its outputs no longer match their
    manifest: a cached answer would hand training files that are not the ones it describes."""
    problem = outputs_problem(out_dir)
    if problem is None:
        return step
    # Loud only when something that was prepared has changed; a fresh folder is just a first run.
    earlier = Path(out_dir).is_dir() and any(Path(out_dir).iterdir())
    _log().log(logging.WARNING if earlier else logging.INFO,
               "%s runs again instead of using its cache: %s", step.name, problem)
    return step.with_options(refresh_cache=True)


def preprocess_checked(step: Task, raw: dict, out_dir: str, **params: Any) -> dict:
    """`step(raw, out_dir, **params)`, a cached preprocess step, whose manifest is the one on disk.

    Before: outputs that fail their manifest make the step run again (rerun_unless_intact).
    After: a cache hit whose manifest is not the one on disk (the folder was rewritten since with
    other parameters, e.g. vocab_size 10000 and then back to 20000) runs the step again too.
    """
    manifest = rerun_unless_intact(step, out_dir)(raw, out_dir, **params)
    if _as_json(manifest) != _as_json(DatasetManifest.read(Path(out_dir)).to_json()):
        _log().warning("%s: the cached manifest is not the one in %s; running it again",
                       step.name, out_dir)
        manifest = step.with_options(refresh_cache=True)(raw, out_dir, **params)
    return manifest


def _as_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), to compare manifests."""
    return json.loads(json.dumps(obj))


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow or task run
        return logging.getLogger(__name__)
