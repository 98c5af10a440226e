"""AG News topic classification (World, Sports, Business, Sci/Tech) with recurrent classifiers.

Configurations (the course lesson's four models; `Config.models` picks which ones run):
    simplernn16-title    SimpleRNN(16) on the title only, no masking: titles are left-padded
                         (Keras' default "pre" padding) so the final state follows the last word
    simplernn16-masked   SimpleRNN(16) on title + description, masked by length
    lstm8                LSTM(8) on title + description, masked
    bilstm64x2           two-layer bidirectional LSTM(64) over a 128-d embedding, masked

Data: the processed Parquet of `rnn_core.datasets.ag_news` (meta.json says whether the training
split is the full 120,000 rows or the mirror's 41,342-row subset; every result records it). A
`val_fraction` slice of the TRAIN split is held out and scored after every epoch (the learning
curves; `select_epoch="best_val"` keeps the epoch with the best validation accuracy). The test
split is scored once, by the chosen epoch's model. Batches come from length buckets: with
`max_padding=0` one bucket per length shared by at least a batch, so most batches hold no padding
and run unmasked (the same result, half the CPU time of packed sequences); the rest are masked
through `lengths` (packed sequences in the fused backend). Training batches replace a
`word_dropout` share of their tokens with <unk> (regularises the embedding).

Metrics (test = the official 7,600-row test split; train = the training rows, val excluded):
    test_accuracy, test_error, test_loss, test_accuracy_<class>   the model
    train_accuracy, train_loss                                     the model, re-scored in eval mode
    val_accuracy                                                   the held-out train slice
    majority_accuracy                      always predicting the training split's majority class
History (per epoch): train_running_loss (mean loss while training), val_loss, val_accuracy, lr,
seconds. Figures: learning_curves.png, confusion_matrix.png (test split).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnn_core import baselines, plots
from rnn_core.checkpoints import load_checkpoint, save_checkpoint
from rnn_core.datasets.ag_news import CLASS_NAMES, load_ag_news
from rnn_core.datasets.bucketing import BucketBatchSampler, choose_boundaries, pad_batch
from rnn_core.datasets.io import read_json
from rnn_core.metrics import ClassificationMetrics
from rnn_core.models import Batch, build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.training import TrainConfig, as_callbacks, evaluate, resolve_device, train

TASK = "ag_news"
HEADLINE = Headline("test_accuracy", "max")
BEST = "best.pt"  # the best-validation weights, beside training's last.pt


@dataclass(frozen=True)
class Architecture:
    """What one configuration name trains: its input text, masking and recurrent stack."""

    text: str  # title (title_ids) | full (ids: title + description)
    masked: bool  # lengths-masked (packed); False = left-padded, every step runs
    cell: str  # rnn (tanh, Keras' SimpleRNN) | lstm
    hidden_size: int  # units per layer and direction
    num_layers: int = 1
    bidirectional: bool = False
    embedding_dim: int = 32


ARCHITECTURES: dict[str, Architecture] = {
    "simplernn16-title": Architecture("title", masked=False, cell="rnn", hidden_size=16),
    "simplernn16-masked": Architecture("full", masked=True, cell="rnn", hidden_size=16),
    "lstm8": Architecture("full", masked=True, cell="lstm", hidden_size=8),
    "bilstm64x2": Architecture("full", masked=True, cell="lstm", hidden_size=64, num_layers=2,
                               bidirectional=True, embedding_dim=128),
}


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["lstm8", "bilstm64x2"])  # ARCHITECTURES
    backend: str = "fused"  # fused (torch.nn / cuDNN) | scratch (hand-written per-step loop)
    vocab_size: int | None = 12000  # keep the most frequent ids (the prepared vocab is ranked);
    # rarer ones become <unk>: fewer embedding rows to update. None = the whole prepared vocab
    max_length: int | None = 100  # keep the first tokens of the rare longer texts (None = all)
    batch_size: int = 64  # training sequences per batch, all from one length bucket
    eval_batch_size: int = 256  # scoring only (no gradients)
    max_padding: float = 0.0  # padded slots allowed per bucket; 0 = one bucket per length where
    # at least a batch shares it: such batches need no mask and run unpacked (~2x faster on CPU)
    val_fraction: float = 0.05  # slice of TRAIN held out for the learning curves / epoch choice
    select_epoch: str = "last"  # last | best_val (the epoch with the best val accuracy)
    epochs: int = 3  # default profile: ~37 s of CPU each for the BiLSTM on the subset
    lr: float = 3e-3  # Adam, first epoch
    lr_decay: float = 0.5  # lr multiplier per epoch
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    dropout: float = 0.3  # between stacked recurrent layers (two-layer models only)
    word_dropout: float = 0.25  # training tokens replaced by <unk> with this probability
    max_train_rows: int | None = None  # random slice of the train split (smoke); None = all
    max_test_rows: int | None = None  # first rows of the test split (smoke only); None = all
    device: str = "auto"  # auto = CUDA when present
    precision: str = "bf16"  # autocast on CUDA (the CPU runs fp32)
    seed: int = 0  # split, batch order, word dropout, initial weights
    torch_threads: int = 1  # CPU threads during this run (0 = leave torch's setting): on two
    # shared cores, two threads ran 4x slower than one


def plan(config: Config) -> list[str]:
    """The configuration names, in the order `config.models` lists them."""
    unknown = [m for m in config.models if m not in ARCHITECTURES]
    if unknown:
        known = list(ARCHITECTURES)
        raise ValueError(f"{TASK}: unknown models {unknown}; expected some of {known}")
    if config.select_epoch not in ("last", "best_val"):
        raise ValueError(f"{TASK}: select_epoch must be 'last' or 'best_val'")
    return list(config.models)


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


def load_splits(config: Config, text: str, data_dir: Path):
    """(train, val, test, vocab, meta): val is a seeded random slice of the train split."""
    out_dir = Path(data_dir) / "processed" / "ag_news"
    train_df, test_df, vocab = load_ag_news(out_dir)
    meta = read_json(out_dir / "meta.json")
    column = "title_ids" if text == "title" else "ids"
    order = np.random.default_rng(config.seed).permutation(len(train_df))
    if config.max_train_rows is not None:
        order = order[: config.max_train_rows]
    n_val = round(config.val_fraction * len(order))
    if n_val < 1 or n_val >= len(order):
        raise ValueError(f"{TASK}: val_fraction {config.val_fraction} leaves no val or train rows")
    test_rows = np.arange(min(len(test_df), config.max_test_rows or len(test_df)))
    train = _split(train_df, column, order[n_val:], config, vocab.unk_id)
    val = _split(train_df, column, order[:n_val], config, vocab.unk_id)
    test = _split(test_df, column, test_rows, config, vocab.unk_id)
    return train, val, test, vocab, meta


def make_batch(split: Split, idx, masked: bool, pad_id: int) -> Batch:
    """Rows `idx` -> Batch(x L x B ids, y B, lengths B). Unmasked: left-padded, lengths None."""
    seqs = [split.seqs[i] for i in idx]
    y = torch.as_tensor(split.y[idx])
    if masked:
        x, lengths = pad_batch(seqs, pad_id)  # padding after each sequence, skipped by packing
        # No padding, nothing to mask: lengths=None lets the fused kernel skip packing.
        return Batch(x, y, None if bool((lengths == x.shape[0]).all()) else lengths)
    x, _ = pad_batch([s[::-1].copy() for s in seqs], pad_id)  # reversed, padded after ...
    return Batch(x.flip(0), y, None)  # ... flipped back: padding first, text last


def bucket_boundaries(split: Split, batch_size: int, config: Config) -> list[int]:
    """Length buckets of at least one batch each (up to one per distinct length)."""
    return choose_boundaries(split.lengths, batch_size, config.max_padding, max_buckets=512)


def batch_source(split: Split, config: Config, masked: bool, pad_id: int, unk_id: int):
    """`batches(epoch)` for training: shuffled bucketed batches with word dropout."""
    boundaries = bucket_boundaries(split, config.batch_size, config)
    sampler = BucketBatchSampler(split.lengths, config.batch_size, boundaries, seed=config.seed)

    def batches(epoch: int) -> list[Batch]:
        sampler.set_epoch(epoch)
        rng = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        out = []
        for idx in sampler:
            batch = make_batch(split, np.asarray(idx), masked, pad_id)
            if config.word_dropout > 0:
                drop = torch.rand(batch.x.shape, generator=rng) < config.word_dropout
                x = batch.x.masked_fill(drop & (batch.x != pad_id), unk_id)
                batch = Batch(x, batch.y, batch.lengths)
            out.append(batch)
        return out

    return batches


def eval_batches(split: Split, config: Config, masked: bool, pad_id: int) -> list[Batch]:
    """Bucketed batches in a fixed order (scores are exact sums, independent of batching)."""
    boundaries = bucket_boundaries(split, config.eval_batch_size, config)
    sampler = BucketBatchSampler(split.lengths, config.eval_batch_size, boundaries, shuffle=False)
    return [make_batch(split, np.asarray(idx), masked, pad_id) for idx in sampler]


# --- model, training, epoch choice -------------------------------------------------------------


def model_config(config: Config, name: str, vocab_size: int, pad_id: int) -> dict:
    """The SequenceClassifier config dict (with "kind") for one configuration name."""
    arch = ARCHITECTURES[name]
    return {
        "kind": "classifier",
        "num_classes": len(CLASS_NAMES),
        "vocab_size": vocab_size,
        "embedding_dim": arch.embedding_dim,
        "padding_idx": pad_id,
        "cell": arch.cell,
        "hidden_size": arch.hidden_size,
        "num_layers": arch.num_layers,
        "bidirectional": arch.bidirectional,
        "backend": config.backend,
        "dropout": config.dropout if arch.num_layers > 1 else 0.0,
    }


def train_config(config: Config) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs, lr=config.lr, lr_decay=config.lr_decay,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip, device=config.device,
        precision=config.precision, seed=config.seed,
    )  # fmt: skip


class KeepBest:
    """Callback: after each epoch, save the weights to `path` when val accuracy improves.

    On a resumed run the best so far is read back from `path`, so the choice spans all epochs.
    """

    def __init__(self, model, path: Path):
        self.model, self.path = model, Path(path)
        self.best, self.epoch = -1.0, -1
        if self.path.exists():
            saved = load_checkpoint(self.path)
            if saved["config"] != config_dict(model):
                raise ValueError(f"{self.path}: saved for another model config; use another dir")
            self.best, self.epoch = float(saved["val_accuracy"]), int(saved["epoch"])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if metrics["val_accuracy"] > self.best:
            self.best, self.epoch = metrics["val_accuracy"], epoch
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            save_checkpoint(self.path, {"model_state": state, "config": config_dict(self.model),
                                        "epoch": epoch, "val_accuracy": self.best})


def slug(label: str) -> str:
    """"Sci/Tech" -> "sci_tech": metric-name friendly."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _history(rows: list[dict]) -> list[dict[str, float]]:
    return [
        {
            "epoch": row["epoch"],
            "train_running_loss": row["train_loss"],
            "val_loss": row["val_loss"],
            "val_accuracy": row["val_accuracy"],
            "lr": row["lr"],
            "seconds": row["seconds"],
        }
        for row in rows
    ]


