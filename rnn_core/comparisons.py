"""Does the hand-written backend compute what torch.nn computes, once trained? One row per metric
of every backend pair (rnn_core.experiments.pairs), with the tolerance it is judged by.

    rows = backend_agreement([
        ("ag_news", "lstm8", {"test_accuracy": 0.851, ...}),
        ("ag_news", "lstm8-scratch", {"test_accuracy": 0.848, ...}),
    ])
    # [{"experiment": "ag_news", "configuration": "lstm8", "twin": "lstm8-scratch",
    #   "metric": "test_accuracy", "fused": 0.851, "scratch": 0.848, "difference": -0.003,
    #   "tolerance": 0.01, "measure": "absolute", "agree": True, "why": "..."}]

Input rows: (experiment, configuration name, metrics) or (configuration name, metrics); objects
with `.task`, `.name`, `.metrics` (RunResult, a tracker's summary row) are accepted too. A pair
is a configuration and its twin "<name>-fused" / "<name>-scratch" in the same experiment;
a name without its partner is skipped. Pure: no torch, no tracker.

Why a tolerance at all: the two backends agree to 1e-6 (float64) / 1e-4 (float32) on one
forward and backward (tests/test_parity.py), but a float32 sum done in another order differs in
its last bits, and thousands of optimiser steps amplify that into a different trajectory, as a
change of seed would, only smaller. The tolerances below are set from the differences measured
on the smoke and default profiles (README, "Results of the default profile") with a margin, and
each is far below the gap between the models the experiment compares: a wrong recurrence (a gate
off, a mask leaking) misses them by an order of magnitude. Measured (default profile, 2026-12-01):
metro classification gru-10st-inout +0.014 at L=73 (one window of 70), -0.006 at L=20;
forecasting gru-inout-ctx 7e-9 relative; trump-rnn +9e-6 bits; AG News lstm8 +1.3e-4 accuracy;
gradient study lstm +1e-8 nats, 3e-6 in log10 of the d=50 ratio; smoke pairs 1e-8 or exactly 0.
How fast a pair drifts depends on the training, not on the backend: the metro GRU's losses differ
by 4e-3 after 200 of its 2,000 steps, the forecasting GRU's not in 6 digits after 1,500; a tanh
RNN classifying metro windows is chaotic (identical for ~20 steps, then apart like two seeds), so
its pair (course-10st-inout against torch.nn) is not one a tolerance can judge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rnn_core.experiments.pairs import split_twin


@dataclass(frozen=True)
class Tolerance:
    value: float
    measure: str  # absolute | relative (of the fused value) | log10 (orders of magnitude)
    why: str

    def difference(self, fused: float, scratch: float) -> float:
        if self.measure == "relative":
            return (scratch - fused) / abs(fused) if fused else math.inf
        if self.measure == "log10":
            if fused <= 0 or scratch <= 0:
                return math.inf
            return math.log10(scratch) - math.log10(fused)
        return scratch - fused


# The metrics compared per pair and their tolerances (see the module docstring for how they were
# set; the measured differences are in the README next to the default profile's results).
TOLERANCES: dict[str, Tolerance] = {
    # classification: 0-1 error / accuracy, absolute
    "test_error_L73": Tolerance(0.03, "absolute", "70 test windows of whole days per 10 "
                                "stations: one window is 0.014; two may flip between runs"),
    "test_error_L20": Tolerance(0.02, "absolute", "3,780 test windows: a drifted model moves "
                                "the error by well under 2 points; other cells differ by 5+"),
    "test_accuracy": Tolerance(0.01, "absolute", "7,600 test rows: 0.01 = 76 rows, several "
                               "times the seed-to-seed spread; the models compared differ by 3+"),
    # forecasting: MSE in normalised units, relative
    "test_mse_h1": Tolerance(0.05, "relative", "persistence and the context model differ by "
                             "3x; float drift moves the t+1 MSE by a few percent"),
    "test_mse": Tolerance(0.05, "relative", "mean over horizons, same reasoning as h1"),
    # characters: bits per character, absolute
    "test_bits_per_char": Tolerance(0.02, "absolute", "LSTM and GRU differ by 0.03-0.4 bits; "
                                    "drift after 3 epochs is below 0.01"),
    "test_nats_per_char": Tolerance(0.02, "absolute", "the gradient study's brief training: "
                                    "0.02 nats, a tenth of the RNN-LSTM gap"),
    # gradient study: ratios spanning 15 orders of magnitude, compared in log10
    "init_grad_norm_ratio_d50": Tolerance(1e-6, "log10", "same initial weights, measured in "
                                          "float64 by the same stepped formula: equal"),
    "grad_norm_ratio_d50": Tolerance(0.5, "log10", "after training the ratio moves with the "
                                     "trajectory; the cells differ by 5-10 orders"),
}


def _unpack(row: Any) -> tuple[str, str, Mapping[str, float]]:
    if hasattr(row, "metrics") and hasattr(row, "name"):
        return str(getattr(row, "task", "")), row.name, row.metrics
    if len(row) == 3:
        return str(row[0]), str(row[1]), row[2]
    name, metrics = row
    return "", str(name), metrics


def backend_agreement(rows: Iterable[Any],
                      tolerances: Mapping[str, Tolerance] | None = None) -> list[dict[str, Any]]:
    """One dict per (pair, compared metric present in both): experiment, configuration, twin,
    metric, fused, scratch, difference (scratch - fused, in the tolerance's measure), tolerance,
    measure, agree, why. Pairs in input order; metrics in TOLERANCES' order."""
    tolerances = TOLERANCES if tolerances is None else tolerances
    table = {}
    for row in rows:
        experiment, name, metrics = _unpack(row)
        table[(experiment, name)] = {k: float(v) for k, v in metrics.items()}
    out = []
    for (experiment, twin), twin_metrics in table.items():
        base, backend = split_twin(twin)
        if backend is None or (experiment, base) not in table:
            continue
        base_metrics = table[(experiment, base)]
        by_backend = {backend: twin_metrics,
                      "scratch" if backend == "fused" else "fused": base_metrics}
        for metric, tol in tolerances.items():
            if metric not in base_metrics or metric not in twin_metrics:
                continue
            fused, scratch = by_backend["fused"][metric], by_backend["scratch"][metric]
            diff = tol.difference(fused, scratch)
            out.append({"experiment": experiment, "configuration": base, "twin": twin,
                        "metric": metric, "fused": fused, "scratch": scratch,
                        "difference": diff, "tolerance": tol.value, "measure": tol.measure,
                        "agree": bool(abs(diff) <= tol.value), "why": tol.why})
    return out


def agreement_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (for a log line, a summary artifact or the README)."""
    header = ("| experiment | configuration | metric | fused | scratch | difference | tolerance "
              "| agree |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = {"relative": " (rel.)", "log10": " (log10)"}.get(r["measure"], "")
        lines.append(f"| {r['experiment']} | `{r['configuration']}` | {r['metric']} | "
                     f"{r['fused']:.4g} | {r['scratch']:.4g} | {r['difference']:+.3g}{unit} | "
                     f"{r['tolerance']:g}{unit} | {'yes' if r['agree'] else 'NO'} |")
    return "\n".join(lines)
