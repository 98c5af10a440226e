"""Where the grid's configurations train: one process, a local Dask cluster, or an existing one.

    task_runner(workers=0)                      one configuration at a time, in this process
    task_runner(workers=2)                      a Dask LocalCluster of 2 worker processes
    task_runner(cluster="tcp://10.0.0.5:8786")  an existing scheduler (`dask scheduler` and
                                                `dask worker tcp://...` started by the user)

Dask only ever appears here, and only through Prefect's own task runner (prefect-dask), so the
flow body is the same in every case: `train_configuration.submit(...)`. Worker processes have one
thread each (training sets its own torch threads), listen on 127.0.0.1, and the dashboard is
off unless asked for. On workers with GPUs (`dask worker --resources GPU=1`), each configuration
asks for one GPU (`gpu_annotation`), so N GPUs train N configurations at once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


class ClusterUnreachable(RuntimeError):
    """The scheduler address given cannot be reached (one line naming it)."""


def check_scheduler(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the address, when no Dask scheduler listens there."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname or not parsed.port:
        raise ClusterUnreachable(f"--cluster {address!r}: expected tcp://HOST:PORT")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
            pass
    except OSError as err:
        raise ClusterUnreachable(
            f"no Dask scheduler reachable at {address} ({err.strerror or err}); start one with "
            f"`dask scheduler` and `dask worker {address}`, or drop --cluster") from None


class StoreNotShared(RuntimeError):
    """Workers on other hosts were given a store only this machine can write (one line)."""


def check_shared_store(cluster: str | None, uri: str) -> None:
    """A scheduler on another host means workers there: they cannot write this machine's SQLite
    file, nor reach the mlflow server the run would start for it on 127.0.0.1. Fail before any
    work, saying what to pass instead."""
    if not cluster or not uri.startswith("sqlite:"):
        return
    host = urlparse(cluster if "://" in cluster else f"tcp://{cluster}").hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return
    raise StoreNotShared(
        f"--cluster {cluster}: the MLflow store {uri} is a SQLite file on this machine, which "
        "workers on other hosts cannot write; pass --tracking-uri http://HOST:PORT (an mlflow "
        "server they reach) or a postgresql+psycopg2:// store (or use a scheduler on "
        "127.0.0.1 for workers on this machine)")


def task_runner(workers: int = 0, cluster: str | None = None,
                dashboard: bool = False) -> TaskRunner:
    """The task runner for `workers` local processes, or the scheduler at `cluster`."""
    if cluster:
        from prefect_dask import DaskTaskRunner

        check_scheduler(cluster)
        return DaskTaskRunner(address=cluster)
    if workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "env": prefect_api_env(),  # report to this run's Prefect API, not one of their own
            "n_workers": workers,
            "threads_per_worker": 1,  # one configuration per worker process at a time
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0" if dashboard else None,
            # Training runs in the worker itself; no nanny restarts on memory spikes.
            "memory_limit": 0,
        },
    )


def prefect_api_env() -> dict[str, str]:
    """The environment a worker process needs to report to this run's Prefect API.

    With no PREFECT_API_URL set (`rnnflow run`, `make run`), Prefect serves the flow from a
    temporary server it starts for this process; a spawned worker does not know its address and
    would start a temporary server of its own (measured: one more server process per worker,
    writing the same database). Called inside the flow run, when that server is up.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the process's one temporary server (a singleton)
        url = server.api_url if server.running else None
    return {"PREFECT_API_URL": url} if url else {}


def uses_dask(workers: int = 0, cluster: str | None = None) -> bool:
    return bool(cluster) or workers > 1


def gpu_annotation(runner: TaskRunner | None) -> AbstractContextManager:
    """Inside a Dask task runner whose workers declare GPU resources, each configuration asks
    for one GPU (so N GPUs train N configurations at once); elsewhere, nothing."""
    client = getattr(runner, "_client", None)  # DaskTaskRunner's client once started
    if client is None:
        return nullcontext()
    import dask

    workers = client.scheduler_info().get("workers", {}).values()
    has_gpus = any(w.get("resources", {}).get("GPU") for w in workers)
    return dask.annotate(resources={"GPU": 1}) if has_gpus else nullcontext()


@contextmanager
def shared_tracking(uri: str, log_dir: Path, many_writers: bool) -> Iterator[str]:
    """The tracking URI every process of the run logs to.

    Many processes writing one SQLite file is the known failure ("database is locked",
    migration races): with several writers, an `mlflow server` is started in front of the
    store for the run (schema created once, here, before it starts) and everyone logs over
    HTTP. Server URIs (http, postgresql, ...) are used as given.
    """
    if not (many_writers and uri.startswith("sqlite:")):
        yield uri
        return
    from flows.servers import free_port, start_mlflow, stop_group, wait_healthy
    from tasks.tracking import configure

    configure(uri)  # creates / migrates the schema once, before any worker writes
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"  # as for SQLite runs
    server = start_mlflow(free_port(), uri, str(artifacts), log_dir)
    try:
        wait_healthy(server)
        yield server.url
    finally:
        stop_group(server.process)
        configure(uri)  # MLflow's fluent URIs (and MLFLOW_TRACKING_URI) pointed at the server
