"""Metro experiments: smoke runs end to end, plus the pieces a wrong number would hide in."""

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest
import torch

from flows.profiles import PROFILES_DIR, ProfileError, build_config, experiment_config, load_profile
from rnn_core.checkpoints import load_checkpoint
from rnn_core.datasets.metro import load_metro
from rnn_core.experiments import metro_classification as cls
from rnn_core.experiments import metro_forecasting as fc
from rnn_core.experiments.metro_common import (
    FIRST_DAY,
    all_windows,
    load_splits,
    off_days,
    time_features,
)
from rnn_core.experiments.protocol import SealedSplitError
from rnn_core.experiments.runner import run_configuration
from rnn_core.models import build_model
from rnn_core.training import evaluate

CLS, FC = cls.EXPERIMENT, fc.EXPERIMENT
HISTORY_KEYS = {"epoch", "train_loss", "lr", "seconds"}  # plus val_*: the runner's names


@pytest.fixture(scope="module")
def metro(manifests):
    return manifests("metro")


def _profile(profile: str, exp):
    return experiment_config(load_profile(profile, only=[exp.name]), exp.name)


def _train(config, **changes):
    """`config` with some of its [train] knobs changed."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def _rebuilt(result):
    """The model rebuilt from the run's checkpoint through build_model, in eval mode."""
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"] == result.model_config
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


def _check_history(result, epochs: int) -> None:
    """One row per epoch, the runner's names only: nothing per epoch comes from the test split."""
    assert [row["epoch"] for row in result.history] == [float(e) for e in range(epochs)]
    for row in result.history:
        assert not [k for k in row if "test" in k], row  # no test_*, no epoch_test_*
        assert {k for k in row if not k.startswith("val_")} == HISTORY_KEYS


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
    train, test = off_days(FIRST_DAY["train"], 18), off_days(FIRST_DAY["test"], 7)
    expected = [float(d in (0, 4, 5, 11, 12)) for d in range(18)]  # 1 Jan holiday, Sat/Sun
    assert train.tolist() == expected and dt.date(2019, 1, 5).weekday() == 5
    assert test.tolist() == [1.0, 1.0, 0, 0, 0, 0, 0]  # 19-20 Jan are Sat/Sun


def test_time_features_follow_the_clock():
    feats = time_features(torch.tensor([[0], [72]]))  # 05:30 and 23:30
    assert feats.shape == (2, 1, 3) and feats[0, 0, 0] == 0 and feats[1, 0, 0] == 1
    assert feats[0, 0, 1].item() == pytest.approx(math.sin(2 * math.pi * 5.5 / 24), abs=1e-6)


def test_validation_days_are_the_last_training_days_disjoint_from_training(metro):
    manifest = metro["metro"]
    data = load_splits(manifest, stations=10, val_days=3)
    train, val = data.train, data.val
    assert train.x.shape == (15, 73, 10, 2) and val.x.shape == (3, 73, 10, 2)
    january = [dt.date(2019, 1, d) for d in range(1, 19)]
    assert val.dates == january[15:] and train.dates == january[:15]  # 16-18 Jan held out
    assert not set(train.dates) & set(val.dates) and val.off.tolist() == [0.0, 0.0, 0.0]
    # Maxima from the remaining training days only: each station and direction peaks at 1 there,
    # and validation days are divided by those same maxima.
    torch.testing.assert_close(train.x.amax(dim=(0, 1)), torch.ones(10, 2))
    raw = torch.from_numpy(load_metro(manifest.path("train.parquet")))[:, :, :10]
    torch.testing.assert_close(data.maxima, raw[:15].amax(dim=(0, 1)).clamp(min=1))
    torch.testing.assert_close(val.x * data.maxima, raw[15:])
    assert data.info["variant"] == "full" and data.info["days"] == {"train": 15, "val": 3,
                                                                    "test": 7}
    assert len(data.info["files"]["test.parquet"]["sha256"]) == 64
    # The test split is sealed until the scoring phase opens it.
    with pytest.raises(SealedSplitError):
        _ = data.test.x
    with data.unsealed():
        assert data.test.dates[0] == dt.date(2019, 1, 19) and data.test.x.shape[0] == 7
    with pytest.raises(ValueError, match="leaves no training day"):
        load_splits(manifest, stations=10, val_days=18)


SMOKE_STACK = {"metro_classification": "gru-10st-inout-tod", "metro_forecasting": "gru-inout-ctx"}


