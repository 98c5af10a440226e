"""Local servers: the project's stores, stopping a whole process group, `rnnflow serve` refusing
to start without a Prefect server; and holding under faults: `rnnflow ui` refuses to leave
127.0.0.1 without authentication, both servers refuse foreign Host headers, and they stop when
`rnnflow ui` is killed with SIGKILL (the watchdog)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.servers import free_port, project_stores, stop_group


def test_stores_default_to_the_project_and_pass_other_uris_unchanged(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    stores = project_stores(tmp_path)
    assert stores["backend_store_uri"] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert stores["artifacts"] == str(tmp_path / "mlruns" / "artifacts")  # beside the database
    assert stores["prefect_home"] == str(tmp_path / ".prefect")
    pg = "postgresql://rnn:secret@db.example:5432/mlflow?sslmode=require"
    assert project_stores(tmp_path, pg)["backend_store_uri"] == pg
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", pg)
    assert project_stores(tmp_path)["backend_store_uri"] == pg


def test_stop_group_also_stops_children_that_ignore_signals(tmp_path):
    # A parent that ignores SIGINT and SIGTERM, with a child doing the same, in a new session.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); time.sleep(300)'])\n"
        f"open({str(tmp_path / 'child')!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    pid_file = tmp_path / "child"
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    started = time.monotonic()
    stop_group(parent, grace=0.5, term_grace=0.5)
    assert parent.poll() is not None
    assert time.monotonic() - started < 5
    for _ in range(100):  # the orphaned child is reaped by init shortly after SIGKILL
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child} survived stop_group")


def test_serve_refuses_without_a_prefect_server():
    url = f"http://127.0.0.1:{free_port()}/api"
    result = CliRunner().invoke(app, ["serve", "--api-url", url])
    assert result.exit_code == 2
    assert "no Prefect server answers" in result.output and "make ui" in result.output


# --- holding under faults: exposure, Host headers, dying with the parent ------------------------
def test_ui_refuses_to_leave_loopback_without_auth(monkeypatch):
    from flows.servers import AUTH_ENV, exposure_problems

    result = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--auth" in result.output
    monkeypatch.delenv(AUTH_ENV, raising=False)
    problems = " ".join(exposure_problems("0.0.0.0", auth=True))
    assert AUTH_ENV in problems  # Prefect's API auth must be set
    assert exposure_problems("127.0.0.1", auth=False) == []


def test_allowed_host_names_cover_loopback_the_bound_host_and_extra_names():
    from flows.servers import host_names, mlflow_allowed_hosts

    assert host_names() == ["127.0.0.1", "localhost"]
    assert host_names("0.0.0.0", ["MLops.example.org"]) == ["127.0.0.1", "localhost",
                                                           "mlops.example.org"]
    assert host_names("10.0.0.5") == ["127.0.0.1", "localhost", "10.0.0.5"]
    allowed = mlflow_allowed_hosts("127.0.0.1", 5001).split(",")
    assert {"127.0.0.1", "127.0.0.1:5001", "localhost:5001"} <= set(allowed)
    assert not any("*" in h for h in allowed)  # no wildcard, no private-network patterns


_PARENT = """
import subprocess, sys, time
from flows.servers import Watchdog
dog = Watchdog()
group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
dog.watch(group.pid)
open(sys.argv[1], "w").write(f"{group.pid} {dog.process.pid}")
time.sleep(300)
"""


def test_watchdog_stops_the_watched_groups_when_the_parent_is_killed(tmp_path):
    from flows.servers import group_members

    pids = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(pids)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None, "parent never started"
            time.sleep(0.05)
        group, dog = map(int, pids.read_text().split())
        assert group_members(group) == [group]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while group_members(group) or group_members(dog):
            assert time.monotonic() < deadline, "the watched group outlived its parent"
            time.sleep(0.1)
    finally:
        stop_group(parent, grace=0.5, term_grace=0.5)


def _get(url: str, host: str | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow  # both real servers: ~15 s to start on 2 cores
def test_rnnflow_ui_refuses_foreign_hosts_and_dies_with_its_parent(tmp_path):
    import re
    from pathlib import Path

    from flows.servers import group_members

    pf_port, ml_port = free_port(), free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    with log.open("wb") as out:
        ui = subprocess.Popen([str(Path(sys.executable).parent / "rnnflow"), "ui",
                               "--prefect-port", str(pf_port), "--mlflow-port", str(ml_port)],
                              cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    groups: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len(groups) < 2:
            assert time.monotonic() < deadline and ui.poll() is None, log.read_text()[-3000:]
            groups = [int(p) for p in re.findall(r"pid (\d+)", log.read_text())]
            time.sleep(0.2)
        prefect = f"http://127.0.0.1:{pf_port}"
        mlflow = f"http://127.0.0.1:{ml_port}"
        assert _get(f"{prefect}/api/health") == 200 and _get(f"{mlflow}/health") == 200
        search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
        for url, port in ((f"{prefect}/api/version", pf_port), (search, ml_port)):
            evil = _get(url, f"evil.example.com:{port}")
            assert evil in (400, 403), (url, evil)  # a DNS-rebinding page's requests
            assert _get(url, f"localhost:{port}") == 200, url
        assert (tmp_path / "mlruns" / "mlflow.db").exists()  # the project's stores, in cwd
        os.kill(ui.pid, signal.SIGKILL)  # no chance to clean up: the watchdog must
        ui.wait()
        deadline = time.monotonic() + 40
        while any(group_members(g) for g in groups):
            assert time.monotonic() < deadline, f"servers survived rnnflow ui: {groups}"
            time.sleep(0.2)
        for url in (f"{prefect}/api/health", f"{mlflow}/health"):
            with pytest.raises(OSError):
                _get(url)
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        stop_group(ui, grace=0.5, term_grace=0.5)
