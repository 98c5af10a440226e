"""Character streams for truncated BPTT, shared by the character experiments.

A text becomes B parallel contiguous streams (T x B ids, stream b = the b-th slice of the text),
cut into consecutive chunks of `bptt` steps. `training.train(..., TrainConfig(stateful=True))`
carries the detached state from one chunk to the next, so every stream is read in order and the
gradient is truncated at chunk boundaries.

    ids = encode_ids(text, vocab)                      # N int64
    streams = as_streams(ids, num_streams=64)          # T x 64
    batches = chunk_batches(streams, bptt=100)         # Batch(x=L x 64, y=L x 64), L <= 100

Stream b predicts streams[1:, b] from streams[:-1, b]: the targets `stream_targets_nats` scores a
baseline on, so baselines and models are scored on exactly the same characters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from rnn_core.models import Batch


def encode_ids(text: str, vocab: Sequence[str], source: str = "text") -> torch.Tensor:
    """Characters -> int64 ids (N); a character outside `vocab` is an error naming `source`."""
    index = {c: i for i, c in enumerate(vocab)}
    # Map each distinct character once (fast on megabytes), then look every code point up.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    distinct = np.unique(codes)
    missing = [chr(c) for c in distinct if chr(c) not in index]
    if missing:
        raise ValueError(f"{source}: characters not in the vocabulary: {missing[:10]!r}")
    lookup = {int(c): index[chr(c)] for c in distinct}
    table = np.zeros(int(distinct.max()) + 1 if len(distinct) else 1, dtype=np.int64)
    for code, i in lookup.items():
        table[code] = i
    return torch.from_numpy(table[codes])


def as_streams(ids: torch.Tensor, num_streams: int) -> torch.Tensor:
    """N ids -> T x B: B contiguous slices of the text side by side (the tail < B is dropped)."""
    steps = ids.numel() // num_streams
    if steps < 2:
        raise ValueError(f"{ids.numel()} characters are too few for {num_streams} streams")
    return ids[: steps * num_streams].view(num_streams, steps).t().contiguous()


def chunk_batches(streams: torch.Tensor, bptt: int) -> list[Batch]:
    """T x B streams -> consecutive Batch(x, y) chunks of at most `bptt` steps (y = x shifted)."""
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    x_all, y_all = streams[:-1], streams[1:]
    return [Batch(x_all[t : t + bptt], y_all[t : t + bptt]) for t in range(0, len(x_all), bptt)]


def epoch_batch_source(
    ids: torch.Tensor, num_streams: int, bptt: int, seed: int, max_chars: int | None = None
) -> Callable[[int], list[Batch]]:
    """`batches(epoch)` for `training.train`.

    Each epoch starts at a random offset below `bptt` (seeded by seed + epoch), so chunk
    boundaries move between epochs. With `max_chars` (None or 0 = the whole text), an epoch is a window of that many
    characters and successive epochs take successive windows (wrapping around the end of the
    text), so short epochs still cover the whole text rather than its first part again and again.
    """
    total = ids.numel()

    def batches(epoch: int) -> list[Batch]:
        rng = np.random.default_rng(seed + epoch)
        offset = int(rng.integers(0, bptt)) if total > bptt * num_streams * 2 else 0
        if not max_chars or max_chars >= total:
            part = ids[offset:]
        else:
            start = (epoch * max_chars + offset) % total
            part = ids[start : start + max_chars]
            if part.numel() < max_chars:  # wrap: the window runs past the end of the text
                part = torch.cat([part, ids[: max_chars - part.numel()]])
        return chunk_batches(as_streams(part, num_streams), bptt)

    return batches


def stream_targets_nats(streams: torch.Tensor, score: Callable[[torch.Tensor], float]) -> float:
    """Mean of a per-text scorer (e.g. baselines.bigram_nats) over the B streams' targets.

    Every stream has the same length, so the plain mean over streams is the mean per character.
    """
    return float(np.mean([score(streams[:, b]) for b in range(streams.shape[1])]))