@pytest.mark.parametrize("exp", [CLS, FC], ids=lambda e: e.name)
@pytest.mark.parametrize("which", ["stack", "course"])
def test_data_model_batches_never_read_the_test_split(exp, which, metro):
    """Every phase before `score` runs with the test split sealed (reading it would raise)."""
    config = _profile("smoke", exp)
    name = SMOKE_STACK[exp.name]
    if which == "course":
        name = next(n for n in exp.plan(config) if n.startswith("course"))
    data = exp.data(config, name, metro)
    model = exp.model(config, name, data)
    batches = exp.batches(config, name, data)
    train = list(batches.train(0))
    assert len(train) == config.batches_per_epoch
    val = list(batches.val)
    with torch.no_grad():
        assert all(model(b.x)[0].shape[:1] == b.y.shape[:1] for b in train[:1] + val[:1])
    if exp is CLS:  # a seeded sample of curve_windows validation windows per eval length
        sizes = {L: min(config.curve_windows, 3 * 10 * (73 - L + 1)) for L in config.eval_lengths}
        assert [b.x.shape[:2] for b in val] == [(L, n) for L, n in sizes.items()]
    else:  # whole validation days: 3 days x 10 stations from 05:30
        assert [b.x.shape[:2] for b in val] == [(73, 3 * 10)]
        torch.testing.assert_close(val[0].x[:, 0, :2], data.val.x[0, :, 0])


# --- profiles and bad values --------------------------------------------------------------------


def test_profile_tables_plan_the_expected_configurations():
    assert _profile("default", CLS) == cls.Config() and _profile("default", FC) == fc.Config()
    assert CLS.plan(cls.Config()) == ["course-10st-in", "course-10st-inout", "gru-10st-in",
                                      "gru-10st-inout", "gru-10st-inout-scratch",
                                      "gru-80st-inout"]
    assert FC.plan(fc.Config()) == ["gru-in", "gru-in-ctx", "gru-inout", "gru-inout-ctx",
                                    "gru-inout-ctx-scratch", "course-in", "course-inout"]
    default = cls.Config()
    assert (default.val_days, default.train.epochs, default.train.lr, default.model.hidden_size,
            default.train.precision, default.train.select_epoch) == (3, 20, 3e-3, 64, "fp32", "last")
    assert (fc.Config().min_length, fc.Config().train.lr_decay, fc.Config().model.residual) == (
        8, 0.9, True)

    smoke_cls, smoke_fc = _profile("smoke", CLS), _profile("smoke", FC)
    assert CLS.plan(smoke_cls) == ["course-10st-inout-tod", "course-10st-inout-tod-fused",
                                   "gru-10st-inout-tod"]
    assert FC.plan(smoke_fc) == ["gru-inout-ctx", "gru-inout-ctx-scratch", "course-inout"]
    assert smoke_cls.train.epochs == 1 == smoke_fc.train.epochs
    assert smoke_cls.model.hidden_size == 8 == smoke_fc.model.hidden_size

    full_cls, full_fc = _profile("full", CLS), _profile("full", FC)
    names = CLS.plan(full_cls)
    assert len(names) == 25 and names[:3] == ["course-10st-in", "course-10st-inout",
                                              "course-10st-inout-tod"]
    assert names[names.index("gru-10st-inout") + 1] == "gru-10st-inout-scratch"
    assert "gru-80st-inout-tod" in names
    assert (full_cls.model.hidden_size, full_cls.model.num_layers, full_cls.model.dropout) == (
        128, 2, 0.3)
    assert (full_cls.train.epochs, full_cls.train.lr_decay, full_cls.train.select_epoch) == (
        60, 0.97, "best_val")
    assert len(FC.plan(full_fc)) == 17 and FC.plan(full_fc)[:2] == ["course-in", "course-in-ctx"]
    assert (full_fc.model.hidden_size, full_fc.train.epochs, full_fc.covariates) == (
        128, 30, list(fc.COVARIATES))


