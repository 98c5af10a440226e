"""A wheel install runs: the profiles and sources.toml ship as package data, so `rnnflow prepare`
and `rnnflow run` work from a virtual environment that has the wheel, not the checkout, from a
folder that is not the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEELS = Path("/opt/wheels")
UV = Path(sys.executable).with_name("uv")
PACKAGE_DATA = {"flows/profiles/smoke.toml", "flows/profiles/default.toml",
                "flows/profiles/full.toml", "rnn_core/datasets/sources.toml"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the sources (no build/ left in the checkout)."""
    if not UV.exists():
        pytest.skip(f"needs uv beside {sys.executable}")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("rnn_core", "tasks", "flows"):
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = src / "dist"
    subprocess.run([str(UV), "build", "-q", "--wheel", "--no-build-isolation", "--python",
                    sys.executable, "--out-dir", str(dist), str(src)], check=True, timeout=300)
    [built] = dist.glob("rnnflow-*.whl")
    return built


def test_the_wheel_carries_profiles_and_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PACKAGE_DATA <= names
    assert not [n for n in names if n.startswith(("tests/", "data/"))]


@pytest.mark.slow
def test_a_wheel_install_prepares_and_runs(wheel, mirror_dir, tmp_path):
    if not WHEELS.is_dir():
        pytest.skip(f"needs the torch wheel in {WHEELS}")
    venv = tmp_path / "venv"
    # Bytecode is written this time (the fresh environment has none): each later process then
    # imports prefect, mlflow and torch in seconds instead of recompiling them (STACK.md).
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    started = time.perf_counter()
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], env=env,
                   check=True, timeout=120)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "--find-links", str(WHEELS), str(wheel)], env=env, check=True, timeout=900)
    print(f"\nwheel installed with its dependencies in {time.perf_counter() - started:.1f} s")
    work = tmp_path / "work"  # not the repository: nothing is found through the checkout
    work.mkdir()
    run_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               "RNN_DATA_MIRROR": str(mirror_dir), "PREFECT_HOME": str(work / ".prefect"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               "OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                            "import rnn_core, flows; print(rnn_core.__file__, flows.__file__)"],
                           cwd=work, env=run_env, capture_output=True, text=True, check=True)
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout

    def rnnflow(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(venv / "bin" / "rnnflow"), *args], cwd=work, env=run_env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    rnnflow("prepare", "-d", "metro")
    assert (work / "data" / "processed" / "metro" / "manifest.json").is_file()
    done = rnnflow("run", "--profile", "smoke", "--only", "metro_classification",
                   "--tracking-uri", f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    assert "gru-10st-inout-tod" in done.stdout
