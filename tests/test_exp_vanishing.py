"""vanishing_gradients on the protocol: one configuration per model, stable metric names, the
init measurement on the runner's own initial weights, float64 norms against the library's,
the per-model report and the cross-model summary, the checkpoint, profiles and bad values."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from flows.profiles import ProfileError, build_config, load_profile, resolve
from rnn_core.checkpoints import load_checkpoint
from rnn_core.config import ConfigError, check
from rnn_core.experiments import vanishing_gradients as vg
from rnn_core.experiments.protocol import SealedSplitError
from rnn_core.experiments.runner import run_configuration
from rnn_core.gradients import hidden_gradient_norms
from rnn_core.models import Batch, build_model

EXP = vg.EXPERIMENT
METRICS = {
    "grad_norm_ratio_d50", "init_grad_norm_ratio_d50", "vanish_distance",
    "init_vanish_distance", "test_nats_per_char",
    # the runner's: epoch choice, resume, the chosen epoch's validation figures
    "chosen_epoch", "resumed_from_epoch", "val_loss", "val_nats", "val_bits_per_char",
    "val_perplexity",
}
CELL_METRICS = {"cell_grad_norm_ratio_d50", "init_cell_grad_norm_ratio_d50",
                "cell_vanish_distance", "init_cell_vanish_distance"}


def smoke_config(**changes) -> vg.Config:
    config = load_profile("smoke", only=["vanishing_gradients"]).config("vanishing_gradients")
    return dataclasses.replace(config, **changes)


def test_plan_is_one_configuration_per_model_and_checks_its_inputs():
    assert EXP.plan(vg.Config()) == ["rnn", "lstm", "lstm-scratch", "gru", "lstm-fb1"]
    assert EXP.plan(vg.Config(models=["gru"])) == ["gru"]  # no model is required any more
    assert EXP.needs(vg.Config(corpus="moliere")) == ["moliere"]
    assert EXP.diagnostic and EXP.headline.metric == "grad_norm_ratio_d50"
    with pytest.raises(ValueError, match="twice"):
        EXP.plan(vg.Config(models=["rnn", "rnn"]))
    with pytest.raises(ValueError, match="stateful"):
        EXP.plan(vg.Config(train=dataclasses.replace(vg.Config().train, stateful=False)))


@pytest.mark.parametrize("change, key", [
    ({"models": ["rnn", "mamba"]}, "models"),
    ({"seq_len": 40}, "seq_len"),  # must exceed the distance 50 of the metrics
    ({"corpus": "shakespeare"}, "corpus"),
    ({"threshold": 0.0}, "threshold"),
    ({"model": vg.CharModel(hidden_size=0)}, "model.hidden_size"),
])
def test_bad_values_name_their_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key} = "):
        check(vg.Config(**change))


@pytest.mark.parametrize("values, message", [
    ({"train": {"epochs": 0}}, r"train\.epochs = 0"),
    ({"hidden_size": 16}, "unknown key hidden_size"),  # the old flat key: now [.model]
    ({"models": []}, "must not be empty"),
])
def test_profile_rejects_bad_tables(values, message):
    with pytest.raises(ProfileError, match=message):
        build_config(resolve("smoke"), "vanishing_gradients", values)


def test_profile_tables_plan_the_expected_configurations():
    for profile, hidden, epochs in (("smoke", 16, 1), ("default", 128, 2), ("full", 256, 5)):
        config = load_profile(profile, only=["vanishing_gradients"]).config("vanishing_gradients")
        assert EXP.plan(config) == (["rnn", "lstm", "gru"] if profile == "smoke" else
                                    ["rnn", "lstm", "lstm-scratch", "gru", "lstm-fb1"])
        assert (config.model.hidden_size, config.train.epochs) == (hidden, epochs)
        assert config.train.stateful
    assert load_profile("default", only=["vanishing_gradients"]).config(
        "vanishing_gradients") == vg.Config()


def test_vanish_distance_is_the_first_step_below_threshold_or_censored():
    ratios = np.array([1.0, 0.1, 1e-2, 5e-4, 2e-3, 1e-5])
    assert vg.vanish_distance(ratios, 1e-3) == 3
    assert vg.vanish_distance(ratios[:3], 1e-3) == 3  # never below: censored at the length


def test_norms_csv_round_trips():
    columns = {"init": np.array([1.0, 1e-30]), "trained": np.array([2.0, 3e-5])}
    back = vg.read_norms_csv(vg.norms_csv(columns))
    assert list(back) == ["init", "trained"]
    assert np.allclose(back["init"], columns["init"], rtol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float64_norms_match_float32_and_keep_tiny_values(cell):
    torch.manual_seed(0)
    model = vg.char_lm(vg.CharModel(hidden_size=16), cell, vocab_size=10)
    x = torch.randint(0, 10, (120, 3))
    batch = Batch(x, torch.randint(0, 10, (120, 3)))
    f64 = hidden_gradient_norms(model, batch, float64=True)
    f32 = hidden_gradient_norms(model, batch).double()
    assert f64.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    close = f32 > 1e-15  # where float32 squares are still exact enough
    assert close[-10:].all()
    assert torch.allclose(f64[close], f32[close], rtol=1e-3)
    assert (f64 > 0).all()  # no underflow to zero, however far back


class Spy(vg.VanishingGradients):
    """Records the weights of every model the phases build (the runner's, then score's)."""

    def __init__(self):
        self.built = []

    def model(self, config, name, data):
        model = super().model(config, name, data)
        self.built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model


def test_run_smoke(manifests, tmp_path):
    config = smoke_config(models=list(vg.MODELS), backend_twins=["lstm"])
    m = manifests("trump")
    results = []
    for name in EXP.plan(config):
        spy = Spy()
        result = run_configuration(spy, config, name, m, tmp_path, callbacks=[])
        results.append(result)
        # score rebuilt exactly the initial weights the runner trained from
        assert len(spy.built) == 2
        assert all(torch.equal(spy.built[0][k], spy.built[1][k]) for k in spy.built[0])

        lstm = name.startswith("lstm")
        assert set(result.metrics) == METRICS | (CELL_METRICS if lstm else set())
        assert all(math.isfinite(v) for v in result.metrics.values())
        assert result.headline.metric in result.metrics and result.headline.goal == "max"
        assert 0 < result.metrics["grad_norm_ratio_d50"]
        assert 0 <= result.metrics["vanish_distance"] <= config.seq_len
        assert len(result.history) == config.train.epochs
        assert "val_nats" in result.history[0]
        assert not any(k.startswith("test_") for row in result.history for k in row)
        assert result.tags["model"] == name and result.tags["dataset"] == "trump"
        assert result.model_config["backend"] == ("scratch" if name == "lstm-scratch" else "fused")
        assert result.model_config["forget_bias"] == (1.0 if name == "lstm-fb1" else None)
        assert result.params == dataclasses.asdict(config)
        assert set(result.figures) == {"grad_norm_vs_distance"}
        assert all(path.exists() for path in result.figures.values())

        # The CSV holds the raw norms: one row per distance, its ratios are the metrics'.
        rows = result.texts["grad_norms.csv"].strip().splitlines()
        header = "distance,init,trained" + (",c_init,c_trained" if lstm else "")
        assert rows[0] == header and len(rows) == config.seq_len + 1
        columns = [(1, "init_"), (2, "")] + ([(3, "init_cell_"), (4, "cell_")] if lstm else [])
        for col, prefix in columns:
            d0, d50 = float(rows[1].split(",")[col]), float(rows[51].split(",")[col])
            assert d50 / d0 == pytest.approx(result.metrics[f"{prefix}grad_norm_ratio_d50"],
                                             rel=1e-5)

        # The checkpoint is this model's; build_model + its state reproduce the measurement.
        payload = load_checkpoint(result.checkpoint)
        assert payload["config"] == result.model_config
        assert payload["config"]["cell"] == name.split("-")[0]
        rebuilt = build_model(payload["config"])
        rebuilt.load_state_dict(payload["model_state"])
        data = EXP.data(config, name, m)
        with pytest.raises(SealedSplitError):
            _ = data.test
        with data.unsealed():
            windows = vg.measure_windows(data.test, config)
        _, ratios = vg.gradient_ratios(rebuilt, windows)
        assert ratios[50] == pytest.approx(result.metrics["grad_norm_ratio_d50"], rel=1e-6)
        spans = data.info["spans"]  # train | val | test, contiguous and disjoint
        assert spans["train"][1] == spans["val"][0] and spans["val"][1] == spans["test"][0]
        assert data.info["val_chars_scored"] == 2000 - 2000 % config.eval_streams \
            - config.eval_streams

    # A rerun resumes from the finished checkpoint, and still measures the initial weights at
    # init (rebuilt from the seed, not read from the resumed model).
    again = run_configuration("vanishing_gradients", config, "rnn", m, tmp_path)
    assert again.metrics.pop("resumed_from_epoch") == config.train.epochs
    first = dict(results[0].metrics)
    assert first.pop("resumed_from_epoch") == 0 and again.metrics == first
    assert again.texts == results[0].texts

    # The cross-model summary: every model's init and trained curves on one figure, per stage
    # too, and the combined CSV (from the results' own CSVs, in the configured order).
    # Backend twins are left out; the LSTMs' cell state has its own figure and columns; the
    # lesson's tanh / tanh' figure comes with the summary.
    report = EXP.summarise(config, results[::-1], tmp_path / "summary")
    assert set(report.figures) == {"grad_norm_vs_distance", "grad_norm_vs_distance_init",
                                   "grad_norm_vs_distance_trained", "cell_grad_norm_vs_distance",
                                   "tanh_and_derivative"}
    assert all(path.exists() for path in report.figures.values())
    rows = report.texts["grad_norms.csv"].strip().splitlines()
    assert rows[0] == ("distance,rnn_init,rnn_trained,lstm_init,lstm_trained,gru_init,"
                       "gru_trained,lstm-fb1_init,lstm-fb1_trained,lstm_c_init,lstm_c_trained,"
                       "lstm-fb1_c_init,lstm-fb1_c_trained")
    col = rows[0].split(",").index("lstm_trained")
    lstm = next(r for r in results if r.name == "lstm")
    d0, d50 = float(rows[1].split(",")[col]), float(rows[51].split(",")[col])
    assert d50 / d0 == pytest.approx(lstm.metrics["grad_norm_ratio_d50"], rel=1e-5)
    assert EXP.summarise(config, [], tmp_path / "none").figures == {}
    # At init the forget-gate bias keeps more of the cell state's gradient 50 steps back, and
    # the scratch twin measures exactly what the fused LSTM does (same weights, same formula).
    by_name = {r.name: r.metrics for r in results}
    assert (by_name["lstm-fb1"]["init_cell_grad_norm_ratio_d50"]
            > by_name["lstm"]["init_cell_grad_norm_ratio_d50"])
    assert by_name["lstm-scratch"]["init_cell_grad_norm_ratio_d50"] == pytest.approx(
        by_name["lstm"]["init_cell_grad_norm_ratio_d50"], rel=1e-9)
