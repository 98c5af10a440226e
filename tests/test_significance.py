"""Promotion that is not noise: the paired tests (rnn_core.significance) on synthetic outcomes,
the per-example accumulators (mean = the headline), and on a real SQLite store a challenger
that is equal or slightly better within noise keeps the alias while a clearly better one moves
it, with the interval and p-value logged on its run and version."""

import numpy as np
import pytest
import torch

from rnn_core.metrics import ClassificationMetrics, ForecastMetrics, LanguageModelMetrics
from rnn_core.models import Batch, build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.significance import (
    PerExampleOutcome,
    PerSegmentBits,
    PerWindowSquaredError,
    mcnemar,
    paired_bootstrap,
    subsample,
)
from tasks import tracking
from tasks.experiments import challenge_champion, log_result
from tasks.tracking import champion, names
from tasks.tracking.names import CHAMPION_ALIAS, KEPT, PROMOTED

N = 2000  # test examples


def _correct(p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < p).astype(np.float64)


# --- the statistics ----------------------------------------------------------------------------


def test_identical_arrays_are_not_significant():
    a = _correct(0.7, 1)
    c = paired_bootstrap(a, a.copy(), "max")
    assert c.diff == 0 and c.ci_low == 0 and not c.significant and c.p_value == 1.0
    assert mcnemar(a, a, "max") == 1.0
    assert c.mcnemar_p == 1.0 and c.level == 0.95 and c.resamples == 2000 and c.n == N


def test_clearly_better_is_significant_and_slightly_better_is_not():
    champ = _correct(0.70, 1)
    better = champ.copy()
    better[np.flatnonzero(champ == 0)[:200]] = 1.0  # +10 points
    c = paired_bootstrap(better, champ, "max")
    assert c.significant and c.diff == pytest.approx(0.1) and c.p_value < 0.001
    assert c.ci_low < 0.1 < c.ci_high and mcnemar(better, champ) < 1e-10
    slightly = champ.copy()  # 6 fixed, 4 broken: +0.1 point, well within noise
    slightly[np.flatnonzero(champ == 0)[:6]] = 1.0
    slightly[np.flatnonzero(champ == 1)[:4]] = 0.0
    s = paired_bootstrap(slightly, champ, "max")
    assert s.diff == pytest.approx(0.001) and not s.significant and s.p_value > 0.05
    assert s.ci_low < 0 < s.ci_high
    assert mcnemar(slightly, champ) == pytest.approx(0.376953125)  # P(X >= 6), X ~ B(10, 1/2)
    # The same seed gives the same interval; goal "min" reads lower as better.
    assert paired_bootstrap(slightly, champ, "max") == s
    assert paired_bootstrap(1 - better, 1 - champ, "min").significant


def test_p_value_is_roughly_uniform_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(7)
    ps = [paired_bootstrap(rng.normal(size=300), rng.normal(size=300), "min",
                           resamples=400, seed=i).p_value for i in range(40)]
    assert 0.2 < np.mean(ps) < 0.8  # ~0.5 when neither is better
    assert sum(p < 0.05 for p in ps) <= 6  # ~5 % false positives
    sq_champ = rng.normal(size=500) ** 2
    assert paired_bootstrap(0.5 * sq_champ, sq_champ, "min").p_value < 0.01  # MSE halved


def test_bad_inputs_are_errors_and_subsampling_is_a_fixed_stride():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(np.array([0.5]), np.array([1.0]))
    values = np.arange(450_001, dtype=np.float32)
    kept = subsample(values)
    assert kept.size <= 200_000 and kept[0] == 0 and np.all(np.diff(kept) == 3)


# --- per-example accumulators: their mean is the headline -------------------------------------


def test_per_example_means_equal_the_headline_metrics():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 4), torch.randint(0, 4, (50,))
    acc, right, wrong = ClassificationMetrics(4), PerExampleOutcome(), PerExampleOutcome(True)
    for part in (slice(0, 20), slice(20, 50)):
        batch = Batch(None, y[part])
        for m in (acc, right, wrong):
            m.update(logits[part], batch)
    assert right.values().mean() == pytest.approx(acc.compute()["accuracy"])
    assert wrong.values().mean() == pytest.approx(acc.compute()["error"])

    pred, target = torch.randn(9, 5, 3, 2), torch.randn(9, 5, 3, 2)
    batch = Batch(torch.zeros(9, 5, 2), target, lengths=torch.tensor([9, 8, 9, 7, 9]))
    mse, h1 = ForecastMetrics(3), PerWindowSquaredError(3, h=1)
    mse.update(pred, batch)
    h1.update(pred, batch)
    assert h1.values().shape == (5,)
    assert h1.values().mean() == pytest.approx(mse.compute()["mse_h1"])

    lm, bits = LanguageModelMetrics(), PerSegmentBits()
    for _ in range(3):
        batch = Batch(None, torch.randint(0, 7, (6, 4)))
        out = torch.randn(6, 4, 7)
        lm.update(out, batch)
        bits.update(out, batch)
    assert bits.values().shape == (12,)
    assert bits.values().mean() == pytest.approx(lm.compute()["bits_per_char"])


