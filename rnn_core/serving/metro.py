"""The metro models served on flows in passengers (not the training's normalised units).

Both read rows of flows: `inflow` (and `outflow` when the model reads it) as arrays of
consecutive quarter-hour counts, and `start`, the time of the first value ("07:30", or
"2019-01-21T07:30" when the date matters). A service day has 73 slots, 05:30 to 23:30; a window
must lie inside one. Flows must be finite and >= 0.

station_classifier (which station is it?)
    One row per window -> `station`, its `probability` and `probabilities` over all stations.
    Training divided each station's flows by that station's own training maxima, so raw counts
    cannot be normalised before the station is known. Each station s is therefore tried as a
    hypothesis: the window is divided by s's maxima and the model's log-probability of s under
    that hypothesis scores s; `probabilities` are these scores normalised over the stations.

flow_forecaster (t+1 .. t+H for every station)
    One row per station: the recent flows, the same `start` for all rows, and optionally a
    `station` column (default: row i is station i, and then every station must be given) ->
    `station`, `last_observed` and `<flow>_h<h>` forecasts in passengers. The covariates are
    rebuilt from the timestamp as the data phase built them: one-hot station, time of day,
    off-day flag (weekends and the spec's holidays) and the day-type profile of the training
    days at t+1..t+H. Horizons past 23:30 are NaN (outside the service day).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rnn_core.serving import (
    Column,
    Server,
    ServingInputError,
    as_columns,
    is_missing,
    register,
    require,
)

SLOTS = 73  # quarter-hours per service day
FIRST_SLOT = 5 * 60 + 30  # 05:30, in minutes after midnight
SLOT_MINUTES = 15
FLOW_NAMES = ("inflow", "outflow")  # the data's last axis


def _maxima(maxima, stations: int) -> np.ndarray:
    maxima = np.asarray(maxima, dtype=np.float32)
    if maxima.shape != (stations, 2) or not (maxima > 0).all():
        raise ValueError(f"maxima must be positive, shaped ({stations}, 2): got {maxima.shape}")
    return maxima


def station_classifier_spec(stations: int, columns: list[int], covariates: tuple[str, ...],
                            maxima) -> dict[str, Any]:
    """Spec of a station classifier: `columns` of (inflow, outflow) read, `covariates` ("time"
    or none), `maxima` the training maxima in passengers, stations x 2."""
    return {"kind": "station_classifier", "stations": int(stations), "columns": list(columns),
            "covariates": list(covariates), "maxima": _maxima(maxima, stations),
            "slots_per_day": SLOTS, "first_slot": "05:30", "slot_minutes": SLOT_MINUTES}


def flow_forecaster_spec(stations: int, columns: list[int], covariates: tuple[str, ...],
                         horizon: int, maxima, profiles=None,
                         holidays: tuple[dt.date, ...] = ()) -> dict[str, Any]:
    """Spec of a forecaster: `covariates` in the order the model reads them (station, time,
    offday, profile); `profiles` (with "profile") the day-type profiles of the training days,
    normalised: 2 (working day, off day) x 73 x stations x len(columns)."""
    spec = {"kind": "flow_forecaster", "stations": int(stations), "columns": list(columns),
            "covariates": list(covariates), "horizon": int(horizon),
            "maxima": _maxima(maxima, stations), "holidays": [str(d) for d in holidays],
            "slots_per_day": SLOTS, "first_slot": "05:30", "slot_minutes": SLOT_MINUTES}
    if "profile" in covariates:
        profiles = np.asarray(profiles, dtype=np.float32)
        if profiles.shape != (2, SLOTS, stations, len(columns)):
            raise ValueError(f"profiles must be (2, {SLOTS}, {stations}, {len(columns)}), "
                             f"got {profiles.shape}")
        spec["profiles"] = profiles
    return spec


def parse_start(value: Any, row: int) -> tuple[int, dt.date | None]:
    """"07:30" or "2019-01-21T07:30" -> (slot 0..72, date or None)."""
    text = str(value).strip()
    try:
        if len(text) <= 8 and ":" in text:  # a time of day
            when, date = dt.time.fromisoformat(text), None
        else:
            stamp = dt.datetime.fromisoformat(text)
            when, date = stamp.time(), stamp.date()
    except ValueError:
        raise ServingInputError(f"row {row}: start {value!r} is not a time (07:30) or a "
                                "timestamp (2019-01-21T07:30)") from None
    minutes = when.hour * 60 + when.minute - FIRST_SLOT
    if when.second or minutes % SLOT_MINUTES or not 0 <= minutes // SLOT_MINUTES < SLOTS:
        raise ServingInputError(f"row {row}: start {text} is not a quarter-hour slot between "
                                "05:30 and 23:30")
    return minutes // SLOT_MINUTES, date


def slot_time(slot: int, date: dt.date | None) -> str:
    minutes = FIRST_SLOT + SLOT_MINUTES * slot
    clock = f"{minutes // 60:02d}:{minutes % 60:02d}"
    return f"{date.isoformat()}T{clock}" if date else clock


def time_features(slots: torch.Tensor) -> torch.Tensor:
    """The data phase's time-of-day inputs (rnn_core.experiments.metro_common.time_features)."""
    from rnn_core.experiments.metro_common import time_features as features

    return features(slots)