def test_classification_plan_names_and_cross_field_rules():
    config = cls.Config(cells=["rnn", "gru"], stations=[10, 80], features=["in", "inout-tod"],
                        extra=[], backend_twins=[])
    assert CLS.plan(config)[:2] == ["rnn-10st-in", "rnn-10st-inout-tod"]
    assert "gru-80st-inout-tod" in CLS.plan(config) and len(CLS.plan(config)) == 8
    # extra names outside the product; a twin right after its configuration
    config = cls.Config(cells=["gru"], features=["in"], extra=["lstm-20st-inout-tod", "gru-10st-in"],
                        backend_twins=["lstm-20st-inout-tod"])
    assert CLS.plan(config) == ["gru-10st-in", "lstm-20st-inout-tod",
                                "lstm-20st-inout-tod-scratch"]
    spec = CLS.specs(config)["lstm-20st-inout-tod-scratch"]
    assert (spec.cell, spec.stations, spec.columns, spec.backend) == ("lstm", 20, [0, 1], "scratch")
    with pytest.raises(ValueError, match="bad configuration name 'gru-10-in'"):
        CLS.plan(cls.Config(extra=["gru-10-in"]))
    # a twin of an unplanned configuration is left out; a name that could not be is an error
    assert CLS.plan(cls.Config(backend_twins=["gru-80st-in"])) == CLS.plan(
        cls.Config(backend_twins=[]))
    with pytest.raises(ValueError, match="bad configuration name 'gru-80-in'"):
        CLS.plan(cls.Config(backend_twins=["gru-80-in"]))
    with pytest.raises(ValueError, match="unknown feature set 'in-fused'"):
        CLS.plan(cls.Config(backend_twins=["course-10st-in-fused"]))
    with pytest.raises(ValueError, match="unknown feature set 'in\\+out'"):
        CLS.plan(cls.Config(features=["in+out"]))
    with pytest.raises(ValueError, match="must contain 73"):
        CLS.plan(cls.Config(eval_lengths=[5, 10]))
    with pytest.raises(ValueError, match="min_length 40 > max_length 20"):
        CLS.plan(cls.Config(min_length=40, max_length=20))


def test_forecasting_plan_names_and_cross_field_rules():
    config = fc.Config(cells=["gru"], features=["in", "inout"], inputs=["flows", "context"],
                       extra=[], backend_twins=[])
    assert FC.plan(config) == ["gru-in", "gru-in-ctx", "gru-inout", "gru-inout-ctx"]
    spec = FC.specs(fc.Config())["course-inout"]
    assert (spec.cell, spec.covariates, spec.backend) == ("course", (), None)
    with pytest.raises(ValueError, match="must contain 73"):
        FC.plan(fc.Config(eval_lengths=[8, 16]))
    with pytest.raises(ValueError, match="unknown covariates \\['weather'\\]"):
        FC.plan(fc.Config(covariates=["weather"]))
    with pytest.raises(ValueError, match="unknown feature set 'inout-tod'"):
        FC.plan(fc.Config(features=["inout-tod"]))
    with pytest.raises(ValueError, match="min_length"):
        FC.plan(fc.Config(min_length=30, max_length=20))


@pytest.mark.parametrize("exp, values, message", [
    (CLS, {"val_days": 18}, "val_days = 18: must be >= 1 and <= 17"),
    (CLS, {"stations": [10, 81]}, "stations = 81"),
    (CLS, {"features": ["in+out"]}, "features = 'in\\+out': expected one of"),
    (CLS, {"eval_lengths": [5, 10]}, "must contain 73"),
    (CLS, {"min_length": 50, "max_length": 20}, "min_length 50 > max_length 20"),
    (CLS, {"train": {"epochs": 0}}, "train.epochs = 0"),
    (CLS, {"model": {"backend": "cudnn"}}, "model.backend = 'cudnn'"),
    (CLS, {"model": {"dropout": 1.0}}, "model.dropout = 1.0"),
    (CLS, {"hidden_size": 8}, "unknown key hidden_size"),  # the old flat layout
    (CLS, {"train": {"hidden_size": 8}}, "unknown key train.hidden_size"),
    (FC, {"covariates": ["weather"]}, "covariates = 'weather'"),
    (FC, {"min_length": 1}, "min_length = 1: must be >= 2"),
    (FC, {"horizon": 0}, "horizon = 0"),
    (FC, {"inputs": ["everything"]}, "inputs = 'everything'"),
    (FC, {"model": {"residual": "sometimes"}}, "model.residual"),
])
def test_bad_profile_values_name_the_key(exp, values, message):
    with pytest.raises(ProfileError, match=message):
        build_config(PROFILES_DIR / "test.toml", exp.name, values)


