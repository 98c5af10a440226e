"""`kill -9` an `rnnflow run` mid-training, then `rnnflow run --resume`: the finished
configuration is not retrained, the killed one resumes after its last checkpointed epoch, no
Prefect or MLflow record stays RUNNING, no process or temp file is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rnn_core.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PROFILE = """
[pipeline]
experiments = ["metro_classification"]

[metro_classification]
cells = ["gru"]
features = ["in", "inout"]
stations = [10]
extra = []
backend_twins = []
batch_size = 32
batches_per_epoch = 30
max_eval_windows = 300
curve_windows = 16

[metro_classification.model]
hidden_size = 16

[metro_classification.train]
epochs = 6
"""


def _ours(home: str) -> list[psutil.Process]:
    """Processes started for this test (they carry its PREFECT_HOME)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT_HOME") == home and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_kill_9_then_resume_from_the_command_line(mirror_dir, tmp_path):
    from mlflow import MlflowClient

    profile = tmp_path / "resume.toml"
    profile.write_text(PROFILE)
    home = str(tmp_path / "prefect")
    env = {**os.environ, "RNN_DATA_MIRROR": str(mirror_dir), "PREFECT_HOME": home}
    env.pop("PREFECT_API_URL", None)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    work = tmp_path / "ck"
    cmd = [str(Path(sys.executable).with_name("rnnflow")), "run", "--data-dir",
           str(tmp_path / "data"), "--work-dir", str(work), "--tracking-uri", uri]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([*cmd, "--profile", str(profile)], stdout=log,
                             stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def checkpointed_epoch() -> int:
        found = list(work.glob("*/metro_classification/gru-10st-inout/last.pt"))
        try:
            return load_checkpoint(found[0])["epoch"] if found else 0
        except (OSError, RuntimeError, EOFError, KeyError):
            return 0

    deadline = time.monotonic() + 300
    while checkpointed_epoch() < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    killed_at = checkpointed_epoch()
    assert 2 <= killed_at < 6
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 60  # the real run unwinds and stops what it started
    while _ours(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ours(home), [p.cmdline() for p in _ours(home)]

    out = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Resuming pipeline run" in out.stdout
    assert not _ours(home)

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    children = [r for r in runs if r.data.tags.get("rnnflow.role") == "child"
                and r.info.status == "FINISHED"]
    by_config = {}
    for child in children:
        by_config.setdefault(child.data.tags["rnnflow.config"], []).append(child)
    assert sorted(by_config) == ["gru-10st-in", "gru-10st-inout"]
    assert all(len(v) == 1 for v in by_config.values())  # the finished one was not retrained
    resumed = by_config["gru-10st-inout"][0].data.metrics["resumed_from_epoch"]
    assert resumed == killed_at or resumed == killed_at + 1  # after its last checkpoint
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp"))

    # The runs' own Prefect database (read by a process with the run's PREFECT_HOME).
    script = ("import json; from prefect.client.orchestration import get_client\n"
              "with get_client(sync_client=True) as c:\n"
              "    print(json.dumps([[r.name, r.state.type.value] for r in c.read_flow_runs()]))")
    read = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    states = json.loads(read.stdout.strip().splitlines()[-1])
    assert states and "RUNNING" not in {s for _, s in states}, states
    assert "CRASHED" in {s for _, s in states}, states  # the killed attempt
