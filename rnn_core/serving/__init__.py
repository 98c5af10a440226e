"""Serving: raw input in, meaningful output out, with the preprocessing the training used.

A trained configuration ships its model config + weights (the runner's model.pt) and a
*serving spec*: the few facts its experiment's data phase knows and a served model needs to turn
raw input into model input and back (a vocabulary, the normalisation maxima, the station count,
the covariate recipe). `Experiment.serving(config, name, data)` returns the spec, the runner
puts it in `RunResult.serving`, the tracker saves it beside the weights (`save_spec`) and the
MLflow pyfunc rebuilds a `Server` from both (`load_server`). Plain torch and numpy: no MLflow,
no Prefect, so a served model needs nothing of this repository but the `rnn_core` it carries.

    server = load_server("model.pt", "serving/")             # a Server for the spec's kind
    server.predict({"title": ["Stocks rally as oil falls"]})  # columns in -> columns out
    server.inputs, server.outputs, server.params              # what the signature describes

Kinds (one module each):
    text_classifier     AG News: title (+ description) -> label name and class probabilities
    station_classifier  metro: a window of flows in passengers -> station and probabilities
    flow_forecaster     metro: recent flows in passengers per station (+ timestamp) ->
                        forecasts t+1..t+H in passengers
    char_lm             characters: a prompt + params (length, temperature, seed) -> text
    tensor              no spec: batch-first arrays in, the model's raw output out

Bad input raises `ServingInputError` (a ValueError) with one sentence saying what is wrong; the
pyfunc turns it into MLflow's INVALID_PARAMETER_VALUE, i.e. an HTTP 400 under `mlflow models
serve`, and `rnnflow predict` prints it as its one-line error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

SPEC_FILE = "serving.json"  # the spec's JSON part
ARRAYS_FILE = "serving.npz"  # its arrays (maxima, profiles), when it has any
SPEC_VERSION = 1


class ServingInputError(ValueError):
    """The caller's input cannot be served; the message says what is wrong, in one sentence."""


# --- what a server reads and writes (the pyfunc's signature is made from these) -----------------


@dataclass(frozen=True)
class Column:
    """One input or output column: `type` is string | double | long | array<double> |
    array<number> (a list of numbers, ints or floats: JSON passenger counts are ints)."""

    name: str
    type: str
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Param:
    """One inference parameter (MLflow `params=`), with its default."""

    name: str
    type: str  # string | double | long
    default: Any
    doc: str = ""


class Server:
    """Base: a model plus its spec. Subclasses set `kind` and implement `predict`."""

    kind: ClassVar[str]
    inputs: tuple[Column, ...] = ()  # subclasses set these (per instance when they depend
    outputs: tuple[Column, ...] = ()  # on the spec)
    params: tuple[Param, ...] = ()

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model, self.spec = model.eval(), spec

    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> dict[str, list]:
        raise NotImplementedError

    def example(self) -> dict[str, list]:
        """A small valid raw input (the logged model's input example)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `rnnflow predict`: what this model takes and returns."""
        ins = ", ".join(c.name + ("" if c.required else "?") for c in self.inputs)
        outs = ", ".join(c.name for c in self.outputs)
        return f"{self.kind}: ({ins}) -> ({outs})"

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The declared params with their defaults; an unknown name is an error."""
        given = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ServingInputError(f"unknown parameter(s) {unknown}; this model takes "
                                    f"{sorted(known) or 'none'}")
        return {name: given.get(name, p.default) for name, p in known.items()}


_KINDS: dict[str, type[Server]] = {}


def register(cls: type[Server]) -> type[Server]:
    """Class decorator: a Server for the spec kind `cls.kind`."""
    _KINDS[cls.kind] = cls
    return cls


# --- raw input as columns ------------------------------------------------------------------------


def as_columns(data: Any, names: list[str] | None = None) -> dict[str, list]:
    """A pandas DataFrame, a mapping of columns, one record (dict) or a list of records ->
    {column: list of values}, all columns the same length."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a DataFrame, without pandas
        columns = {str(c): list(data[c]) for c in data.columns}
    elif isinstance(data, Mapping):
        columns = {str(k): (list(v) if _is_sequence(v) else [v]) for k, v in data.items()}
    elif isinstance(data, (list, tuple)) and data and all(isinstance(r, Mapping) for r in data):
        keys = list(dict.fromkeys(k for r in data for k in r))
        columns = {str(k): [r.get(k) for r in data] for k in keys}
    else:
        raise ServingInputError(
            f"expected a table of {', '.join(names or [])} columns (records or a DataFrame), "
            f"got {type(data).__name__}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ServingInputError(f"columns of different lengths: "
                                f"{ {k: len(v) for k, v in columns.items()} }")
    if not columns or lengths == {0}:
        raise ServingInputError("no rows to predict")
    return columns


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, (str, bytes))


def require(columns: dict[str, list], server: Server) -> int:
    """Check the required input columns are present; returns the number of rows."""
    missing = [c.name for c in server.inputs if c.required and c.name not in columns]
    if missing:
        raise ServingInputError(f"missing input column(s) {missing}; this model takes "
                                f"{[c.name for c in server.inputs]}")
    return len(next(iter(columns.values())))


def is_missing(value: Any) -> bool:
    """None or NaN (what a CSV or a DataFrame gives for an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- the spec on disk ----------------------------------------------------------------------------


def save_spec(spec: Mapping[str, Any], folder: str | Path) -> Path:
    """Write a spec: JSON values to serving.json, arrays (numpy, torch) to serving.npz."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain, arrays = {}, {}
    for key, value in spec.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            plain[key] = value
    plain = {"spec_version": SPEC_VERSION, **plain, "arrays": sorted(arrays)}
    (folder / SPEC_FILE).write_text(json.dumps(plain, indent=1, ensure_ascii=False,
                                               sort_keys=True), encoding="utf-8")
    if arrays:
        np.savez(folder / ARRAYS_FILE, **arrays)
    return folder


def load_spec(folder: str | Path | None) -> dict[str, Any]:
    """Read a spec written by `save_spec` ({} for no folder: the tensor kind)."""
    if folder is None:
        return {}
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    names = spec.pop("arrays", [])
    if names:
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
            spec.update({name: npz[name] for name in names})
    return spec


def load_server(checkpoint: str | Path, spec_folder: str | Path | None = None) -> Server:
    """The Server of a model.pt ({model_state, config, ...}) and its serving spec folder."""
    from rnn_core.models import build_model
    from rnn_core.serving import chars, metro, tensors, text  # noqa: F401  (register the kinds)

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(payload["config"])
    model.load_state_dict(payload["model_state"])
    spec = load_spec(spec_folder)
    kind = spec.get("kind", "tensor")
    if kind not in _KINDS:
        raise ValueError(f"serving spec kind {kind!r} unknown to this rnn_core "
                         f"(knows {sorted(_KINDS)})")
    return _KINDS[kind](model, spec)


def server_for(model: torch.nn.Module, spec: Mapping[str, Any] | None) -> Server:
    """A Server for a model in memory (tests, the tracker's input example)."""
    from rnn_core.serving import chars, metro, tensors, text  # noqa: F401

    spec = dict(spec or {})
    return _KINDS[spec.get("kind", "tensor")](model, spec)


__all__ = ["Column", "Param", "Server", "ServingInputError", "as_columns", "load_server",
           "load_spec", "save_spec", "server_for"]
