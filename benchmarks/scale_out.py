"""Wall time of one grid with 1 and with 2 workers, in one process, and what scale-out costs.

    .venv/bin/python benchmarks/scale_out.py                 # default profile, 1 then 2 workers
    .venv/bin/python benchmarks/scale_out.py --profile smoke --only vanishing_gradients  # quick
    .venv/bin/python benchmarks/scale_out.py --workers 1 2 4 --json out.json

What it does, in this order, in this one process:
1. starts a Prefect server on a free 127.0.0.1 port with a temporary PREFECT_HOME (as `make ui`
   gives `rnnflow run`), so the Dask workers report to the same API as the flow;
2. prepares the profile's data once (from $RNN_DATA_MIRROR) into a temporary data folder;
3. runs `flows.pipeline.pipeline(profile, workers=N)` for each N, one after the other, each with
   a fresh work folder and a fresh SQLite MLflow store (with N > 1 the pipeline starts its
   `mlflow server` in front of it, as `rnnflow run --workers N` does); the data step is cached;
4. reads every `train-*` task run back from the Prefect API: task wall time (end - start) minus
   the runner's training time (row.seconds) is what a task costs beyond training (imports on a
   fresh worker, data loading, MLflow logging and model registration);
5. times the fixed costs of a --workers run on their own: the LocalCluster (start, close) and
   the mlflow server in front of a fresh SQLite store (schema, start until healthy, stop);
6. estimates the `full` profile's wall time with 1, 2, 4, 8 workers from the measured
   per-configuration times (method and assumptions are written into the JSON);
7. prints a table and writes benchmarks/results/scale_out-<machine>.json (machine = cpu-<n>core
   or gpu-<name>), with the load average at the start, between runs and at the end.

speedup = wall time with 1 worker / wall time with 2 workers, both for the whole pipeline call
(what a user waits for). The training-only speedup (first train start to last train end) is
reported next to it. Other processes on the machine slow both runs: check the load averages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled

from benchmarks.full_estimate import (
    ESTIMATE_ASSUMPTIONS,
    ESTIMATE_METHOD,
    data_facts,
    estimate_full,
    list_schedule,
)
from benchmarks.machine import code_version, machine_info, machine_tag, write_json
from flows.servers import free_port, start_prefect, stop_group, wait_healthy  # no prefect import


# --- measuring one pipeline run -----------------------------------------------------------------
def _ts(value) -> float | None:
    return value.timestamp() if value is not None else None


def read_timeline(flow_run_id: str, expected_tasks: int, timeout_s: float = 60) -> dict:
    """The pipeline flow run, its subflows and the grid's train-* task runs from the API
    (task states arrive as events a moment after the flow returns: poll until final)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        pipeline_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))[0]
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        grid = next(r for r in subflows if r.name.startswith("grid-"))
        prepare = next((r for r in subflows if not r.name.startswith("grid-")), None)
        flt = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[grid.id]),
                            name=TaskRunFilterName(like_="train-"))
        deadline = time.monotonic() + timeout_s
        while True:
            runs = client.read_task_runs(task_run_filter=flt, limit=200)  # the API's maximum
            final = [r for r in runs if r.state is not None and r.state.is_final()
                     and r.end_time is not None]
            if len(final) >= expected_tasks or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # The flow runs' own end times are final by now too (they ended before the tasks' events).
        pipeline_run = client.read_flow_run(pipeline_run.id)
        grid = client.read_flow_run(grid.id)
        prepare = client.read_flow_run(prepare.id) if prepare else None
    return {
        "pipeline": (_ts(pipeline_run.start_time), _ts(pipeline_run.end_time)),
        "prepare": (_ts(prepare.start_time), _ts(prepare.end_time)) if prepare else None,
        "grid": (_ts(grid.start_time), _ts(grid.end_time)),
        "tasks": {r.name: (_ts(r.start_time), _ts(r.end_time),
                           r.state.name if r.state else None) for r in runs},
    }


