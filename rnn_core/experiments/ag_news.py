"""AG News topic classification (World, Sports, Business, Sci/Tech) with recurrent classifiers.

Configurations (the course lesson's models, AI-For-Beginners 5-NLP/16-RNN; `Config.models`
picks which ones run; embeddings of 64, the lesson's, but 128 for the BiLSTM):
    simplernn16-title    SimpleRNN(16) on the title only, padded the way the lesson's
                         TextVectorization pads: zeros AFTER the text, to the longest title of
                         each batch, batches drawn in random order (not by length) and no mask,
                         so the recurrence keeps running over the padding and the final state
                         follows it: the harm of padding, visible
    simplernn16-full     the same unmasked, post-padded SimpleRNN(16) on title + description (the
                         lesson: "try training with description"): far more padding per batch
    simplernn16-masked   SimpleRNN(16) on title + description, masked by length (mask_zero)
    lstm8                LSTM(8) on title + description, masked
    bilstm64x2           two-layer bidirectional LSTM(64) over a 128-d embedding, masked
    simplernn16-title-pre  (not in the lesson) titles padded BEFORE the text (Keras'
                         pad_sequences default), so the final state follows the last word
Unmasked configurations read the pad token like any word (a trainable embedding row, as Keras'
Embedding without mask_zero), and are scored on batches padded the same way (batch_size rows in
the split's order), so their test figure includes what padding costs them.
`backend_twins` trains a configuration again on the other backend ("lstm8-scratch"):
rnn_core.comparisons compares the pair.

Data: the prepared AG News manifest (it says whether the training split is the full 120,000 rows
or the mirror's 41,342-row subset; every result records it). A `val_fraction` slice of the TRAIN
split is held out and scored after every epoch (the learning curves; `train.select_epoch =
"best_val"` keeps the epoch with the best validation accuracy). The test split is scored once,
by the chosen epoch's model. Batches come from length buckets: with
`max_padding=0` one bucket per length shared by at least a batch, so most batches hold no padding
and run unmasked (the same result, half the CPU time of packed sequences); the rest are masked
through `lengths` (packed sequences in the fused backend). Training batches replace a
`word_dropout` share of their tokens with <unk> (regularises the embedding).

Metrics (test = the official 7,600-row test split; train = the training rows, val excluded):
    test_accuracy, test_error, test_loss, test_accuracy_<class>   the model
    train_accuracy, train_eval_loss                                the model, re-scored in eval mode
    val_accuracy, val_loss (chosen epoch), chosen_epoch             the held-out train slice
    majority_accuracy                      always predicting the training split's majority class
History (per epoch, the runner's names): train_loss (mean while training), val_loss,
val_accuracy, val_error, lr, seconds. Figures: learning_curves.png, confusion_matrix.png (test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnn_core import baselines, plots
from rnn_core.config import as_dict, knob
from rnn_core.datasets.ag_news import CLASS_NAMES, load_ag_news
from rnn_core.datasets.bucketing import BucketBatchSampler, choose_boundaries, pad_batch
from rnn_core.experiments.pairs import split_twin, with_twins
from rnn_core.experiments.protocol import Batches, Experiment, Report, Splits
from rnn_core.layers import BACKENDS, INITS
from rnn_core.metrics import ClassificationMetrics
from rnn_core.models import Batch, ClassifierConfig, build_model
from rnn_core.results import Headline
from rnn_core.significance import PerExampleOutcome
from rnn_core.training import TrainConfig, evaluate


@dataclass(frozen=True)
class Architecture:
    """What one configuration name trains: its input text, masking and recurrent stack."""

    text: str  # title (title_ids) | full (ids: title + description)
    padding: str  # masked (lengths, packed) | post (after the text, unmasked, batches in random
    # order: the lesson's TextVectorization) | pre (before the text, unmasked, bucketed)
    cell: str  # rnn (tanh, Keras' SimpleRNN) | lstm
    hidden_size: int  # units per layer and direction
    num_layers: int = 1
    bidirectional: bool = False
    embedding_dim: int = 64  # the lesson's embed_size

    @property
    def masked(self) -> bool:
        return self.padding == "masked"


PADDINGS = ("masked", "post", "pre")
ARCHITECTURES: dict[str, Architecture] = {
    "simplernn16-title": Architecture("title", "post", cell="rnn", hidden_size=16),
    "simplernn16-full": Architecture("full", "post", cell="rnn", hidden_size=16),
    "simplernn16-masked": Architecture("full", "masked", cell="rnn", hidden_size=16),
    "lstm8": Architecture("full", "masked", cell="lstm", hidden_size=8),
    "bilstm64x2": Architecture("full", "masked", cell="lstm", hidden_size=64, num_layers=2,
                               bidirectional=True, embedding_dim=128),
    "simplernn16-title-pre": Architecture("title", "pre", cell="rnn", hidden_size=16),
}
LESSON = ["simplernn16-title", "simplernn16-full", "simplernn16-masked", "lstm8", "bilstm64x2"]


@dataclass
class Model:
    """[ag_news.model]: what every architecture shares (the architecture fixes the rest)."""

    backend: str = knob("fused", choices=BACKENDS)  # fused (torch.nn / cuDNN) | scratch
    dropout: float = knob(0.3, min=0, below=1)  # between stacked layers (two-layer models only)
    forget_bias: float | None = knob(None)  # LSTM models: forget-gate bias at init (e.g. 1.0)
    init: str = knob("keras", choices=INITS)  # the lesson's Keras layers' initial weights:
    # orthogonal recurrent kernel (a state survives many steps, padding included), zero biases,
    # LSTM forget bias 1 | torch (torch.nn's uniform)


@dataclass
class Config:
    models: list[str] = knob(LESSON, choices=tuple(ARCHITECTURES), nonempty=True)
    backend_twins: list[str] = knob(["lstm8"], choices=tuple(ARCHITECTURES))  # also trained on
    # the other backend, when planned
    vocab_size: int | None = knob(12000, min=2)  # keep the most frequent ids (the prepared
    # vocab is ranked); rarer ones become <unk>: fewer embedding rows. None = the whole vocab
    max_length: int | None = knob(100, min=1)  # first tokens of the rare longer texts (None = all)
    batch_size: int = knob(64, min=1)  # training sequences per batch, all from one length bucket
    eval_batch_size: int = knob(256, min=1)  # scoring only (no gradients)
    max_padding: float = knob(0.0, min=0, below=1)  # padded slots allowed per bucket; 0 = one
    # bucket per length shared by at least a batch: such batches need no mask (~2x faster on CPU)
    val_fraction: float = knob(0.05, above=0, below=1)  # slice of TRAIN held out for validation
    word_dropout: float = knob(0.25, min=0, below=1)  # training tokens replaced by <unk>
    max_train_rows: int | None = knob(None, min=2)  # random slice of train (smoke); None = all
    max_test_rows: int | None = knob(None, min=1)  # first test rows (smoke only); None = all
    # default profile: 3 epochs, ~37 s of CPU each for the BiLSTM on the subset
    train: TrainConfig = knob(TrainConfig(epochs=3, lr=3e-3, lr_decay=0.5, grad_clip=1.0))
    model: Model = knob(Model)


# --- data --------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split as id sequences (each an int64 array, length >= 1) and labels."""

    seqs: list[np.ndarray]
    y: np.ndarray  # int64 class ids
    rows: np.ndarray  # row numbers in the Parquet file they came from

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.seqs), dtype=np.int64, count=len(self.seqs))


