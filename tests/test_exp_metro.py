"""Metro experiments: smoke runs end to end, plus the pieces a wrong number would hide in."""

import datetime as dt
import math

import pytest
import torch

from flows.profiles import experiment_config, load_profile
from rnn_core.checkpoints import load_checkpoint
from rnn_core.experiments import metro_classification as cls
from rnn_core.experiments import metro_forecasting as fc
from rnn_core.experiments.metro_common import all_windows, load_data, off_days, time_features
from rnn_core.models import build_model
from rnn_core.training import evaluate


@pytest.fixture(scope="module")
def data_dir(prepared_data):
    return prepared_data("metro")


def _smoke(module):
    return experiment_config(load_profile("smoke"), module.TASK)


def _rebuilt(result):
    """The model rebuilt from the run's checkpoint through build_model, in eval mode."""
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"] == result.model_config
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


# --- shared helpers ---------------------------------------------------------------------------


def test_all_windows_counts_and_seeded_sample():
    grid, sampled = all_windows(7, 10, 20)
    assert not sampled and grid.shape == (7 * 10 * 54, 3)
    assert (grid[:, 2] + 20 <= 73).all() and len({tuple(w) for w in grid.tolist()}) == len(grid)
    a, sampled = all_windows(7, 10, 20, cap=100, seed=3)
    b, _ = all_windows(7, 10, 20, cap=100, seed=3)
    assert sampled and len(a) == 100 and torch.equal(a, b)
    with pytest.raises(ValueError, match="1..73"):
        all_windows(7, 10, 74)


def test_off_days_know_weekends_and_new_year():
    train, test = off_days("train", 18), off_days("test", 7)
    expected = [float(d in (0, 4, 5, 11, 12)) for d in range(18)]  # 1 Jan holiday, Sat/Sun
    assert train.tolist() == expected and dt.date(2019, 1, 5).weekday() == 5
    assert test.tolist() == [1.0, 1.0, 0, 0, 0, 0, 0]  # 19-20 Jan are Sat/Sun


def test_time_features_follow_the_clock():
    feats = time_features(torch.tensor([[0], [72]]))  # 05:30 and 23:30
    assert feats.shape == (2, 1, 3) and feats[0, 0, 0] == 0 and feats[1, 0, 0] == 1
    assert feats[0, 0, 1].item() == pytest.approx(math.sin(2 * math.pi * 5.5 / 24), abs=1e-6)


def test_load_data_normalises_by_training_maxima(data_dir):
    data = load_data(data_dir, stations=10)
    assert data.train.shape == (18, 73, 10, 2) and data.test.shape == (7, 73, 10, 2)
    # Each station and direction peaks at exactly 1 on the training days; test reuses them.
    torch.testing.assert_close(data.train.amax(dim=(0, 1)), torch.ones(10, 2))
    assert data.info["variant"] == "full" and len(data.info["files"]["test"]["sha256"]) == 64


# --- classification ---------------------------------------------------------------------------


def test_classification_plan_names_and_bad_configs():
    config = cls.Config(cells=["rnn", "gru"], stations=[10, 80], features=["in", "inout-tod"])
    assert cls.plan(config)[:2] == ["rnn-10st-in", "rnn-10st-inout-tod"]
    assert "gru-80st-inout-tod" in cls.plan(config) and len(cls.plan(config)) == 8
    with pytest.raises(ValueError, match="feature set"):
        cls.plan(cls.Config(features=["in+out"]))


def test_make_batch_one_length_and_labels_are_stations(data_dir):
    data = load_data(data_dir, stations=10)
    spec = cls._specs(cls.Config(features=["in-tod"]))["gru-10st-in-tod"]
    batch = cls.make_batch(data.train, 7, [(0, 3, 10), (17, 9, 66)], spec)
    assert batch.x.shape == (7, 2, 1 + 3) and batch.y.tolist() == [3, 9]
    torch.testing.assert_close(batch.x[:, 0, 0], data.train[0, 10:17, 3, 0])


@pytest.mark.slow
def test_classification_smoke_run(data_dir, tmp_path):
    config = _smoke(cls)
    (name,) = cls.plan(config)
    with pytest.raises(KeyError, match="unknown configuration"):
        cls.run_one(config, "lstm-3st-in", data_dir, tmp_path)
    result = cls.run_one(config, name, data_dir, tmp_path)
    names = {f"test_error_L{L}" for L in (5, 10, 20, 40, 73)}
    names |= {"test_accuracy_L73", "train_error", "train_loss", "test_loss", "majority_error"}
    assert names <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.headline_value == result.metrics["test_error_L73"]
    stations = config.stations[0]
    assert result.metrics["majority_error"] == pytest.approx(1 - 1 / stations)
    assert len(result.history) == config.epochs and "epoch_test_error" in result.history[0]
    assert all(path.is_file() for path in result.figures.values())
    assert {"learning_curves_loss", "error_vs_length"} <= set(result.figures)
    assert result.tags["data_variant"] == "full" and result.dataset["eval_windows"]["test"]
    # The checkpoint rebuilds the trained model: it reproduces the headline on the test days.
    spec = cls._specs(config)[name]
    data = load_data(data_dir, stations)
    windows, _ = all_windows(7, stations, 73)
    scores = evaluate(_rebuilt(result), cls._eval_batches(data.test, windows, 73, spec))
    assert scores["error"] == pytest.approx(result.metrics["test_error_L73"], abs=1e-9)
    # A rerun resumes from the finished checkpoint: no training, the same scores.
    again = cls.run_one(config, name, data_dir, tmp_path)
    assert again.history == result.history and again.metrics == result.metrics


