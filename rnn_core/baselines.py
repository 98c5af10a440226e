"""Baselines every model must beat, scored on exactly the targets the model is scored on.

- classification: the majority class of the training labels;
- forecasting: persistence (x_t for every t + h) and the time-of-day profile (mean of the training
  days at that quarter-hour and station); both return predictions shaped like the `Forecaster`'s
  output (L x B x H x D), so `metrics.ForecastMetrics` scores them on the same windows and mask;
- characters: unigram and bigram models with add-k smoothing, fitted on training ids, scored in
  nats per character on test ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# --- classification ----------------------------------------------------------------------------


def majority_class(train_y: torch.Tensor) -> int:
    """The most frequent label (the smallest id on ties)."""
    if train_y.numel() == 0:
        raise ValueError("majority_class needs at least one training label")
    return int(torch.bincount(train_y.long().flatten()).argmax().item())


def majority_error(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """0-1 error on `test_y` of always predicting the training majority class."""
    return (test_y != majority_class(train_y)).float().mean().item()


# --- forecasting -------------------------------------------------------------------------------


def persistence_forecast(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """x: L x B x D (flows only) -> L x B x H x D, every horizon predicts the current value."""
    return x.unsqueeze(2).expand(-1, -1, horizon, -1).clone()


def time_of_day_profile(train: torch.Tensor) -> torch.Tensor:
    """train: days x slots x stations x D -> slots x stations x D, the mean over training days."""
    if train.dim() != 4:
        raise ValueError(f"expected days x slots x stations x D, got shape {tuple(train.shape)}")
    return train.float().mean(0)


def profile_forecast(
    profile: torch.Tensor, slots: torch.Tensor, stations: torch.Tensor, horizon: int
) -> torch.Tensor:
    """Predict x[t + h + 1] as the profile at that slot and station.

    profile   slots_per_day x stations x D (from `time_of_day_profile`)
    slots     L x B int64, the time-of-day slot of each input step x[t]
    stations  B int64, the station of each sequence
    returns   L x B x H x D; slots past the end of the day are clamped to the last slot (those
              targets fall outside the window and are masked by the metrics).
    """
    h = torch.arange(1, horizon + 1, device=slots.device).view(1, 1, horizon)
    target_slots = (slots.unsqueeze(-1) + h).clamp(max=profile.shape[0] - 1)  # L x B x H
    station_idx = stations.view(1, -1, 1).expand_as(target_slots)
    return profile.to(slots.device)[target_slots, station_idx]  # L x B x H x D


def evaluate_predictions(
    predict: Callable[[object], torch.Tensor], batches: Iterable, metric
) -> dict[str, float]:
    """Score any predictor (batch -> output) with a metrics accumulator, batch by batch."""
    for batch in batches:
        metric.update(predict(batch), batch)
    return metric.compute()


# --- characters --------------------------------------------------------------------------------


def fit_unigram(ids: torch.Tensor, vocab_size: int, k: float = 1.0) -> torch.Tensor:
    """log p(c) with add-k smoothing (V floats, float64)."""
    counts = torch.bincount(ids.long().flatten(), minlength=vocab_size).double() + k
    return (counts / counts.sum()).log()


def fit_bigram(ids: torch.Tensor, vocab_size: int, k: float = 1.0) -> torch.Tensor:
    """log p(next | prev) with add-k smoothing: V x V (rows = prev), float64."""
    ids = ids.long().flatten()
    pairs = ids[:-1] * vocab_size + ids[1:]
    counts = torch.bincount(pairs, minlength=vocab_size**2).double().view(vocab_size, vocab_size)
    counts += k
    return (counts / counts.sum(1, keepdim=True)).log()


def unigram_nats(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean -log p(c) over ids[1:] (the same targets a language model predicts from ids[:-1])."""
    ids = ids.long().flatten()
    return -log_probs[ids[1:]].mean().item()


def bigram_nats(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean -log p(ids[t+1] | ids[t]) over the text's transitions."""
    ids = ids.long().flatten()
    return -log_probs[ids[:-1], ids[1:]].mean().item()
