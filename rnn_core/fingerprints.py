"""What a trained configuration depends on, as digests: data, config, library code, seed.

    fingerprint(exp, config, "lstm8", manifests)
    # {"data": "3f..", "config": "9a..", "code": "c1..", "seed": "0", "fingerprint": "77.."}

Two runs with the same fingerprint would train the same model (the runner seeds everything),
so the pipeline reuses the logged run instead of training again. The config digest leaves out
the experiment's grid axes (`Experiment.axes`, e.g. `models`) and adds the configuration's name:
listing one more model does not retrain the others.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from rnn_core.config import as_dict
from rnn_core.datasets.manifest import as_manifests

LIBRARY = Path(__file__).resolve().parent


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.cache
def library_version() -> str:
    """sha256 over every rnn_core source file (path and bytes): the code a model came from."""
    digest = hashlib.sha256()
    for path in sorted(LIBRARY.rglob("*.py")):
        digest.update(str(path.relative_to(LIBRARY)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(exp: Any, config: Any, name: str, manifests: dict[str, Any]) -> dict[str, str]:
    """The four digests of one configuration and their combination (see the module docstring)."""
    manifests = as_manifests(manifests)
    _, config = exp.resolve(config, name)  # a seed repeat trains with its own seed
    data = {d: {f: r.sha256 for f, r in sorted(manifests[d].files.items())}
            for d in exp.needs(config)}
    tree = as_dict(config)
    for axis in getattr(exp, "axes", ()):
        tree.pop(axis, None)
    seed = tree.get("train", {}).pop("seed", None)
    tree.get("train", {}).pop("repeats", None)  # how many seeds run, not what one of them trains
    parts = {"data": _digest(data), "config": _digest({"experiment": exp.name, "name": name,
                                                       "config": tree}),
             "code": library_version(), "seed": str(seed)}
    return {**parts, "fingerprint": _digest(parts)}