# --- classification ---------------------------------------------------------------------------


def test_make_batch_one_length_and_labels_are_stations(metro):
    data = load_splits(metro["metro"], stations=10, val_days=3)
    spec = CLS.specs(cls.Config(features=["in-tod"]))["gru-10st-in-tod"]
    batch = cls.make_batch(data.train.x, 7, [(0, 3, 10), (14, 9, 66)], spec)
    assert batch.x.shape == (7, 2, 1 + 3) and batch.y.tolist() == [3, 9]
    torch.testing.assert_close(batch.x[:, 0, 0], data.train.x[0, 10:17, 3, 0])
    torch.testing.assert_close(batch.x[:, 1, 1:], time_features(torch.arange(66, 73)[:, None])[:, 0])


def test_course_cell_builds_the_course_rnn_class_and_its_twin_torch_nn(metro):
    """course-*: the course's RNN class (hand-written, one layer whatever the block says);
    its -fused twin: torch.nn's RNN + Linear, with the very same initial weights."""
    from rnn_core.checkpoints import seed_everything
    from rnn_core.course_models import RNN

    config = _profile("smoke", CLS)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_layers=2))
    models, backends = {}, []
    for name in ("course-10st-inout-tod", "course-10st-inout-tod-fused"):
        data = CLS.data(config, name, metro)
        seed_everything(config.train.seed)
        models[name] = CLS.model(config, name, data)
        backends.append(CLS.tags(config, name, data)["backend"])
    course, fused = models.values()
    assert isinstance(course.rnn, RNN) and course.config.mode == "course"
    assert fused.config.mode == "stack" and fused.config.backend == "fused"
    assert fused.config.num_layers == 1 == course.config.num_layers
    torch.testing.assert_close(course.rnn.cell.weight_ih, fused.rnn.weight_ih_l0)
    torch.testing.assert_close(course.rnn.decoder.bias, fused.head.bias)
    assert backends == ["scratch", "fused"]


@pytest.mark.slow
def test_course_pair_trains_and_agrees(metro, tmp_path):
    """The course's RNN class trains in the experiment, and with its torch.nn twin from the same
    seed it reaches the same test metrics within rnn_core.comparisons' tolerances."""
    from rnn_core.comparisons import backend_agreement

    config = _profile("smoke", CLS)
    results = [run_configuration(CLS.name, config, name, metro, tmp_path)
               for name in ("course-10st-inout-tod", "course-10st-inout-tod-fused")]
    course = results[0]
    assert course.model_config["mode"] == "course" and math.isfinite(course.headline_value)
    assert course.history[-1]["train_loss"] < math.log(10) + 0.5  # learnt something, or close
    rows = backend_agreement([(CLS.name, r.name, r.metrics) for r in results])
    assert {r["metric"] for r in rows} >= {"test_error_L73", "test_error_L20"}
    assert all(r["agree"] for r in rows), rows
    assert all(r["configuration"] == "course-10st-inout-tod" for r in rows)


@pytest.mark.slow
def test_classification_smoke_run(metro, tmp_path):
    config = _profile("smoke", CLS)
    name = SMOKE_STACK[CLS.name]
    with pytest.raises(KeyError, match="unknown configuration"):
        run_configuration(CLS.name, config, "lstm-3st-in", metro, tmp_path)
    result = run_configuration(CLS.name, config, name, metro, tmp_path)
    lengths = (5, 10, 20, 40, 73)
    names = {f"{split}_error_L{L}" for L in lengths for split in ("test", "val", "train")}
    names |= {"test_accuracy_L73", "train_error", "train_eval_loss", "test_loss",
              "majority_error", "val_error", "val_loss", "chosen_epoch"}
    assert names <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.headline_value == result.metrics["test_error_L73"]
    stations = config.stations[0]
    assert result.metrics["majority_error"] == pytest.approx(1 - 1 / stations)
    _check_history(result, config.train.epochs)
    assert result.metrics["val_error"] == result.history[-1]["val_error"]
    assert all(path.is_file() for path in result.figures.values())
    assert {"learning_curves_loss", "learning_curves_error", "error_vs_length",
            "confusion_L73"} <= set(result.figures)
    assert result.tags["data_variant"] == "full" and result.tags["features"] == "inout-tod"
    windows = result.dataset["eval_windows"]
    assert windows["test"][73] == {"windows": 70, "sampled": False}
    assert windows["val"][73] == {"windows": 30, "sampled": False}
    assert windows["train"][5] == {"windows": 300, "sampled": True}
    assert result.params["train"]["epochs"] == 1 and result.params["model"]["hidden_size"] == 8
    # The checkpoint rebuilds the trained model: it reproduces the headline on the test days
    # and the whole-day validation error.
    data = CLS.data(config, name, metro)
    model = _rebuilt(result)
    val = evaluate(model, cls.eval_batches(data.val.x, all_windows(3, stations, 73)[0], 73,
                                           data.spec))
    assert val["error"] == pytest.approx(result.metrics["val_error_L73"], abs=1e-9)
    with data.unsealed():
        test = evaluate(model, cls.eval_batches(data.test.x, all_windows(7, stations, 73)[0], 73,
                                                data.spec))
    assert test["error"] == pytest.approx(result.metrics["test_error_L73"], abs=1e-9)
    # A rerun resumes from the finished checkpoint: no training, the same scores.
    again = run_configuration(CLS.name, config, name, metro, tmp_path)
    assert result.metrics.pop("resumed_from_epoch") == 0
    assert again.metrics.pop("resumed_from_epoch") == config.train.epochs
    assert again.history == result.history and again.metrics == result.metrics


