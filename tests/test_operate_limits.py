"""Many writers, one store, and bounded waits, without servers: each deployment runs one flow run
at a time (both routes agree), MLflow's HTTP client is bounded by default, a SQLite store's
schema is created once under its lock, and failures to reach the store read as one clear line."""

from pathlib import Path

import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException

from flows import deployments
from tasks.tracking import store

REPO = Path(__file__).resolve().parents[1]


def test_each_deployment_runs_one_flow_run_at_a_time_on_both_routes():
    served = deployments.deployments()
    for deployment in served:
        assert deployment.concurrency_limit == 1, deployment.name
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert len(raw["deployments"]) == len(served)
    for entry in raw["deployments"]:
        assert entry["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}, entry


def test_http_defaults_fill_only_what_the_user_left_unset(monkeypatch):
    for key in store.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "40")  # the user's own choice wins
    applied = store.apply_http_defaults()
    assert applied == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    refused, hung = store.http_retry_bound()
    assert refused == pytest.approx(8.0)  # 0 + (2 + 1) + (4 + 1) s: backoff plus jitter
    assert hung == pytest.approx(8.0 + 4 * 15)  # four attempts that each time out
    assert hung < 90  # the whole bound stays near a minute


def test_unreachable_store_errors_are_recognised_and_named():
    refused = requests.exceptions.ConnectionError("Connection refused")
    try:
        try:
            raise refused
        except requests.exceptions.ConnectionError as err:  # how MLflow's rest_utils wraps it
            raise MlflowException(f"API request to http://127.0.0.1:9/api failed with exception "
                                  f"{err}") from None
    except MlflowException as wrapped:
        assert store.is_unreachable(wrapped)
    assert store.is_unreachable(MlflowException(
        "API request to http://x/api failed with exception HTTPConnectionPool: Max retries "
        "exceeded with url"))
    assert not store.is_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"))
    assert not store.is_unreachable(ValueError("bad config"))

    guard = store.tracking_guard("http://127.0.0.1:9", "checkpoints/abc/ag_news/lstm/model.pt")
    with pytest.raises(store.TrackingUnavailable) as caught, guard:
        raise refused
    line = str(caught.value)
    assert "\n" not in line
    assert "http://127.0.0.1:9" in line and "checkpoints/abc/ag_news/lstm" in line
    assert "retry this flow run" in line and "without retraining" in line
    # Anything else passes through unchanged.
    with pytest.raises(ValueError), store.tracking_guard("http://127.0.0.1:9"):
        raise ValueError("not a network problem")

    class _State:  # what Prefect hands a retry_condition_fn
        def __init__(self, data):
            self.data = data

    assert store.retry_unless_unreachable(None, None, _State(refused)) is False
    assert store.retry_unless_unreachable(None, None, _State(ValueError("x"))) is True


def test_ensure_store_creates_the_schema_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert store.ensure_store(uri) is True  # created
    assert store.ensure_store(uri) is False  # once per process
    assert (tmp_path / "mlruns" / "mlflow.db.schema.lock").exists()
    assert store.ensure_store("http://127.0.0.1:5000") is False  # the server's business
    store._ENSURED.discard(uri)
    assert store.ensure_store(uri) is False  # up to date: nothing to do
