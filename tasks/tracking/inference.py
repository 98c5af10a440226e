"""Inference from the registry: always the champion, `models:/<name>@champion`.

    model = load_champion("rnnflow-ag-news-lstm")          # or load_champion("ag_news", "lstm")
    logits = model.predict(np.array([[5, 6, 7, 0]], dtype=np.int64))   # B x C

Inputs and outputs are those of the pyfunc (see `tasks/tracking/pyfunc_model.py`): batch-first
token ids (int64, 0 = trailing padding) or float features.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from tasks.tracking.models import champion_uri, model_name
from tasks.tracking.names import CHAMPION_ALIAS
from tasks.tracking.store import configure

__all__ = ["champion_uri", "load_champion", "model_name", "predict"]


def load_champion(task_or_name: str, config: str | None = None,
                  tracking_uri: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    """Load the champion version of a registered model (clear error if it has none)."""
    client = configure(tracking_uri)
    name = model_name(task_or_name, config)
    try:
        client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except mlflow.exceptions.MlflowException as err:
        known = sorted(m.name for m in client.search_registered_models())
        raise LookupError(
            f"no champion for model {name!r} in {client.tracking_uri} ({err.message}); "
            f"registered models: {', '.join(known) or 'none'}"
        ) from None
    return mlflow.pyfunc.load_model(champion_uri(name))


def predict(task_or_name: str, inputs: np.ndarray, config: str | None = None,
            tracking_uri: str | None = None) -> np.ndarray:
    """Load the champion and predict once on a batch-first array."""
    return np.asarray(load_champion(task_or_name, config, tracking_uri).predict(inputs))
