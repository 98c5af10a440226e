"""A smoke store for the serving tests: one real configuration per served experiment, trained on
the smoke profile's slices of the mirror's data by the real runner, logged by the real tracker,
each made champion of its registered model.

    store = build_smoke_store(tmp_path, mirror_dir)   # ~15 s on 2 cores
    store.uri, store.models["ag_news"]                 # sqlite:///..., rnnflow-ag-news-...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

TASKS = ("ag_news", "metro_classification", "metro_forecasting", "char_generation")
DATASETS = {"ag_news": "ag_news", "metro_classification": "metro", "metro_forecasting": "metro",
            "char_generation": "trump"}

# Raw inputs, as a user has them (the test split's first forecasting day starts 05:30).
HEADLINES = [
    {"title": "Oil prices fall as stocks rally on Wall Street",
     "description": "Crude futures slid 3% on Tuesday while shares rose."},
    {"title": "Striker scores twice as champions win the cup final", "description": ""},
]


@dataclasses.dataclass
class SmokeStore:
    uri: str
    root: Path
    models: dict[str, str]  # task -> registered model name (its champion is set)
    stations: dict[str, int]  # metro task -> station count


def prepare(root: Path, mirror: Path) -> dict:
    from rnn_core.datasets.ag_news import preprocess_ag_news
    from rnn_core.datasets.corpus import preprocess_corpus
    from rnn_core.datasets.manifest import DatasetManifest
    from rnn_core.datasets.metro import preprocess_metro

    preprocess_metro(mirror / "metro" / "hzdataset.pch", root / "metro")
    preprocess_ag_news(mirror / "ag_news" / "train_subset.csv", mirror / "ag_news" / "test.csv",
                       root / "ag_news", train_variant="subset")
    preprocess_corpus("trump", mirror / "trump" / "trump_full_speech.txt", root / "trump")
    return {name: DatasetManifest.read(root / name) for name in ("metro", "ag_news", "trump")}


def build_smoke_store(root: Path, mirror: Path) -> SmokeStore:
    from flows.profiles import load_profile
    from rnn_core import experiments
    from rnn_core.experiments.runner import run_configuration
    from tasks import tracking
    from tasks.tracking import champion

    manifests = prepare(root / "processed", mirror)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    client = tracking.configure(uri)
    profile = load_profile("smoke")
    models, stations = {}, {}
    for task in TASKS:
        exp, config = experiments.get(task), profile.config(task)
        name = exp.plan(config)[0]
        needs = {d: manifests[d] for d in exp.needs(config)}
        result = run_configuration(task, config, name, needs, root / "checkpoints")
        parent = tracking.start_parent_run(client, task, "smoke", "serving-test", {})
        run_id, version = tracking.log_result(
            client, result, parent, tracking.pipeline_tags("smoke", "serving-test"),
            manifests={d: m.to_json() for d, m in needs.items()})
        models[task] = tracking.registered_name(result)
        champion.challenge_result(client, result, run_id, models[task], version, "smoke")
        tracking.finish_parent_run(client, parent)
        if "stations" in result.serving:
            stations[task] = int(result.serving["stations"])
    return SmokeStore(uri, root, models, stations)


def metro_window(length: int = 8) -> dict[str, list]:
    """A morning window of one station's flows, in passengers (ints, as counts are)."""
    rng = np.random.default_rng(1)
    return {"inflow": [rng.integers(20, 400, size=length).tolist()],
            "outflow": [rng.integers(20, 400, size=length).tolist()], "start": ["07:30"]}


def metro_day(stations: int, length: int = 8) -> dict[str, list]:
    """Recent flows of every station (one row each), in passengers, from Monday 21 Jan 07:30."""
    rng = np.random.default_rng(2)
    return {"inflow": rng.integers(0, 300, size=(stations, length)).tolist(),
            "outflow": rng.integers(0, 300, size=(stations, length)).tolist(),
            "start": ["2019-01-21T07:30"] * stations}
