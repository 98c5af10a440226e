"""Inference from the registry: always the champion, `models:/<name>@champion`, checked first.

    served = serve_champion("rnnflow-ag-news-lstm8")        # or serve_champion("ag_news", "lstm8")
    served.info.line()        # which version, run, profile, data variant, headline, scope
    served.model.predict(pd.DataFrame({"title": ["Oil prices fall as stocks rally"]}))
    # -> DataFrame: label, label_id, probability, World, Sports, Business, Sci/Tech

Before a version is loaded, its files are downloaded and checked against the sha256 digests
recorded when it was logged (`integrity.verified_download`); a mismatch raises `IntegrityError`
and nothing is loaded. Inputs and outputs are the raw forms of `rnn_core.serving` for the
model's kind (texts, flows in passengers, prompts); models without a serving spec take
batch-first arrays.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from tasks.tracking.champion import ChampionInfo, champion_info
from tasks.tracking.integrity import IntegrityError, verified_download
from tasks.tracking.models import champion_uri, model_name
from tasks.tracking.names import SERVING_KIND_TAG
from tasks.tracking.store import configure

__all__ = ["IntegrityError", "PredictError", "Served", "champion_uri", "load_champion",
           "model_name", "predict", "predict_raw", "raw_inputs", "serve_champion"]


@dataclass
class Served:
    """A loaded champion and what it is: its version facts, serving kind, files checked."""

    model: mlflow.pyfunc.PyFuncModel
    info: ChampionInfo
    kind: str  # rnn_core.serving kind: text_classifier, station_classifier, ...
    files_checked: int  # files whose sha256 matched (0: verification skipped)


def _download_dir() -> Path:
    """A folder for verified downloads, kept until the process exits (the loaded model may
    import from its code/ folder later)."""
    folder = Path(tempfile.mkdtemp(prefix="rnnflow-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def serve_champion(task_or_name: str, config: str | None = None,
                   tracking_uri: str | None = None, verify: bool = True) -> Served:
    """Load the champion version of a registered model, its digests checked first.

    LookupError: no such model or no champion yet; IntegrityError: its files changed since it
    was logged (or it was logged without digests and `verify` is on).
    """
    client = configure(tracking_uri)
    name = model_name(task_or_name, config)
    info = None
    try:
        info = champion_info(client, name)
    except mlflow.exceptions.MlflowException:
        pass
    if info is None:
        known = sorted(m.name for m in client.search_registered_models())
        raise LookupError(
            f"no champion for model {name!r} in {client.tracking_uri}; registered models: "
            f"{', '.join(known) or 'none'} (train one with `rnnflow run`)")
    mv = client.get_model_version(name, info.version)
    kind = (mv.tags or {}).get(SERVING_KIND_TAG, "tensor")
    if not verify:
        return Served(mlflow.pyfunc.load_model(champion_uri(name)), info, kind, 0)
    local = verified_download(client, name, info.version, _download_dir())
    files = sum(1 for p in local.rglob("*") if p.is_file())
    return Served(mlflow.pyfunc.load_model(str(local)), info, kind, files)


def load_champion(task_or_name: str, config: str | None = None,
                  tracking_uri: str | None = None, verify: bool = True
                  ) -> mlflow.pyfunc.PyFuncModel:
    """The champion's pyfunc (see `serve_champion`)."""
    return serve_champion(task_or_name, config, tracking_uri, verify).model


def predict(task_or_name: str, inputs, config: str | None = None,
            tracking_uri: str | None = None, params: dict | None = None):
    """Load the champion and predict once: a DataFrame of raw columns (or a batch-first array
    for a model without a serving spec) in, the model's DataFrame (or array) out."""
    out = load_champion(task_or_name, config, tracking_uri).predict(inputs, params=params)
    return out if hasattr(out, "columns") else np.asarray(out)


# --- `rnnflow predict`: raw input from the command line, one-line errors -------------------------
class PredictError(RuntimeError):
    """Why a prediction could not be made, in one line (no champion, a changed model, a missing
    or malformed input file, input the model refuses)."""


def raw_inputs(kind: str, text: str | None = None, description: str | None = None,
               prompt: str | None = None, file: str | None = None, start: str | None = None):
    """The model's raw input from the command line's options: columns, or an array."""
    from rnn_core.serving.files import read_inputs

    if file is not None:
        return read_inputs(kind, file, start)
    if kind == "text_classifier" and text is not None:
        return {"title": [text], "description": [description or ""]}
    if kind == "char_lm" and prompt is not None:
        return {"prompt": [prompt]}
    wanted = {"text_classifier": "--text HEADLINE or --input texts.csv",
              "char_lm": "--prompt TEXT or --input prompts.csv",
              "station_classifier": "--input window.csv|.npy (flows in passengers) --start HH:MM",
              "flow_forecaster": "--input flows.csv|.npy (flows in passengers) --start "
                                 "YYYY-MM-DDTHH:MM"}.get(kind, "--input batch.npy")
    raise PredictError(f"this model ({kind}) takes {wanted}")


def predict_raw(task_or_name: str, config: str | None = None, tracking_uri: str | None = None,
                verify: bool = True, params: dict | None = None, **inputs):
    """Load the champion (checked) and predict on raw input -> (Served, output); every failure
    is a PredictError with one line saying what to fix."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from rnn_core.serving import ServingInputError
    from rnn_core.serving.files import InputFileError

    try:
        served = serve_champion(task_or_name, config, tracking_uri, verify)
        data = raw_inputs(served.kind, **inputs)
        if isinstance(data, dict):
            _check_columns(served, data)
            data = pd.DataFrame(data)
        params = {k: v for k, v in (params or {}).items() if v is not None} or None
        return served, served.model.predict(data, params=params)
    except (LookupError, IntegrityError, InputFileError, ServingInputError) as err:
        raise PredictError(str(err)) from None
    except MlflowException as err:  # the model refused the input (its own check or the schema)
        message = str(err.message).strip()
        # The schema check's message quotes the whole input first: keep what it says is wrong.
        message = message.rsplit("Error: ", 1)[-1].strip().splitlines()
        raise PredictError(message[0] if message else "the model refused the input") from None


_HINTS = {"start": "--start, the time of the first value (07:30, or 2019-01-21T07:30)",
          "title": "--text or a title column", "prompt": "--prompt or a prompt column"}


def _check_columns(served: Served, data: dict) -> None:
    """Required input columns the command line did not give, named with the option to use."""
    schema = served.model.metadata.get_input_schema()
    missing = [c.name for c in (schema.inputs if schema else [])
               if getattr(c, "required", False) and c.name not in data]
    if missing:
        raise PredictError("this model also needs " + "; ".join(
            _HINTS.get(name, f"a {name} column") for name in missing))