def _split(df, column: str, rows: np.ndarray, config: Config, unk_id: int) -> Split:
    seqs = []
    for ids in df[column].to_numpy()[rows]:
        ids = np.asarray(ids, dtype=np.int64)[: config.max_length]
        if config.vocab_size is not None:
            ids = np.where(ids >= config.vocab_size, unk_id, ids)
        seqs.append(ids)
    return Split(seqs, df["label"].to_numpy()[rows].astype(np.int64), rows)


def make_batch(split: Split, idx, padding: str, pad_id: int) -> Batch:
    """Rows `idx` -> Batch(x L x B ids, y B, lengths B), L = the longest row.

    masked: padding after each text, lengths given (skipped by packing / masking);
    post: padding after each text, lengths None (every step runs, the pad token read as input);
    pre: padding before each text, lengths None."""
    seqs = [split.seqs[i] for i in idx]
    y = torch.as_tensor(split.y[idx])
    if padding == "masked":
        x, lengths = pad_batch(seqs, pad_id)  # padding after each sequence, skipped by packing
        # No padding, nothing to mask: lengths=None lets the fused kernel skip packing.
        return Batch(x, y, None if bool((lengths == x.shape[0]).all()) else lengths)
    if padding == "post":
        return Batch(pad_batch(seqs, pad_id)[0], y, None)
    if padding != "pre":
        raise ValueError(f"unknown padding {padding!r}: expected one of {PADDINGS}")
    x, _ = pad_batch([s[::-1].copy() for s in seqs], pad_id)  # reversed, padded after ...
    return Batch(x.flip(0), y, None)  # ... flipped back: padding first, text last