def run_once(workers: int, args, root: Path, data_dir: Path) -> dict:
    from flows.pipeline import pipeline

    run_dir = root / f"workers-{workers}"
    (run_dir / "mlruns").mkdir(parents=True)
    uri = f"sqlite:///{run_dir / 'mlruns' / 'mlflow.db'}"
    force = False
    if args.order == "history" and args.first_store:
        # As a nightly retrain: the store holds the last run, whose training times order the
        # grid's submissions (longest first); --force so that it trains again, not reuses.
        uri, force = args.first_store, True
    else:
        args.first_store = uri
    load_before = list(os.getloadavg())
    cpu_before, stall_before = _cpu_seconds(), _cpu_stall_s()
    started = time.perf_counter()
    state = pipeline(profile=args.profile, only=args.only, workers=workers, tracking_uri=uri,
                     data_dir=str(data_dir), work_dir=str(run_dir / "checkpoints"),
                     force=force, return_state=True)
    wall = time.perf_counter() - started
    cpu_s, stall_after = _cpu_seconds() - cpu_before, _cpu_stall_s()
    results = state.result()  # raises if the run failed
    rows = [row for task_rows in results.values() for row in task_rows]
    timeline = read_timeline(str(state.state_details.flow_run_id), expected_tasks=len(rows))
    configs = []
    for row in rows:
        start, end, task_state = timeline["tasks"].get(f"train-{row.task}-{row.config}",
                                                       (None, None, None))
        task_wall = end - start if start is not None and end is not None else None
        configs.append({
            "experiment": row.task, "config": row.config, "seconds": round(row.seconds, 2),
            "task_wall_s": None if task_wall is None else round(task_wall, 2),
            "task_overhead_s": None if task_wall is None else round(task_wall - row.seconds, 2),
            "task_state": task_state, "device": row.device,
            "start_offset_s": None if start is None else round(start - timeline["grid"][0], 2),
        })
    starts = [v[0] for v in timeline["tasks"].values() if v[0] is not None]
    ends = [v[1] for v in timeline["tasks"].values() if v[1] is not None]
    g0, g1 = timeline["grid"]
    p0, p1 = timeline["pipeline"]
    phases = {
        "pipeline_flow_s": _diff(p0, p1),
        "prepare_data_s": _diff(*timeline["prepare"]) if timeline["prepare"] else None,
        # prepare end -> grid start: the task runner and, with workers, the mlflow server start
        "before_grid_s": _diff(timeline["prepare"][1] if timeline["prepare"] else p0, g0),
        # grid start -> first training: parent runs; with workers, the LocalCluster starts here
        "grid_to_first_train_s": _diff(g0, min(starts, default=None)),
        "training_span_s": _diff(min(starts, default=None), max(ends, default=None)),
        # last training end -> grid end: champion decisions, reports, parents, cluster close
        "last_train_to_grid_end_s": _diff(max(ends, default=None), g1),
        # grid end -> pipeline end: mlflow server stop, the pipeline summary run
        "after_grid_s": _diff(g1, p1),
    }
    overheads = [c["task_overhead_s"] for c in configs if c["task_overhead_s"] is not None]
    return {
        "workers": workers, "wall_s": round(wall, 1), "phases": phases,
        "training_seconds_sum": round(sum(c["seconds"] for c in configs), 1),
        "task_overhead_s": {
            "mean": _round(statistics.fmean(overheads)) if overheads else None,
            "median": _round(statistics.median(overheads)) if overheads else None,
            "max": _round(max(overheads)) if overheads else None,
            "sum": _round(sum(overheads)) if overheads else None,
        },
        "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
        # CPU seconds of this process and its reaped children (Dask workers, mlflow server)
        # during the run; cores_used = cpu_s / wall_s: ~1 for one worker, ~2 for two when
        # nothing else competes for the cores
        "cpu_s": round(cpu_s, 1), "cores_used": round(cpu_s / wall, 2),
        # /proc/pressure/cpu "some": seconds in which runnable tasks waited for a CPU
        "cpu_pressure_stall_s": None if stall_before is None or stall_after is None
        else round(stall_after - stall_before, 1),
        "configurations": configs,
    }


