"""The two local servers behind `make ui`: Prefect's API + UI and MLflow's tracking server + UI.

Both bind to 127.0.0.1 and keep their state in the project:

    Prefect   PREFECT_HOME=.prefect (its SQLite database lives there)
    MLflow    backend store sqlite:///<project>/mlruns/mlflow.db (or any URI given, e.g. a
              postgresql:// one, passed through unchanged); artifacts in <project>/mlruns/artifacts

Each server runs in its own process group and is stopped by signalling the whole group
(SIGINT, then SIGTERM, then SIGKILL): a plain SIGTERM to the MLflow parent once left worker
children behind (../shared/STACK.md).

    with local_servers(prefect_port=0, mlflow_port=0) as (prefect, mlflow):   # 0 = a free port
        print(prefect.url, mlflow.url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000


@dataclass
class Server:
    name: str
    url: str  # base URL, e.g. http://127.0.0.1:4200
    health_url: str
    process: subprocess.Popen
    log: Path  # stdout + stderr of the server

    @property
    def api_url(self) -> str:
        """What clients are pointed at: PREFECT_API_URL for Prefect, the tracking URI for MLflow."""
        return f"{self.url}/api" if self.name == "prefect" else self.url


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def project_stores(project_dir: Path, backend_store_uri: str | None = None) -> dict[str, str]:
    """The project's Prefect home, MLflow backend store URI and MLflow artifacts folder."""
    project_dir = project_dir.resolve()
    mlruns = project_dir / "mlruns"
    uri = backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI")
    return {
        "prefect_home": os.environ.get("PREFECT_HOME") or str(project_dir / ".prefect"),
        "backend_store_uri": uri or f"sqlite:///{mlruns / 'mlflow.db'}",
        "artifacts": str(mlruns / "artifacts"),
    }


def _bin(name: str) -> str:
    """The console script installed next to this interpreter (the project's venv)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # start_new_session: its own process group, so stop() reaches every child it forks.
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_prefect(port: int, prefect_home: str, log_dir: Path) -> Server:
    """`prefect server start` on 127.0.0.1:port with PREFECT_HOME=prefect_home (not waited on)."""
    Path(prefect_home).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": prefect_home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api"}
    env.pop("PREFECT_API_URL", None)  # the server must not try to reach another server
    cmd = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    url = f"http://{HOST}:{port}"
    return Server("prefect", url, f"{url}/api/health", _spawn("prefect", cmd, env,
                  log_dir / "prefect-server.log"), log_dir / "prefect-server.log")


def start_mlflow(port: int, backend_store_uri: str, artifacts: str, log_dir: Path) -> Server:
    """`mlflow server` on 127.0.0.1:port over the given store, artifacts served from `artifacts`."""
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts]
    url = f"http://{HOST}:{port}"
    return Server("mlflow", url, f"{url}/health", _spawn("mlflow", cmd, env,
                  log_dir / "mlflow-server.log"), log_dir / "mlflow-server.log")


def wait_healthy(server: Server, timeout: float = 120.0) -> None:
    """Poll the health URL until it answers 200; a clear error with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited with {server.process.returncode}:"
                               f"\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(server.health_url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{server.name} server not healthy at {server.health_url} after "
                       f"{timeout:.0f} s:\n{_tail(server.log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_group(process: subprocess.Popen, grace: float = 15.0, term_grace: float = 5.0) -> None:
    """Stop a process and everything in its group: SIGINT (`grace` s to exit), then SIGTERM
    (`term_grace` s), then SIGKILL."""
    if process.poll() is not None:
        _kill_leftovers(process.pid)
        return
    stages = ((signal.SIGINT, grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 5.0))
    for sig, wait in stages:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    _kill_leftovers(process.pid)


def _kill_leftovers(pgid: int) -> None:
    """Children that outlived their parent (same group): give them SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def local_servers(
    project_dir: Path | None = None,
    prefect_port: int = PREFECT_PORT,
    mlflow_port: int = MLFLOW_PORT,
    backend_store_uri: str | None = None,
    prefect_home: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 120.0,
) -> Iterator[tuple[Server, Server]]:
    """Start both servers (port 0 = a free one), wait until healthy, always stop both groups."""
    project_dir = project_dir or Path.cwd()
    stores = project_stores(project_dir, backend_store_uri)
    log_dir = log_dir or Path(prefect_home or stores["prefect_home"]) / "logs"
    started: list[Server] = []
    try:
        started.append(start_prefect(prefect_port or free_port(),
                                     prefect_home or stores["prefect_home"], log_dir))
        started.append(start_mlflow(mlflow_port or free_port(), stores["backend_store_uri"],
                                    stores["artifacts"], log_dir))
        for server in started:  # both start in parallel; wait for each
            wait_healthy(server, timeout)
        yield started[0], started[1]
    finally:
        for server in reversed(started):
            stop_group(server.process)
