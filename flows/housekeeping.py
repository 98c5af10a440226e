"""Bounded disk: what grows with every run, and how `rnnflow gc` (or the pipeline) bounds it.

What grows, per pipeline run (measured on the smoke profile, five runs in a row: README):

- `checkpoints/<flow run id>/<experiment>/<config>/` — `last.pt` (weights, Adam's moments, RNG:
  what a retry resumes from), `best.pt`, `model.pt` (the scored weights the registry copies),
  plots. Needed until the configuration is logged; after that only a retry of the same flow run
  reads it, and that retry finds the logged run and skips the configuration anyway.
- `mlruns/artifacts/<task>/models/m-<id>/` — one logged model (code + weights-only `model.pt`)
  per registered version; plots and histories of each run; rows in `mlruns/mlflow.db`.

`prune_checkpoints` keeps the newest `keep` checkpoint folders (flow runs) whole and, in older
ones, removes each configuration that a FINISHED child run of that flow run has logged; a folder
left with no unlogged configuration goes entirely (summaries, logs). Unlogged configurations
stay (a retry of their flow run resumes them) unless `unlogged=True`. `prune_model_versions`
deletes registered versions that are neither aliased (the champion) nor among the newest
`keep` of their model, with their logged-model artefacts; the runs and their metrics stay.

    rnnflow gc                      # checkpoints of logged configurations, keeping the last 3 runs
    rnnflow gc --versions           # ...and old non-champion model versions
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

KEEP_RUNS_ENV = "RNNFLOW_KEEP_CHECKPOINT_RUNS"  # how many flow runs' checkpoints stay whole
DEFAULT_KEEP_RUNS = 3
DEFAULT_KEEP_VERSIONS = 3  # newest versions kept per registered model, besides aliased ones
_TRAINED = ("last.pt", "model.pt")  # a folder holding one of these is a configuration's


def keep_runs(keep: int | None = None) -> int:
    """`keep` if given, else $RNNFLOW_KEEP_CHECKPOINT_RUNS, else 3."""
    if keep is None:
        keep = int(os.environ.get(KEEP_RUNS_ENV) or DEFAULT_KEEP_RUNS)
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    return keep


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _newest_mtime(folder: Path) -> float:
    """When a run last wrote a file there (directories do not count: pruning one of them
    would make an old run look new)."""
    times = [f.stat().st_mtime for f in folder.rglob("*") if f.is_file()]
    return max(times) if times else folder.stat().st_mtime


def checkpoint_runs(work_dir: str | os.PathLike) -> list[Path]:
    """The flow runs' checkpoint folders under `work_dir`, most recently written first."""
    root = Path(work_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=_newest_mtime, reverse=True)


def trained_configs(run_folder: Path) -> dict[tuple[str, str], Path]:
    """{(experiment, configuration): folder} of the configurations trained in one flow run."""
    found = {}
    for experiment in sorted(p for p in run_folder.iterdir() if p.is_dir()):
        for config in sorted(p for p in experiment.iterdir() if p.is_dir()):
            if any((config / name).exists() for name in _TRAINED):
                found[(experiment.name, config.name)] = config
    return found


def logged_configs(client, pipeline_id: str) -> set[tuple[str, str]]:
    """(task, configuration) of every FINISHED child run that flow run `pipeline_id` logged."""
    from tasks.tracking.names import CONFIG_TAG, PIPELINE_ID_TAG, ROLE_CHILD, ROLE_TAG, TASK_TAG
    from tasks.tracking.store import rnnflow_experiment_ids, status_is, tag_is

    ids = rnnflow_experiment_ids(client)
    if not ids:
        return set()
    runs = client.search_runs(
        ids, f"{tag_is(PIPELINE_ID_TAG, pipeline_id)} and {tag_is(ROLE_TAG, ROLE_CHILD)} and "
        f"{status_is('FINISHED')}", max_results=10000)
    return {(r.data.tags.get(TASK_TAG, ""), r.data.tags.get(CONFIG_TAG, "")) for r in runs}


@dataclass
class PruneReport:
    """What `prune_checkpoints` removed and kept, and how many bytes it freed."""

    removed: list[Path] = field(default_factory=list)  # configuration or whole-run folders
    kept_recent: list[Path] = field(default_factory=list)  # the newest `keep` runs
    kept_unlogged: list[Path] = field(default_factory=list)  # configurations a retry may resume
    freed_bytes: int = 0

    def summary(self) -> str:
        return (f"removed {len(self.removed)} checkpoint folder(s), {self.freed_bytes / 1e6:.1f} "
                f"MB; kept the newest {len(self.kept_recent)} run(s) and "
                f"{len(self.kept_unlogged)} unlogged configuration(s)")


