"""The experiments: one module each, all with the same shape (rnn_core.experiments.protocol).

A module of this package that defines `EXPERIMENT = SomeExperiment()` is an experiment; the
registry finds it by itself, so a new experiment is one new file here (plus its profile tables).
Code elsewhere (a test, a user's package) can add one with `register(instance)`.

    from rnn_core import experiments
    experiments.names()                      # in the order of BUILTIN_ORDER, then the others
    exp = experiments.get("ag_news")         # the Experiment instance
    exp.plan(exp.Config())                   # ["lstm8", "bilstm64x2"]
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rnn_core.experiments.protocol import Experiment

# The order the pipeline runs the built-in experiments in (cheap data first, the study last).
BUILTIN_ORDER = (
    "metro_classification",
    "metro_forecasting",
    "char_generation",
    "ag_news",
    "vanishing_gradients",
)
_REGISTRY: dict[str, Experiment] = {}
_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        exp = getattr(module, "EXPERIMENT", None)
        if exp is not None:
            register(exp)


def register(exp: Experiment) -> Experiment:
    """Add an experiment under `exp.name` (replacing one of the same name); returns it."""
    _REGISTRY[exp.name] = exp
    return exp


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    _discover()
    first = [n for n in BUILTIN_ORDER if n in _REGISTRY]
    return first + sorted(n for n in _REGISTRY if n not in first)


def get(name: str) -> Experiment:
    """The experiment registered as `name`, with a clear error for an unknown name."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; expected one of {', '.join(names())}")
    return _REGISTRY[name]
