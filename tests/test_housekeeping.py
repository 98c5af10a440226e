"""Bounded disk: old checkpoints of logged configurations are pruned (the newest runs and anything
a retry could still resume stay), and `rnnflow gc --versions` deletes old non-champion model
versions with their artefacts."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.housekeeping import (
    KEEP_RUNS_ENV,
    checkpoint_runs,
    disk_usage,
    keep_runs,
    prune_checkpoints,
    prune_model_versions,
)


class _Store:
    """The two calls prune_checkpoints makes, answered from {pipeline_id: {(task, config)}}."""

    def __init__(self, logged: dict[str, set[tuple[str, str]]]):
        self.logged = logged

    def search_experiments(self, filter_string):
        return [SimpleNamespace(experiment_id="1")]

    def search_runs(self, ids, filter_string, max_results=None):
        pipeline = filter_string.split("'")[1]  # tags.`rnnflow.pipeline_id` = '<id>' first
        return [SimpleNamespace(data=SimpleNamespace(
            tags={"rnnflow.task": task, "rnnflow.config": config}))
            for task, config in self.logged.get(pipeline, set())]


def _runs(root: Path, count: int) -> list[Path]:
    """`count` flow runs' checkpoint folders, oldest first, each with two configurations."""
    runs = []
    for i in range(count):
        run = root / f"run-{i}"
        for config in ("a", "b"):
            (run / "exp" / config).mkdir(parents=True)
            (run / "exp" / config / "last.pt").write_bytes(b"x" * 1000)
            (run / "exp" / config / "model.pt").write_bytes(b"x" * 300)
        (run / "exp" / "summary").mkdir()
        (run / "exp" / "summary" / "plot.png").write_bytes(b"p" * 50)
        (run / "logs").mkdir()
        for path in [run, *run.rglob("*")]:  # older runs written earlier
            os.utime(path, (1_000_000 + i * 100, 1_000_000 + i * 100))
        runs.append(run)
    return runs


def test_prune_keeps_recent_runs_and_whatever_a_retry_could_resume(tmp_path):
    runs = _runs(tmp_path, 5)
    assert checkpoint_runs(tmp_path) == runs[::-1]  # newest first
    both = {("exp", "a"), ("exp", "b")}
    store = _Store({"run-0": both, "run-1": both, "run-2": {("exp", "a")}, "run-3": both})

    dry = prune_checkpoints(tmp_path, store, keep=2, dry_run=True)
    assert all(p.exists() for p in runs) and dry.freed_bytes > 0

    report = prune_checkpoints(tmp_path, store, keep=2, protect=["run-3"])
    # run-4 is among the newest two, run-3 is protected (in progress): untouched.
    assert runs[4].exists() and runs[3].exists() and (runs[3] / "exp" / "a").exists()
    assert report.kept_recent == [runs[4], runs[2]]  # the protected run does not count
    assert not runs[0].exists() and not runs[1].exists()  # fully logged: the whole folder goes
    assert report.freed_bytes == 2 * disk_usage(runs[4])
    assert report.summary().startswith("removed 2 checkpoint folder(s)")

    report = prune_checkpoints(tmp_path, store, keep=1, protect=["run-3"])
    # run-2: its logged configuration goes, the unlogged one stays for a retry.
    assert not (runs[2] / "exp" / "a").exists() and (runs[2] / "exp" / "b" / "last.pt").exists()
    assert report.kept_unlogged == [runs[2] / "exp" / "b"]
    # ...unless asked; without a store nothing counts as logged.
    prune_checkpoints(tmp_path, None, keep=1, protect=["run-3"])
    assert (runs[2] / "exp" / "b").exists()
    prune_checkpoints(tmp_path, None, keep=1, unlogged=True, protect=["run-3"])
    assert not runs[2].exists() and runs[4].exists()


def test_keep_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.delenv(KEEP_RUNS_ENV, raising=False)
    assert keep_runs() == 3
    monkeypatch.setenv(KEEP_RUNS_ENV, "5")
    assert keep_runs() == 5 and keep_runs(1) == 1
    with pytest.raises(ValueError):
        keep_runs(-1)


@pytest.mark.slow  # a fresh SQLite store and four logged models: ~10 s
def test_gc_versions_keeps_champions_and_the_newest(tmp_path):
    from test_champion import _result

    from tasks import tracking
    from tasks.experiments import challenge_champion, log_result
    from tasks.tracking.names import CHAMPION_ALIAS

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = tracking.configure(uri)
    name = "rnnflow-ag-news-gru6"
    for seed, accuracy in enumerate((0.6, 0.9, 0.7, 0.8), start=1):  # v2 becomes champion
        result = _result(tmp_path, accuracy, seed)
        parent = tracking.start_parent_run(client, "ag_news", "nightly", f"p{seed}", {})
        row = log_result.fn(result, parent, uri, tracking.pipeline_tags("nightly", f"p{seed}"))
        challenge_champion.fn(row, result, uri)
        tracking.finish_parent_run(client, parent, rows=[row])
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "2"
    locations = {str(mv.version): mv.source for mv in client.search_model_versions(f"name='{name}'")}
    artifacts = tmp_path / "mlruns" / "artifacts" / "ag_news" / "models"
    assert len(list(artifacts.iterdir())) == 4

    shown = CliRunner().invoke(app, ["gc", "--work-dir", str(tmp_path / "none"), "--versions",
                                     "--keep-versions", "1", "--dry-run", "--tracking-uri", uri])
    assert shown.exit_code == 0, shown.output
    assert f"would delete {name} version 3" in shown.output and "version 4" not in shown.output
    assert len(client.search_model_versions(f"name='{name}'")) == 4

    report = prune_model_versions(client, keep=1)
    assert sorted(report.deleted) == [(name, "1"), (name, "3")] and report.freed_bytes > 0
    left = sorted(str(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
    assert left == ["2", "4"]  # the champion and the newest
    remaining = {p.name for p in artifacts.iterdir() if any(p.rglob("*.pt"))}
    assert remaining == {locations[v].removeprefix("models:/") for v in ("2", "4")}
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "2"
    # Their runs (metrics, plots) stay.
    assert len(client.search_runs([client.get_experiment_by_name("rnnflow/ag_news")
                                   .experiment_id], "tags.`rnnflow.role` = 'child'")) == 4