@pytest.mark.slow
@pytest.mark.parametrize("exp, key", [(CLS, "val_error"), (FC, "val_mse_h1")],
                         ids=["classification", "forecasting"])
def test_best_val_epoch_is_chosen_on_validation(exp, key, metro, tmp_path):
    config = _train(_profile("smoke", exp), epochs=3, select_epoch="best_val")
    name = SMOKE_STACK[exp.name]
    result = run_configuration(exp.name, config, name, metro, tmp_path)
    _check_history(result, 3)
    curve = [row[key] for row in result.history]
    chosen = int(result.metrics["chosen_epoch"])
    assert curve[chosen] == min(curve) and result.metrics[key] == min(curve)
    assert load_checkpoint(result.checkpoint)["epoch"] == chosen


# --- forecasting ------------------------------------------------------------------------------


def test_day_type_profile_leaves_the_day_out():
    train = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 73, 1, 1)  # day d holds the value d
    off_train, off_test = torch.tensor([0.0, 0, 1, 1]), torch.tensor([1.0, 0])
    expected_train = fc.day_type_profiles(train, off_train)
    expected_test = fc.day_type_profiles(train, off_train, off_test)
    assert expected_train[:, 0, 0, 0].tolist() == [1.0, 0.0, 3.0, 2.0]  # the other same-type day
    assert expected_test[:, 0, 0, 0].tolist() == [2.5, 0.5]
    lone = fc.day_type_profiles(train[:3], off_train[:3])  # day 2 is the only off day
    assert lone[:, 0, 0, 0].tolist() == [1.0, 0.0, 0.5]  # ... so it uses every other day


def test_profile_context_comes_from_training_days_only(metro):
    config = _profile("smoke", FC)
    data = FC.data(config, "gru-inout-ctx", metro)
    train_days = data.train.x
    working = [d for d, off in enumerate(data.train.off.tolist()) if not off]
    # Validation days (all working days) expect the mean of the working training days.
    torch.testing.assert_close(data.contexts["val"]["expected"][0], train_days[working].mean(0))
    assert data.contexts["val"]["expected"].shape == (3, 73, 10, 2)


def test_make_windows_inputs_targets_and_profile_covariate(metro):
    data = load_splits(metro["metro"], stations=80, val_days=3)
    config = fc.Config(covariates=list(fc.COVARIATES))
    spec = FC.specs(config)["gru-inout-ctx"]
    expected = torch.rand(7, 73, 80, 2)
    context = {"off": off_days(FIRST_DAY["test"], 7), "expected": expected, "stations": 80}
    with data.unsealed():
        x = data.test.x
    w = fc.make_windows(x, [(2, 5, 30), (0, 79, 60)], 10, spec, context, horizon=4)
    assert w.batch.x.shape == (10, 2, 2 + fc.num_covariates(spec, 4)) == (10, 2, 2 + 92)
    assert w.batch.y.shape == (10, 2, 4, 2)
    torch.testing.assert_close(w.batch.y[3, 0, 1], x[2, 30 + 3 + 2, 5])  # x[t+h+1]
    assert w.batch.x[0, 0, 2 + 5] == 1 and w.batch.x[0, 1, 2 + 79] == 1  # one-hot station
    assert w.batch.x[0, 0, 2 + 83] == 0 and w.batch.x[0, 1, 2 + 83] == 1  # Mon vs Sat
    profile = w.batch.x[4, 0, -8:].view(4, 2)  # at t = slot 34: the expected slots 35..38
    torch.testing.assert_close(profile, expected[2, 35:39, 5])


