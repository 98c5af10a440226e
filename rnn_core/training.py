"""One training loop for every model in `rnn_core.models`, and one `evaluate`.

    result = train(model, batches=lambda epoch: make_batches(seed=epoch), config=TrainConfig(),
                   eval_batches=lambda: val_batches, callbacks=[PrintProgress()],
                   checkpoint_dir="runs/x")
    result.history[-1]["val_loss"]

`batches(epoch)` returns that epoch's iterable of `Batch`es (reshuffle with the epoch as seed);
truncated BPTT is the batch source's job (consecutive chunks of the same streams) plus
`TrainConfig.stateful`, which carries the detached state from one batch to the next. Progress goes
out through callbacks only. With a `checkpoint_dir`, the loop writes `last.pt` and, when it finds
one there, resumes after its last finished epoch with every RNG restored, so that a killed and
resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnn_core.checkpoints import (
    LAST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from rnn_core.config import knob
from rnn_core.models import Batch, config_dict

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    """The training knobs every experiment embeds as its `train` block ([<experiment>.train] in
    a profile). Each experiment's Config gives its own defaults for them, in one place."""

    epochs: int = knob(10, min=1)  # passes over batches(epoch)
    lr: float = knob(1e-3, above=0)  # learning rate of the first epoch
    lr_decay: float = knob(1.0, above=0, max=1)  # lr multiplier after every epoch (1 = constant)
    optimizer: str = knob("adam", choices=("adam", "sgd"))
    momentum: float = knob(0.0, min=0, below=1)  # sgd only
    weight_decay: float = knob(0.0, min=0)  # L2 penalty through the optimizer
    grad_clip: float | None = knob(1.0, min=0)  # max global gradient norm; None or 0 = no clipping
    stateful: bool = False  # carry the detached state across consecutive batches (TBPTT)
    device: str = "auto"  # auto = CUDA when present, else CPU; or "cpu", "cuda:0", ...
    precision: str = knob("bf16", choices=PRECISIONS)  # autocast on CUDA only; the CPU runs fp32
    seed: int = knob(0, min=0)  # seeds torch, numpy and random: data splits, init, batch order
    repeats: int = knob(1, min=1, max=20)  # seeds each configuration trains with (seed, seed+1,
    # ...): the extra runs measure its variance (rnn_core.experiments.protocol, "Seeds")
    checkpoint_every: int = knob(1, min=0)  # epochs between checkpoints; 0 = at the end only
    select_epoch: str = knob("last", choices=("last", "best_val"))  # which epoch's weights are
    # scored on the test split: the last, or the best on the experiment's validation metric
    torch_threads: int = knob(1, min=0)  # CPU threads while this configuration trains (0 =
    # leave torch's setting): on two shared cores, two threads per process ran 4x slower


@dataclass
class TrainResult:
    history: list[dict[str, float]]  # one dict per finished epoch (train_loss, lr, val_*, ...)
    metrics: dict[str, float]  # the last epoch's dict
    epochs: int  # finished epochs, including those before a resume
    checkpoint: str | None = None  # path of last.pt when a checkpoint_dir was given
    resumed_from: int = 0  # epochs already finished in the checkpoint this run resumed from


class Callback:
    """Hooks the loop calls; subclass and override what you need, or pass any object that has
    some of these methods (missing ones are skipped)."""

    def on_batch_end(self, step: int, loss: float) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, path: str, epoch: int) -> None: ...


class PrintProgress(Callback):
    """Prints the loss every `every` steps and each epoch's metrics."""

    def __init__(self, every: int = 100, print_fn: Callable[[str], None] = print):
        self.every, self.print = every, print_fn

    def on_batch_end(self, step, loss):
        if self.every and step % self.every == 0:
            self.print(f"step {step}: loss {loss:.4f}")

    def on_epoch_end(self, epoch, metrics):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.print(f"epoch {epoch}: {shown}")


def as_callbacks(callbacks: Sequence[Any] | Any | None) -> list[Any]:
    """None, one callback object or a sequence of them -> a list."""
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _notify(callbacks: Sequence[Any], hook: str, *args) -> None:
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is not None:
            method(*args)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision (always on the CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected bf16, fp16 or fp32")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}: expected adam or sgd")


