"""Config fields that say their own allowed range, and one check that walks a config tree.

    @dataclass
    class Config:
        epochs: int = knob(3, min=1)                      # whole numbers >= 1
        val_fraction: float = knob(0.05, above=0, below=1)
        cells: list[str] = knob(["gru"], choices=("rnn", "lstm", "gru"))   # each item checked
        train: TrainConfig = knob(TrainConfig)            # a nested block, checked recursively

    check(Config(epochs=0))   # ConfigError: epochs = 0: must be >= 1

Experiments and the training loop declare their knobs this way so that a profile is validated
whole when it is loaded (before any data work), with one line naming the key, the value and
what is allowed. Checks that relate two fields (min_length <= max_length) stay in the
experiment's `plan`, which the profile loader also calls.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """One bad value: `key` is dotted from the experiment's table (e.g. "train.epochs")."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


def knob(default: Any, *, min: float | None = None, max: float | None = None,
         above: float | None = None, below: float | None = None,
         choices: Sequence[Any] | None = None, nonempty: bool = False) -> Any:
    """A dataclass field with its allowed range in the metadata.

    `default` may be a value, a list/dict (copied per instance), or a nested block: a dataclass
    type (its defaults) or a dataclass instance (these defaults), copied per config. `None` always passes the range checks (it means
    "not set" wherever a field allows it).
    """
    meta = {k: v for k, v in {"min": min, "max": max, "above": above, "below": below,
                              "choices": tuple(choices) if choices is not None else None,
                              "nonempty": nonempty or None}.items() if v is not None}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        # Mutable defaults (and nested blocks given as an instance with their own defaults,
        # e.g. TrainConfig(epochs=3)): a fresh copy per config.
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _describe(meta: dict) -> str:
    parts = []
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "above" in meta:
        parts.append(f"> {meta['above']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    if "below" in meta:
        parts.append(f"< {meta['below']}")
    return "must be " + " and ".join(parts)


def _check_value(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, value, f"expected one of {', '.join(map(repr, meta['choices']))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ok = (("min" not in meta or value >= meta["min"]) and ("max" not in meta or value <= meta["max"])
          and ("above" not in meta or value > meta["above"])
          and ("below" not in meta or value < meta["below"]))
    if not ok:
        raise ConfigError(key, value, _describe(meta))


def check(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first field outside its declared range (nested blocks too)."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, f"{key}.")
            continue
        meta = dict(f.metadata)
        if not meta:
            continue
        if meta.get("nonempty") and isinstance(value, (list, tuple, dict)) and not value:
            raise ConfigError(key, value, "must not be empty")
        if isinstance(value, (list, tuple)):
            for item in value:
                _check_value(key, item, meta)
        else:
            _check_value(key, value, meta)


def as_dict(config: Any) -> dict[str, Any]:
    """The config tree as plain JSON-able data (what MLflow and checkpoints store)."""
    return dataclasses.asdict(config)