class _MetroServer(Server):
    """Shared: reading flows rows, the window's slots, normalisation."""

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.stations, self.cols = int(spec["stations"]), list(spec["columns"])
        self.maxima = np.asarray(spec["maxima"], dtype=np.float64)[:, self.cols]  # S x F
        self.flow_names = [FLOW_NAMES[c] for c in self.cols]

    def flow_columns(self) -> list[Column]:
        return [Column(name, "array<number>", required=name in self.flow_names,
                       doc="consecutive quarter-hour passenger counts")
                for name in FLOW_NAMES]

    def flows(self, columns: dict[str, list], row: int) -> np.ndarray:
        """Row `row` -> L x F passengers, validated."""
        series = []
        for name in self.flow_names:
            value = columns[name][row]
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise ServingInputError(f"row {row}: {name} must be a list of numbers") from None
            if arr.ndim != 1 or arr.size == 0:
                raise ServingInputError(f"row {row}: {name} must be a non-empty list of "
                                        f"numbers, got shape {arr.shape}")
            series.append(arr)
        if len({s.size for s in series}) > 1:
            raise ServingInputError(f"row {row}: {' and '.join(self.flow_names)} have "
                                    f"different lengths {[s.size for s in series]}")
        x = np.stack(series, axis=-1)
        if not np.isfinite(x).all():
            raise ServingInputError(f"row {row}: flows contain NaN or infinite values")
        if (x < 0).any():
            raise ServingInputError(f"row {row}: flows must be passenger counts >= 0")
        if len(x) > SLOTS:
            raise ServingInputError(f"row {row}: {len(x)} values is longer than a service day "
                                    f"({SLOTS} quarter-hours, 05:30-23:30)")
        return x

    def window_start(self, columns: dict[str, list], row: int, length: int, needed: bool):
        """(first slot, date) of the row's window, or (None, None) when no start is given."""
        value = columns.get("start", [None] * (row + 1))[row]
        if is_missing(value) or value == "":
            if needed:
                raise ServingInputError(f"row {row}: this model needs `start`, the time of the "
                                        "first value (e.g. 07:30 or 2019-01-21T07:30)")
            return None, None
        slot, date = parse_start(value, row)
        if slot + length > SLOTS:
            raise ServingInputError(f"row {row}: {length} quarter-hours from "
                                    f"{slot_time(slot, None)} run past 23:30")
        return slot, date


@register
class StationClassifier(_MetroServer):
    kind = "station_classifier"

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.uses_time = "time" in spec["covariates"]
        self.inputs = [*self.flow_columns(),
                       Column("start", "string", required=self.uses_time,
                              doc="time of the first value, e.g. 07:30")]
        self.outputs = [Column("station", "long"), Column("probability", "double"),
                        Column("probabilities", "array<double>")]

    def example(self) -> dict[str, list]:
        counts = [float(v) for v in (120, 180, 260, 340, 310, 280, 220, 200)]
        example = {name: [counts] for name in self.flow_names}
        example["start"] = ["07:30"]
        return example

    @torch.no_grad()
    def predict(self, data, params=None) -> dict[str, list]:
        self.resolve_params(params)
        columns = as_columns(data, [*self.flow_names, "start"])
        rows = require(columns, self)
        groups: dict[tuple, list[int]] = defaultdict(list)
        windows = []
        for row in range(rows):
            x = self.flows(columns, row)
            slot, _ = self.window_start(columns, row, len(x), self.uses_time)
            windows.append(x)
            groups[(len(x), slot)].append(row)
        S = self.stations
        probs = np.zeros((rows, S))
        scale = torch.as_tensor(self.maxima, dtype=torch.float64)  # S x F
        for (length, slot), members in groups.items():
            x = torch.as_tensor(np.stack([windows[r] for r in members]))  # B x L x F
            # every row under every station hypothesis s: its flows / s's maxima -> L x (B*S) x F
            hyp = (x[:, None] / scale[None, :, None, :]).reshape(-1, length, len(self.cols))
            inputs = hyp.float().transpose(0, 1)
            if self.uses_time:
                slots = torch.arange(slot, slot + length)[:, None].expand(length, inputs.shape[1])
                inputs = torch.cat([inputs, time_features(slots)], dim=-1)
            logits, _ = self.model(inputs.contiguous())  # (B*S) x S
            logp = torch.log_softmax(logits.double(), dim=-1).view(len(members), S, S)
            score = logp.diagonal(dim1=1, dim2=2)  # B x S: log p(s | flows / maxima_s)
            probs[members] = torch.softmax(score, dim=-1).numpy()
        best = probs.argmax(axis=1)
        return {"station": best.tolist(), "probability": probs[np.arange(rows), best].tolist(),
                "probabilities": [p.tolist() for p in probs]}


@register
class FlowForecaster(_MetroServer):
    kind = "flow_forecaster"

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.covariates = list(spec["covariates"])
        self.horizon = int(spec["horizon"])
        self.needs_start = any(c in self.covariates for c in ("time", "offday", "profile"))
        self.needs_date = any(c in self.covariates for c in ("offday", "profile"))
        self.holidays = {dt.date.fromisoformat(d) for d in spec.get("holidays", [])}
        self.profiles = (torch.as_tensor(np.asarray(spec["profiles"], dtype=np.float32))
                         if "profile" in self.covariates else None)  # 2 x 73 x S x F
        self.inputs = [*self.flow_columns(),
                       Column("station", "long", required=False,
                              doc="station id; default: row i is station i"),
                       Column("start", "string", required=self.needs_start,
                              doc="time of the first value, e.g. 2019-01-21T07:30")]
        self.outputs = [Column("station", "long"), Column("last_observed", "string"),
                        *[Column(f"{f}_h{h}", "double") for f in self.flow_names
                          for h in range(1, self.horizon + 1)]]

    def example(self) -> dict[str, list]:
        rng = np.random.default_rng(0)
        counts = rng.integers(0, 200, size=(self.stations, 8, 2)).astype(float)
        example = {name: [counts[s, :, k].tolist() for s in range(self.stations)]
                   for k, name in enumerate(FLOW_NAMES) if name in self.flow_names}
        example["start"] = ["2019-01-21T07:30"] * self.stations
        return example

    def stations_of(self, columns: dict[str, list], rows: int) -> list[int]:
        S = self.stations
        if "station" not in columns or all(is_missing(v) for v in columns["station"]):
            if rows != S:
                raise ServingInputError(
                    f"this model forecasts {S} stations: got {rows} rows; give one row per "
                    f"station (row i = station i) or a `station` column")
            return list(range(S))
        try:
            ids = [int(v) for v in columns["station"]]
        except (TypeError, ValueError):
            raise ServingInputError("station must be whole numbers") from None
        bad = sorted({i for i in ids if not 0 <= i < S})
        if bad:
            raise ServingInputError(f"unknown station(s) {bad}: this model knows 0..{S - 1}")
        return ids

    def is_off(self, date: dt.date) -> bool:
        return date.weekday() >= 5 or date in self.holidays

    @torch.no_grad()
    def predict(self, data, params=None) -> dict[str, list]:
        self.resolve_params(params)
        columns = as_columns(data, [*self.flow_names, "station", "start"])
        rows = require(columns, self)
        stations = self.stations_of(columns, rows)
        windows, groups = [], defaultdict(list)
        for row in range(rows):
            x = self.flows(columns, row)
            slot, date = self.window_start(columns, row, len(x), self.needs_start)
            if self.needs_date and date is None:
                raise ServingInputError(f"row {row}: this model needs the date as well "
                                        "(start like 2019-01-21T07:30: weekends and day-type "
                                        "profiles depend on it)")
            windows.append(x)
            groups[(len(x), slot, date)].append(row)
        H, nf = self.horizon, len(self.cols)
        out = np.full((rows, H, nf), np.nan)
        last_observed = [""] * rows
        for (length, slot, date), members in groups.items():
            ids = torch.as_tensor([stations[r] for r in members])
            scale = torch.as_tensor(self.maxima[ids.numpy()])  # B x F
            flows = torch.as_tensor(np.stack([windows[r] for r in members]))  # B x L x F
            x = (flows / scale[:, None, :]).float().transpose(0, 1)  # L x B x F
            pred, _ = self.model(self.with_covariates(x, ids, slot, date).contiguous())
            forecast = pred[-1].double() * scale[:, None, :]  # B x H x F, passengers
            if slot is not None:
                last = slot + length - 1
                forecast[:, [h for h in range(H) if last + h + 1 >= SLOTS], :] = float("nan")
                for r in members:
                    last_observed[r] = slot_time(last, date)
            out[members] = forecast.numpy()
        result: dict[str, list] = {"station": stations, "last_observed": last_observed}
        for k, name in enumerate(self.flow_names):
            for h in range(H):
                result[f"{name}_h{h + 1}"] = out[:, h, k].tolist()
        return result

    def with_covariates(self, x: torch.Tensor, stations: torch.Tensor, slot: int | None,
                        date: dt.date | None) -> torch.Tensor:
        """x (L x B x F normalised) + the covariates in the spec's order, as the data phase
        appends them (rnn_core.experiments.metro_forecasting.make_windows)."""
        L, B = x.shape[:2]
        slots = None if slot is None else torch.arange(slot, slot + L)[:, None].expand(L, B)
        parts = [x]
        for name in self.covariates:
            if name == "station":
                parts.append(F.one_hot(stations, self.stations).float().expand(L, B, -1))
            elif name == "time":
                parts.append(time_features(slots))
            elif name == "offday":
                parts.append(torch.full((L, B, 1), float(self.is_off(date))))
            elif name == "profile":
                ahead = (slots.unsqueeze(-1) + torch.arange(1, self.horizon + 1)).clamp(
                    max=SLOTS - 1)  # L x B x H
                profile = self.profiles[int(self.is_off(date))]  # 73 x S x F
                values = profile[ahead, stations.view(1, -1, 1).expand_as(ahead)]  # L x B x H x F
                parts.append(values.reshape(L, B, -1))
            else:
                raise ValueError(f"unknown covariate {name!r} in the serving spec")
        return torch.cat(parts, dim=-1)