@pytest.mark.slow
def test_forecasting_smoke_run(metro, tmp_path):
    config = _profile("smoke", FC)
    name = SMOKE_STACK[FC.name]
    result = run_configuration(FC.name, config, name, metro, tmp_path)
    H = config.horizon
    for prefix in ("test", "persistence", "profile", "daytype_profile", "train", "val"):
        assert {f"{prefix}_mse_h{h}" for h in range(1, H + 1)} <= set(result.metrics)
    # MSE against the input length: each eval length, by horizon, and the baselines there;
    # the whole-day length is the whole-day score.
    for L in config.eval_lengths:
        assert {f"test_mse_L{L}", f"daytype_profile_mse_L{L}", f"persistence_mse_L{L}"} | {
            f"test_mse_L{L}_h{h}" for h in range(1, H + 1)} <= set(result.metrics)
    assert result.metrics["test_mse_L73"] == pytest.approx(result.metrics["test_mse"], rel=1e-6)
    assert result.metrics["daytype_profile_mse_L73"] == pytest.approx(
        result.metrics["daytype_profile_mse"], rel=1e-6)
    assert "example_day" not in result.metrics  # an array for the report, not a metric
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.headline.metric == "test_mse_h1" and result.headline.goal == "min"
    _check_history(result, config.train.epochs)
    assert result.metrics["val_mse_h1"] == result.history[-1]["val_mse_h1"]
    assert result.dataset["val_windows"].startswith("30 whole days")
    # Persistence on whole test days, computed independently: same targets as the model's.
    data = FC.data(config, name, metro)
    with data.unsealed():
        flows = data.test.x[..., data.spec.columns]
        batches = [w.batch for w in fc.whole_days(data.test, data.spec,
                                                  fc.context(data, data.test), H)]
    for h in range(1, H + 1):
        direct = ((flows[:, h:] - flows[:, :-h]) ** 2).double().mean().item()
        assert result.metrics[f"persistence_mse_h{h}"] == pytest.approx(direct, rel=1e-5)
    assert all(path.is_file() for path in result.figures.values())
    assert {"mse_by_horizon", "mse_by_length", "learning_curves", "example_day"} <= set(
        result.figures)
    # The checkpoint rebuilds the trained model: the same test MSE on the same inputs, and the
    # chosen epoch's validation MSE on whole validation days.
    model = _rebuilt(result)
    assert evaluate(model, batches)["mse_h1"] == pytest.approx(result.metrics["test_mse_h1"],
                                                               rel=1e-6)
    val = evaluate(model, list(FC.batches(config, name, data).val))
    assert val["mse_h1"] == pytest.approx(result.metrics["val_mse_h1"], rel=1e-6)
    # Reproducible from the config's seed alone, whatever the global RNG did before.
    torch.rand(1000)
    np.random.rand(10)
    again = run_configuration(FC.name, config, name, metro, tmp_path / "again")
    assert again.metrics == result.metrics


def test_course_class_trains_step_for_step_like_torch_nn(metro):
    """The hand-written course class against torch.nn's RNN + Linear from the same seed, on the
    same batches: the same losses (to float32 rounding) for the first training steps. (Over a
    whole run a tanh RNN's training is chaotic and the two drift apart as two seeds would; the
    default profile's metro pair is therefore the GRU: see metro_classification.Config.)"""
    from rnn_core.checkpoints import seed_everything
    from rnn_core.training import make_optimizer

    config = dataclasses.replace(_profile("smoke", CLS), batches_per_epoch=12)
    losses = []
    for name in ("course-10st-inout-tod", "course-10st-inout-tod-fused"):
        seed_everything(config.train.seed)
        data = CLS.data(config, name, metro)
        seed_everything(config.train.seed)
        model = CLS.model(config, name, data)
        optimizer, run = make_optimizer(model, config.train), []
        for batch in CLS.batches(config, name, data).train(0):
            loss = model.loss(model(batch.x)[0], batch.y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