def prune_checkpoints(work_dir: str | os.PathLike, client=None, keep: int | None = None,
                      unlogged: bool = False, dry_run: bool = False,
                      protect: Iterable[str] = ()) -> PruneReport:
    """Remove the checkpoints of logged configurations beyond the newest `keep` flow runs.

    `client`: the MLflow store the runs were logged to (without one, nothing counts as logged,
    so only `unlogged=True` removes anything). `protect`: flow run ids never touched (the run in
    progress). `dry_run`: report only.
    """
    report = PruneReport()
    protected = set(protect)
    runs = [r for r in checkpoint_runs(work_dir) if r.name not in protected]
    keep = keep_runs(keep)
    report.kept_recent = runs[:keep]
    for run in runs[keep:]:
        logged = logged_configs(client, run.name) if client is not None else set()
        configs = trained_configs(run)
        unfinished = [p for key, p in configs.items() if key not in logged]
        if unfinished and not unlogged:
            report.kept_unlogged += unfinished
            targets = [p for key, p in configs.items() if key in logged]
        else:
            targets = [run]  # nothing left to resume: the whole folder (summaries, logs) goes
        for target in targets:
            report.freed_bytes += disk_usage(target)
            report.removed.append(target)
            if not dry_run:
                shutil.rmtree(target, ignore_errors=True)
    return report


@task(name="prune-checkpoints", cache_policy=NO_CACHE, persist_result=False)
def prune_old_checkpoints(work_dir: str, tracking_uri: str | None = None,
                          keep: int | None = None, current: str | None = None) -> str:
    """The pipeline's last step: `prune_checkpoints` against the run's store, never touching
    the current flow run's folder; returns the one-line summary (also logged)."""
    from prefect.logging import get_run_logger

    from tasks.tracking.store import configure

    report = prune_checkpoints(work_dir, configure(tracking_uri), keep=keep,
                               protect=[current] if current else [])
    get_run_logger().info("checkpoints under %s: %s", work_dir, report.summary())
    return report.summary()


# --- registered model versions -------------------------------------------------------------
@dataclass
class VersionsReport:
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (model, version)
    kept: int = 0
    freed_bytes: int = 0  # logged-model artefacts removed from a local artefact store

    def summary(self) -> str:
        return (f"deleted {len(self.deleted)} model version(s) ({self.freed_bytes / 1e6:.1f} MB "
                f"of local artefacts), kept {self.kept}")


def prune_model_versions(client, keep: int = DEFAULT_KEEP_VERSIONS,
                         dry_run: bool = False) -> VersionsReport:
    """Delete old versions of every `rnnflow-*` model: each model keeps its aliased versions
    (the champion) and its newest `keep`; a deleted version's logged model and artefacts go too
    (the run, its metrics and plots stay)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from tasks.tracking.names import MODEL_PREFIX

    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    report = VersionsReport()
    for model in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        aliased = {str(v) for v in (model.aliases or {}).values()}
        versions = sorted(client.search_model_versions(f"name = '{model.name}'"),
                          key=lambda mv: int(mv.version), reverse=True)
        newest = {str(mv.version) for mv in versions[:keep]}
        for mv in versions:
            if str(mv.version) in aliased | newest:
                report.kept += 1
                continue
            report.deleted.append((model.name, str(mv.version)))
            location = _logged_model_location(client, mv)
            report.freed_bytes += _local_size(location)
            if dry_run:
                continue
            client.delete_model_version(model.name, str(mv.version))
            if model_id := _logged_model_id(mv):
                if location:
                    get_artifact_repository(location).delete_artifacts()
                client.delete_logged_model(model_id)
    return report


def _logged_model_id(mv) -> str | None:
    """The logged model behind a version (MLflow 3): its `model_id`, which some stores leave
    empty in search results, else the `models:/m-...` source it was registered from."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = str(getattr(mv, "source", "") or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _logged_model_location(client, mv) -> str | None:
    model_id = _logged_model_id(mv)
    if not model_id:
        return None
    try:
        return client.get_logged_model(model_id).artifact_location
    except Exception:  # noqa: BLE001  (already deleted: nothing to free)
        return None


def _local_size(location: str | None) -> int:
    if not location or not location.startswith("file:"):
        return 0
    from urllib.parse import unquote, urlparse

    return disk_usage(unquote(urlparse(location).path))
