"""Dataset inputs of a child run: its train, validation and test splits as MLflow datasets.

Each split becomes one `mlflow.entities.Dataset` (the run's Datasets column, the lineage view):
    name     "<dataset>/<split>", e.g. "ag_news/train"
    source   the prepared file it was read from (`train.parquet`: train and validation, which is a
             slice of it; `test.parquet`: test), a file:// URI when the manifest gives its path
    digest   the first 32 hex digits of the sha256 of the split's facts (the file's sha256 and
             how the split was cut from it), so the same data gives the same digest in every run
    profile  those facts as JSON: the file's full sha256, rows/characters/days per split, variant
and is tagged `mlflow.data.context` = train | validation | test. The facts come from the
experiment's data phase (`RunResult.dataset`) and the prepared manifests; no data is re-read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag

from rnn_core.results import RunResult
from tasks.tracking.names import DATASET_CONTEXT_TAG

SPLITS = (("train", "train", "train.parquet"), ("val", "validation", "train.parquet"),
          ("test", "test", "test.parquet"))


def split_facts(info: dict[str, Any], split: str) -> dict[str, Any]:
    """What the data phase's info says about one split: `<split>_*` keys, and the `<split>`
    entry of per-split tables (days, dates, rows_used, spans, eval windows)."""
    facts = {k: v for k, v in info.items() if k.startswith(f"{split}_")}
    for key, value in info.items():
        if isinstance(value, dict) and split in value and not key.startswith(("files", "meta")):
            facts[key] = value[split]
    return facts


def dataset_names(result: RunResult) -> list[str]:
    """The prepared datasets this configuration read (the data phase's or the tags' names)."""
    name = result.dataset.get("dataset") or result.dataset.get("name") \
        or result.tags.get("dataset", "")
    return [n for n in str(name).split(",") if n]


def dataset_inputs(result: RunResult, manifests: dict[str, Any] | None = None
                   ) -> list[DatasetInput]:
    """One DatasetInput per split of each dataset the configuration read."""
    files = result.dataset.get("files") or {}
    inputs = []
    for dataset in dataset_names(result):
        manifest = (manifests or {}).get(dataset) or {}
        if hasattr(manifest, "to_json"):  # a DatasetManifest rather than its dict
            manifest = manifest.to_json()
        records = manifest.get("files", {}) if isinstance(manifest, dict) else {}
        for split, context, file in SPLITS:
            sha = (files.get(file) or {}).get("sha256") or (records.get(file) or {}).get("sha256")
            if sha is None:
                continue  # this experiment reads no such file (a synthetic stand-in)
            path = (records.get(file) or {}).get("path")
            facts = {"file": file, "sha256": sha,
                     "variant": result.dataset.get("variant", "full"),
                     **split_facts(result.dataset, split)}
            canonical = json.dumps(facts, sort_keys=True, default=str)
            inputs.append(DatasetInput(
                dataset=Dataset(
                    name=f"{dataset}/{context}",
                    digest=hashlib.sha256(canonical.encode()).hexdigest()[:32],
                    source_type="local",
                    source=json.dumps({"uri": Path(path).as_uri() if path else file}),
                    profile=canonical),
                tags=[InputTag(DATASET_CONTEXT_TAG, context)]))
    return inputs


def log_dataset_inputs(client: MlflowClient, run_id: str, result: RunResult,
                       manifests: dict[str, Any] | None = None) -> int:
    """Attach the splits to the run; returns how many were logged."""
    inputs = dataset_inputs(result, manifests)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return len(inputs)
