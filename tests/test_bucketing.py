"""Length buckets, bucket batch sampler, metro window sampler and time-major padding."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rnn_core.datasets.bucketing import (
    BucketBatchSampler,
    RandomLengthWindowSampler,
    assign_buckets,
    choose_boundaries,
    pad_batch,
    padding_fraction,
)


@pytest.fixture
def lengths() -> np.ndarray:
    # Long right tail like AG News: most sequences 20-70 tokens, a few up to 400.
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(3.7, 0.35, 5000), 3, 400).astype(np.int64)


def test_padding_fraction_by_hand():
    assert padding_fraction([2, 4, 3, 3], [[0, 1], [2, 3]]) == pytest.approx(2 / 14)
    assert padding_fraction([5], [[0]]) == 0.0 and padding_fraction([1], []) == 0.0


def test_choose_boundaries_meets_target_with_few_buckets(lengths):
    boundaries = choose_boundaries(lengths, 32, max_padding=0.05)
    assert boundaries == sorted(set(boundaries)) and boundaries[-1] == lengths.max()
    bucket = assign_buckets(lengths, boundaries)
    assert np.bincount(bucket).min() >= 32  # no bucket smaller than a batch
    # Bound: padding every sequence to its bucket's top is already within the target.
    top = np.asarray(boundaries)[bucket]
    assert (top - lengths).sum() / top.sum() <= 0.05
    # Fewest buckets: one fewer cannot reach the target.
    fewer = choose_boundaries(lengths, 32, num_buckets=len(boundaries) - 1)
    top = np.asarray(fewer)[assign_buckets(lengths, fewer)]
    assert (top - lengths).sum() / top.sum() > 0.05
    assert choose_boundaries(lengths, 32, max_padding=0.05) == boundaries  # deterministic


def test_choose_boundaries_edge_cases():
    assert choose_boundaries([7, 7, 7], 2) == [7]
    assert choose_boundaries([1, 2, 3, 4], 8) == [4]  # fewer sequences than a batch
    assert choose_boundaries([1] * 10 + [9] * 10, 4, max_padding=0.0) == [1, 9]
    assert len(choose_boundaries(np.arange(1, 101).repeat(4), 4, num_buckets=5)) == 5
    with pytest.raises(ValueError):
        choose_boundaries([], 4)


def test_many_distinct_lengths_are_coarsened_but_bounded():
    lengths = np.random.default_rng(1).integers(1, 20_000, 20_000)
    boundaries = choose_boundaries(lengths, 16, max_padding=0.05)
    top = np.asarray(boundaries)[assign_buckets(lengths, boundaries)]
    assert (top - lengths).sum() / top.sum() <= 0.05


def test_bucket_sampler_batches_within_buckets_and_reproducible(lengths):
    boundaries = choose_boundaries(lengths, 32, max_padding=0.05)
    sampler = BucketBatchSampler(lengths, 32, boundaries, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each once
    bucket = assign_buckets(lengths, boundaries)
    assert all(len(set(bucket[b])) == 1 for b in batches)
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(BucketBatchSampler(lengths, 32, boundaries, seed=3)) == batches
    order = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    assert padding_fraction(lengths, batches) <= 0.05 < padding_fraction(lengths, random_batches)


def test_bucket_sampler_drop_last_no_shuffle_and_overflow():
    lengths = [1, 1, 1, 5, 5, 9, 20]  # 20 is above the last boundary: overflow bucket
    sampler = BucketBatchSampler(lengths, 2, [2, 10], shuffle=False)
    assert list(sampler) == [[0, 1], [2], [3, 4], [5], [6]]
    dropped = BucketBatchSampler(lengths, 2, [2, 10], shuffle=False, drop_last=True)
    assert list(dropped) == [[0, 1], [3, 4]] and len(dropped) == 2
    with pytest.raises(ValueError, match="strictly increasing"):
        BucketBatchSampler(lengths, 2, [10, 2])


def test_bucket_sampler_drives_a_dataloader():
    seqs = [list(range(1, n + 1)) for n in [3, 1, 4, 1, 5, 9, 2, 6]]
    sampler = BucketBatchSampler([len(s) for s in seqs], 2, [2, 5, 9], seed=0)
    loader = DataLoader(seqs, batch_sampler=sampler, collate_fn=pad_batch)
    shapes = [(x.shape, lengths.tolist()) for x, lengths in loader]
    assert len(shapes) == len(sampler)
    assert sum(len(lengths) for _, lengths in shapes) == len(seqs)
    assert all(shape[0] == max(lengths) for shape, lengths in shapes)


def test_pad_batch_time_major():
    x, lengths = pad_batch([[4, 5, 6], np.array([7]), torch.tensor([8, 9])], pad_id=0)
    assert x.dtype == torch.long and x.shape == (3, 3)  # L x B
    assert x.T.tolist() == [[4, 5, 6], [7, 0, 0], [8, 9, 0]] and lengths.tolist() == [3, 1, 2]
    assert pad_batch([[1]], pad_id=-1)[0].tolist() == [[1]]


def test_window_sampler_one_length_per_batch():
    sampler = RandomLengthWindowSampler(
        num_days=3, num_stations=80, num_slots=73, batch_size=16, lengths=range(5, 40),
        num_batches=50, seed=0,
    )  # fmt: skip
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    assert len({length for length, _ in batches}) > 5  # the length varies between batches
    for length, windows in batches:
        assert 5 <= length < 40 and len(windows) == 16
        for day, station, start in windows:
            assert 0 <= day < 3 and 0 <= station < 80 and 0 <= start <= 73 - length
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError):
        RandomLengthWindowSampler(1, 80, 73, 4, lengths=[74], num_batches=1)