def detach_state(state):
    """Cut the graph behind a carried state (tensor or tuple of tensors)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _state_batch_size(state) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[-2]  # ... x B x hidden


def _iterate(source: Callable[..., Iterable[Batch]] | Iterable[Batch], *args) -> Iterable[Batch]:
    return source(*args) if callable(source) else source


def train(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    config: TrainConfig,
    *,
    eval_batches: Callable[[], Iterable[Batch]] | Iterable[Batch] | None = None,
    callbacks: Sequence[Any] | Any | None = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs (see the module docstring).

    `batches` may also be a re-iterable collection (the same batches every epoch);
    `eval_batches` a callable returning an iterable, or a re-iterable collection.
    `callbacks`: one callback object, a sequence of them, or None.
    `checkpoint_meta`: JSON-able facts stored in every checkpoint under "meta" (the runner puts
    the experiment's whole config tree there, so a checkpoint says what produced it).
    """
    # -- setup: callbacks, seeds, device, optimizer, precision ------------------------------
    callbacks = as_callbacks(callbacks)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    optimizer = make_optimizer(model, config)
    amp_dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0
    ckpt_path = Path(checkpoint_dir) / LAST if checkpoint_dir is not None else None

    # -- resume: weights, optimizer, scaler, history and RNG from the last finished epoch --------
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt["config"] != config_dict(model):
            raise ValueError(
                f"{ckpt_path}: checkpoint model config {ckpt['config']} differs from the model's "
                f"{config_dict(model)}; use another checkpoint_dir"
            )
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scaler.load_state_dict(ckpt["scaler_state"])
        history, start_epoch, step = list(ckpt["history"]), ckpt["epoch"], ckpt["step"]
        set_rng_state(ckpt["rng"])

    for epoch in range(start_epoch, config.epochs):
        # -- learning rate of this epoch (a function of the epoch, so resuming needs no state) --
        lr = config.lr * config.lr_decay**epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started = time.perf_counter()
        state, loss_sum, seen = None, 0.0, 0

        for batch in _iterate(batches, epoch):
            batch = batch.to(device)
            if state is not None and _state_batch_size(state) != batch.x.shape[1]:
                state = None  # a batch of another size starts fresh streams
            # -- forward and loss (autocast on CUDA only) --------------------------------------
            amp = (
                torch.autocast(device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with amp:
                output, new_state = model(batch.x, lengths=batch.lengths, state=state)
                loss = model.loss(output, batch.y, lengths=batch.lengths)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch}, step {step}")
            # -- backward, clip, step --------------------------------------------------------
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            # -- carry the state to the next chunk of the same streams (truncated BPTT) ----------
            state = detach_state(new_state) if config.stateful else None
            # -- log ----------------------------------------------------------------------------
            step += 1
            loss_sum += loss_value * batch.x.shape[1]
            seen += batch.x.shape[1]
            _notify(callbacks, "on_batch_end", step, loss_value)

        if seen == 0:
            raise ValueError(f"batches({epoch}) yielded no batch")
        # -- evaluate on held-out batches ------------------------------------------------------
        metrics = {"epoch": float(epoch), "train_loss": loss_sum / seen, "lr": lr}
        metrics["seconds"] = time.perf_counter() - started
        if eval_batches is not None:
            scores = evaluate(model, _iterate(eval_batches), stateful=config.stateful)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
        history.append(metrics)
        _notify(callbacks, "on_epoch_end", epoch, metrics)

        # -- checkpoint (after the epoch's RNG draws, so a resume continues the same streams) --
        finished = epoch + 1
        periodic = config.checkpoint_every and finished % config.checkpoint_every == 0
        if ckpt_path is not None and (periodic or finished == config.epochs):
            payload = {
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scaler_state": scaler.state_dict(),
                "config": config_dict(model),
                "train_config": dataclasses.asdict(config),
                "epoch": finished,
                "step": step,
                "history": history,
                "rng": rng_state(),
                "meta": checkpoint_meta or {},
            }
            save_checkpoint(ckpt_path, payload)
            _notify(callbacks, "on_checkpoint", str(ckpt_path), epoch)

    return TrainResult(
        history=history,
        metrics=history[-1] if history else {},
        epochs=len(history),
        checkpoint=str(ckpt_path) if ckpt_path is not None else None,
        resumed_from=start_epoch,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    metrics: Sequence[Any] | None = None,
    *,
    stateful: bool = False,
) -> dict[str, float]:
    """Mean loss plus the accumulators' metrics (default: `model.make_metrics()`), in fp32.

    `loss` is the mean of the batches' losses weighted by batch size; the accumulators' own
    numbers (accuracy, mse, nats, ...) are exact over all targets. With `stateful`, the state is
    carried across consecutive batches as in training.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    accumulators = list(metrics) if metrics is not None else [model.make_metrics()]
    state, loss_sum, seen = None, 0.0, 0
    try:
        for batch in batches:
            batch = batch.to(device)
            if state is not None and _state_batch_size(state) != batch.x.shape[1]:
                state = None
            output, new_state = model(batch.x, lengths=batch.lengths, state=state)
            state = new_state if stateful else None
            loss_sum += model.loss(output, batch.y, lengths=batch.lengths).item() * batch.x.shape[1]
            seen += batch.x.shape[1]
            for acc in accumulators:
                acc.update(output, batch)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate got no batches")
    out = {"loss": loss_sum / seen}
    for acc in accumulators:
        out.update(acc.compute())
    return out
