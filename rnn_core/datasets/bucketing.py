"""Length bucketing for variable-length sequences, and the metro random-length window sampler.

Padding every batch to its longest sequence wastes compute when lengths vary: with AG News
(token lengths 5-243, mean 44) random batches of 64 are mostly padding at their long tail.
Grouping sequences of similar length into buckets and drawing each batch from one bucket keeps
the padded slots to a few percent. Boundaries are *inclusive upper edges*: bucket i holds lengths
in (boundaries[i-1], boundaries[i]]; lengths above the last boundary go to one overflow bucket.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

_MAX_DISTINCT = 1500  # the boundary search is O(distinct^2) per bucket count: coarsen above this


def padding_fraction(lengths: Sequence[int], batches: Iterator[Sequence[int]]) -> float:
    """Padded slots / total slots when each batch is padded to its own longest sequence."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = used = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        if batch_lengths.size:
            slots += int(batch_lengths.max()) * batch_lengths.size
            used += int(batch_lengths.sum())
    return (slots - used) / slots if slots else 0.0


def _bucket_padding_table(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """cost[i, j] = padded slots if distinct lengths values[i..j] form one bucket padded to
    values[j] (an upper bound on per-batch padding); inf where i > j."""
    n = np.concatenate([[0], np.cumsum(counts)])  # prefix counts
    s = np.concatenate([[0], np.cumsum(counts * values)])  # prefix token sums
    i, j = np.arange(len(values))[:, None], np.arange(len(values))[None, :]
    cost = values[None, :] * (n[j + 1] - n[i]) - (s[j + 1] - s[i])
    return np.where(i <= j, cost, np.inf).astype(np.float64)


def choose_boundaries(
    lengths: Sequence[int],
    batch_size: int,
    max_padding: float = 0.05,
    num_buckets: int | None = None,
    max_buckets: int = 64,
) -> list[int]:
    """Pick bucket boundaries (inclusive upper edges, ascending, last = max length).

    With `num_buckets` set: the `num_buckets` boundaries that minimise padding. Otherwise the
    fewest buckets (up to `max_buckets`) whose padding is at most `max_padding`. Padding is
    measured as if every sequence were padded to its bucket's longest length, an upper bound on
    what per-batch padding gives, so the target holds for any batching within the buckets.
    Every bucket holds at least `batch_size` sequences (when there are that many), so buckets
    do not degenerate into many small partial batches. Exact dynamic programme over the
    distinct lengths, deterministic.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("no lengths")
    if batch_size < 1 or not 0 <= max_padding < 1:
        raise ValueError("batch_size must be >= 1 and max_padding in [0, 1)")
    values, counts = np.unique(lengths, return_counts=True)
    if len(values) > _MAX_DISTINCT:
        # Merge neighbouring lengths into quantile groups represented by their maximum; the
        # bound stays an upper bound because each group is padded to its own top length.
        edges = np.unique(np.quantile(lengths, np.linspace(0, 1, _MAX_DISTINCT + 1)[1:]))
        edges = np.unique(np.ceil(edges).astype(np.int64))
        group = np.searchsorted(edges, lengths, side="left")
        values = edges[np.unique(group)]
        counts = np.bincount(group)[np.unique(group)]
    cost = _bucket_padding_table(values.astype(np.float64), counts.astype(np.float64))
    prefix = np.concatenate([[0], np.cumsum(counts)])
    min_count = min(batch_size, int(lengths.size))
    too_small = (prefix[None, 1:] - prefix[:-1, None]) < min_count  # [i, j] holds too few
    cost[too_small] = np.inf
    used = float(lengths.sum())
    allowed = max_padding / (1 - max_padding) * used  # pad / (pad + used) <= max_padding
    k_max = num_buckets if num_buckets is not None else min(max_buckets, len(values))
    # best[j] = least padding covering values[0..j] with k buckets; choice[k][j] = first index
    # of the last bucket, for backtracking.
    best = cost[0].copy()
    choices: list[np.ndarray] = [np.zeros(len(values), dtype=np.int64)]
    for k in range(2, k_max + 1):
        if num_buckets is None and best[-1] <= allowed:
            break
        # candidate[i, j] = best over values[0..i-1] with k-1 buckets + bucket values[i..j]
        candidate = np.full_like(cost, np.inf)
        candidate[1:] = best[:-1, None] + cost[1:]
        choice = candidate.argmin(axis=0)
        new_best = candidate[choice, np.arange(len(values))]
        if not np.isfinite(new_best[-1]) or new_best[-1] >= best[-1]:
            break  # more buckets cannot help (too few sequences, or padding already 0)
        best = new_best
        choices.append(choice)
    boundaries, j = [], len(values) - 1
    for choice in reversed(choices):
        boundaries.append(int(values[j]))
        j = int(choice[j]) - 1
    return sorted(boundaries)


def assign_buckets(lengths: Sequence[int], boundaries: Sequence[int]) -> np.ndarray:
    """Bucket index per sequence; lengths above the last boundary get index len(boundaries)."""
    return np.searchsorted(np.asarray(boundaries), np.asarray(lengths), side="left")


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices, each drawn from one length bucket (a DataLoader `batch_sampler`).

    shuffle=True: indices are shuffled within each bucket and the batches are shuffled across
    buckets, from a generator seeded by (seed, epoch); call `set_epoch(e)` before each epoch
    to get a new, reproducible order. shuffle=False: buckets in ascending length, dataset order.
    drop_last drops each bucket's incomplete last batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        boundaries: Sequence[int],
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if list(boundaries) != sorted(set(boundaries)):
            raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        bucket = assign_buckets(lengths, boundaries)
        self.buckets = [np.flatnonzero(bucket == b) for b in range(len(boundaries) + 1)]
        self.buckets = [b for b in self.buckets if b.size]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        size = self.batch_size
        if self.drop_last:
            return sum(len(b) // size for b in self.buckets)
        return sum(-(-len(b) // size) for b in self.buckets)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for members in self.buckets:
            order = rng.permutation(members) if self.shuffle else members
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch.tolist())
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)


class RandomLengthWindowSampler:
    """Metro classification batches (the course's protocol): windows of one random length.

    Each batch draws one length from `lengths` (a list, or a range such as range(10, 31)), then
    `batch_size` windows (day, station, start) uniformly with replacement, start + length <=
    num_slots. Yields (length, [(day, station, start), ...]); `num_batches` per epoch,
    reproducible from (seed, epoch). Feed the windows to `metro.gather_windows`.
    """

    def __init__(
        self,
        num_days: int,
        num_stations: int,
        num_slots: int,
        batch_size: int,
        lengths: Sequence[int],
        num_batches: int,
        seed: int = 0,
    ):
        self.lengths = np.asarray(list(lengths), dtype=np.int64)
        if self.lengths.size == 0 or self.lengths.min() < 1 or self.lengths.max() > num_slots:
            raise ValueError(f"lengths must lie in 1..{num_slots}")
        self.num_days, self.num_stations, self.num_slots = num_days, num_stations, num_slots
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[int, list[tuple[int, int, int]]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.num_batches):
            length = int(rng.choice(self.lengths))
            day = rng.integers(0, self.num_days, self.batch_size)
            station = rng.integers(0, self.num_stations, self.batch_size)
            start = rng.integers(0, self.num_slots - length + 1, self.batch_size)
            yield length, [tuple(map(int, w)) for w in zip(day, station, start)]


def pad_batch(sequences: Sequence, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id sequences (lists, arrays or tensors) -> (L x B LongTensor, B lengths), time-major.

    L is the longest sequence in this batch; shorter ones are filled with `pad_id` at the end.
    """
    seqs = [torch.as_tensor(np.asarray(s), dtype=torch.long).reshape(-1) for s in sequences]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((int(lengths.max()) if seqs else 0, len(seqs)), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[: len(s), b] = s
    return out, lengths