def bucket_boundaries(split: Split, batch_size: int, config: Config) -> list[int]:
    """Length buckets of at least one batch each (up to one per distinct length)."""
    return choose_boundaries(split.lengths, batch_size, config.max_padding, max_buckets=512)


def eval_index(split: Split, config: Config, arch: Architecture) -> list[np.ndarray]:
    """The scoring batches' rows, in a fixed order. Bucketed by length (the score is then exact,
    independent of batching), except for post padding: `batch_size` rows in the split's order,
    padded as in training, so the score includes what the padding costs."""
    if arch.padding == "post":
        return [np.arange(i, min(i + config.batch_size, len(split)))
                for i in range(0, len(split), config.batch_size)]
    boundaries = bucket_boundaries(split, config.eval_batch_size, config)
    sampler = BucketBatchSampler(split.lengths, config.eval_batch_size, boundaries, shuffle=False)
    return [np.asarray(idx) for idx in sampler]


def eval_batches(split: Split, config: Config, arch: Architecture, pad_id: int) -> list[Batch]:
    return [make_batch(split, idx, arch.padding, pad_id)
            for idx in eval_index(split, config, arch)]


def slug(label: str) -> str:
    """"Sci/Tech" -> "sci_tech": metric-name friendly."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


# --- the experiment ----------------------------------------------------------------------------


class AGNews(Experiment):
    """AG News topic classification: SimpleRNN, masking, LSTM, two-layer BiLSTM."""

    name = "ag_news"
    axes = ("models", "backend_twins")  # which configurations, not how they train
    Config = Config
    headline = Headline("test_accuracy", "max")
    datasets = ("ag_news",)
    select_on = ("accuracy", "max")

    def plan(self, config: Config) -> list[str]:
        """The configuration names, in the order `config.models` lists them, each followed by
        its backend twin ("<name>-scratch" / "-fused") when `backend_twins` lists it."""
        return with_twins(self.name, config.models, config.backend_twins,
                          lambda n: config.model.backend)

    def data(self, config: Config, name: str, manifests) -> Splits:
        """(train, val, test): val is a seeded random slice of the train split."""
        manifest = manifests["ag_news"]
        arch = ARCHITECTURES[split_twin(name)[0]]
        train_df, test_df, vocab = load_ag_news(Path(manifest.folder))
        column = "title_ids" if arch.text == "title" else "ids"
        order = np.random.default_rng(config.train.seed).permutation(len(train_df))
        if config.max_train_rows is not None:
            order = order[: config.max_train_rows]
        n_val = round(config.val_fraction * len(order))
        if n_val < 1 or n_val >= len(order):
            raise ValueError(f"ag_news: val_fraction {config.val_fraction} leaves no val or "
                             f"train rows out of {len(order)}")
        test_rows = np.arange(min(len(test_df), config.max_test_rows or len(test_df)))
        train = _split(train_df, column, order[n_val:], config, vocab.unk_id)
        val = _split(train_df, column, order[:n_val], config, vocab.unk_id)
        test = _split(test_df, column, test_rows, config, vocab.unk_id)
        vocab_size = len(vocab) if config.vocab_size is None else min(config.vocab_size,
                                                                      len(vocab))
        info = {
            "dataset": "ag_news",
            "variant": manifest.variant,
            "train_rows_available": manifest.rows.get("train"),
            "train_rows": len(train),
            "val_rows": len(val),
            "test_rows": len(test),
            "test_truncated": len(test) < manifest.rows.get("test", len(test)),
            "text": arch.text,
            "vocab_size_prepared": len(vocab),
            "vocab_size_used": vocab_size,
            "files": {k: {"sha256": f.sha256} for k, f in manifest.files.items()},
        }
        return Splits(train, val, test, info, vocab=vocab, vocab_size=vocab_size, arch=arch)

    def model(self, config: Config, name: str, data: Splits):
        arch, backend = data.arch, split_twin(name)[1] or config.model.backend
        return build_model(as_dict(ClassifierConfig(
            **as_dict(config.model) | {
                "dropout": config.model.dropout if arch.num_layers > 1 else 0.0,
                "forget_bias": config.model.forget_bias if arch.cell == "lstm" else None,
                "backend": backend},
            cell=arch.cell, hidden_size=arch.hidden_size, num_layers=arch.num_layers,
            bidirectional=arch.bidirectional, embedding_dim=arch.embedding_dim,
            num_classes=len(CLASS_NAMES), vocab_size=data.vocab_size,
            # unmasked: the pad token is a word like any other (Keras' Embedding, no mask_zero)
            padding_idx=data.vocab.pad_id if arch.masked else None)) | {"kind": "classifier"})

    def batches(self, config: Config, name: str, data: Splits) -> Batches:
        """Shuffled training batches with word dropout (bucketed by length, except for post
        padding: random rows, as the lesson's unbucketed pipeline); fixed-order val batches."""
        split, arch = data.train, data.arch
        pad_id, unk_id, seed = data.vocab.pad_id, data.vocab.unk_id, config.train.seed
        boundaries = bucket_boundaries(split, config.batch_size, config)
        sampler = BucketBatchSampler(split.lengths, config.batch_size, boundaries, seed=seed)

        def rows(epoch: int):
            if arch.padding != "post":
                sampler.set_epoch(epoch)
                return sampler
            order = np.random.default_rng([seed, epoch]).permutation(len(split))
            return [order[i : i + config.batch_size]
                    for i in range(0, len(order), config.batch_size)]

        def train_batches(epoch: int) -> list[Batch]:
            rng = torch.Generator().manual_seed(seed * 100_003 + epoch)
            out = []
            for idx in rows(epoch):
                batch = make_batch(split, np.asarray(idx), arch.padding, pad_id)
                if config.word_dropout > 0:
                    drop = torch.rand(batch.x.shape, generator=rng) < config.word_dropout
                    batch = batch._replace(x=batch.x.masked_fill(drop & (batch.x != pad_id),
                                                                 unk_id))
                out.append(batch)
            return out

        return Batches(train_batches, eval_batches(data.val, config, arch, pad_id))

    def score(self, config: Config, name: str, model, data: Splits) -> dict[str, float]:
        """Test split (once, the chosen model), training rows, majority baseline."""
        arch, pad_id = data.arch, data.vocab.pad_id
        accuracy = ClassificationMetrics(len(CLASS_NAMES))
        correct = PerExampleOutcome()  # 0/1 per test row: the champion's paired test
        test = evaluate(model, eval_batches(data.test, config, arch, pad_id),
                        [accuracy, correct])
        # Batches may be bucketed by length: put the outcomes back in the test split's row order.
        order = np.concatenate(eval_index(data.test, config, arch))
        per_example = np.empty(len(order))
        per_example[order] = correct.values()
        train_scores = evaluate(model, eval_batches(data.train, config, arch, pad_id))
        majority = 1.0 - baselines.majority_error(torch.as_tensor(data.train.y),
                                                  torch.as_tensor(data.test.y))
        return {
            "test_accuracy": test["accuracy"],
            "test_error": test["error"],
            "test_loss": test["loss"],
            **{f"test_accuracy_{slug(c)}": test[f"accuracy_class_{i}"]
               for i, c in enumerate(CLASS_NAMES)},
            "train_accuracy": train_scores["accuracy"],
            "train_eval_loss": train_scores["loss"],
            "majority_accuracy": majority,
            "confusion": accuracy.confusion.numpy(),  # for the report, not a metric
            "per_example": per_example,  # 0/1 correct per test row, mean = test_accuracy
        }

    def report(self, config, name, model, data, history, scores, folder) -> Report:
        return Report(figures={
            "learning_curves": plots.learning_curves(
                history, ["train_loss", "val_loss", "val_accuracy"],
                folder / "learning_curves.png", title=f"{name}: loss and val accuracy"),
            "confusion_matrix": plots.confusion_matrix(
                scores["confusion"], CLASS_NAMES, folder / "confusion_matrix.png",
                title=f"{name}: test accuracy {scores['test_accuracy']:.4f}"),
        })

    def serving(self, config: Config, name: str, data: Splits) -> dict:
        """Raw title (+ description) -> label: the prepared vocabulary as this data phase cut it
        (first `vocab_size` ids, `max_length` tokens), the prepare step's cleaner (serving)."""
        from rnn_core.serving.text import text_classifier_spec

        return text_classifier_spec(data.vocab.tokens, data.vocab_size, data.vocab.pad_id,
                                    data.vocab.unk_id, CLASS_NAMES, data.arch.text,
                                    config.max_length)


EXPERIMENT = AGNews()
