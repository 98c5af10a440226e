"""Flow `prepare_data`: download -> Parquet -> buckets for each dataset, and a summary of it.

    data/raw/<dataset>/...          verified downloads
    data/processed/<dataset>/...    train/test Parquet (+ vocab.json, meta.json, buckets.json)

Run it with `rnnflow prepare`. A second run reuses the cached steps; a step whose output files
were deleted runs again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tasks.data import (
    bucket_lengths,
    download_dataset,
    preprocess_ag_news,
    preprocess_corpus,
    preprocess_metro,
    rerun_if_outputs_missing,
)

Dataset = Literal["metro", "trump", "moliere", "ag_news"]
ALL_DATASETS: list[Dataset] = ["metro", "trump", "moliere", "ag_news"]
# Datasets whose sequences vary in length and are batched by length bucket. Metro windows and
# the character corpora (cut into fixed-length chunks of the text stream) need no padding.
VARIABLE_LENGTH = {"ag_news"}
BATCH_SIZE = 64


@flow(name="prepare-data")
def prepare_data(datasets: list[Dataset] = ALL_DATASETS, data_dir: str = "data",
                 vocab_size: int = 20000, mirror: str | None = None,
                 mirror_only: bool = False) -> dict[str, dict]:
    """Download, preprocess and bucket each dataset; returns a summary per dataset.

    `mirror`: a folder or base URL laid out <dataset>/<file>; None reads $RNN_DATA_MIRROR.
    `mirror_only`: never contact the upstream URLs (offline machines, tests).
    """
    data = Path(data_dir).resolve()
    summary = {}
    for name in datasets:
        out_dir = str(data / "processed" / name)
        raw = download_dataset(name, str(data / "raw"), mirror, mirror_only)
        if name == "metro":
            processed = rerun_if_outputs_missing(preprocess_metro, out_dir)(raw, out_dir)
        elif name == "ag_news":
            processed = rerun_if_outputs_missing(preprocess_ag_news, out_dir)(
                raw, out_dir, vocab_size)
        else:
            processed = rerun_if_outputs_missing(preprocess_corpus, out_dir)(raw, out_dir)
        buckets = None
        if name in VARIABLE_LENGTH:
            buckets = rerun_if_outputs_missing(bucket_lengths, out_dir)(processed, BATCH_SIZE)
        summary[name] = summarise(raw, processed, buckets)
    return summary


def summarise(raw: dict, processed: dict, buckets: dict | None) -> dict:
    """One dataset's line of the summary: variant, rows per split, vocabulary and padding."""
    meta = processed["summary"]
    return {
        "variant": raw["variant"],
        "notes": raw["notes"],
        "rows": {split: meta[split]["rows"] for split in ("train", "test")},
        "chars": ({split: meta[split]["chars"] for split in ("train", "test")}
                  if "chars" in meta.get("train", {}) else None),
        "vocab_size": meta.get("vocab_size"),
        "padding": None if buckets is None else {
            "batch_size": buckets["batch_size"],
            "random": buckets["padding_random"],
            "buckets": buckets["padding_buckets"],
            "num_buckets": len(buckets["boundaries"]),
        },
        "out_dir": processed["out_dir"],
    }


def step_count(datasets: list[str]) -> int:
    """Task runs prepare_data makes: download + preprocess per dataset, bucket where variable."""
    return 2 * len(datasets) + len(VARIABLE_LENGTH.intersection(datasets))


def step_states(flow_state, expected: int, timeout_s: float = 20) -> dict[str, str]:
    """Task run name -> final state name ("Completed", "Cached", ...) of one flow run.

    Task states reach the API through events, a moment after the flow returns: poll until the
    `expected` runs all report a final state (or the timeout passes).
    """
    of_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=of_this_run)
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                return {r.name: r.state.name for r in runs if r.state is not None}
            time.sleep(0.25)
