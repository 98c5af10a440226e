"""Metrics and baselines against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnn_core.baselines import (
    bigram_nats,
    evaluate_predictions,
    fit_bigram,
    fit_unigram,
    majority_class,
    majority_error,
    persistence_forecast,
    profile_forecast,
    time_of_day_profile,
    unigram_nats,
)
from rnn_core.metrics import (
    ClassificationMetrics,
    ForecastMetrics,
    LanguageModelMetrics,
    accuracy,
    bits_per_char,
    confusion_matrix,
    cross_entropy_nats,
    forecast_mask,
    mse_per_horizon,
    per_class_accuracy,
    perplexity,
    zero_one_error,
)
from rnn_core.models import Batch, build_model, forecast_targets

# --- classification ----------------------------------------------------------------------------


def test_zero_one_error_accuracy_and_confusion_by_hand():
    y = torch.tensor([0, 0, 1, 2])
    pred = torch.tensor([0, 1, 1, 1])
    assert accuracy(pred, y) == 0.5 and zero_one_error(pred, y) == 0.5
    logits = F.one_hot(pred, 3).float()  # logits give the same answer as ids
    assert zero_one_error(logits, y) == 0.5
    cm = confusion_matrix(pred, y, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert per_class_accuracy(cm).tolist() == [0.5, 1.0, 0.0]
    assert math.isnan(per_class_accuracy(confusion_matrix(pred, y, 4))[3])  # class never seen


def test_classification_accumulator_is_exact_across_batches():
    logits = torch.randn(10, 3)
    y = torch.arange(10) % 3  # every class present
    whole, split = ClassificationMetrics(3), ClassificationMetrics(3)
    whole.update(logits, Batch(None, y))
    split.update(logits[:3], Batch(None, y[:3]))
    split.update(logits[3:], Batch(None, y[3:]))
    a, b = whole.compute(), split.compute()
    assert a == pytest.approx(b)
    assert a["accuracy"] == pytest.approx(accuracy(logits, y))
    assert a["cross_entropy"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert set(a) >= {"error", "accuracy_class_0", "accuracy_class_2"}
    with pytest.raises(ValueError):
        ClassificationMetrics(3).compute()


def test_majority_class_baseline():
    assert majority_class(torch.tensor([1, 1, 0, 0, 2])) == 0  # ties -> smallest id
    assert majority_class(torch.tensor([2, 2, 1])) == 2
    assert majority_error(torch.tensor([2, 2, 1]), torch.tensor([2, 0, 1, 2])) == 0.5


# --- forecasting -------------------------------------------------------------------------------


def _series():
    x = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1)  # L=3, B=1, one flow
    y, mask = forecast_targets(x, 2)
    return x, y, mask


def test_persistence_mse_per_horizon_by_hand():
    x, y, mask = _series()
    pred = persistence_forecast(x, 2)
    assert pred[:, 0, :, 0].tolist() == [[1, 1], [2, 2], [4, 4]]
    # h=1: targets 2 (from 1) and 4 (from 2): (1 + 4) / 2; h=2: target 4 from 1: 9.
    assert mse_per_horizon(pred, y, mask).tolist() == [2.5, 9.0]
    scores = evaluate_predictions(
        lambda b: persistence_forecast(b.x, 2), [Batch(x, y)], ForecastMetrics(2)
    )
    assert scores == pytest.approx({"mse": 14 / 3, "mse_h1": 2.5, "mse_h2": 9.0})


def test_forecast_mask_with_lengths():
    mask = forecast_mask(4, 2, torch.tensor([4, 2]))
    assert mask[:, 0].tolist() == [[1, 1], [1, 1], [1, 0], [0, 0]]
    assert mask[:, 1].tolist() == [[1, 0], [0, 0], [0, 0], [0, 0]]


def test_forecast_metrics_equal_the_model_loss():
    model = build_model({"kind": "forecaster", "num_flows": 2, "horizon": 3, "hidden_size": 5})
    x = torch.randn(7, 3, 2)
    lengths = torch.tensor([7, 5, 4])
    y, _ = forecast_targets(x, 3, lengths)
    pred, _ = model(x, lengths=lengths)
    metric = ForecastMetrics(3)
    metric.update(pred, Batch(x, y, lengths))
    assert metric.compute()["mse"] == pytest.approx(model.loss(pred, y, lengths).item(), rel=1e-6)


def test_time_of_day_profile_forecast_by_hand():
    # 2 days x 3 slots x 2 stations x 1 flow.
    train = torch.tensor(
        [
            [[[0.0], [10.0]], [[2.0], [20.0]], [[4.0], [30.0]]],
            [[[2.0], [30.0]], [[4.0], [40.0]], [[6.0], [50.0]]],
        ]
    )
    profile = time_of_day_profile(train)
    assert profile[:, :, 0].tolist() == [[1, 20], [3, 30], [5, 40]]
    slots = torch.tensor([[0, 0], [1, 1]])  # L=2 steps, B=2 sequences starting at slot 0
    stations = torch.tensor([0, 1])
    pred = profile_forecast(profile, slots, stations, horizon=2)
    assert pred.shape == (2, 2, 2, 1)
    assert pred[:, 0, :, 0].tolist() == [[3, 5], [5, 5]]  # slot 3 past the day: clamped (masked)
    assert pred[:, 1, :, 0].tolist() == [[30, 40], [40, 40]]
    with pytest.raises(ValueError, match="days x slots"):
        time_of_day_profile(train[0])


# --- characters --------------------------------------------------------------------------------


def test_cross_entropy_bits_and_perplexity_of_a_uniform_model():
    logits = torch.zeros(5, 2, 4)
    y = torch.randint(0, 4, (5, 2))
    nats = cross_entropy_nats(logits, y)
    assert nats == pytest.approx(math.log(4))
    assert bits_per_char(nats) == pytest.approx(2.0) and perplexity(nats) == pytest.approx(4.0)


def test_language_model_metrics_mask_padding():
    logits = torch.randn(4, 2, 5)
    y = torch.randint(1, 5, (4, 2))
    y[3, 0] = 0  # pad id
    lengths = torch.tensor([4, 2])
    metric = LanguageModelMetrics(ignore_index=0)
    metric.update(logits[:, :1], Batch(None, y[:, :1], lengths[:1]))  # two batches, exact sum
    metric.update(logits[:, 1:], Batch(None, y[:, 1:], lengths[1:]))
    keep = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    expected = F.cross_entropy(logits[keep], y[keep]).item()
    out = metric.compute()
    assert out["nats"] == pytest.approx(expected, rel=1e-6)
    assert out["bits_per_char"] == pytest.approx(expected / math.log(2), rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)


def test_unigram_add_k_by_hand():
    logp = fit_unigram(torch.tensor([0, 0, 1]), vocab_size=3, k=1.0)  # counts 3, 2, 1 of 6
    torch.testing.assert_close(logp.exp(), torch.tensor([1 / 2, 1 / 3, 1 / 6], dtype=torch.float64))
    # Scored on the targets a language model predicts: ids[1:] = [0, 1].
    assert unigram_nats(logp, torch.tensor([2, 0, 1])) == pytest.approx(
        -(math.log(1 / 2) + math.log(1 / 3)) / 2
    )


def test_bigram_add_k_by_hand():
    # Transitions 0->1, 1->0, 0->1, 1->1; add 1: row 0 = [1, 3] / 4, row 1 = [2, 2] / 4.
    logp = fit_bigram(torch.tensor([0, 1, 0, 1, 1]), vocab_size=2, k=1.0)
    torch.testing.assert_close(
        logp.exp(), torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    )
    assert bigram_nats(logp, torch.tensor([0, 1, 1])) == pytest.approx(
        -(math.log(0.75) + math.log(0.5)) / 2
    )


def test_bigram_beats_unigram_on_structured_text():
    text = torch.tensor([0, 1, 2, 3] * 50)
    uni, bi = fit_unigram(text, 4, 0.5), fit_bigram(text, 4, 0.5)
    assert bigram_nats(bi, text) < 0.1 < unigram_nats(uni, text) == pytest.approx(math.log(4))
