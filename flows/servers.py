"""The two local servers behind `make ui`: Prefect's API + UI and MLflow's tracking server + UI.

Both bind to 127.0.0.1 (unless told otherwise) and keep their state in the project:

    Prefect   PREFECT_HOME=.prefect (its SQLite database lives there)
    MLflow    backend store sqlite:///<project>/mlruns/mlflow.db (or any URI given, e.g. a
              postgresql:// one, passed through unchanged); artifacts in <project>/mlruns/artifacts

Each server runs in its own process group and is stopped by signalling the whole group
(SIGINT, then SIGTERM, then SIGKILL): a plain SIGTERM to the MLflow parent once left worker
children behind (../shared/STACK.md).

They hold under faults:
- **Foreign Host headers are refused** (DNS rebinding: a web page that makes a browser talk to
  127.0.0.1 under its own name). MLflow gets `--allowed-hosts` (its security middleware answers
  403); Prefect has no such setting, so its app is served here wrapped in Starlette's
  `TrustedHostMiddleware` (400), the way `prefect server start` serves it otherwise
  (`python -m flows.servers prefect ...`). Allowed: 127.0.0.1, localhost, the bound host and
  any `allowed_hosts` given (the names clients use when the servers leave 127.0.0.1).
- **They die with their parent.** A watchdog process (`python -m flows.servers watchdog`) holds
  the read end of a pipe from the parent and the list of server groups; when the parent dies,
  even by SIGKILL, the pipe reaches end-of-file and the watchdog stops every group it watches.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::")  # bind every interface
AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"  # "user:password" Prefect's API then requires


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


def host_names(host: str = HOST, extra: Sequence[str] = ()) -> list[str]:
    """The host names (no port) a server bound to `host` answers to: loopback names, the host
    itself unless it is a wildcard, and `extra` (e.g. the public DNS name)."""
    names = ["127.0.0.1", "localhost"]
    if host not in WILDCARD:
        names.append(host)
    names += list(extra)
    return list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))


def mlflow_allowed_hosts(host: str, port: int, extra: Sequence[str] = ()) -> str:
    """MLflow's `--allowed-hosts` value: each name bare and with `:port` (it matches the whole
    Host header)."""
    names = host_names(host, extra)
    return ",".join([*names, *(f"{n}:{port}" for n in names)])


def exposure_problems(host: str, auth: bool, env: dict[str, str] | None = None) -> list[str]:
    """Why servers bound to `host` must not start as asked ([] = fine). Anything beyond
    loopback needs authentication: MLflow's basic-auth app and Prefect's API auth string."""
    env = os.environ if env is None else env
    problems = []
    if host not in LOOPBACK and not auth:
        problems.append(f"--host {host} leaves 127.0.0.1 without authentication; pass --auth "
                        "(MLflow basic-auth, Prefect API auth) or put an authenticating proxy "
                        "in front and keep --host 127.0.0.1 (README: Servers)")
    if auth:
        if not env.get(AUTH_ENV):
            problems.append(f"--auth needs {AUTH_ENV}=user:password for Prefect's API (clients "
                            "set PREFECT_API_AUTH_STRING to the same value)")
        if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
            problems.append("--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (MLflow's basic-auth "
                            "app signs its CSRF tokens with it)")
        if not (env.get("MLFLOW_AUTH_ADMIN_PASSWORD") or env.get("MLFLOW_AUTH_CONFIG_PATH")):
            problems.append("--auth needs MLFLOW_AUTH_ADMIN_PASSWORD (the first admin's "
                            "password) or MLFLOW_AUTH_CONFIG_PATH (your own basic_auth.ini)")
        try:
            import flask_wtf  # noqa: F401  (what MLflow's basic-auth app imports)
        except ImportError:
            problems.append("--auth needs MLflow's basic-auth app: pip install "
                            "'mlflow[auth]==3.17.2' (Flask-WTF)")
    return problems


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


def start_prefect(port: int, prefect_home: str, log_dir: Path, host: str = HOST,
                  allowed_hosts: Sequence[str] = ()) -> Server:
    """Prefect's API + UI on host:port with PREFECT_HOME=prefect_home (not waited on), refusing
    Host headers other than `host_names(host, allowed_hosts)`."""
    Path(prefect_home).mkdir(parents=True, exist_ok=True)
    names = host_names(host, allowed_hosts)
    ui_host = host if host not in WILDCARD else names[-1]
    env = {**os.environ, "PREFECT_HOME": prefect_home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://{ui_host}:{port}/api"}
    env.pop("PREFECT_API_URL", None)  # the server must not try to reach another server
    cmd = [sys.executable, "-m", "flows.servers", "prefect", "--host", host, "--port", str(port),
           "--allowed-hosts", ",".join(names)]
    url = f"http://{_url_host(host)}:{port}"
    return Server("prefect", url, f"{url}/api/health", _spawn("prefect", cmd, env,
                  log_dir / "prefect-server.log"), log_dir / "prefect-server.log")


def start_mlflow(port: int, backend_store_uri: str, artifacts: str, log_dir: Path,
                 host: str = HOST, allowed_hosts: Sequence[str] = (),
                 app_name: str | None = None) -> Server:
    """`mlflow server` on host:port over the given store, artifacts served from `artifacts`,
    refusing foreign Host headers; `app_name="basic-auth"` puts MLflow's login in front.

    A SQLite store is created / migrated first, under the store's lock, so the server and
    processes writing the file directly never race through the schema migration.
    """
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from tasks.tracking.store import ensure_store

        ensure_store(backend_store_uri)
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [_bin("mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts,
           "--allowed-hosts", mlflow_allowed_hosts(host, port, allowed_hosts)]
    if app_name:
        cmd += ["--app-name", app_name]
    url = f"http://{_url_host(host)}:{port}"
    return Server("mlflow", url, f"{url}/health", _spawn("mlflow", cmd, env,
                  log_dir / "mlflow-server.log"), log_dir / "mlflow-server.log")


def _url_host(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return HOST if host in WILDCARD else (f"[{host}]" if ":" in host else host)


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


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid` (Linux: /proc; elsewhere: [pgid]
    while the group can still be signalled)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_pgid(pgid: int, grace: float = 15.0, term_grace: float = 5.0) -> None:
    """`stop_group` for a group whose leader is not our child (the watchdog's case)."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 5)):
        if not group_members(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.2)


class Watchdog:
    """A process that stops the watched server groups when this one dies (pipe end-of-file).

    Started in its own session, so Ctrl-C in the terminal reaches only the parent, which stops
    the servers itself and then tells the watchdog to forget them.
    """

    def __init__(self, log: Path | None = None):
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.servers", "watchdog"], stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log:
                out.close()

    def _say(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.process.stdin.write(f"{line}\n".encode())
            self.process.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._say(f"watch {pgid}")

    def forget(self, pgid: int) -> None:
        self._say(f"forget {pgid}")

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _watchdog_main() -> None:
    """Read `watch PGID` / `forget PGID` lines; at end of input stop what is still watched."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    watched: list[int] = []
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        if verb == "watch" and arg.isdigit():
            watched.append(int(arg))
        elif verb == "forget" and arg.isdigit() and int(arg) in watched:
            watched.remove(int(arg))
    for pgid in reversed(watched):
        print(f"watchdog: parent gone, stopping process group {pgid}", flush=True)
        stop_pgid(pgid)


def _prefect_main(argv: list[str]) -> None:
    """Serve Prefect's API + UI (and its services) as `prefect server start` does, behind a
    Host header check."""
    import argparse

    import uvicorn
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    parser = argparse.ArgumentParser(prog="python -m flows.servers prefect")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=PREFECT_PORT)
    parser.add_argument("--allowed-hosts", default=",".join(host_names()))
    args = parser.parse_args(argv)

    import prefect.settings
    from prefect.server.api.server import create_app

    settings = prefect.settings.get_current_settings()
    app = TrustedHostMiddleware(create_app(final=True),
                                allowed_hosts=args.allowed_hosts.split(","), www_redirect=False)
    print(f"Prefect server on http://{_url_host(args.host)}:{args.port} (Host: "
          f"{args.allowed_hosts})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port,
                timeout_keep_alive=settings.server.api.keepalive_timeout,
                log_level=settings.server.logging_level.lower())


@contextlib.contextmanager
def local_servers(
    project_dir: Path | None = None,
    prefect_port: int = PREFECT_PORT,
    mlflow_port: int = MLFLOW_PORT,
    backend_store_uri: str | None = None,
    prefect_home: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 120.0,
    host: str = HOST,
    allowed_hosts: Sequence[str] = (),
    mlflow_app_name: str | None = None,
) -> Iterator[tuple[Server, Server]]:
    """Start both servers (port 0 = a free one), wait until healthy, always stop both groups;
    a watchdog stops them too if this process dies without getting the chance."""
    project_dir = project_dir or Path.cwd()
    stores = project_stores(project_dir, backend_store_uri)
    log_dir = log_dir or Path(prefect_home or stores["prefect_home"]) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    watchdog = Watchdog(log_dir / "watchdog.log")
    started: list[Server] = []
    try:
        started.append(start_prefect(prefect_port or free_port(),
                                     prefect_home or stores["prefect_home"], log_dir, host,
                                     allowed_hosts))
        watchdog.watch(started[-1].process.pid)
        started.append(start_mlflow(mlflow_port or free_port(), stores["backend_store_uri"],
                                    stores["artifacts"], log_dir, host, allowed_hosts,
                                    mlflow_app_name))
        watchdog.watch(started[-1].process.pid)
        for server in started:  # both start in parallel; wait for each
            wait_healthy(server, timeout)
        yield started[0], started[1]
    finally:
        for server in reversed(started):
            stop_group(server.process)
            watchdog.forget(server.process.pid)
        watchdog.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["watchdog"]:
        _watchdog_main()
    elif sys.argv[1:2] == ["prefect"]:
        _prefect_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m flows.servers {watchdog | prefect --host H --port P "
                 "--allowed-hosts a,b}")
