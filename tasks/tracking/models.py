"""Models in the store: the pyfunc logged into a child run, its signature, its registered name.

The model is logged as "model from code" (`pyfunc_model.py`, nothing pickled) and carries all it
needs to load where this repository does not exist:
- `code/rnn_core/`: a copy of the library's Python files (`code_paths`), so loading needs only
  torch, numpy and mlflow;
- `artifacts/checkpoint`: the runner's weights-only model.pt (config + state_dict);
- `artifacts/serving/`: the experiment's serving spec (`rnn_core.serving`: vocabulary, maxima,
  station count, covariate recipe), so the model takes raw text, flows in passengers, prompts;
- a signature made from the serving spec's columns and params, and an input example in the raw
  form (predicted once before logging, so a model that cannot serve its own example is never
  registered).
It is registered as `rnnflow-<task>-<config>`; every log registers a new version, which then
challenges the champion (`champion.py`). The sha256 of every file is recorded at logging time
(`integrity.py`) and checked before inference loads it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec

import rnn_core
from rnn_core.models import build_model
from rnn_core.results import RunResult
from rnn_core.serving import Server, save_spec, server_for
from tasks.tracking.names import CHAMPION_ALIAS, MODEL_PREFIX

MODEL_ARTIFACT = "model"  # the logged model's name within its run
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_LIBRARY = Path(rnn_core.__file__).resolve().parent  # shipped as the model's code
# Explicit requirements: inferring them costs ~10 s per logged model (../shared/STACK.md).
_PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "mlflow==3.17.2"]
# array<number>: MLflow's Array(double) refuses a list of ints ("cannot safely convert int64"),
# and passenger counts arrive as JSON ints; the server checks those lists itself.
_TYPES = {"string": DataType.string, "double": DataType.double, "long": DataType.long,
          "array<double>": Array(DataType.double), "array<number>": AnyType()}

# Per-model "Downloading artifacts" bars flood a run's log (one per logged or loaded model).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def server(result: RunResult) -> Server:
    """The result's model (from its checkpoint) behind its serving spec."""
    import torch

    payload = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    model = build_model(payload["config"])
    model.load_state_dict(payload["model_state"])
    return server_for(model, result.serving)


def _schema(columns) -> Schema:
    return Schema([ColSpec(_TYPES[c.type], c.name, required=c.required) for c in columns])


def signature(result: RunResult, served: Server | None = None) -> ModelSignature:
    """The serving spec's raw columns and params; without a spec, batch-first tensors with free
    batch and length (any sequence length is accepted)."""
    served = served or server(result)
    if served.kind != "tensor":
        params = ParamSchema([ParamSpec(p.name, _TYPES[p.type], p.default)
                              for p in served.params]) if served.params else None
        return ModelSignature(inputs=_schema(served.inputs), outputs=_schema(served.outputs),
                              params=params)
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


def input_example(served: Server):
    """The raw example as MLflow stores it (a DataFrame of columns, or an array)."""
    example = served.example()
    if isinstance(example, dict):
        import pandas as pd

        return pd.DataFrame(example)
    return example


def library_copy(folder: Path) -> Path:
    """`rnn_core`'s Python files only (no __pycache__, no editor files) under folder/rnn_core."""
    target = folder / "rnn_core"
    shutil.copytree(_LIBRARY, target, ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir())
        or n == "__pycache__"])
    return target


# What MLflow prints to stderr for every model it registers (two lines each; the champion step
# logs the version anyway), and its INFO line per input example: dropped. Anything else printed
# passes through.
_CHATTER = re.compile(r"^(Successfully registered model |Created version '|Registered model "
                      r".* already exists)")


@contextlib.contextmanager
def quiet_registration():
    """stderr without MLflow's per-model registration lines (they are `print`s, not logs)."""
    buffer = io.StringIO()
    pyfunc_log = logging.getLogger("mlflow.pyfunc")  # "Validating input example ..." per model
    level = pyfunc_log.level
    pyfunc_log.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        pyfunc_log.setLevel(level)
        kept = [line for line in buffer.getvalue().splitlines(keepends=True)
                if not _CHATTER.match(line)]
        if kept:
            sys.stderr.write("".join(kept))


def log_model(run_id: str, result: RunResult) -> tuple[str, str]:
    """Log the pyfunc into the child run and register it; returns (version, model URI).

    `log_model` needs an active run, the one fluent call of the package: the child run, created
    through the client, is made active by id in this thread only (MLflow's active run is
    thread-local, and Prefect may run tasks in worker threads).
    """
    served = server(result)
    example = input_example(served)
    served.predict(example)  # a model that cannot serve its own example is not registered
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = save_spec(result.serving, Path(tmp) / "serving") if result.serving else None
        artifacts = {"checkpoint": str(result.checkpoint)}
        if spec_dir is not None:
            artifacts["serving"] = str(spec_dir)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings(), quiet_registration():
            # Deliberate: predict's inputs are described by the explicit signature, not by
            # type hints MLflow would infer them from.
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(_PYFUNC_CODE),
                artifacts=artifacts,
                code_paths=[str(library_copy(Path(tmp)))],
                signature=signature(result, served),
                input_example=example,
                pip_requirements=_PIP_REQUIREMENTS,
                registered_model_name=registered_name(result),
            )
    return str(info.registered_model_version), info.model_uri
