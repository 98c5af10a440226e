"""Flow `prepare_data`: download -> Parquet + manifest for each dataset asked for.

    data/raw/<dataset>/...          verified downloads
    data/processed/<dataset>/...    train/test Parquet, meta.json (+ vocab.json), manifest.json

Returns `{dataset: manifest dict}` (rnn_core.datasets.manifest.DatasetManifest.to_json()), which
is what training receives. Run it with `rnnflow prepare`. A second run reuses the cached steps;
a step whose outputs no longer match their manifest (deleted, truncated, edited) runs again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from rnn_core.datasets.io import remove_partial_writes
from tasks.data import (
    download_dataset,
    preprocess_ag_news,
    preprocess_checked,
    preprocess_corpus,
    preprocess_metro,
)

Dataset = Literal["metro", "trump", "moliere", "ag_news"]
ALL_DATASETS: list[Dataset] = ["metro", "trump", "moliere", "ag_news"]


@flow(name="prepare-data")
def prepare_data(datasets: list[Dataset] = ALL_DATASETS, data_dir: str = "data",
                 vocab_size: int = 20000, mirror: str | None = None,
                 mirror_only: bool = False) -> dict[str, dict]:
    """Download and preprocess each of `datasets`; returns {dataset: manifest dict} for them.

    `mirror`: a folder or base URL laid out <dataset>/<file>; None reads $RNN_DATA_MIRROR.
    `mirror_only`: never contact the upstream URLs (offline machines, tests).
    """
    data = Path(data_dir).resolve()
    manifests: dict[str, dict] = {}
    for name in dict.fromkeys(datasets):  # each once, in the order asked
        raw_dir, out_dir = data / "raw", data / "processed" / name
        for folder in (raw_dir / name, out_dir):
            for path in remove_partial_writes(folder):
                get_run_logger().warning("removed %s, left by a write that was killed", path)
        raw = download_dataset(name, str(raw_dir), mirror, mirror_only)
        if name == "metro":
            manifests[name] = preprocess_checked(preprocess_metro, raw, str(out_dir))
        elif name == "ag_news":
            manifests[name] = preprocess_checked(preprocess_ag_news, raw, str(out_dir),
                                                 vocab_size=vocab_size)
        else:
            manifests[name] = preprocess_checked(preprocess_corpus, raw, str(out_dir))
    return manifests


def summarise(manifest: dict) -> dict[str, Any]:
    """One dataset's line of `rnnflow prepare`'s table, from its manifest."""
    meta = manifest["summary"]
    pad = meta.get("padding")
    return {
        "variant": manifest["variant"],
        "notes": manifest["notes"],
        "rows": manifest["rows"],
        "chars": ({split: meta[split]["chars"] for split in ("train", "test")}
                  if "chars" in meta.get("train", {}) else None),
        "vocab_size": manifest["vocab_size"],
        "padding": None if pad is None else {
            "batch_size": pad["batch_size"], "random": pad["random"], "buckets": pad["buckets"],
            "num_buckets": len(pad["boundaries"])},
        "folder": manifest["folder"],
    }


def step_count(datasets: list[str]) -> int:
    """Task runs prepare_data makes: download + preprocess per dataset."""
    return 2 * len(set(datasets))


def step_states(flow_state, expected: int, timeout_s: float = 20) -> dict[str, str]:
    """Task run name -> final state name ("Completed", "Cached", ...) of one flow run.

    Task states reach the API through events, a moment after the flow returns: poll until the
    `expected` runs all report a final state (or the timeout passes). A name run twice (a cached
    manifest that turned out stale, see tasks.data.preprocess_checked) keeps its latest run.
    """
    of_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=of_this_run)
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                runs = sorted(runs, key=lambda r: str(r.expected_start_time or r.created))
                return {r.name: r.state.name for r in runs if r.state is not None}
            time.sleep(0.25)
