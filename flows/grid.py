"""The grid: every configuration of the chosen experiments, one task each, on the flow's task
runner, tracked in MLflow (a parent run per experiment, a child run per configuration).

    rows = train_grid(configs={"ag_news": cfg}, profile="smoke", manifests=..., ...)

The runner is chosen by the caller (`train_grid.with_options(task_runner=...)`): serial by
default (one configuration at a time, as the cores are shared). A configuration that fails
fails its own task; the others still finish and are logged, then the grid fails naming it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import gpu_annotation
from rnn_core import experiments
from rnn_core.fingerprints import fingerprint
from tasks import tracking
from tasks.artifacts import publish_run_link, publish_summary
from tasks.experiments import challenge_champion
from tasks.tracking import SummaryRow
from tasks.tracking.compare import finished_child, last_training_seconds, run_row
from tasks.tracking.reuse import fingerprint_tags, record_reuse, reusable_child
from tasks.tracking.store import TrackingUnavailable, is_unreachable
from tasks.training import train_configuration


@flow(name="rnnflow-grid", flow_run_name="grid-{profile}",
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_grid(configs: dict[str, Any], profile: str, manifests: dict[str, dict],
               work_dir: str, tracking_uri: str | None, pipeline_id: str,
               force: bool = False) -> dict[str, list]:
    """Train every planned configuration of each experiment in `configs`; rows per experiment.

    A configuration whose data, config, library code and seed all equal those of a logged run
    is not trained again: that run is reused and linked (`force` retrains it).
    """
    logger = get_run_logger()
    client = tracking.configure(tracking_uri)
    tags = tracking.pipeline_tags(profile, pipeline_id)
    parents: dict[str, str] = {}
    rows: dict[str, list[SummaryRow]] = {name: [] for name in configs}
    pending: list[tuple[str, str, PrefectFuture]] = []
    queue: list[tuple[float, str, str, tuple]] = []  # (expected seconds, experiment, config, args)
    try:
        for name, config in configs.items():
            exp = experiments.get(name)
            parents[name] = tracking.start_parent_run(client, name, profile, pipeline_id,
                                                      {"config": config})
            # Stable across retries of the same flow run, so a crashed training resumes here.
            run_dir = str(Path(work_dir) / pipeline_id / name)
            needs = {d: manifests[d] for d in exp.needs(config)}
            known = last_training_seconds(client, name, profile)
            for config_name in exp.runs(config):  # plan(config), then any seed repeats
                logged = finished_child(client, name, pipeline_id, config_name)
                if logged is not None:  # an earlier attempt of this flow run logged it
                    rows[name].append(run_row(logged))
                    continue
                digests = fingerprint(exp, config, config_name, needs)
                same = None if force else reusable_child(client, name, digests["fingerprint"])
                if same is not None:
                    logger.info("%s/%s: data, config, code and seed unchanged since run %s: "
                                "reused, not retrained (--force retrains)", name, config_name,
                                same.info.run_id)
                    record_reuse(client, parents[name], config_name, same)
                    rows[name].append(dataclasses.replace(run_row(same), champion="reused"))
                    continue
                config_tags = {**tags, **fingerprint_tags(digests)}
                # The experiment itself travels to the worker (a plugin or test-only one is
                # not in a worker's registry); built-ins pickle by reference.
                queue.append((known.get(config_name, math.inf), name, config_name,
                              (exp, config, config_name, needs, run_dir, parents[name],
                               client.tracking_uri, config_tags)))
        # Longest first, by the last logged training time on this profile (unknown ones first,
        # in plan order): with N workers, a long configuration submitted last would train alone.
        order = {(name, config_name): i for i, (_, name, config_name, _) in enumerate(queue)}
        queue.sort(key=lambda item: -item[0])
        with gpu_annotation(FlowRunContext.get().task_runner):
            for _, name, config_name, args in queue:
                pending.append((name, config_name, train_configuration.submit(*args)))
        pending.sort(key=lambda p: order[p[0], p[1]])  # results, tables: in plan order
        failed, trained = _gather(pending)
        # Champion decisions one at a time, here in the flow (not on parallel workers).
        for name, pairs in trained.items():
            rows[name] += [challenge_champion(row, result, client.tracking_uri)
                           for row, result in pairs]
        results = {name: [result for _, result in pairs] for name, pairs in trained.items()}
        for name, config in configs.items():
            if results.get(name):
                firsts = [r for r in results[name] if r.repeat_of is None]  # one per config
                report = experiments.get(name).summarise(
                    config, firsts, Path(work_dir) / pipeline_id / name / "summary")
                tracking.log_report(client, parents[name], report.figures, report.texts)
            status = "FAILED" if any(n == name for n, _, _ in failed) else "FINISHED"
            publish_summary(rows[name], name)  # Prefect UI: the table, a link to the MLflow run
            publish_run_link(client.tracking_uri, parents[name], name)
            tracking.finish_parent_run(client, parents.pop(name), status=status,
                                       rows=rows[name])
    except BaseException as err:
        if not is_unreachable(err):  # a lost store cannot close its runs: a retry does
            for parent in parents.values():
                tracking.finish_parent_run(client, parent, status="FAILED")
        raise
    lost = [e for _, _, e in failed if isinstance(e, TrackingUnavailable)]
    if lost:  # one line naming the store and where the trained checkpoints are
        raise lost[0]
    if failed:
        names = ", ".join(f"{n}/{c} ({type(e).__name__}: {e})" for n, c, e in failed)
        raise RuntimeError(f"{len(failed)} configuration(s) failed: {names}")
    return rows


def _gather(pending):
    """Wait for every submitted configuration -> (failures, {experiment: [(row, result)]});
    failures are collected, not raised at once."""
    failed: list[tuple[str, str, BaseException]] = []
    trained: dict[str, list] = {}
    for name, config_name, future in pending:
        trained.setdefault(name, [])
        try:
            trained[name].append(future.result())
        except Exception as err:  # noqa: BLE001  (its own task run is Failed; the others go on)
            failed.append((name, config_name, err))
    return failed, trained
