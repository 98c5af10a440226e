"""Re-make the README's screenshots of live runs: real servers on free ports, a real run, headless
Chromium.

    .venv/bin/python docs/screenshots.py [--out docs]      # ~2 min on 2 cores

1. starts Prefect and MLflow (`flows.servers.local_servers`) with their stores in a temp folder;
2. runs `rnnflow run` on a small metro forecasting profile (15 epochs), logging through both;
3. while the configuration trains, shoots its MLflow run's metric charts (status Running);
4. when it is done, shoots the run's overview (its Datasets: train, validation, test) and the
   Prefect grid flow run's Artifacts tab (progress, summary table, link to MLflow).
Needs `chromium` (Debian: apt-get install -y chromium), driven through docs/browser.py, and the
dataset mirror ($RNN_DATA_MIRROR).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs"))  # browser.py

PROFILE = """
[pipeline]
experiments = ["metro_forecasting"]

[metro_forecasting]
cells = ["gru"]
features = ["inout"]
inputs = ["context"]
stations = 80
batches_per_epoch = 60

[metro_forecasting.train]
epochs = 15
"""


def close_assistant(browser) -> None:
    """MLflow 3.17's Assistant panel opens beside every page: closed, for the charts' room."""
    browser.click("button[aria-label=Close]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    from browser import Browser
    from mlflow import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.servers import local_servers, stop_group

    root = Path(tempfile.mkdtemp(prefix="rnnflow-shots-"))
    (root / "shots.toml").write_text(PROFILE)
    with local_servers(project_dir=root, prefect_port=0, mlflow_port=0,
                       prefect_home=str(root / ".prefect"), log_dir=root / "logs",
                       backend_store_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}") as (
            pf, ml), Browser(1500, 1000) as browser:
        env = {**os.environ, "PREFECT_API_URL": pf.api_url, "MLFLOW_TRACKING_URI": ml.url,
               "MLFLOW_UI_URL": ml.url, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2",
               "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(root / ".prefect-client")}
        log = (root / "run.log").open("wb")
        run = subprocess.Popen(
            [str(Path(sys.executable).with_name("rnnflow")), "run", "--profile",
             str(root / "shots.toml"), "--data-dir", str(root / "data"), "--work-dir",
             str(root / "ck"), "--tracking-uri", ml.url],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = MlflowClient(ml.url)
        browser.open(ml.url)  # the "Model training" view (kept by the UI for this browser)
        browser.wait_for_text("Model training")
        browser.click_text("Model training", selector="*")
        try:
            child = None
            while child is None or len(client.get_metric_history(
                    child.info.run_id, "val_mse_h1")) < 6:
                if run.poll() is not None:
                    raise SystemExit(f"the run ended early:\n{(root / 'run.log').read_text()}")
                time.sleep(1)
                exp = client.get_experiment_by_name("rnnflow/metro_forecasting")
                found = exp and client.search_runs(
                    [exp.experiment_id],
                    "tags.`rnnflow.role` = 'child' and attributes.status = 'RUNNING'")
                child = found[0] if found else None
            base = f"{ml.url}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}"
            browser.open(f"{base}/model-metrics")  # while it trains: curves so far
            browser.wait_for_text("val_mse_h1")
            close_assistant(browser)
            browser.screenshot(args.out / "mlflow-live-run.png")
            assert run.wait(timeout=900) == 0, (root / "run.log").read_text()
        finally:
            stop_group(run)
        browser.open(base)  # done: the overview, its three dataset inputs listed
        browser.wait_for_text("Datasets")
        close_assistant(browser)
        browser.click_text("+2")
        browser.screenshot(args.out / "mlflow-run-datasets.png")

        with SyncPrefectClient(api=pf.api_url) as prefect:
            [grid] = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_="grid-")))
        browser.open(f"{pf.url}/runs/flow-run/{grid.id}")
        browser.wait_for_text("Artifacts")
        time.sleep(2)
        browser.click_text("Artifacts", selector="li.p-tab")
        browser.wait_for_text("Task runs")
        browser.js("""[...document.querySelectorAll('*')].find(e => e.children.length === 0
                      && e.textContent.trim() === 'Artifacts').scrollIntoView()""")
        browser.screenshot(args.out / "prefect-artifacts.png")
    shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
