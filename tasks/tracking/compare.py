"""Comparisons read back from the store: the latest child runs, champions, earlier attempts.

`rnnflow compare` prints `recent_runs_table` — the same columns as the summary table a parent run
carries (`tasks.tracking.summary_table`), one row per child run, newest first. Every column comes
from what the child run logged: tags (task, config, profile, data variant, device, headline),
its final metrics (named in the `rnnflow.final_metrics` tag) and the champion decision; see
`SummaryRow.from_run`.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.tracking.models import champion_uri
from tasks.tracking.names import (
    CONFIG_TAG,
    EXPERIMENT_PREFIX,
    MODEL_PREFIX,
    PIPELINE_ID_TAG,
    PROFILE_TAG,
    ROLE_CHILD,
    ROLE_TAG,
    TASK_TAG,
    TRAIN_SECONDS_METRIC,
)
from tasks.tracking.store import rnnflow_experiment_ids, status_is, tag_is
from tasks.tracking.summaries import SummaryRow, summary_table

# Also reached through this module by the flows and the end-to-end tests.
__all__ = ["champions_table", "finished_child", "last_training_seconds", "recent_child_runs",
           "recent_runs_table", "rnnflow_experiment_ids", "run_row", "summary_table"]

_FINISHED_CHILD = f"{tag_is(ROLE_TAG, ROLE_CHILD)} and {status_is('FINISHED')}"


def recent_child_runs(
    client: MlflowClient, last: int = 10, task: str | None = None,
    profile: str | None = None, pipeline_id: str | None = None,
) -> list[Run]:
    """The `last` most recent finished child runs, newest first, optionally filtered."""
    ids = rnnflow_experiment_ids(client)
    if not ids:
        return []
    clauses = [_FINISHED_CHILD]
    for tag, value in ((TASK_TAG, task), (PROFILE_TAG, profile), (PIPELINE_ID_TAG, pipeline_id)):
        if value:
            clauses.append(tag_is(tag, value))
    return client.search_runs(
        ids, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=last
    )


def newest_finished_child(client: MlflowClient, task: str, **tags: str) -> Run | None:
    """The newest FINISHED child run of `task` whose tags have these values, if any."""
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + task)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        " and ".join([_FINISHED_CHILD, *(tag_is(k, v) for k, v in tags.items())]),
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


def finished_child(client: MlflowClient, task: str, pipeline_id: str, config: str) -> Run | None:
    """The FINISHED child run of `config` in this pipeline run, if an earlier attempt logged it
    (a retried flow run keeps its pipeline id: what it finished is not trained or logged twice)."""
    return newest_finished_child(client, task, **{PIPELINE_ID_TAG: pipeline_id, CONFIG_TAG: config})


def last_training_seconds(client: MlflowClient, task: str, profile: str) -> dict[str, float]:
    """{configuration: training seconds of its newest FINISHED child run on this profile}: what
    the grid orders its submissions by (longest first, so no long one starts last)."""
    seconds: dict[str, float] = {}
    for run in recent_child_runs(client, last=1000, task=task, profile=profile):  # newest first
        config, value = run.data.tags.get(CONFIG_TAG), run.data.metrics.get(TRAIN_SECONDS_METRIC)
        if config and value is not None:
            seconds.setdefault(config, float(value))
    return seconds


def run_row(run: Run) -> SummaryRow:
    """One summary row from a logged child run (the row `tasks.experiments.log_result` returns
    when it logged that run, plus when it started)."""
    return SummaryRow.from_run(run)


def recent_runs_table(client: MlflowClient, last: int = 10, **filters):
    """`recent_child_runs` as a summary table (pandas DataFrame), newest first."""
    return summary_table([run_row(r) for r in recent_child_runs(client, last, **filters)])


def champions_table(client: MlflowClient):
    """One row per registered rnnflow model: the champion's version, headline, scope and run.

    `smoke` marks the `rnnflow-<task>-<config>-smoke` models (and any champion measured on a
    smoke slice): their figures come from tiny slices of the data.
    """
    import pandas as pd

    from tasks.tracking.champion import champion_info

    rows = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        info = champion_info(client, model.name)
        if info is None:
            rows.append({"model": model.name, "champion_version": "", "headline_metric": ""})
            continue
        rows.append({
            "model": model.name, "champion_version": info.version,
            "headline_metric": info.metric,
            "headline": info.value if info.value is not None else float("nan"),
            "profile": info.profile, "data_variant": info.data_variant, "smoke": info.smoke,
            "eval_scope": info.scope, "uri": champion_uri(model.name), "run_id": info.run_id,
        })
    return pd.DataFrame(rows)
