"""The length-bucket plan for a variable-length split, saved as buckets.json beside its Parquet.

Training reads the boundaries back instead of recomputing them, and the plan records what they
buy: the padding fraction of batches of `batch_size` drawn at random versus drawn per bucket.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rnn_core.datasets.bucketing import (
    BucketBatchSampler,
    assign_buckets,
    choose_boundaries,
    padding_fraction,
)
from rnn_core.datasets.io import DataFormatError, write_json_atomic


def plan_buckets(lengths, batch_size: int = 64, max_padding: float = 0.05, seed: int = 0) -> dict:
    """Boundaries for `lengths` (one int per sequence) and the padding with and without them.

    Padding is measured on one epoch of each batching (shuffled with `seed`), padding every
    batch to its own longest sequence.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("no sequences to bucket")
    order = np.random.default_rng(seed).permutation(lengths.size)
    random_batches = [order[i : i + batch_size] for i in range(0, lengths.size, batch_size)]
    boundaries = choose_boundaries(lengths, batch_size, max_padding=max_padding)
    sampler = BucketBatchSampler(lengths, batch_size, boundaries, shuffle=True, seed=seed)
    sizes = np.bincount(assign_buckets(lengths, boundaries), minlength=len(boundaries))
    return {
        "batch_size": batch_size,
        "max_padding": max_padding,  # the target choose_boundaries aimed for
        "seed": seed,
        "sequences": int(lengths.size),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
        "boundaries": boundaries,  # inclusive upper edges, ascending
        "bucket_sizes": [int(n) for n in sizes[: len(boundaries)]],
        "padding_random": padding_fraction(lengths, random_batches),
        "padding_buckets": padding_fraction(lengths, sampler),
    }


def write_bucket_plan(parquet: Path, out_json: Path, column: str = "length",
                      batch_size: int = 64, max_padding: float = 0.05, seed: int = 0) -> dict:
    """Plan buckets for the integer `column` of `parquet` and write the plan to `out_json`."""
    parquet = Path(parquet)
    try:
        table = pq.read_table(parquet, columns=[column])
    except FileNotFoundError:
        raise DataFormatError(parquet, "file not found (run the preprocess step first)") from None
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        raise DataFormatError(parquet, f"cannot read column {column!r}: {err}") from None
    values = table.column(column)
    if not pa.types.is_integer(values.type) or values.null_count:
        raise DataFormatError(parquet, f"column {column!r} must hold integers without nulls")
    plan = {"source": parquet.name, "column": column,
            **plan_buckets(values.to_numpy(), batch_size, max_padding, seed)}
    write_json_atomic(plan, out_json)
    return plan