def schedule_analysis(runs: list[dict]) -> dict | None:
    """Where a shortfall from N x comes from: the grid's order (a long configuration submitted
    late), the workers slowing each other down, or costs outside training."""
    base = next((r for r in runs if r["workers"] == 1), None)
    if base is None:
        return None
    seconds = [c["seconds"] for c in base["configurations"]]  # submission order
    out = {}
    for r in runs:
        n = r["workers"]
        if n == 1:
            continue
        fifo, lpt = list_schedule(seconds, n), list_schedule(sorted(seconds, reverse=True), n)
        slowdown = r["training_seconds_sum"] / base["training_seconds_sum"]
        out[str(n)] = {
            "training_span_if_no_slowdown_s": round(fifo, 1),
            "training_span_longest_first_s": round(lpt, 1),
            "best_speedup_submission_order": round(sum(seconds) / fifo, 3),
            "best_speedup_longest_first": round(sum(seconds) / lpt, 3),
            # > 1: the same configuration trained slower beside another one (shared cores,
            # memory bandwidth, the flow process and servers, other load on the machine)
            "per_configuration_slowdown": round(slowdown, 3),
            "training_span_measured_s": r["phases"]["training_span_s"],
            "outside_training_s": round(r["wall_s"] - (r["phases"]["training_span_s"] or 0), 1),
            "outside_training_1_worker_s": round(
                base["wall_s"] - (base["phases"]["training_span_s"] or 0), 1),
        }
    return out


def _cpu_seconds() -> float:
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _cpu_stall_s() -> float | None:
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def _diff(a, b):
    return None if a is None or b is None else round(b - a, 2)


def _round(x, nd=2):
    return None if x is None else round(x, nd)


def parallel_ceiling(processes: int) -> dict:
    from benchmarks.parallel_ceiling import measure

    return measure(processes)


def fixed_costs(root: Path, workers: int = 2) -> dict:
    """The LocalCluster and the mlflow server of a --workers run, each timed on its own."""
    from flows.runners import shared_tracking, task_runner

    out = {}
    runner = task_runner(workers)
    t0 = time.perf_counter()
    runner.__enter__()
    runner.client  # noqa: B018  (prefect-dask starts the cluster on first use of its client)
    t1 = time.perf_counter()
    runner.__exit__(None, None, None)
    t2 = time.perf_counter()
    out["local_cluster_start_s"] = round(t1 - t0, 2)
    out["local_cluster_close_s"] = round(t2 - t1, 2)
    store = root / "fixed-costs" / "mlruns"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    t0 = time.perf_counter()
    with shared_tracking(uri, root / "fixed-costs" / "logs", many_writers=True) as url:
        t1 = time.perf_counter()
        assert url.startswith("http://"), url
    t2 = time.perf_counter()
    out["mlflow_server_start_s"] = round(t1 - t0, 2)  # schema on a fresh store + healthy
    out["mlflow_server_stop_s"] = round(t2 - t1, 2)
    out["workers"] = workers
    return out


# --- table -----------------------------------------------------------------------------------
def print_table(payload: dict) -> None:
    runs = payload["runs"]
    ns = [r["workers"] for r in runs]
    by = {r["workers"]: {(c["experiment"], c["config"]): c for c in r["configurations"]}
          for r in runs}
    keys = [(c["experiment"], c["config"]) for c in runs[0]["configurations"]]
    head = f"{'experiment':21} {'configuration':20}" + "".join(
        f" {'train s ' + str(n) + 'w':>10} {'task s ' + str(n) + 'w':>9} {'over s':>7}"
        for n in ns)
    print(f"# {payload['profile']} profile"
          + (f" (only {', '.join(payload['only'])})" if payload["only"] else "")
          + f", {payload['machine']['device_name']}, {payload['machine']['cpu_count']} cores")
    print(head)
    for key in keys:
        line = f"{key[0]:21} {key[1]:20}"
        for n in ns:
            c = by[n].get(key, {})
            line += (f" {c.get('seconds', float('nan')):10.1f} "
                     f"{_num(c.get('task_wall_s')):>9} {_num(c.get('task_overhead_s')):>7}")
        print(line)
    print()
    print(f"{'workers':>7} {'wall s':>8} {'train span s':>12} {'sum train s':>11} "
          f"{'before grid s':>13} {'grid->1st train s':>17} {'after train s':>13} "
          f"{'cores used':>10} {'load before/after':>18}")
    for r in runs:
        ph = r["phases"]
        after = (ph["last_train_to_grid_end_s"] or 0) + (ph["after_grid_s"] or 0)
        print(f"{r['workers']:7d} {r['wall_s']:8.1f} {_num(ph['training_span_s']):>12} "
              f"{r['training_seconds_sum']:11.1f} {_num(ph['before_grid_s']):>13} "
              f"{_num(ph['grid_to_first_train_s']):>17} {after:13.1f} {r['cores_used']:10.2f} "
              f"{r['load_average_before'][0]:8.2f}/{r['load_average_after'][0]:.2f}")
    for key, value in payload.get("speedup_by_workers", {}).items():
        print(f"speedup {key} workers: {value['wall']:.2f}x wall, "
              f"{value['training_span']:.2f}x training span")
    for n, a in (payload.get("schedule_analysis") or {}).items():
        print(f"{n} workers, from the 1-worker times: best {a['best_speedup_submission_order']:.2f}x "
              f"in submission order ({a['training_span_if_no_slowdown_s']:.0f} s span), "
              f"{a['best_speedup_longest_first']:.2f}x longest first; each configuration "
              f"trained {a['per_configuration_slowdown']:.2f}x slower beside another; "
              f"{a['outside_training_s']:.0f} s outside training "
              f"({a['outside_training_1_worker_s']:.0f} s with 1 worker)")
    ceiling = payload.get("parallel_ceiling")
    if ceiling:
        print(f"this machine, {ceiling['processes']} processes of the same training at once: "
              f"each {ceiling['slowdown_beside_others']:.2f}x slower than alone, a ceiling of "
              f"{ceiling['ceiling_speedup']:.2f}x")
    fc = payload.get("fixed_costs")
    if fc:
        print(f"fixed costs (timed alone): LocalCluster of {fc['workers']} start "
              f"{fc['local_cluster_start_s']:.1f} s + close {fc['local_cluster_close_s']:.1f} s; "
              f"mlflow server start {fc['mlflow_server_start_s']:.1f} s + stop "
              f"{fc['mlflow_server_stop_s']:.1f} s")
    for error in payload.get("errors", []):
        print(f"not computed: {error}")
    est = payload.get("full_profile_estimate")
    if est:
        print(f"full profile estimate ({est['configurations']} configurations, "
              f"{est['training_seconds_serial'] / 3600:.1f} h of training on this CPU):")
        for n, e in est["wall_time_by_workers"].items():
            print(f"  {n:>2} workers: {e['hours_submission_order']:.2f} h in submission order, "
                  f"{e['wall_s_longest_first'] / 3600:.2f} h longest first, bound "
                  f"{e['lower_bound_s'] / 3600:.2f} h")


