"""A CLI run that can be killed: nothing left running, nothing left RUNNING, resumable.

`rnnflow run` is a small supervisor around the real run (the same command in a child process):

- the child gets STOP_SIGNAL when the supervisor dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
  or when the supervisor gets SIGTERM; on it or Ctrl-C the child stops what it started (temporary Prefect server, Dask workers, MLflow
  server) and exits at once (`exit_on_signals`);
- the supervisor is a child subreaper: whatever the child leaves behind (it was killed itself)
  is re-parented to the supervisor, which stops it before exiting;
- each pipeline flow run writes a run record (`$PREFECT_HOME/rnnflow-runs/<id>.json`: pid,
  pipeline id, tracking URI) and removes it when it ends; a record whose process is gone is a
  killed run: the next start marks its flow run Crashed and its MLflow runs KILLED, and
  `rnnflow run --resume` continues it (same pipeline id: finished configurations are reused,
  the interrupted one resumes from its checkpoint).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUPERVISED = "RNNFLOW_SUPERVISED"  # set in the child: it is the real run
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


# The signal that stops the real run at once. Not SIGTERM: inside a flow Prefect owns SIGTERM
# and, on it, first waits for the configuration training in a worker thread to finish.
STOP_SIGNAL = signal.SIGUSR1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(PR_SET_PDEATHSIG, STOP_SIGNAL)


def reap_descendants(grace_s: float = 5.0) -> None:
    """Stop every process below this one (SIGTERM, then SIGKILL after `grace_s`)."""
    import psutil

    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def supervise(argv: list[str]) -> int:
    """Run `argv` (the real run) as a child that dies with this process; returns its exit code."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(argv, env={**os.environ, SUPERVISED: "1"},
                             preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads yet)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(STOP_SIGNAL if signum == signal.SIGTERM else signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    finally:
        reap_descendants()


def exit_on_signals() -> None:
    """In the real run: STOP_SIGNAL (the supervisor died or was told to stop) or Ctrl-C stop it
    at once.

    Unwinding through Prefect would first wait for the configuration training in a worker
    thread to finish (its task runner joins its threads); instead, everything this process
    started is stopped and it exits. Its run record stays: the next start marks the flow run
    Crashed and its MLflow runs KILLED, and `rnnflow run --resume` continues from the last
    checkpoints (written atomically, so the newest finished epoch is intact).
    """
    def handler(signum, _frame):
        sys.stderr.write(f"rnnflow run: stopped by signal {signum}; `rnnflow run --resume` "
                         "continues from the last checkpoints\n")
        sys.stderr.flush()
        reap_descendants(grace_s=3.0)
        os._exit(128 + signum)

    signal.signal(STOP_SIGNAL, handler)
    signal.signal(signal.SIGINT, handler)


# --- run records ---------------------------------------------------------------------------------


def _records_dir() -> Path:
    home = os.environ.get("PREFECT_HOME") or str(Path.cwd() / ".prefect")
    return Path(home) / "rnnflow-runs"


def record_run(flow_run_id: str, pipeline_id: str, tracking_uri: str, profile: str,
               only: list[str] | None = None) -> Path:
    """Note that this process runs `flow_run_id` (removed by `clear_record` when it ends)."""
    folder = _records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{flow_run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flow_run_id": flow_run_id, "pipeline_id": pipeline_id,
                               "pid": os.getpid(), "tracking_uri": tracking_uri,
                               "profile": profile, "only": only, "started": time.time()}))
    os.replace(tmp, path)
    return path


def clear_record(flow_run_id: str) -> None:
    (_records_dir() / f"{flow_run_id}.json").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killed_runs() -> list[dict[str, Any]]:
    """Records of runs whose process is gone, newest first."""
    records = []
    for path in _records_dir().glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(int(record["pid"])):
            records.append(record)
    return sorted(records, key=lambda r: r["started"], reverse=True)


def close_killed_runs() -> list[dict[str, Any]]:
    """Mark every killed run's flow run Crashed and its RUNNING MLflow runs KILLED; returns
    the records (kept: `--resume` continues the newest)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from tasks import tracking

    records = killed_runs()
    if not records:
        return []
    with get_client(sync_client=True) as client:
        for record in records:
            try:
                run = client.read_flow_run(record["flow_run_id"])
            except Exception:  # noqa: BLE001, S112  (another Prefect database: nothing to mark)
                continue
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(
                    message=f"process {record['pid']} is gone (killed); `rnnflow run "
                            "--resume` continues this run"), force=True)
            for sub in _subflow_runs(client, run.id):
                if sub.state is not None and not sub.state.is_final():
                    client.set_flow_run_state(sub.id, Crashed(message="parent run killed"),
                                              force=True)
    for record in records:
        tracking.close_running(tracking.configure(record["tracking_uri"]),
                               record["pipeline_id"], reason="its process was killed")
    return records


def _subflow_runs(client, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
