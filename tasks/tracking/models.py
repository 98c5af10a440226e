"""Models in the store: the pyfunc logged into a child run, its signature, its registered name.

The model is logged as "model from code" (`pyfunc_model.py` beside the checkpoint, nothing
pickled) and registered as `rnnflow-<task>-<config>`; every log registers a new version, which
then challenges the champion (`champion.py`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from rnn_core.results import RunResult
from tasks.tracking.names import CHAMPION_ALIAS, MODEL_PREFIX

MODEL_ARTIFACT = "model"  # the logged model's name within its run
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# Explicit requirements: inferring them costs ~10 s per logged model (../shared/STACK.md).
_PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "mlflow==3.17.2"]


def model_name(task_or_name: str, config: str | None = None) -> str:
    """`rnnflow-<task>-<config>` from a task and config, or a registered name as given.

    Underscores become dashes: registered names show up in URIs, where dashes read better.
    """
    if config is None:
        return task_or_name
    return f"{MODEL_PREFIX}{task_or_name}-{config}".replace("_", "-")


def registered_name(result: RunResult) -> str:
    return model_name(result.task, result.name)


def champion_uri(name: str) -> str:
    """What inference loads: the version holding the champion alias, never simply the latest."""
    return f"models:/{name}@{CHAMPION_ALIAS}"


def signature(result: RunResult) -> ModelSignature:
    """Batch-first tensors with free batch and length, so any sequence length is accepted."""
    cfg = result.model_config or {}
    f32, i64 = np.dtype("float32"), np.dtype("int64")
    if cfg.get("kind") == "forecaster":
        flows = int(cfg["num_flows"])
        inputs = TensorSpec(f32, (-1, -1, flows + int(cfg.get("num_covariates", 0))))
        outputs = TensorSpec(f32, (-1, -1, int(cfg["horizon"]), flows))
    elif cfg.get("kind") == "char_lm":
        inputs = TensorSpec(i64, (-1, -1))
        outputs = TensorSpec(f32, (-1, -1, int(cfg["vocab_size"])))
    else:
        if cfg.get("vocab_size"):
            inputs = TensorSpec(i64, (-1, -1))
        else:
            inputs = TensorSpec(f32, (-1, -1, int(cfg.get("input_size", 1))))
        outputs = TensorSpec(f32, (-1, int(cfg["num_classes"])))
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema([outputs]))


def log_model(run_id: str, result: RunResult) -> str:
    """Log the pyfunc into the child run and register it; returns the new version number.

    `log_model` needs an active run, the one fluent call of the package: the child run, created
    through the client, is made active by id in this thread only (MLflow's active run is
    thread-local, and Prefect may run tasks in worker threads).
    """
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # Deliberate choices MLflow warns about on every model: the signature is given
        # explicitly (so no input example is needed) and predict takes a plain array.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(_PYFUNC_CODE),
            artifacts={"checkpoint": str(result.checkpoint)},
            signature=signature(result),
            pip_requirements=_PIP_REQUIREMENTS,
            registered_model_name=registered_name(result),
        )
    return str(info.registered_model_version)
