"""One Prefect flow per experiment. Each trains the configurations its config plans, logs each
as a child run under one parent run in the experiment's MLflow experiment, and returns the
summary rows. A config left empty comes from the named profile.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.profiles import experiment_config, load_profile
from rnn_core import experiments
from rnn_core.experiments import (
    ag_news as ag_news_exp,
)
from rnn_core.experiments import (
    char_generation as char_exp,
)
from rnn_core.experiments import (
    metro_classification as metro_cls_exp,
)
from rnn_core.experiments import (
    metro_forecasting as metro_fc_exp,
)
from rnn_core.experiments import (
    vanishing_gradients as vanishing_exp,
)
from tasks import tracking
from tasks.experiments import log_result, train_configuration
from tasks.tracking.compare import finished_child, run_row


def run_tracked(name: str, config, profile: str, data_dir: str, work_dir: str,
                tracking_uri: str | None, pipeline_id: str | None) -> list[dict]:
    """Train every planned configuration of experiment `name` and log it to MLflow."""
    if config is None:
        config = experiment_config(load_profile(profile), name)
    pipeline_id = pipeline_id or str(flow_run.id or "local")
    client = tracking.configure(tracking_uri)
    # Stable across retries of the same flow run, so a crashed training resumes from here.
    run_dir = Path(work_dir) / pipeline_id / name
    parent = tracking.start_parent_run(client, name, profile, pipeline_id, {"config": config})
    tags = {"rnnflow.profile": profile, "rnnflow.pipeline_id": pipeline_id}
    rows = []
    try:
        for config_name in experiments.get(name).plan(config):
            logged = finished_child(client, name, pipeline_id, config_name)
            if logged is not None:  # an earlier attempt of this flow run finished and logged it
                rows.append(run_row(logged))
                continue
            result = train_configuration(name, config, config_name, data_dir, str(run_dir))
            rows.append(log_result(result, parent, client.tracking_uri, tags))
    except BaseException:
        tracking.finish_parent_run(client, parent, status="FAILED")
        raise
    tracking.finish_parent_run(client, parent, rows=rows)
    return rows




@flow(name="metro-classification")
def metro_classification(
    config: metro_cls_exp.Config | None = None, profile: str = "default", data_dir: str = "data",
    work_dir: str = "checkpoints", tracking_uri: str | None = None,
    pipeline_id: str | None = None,
) -> list[dict]:
    """Which station is it? Many-to-one on windows of flows; error against test length."""
    return run_tracked("metro_classification", config, profile, data_dir, work_dir,
                       tracking_uri, pipeline_id)


@flow(name="metro-forecasting")
def metro_forecasting(
    config: metro_fc_exp.Config | None = None, profile: str = "default", data_dir: str = "data",
    work_dir: str = "checkpoints", tracking_uri: str | None = None,
    pipeline_id: str | None = None,
) -> list[dict]:
    """Many-to-many forecast of t+1..t+H against persistence and time-of-day baselines."""
    return run_tracked("metro_forecasting", config, profile, data_dir, work_dir,
                       tracking_uri, pipeline_id)


@flow(name="char-generation")
def char_generation(
    config: char_exp.Config | None = None, profile: str = "default", data_dir: str = "data",
    work_dir: str = "checkpoints", tracking_uri: str | None = None,
    pipeline_id: str | None = None,
) -> list[dict]:
    """Character language models on Trump and Molière: bits per char and generated text."""
    return run_tracked("char_generation", config, profile, data_dir, work_dir,
                       tracking_uri, pipeline_id)


@flow(name="ag-news")
def ag_news(
    config: ag_news_exp.Config | None = None, profile: str = "default", data_dir: str = "data",
    work_dir: str = "checkpoints", tracking_uri: str | None = None,
    pipeline_id: str | None = None,
) -> list[dict]:
    """AG News topic classification: SimpleRNN, masking, LSTM, two-layer BiLSTM."""
    return run_tracked("ag_news", config, profile, data_dir, work_dir, tracking_uri, pipeline_id)


@flow(name="vanishing-gradients")
def vanishing_gradients(
    config: vanishing_exp.Config | None = None, profile: str = "default", data_dir: str = "data",
    work_dir: str = "checkpoints", tracking_uri: str | None = None,
    pipeline_id: str | None = None,
) -> list[dict]:
    """Gradient norm against distance from the loss for tanh RNN, LSTM and GRU."""
    return run_tracked("vanishing_gradients", config, profile, data_dir, work_dir,
                       tracking_uri, pipeline_id)


FLOWS = {
    "metro_classification": metro_classification,
    "metro_forecasting": metro_forecasting,
    "char_generation": char_generation,
    "ag_news": ag_news,
    "vanishing_gradients": vanishing_gradients,
}
