"""The five experiments, one module each, all with the same small contract.

Each module `rnn_core.experiments.<name>` exposes:

    Config                      a dataclass; its defaults are the `default` profile's values
    HEADLINE                    rnn_core.results.Headline: the test metric a run is judged by
    plan(config) -> list[str]   the configuration names this config trains, in order
    run_one(config, name, data_dir, work_dir, callbacks=None) -> RunResult
                                trains and evaluates one configuration; checkpoints under
                                work_dir/<name>/ and resumes from there when a checkpoint exists

`data_dir` is the project's data folder (processed Parquet under `data_dir/processed`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = (
    "metro_classification",
    "metro_forecasting",
    "char_generation",
    "ag_news",
    "vanishing_gradients",
)


def get(name: str) -> ModuleType:
    """The experiment module for `name`, with a clear error for an unknown name."""
    if name not in NAMES:
        raise KeyError(f"unknown experiment {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(f"rnn_core.experiments.{name}")
