"""What an experiment hands back: everything the tracker logs, nothing tracker-specific.

Experiments in `rnn_core.experiments` return one `RunResult` per configuration they train. The
MLflow package (`tasks/tracking/`) turns it into a child run; tests read it directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class Headline:
    """The one test metric a task is judged by (champion/challenger compares it)."""

    metric: str  # a key of RunResult.metrics, e.g. "test_accuracy"
    goal: Literal["max", "min"]  # whether larger or smaller is better

    def better(self, new: float, old: float) -> bool:
        """True when `new` strictly beats `old` (NaN never wins)."""
        if math.isnan(new):
            return False
        if math.isnan(old):
            return True
        return new > old if self.goal == "max" else new < old


@dataclass
class RunResult:
    """One trained configuration of one experiment, ready to be logged."""

    task: str  # experiment name, e.g. "metro_classification"
    name: str  # configuration label, unique within the task, e.g. "lstm-10st-in"
    params: dict[str, Any]  # whole configs (model, training, data), nested dicts allowed
    metrics: dict[str, float]  # final metrics with stable names (test_accuracy, test_mse_h1, ...)
    headline: Headline
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    figures: dict[str, Path] = field(default_factory=dict)  # artifact name -> PNG path
    texts: dict[str, str] = field(default_factory=dict)  # artifact name -> text (samples...)
    tags: dict[str, str] = field(default_factory=dict)  # model, data_variant, profile, ...
    dataset: dict[str, Any] = field(default_factory=dict)  # variant, rows, checksums
    # The trained model, rebuilt later from (model_config, state_dict) — never pickled.
    model_config: dict[str, Any] | None = None
    checkpoint: Path | None = None  # file holding {"model_state": ..., "config": ...}
    device: str = "cpu"
    seconds: float = 0.0
    diagnostic: bool = False  # a study's measurement, not a model score: never gates a champion
    # What a served model needs to take raw input (Experiment.serving; see rnn_core.serving):
    # JSON values and arrays; {} = the model takes tensors.
    serving: dict[str, Any] = field(default_factory=dict)
    # Per-example test outcomes whose mean is the headline (1-D float array; see
    # rnn_core.significance): what a challenger is compared with the champion on. None: not kept.
    per_example: Any = None
    # The configuration this run repeats with another seed (train.repeats): logged and
    # summarised, never registered. None: the configuration's own (first-seed) run.
    repeat_of: str | None = None

    @property
    def headline_value(self) -> float:
        return float(self.metrics[self.headline.metric])


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dicts -> {"model.hidden_size": "128", ...} as MLflow params want them."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat
