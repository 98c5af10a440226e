"""Profiles are data: one TOML file per profile under flows/profiles/, one table per experiment.

An experiment's tables map 1:1 onto its Config tree (rnn_core.experiments.protocol); keys
override the Config's defaults, which are the `default` profile:

    [pipeline]
    experiments = ["metro_classification", "ag_news"]   # which experiments the pipeline runs

    [ag_news]              # the experiment's own fields
    models = ["lstm8"]
    [ag_news.train]        # rnn_core.training.TrainConfig
    epochs = 4
    [ag_news.model]        # the model block
    backend = "scratch"

The whole profile is validated when it is loaded, before any data work: unknown sections and
keys, wrong types, values outside their range (rnn_core.config) and each experiment's own
cross-field rules (its `plan`) all fail with one line naming the file, the table and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rnn_core import experiments
from rnn_core.config import ConfigError, check

PROFILES_DIR = Path(__file__).with_name("profiles")


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming file, table and key."""


@dataclass
class Profile:
    name: str
    path: Path
    experiments: list[str]  # registered experiment names, in run order
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # tables per experiment
    data: dict[str, Any] = field(default_factory=dict)  # prepare_data parameters
    configs: dict[str, Any] = field(default_factory=dict)  # validated Config per experiment

    def config(self, name: str) -> Any:
        """The validated Config of experiment `name` under this profile."""
        if name not in self.configs:
            self.configs[name] = build_config(self.path, name, self.sections.get(name, {}))
        return self.configs[name]


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A profile name (smoke, default, full) or a path to a .toml file -> the file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ProfileError(f"profile file {path} not found")
        return path
    path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ProfileError(f"no profile {name_or_path!r}: expected one of "
                           f"{', '.join(available())} or a path to a .toml file")
    return path


def load_profile(name_or_path: str, only: list[str] | None = None) -> Profile:
    """Read and validate a profile (every experiment table, or those in `only`)."""
    path = resolve(name_or_path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:  # its message says "(at line L, column C)"
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    pipeline = raw.pop("pipeline", {})
    data = raw.pop("data", {})
    known = experiments.names()
    names = pipeline.get("experiments", known)
    for name in [*names, *raw, *(only or [])]:
        if name not in known:
            where = "--only" if name in (only or []) and name not in raw else str(path)
            raise ProfileError(f"{where}: unknown experiment {name!r}; expected one of "
                               f"{', '.join(known)}")
    profile = Profile(path.stem, path, list(names), raw, data)
    for name in only or sorted(set(names) | set(raw)):
        profile.config(name)  # validates now, not when the pipeline reaches it
    return profile


def _unknown_keys(config_cls: type, values: dict[str, Any], prefix: str) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    bad = []
    for key, value in values.items():
        if key not in fields:
            bad.append(f"{prefix}{key}")
            continue
        default = fields[key].default_factory() if fields[key].default_factory is not \
            dataclasses.MISSING else fields[key].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            bad += _unknown_keys(type(default), value, f"{prefix}{key}.")
    return bad


def _merge(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Nested tables override nested defaults key by key."""
    out = dict(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(path: Path | str, name: str, values: dict[str, Any]) -> Any:
    """One experiment's validated Config from its profile tables (`values`)."""
    exp = experiments.get(name)
    config_cls = exp.Config
    unknown = _unknown_keys(config_cls, values, "")
    if unknown:
        allowed = sorted(f.name for f in dataclasses.fields(config_cls))
        raise ProfileError(f"{path}: [{name}] unknown key {unknown[0]}; known keys: "
                           f"{', '.join(allowed)}")
    merged = _merge(dataclasses.asdict(config_cls()), values)
    try:
        config = TypeAdapter(config_cls).validate_python(merged)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"{path}: [{name}] {key} = {first.get('input')!r}: "
                           f"{first['msg']}") from None
    try:
        check(config)
        exp.plan(config)
    except ConfigError as err:
        raise ProfileError(f"{path}: [{name}] {err}") from None
    except (ValueError, KeyError) as err:
        raise ProfileError(f"{path}: [{name}] {str(err).strip(chr(39))}") from None
    return config


def experiment_config(profile: Profile, name: str, overrides: dict[str, Any] | None = None):
    """The validated Config of experiment `name` under this profile (plus overrides)."""
    if not overrides:
        return profile.config(name)
    return build_config(profile.path, name, _merge(profile.sections.get(name, {}), overrides))
