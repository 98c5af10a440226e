"""Helpers for the tests that drive real servers: serving processes, the Prefect CLI, waits.

Every process started here runs in its own process group (stopped with `stop_group`), from the
repository root, with one torch thread and the servers of the session's `local_stack` fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient

from flows.servers import stop_group

REPO = Path(__file__).resolve().parents[1]
UUID_RE = re.compile(r"UUID:\s*([0-9a-f-]{36})")


def stack_env(stack, home: Path, **extra: str) -> dict[str, str]:
    """Environment for a process that talks to the session's Prefect and MLflow servers."""
    env = {**os.environ, "PREFECT_API_URL": stack.prefect.api_url, "PREFECT_HOME": str(home),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
           "MLFLOW_TRACKING_URI": stack.mlflow.api_url, "OMP_NUM_THREADS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.update(extra)
    return env


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A background process in its own group, output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 300):
    """Run `prefect <args>` from the repo root; returns the CompletedProcess (text)."""
    exe = Path(sys.executable).parent / "prefect"
    return subprocess.run([str(exe), *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def mlflow_client(stack):
    """A client whose tracking AND registry URIs are the stack's server: earlier tests in the
    session may have pointed MLflow's global registry URI elsewhere."""
    from mlflow import MlflowClient

    url = stack.mlflow.api_url
    return MlflowClient(tracking_uri=url, registry_uri=url)


def client(api_url: str) -> SyncPrefectClient:
    return SyncPrefectClient(api=api_url)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None, every: float = 0.5):
    """Poll `predicate()` until it returns something truthy; fail with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{tail(log)}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail(log)}")


def tail(log: Path | None, lines: int = 60) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def deployment_or_none(api_url: str, name: str):
    from prefect.exceptions import ObjectNotFound

    with client(api_url) as c:
        try:
            return c.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def flow_run_state(api_url: str, flow_run_id: str) -> str | None:
    with client(api_url) as c:
        run = c.read_flow_run(flow_run_id)
        return run.state.type.value if run.state else None


__all__ = [
    "REPO",
    "UUID_RE",
    "client",
    "deployment_or_none",
    "flow_run_state",
    "mlflow_client",
    "prefect_cli",
    "stack_env",
    "start_process",
    "stop_group",
    "tail",
    "wait_for",
]
