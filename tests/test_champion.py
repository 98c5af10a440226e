"""Champion / challenger on a real SQLite store: the alias moves only on a win on the same split,
the decision and both figures are logged, and inference loads `models:/<name>@champion`.
Champions are scoped: smoke-scoped runs register under `-smoke` names and a smoke or subset
evaluation never blocks or takes the champion of a real / full one."""

import numpy as np
import pytest
import torch

from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from tasks import tracking
from tasks.experiments import challenge_champion, log_result
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


def _result(tmp_path, accuracy: float, seed: int, variant: str = "subset",
            test_rows: int = 7600, truncated: bool = False) -> RunResult:
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
        dataset={"variant": variant, "test_rows": test_rows, "test_truncated": truncated},
        model_config=config_dict(model), checkpoint=checkpoint, seconds=1.5,
    )


def _retrain(store, tmp_path, accuracy, seed, variant="subset", **facts) -> SummaryRow:
    """One retrain through the logging task, as the flow calls it."""
    return _log(store, _result(tmp_path, accuracy, seed, variant, **facts), "default",
                f"pipe-{seed}")


def _log(store, result: RunResult, profile: str, pipeline_id: str) -> SummaryRow:
    """Log a result and challenge the champion with it, as the grid flow does."""
    uri, client = store
    parent = tracking.start_parent_run(client, result.task, profile, pipeline_id, {})
    row = log_result.fn(result, parent, uri, tracking.pipeline_tags(profile, pipeline_id))
    row = challenge_champion.fn(row, result, uri)
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

    # Another test split of the same data variant is not comparable: the alias stays...
    other = _retrain(store, tmp_path, accuracy=0.95, seed=5, test_rows=5000)
    assert other.champion == KEPT
    assert "not comparable" in client.get_run(other.run_id).data.tags[
        CHAMPION_REASON_TAG]
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "4"

    # ...until someone moves it by hand (e.g. that split is the one that counts now).
    champion.promote_by_hand(client, name, other.model_version, "5000-row split from now on")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == other.model_version
    assert client.get_model_version(name, other.model_version).tags[
        CHAMPION_REASON_TAG] == "5000-row split from now on"
    champion.promote_by_hand(client, name, "4", "back")

    # The full data variant outranks the subset: it takes the alias whatever the figures, and
    # a subset run never takes it back, even with a better figure.
    full = _retrain(store, tmp_path, accuracy=0.60, seed=6, variant="full")
    assert full.champion == PROMOTED
    assert "fuller evaluation" in client.get_run(full.run_id).data.tags[CHAMPION_REASON_TAG]
    subset = _retrain(store, tmp_path, accuracy=0.99, seed=7)
    assert subset.champion == KEPT
    assert "never takes the alias" in client.get_run(subset.run_id).data.tags[
        CHAMPION_REASON_TAG]
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == (
        full.model_version)
    info = champion.champion_info(client, name)
    assert info.version == full.model_version and info.data_variant == "full"
    assert not info.smoke and info.value == pytest.approx(0.60)
    assert f"{name}@champion = version {full.model_version}" in info.line()


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


def test_smoke_runs_have_their_own_name_and_never_block_the_real_champion(tmp_path):
    smoke = _result(tmp_path, 0.9, seed=1, test_rows=300, truncated=True)
    real = _result(tmp_path, 0.7, seed=2)
    assert champion.is_smoke(smoke) and not champion.is_smoke(real)
    assert champion.is_smoke(real, profile="smoke")  # the smoke profile, whatever the data say
    assert champion.registered_model_name(smoke) == "rnnflow-ag-news-gru6-smoke"
    assert champion.registered_model_name(real) == "rnnflow-ag-news-gru6"
    assert champion.registered_model_name(real, "smoke") == "rnnflow-ag-news-gru6-smoke"
    smoke_scope, real_scope = champion.eval_scope(smoke), champion.eval_scope(real)
    assert smoke_scope.endswith("|smoke") and not real_scope.endswith("|smoke")

    class _Run:
        def __init__(self, value, scope, profile="default"):
            self.data = type("D", (), {"metrics": {"test_accuracy": value},
                                       "tags": {names.EVAL_SCOPE_TAG: scope,
                                                names.PROFILE_TAG: profile}})()

    headline = Headline("test_accuracy", "max")
    # A real evaluation replaces a smoke champion, even with a worse figure...
    promote, reason, _ = champion.decide(headline, 0.7, real_scope, _Run(0.9, smoke_scope))
    assert promote and "fuller evaluation" in reason
    # ...and a smoke one never takes the alias from a real champion, even with a better one.
    promote, reason, _ = champion.decide(headline, 0.99, smoke_scope, _Run(0.7, real_scope))
    assert not promote and "never takes the alias" in reason
    # A smoke champion logged before scopes said so is known by its run's profile tag.
    legacy = smoke_scope.removesuffix("|smoke")
    assert champion.decide(headline, 0.5, real_scope, _Run(0.9, legacy, "smoke"))[0] is True
    # NaN never wins, whatever the scopes.
    assert champion.decide(headline, float("nan"), real_scope, _Run(0.9, smoke_scope))[0] is False


@pytest.mark.slow  # a fresh SQLite store costs ~8 s of MLflow migrations
def test_smoke_then_default_run_on_one_store_the_champion_is_the_default_model(store, tmp_path):
    """The issue's scenario: a smoke run, then a default-like run, on one store."""
    _, client = store
    smoke = _result(tmp_path, 0.95, seed=1, test_rows=300, truncated=True)
    real = _result(tmp_path, 0.70, seed=2)
    rows = {label: _log(store, result, profile, f"pipe-{label}")
            for label, result, profile in (("smoke", smoke, "smoke"), ("default", real, "default"))}
    name = "rnnflow-ag-news-gru6"
    served = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    assert served.run_id == rows["default"].run_id  # the default run's version serves
    info = champion.champion_info(client, name)
    assert info.profile == "default" and not info.smoke
    assert "real test split" in info.line()
    # Wherever the smoke version was registered, it does not hold the real model's alias.
    smoke_run = client.get_run(rows["smoke"].run_id)
    smoke_model = smoke_run.data.tags[names.CHAMPION_MODEL_TAG]
    if smoke_model == name + "-smoke":  # registered under its own name (registered_model_name)
        assert client.get_model_version_by_alias(smoke_model, CHAMPION_ALIAS).run_id == (
            rows["smoke"].run_id)
        assert champion.champion_info(client, smoke_model).smoke
    else:  # registered under the plain name: the real run took the alias from it
        assert smoke_model == name
        assert "fuller evaluation" in client.get_run(rows["default"].run_id).data.tags[
            CHAMPION_REASON_TAG]
    # ...and a later smoke run does not take it either.
    _log(store, _result(tmp_path, 0.99, seed=3, test_rows=300, truncated=True), "smoke",
         "pipe-smoke2")
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).run_id == rows["default"].run_id
