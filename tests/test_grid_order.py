"""The grid submits its configurations longest first, by the training time each one took in the
store's last run on the same profile (unknown ones first, in plan order), so that with N
workers no long configuration starts last and trains alone; results stay in plan order."""

from __future__ import annotations

import pytest
from fault_support import NAME, Config, register, trained_epochs

from rnn_core.training import TrainConfig

pytestmark = pytest.mark.slow


def test_a_rerun_trains_the_slowest_configuration_first(prefect_harness, tmp_path):
    from mlflow import MlflowClient

    from flows.experiments import experiment_flow

    register()
    flow = experiment_flow(NAME)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cells = ["rnn", "gru", "lstm"]
    # Sizes that make the training times differ by far more than timing noise.
    config = Config(cells=cells, log_dir=str(tmp_path / "epochs"), train_size=256,
                    train=TrainConfig(epochs=2, lr=1e-2, torch_threads=1))

    def run(pipeline_id, **kw):
        return flow(config=config, profile="order", manifests={}, work_dir=str(tmp_path / "ck"),
                    tracking_uri=uri, pipeline_id=pipeline_id, **kw)

    first = run("first")
    assert [r.config for r in first] == cells
    assert [c for _, c, e in trained_epochs(tmp_path / "epochs") if e == 0] == cells  # plan order
    client = MlflowClient(tracking_uri=uri)
    seconds = {r.config: client.get_run(r.run_id).data.metrics["train_seconds"] for r in first}

    (tmp_path / "epochs" / "epochs.log").unlink()
    again = run("second", force=True)
    assert [r.config for r in again] == cells  # tables keep plan order
    started = [c for _, c, e in trained_epochs(tmp_path / "epochs") if e == 0]
    assert started == sorted(cells, key=lambda c: -seconds[c]), (started, seconds)
