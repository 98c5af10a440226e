"""vanishing_gradients on the smoke profile: one study, stable metric names, the figures, the
float64 gradient norms against the library's, and the registered LSTM checkpoint."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from flows.profiles import experiment_config, load_profile
from rnn_core.checkpoints import load_checkpoint
from rnn_core.experiments import vanishing_gradients as vg
from rnn_core.gradients import hidden_gradient_norms
from rnn_core.models import Batch, build_model


def smoke_config(**changes) -> vg.Config:
    config = experiment_config(load_profile("smoke"), "vanishing_gradients")
    return dataclasses.replace(config, **changes)


def test_plan_is_one_study_and_checks_its_inputs():
    assert vg.plan(vg.Config()) == ["rnn-lstm-gru"]
    with pytest.raises(ValueError, match="unknown model"):
        vg.plan(vg.Config(models=["rnn", "lstm", "mamba"]))
    with pytest.raises(ValueError, match="needs the lstm"):
        vg.plan(vg.Config(models=["rnn", "gru"]))
    with pytest.raises(ValueError, match="seq_len"):
        vg.plan(vg.Config(seq_len=40))


def test_vanish_distance_is_the_first_step_below_threshold_or_censored():
    ratios = np.array([1.0, 0.1, 1e-2, 5e-4, 2e-3, 1e-5])
    assert vg.vanish_distance(ratios, 1e-3) == 3
    assert vg.vanish_distance(ratios[:3], 1e-3) == 3  # never below: censored at the length


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float64_norms_match_float32_and_keep_tiny_values(cell):
    torch.manual_seed(0)
    model = build_model(vg.model_config(vg.Config(hidden_size=16), cell, vocab_size=10))
    x = torch.randint(0, 10, (120, 3))
    batch = Batch(x, torch.randint(0, 10, (120, 3)))
    f64 = hidden_gradient_norms(model, batch, float64=True)
    f32 = hidden_gradient_norms(model, batch).double()
    assert f64.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    close = f32 > 1e-15  # where float32 squares are still exact enough
    assert close[-10:].all()
    assert torch.allclose(f64[close], f32[close], rtol=1e-3)
    assert (f64 > 0).all()  # no underflow to zero, however far back


def test_run_one_smoke(prepared_data, tmp_path):
    config = smoke_config()
    data_dir = prepared_data("trump")
    (name,) = vg.plan(config)
    result = vg.run_one(config, name, data_dir, tmp_path, callbacks=[])
    expected = set()
    for m in config.models:
        expected |= {
            f"grad_norm_ratio_d50_{m}",
            f"init_grad_norm_ratio_d50_{m}",
            f"vanish_distance_{m}",
            f"init_vanish_distance_{m}",
            f"test_nats_per_char_{m}",
        }
    assert set(result.metrics) == expected
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.headline.metric in result.metrics and result.headline.goal == "max"
    for m in config.models:
        assert 0 < result.metrics[f"grad_norm_ratio_d50_{m}"]
        assert 0 <= result.metrics[f"vanish_distance_{m}"] <= config.seq_len
    assert len(result.history) == config.epochs
    assert "test_nats_per_char_gru" in result.history[0]
    assert set(result.figures) == {
        "grad_norm_vs_distance",
        "grad_norm_vs_distance_init",
        "grad_norm_vs_distance_trained",
    }
    assert all(path.exists() for path in result.figures.values())

    # The CSV holds the raw norms: one row per distance, the ratio at 50 is the metric's.
    rows = result.texts["grad_norms.csv"].strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == config.seq_len + 1 and "lstm_trained" in header
    col = header.index("lstm_trained")
    d0, d50 = float(rows[1].split(",")[col]), float(rows[51].split(",")[col])
    assert d50 / d0 == pytest.approx(result.metrics["grad_norm_ratio_d50_lstm"], rel=1e-5)

    # The registered model is the trained LSTM; build_model + its state reproduce the measurement.
    payload = load_checkpoint(result.checkpoint)
    assert payload["config"] == result.model_config and payload["config"]["cell"] == "lstm"
    rebuilt = build_model(payload["config"])
    rebuilt.load_state_dict(payload["model_state"])
    from rnn_core.datasets.corpus import load_corpus
    from rnn_core.experiments.text_streams import encode_ids

    _, test_text, vocab = load_corpus(data_dir / "processed" / config.corpus)
    windows = vg.measure_windows(encode_ids(test_text, vocab), config)
    _, ratios = vg.gradient_ratios(rebuilt, windows)
    assert ratios[50] == pytest.approx(result.metrics["grad_norm_ratio_d50_lstm"], rel=1e-6)
