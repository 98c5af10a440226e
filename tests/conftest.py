"""Shared test setup: one torch thread (two cores are shared), deterministic seeds."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _experiment_registry():
    """An experiment a test registers (a stand-in) is gone after it: the next test sees the
    built-in five only, whatever order the tests run in."""
    from rnn_core import experiments

    experiments.names()  # discover the built-ins first, so they are part of the snapshot
    before = dict(experiments._REGISTRY)
    yield
    experiments._REGISTRY.clear()
    experiments._REGISTRY.update(before)


MIRROR = os.environ.get(
    "RNN_DATA_MIRROR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
)


@pytest.fixture(scope="session")
def mirror_dir():
    """The read-only dataset mirror (../shared/datasets); tests needing it skip without it."""
    from pathlib import Path

    path = Path(MIRROR)
    if not (path / "metro" / "hzdataset.pch").exists():
        pytest.skip(f"dataset mirror not found at {path} (set RNN_DATA_MIRROR)")
    return path


@pytest.fixture(scope="session")
def prepared_data(mirror_dir, tmp_path_factory):
    """A data dir with `processed/<dataset>` built from the mirror, on demand per dataset.

    Usage: `data_dir = prepared_data("metro", "trump")` -> Path with processed/metro, ...
    Each dataset is preprocessed once per test session, straight from the mirror files (the
    download path is tested separately); every folder ends with its manifest.json, so
    `DatasetManifest.read(data_dir / "processed" / name)` gives what prepare_data would return.
    """
    from rnn_core.datasets.ag_news import preprocess_ag_news
    from rnn_core.datasets.corpus import preprocess_corpus
    from rnn_core.datasets.metro import preprocess_metro

    root = tmp_path_factory.mktemp("data")
    done: set[str] = set()

    def prepare(*datasets: str):
        for name in datasets:
            if name in done:
                continue
            out = root / "processed" / name
            if name == "metro":
                preprocess_metro(mirror_dir / "metro" / "hzdataset.pch", out)
            elif name == "ag_news":
                preprocess_ag_news(
                    mirror_dir / "ag_news" / "train_subset.csv",
                    mirror_dir / "ag_news" / "test.csv",
                    out,
                    train_variant="subset",
                )
            elif name == "trump":
                preprocess_corpus("trump", mirror_dir / "trump" / "trump_full_speech.txt", out)
            elif name == "moliere":
                preprocess_corpus("moliere", mirror_dir / "moliere" / "moliere.txt", out)
            else:
                raise ValueError(f"unknown dataset {name!r}")
            done.add(name)
        return root

    return prepare


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the whole session (15-20 s to start).

    Flows called inside tests that request this fixture run against it, not ~/.prefect.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """A real Prefect server and MLflow tracking server on free 127.0.0.1 ports, with their
    stores in a temp folder; both process groups are stopped at the end of the session."""
    from types import SimpleNamespace

    from flows.servers import local_servers

    root = tmp_path_factory.mktemp("servers")
    with local_servers(project_dir=root, prefect_port=0, mlflow_port=0,
                       prefect_home=str(root / ".prefect-server"), log_dir=root / "logs",
                       backend_store_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}") as (pf, ml):
        yield SimpleNamespace(prefect=pf, mlflow=ml, root=root)


@pytest.fixture(scope="session")
def manifests(prepared_data):
    """`manifests("metro", "trump")` -> {dataset: DatasetManifest} of prepared folders, as
    prepare_data hands them to the experiments."""
    from rnn_core.datasets.manifest import DatasetManifest

    def read(*datasets: str):
        root = prepared_data(*datasets)
        return {name: DatasetManifest.read(root / "processed" / name) for name in datasets}

    return read
