"""Is a challenger better than the champion by more than noise? Paired tests on test examples.

Both models are scored on the same test split, example by example (`per_example` arrays whose
mean is the headline: 0/1 correctness or error, squared error per window, bits per character
segment). The tests compare them pairwise:

    paired_bootstrap(challenger, champion, goal)  -> Comparison (diff, ci_low, ci_high, p)
    mcnemar(challenger, champion, goal)           -> exact one-sided p for 0/1 outcomes

The default level is one-sided 95 %: `ci_low` is the 5 % quantile of 2,000 bootstrap means of
the per-example improvement (seed 0), and a challenger is significantly better when
`ci_low > 0`. `ci_high` is the 95 % quantile, so [ci_low, ci_high] is the two-sided 90 %
interval whose lower end is the one-sided bound.

Also here: accumulators for `training.evaluate` that keep per-example outcomes (the metrics in
`rnn_core.metrics` keep sums only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LEVEL = 0.95  # one-sided
RESAMPLES = 2000
SEED = 0
MAX_VALUES = 200_000  # per_example arrays longer than this are subsampled with a fixed stride


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the same examples; `diff` > 0 means the challenger is better."""

    diff: float  # mean per-example improvement, in headline units (e.g. accuracy points / 1)
    ci_low: float
    ci_high: float
    p_value: float  # bootstrap: share of resampled improvements <= 0 (one-sided)
    level: float
    resamples: int
    seed: int
    n: int
    mcnemar_p: float | None = None  # exact McNemar, for 0/1 outcomes only

    @property
    def significant(self) -> bool:
        return self.ci_low > 0.0

    @property
    def method(self) -> str:
        return (f"paired bootstrap over {self.n} test examples, one-sided {self.level:.0%}, "
                f"{self.resamples} resamples, seed {self.seed}")


def _improvement(a, b, goal: str) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired tests need arrays of one length, got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("paired tests need at least one example")
    if goal not in ("max", "min"):
        raise ValueError(f"goal must be 'max' or 'min', got {goal!r}")
    return a - b if goal == "max" else b - a


def paired_bootstrap(a, b, goal: str = "max", level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Bootstrap the mean improvement of `a` (challenger) over `b` (champion), paired by example.

    Examples are resampled with replacement (the same indices for both arrays); NaNs are an
    error. Returns the observed improvement, the (1 - level) and level quantiles of the
    resampled means and the one-sided p-value (resampled improvements <= 0, +1 smoothed).
    """
    d = _improvement(a, b, goal)
    if not np.isfinite(d).all():
        raise ValueError("per-example outcomes hold NaN or inf")
    n = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 4_000_000 // n)  # bounded memory: block x n indices at a time
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    low, high = np.quantile(means, [1.0 - level, level])
    p = (np.count_nonzero(means <= 0.0) + 1) / (resamples + 1)
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    return Comparison(float(d.mean()), float(low), float(high), float(p), level, resamples, seed,
                      n, mcnemar(a, b, goal) if binary else None)


def mcnemar(a, b, goal: str = "max") -> float:
    """Exact one-sided McNemar p-value that `a` beats `b` on 0/1 outcomes (1 = correct for
    goal "max", 1 = wrong for goal "min"): P(X >= wins) for X ~ Binomial(wins + losses, 1/2)."""
    d = _improvement(a, b, goal)
    if not np.isin(d, (-1.0, 0.0, 1.0)).all():
        raise ValueError("McNemar's test needs 0/1 outcomes")
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binom

    return float(binom.sf(wins - 1, wins + losses, 0.5))


def subsample(values, max_values: int = MAX_VALUES) -> np.ndarray:
    """At most `max_values` of `values`, every k-th from the first (k fixed by the length alone,
    so two runs on one test split keep the same examples)."""
    values = np.asarray(values).ravel()
    stride = max(1, math.ceil(values.size / max_values))
    return values[::stride]


# --- per-example accumulators for training.evaluate --------------------------------------------


class _PerExample:
    """Collects one value per example over batches; `compute()` adds nothing to the scores."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def compute(self) -> dict[str, float]:
        return {}

    def values(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.empty(0)


class PerExampleOutcome(_PerExample):
    """0/1 per example (B x C logits): 1 = correct, or with `errors` 1 = wrong."""

    def __init__(self, errors: bool = False):
        super().__init__()
        self.errors = errors

    def update(self, logits: torch.Tensor, batch) -> None:
        right = logits.detach().argmax(-1).cpu() == batch.y.cpu()
        self._parts.append((~right if self.errors else right).double().numpy())


class PerWindowSquaredError(_PerExample):
    """Forecasts (L x B x H x D): per window, the squared error of horizon `h` summed over its
    valid (step, flow) targets; `values()` divides by the mean count of targets per window, so
    the mean of the array is exactly the MSE at that horizon."""

    def __init__(self, horizon: int, h: int = 1):
        super().__init__()
        self.horizon, self.h = horizon, h
        self._counts: list[np.ndarray] = []

    def update(self, pred: torch.Tensor, batch) -> None:
        from rnn_core.metrics import forecast_mask

        L, B = pred.shape[:2]
        mask = forecast_mask(L, self.horizon, batch.lengths, batch=B)[:, :, self.h - 1]
        m = mask.to(pred.device).unsqueeze(-1).expand_as(pred[:, :, self.h - 1])  # L x B x D
        sq = (pred[:, :, self.h - 1].detach().double() - batch.y[:, :, self.h - 1].double()) ** 2
        self._parts.append(torch.where(m, sq, 0.0).sum(dim=(0, 2)).cpu().numpy())
        self._counts.append(m.sum(dim=(0, 2)).cpu().double().numpy())

    def values(self) -> np.ndarray:
        sums, counts = super().values(), np.concatenate(self._counts)
        return sums / counts.mean()


class PerSegmentBits(_PerExample):
    """Language models (L x B x V logits): per (chunk, stream) segment of at most `bptt`
    characters, the bits of its scored characters; `values()` divides by the mean count of
    characters per segment, so the mean of the array is exactly the bits per character."""

    def __init__(self, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self._counts: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, batch) -> None:
        from rnn_core.metrics import LN2, sequence_mask

        L, B = batch.y.shape
        mask = sequence_mask(L, batch.lengths, B).to(batch.y.device)
        if self.ignore_index is not None:
            mask &= batch.y != self.ignore_index
        nll = F.cross_entropy(logits.detach().reshape(-1, logits.shape[-1]).float(),
                              batch.y.reshape(-1), reduction="none").view(L, B).double()
        self._parts.append((torch.where(mask, nll, 0.0).sum(0) / LN2).cpu().numpy())
        self._counts.append(mask.sum(0).cpu().double().numpy())

    def values(self) -> np.ndarray:
        sums, counts = super().values(), np.concatenate(self._counts)
        keep = counts > 0
        return sums[keep] / counts[keep].mean()
