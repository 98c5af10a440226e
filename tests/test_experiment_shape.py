"""One shape for every experiment: a sixth experiment defined here alone runs through the real
pipeline into MLflow; the test split is sealed; a profile value reaches the model, the MLflow
params and the checkpoint unchanged; `only` prepares only the datasets the experiment needs."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rnn_core import experiments
from rnn_core.checkpoints import load_checkpoint
from rnn_core.config import as_dict, knob
from rnn_core.datasets.metro import load_metro
from rnn_core.experiments.protocol import Batches, Experiment, SealedSplitError, Splits
from rnn_core.experiments.runner import check_history, run_configuration
from rnn_core.models import Batch, ClassifierConfig, build_model
from rnn_core.results import Headline
from rnn_core.training import TrainConfig, evaluate

# --- a sixth experiment, in this file only -------------------------------------------------------


@dataclass
class OffDayModel:
    hidden_size: int = knob(8, min=1)
    backend: str = knob("scratch", choices=("scratch", "fused"))


@dataclass
class OffDayConfig:
    cells: list[str] = knob(["gru"], choices=("rnn", "lstm", "gru"), nonempty=True)
    val_days: int = knob(3, min=1, max=10)
    train: TrainConfig = knob(TrainConfig(epochs=2, lr=1e-2))
    model: OffDayModel = knob(OffDayModel)


def off_days(first: dt.date, n: int) -> torch.Tensor:
    """1.0 for Saturdays, Sundays and 1 January, per day from `first`."""
    days = [first + dt.timedelta(days=d) for d in range(n)]
    return torch.tensor([float(d.weekday() >= 5 or (d.month, d.day) == (1, 1)) for d in days])


def _days(x: torch.Tensor, off: torch.Tensor) -> Batch:
    """D x 73 x S x 2 flows -> one sequence per (day, station): 73 x (D*S) x 2, label off-day."""
    days, slots, stations, _ = x.shape
    seqs = (x / x.amax().clamp(min=1)).permute(1, 0, 2, 3).reshape(slots, days * stations, 2)
    return Batch(seqs.float(), off.repeat_interleave(stations).long())


class OffDay(Experiment):
    """Is it a weekend or holiday? A whole day of one station's flows -> off-day or not."""

    name = "offday"
    Config = OffDayConfig
    headline = Headline("test_accuracy", "max")
    datasets = ("metro",)

    def plan(self, config):
        return list(config.cells)

    def data(self, config, name, manifests):
        train = torch.from_numpy(load_metro(manifests["metro"].path("train.parquet")))[:, :, :10]
        test = torch.from_numpy(load_metro(manifests["metro"].path("test.parquet")))[:, :, :10]
        off = off_days(dt.date(2019, 1, 1), len(train))  # the dataset's calendar
        cut = len(train) - config.val_days
        return Splits(_days(train[:cut], off[:cut]), _days(train[cut:], off[cut:]),
                      _days(test, off_days(dt.date(2019, 1, 19), len(test))),
                      {"variant": "full"})

    def model(self, config, name, data):
        return build_model({"kind": "classifier", **as_dict(ClassifierConfig(
            **as_dict(config.model), cell=name, num_classes=2, input_size=2))})

    def batches(self, config, name, data):
        return Batches(lambda epoch: [data.train], [data.val])

    def score(self, config, name, model, data):
        return {"test_accuracy": evaluate(model, [data.test])["accuracy"]}


# --- the pipeline, end to end --------------------------------------------------------------------


@pytest.fixture
def sixth():
    exp = experiments.register(OffDay())
    yield exp
    experiments.unregister(exp.name)


