"""Where the store is and how to address it: tracking URI, client, experiments, search filters;
and how rnnflow holds when the store misbehaves.

- **A lost tracking server loses no work.** `configure` bounds MLflow's HTTP client (retries,
  backoff, timeout; `HTTP_DEFAULTS`, only where the user has not set them), so a logging call to
  a server that is gone fails after seconds, not the ~18 minutes of MLflow's defaults.
  `tracking_guard(uri, checkpoint)` turns that failure into `TrackingUnavailable`, whose one
  line names the URI and the trained checkpoint; a retry of the same flow run resumes the
  finished checkpoint (no epoch is trained again) and logs it.
- **Many writers, one store.** `ensure_store` creates or migrates a SQLite store once, under a
  file lock beside the database, before any writer opens it: two processes creating a fresh
  store at the same moment no longer race through MLflow's schema migration. `configure` calls
  it; server URIs (http, postgresql, ...) are left to their server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.tracking.names import EXPERIMENT_PREFIX

# --- bounded HTTP client ---------------------------------------------------------------------
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) keep a run retrying a lost
# server for many minutes (an 18-minute hang measured, ../shared/STACK.md). Ours: 4 attempts,
# 0 + 2 + 4 s of backoff (+ up to 1 s of MLflow's jitter each), 15 s per attempt. One logging
# call then gives up after ~8 s when the server is gone (connection refused) and after ~68 s
# when it accepts connections but never answers (`http_retry_bound`).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # MLflow reads an int here
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
_MLFLOW_BACKOFF_MAX = 120.0  # urllib3's cap on one backoff sleep


def apply_http_defaults() -> dict[str, str]:
    """Set the bounded retry settings the user has not set; returns those applied.

    MLflow reads them from the environment on every request, so this works after import too.
    """
    applied = {k: v for k, v in HTTP_DEFAULTS.items() if not os.environ.get(k)}
    os.environ.update(applied)
    return applied


def http_retry_bound() -> tuple[float, float]:
    """Seconds one MLflow HTTP call can take before it fails, under the current settings:
    (server gone: connection refused at once, server hung: every attempt times out)."""
    from mlflow import environment_variables as env

    retries = env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    factor = env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    jitter = env.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get()
    timeout = env.MLFLOW_HTTP_REQUEST_TIMEOUT.get()
    # urllib3: no sleep after the first failure, then factor * 2**(n-1) (+ jitter), capped.
    sleeps = sum(min(_MLFLOW_BACKOFF_MAX, factor * 2 ** (n - 1) + jitter)
                 for n in range(2, retries + 1))
    return sleeps, sleeps + (retries + 1) * timeout


class TrackingUnavailable(RuntimeError):
    """The tracking store could not be reached: nothing was lost, the checkpoint is on disk."""

    def __init__(self, uri: str, checkpoint: str | os.PathLike | None = None,
                 cause: BaseException | None = None):
        self.uri, self.checkpoint, self.cause = uri, checkpoint, cause
        super().__init__(unreachable_message(uri, checkpoint, cause))


def unreachable_message(uri: str, checkpoint: str | os.PathLike | None = None,
                        cause: BaseException | None = None) -> str:
    """One line for the log: which store failed, where the trained model is, what to do."""
    refused, hung = http_retry_bound()
    why = f" ({type(cause).__name__}: {_first_line(cause)})" if cause is not None else ""
    kept = (f"the trained model is kept in {Path(checkpoint).parent}" if checkpoint
            else "nothing trained is lost")
    return (f"MLflow tracking store {uri} is unreachable, gave up after ~{refused:.0f} s "
            f"(refused) / ~{hung:.0f} s (no answer) of retries{why}; {kept}: start the server "
            "again, then retry this flow run (Retry in the Prefect UI or `prefect flow-run "
            "retry <flow run id>`) to log it without retraining")


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:limit]


def is_unreachable(err: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) says the store could not be reached:
    refused or reset connections, timeouts, retries exhausted on 5xx answers."""
    import requests
    import urllib3.exceptions

    transport = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError,
                 requests.exceptions.Timeout, requests.exceptions.RetryError,
                 urllib3.exceptions.MaxRetryError, urllib3.exceptions.NewConnectionError,
                 urllib3.exceptions.ProtocolError)
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (TrackingUnavailable, *transport)):
            return True
        if isinstance(err, mlflow.exceptions.MlflowException):
            # rest_utils wraps transport errors as "API request to <url> failed with ..."
            message = str(err.message)
            if message.startswith("API request to") and any(
                    s in message for s in ("Max retries exceeded", "timeout", "Connection",
                                           "too many", "RemoteDisconnected")):
                return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def tracking_guard(uri: str, checkpoint: str | os.PathLike | None = None) -> Iterator[None]:
    """Re-raise a failure to reach the store as `TrackingUnavailable` (naming `uri` and the
    trained `checkpoint`); any other error passes through unchanged.

        with tracking_guard(tracking_uri, result.checkpoint):
            row = log_result(result, ...)
    """
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as err:
        if is_unreachable(err):
            raise TrackingUnavailable(uri, checkpoint, err) from err
        raise


