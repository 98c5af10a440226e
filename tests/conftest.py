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
