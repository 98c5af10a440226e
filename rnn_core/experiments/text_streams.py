"""Character streams for truncated BPTT, and what both character experiments share
(char_generation, vanishing_gradients): the corpus read from its manifest with a validation tail,
and the character model's config block.

A text becomes B parallel contiguous streams (T x B ids, stream b = the b-th slice of the text),
cut into consecutive chunks of `bptt` steps. `training.train(..., TrainConfig(stateful=True))`
carries the detached state from one chunk to the next, so every stream is read in order and the
gradient is truncated at chunk boundaries.

    ids = encode_ids(text, vocab)                      # N int64
    streams = as_streams(ids, num_streams=64)          # T x 64
    batches = chunk_batches(streams, bptt=100)         # Batch(x=L x 64, y=L x 64), L <= 100

Stream b predicts streams[1:, b] from streams[:-1, b]: the targets `stream_targets_nats` scores a
baseline on, so baselines and models are scored on exactly the same characters.

The validation split (`load_corpus_ids`) is the TAIL of the prepared training text: the corpus
is cut contiguously as train | val | test, in the corpus' own order, so the validation text comes
right before the test split and no character position lies in two splits (a contiguous cut also
keeps every speech or scene but the one it falls in on one side). The prepare step's 90/10
train/test cut stays as it is; validation takes `val_fraction` of its 90 %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnn_core.config import as_dict, knob
from rnn_core.datasets.corpus import load_corpus
from rnn_core.datasets.manifest import DatasetManifest
from rnn_core.layers import BACKENDS
from rnn_core.models import Batch, CharLMConfig, build_model, config_dict

CORPORA = ("trump", "moliere")  # the prepared character corpora (rnn_core.datasets.corpus)


@dataclass
class CharModel:
    """[<experiment>.model]: the character language model's stack; the configuration name gives
    the cell (rnn, lstm, gru) or the Mikolov RNN."""

    hidden_size: int = knob(256, min=1)  # units per layer (mikolov: its single sigmoid layer)
    num_layers: int = knob(1, min=1)  # stacked layers (embedding models only)
    embedding_dim: int = knob(32, min=1)  # character embedding (embedding models only)
    dropout: float = knob(0.0, min=0, below=1)  # between stacked layers (num_layers > 1 only)
    backend: str = knob("fused", choices=BACKENDS)  # fused (torch.nn / cuDNN) | scratch
    forget_bias: float | None = knob(None)  # LSTM models only: forget-gate bias at init (1.0)


def char_lm(block: CharModel, model: str, vocab_size: int) -> nn.Module:
    """The CharLanguageModel for `model` ("mikolov" or a cell name), built from the block."""
    values = as_dict(block)
    if model == "mikolov":  # one sigmoid layer over the one-hot input: no stack, no embedding
        config = CharLMConfig(**values | {"num_layers": 1, "dropout": 0.0, "forget_bias": None},
                              mode="mikolov", cell="rnn", nonlinearity="sigmoid",
                              vocab_size=vocab_size)
    else:
        dropout = block.dropout if block.num_layers > 1 else 0.0
        forget_bias = block.forget_bias if model == "lstm" else None  # only an LSTM has one
        config = CharLMConfig(**values | {"dropout": dropout, "forget_bias": forget_bias},
                              mode="embedding", cell=model, vocab_size=vocab_size)
    return build_model(config_dict(config))


@dataclass
class CorpusIds:
    """A prepared corpus as ids: train | val (the training text's tail) | test, contiguous."""

    train: torch.Tensor  # N_train int64: the training part (val excluded)
    val: torch.Tensor  # the last `val_fraction` of the prepared training text
    test: torch.Tensor  # the prepared test split, whole
    vocab: list[str]  # id -> character
    spans: dict[str, tuple[int, int]]  # split -> [start, end) character offsets in the corpus

    def info(self, manifest: DatasetManifest) -> dict:
        """What a run records about the data (before any cap on scored characters)."""
        summary = manifest.summary
        return {
            "dataset": manifest.dataset,
            "variant": manifest.variant,
            "source": summary.get("source"),
            "clean_chars": summary.get("clean_chars"),
            "vocab_size": len(self.vocab),
            "train_chars": self.train.numel(),
            "val_chars": self.val.numel(),
            "test_chars": self.test.numel(),
            "spans": {k: list(v) for k, v in self.spans.items()},
            "files": {k: {"sha256": f.sha256} for k, f in manifest.files.items()},
        }


def load_corpus_ids(manifest: DatasetManifest, val_fraction: float) -> CorpusIds:
    """The manifest's corpus as ids, the last `val_fraction` of its training text held out."""
    train_text, test_text, vocab = load_corpus(Path(manifest.folder))
    ids = encode_ids(train_text, vocab, str(manifest.path("train.parquet")))
    test = encode_ids(test_text, vocab, str(manifest.path("test.parquet")))
    cut = ids.numel() - round(val_fraction * ids.numel())
    if not 0 < cut < ids.numel():
        raise ValueError(f"{manifest.dataset}: val_fraction {val_fraction} leaves no training "
                         f"or validation characters out of {ids.numel()}")
    end = ids.numel() + test.numel()
    spans = {"train": (0, cut), "val": (cut, ids.numel()), "test": (ids.numel(), end)}
    return CorpusIds(ids[:cut], ids[cut:], test, list(vocab), spans)


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
    boundaries move between epochs. With `max_chars` (None or 0 = the whole text), an epoch is a
    window of that many characters and successive epochs take successive windows (wrapping around
    the end of the text), so short epochs still cover the whole text rather than its first part
    again and again.
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