# --- one configuration -------------------------------------------------------------------------


def run_one(config: Config, name: str, data_dir: Path, work_dir: Path,
            callbacks=None) -> RunResult:
    """Train one configuration, score it on the test split, plot curves and confusions."""
    threads = torch.get_num_threads()
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    try:
        return _run_one(config, name, Path(data_dir), Path(work_dir), callbacks)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was


def _run_one(config: Config, name: str, data_dir: Path, work_dir: Path, callbacks) -> RunResult:
    started = time.perf_counter()
    plan(dataclasses.replace(config, models=[name]))  # validates the name and select_epoch
    arch = ARCHITECTURES[name]
    train_split, val_split, test_split, vocab, meta = load_splits(config, arch.text, data_dir)
    pad_id, unk_id, masked = vocab.pad_id, vocab.unk_id, arch.masked
    vocab_size = len(vocab) if config.vocab_size is None else min(config.vocab_size, len(vocab))

    # -- train (resumes from work_dir/name/last.pt) --------------------------------------------
    torch.manual_seed(config.seed)  # the model's initial weights
    mcfg = model_config(config, name, vocab_size, pad_id)
    model = build_model(mcfg)
    tcfg = train_config(config)
    run_dir = Path(work_dir) / name
    keep = KeepBest(model, run_dir / BEST) if config.select_epoch == "best_val" else None
    result = train(
        model, batch_source(train_split, config, masked, pad_id, unk_id), tcfg,
        eval_batches=eval_batches(val_split, config, masked, pad_id),
        callbacks=as_callbacks(callbacks) + ([keep] if keep else []),
        checkpoint_dir=run_dir,
    )
    history = _history(result.history)
    checkpoint, chosen = Path(result.checkpoint), len(history) - 1
    if keep is not None:  # score the best-validation epoch's weights, not the last ones
        model.load_state_dict(load_checkpoint(run_dir / BEST)["model_state"])
        checkpoint, chosen = run_dir / BEST, keep.epoch

    # -- score: test split (once, the chosen model), training rows, majority baseline ----------
    test_acc = ClassificationMetrics(len(CLASS_NAMES))
    test = evaluate(model, eval_batches(test_split, config, masked, pad_id), [test_acc])
    train_scores = evaluate(model, eval_batches(train_split, config, masked, pad_id))
    majority = 1.0 - baselines.majority_error(
        torch.as_tensor(train_split.y), torch.as_tensor(test_split.y))
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_error": test["error"],
        "test_loss": test["loss"],
        **{f"test_accuracy_{slug(c)}": test[f"accuracy_class_{i}"]
           for i, c in enumerate(CLASS_NAMES)},
        "train_accuracy": train_scores["accuracy"],
        "train_loss": train_scores["loss"],
        "val_accuracy": history[chosen]["val_accuracy"],
        "majority_accuracy": majority,
        "chosen_epoch": float(chosen),
    }  # fmt: skip

    # -- figures ------------------------------------------------------------------------------
    plot_dir = run_dir / "plots"
    figures = {
        "learning_curves": plots.learning_curves(
            history, ["train_running_loss", "val_loss", "val_accuracy"],
            plot_dir / "learning_curves.png", title=f"{name}: loss and val accuracy",
        ),
        "confusion_matrix": plots.confusion_matrix(
            test_acc.confusion.numpy(), CLASS_NAMES, plot_dir / "confusion_matrix.png",
            title=f"{name}: test accuracy {test['accuracy']:.4f}",
        ),
    }  # fmt: skip
    variant = meta.get("train_variant", "unknown")
    dataset = {
        "dataset": "ag_news",
        "variant": variant,
        "train_rows_available": meta.get("train", {}).get("rows"),
        "train_rows": len(train_split),
        "val_rows": len(val_split),
        "test_rows": len(test_split),
        "test_truncated": len(test_split) < meta.get("test", {}).get("rows", len(test_split)),
        "text": arch.text,
        "vocab_size_prepared": len(vocab),
        "vocab_size_used": vocab_size,
        "sources": meta.get("sources"),
    }
    return RunResult(
        task=TASK,
        name=name,
        params={"experiment": dataclasses.asdict(config), "model": mcfg,
                "train": dataclasses.asdict(tcfg)},
        metrics=metrics,
        headline=HEADLINE,
        history=history,
        figures=figures,
        tags={"model": name, "dataset": "ag_news", "data_variant": variant},
        dataset=dataset,
        model_config=config_dict(model),
        checkpoint=checkpoint,
        device=str(resolve_device(config.device)),
        seconds=time.perf_counter() - started,
    )
