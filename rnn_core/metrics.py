"""Metrics for the three task shapes, and streaming accumulators that `training.evaluate` feeds.

Pure functions take tensors and return tensors or floats:

    zero_one_error(pred, y)            pred: B class ids or B x C logits; y: B
    confusion_matrix(pred, y, C)       C x C counts, rows = true class, columns = predicted
    mse_per_horizon(pred, y, mask)     pred, y: L x B x H x D; mask: L x B x H -> H
    cross_entropy_nats(logits, y)      logits: ... x V, y: ... ; mean nats per scored target

Accumulators (`ClassificationMetrics`, `ForecastMetrics`, `LanguageModelMetrics`) sum over batches
so that the result is exact for any batching: `update(output, batch)` then `compute() -> dict` of
floats (ready for a tracker). Baselines live in `rnn_core.baselines`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


# --- classification ----------------------------------------------------------------------------


def _as_pred(pred_or_logits: torch.Tensor) -> torch.Tensor:
    """Class ids from either ids (B) or logits (B x C)."""
    return pred_or_logits.argmax(-1) if pred_or_logits.dim() == 2 else pred_or_logits


def zero_one_error(pred_or_logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of wrong predictions (0-1 loss averaged over the examples)."""
    return 1.0 - accuracy(pred_or_logits, y)


def accuracy(pred_or_logits: torch.Tensor, y: torch.Tensor) -> float:
    pred = _as_pred(pred_or_logits)
    if pred.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (pred == y).float().mean().item()


def confusion_matrix(pred_or_logits: torch.Tensor, y: torch.Tensor, num_classes: int):
    """C x C int64 counts: entry [i, j] = examples of true class i predicted as j."""
    pred = _as_pred(pred_or_logits).long().flatten().cpu()
    flat = y.long().flatten().cpu() * num_classes + pred
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class (C floats) from a confusion matrix; NaN for a class never seen."""
    support = confusion.sum(1).double()
    return confusion.diagonal().double() / support  # 0/0 -> nan


# --- forecasting -------------------------------------------------------------------------------


def forecast_mask(length: int, horizon: int, lengths: torch.Tensor | None = None, batch: int = 1):
    """L x B x H bool: True where the target x[t + h + 1] lies inside the sequence.

    `lengths` (B) gives each sequence's own length; None means every sequence has `length`
    (then B = `batch`).
    """
    t = torch.arange(length).view(length, 1, 1)
    h = torch.arange(horizon).view(1, 1, horizon)
    if lengths is None:
        limit = torch.full((1, batch, 1), length)
    else:
        limit = lengths.detach().cpu().long().view(1, -1, 1)
    return (t + h + 1) < limit


def mse_per_horizon(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error for each horizon h (H floats) over the valid (t, b, d) targets."""
    sq, count = _masked_square_sums(pred, y, mask)
    return sq / count


def _masked_square_sums(pred, y, mask):
    """Per-horizon sums of squared errors (H, float64) and counts of valid elements (H)."""
    if pred.shape != y.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target {tuple(y.shape)}")
    m = mask.to(pred.device).unsqueeze(-1).expand_as(pred)  # L x B x H x D
    err = torch.where(m, (pred.double() - y.double()) ** 2, 0.0)
    return err.sum(dim=(0, 1, 3)).cpu(), m.sum(dim=(0, 1, 3)).cpu().double()


# --- language modelling ------------------------------------------------------------------------


def cross_entropy_nats(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean negative log-likelihood in nats over the targets where `mask` is True (default all)."""
    total, count = _nll_sum(logits, y, mask)
    return total / count


def bits_per_char(nats: float) -> float:
    return nats / LN2


def perplexity(nats: float) -> float:
    return math.exp(nats)


def _nll_sum(logits, y, mask):
    """Sum of -log p(y) over masked targets (float) and the number of those targets."""
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="none"
    )
    if mask is not None:
        keep = mask.reshape(-1).to(nll.device)
        return nll[keep].double().sum().item(), int(keep.sum().item())
    return nll.double().sum().item(), nll.numel()


def sequence_mask(length: int, lengths: torch.Tensor | None, batch: int) -> torch.Tensor:
    """L x B bool: True at the real (non-padded) steps."""
    if lengths is None:
        return torch.ones(length, batch, dtype=torch.bool)
    return torch.arange(length).view(-1, 1) < lengths.detach().cpu().view(1, -1)


# --- accumulators ------------------------------------------------------------------------------


class ClassificationMetrics:
    """Accuracy, 0-1 error, cross-entropy (nats) and per-class accuracy over many batches."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self._nll, self._n = 0.0, 0

    def update(self, logits: torch.Tensor, batch) -> None:  # logits: B x C
        self.confusion += confusion_matrix(logits.detach(), batch.y, self.num_classes)
        total, count = _nll_sum(logits.detach(), batch.y, None)
        self._nll += total
        self._n += count

    def compute(self) -> dict[str, float]:
        if self._n == 0:
            raise ValueError("no examples were evaluated")
        acc = self.confusion.diagonal().sum().item() / self._n
        out = {"accuracy": acc, "error": 1.0 - acc, "cross_entropy": self._nll / self._n}
        for c, a in enumerate(per_class_accuracy(self.confusion).tolist()):
            out[f"accuracy_class_{c}"] = a
        return out


class ForecastMetrics:
    """MSE overall (equal to the model's loss) and for each horizon 1..H, on masked targets."""

    def __init__(self, horizon: int):
        self.horizon = horizon
        self._sq = torch.zeros(horizon, dtype=torch.float64)
        self._n = torch.zeros(horizon, dtype=torch.float64)

    def update(self, pred: torch.Tensor, batch) -> None:  # pred, batch.y: L x B x H x D
        L, B = pred.shape[:2]
        mask = forecast_mask(L, self.horizon, batch.lengths, batch=B)
        sq, n = _masked_square_sums(pred.detach(), batch.y, mask)
        self._sq += sq
        self._n += n

    def compute(self) -> dict[str, float]:
        if self._n.sum() == 0:
            raise ValueError("no valid forecast targets were evaluated")
        out = {"mse": (self._sq.sum() / self._n.sum()).item()}
        for h, v in enumerate((self._sq / self._n).tolist(), start=1):
            out[f"mse_h{h}"] = v
        return out


class LanguageModelMetrics:
    """Cross-entropy in nats per character, bits per character and perplexity."""

    def __init__(self, ignore_index: int | None = None):
        self.ignore_index = ignore_index
        self._nll, self._n = 0.0, 0

    def update(self, logits: torch.Tensor, batch) -> None:  # logits: L x B x V, y: L x B
        L, B = batch.y.shape
        mask = sequence_mask(L, batch.lengths, B).to(batch.y.device)
        if self.ignore_index is not None:
            mask &= batch.y != self.ignore_index
        total, count = _nll_sum(logits.detach(), batch.y, mask)
        self._nll += total
        self._n += count

    def compute(self) -> dict[str, float]:
        if self._n == 0:
            raise ValueError("no characters were evaluated")
        nats = self._nll / self._n
        return {"nats": nats, "bits_per_char": bits_per_char(nats), "perplexity": perplexity(nats)}
