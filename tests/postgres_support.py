"""A throwaway PostgreSQL server for tests and benchmarks: its own data folder, 127.0.0.1 on a
free port, trust authentication, fsync off, always stopped.

    with throwaway_postgres() as pg:  # pg.uri = postgresql+psycopg2://postgres@127.0.0.1:PORT/mlflow
        client = MlflowClient(pg.uri)

The binaries come from `$PG_BIN`, else PostgreSQL 15 (then any version) under
/usr/lib/postgresql/*/bin, else `initdb`/`pg_ctl` on PATH; `postgres_unavailable()` says why a
server cannot be started here (None when it can), so a test can skip with that reason.

PostgreSQL refuses to run as root. Run as root (CI containers), every server command goes
through `runuser -u postgres --` on a data folder owned by that user, made with mkdtemp under
the system temp folder (pytest's tmp_path is 0700 root: the `postgres` user cannot enter it).
Stopping is `pg_ctl stop -m immediate` (no checkpoint: the data is thrown away), then SIGKILL
to the postmaster pid recorded in postmaster.pid if it is still alive, then the folder is
removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # the system user that runs the server when we are root
HOST = "127.0.0.1"
DATABASE = "mlflow"
# Durability off: the store lives for one test; these make initdb and writes several times faster.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and createdb (PostgreSQL 15 preferred)."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += ["/usr/lib/postgresql/15/bin"]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in filter(None, candidates):
        path = Path(folder)
        if all((path / name).is_file() for name in ("initdb", "pg_ctl", "createdb", "postgres")):
            return path
    return None


def sqlalchemy_driver() -> str:
    """`psycopg` (3) when installed, else `psycopg2`: the driver named in `uri`."""
    import importlib.util

    return "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"


def _as_root() -> bool:
    return os.geteuid() == 0


def postgres_unavailable() -> str | None:
    """Why a throwaway server cannot be started on this machine, or None when it can."""
    if find_bin_dir() is None:
        return ("PostgreSQL binaries (initdb, pg_ctl, createdb, postgres) not found under $PG_BIN, "
                "/usr/lib/postgresql/*/bin or PATH")
    if _as_root():
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and no {SERVER_USER!r} system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and no `runuser` to start the server as another user"
    return None


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path  # mkdtemp folder: data/, sockets/, server.log
    port: int
    database: str = DATABASE
    user: str = SERVER_USER

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def libpq_uri(self) -> str:
        """The database as libpq (psql, psycopg2.connect) addresses it (trust auth)."""
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database}"

    @property
    def uri(self) -> str:
        """SQLAlchemy / MLflow URI of the database, naming the installed driver: SQLAlchemy 2.1
        maps a bare `postgresql://` to psycopg 3, which psycopg2-binary does not provide."""
        return self.libpq_uri.replace("postgresql://", f"postgresql+{sqlalchemy_driver()}://", 1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _command(server_bin: Path, *args: str) -> list[str]:
    """A server command, run as the `postgres` user when we are root."""
    cmd = [str(server_bin), *args]
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if _as_root() else cmd


def _run(cmd: list[str], what: str, timeout: float, server: PostgresServer | None = None):
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False, cwd="/")
    if done.returncode != 0:
        log = f"\n--- server log ---\n{server.log_tail()}" if server else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {' '.join(cmd)}\n"
                           f"{done.stdout}{done.stderr}{log}")
    return done


def start(timeout: float = 60.0, tries: int = 3) -> PostgresServer:
    """initdb a fresh cluster in a new temp folder, start it on a free 127.0.0.1 port (a port
    taken meanwhile is retried on another), create the `mlflow` database. Call `stop` after."""
    reason = postgres_unavailable()
    if reason:
        raise RuntimeError(reason)
    bin_dir = find_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="rnnflow-pg-"))
    server = PostgresServer(bin_dir, base, port=0)
    try:
        (base / "sockets").mkdir()
        if _as_root():
            info = pwd.getpwnam(SERVER_USER)
            for path in (base, base / "sockets"):
                os.chown(path, info.pw_uid, info.pw_gid)
        base.chmod(0o755)  # mkdtemp's 0700 would keep the server user out when we are root
        _run(_command(bin_dir / "initdb", "-D", str(server.data_dir), "-U", SERVER_USER,
                      "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"),
             "initdb", timeout)
        if _as_root():  # the log file must be writable by the server user
            server.log.touch()
            os.chown(server.log, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        for attempt in range(tries):
            server.port = _free_port()
            options = " ".join([f"-c listen_addresses={HOST}", f"-p {server.port}",
                                f"-k {base / 'sockets'}", "-c max_connections=50",
                                *(f"-c {s}" for s in FAST_SETTINGS)])
            try:
                _run(_command(bin_dir / "pg_ctl", "start", "-D", str(server.data_dir),
                              "-l", str(server.log), "-w", "-t", str(int(timeout)),
                              "-o", options), "pg_ctl start", timeout + 10, server)
                break
            except RuntimeError:
                if attempt == tries - 1 or "already in use" not in server.log_tail():
                    raise
        _run(_command(bin_dir / "createdb", "-h", HOST, "-p", str(server.port),
                      "-U", SERVER_USER, server.database), "createdb", timeout, server)
        return server
    except BaseException:
        stop(server)
        raise


def _postmaster_pid(server: PostgresServer) -> int | None:
    try:
        return int((server.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_our_postmaster(pid: int, server: PostgresServer) -> bool:
    """The pid still runs `postgres -D <our data dir>` (not a stale file's reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"postgres") and \
        str(server.data_dir).encode() in cmdline


def stop(server: PostgresServer, timeout: float = 30.0) -> None:
    """Stop the server at once (`pg_ctl stop -m immediate`), SIGKILL its postmaster if that did
    not work, and remove its folder. Safe on a half-started server and when called twice."""
    try:
        if _postmaster_pid(server) is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(_command(server.bin_dir / "pg_ctl", "stop", "-D", str(server.data_dir),
                              "-m", "immediate", "-w", "-t", str(int(timeout))),
                     "pg_ctl stop", timeout + 10, server)
        pid = _postmaster_pid(server)  # still there: pg_ctl failed or timed out
        if pid is not None and _is_our_postmaster(pid, server):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # the postmaster this server's start created
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
    finally:
        shutil.rmtree(server.base, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres(timeout: float = 60.0) -> Iterator[PostgresServer]:
    """A started server for the `with` block, always stopped and removed afterwards."""
    server = start(timeout)
    try:
        yield server
    finally:
        stop(server)


__all__ = ["PostgresServer", "find_bin_dir", "postgres_unavailable", "start", "stop",
           "throwaway_postgres"]