# --- the champion on a real store --------------------------------------------------------------

CONFIG = {"kind": "classifier", "num_classes": 4, "vocab_size": 50, "embedding_dim": 8,
          "hidden_size": 6, "cell": "gru", "padding_idx": 0}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    return uri, tracking.configure(uri)


def _result(tmp_path, outcomes, seed: int) -> RunResult:
    torch.manual_seed(seed)
    model = build_model(CONFIG)
    checkpoint = tmp_path / f"model-{seed}.pt"
    torch.save({"model_state": model.state_dict(), "config": config_dict(model)}, checkpoint)
    outcomes = None if outcomes is None else np.asarray(outcomes, dtype=np.float64)
    accuracy = 0.75 if outcomes is None else float(outcomes.mean())
    return RunResult(
        task="ag_news", name="gru6", params={"model": CONFIG},
        metrics={"test_accuracy": accuracy}, headline=Headline("test_accuracy", "max"),
        tags={"model": "gru", "data_variant": "subset"},
        dataset={"variant": "subset", "test_rows": N, "test_truncated": False},
        model_config=config_dict(model), checkpoint=checkpoint, seconds=1.0,
        per_example=outcomes,
    )


def _log(store, result: RunResult, pipeline_id: str):
    uri, client = store
    parent = tracking.start_parent_run(client, result.task, "default", pipeline_id, {})
    row = log_result.fn(result, parent, uri, tracking.pipeline_tags("default", pipeline_id))
    row = challenge_champion.fn(row, result, uri)
    tracking.finish_parent_run(client, parent, rows=[row])
    return row


@pytest.mark.slow  # a fresh SQLite store costs ~8 s of MLflow migrations
def test_within_noise_keeps_the_alias_a_clear_win_moves_it(store, tmp_path):
    _, client = store
    name = "rnnflow-ag-news-gru6"
    champ = _correct(0.70, 1)
    first = _log(store, _result(tmp_path, champ, seed=1), "p1")
    assert first.champion == PROMOTED
    stored = champion.per_example(client, first.run_id)  # logged as an artifact, no pickle
    np.testing.assert_array_equal(stored, champ)

    # Equal headline, other examples right: within noise, the alias stays.
    equal = champ.copy()
    equal[np.flatnonzero(champ == 0)[:30]] = 1.0
    equal[np.flatnonzero(champ == 1)[:30]] = 0.0
    tie = _log(store, _result(tmp_path, equal, seed=2), "p2")
    assert tie.champion == KEPT
    # Slightly better (+0.2 point: 12 fixed, 8 broken): today's rule would promote it; it is
    # within noise, so the alias stays.
    slightly = champ.copy()
    slightly[np.flatnonzero(champ == 0)[:12]] = 1.0
    slightly[np.flatnonzero(champ == 1)[:8]] = 0.0
    row = _log(store, _result(tmp_path, slightly, seed=3), "p3")
    assert row.champion == KEPT
    run = client.get_run(row.run_id)
    m, tags = run.data.metrics, run.data.tags
    assert m[names.DIFF_METRIC] == pytest.approx(0.002)
    assert m[names.CI_LOW_METRIC] <= 0 < m[names.CI_HIGH_METRIC]
    assert m[names.LEVEL_METRIC] == 0.95 and m[names.P_VALUE_METRIC] > 0.0
    assert m[names.MCNEMAR_P_METRIC] == pytest.approx(0.2517, abs=1e-4)  # P(X >= 12), B(20, 1/2)
    assert "not better beyond noise" in tags[names.CHAMPION_REASON_TAG]
    assert "paired bootstrap over 2000 test examples, one-sided 95%, 2000 resamples" in tags[
        names.CHAMPION_TEST_TAG]
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "1"

    # Clearly better (+8 points): the alias moves; the figures are on the run and the version.
    clear = champ.copy()
    clear[np.flatnonzero(champ == 0)[:160]] = 1.0
    win = _log(store, _result(tmp_path, clear, seed=4), "p4")
    assert win.champion == PROMOTED
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "4"
    m = client.get_run(win.run_id).data.metrics
    assert 0 < m[names.CI_LOW_METRIC] < 0.08 < m[names.CI_HIGH_METRIC]
    assert m[names.P_VALUE_METRIC] < 0.05
    vtags = client.get_model_version(name, "4").tags
    assert float(vtags[names.CI_LOW_METRIC]) > 0 and float(vtags[names.P_VALUE_METRIC]) < 0.05
    assert "better beyond noise, promoted" in vtags[names.CHAMPION_REASON_TAG]

    # No per-example outcomes on the challenger: the headlines decide, and the reason says so.
    legacy = _log(store, _result(tmp_path, None, seed=5), "p5")
    assert legacy.champion == KEPT  # 0.75 < 0.78
    reason = client.get_run(legacy.run_id).data.tags[names.CHAMPION_REASON_TAG]
    assert "does not beat" in reason and "headlines only" in reason
    assert names.P_VALUE_METRIC not in client.get_run(legacy.run_id).data.metrics
