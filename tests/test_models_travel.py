"""Models that travel: the champions of a smoke store load and predict from raw input in a fresh
virtual environment that has torch, numpy and mlflow and has never seen this repository, and
`mlflow models serve` (run from that environment) answers raw headlines over HTTP.

The environment is real: `uv venv` + `uv pip install --find-links /opt/wheels torch==2.13.0
mlflow==3.17.2` (measured on the 2-core CI machine: ~16 s with a cold uv cache, ~1.5 s warm; the
torch wheel comes from /opt/wheels, the rest from PyPI or uv's cache). Its Python runs with -I
from a temporary folder, so neither the repository nor PYTHONPATH is on its path: every line of
rnn_core it runs comes from the model's own code/ folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving_support import HEADLINES, build_smoke_store, metro_day, metro_window

from flows.servers import stop_group

pytestmark = pytest.mark.slow
WHEELS = Path("/opt/wheels")
PINS = ("torch==2.13.0", "mlflow==3.17.2")


@pytest.fixture(scope="module")
def smoke_store(mirror_dir, tmp_path_factory):
    return build_smoke_store(tmp_path_factory.mktemp("smoke-store"), mirror_dir)


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A virtual environment with only torch, numpy and mlflow (and their dependencies)."""
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists() or not WHEELS.is_dir():
        pytest.skip(f"needs uv beside {sys.executable} and the torch wheel in {WHEELS}")
    venv = tmp_path_factory.mktemp("clean-env") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    started = time.perf_counter()
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], env=env,
                   check=True, timeout=120)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "--find-links", str(WHEELS), *PINS], env=env, check=True, timeout=600)
    print(f"\nclean environment ({' '.join(PINS)}) built in "
          f"{time.perf_counter() - started:.1f} s")
    return venv / "bin" / "python"


def _clean_env(uri: str, python: Path) -> dict[str, str]:
    """As if the clean environment were activated (its bin/ first: `mlflow models serve` execs
    uvicorn from there), pointed at the store."""
    keep = ("HOME", "LANG", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ},
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(python.parent.parent), "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


CLEAN_SCRIPT = textwrap.dedent('''
    import importlib.util, json, sys
    for name in ("rnn_core", "tasks", "flows", "prefect"):
        assert importlib.util.find_spec(name) is None, f"{name} importable: not a clean env"
    import mlflow, numpy as np, pandas as pd, torch
    torch.set_num_threads(1)
    request = json.loads(sys.argv[1])
    out = {}
    for task, (name, data, params) in request.items():
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        pred = model.predict(pd.DataFrame(data), params=params)
        out[task] = {"columns": list(pred.columns), "rows": len(pred),
                     "dtypes": {c: str(t) for c, t in pred.dtypes.items()},
                     "first": json.loads(pred.head(1).to_json(orient="records"))[0],
                     "rnn_core_from": sys.modules["rnn_core"].__file__,
                     "signature": model.metadata.signature.to_dict()["inputs"]}
    print("RESULT " + json.dumps(out))
''')


def test_champions_load_and_predict_raw_input_in_a_clean_environment(
        smoke_store, clean_python, tmp_path):
    models, stations = smoke_store.models, smoke_store.stations
    request = {
        "ag_news": (models["ag_news"], HEADLINES, None),
        "metro_classification": (models["metro_classification"], metro_window(), None),
        "metro_forecasting": (models["metro_forecasting"],
                              metro_day(stations["metro_forecasting"]), None),
        "char_generation": (models["char_generation"], {"prompt": ["We are going to "]},
                            {"length": 40, "temperature": 0.8, "seed": 1}),
    }
    script = tmp_path / "load_champions.py"
    script.write_text(CLEAN_SCRIPT)
    started = time.perf_counter()
    done = subprocess.run([str(clean_python), "-I", str(script), json.dumps(request)],
                          cwd=tmp_path, env=_clean_env(smoke_store.uri, clean_python),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"4 champions loaded and predicted in the clean env in "
          f"{time.perf_counter() - started:.1f} s")
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    for task, out in result.items():  # the library came with the model, not from the repo
        assert "/code/rnn_core/" in out["rnn_core_from"] and "/work/main" not in out[
            "rnn_core_from"], (task, out["rnn_core_from"])

    text = result["ag_news"]
    assert text["rows"] == 2 and text["columns"][:3] == ["label", "label_id", "probability"]
    assert text["first"]["label"] in ("World", "Sports", "Business", "Sci/Tech")
    assert sum(text["first"][c] for c in ("World", "Sports", "Business", "Sci/Tech")) == \
        pytest.approx(1.0)
    assert text["dtypes"]["probability"] == "float64"

    station = result["metro_classification"]
    assert station["rows"] == 1 and isinstance(station["first"]["station"], int)
    assert len(station["first"]["probabilities"]) == stations["metro_classification"]

    forecast = result["metro_forecasting"]
    horizon = 4
    assert forecast["rows"] == stations["metro_forecasting"]
    assert forecast["columns"] == ["station", "last_observed"] + [
        f"{f}_h{h}" for f in ("inflow", "outflow") for h in range(1, horizon + 1)]
    assert forecast["first"]["last_observed"] == "2019-01-21T09:15"
    assert all(forecast["dtypes"][f"inflow_h{h}"] == "float64" for h in range(1, horizon + 1))

    chars = result["char_generation"]
    assert chars["columns"] == ["prompt", "text"] and len(chars["first"]["text"]) == 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_raw_text(smoke_store, clean_python, tmp_path):
    port = _free_port()
    mlflow_cli = clean_python.with_name("mlflow")
    log = tmp_path / "serve.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(mlflow_cli), "models", "serve", "-m",
             f"models:/{smoke_store.models['ag_news']}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=tmp_path, env=_clean_env(smoke_store.uri, clean_python), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no /ping answer in 180 s:\n" + log.read_text()
            time.sleep(0.5)
        print(f"\nmlflow models serve healthy in {time.perf_counter() - started:.1f} s")

        status, body = _post(f"{base}/invocations", {"dataframe_records": HEADLINES})
        assert status == 200, body
        rows = body["predictions"]
        assert len(rows) == 2
        for row in rows:
            assert row["label"] in ("World", "Sports", "Business", "Sci/Tech")
            probs = [row[c] for c in ("World", "Sports", "Business", "Sci/Tech")]
            assert sum(probs) == pytest.approx(1.0) and row["probability"] == max(probs)

        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"title": " \\ "}]})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "row 0: the text is empty after cleaning" in body["message"]
        assert "Traceback" not in body["message"] and "stack_trace" not in body

        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"headline": "x"}]})
        assert status == 400 and "title" in body["message"]
    finally:
        stop_group(server)
    assert server.poll() is not None
