"""Local servers without starting them: the project's stores, stopping a whole process group,
and `rnnflow serve` refusing to start without a Prefect server. (Real servers: the e2e tests.)"""

import os
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
