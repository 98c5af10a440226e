"""Retrain only when something changed: a configuration whose data, config, library code and
seed equal those of a logged run reuses that run; changing one of them retrains only the
configurations it touches."""

from __future__ import annotations

import dataclasses

import pytest

from flows.profiles import PROFILES_DIR, load_profile
from rnn_core import experiments
from rnn_core.datasets.manifest import DatasetManifest, FileRecord
from rnn_core.fingerprints import fingerprint, library_version

GRID = ["ag_news", "vanishing_gradients"]  # 2 + 3 smoke configurations


def _manifest(sha: str) -> DatasetManifest:
    record = FileRecord("/x/train.parquet", 10, sha)
    return DatasetManifest("ag_news", "full", "/x", {"train.parquet": record}, {"train": 1})


def test_each_of_the_four_parts_changes_the_fingerprint_and_axes_do_not():
    exp = experiments.get("ag_news")
    config = load_profile("smoke").config("ag_news")
    base = fingerprint(exp, config, "lstm8", {"ag_news": _manifest("a")})
    assert base == fingerprint(exp, config, "lstm8", {"ag_news": _manifest("a")})
    assert base["code"] == library_version() and len(base["fingerprint"]) == 64
    other_data = fingerprint(exp, config, "lstm8", {"ag_news": _manifest("b")})
    seed = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=1))
    lr = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1e-4))
    listed = dataclasses.replace(config, models=["lstm8", "bilstm64x2", "simplernn16-masked"])
    assert other_data["data"] != base["data"]
    assert fingerprint(exp, seed, "lstm8", {"ag_news": _manifest("a")})["seed"] == "1"
    assert fingerprint(exp, lr, "lstm8", {"ag_news": _manifest("a")})["config"] != base["config"]
    assert fingerprint(exp, listed, "lstm8", {"ag_news": _manifest("a")}) == base  # an axis
    assert fingerprint(exp, config, "bilstm64x2", {"ag_news": _manifest("a")}) != base
    for part in ("data", "config", "seed"):
        changed = {"data": other_data, "config": fingerprint(exp, lr, "lstm8",
                   {"ag_news": _manifest("a")}),
                   "seed": fingerprint(exp, seed, "lstm8", {"ag_news": _manifest("a")})}[part]
        assert changed["fingerprint"] != base["fingerprint"], part


@pytest.mark.slow
def test_an_unchanged_rerun_reuses_and_one_change_retrains_only_its_configurations(
        prefect_harness, mirror_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    monkeypatch.setenv("RNN_DATA_MIRROR", str(mirror_dir))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    common = {"only": GRID, "data_dir": str(tmp_path / "data"),
              "work_dir": str(tmp_path / "ck"), "tracking_uri": uri}

    def children() -> list:
        client = MlflowClient(tracking_uri=uri)
        ids = [client.get_experiment_by_name(f"rnnflow/{n}").experiment_id for n in GRID]
        return client.search_runs(ids, "tags.`rnnflow.role` = 'child'")

    first = pipeline(profile="smoke", **common)
    assert all(r.champion != "reused" for rows in first.values() for r in rows)
    assert len(children()) == 5

    second = pipeline(profile="smoke", **common)  # nothing changed: nothing trains
    assert {r.champion for rows in second.values() for r in rows} == {"reused"}
    assert {r.run_id for rows in second.values() for r in rows} == {
        r.run_id for rows in first.values() for r in rows}
    assert len(children()) == 5

    changed = tmp_path / "changed.toml"  # one value of one experiment
    text = (PROFILES_DIR / "smoke.toml").read_text()
    assert "[ag_news.train]\nepochs = 1\n" in text
    changed.write_text(text.replace("[ag_news.train]\nepochs = 1\n",
                                    "[ag_news.train]\nepochs = 1\nlr = 0.002\n"))
    third = pipeline(profile=str(changed), **common)
    assert all(r.champion != "reused" for r in third["ag_news"])  # retrained
    assert {r.champion for r in third["vanishing_gradients"]} == {"reused"}
    assert len(children()) == 7

    forced = pipeline(profile="smoke", force=True, only=["vanishing_gradients"],
                      **{k: v for k, v in common.items() if k != "only"})
    assert all(r.champion != "reused" for r in forced["vanishing_gradients"])
    assert len(children()) == 10
