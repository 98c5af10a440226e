"""Champion / challenger on a real SQLite store: the alias moves only on a win on the same split,
the decision and both figures are logged, and inference loads `models:/<name>@champion`."""

import numpy as np
import pytest
import torch

from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from tasks import tracking
from tasks.experiments import log_result
from tasks.tracking import champion, inference, names
from tasks.tracking.names import (
    CHALLENGER_VALUE_METRIC,
    CHAMPION_ALIAS,
    CHAMPION_DECISION_TAG,
    CHAMPION_PREVIOUS_VERSION_TAG,
    CHAMPION_REASON_TAG,
    INCUMBENT_VALUE_METRIC,
    KEPT,
    PROMOTED,
)
from tasks.tracking.summaries import SummaryRow

CONFIG = {"kind": "classifier", "num_classes": 4, "vocab_size": 50, "embedding_dim": 8,
          "hidden_size": 6, "cell": "gru", "padding_idx": 0}
TOKENS = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], dtype=np.int64)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    return uri, tracking.configure(uri)


def _result(tmp_path, accuracy: float, seed: int, variant: str = "subset") -> RunResult:
    """A trained-looking result whose weights differ per seed (so versions are distinguishable)."""
    torch.manual_seed(seed)
    model = build_model(CONFIG)
    checkpoint = tmp_path / f"model-{seed}.pt"
    torch.save({"model_state": model.state_dict(), "config": config_dict(model)}, checkpoint)
    return RunResult(
        task="ag_news", name="gru6", params={"model": CONFIG},
        metrics={"test_accuracy": accuracy, "majority_accuracy": 0.25},
        headline=Headline("test_accuracy", "max"),
        tags={"model": "gru", "data_variant": variant},
        dataset={"variant": variant, "test_rows": 7600},
        model_config=config_dict(model), checkpoint=checkpoint, seconds=1.5,
    )


def _retrain(store, tmp_path, accuracy, seed, variant="subset") -> SummaryRow:
    """One retrain through the logging task, as the flow calls it."""
    uri, client = store
    parent = tracking.start_parent_run(client, "ag_news", "default", f"pipe-{seed}", {})
    row = log_result.fn(_result(tmp_path, accuracy, seed, variant), parent, uri,
                        tracking.pipeline_tags("default", f"pipe-{seed}"))
    tracking.finish_parent_run(client, parent, rows=[row])
    return row


@pytest.mark.slow  # a fresh SQLite store costs ~8 s of MLflow migrations
def test_worse_retrain_keeps_the_alias_better_one_moves_it(store, tmp_path):
    uri, client = store
    name = "rnnflow-ag-news-gru6"
    with pytest.raises(LookupError, match="no champion for model 'rnnflow-ag-news-gru6'"):
        inference.load_champion("ag_news", "gru6", tracking_uri=uri)

    first = _retrain(store, tmp_path, accuracy=0.70, seed=1)
    assert first.champion == PROMOTED
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "1"

    worse = _retrain(store, tmp_path, accuracy=0.65, seed=2)
    assert worse.model_version == "2" and worse.champion == KEPT
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "1"
    run = client.get_run(worse.run_id)  # the decision and both figures are on the run
    assert run.data.tags[CHAMPION_DECISION_TAG] == KEPT
    assert run.data.tags[CHAMPION_PREVIOUS_VERSION_TAG] == "1"
    assert run.data.metrics[CHALLENGER_VALUE_METRIC] == pytest.approx(0.65)
    assert run.data.metrics[INCUMBENT_VALUE_METRIC] == pytest.approx(0.70)
    assert "does not beat" in run.data.tags[CHAMPION_REASON_TAG]
    assert client.get_model_version(name, "2").tags[CHAMPION_DECISION_TAG] == KEPT

    tie = _retrain(store, tmp_path, accuracy=0.70, seed=3)  # equal is not better
    assert tie.champion == KEPT

    better = _retrain(store, tmp_path, accuracy=0.80, seed=4)
    assert better.model_version == "4" and better.champion == PROMOTED
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "4"
    assert client.get_run(better.run_id).data.metrics[INCUMBENT_VALUE_METRIC] == (
        pytest.approx(0.70))

    # Inference loads the champion (version 4), not the latest nor the first version.
    served = inference.predict(name, TOKENS, tracking_uri=uri)
    torch.manual_seed(4)
    expected = build_model(CONFIG).eval()
    with torch.no_grad():
        logits, _ = expected(torch.as_tensor(TOKENS).t().contiguous(),
                             lengths=torch.tensor([3, 2]))
    np.testing.assert_allclose(served, logits.numpy(), rtol=1e-5, atol=1e-6)
    assert served.shape == (2, 4)
    assert inference.load_champion("ag_news", "gru6", tracking_uri=uri) is not None

    # A better figure on another data variant is not comparable: the alias stays.
    other = _retrain(store, tmp_path, accuracy=0.95, seed=5, variant="full")
    assert other.champion == KEPT
    assert "not comparable" in client.get_run(other.run_id).data.tags[
        CHAMPION_REASON_TAG]
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "4"

    # ...until someone moves it by hand (e.g. the full split is the one that counts now).
    champion.promote_by_hand(client, name, other.model_version, "full split from now on")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == other.model_version
    assert client.get_model_version(name, other.model_version).tags[
        CHAMPION_REASON_TAG] == "full split from now on"


def test_lower_is_better_for_min_headlines_and_nan_never_wins():
    headline = Headline("test_mse_h1", "min")

    class _Run:  # the two fields `decide` reads from the champion's MLflow run
        def __init__(self, value, scope="s"):
            self.data = type("D", (), {"metrics": {"test_mse_h1": value},
                                       "tags": {names.EVAL_SCOPE_TAG: scope}})()

    assert champion.decide(headline, 0.5, "s", _Run(0.6))[0] is True
    assert champion.decide(headline, 0.7, "s", _Run(0.6))[0] is False
    assert champion.decide(headline, float("nan"), "s", _Run(0.6))[0] is False
    assert champion.decide(headline, 0.1, "other", _Run(0.6))[0] is False
    assert champion.decide(headline, 0.9, "s", None)[0] is True


def test_scope_names_metric_variant_and_test_split(tmp_path):
    base = _result(tmp_path, 0.7, seed=1)
    other_split = _result(tmp_path, 0.7, seed=1)
    other_split.dataset["test_rows"] = 100
    tagged = _result(tmp_path, 0.7, seed=1)
    tagged.tags["test_split"] = "first-100"
    no_facts = _result(tmp_path, 0.7, seed=1)
    no_facts.dataset = {"variant": "subset"}
    scopes = {champion.eval_scope(r) for r in (base, other_split, tagged)}
    assert len(scopes) == 3 and all(s.startswith("test_accuracy|subset|") for s in scopes)
    # Without facts about the test split, runs of different profiles never compete.
    assert champion.eval_scope(no_facts, "smoke") != champion.eval_scope(no_facts, "default")