# --- forecasting ------------------------------------------------------------------------------


def test_forecasting_plan_names():
    config = fc.Config(cells=["gru"], features=["in", "inout"], inputs=["flows", "context"])
    assert fc.plan(config) == ["gru-in", "gru-in-ctx", "gru-inout", "gru-inout-ctx"]
    with pytest.raises(ValueError, match="covariates"):
        fc.plan(fc.Config(covariates=["weather"]))


def test_day_type_profile_leaves_the_day_out():
    train = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 73, 1, 1)  # day d holds the value d
    off_train, off_test = torch.tensor([0.0, 0, 1, 1]), torch.tensor([1.0, 0])
    expected_train, expected_test = fc.day_type_profiles(train, off_train, off_test)
    assert expected_train[:, 0, 0, 0].tolist() == [1.0, 0.0, 3.0, 2.0]  # the other same-type day
    assert expected_test[:, 0, 0, 0].tolist() == [2.5, 0.5]


def test_make_windows_inputs_targets_and_profile_covariate(data_dir):
    data = load_data(data_dir, stations=80)
    config = fc.Config(covariates=list(fc.COVARIATES))
    spec = fc._specs(config)["gru-inout-ctx"]
    expected = torch.rand(7, 73, 80, 2)
    context = {"off": off_days("test", 7), "expected": expected, "stations": 80}
    w = fc.make_windows(data.test, [(2, 5, 30), (0, 79, 60)], 10, spec, context, horizon=4)
    assert w.batch.x.shape == (10, 2, 2 + fc.num_covariates(spec, 80, 4)) == (10, 2, 2 + 92)
    assert w.batch.y.shape == (10, 2, 4, 2)
    torch.testing.assert_close(w.batch.y[3, 0, 1], data.test[2, 30 + 3 + 2, 5])  # x[t+h+1]
    assert w.batch.x[0, 0, 2 + 5] == 1 and w.batch.x[0, 1, 2 + 79] == 1  # one-hot station
    assert w.batch.x[0, 0, 2 + 83] == 0 and w.batch.x[0, 1, 2 + 83] == 1  # Mon vs Sat
    profile = w.batch.x[4, 0, -8:].view(4, 2)  # at t = slot 34: the expected slots 35..38
    torch.testing.assert_close(profile, expected[2, 35:39, 5])


@pytest.mark.slow
def test_forecasting_smoke_run(data_dir, tmp_path):
    config = _smoke(fc)
    (name,) = fc.plan(config)
    result = fc.run_one(config, name, data_dir, tmp_path)
    H = config.horizon
    for prefix in ("test", "persistence", "profile", "daytype_profile", "train"):
        assert {f"{prefix}_mse_h{h}" for h in range(1, H + 1)} <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.headline.metric == "test_mse_h1" and result.headline.goal == "min"
    # Persistence on whole test days, computed independently: same targets as the model's.
    data = load_data(data_dir, stations=config.stations)
    flows = data.test[..., fc.FEATURE_SETS[result.tags["features"]]]
    for h in range(1, H + 1):
        direct = ((flows[:, h:] - flows[:, :-h]) ** 2).double().mean().item()
        assert result.metrics[f"persistence_mse_h{h}"] == pytest.approx(direct, rel=1e-5)
    assert all(path.is_file() for path in result.figures.values())
    assert {"mse_by_horizon", "learning_curves"} <= set(result.figures)
    # The checkpoint rebuilds the trained model: the same test MSE on the same inputs.
    spec = fc._specs(config)[name]
    _, expected_test = fc.day_type_profiles(data.train, off_days("train", 18), off_days("test", 7))
    context = {
        "off": off_days("test", 7),
        "expected": expected_test[..., spec.columns],
        "stations": config.stations,
    }
    windows, _ = all_windows(7, config.stations, 73)
    batch = fc.make_windows(data.test, windows, 73, spec, context, H).batch
    scores = evaluate(_rebuilt(result), [batch])
    assert scores["mse_h1"] == pytest.approx(result.metrics["test_mse_h1"], rel=1e-6)
    # Reproducible from the config's seed alone, whatever the global RNG did before.
    torch.rand(1000)
    again = fc.run_one(config, name, data_dir, tmp_path / "again")
    assert again.metrics == result.metrics