def retry_unless_unreachable(task, task_run, state) -> bool:
    """A Prefect `retry_condition_fn`: retry a logging task, except when the store could not be
    reached (MLflow's client has already retried that for `http_retry_bound()` seconds)."""
    return not is_unreachable(getattr(state, "data", None))


# --- the store: URI, schema, client ----------------------------------------------------------
def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in `<root>/mlruns/mlflow.db`."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = (root or Path.cwd()).resolve()
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


_ENSURED: set[str] = set()
_ENSURED_LOCK = threading.Lock()


@contextlib.contextmanager
def store_lock(uri: str, purpose: str = "schema") -> Iterator[None]:
    """An exclusive lock between processes on one SQLite store (a file beside the database,
    `<db>.<purpose>.lock`); a no-op for server URIs."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.{purpose}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_store(uri: str) -> bool:
    """Create or migrate a SQLite store's schema once, under `store_lock`; True if this call
    created or upgraded it. Other URIs: nothing (their server owns the schema).

    Once per process and URI; later calls return at once. An existing store whose schema is
    older than this MLflow is not upgraded behind anyone's back: MLflow's own error ("out-of-date
    database schema ... mlflow db upgrade") stands.
    """
    path = sqlite_path(uri)
    if path is None or uri in _ENSURED:
        return False
    with _ENSURED_LOCK, store_lock(uri):
        if uri in _ENSURED:
            return False
        from mlflow.store.db import utils as db

        engine = db.create_sqlalchemy_engine_with_retry(uri)
        try:
            changed = False
            if not db._all_tables_exist(engine):  # fresh (or interrupted) creation
                db._initialize_tables(engine)
                changed = True
            db._verify_schema(engine)
        finally:
            engine.dispose()
        _ENSURED.add(uri)
        return changed


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (default: the project's SQLite store) and return a client.

    Bounds the HTTP client's retries (`apply_http_defaults`) and creates a SQLite store's schema
    once, before the first writer (`ensure_store`). The fluent URIs are set too: `log_model`
    (the one fluent call) and `models:/` loading use them.
    """
    uri = tracking_uri or default_tracking_uri()
    apply_http_defaults()
    ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, task: str) -> str:
    """Get or create the task's experiment; local stores keep artifacts beside the database."""
    name = EXPERIMENT_PREFIX + task
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        store_dir = Path(uri.removeprefix("sqlite:///")).parent
        artifact_location = (store_dir / "artifacts" / task).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent task
        return client.get_experiment_by_name(name).experiment_id


def rnnflow_experiment_ids(client: MlflowClient) -> list[str]:
    """Ids of every `rnnflow/<task>` experiment in the store."""
    found = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    return [e.experiment_id for e in found]


def git_commit() -> str:
    """The checkout's commit, for the runs' source version ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tag_is(tag: str, value: str) -> str:
    """A search_runs clause matching one tag value; quotes in values (config labels) escaped."""
    quoted = value.replace("'", "''")
    return f"tags.`{tag}` = '{quoted}'"


def status_is(status: str) -> str:
    return f"attributes.status = '{status}'"
