"""Profiles are data: one TOML file per profile under flows/profiles/, one table per experiment.

A table's keys override the experiment's `Config` defaults (which are the `default` profile);
unknown keys and wrong types are errors naming the profile file and the key.

    [pipeline]
    experiments = ["metro_classification", "ag_news"]   # which experiments the pipeline runs

    [ag_news]
    epochs = 4
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rnn_core import experiments

PROFILES_DIR = Path(__file__).with_name("profiles")


@dataclass
class Profile:
    name: str
    path: Path
    experiments: list[str]  # names from rnn_core.experiments.NAMES, in run order
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides per experiment
    data: dict[str, Any] = field(default_factory=dict)  # prepare_data parameters


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> Profile:
    """Read a profile by name (smoke, default, full) or by a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise FileNotFoundError(
                f"no profile {name_or_path!r}: expected one of {', '.join(available())} "
                f"or a path to a .toml file"
            )
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    pipeline = raw.pop("pipeline", {})
    data = raw.pop("data", {})
    names = pipeline.get("experiments", list(experiments.NAMES))
    for name in [*names, *raw]:
        if name not in experiments.NAMES:
            raise ValueError(f"{path}: unknown experiment {name!r}")
    return Profile(path.stem, path, list(names), raw, data)


def experiment_config(profile: Profile, name: str, overrides: dict[str, Any] | None = None):
    """The validated `Config` of experiment `name` under this profile (plus overrides)."""
    config_cls = experiments.get(name).Config
    values = {**profile.sections.get(name, {}), **(overrides or {})}
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{profile.path}: [{name}] has unknown keys {unknown}; known: {sorted(known)}"
        )
    defaults = dataclasses.asdict(config_cls())
    try:
        return TypeAdapter(config_cls).validate_python({**defaults, **values})
    except ValidationError as err:
        raise ValueError(f"{profile.path}: [{name}] is invalid:\n{err}") from None