@pytest.mark.slow
def test_sixth_experiment_runs_through_the_pipeline_into_mlflow(
        sixth, prefect_harness, mirror_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    monkeypatch.setenv("RNN_DATA_MIRROR", str(mirror_dir))
    profile = tmp_path / "sixth.toml"
    profile.write_text('[pipeline]\nexperiments = ["offday"]\n\n[offday]\ncells = ["gru"]\n\n'
                       "[offday.model]\nhidden_size = 7\n")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    results = pipeline(profile=str(profile), data_dir=str(tmp_path / "data"),
                       work_dir=str(tmp_path / "ck"), tracking_uri=uri, only=["offday"])

    # Only the dataset the experiment declared was prepared.
    assert sorted(p.name for p in (tmp_path / "data" / "processed").iterdir()) == ["metro"]
    [row] = results["offday"]
    assert row["config"] == "gru" and 0.0 <= row["headline"] <= 1.0

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = client.get_experiment_by_name("rnnflow/offday").experiment_id
    runs = client.search_runs([exp_id])
    [parent] = [r for r in runs if r.data.tags.get("rnnflow.role") == "parent"]
    [child] = [r for r in runs if r.data.tags.get("rnnflow.role") == "child"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED" and "test_accuracy" in child.data.metrics

    # The profile's value, unchanged, in the MLflow params, the checkpoint and the model.
    assert child.data.params["model.hidden_size"] == "7"
    assert child.data.params["train.epochs"] == "2"  # the experiment's own default
    [ckpt] = (tmp_path / "ck").rglob("gru/last.pt")
    saved = load_checkpoint(ckpt)
    assert saved["meta"]["config"]["model"]["hidden_size"] == 7
    assert saved["config"]["hidden_size"] == 7
    assert saved["model_state"]["rnn.weight_hh_l0"].shape[1] == 7
    history = json.loads(Path(client.download_artifacts(child.info.run_id, "history.json"))
                         .read_text())
    assert len(history) == 2 and not any(k.startswith("test_") for r in history for k in r)


def test_sixth_experiment_with_the_runner_alone(sixth, manifests, tmp_path):
    config = OffDayConfig(model=OffDayModel(hidden_size=5, backend="fused"))
    result = run_configuration("offday", config, "gru", manifests("metro"), tmp_path)
    assert result.params["model"] == {"hidden_size": 5, "backend": "fused"}
    assert result.model_config["hidden_size"] == 5 and result.model_config["backend"] == "fused"
    assert set(result.metrics) >= {"test_accuracy", "chosen_epoch", "val_accuracy"}
    assert [r["epoch"] for r in result.history] == [0.0, 1.0]


# --- the sealed test split -----------------------------------------------------------------------


def test_the_test_split_opens_only_for_scoring():
    data = Splits(train=[1], val=[2], test=[3])
    with pytest.raises(SealedSplitError):
        _ = data.test
    with data.unsealed():
        assert data.test == [3]
    with pytest.raises(SealedSplitError):
        _ = data.test


class PeeksAtTest(OffDay):
    """Validates on the test split: the runner must refuse it."""

    name = "peeks"

    def batches(self, config, name, data):
        return Batches(lambda epoch: [data.train], [data.test])


def test_a_phase_reading_the_test_split_before_scoring_fails(manifests, tmp_path):
    with pytest.raises(SealedSplitError, match="only by the final scoring phase"):
        run_configuration(PeeksAtTest(), OffDayConfig(), "gru", manifests("metro"), tmp_path)


def test_history_with_test_keys_is_refused():
    check_history([{"epoch": 0.0, "val_loss": 1.0}], "x")
    with pytest.raises(AssertionError, match="test_loss"):
        check_history([{"epoch": 0.0, "test_loss": 1.0}], "x")


def test_unknown_configuration_and_missing_manifest_are_clear(sixth, tmp_path):
    with pytest.raises(KeyError, match="unknown configuration 'nope'"):
        run_configuration("offday", OffDayConfig(), "nope", {}, tmp_path)
    with pytest.raises(KeyError, match="no prepared manifest"):
        run_configuration("offday", OffDayConfig(), "gru", {}, tmp_path)


def test_every_registered_experiment_has_the_shape():
    for name in experiments.names():
        exp = experiments.get(name)
        config = exp.Config()
        assert exp.plan(config), name
        assert isinstance(config.train, TrainConfig), name
        assert exp.needs(config), name
        assert exp.headline.metric.startswith(("test_", "grad_")), name