def _num(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def analyse(runs: list[dict], root: Path, manifests: dict, args) -> dict:
    """Speedups, fixed costs, the schedule analysis and the full-profile estimate; a step that
    fails is reported in `errors`, never loses the measured runs."""
    out: dict = {"errors": []}
    base = next((r for r in runs if r["workers"] == 1), None)
    out["speedup_by_workers"] = {
        str(r["workers"]): {
            "wall": round(base["wall_s"] / r["wall_s"], 3),
            "training_span": round(base["phases"]["training_span_s"]
                                   / r["phases"]["training_span_s"], 3),
        } for r in runs if base and r["workers"] > 1}
    out["speedup"] = out["speedup_by_workers"].get("2", {}).get("wall")
    steps = {
        "fixed_costs": lambda: fixed_costs(root),
        # What two processes get from this machine at all (benchmarks/parallel_ceiling.py)
        "parallel_ceiling": lambda: parallel_ceiling(2),
        "schedule_analysis": lambda: schedule_analysis(runs),
        "full_profile_estimate": lambda: full_estimate(base, runs, manifests, args),
    }
    for key, step in steps.items():
        try:
            out[key] = step()
        except Exception as err:  # noqa: BLE001  (keep the measurements, say what failed)
            out[key] = None
            out["errors"].append(f"{key}: {type(err).__name__}: {err}")
    return out


def full_estimate(base: dict | None, runs: list[dict], manifests: dict, args) -> dict | None:
    if base is None:
        return None
    measured = {(c["experiment"], c["config"]): c["seconds"] for c in base["configurations"]}
    overheads = [c["task_overhead_s"] for c in base["configurations"]
                 if c["task_overhead_s"] is not None]
    overhead = statistics.fmean(overheads) if overheads else 0.0
    two = next((r for r in runs if r["workers"] == 2), None)
    fixed_by_n = {1: 0.0}
    if two:  # what the 2-worker run spent outside training, beyond the 1-worker run's
        out1 = base["wall_s"] - base["phases"]["training_span_s"]
        out2 = two["wall_s"] - two["phases"]["training_span_s"]
        fixed_by_n[2] = max(0.0, out2 - out1)
    estimate = estimate_full(measured, data_facts(manifests), args.estimate_workers, overhead,
                             fixed_by_n, args.profile)
    estimate.update(method=ESTIMATE_METHOD, assumptions=ESTIMATE_ASSUMPTIONS,
                    task_overhead_s_per_configuration=_round(overhead),
                    extra_fixed_s_with_workers=_round(fixed_by_n.get(2)))
    return estimate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="default", help="smoke, default, full or a .toml path")
    p.add_argument("--only", nargs="+", default=None, help="only these experiments")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2],
                   help="worker counts to run, in this order (1 = one at a time in-process)")
    p.add_argument("--estimate-workers", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--order", choices=("history", "plan"), default="history",
                   help="history: runs after the first log to its store, so the grid submits "
                   "longest first by its times (a nightly retrain); plan: a fresh store each, "
                   "the grid's plan order (a first run)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", type=Path, help="default benchmarks/results/scale_out-<machine>.json")
    p.add_argument("--no-json", action="store_true", help="print only")
    p.add_argument("--commit", help="the commit measured, when running from an export")
    args = p.parse_args(argv)
    args.first_store = None

    mirror = os.environ.setdefault("RNN_DATA_MIRROR", str(REPO.parent / "shared" / "datasets"))
    root = Path(tempfile.mkdtemp(prefix="rnnflow-scale-out-"))
    load_start = list(os.getloadavg())
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    home = root / ".prefect"
    os.environ.update({  # before prefect is imported: its settings are read once
        "PREFECT_HOME": str(home), "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1"})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    server = start_prefect(free_port(), str(home), root / "logs")
    try:
        t0 = time.perf_counter()
        wait_healthy(server)
        prefect_server_s = time.perf_counter() - t0
        os.environ["PREFECT_API_URL"] = server.api_url
        import torch

        torch.set_num_threads(1)
        from flows.pipeline import datasets_needed
        from flows.prepare import prepare_data
        from flows.profiles import load_profile

        chosen = load_profile(args.profile, only=args.only)
        names = list(args.only or chosen.experiments)
        configs = {name: chosen.config(name) for name in names}
        data_dir = root / "data"
        t0 = time.perf_counter()
        manifests = prepare_data(datasets=datasets_needed(names, configs),
                                 data_dir=str(data_dir), **chosen.data)
        prepare_s = time.perf_counter() - t0
        info = machine_info()
        path = None if args.no_json else (
            args.json or REPO / "benchmarks" / "results" / f"scale_out-{machine_tag(info)}.json")
        payload = {
            "benchmark": "scale_out", "complete": False, "machine": info,
            "code": code_version(args.commit), "profile": args.profile, "only": args.only,
            "mirror": mirror,
            "setup": {
                "prefect": "a Prefect server on 127.0.0.1 started by the benchmark "
                           f"(healthy in {prefect_server_s:.1f} s), PREFECT_API_URL set for "
                           "every process",
                "mlflow": "a fresh SQLite store per run; with workers the pipeline starts an "
                          "mlflow server in front of it (flows.runners.shared_tracking)",
                "data": f"prepared once before the runs in {prepare_s:.1f} s; each run's "
                        "prepare-data step is then cached",
                "torch_threads": "1 per configuration (the profile's train.torch_threads)",
                "order": args.workers,
                "submission_order": {
                    "history": "runs after the first log to the first run's store with force: "
                               "the grid submits longest first by the last logged training "
                               "times, as a nightly retrain does",
                    "plan": "a fresh store per run: the grid's plan order, as a first run"
                }[args.order],
            },
            "speedup": None, "goal": "speedup >= 1.7 with 2 workers on 2 cores", "runs": [],
        }
        info.update(started=started, load_average_start=load_start)
        runs = payload["runs"]
        for n in args.workers:
            print(f"--- {args.profile}: {n} worker(s), load {os.getloadavg()[0]:.2f}", flush=True)
            runs.append(run_once(n, args, root, data_dir))
            print(f"--- {n} worker(s): {runs[-1]['wall_s']:.1f} s", flush=True)
            if path:  # what is measured is kept even if a later step fails
                write_json(path, payload)
        payload.update(analyse(runs, root, manifests, args))
        info["load_average_end"] = list(os.getloadavg())
        payload["complete"] = True
        try:
            print_table(payload)
        except Exception as err:  # noqa: BLE001  (the JSON below still has everything)
            print(f"table not printed: {type(err).__name__}: {err}")
        if path:
            write_json(path, payload)
            print(f"wrote {path}")
    finally:
        if "prefect" in sys.modules:  # send queued run logs before their server goes
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        stop_group(server.process)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")


if __name__ == "__main__":
    main()
