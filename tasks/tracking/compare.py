"""Comparisons read back from the store: the latest child runs, champions, pipeline summaries.

`rnnflow compare` prints `recent_runs_table` — the same columns as the summary table a parent run
carries (`tasks.tracking.summary_table`), one row per child run, newest first. Every column comes
from what the child run logged: tags (task, config, profile, data variant, device, headline),
its final metrics (named in the `rnnflow.final_metrics` tag) and the champion decision.
"""

from __future__ import annotations

import time

from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.tracking import EXPERIMENT_PREFIX, experiment_id, finish_parent_run, summary_table
from tasks.tracking.champion import ALIAS, TAG_PREFIX

FINAL_METRICS_TAG = "rnnflow.final_metrics"  # comma-separated names of RunResult.metrics
PIPELINE_EXPERIMENT = "pipeline"  # rnnflow/pipeline: one run per pipeline run, all tasks


def rnnflow_experiment_ids(client: MlflowClient) -> list[str]:
    """Ids of every `rnnflow/<task>` experiment in the store."""
    found = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    return [e.experiment_id for e in found]


def recent_child_runs(
    client: MlflowClient, last: int = 10, task: str | None = None,
    profile: str | None = None, pipeline_id: str | None = None,
) -> list[Run]:
    """The `last` most recent finished child runs, newest first, optionally filtered."""
    ids = rnnflow_experiment_ids(client)
    if not ids:
        return []
    clauses = ["tags.`rnnflow.role` = 'child'", "attributes.status = 'FINISHED'"]
    for tag, value in (("rnnflow.task", task), ("rnnflow.profile", profile),
                       ("rnnflow.pipeline_id", pipeline_id)):
        if value:
            clauses.append(f"tags.`{tag}` = '{_quote(value)}'")
    return client.search_runs(
        ids, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=last
    )


def finished_child(client: MlflowClient, task: str, pipeline_id: str, config: str) -> Run | None:
    """The FINISHED child run of `config` in this pipeline run, if an earlier attempt logged it
    (a retried flow run keeps its pipeline id: what it finished is not trained or logged twice)."""
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + task)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.`rnnflow.role` = 'child' and attributes.status = 'FINISHED' and "
        f"tags.`rnnflow.pipeline_id` = '{_quote(pipeline_id)}' and "
        f"tags.`rnnflow.config` = '{_quote(config)}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


def _quote(value: str) -> str:
    return value.replace("'", "''")


def run_row(run: Run) -> dict:
    """One summary row from a logged child run (the keys `tasks.experiments.log_result` returns)."""
    tags, metrics = run.data.tags, run.data.metrics
    names = [n for n in tags.get(FINAL_METRICS_TAG, "").split(",") if n]
    if not names:  # logged before the tag existed: every metric but the bookkeeping ones
        names = [n for n in metrics if not n.startswith("champion.") and n != "train_seconds"]
    headline = tags.get("rnnflow.headline_metric", "")
    return {
        "task": tags.get("rnnflow.task", ""),
        "config": tags.get("rnnflow.config", run.info.run_name),
        "profile": tags.get("rnnflow.profile", ""),
        "data_variant": tags.get("data_variant", ""),
        "headline_metric": headline,
        "headline": metrics.get(headline, float("nan")),
        "champion": tags.get(TAG_PREFIX + "decision", ""),
        "model_version": tags.get(TAG_PREFIX + "version", ""),
        "seconds": round(metrics.get("train_seconds", float("nan")), 1),
        "device": tags.get("rnnflow.device", ""),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
        "run_id": run.info.run_id,
        **{n: metrics[n] for n in names if n in metrics},
    }


def recent_runs_table(client: MlflowClient, last: int = 10, **filters):
    """`recent_child_runs` as a summary table (pandas DataFrame), newest first."""
    return summary_table([run_row(r) for r in recent_child_runs(client, last, **filters)])


def champions_table(client: MlflowClient):
    """One row per registered rnnflow model: the champion's version, headline and run."""
    import pandas as pd

    rows = []
    for model in client.search_registered_models(filter_string="name LIKE 'rnnflow-%'"):
        version = model.aliases.get(ALIAS) if isinstance(model.aliases, dict) else None
        if version is None:
            rows.append({"model": model.name, "champion_version": "", "headline_metric": ""})
            continue
        mv = client.get_model_version(model.name, version)
        run = client.get_run(mv.run_id)
        metric = run.data.tags.get("rnnflow.headline_metric", "")
        rows.append({
            "model": model.name, "champion_version": str(version), "headline_metric": metric,
            "headline": run.data.metrics.get(metric, float("nan")),
            "profile": run.data.tags.get("rnnflow.profile", ""),
            "data_variant": run.data.tags.get("data_variant", ""),
            "uri": f"models:/{model.name}@{ALIAS}", "run_id": mv.run_id,
        })
    return pd.DataFrame(rows)


def log_pipeline_summary(
    client: MlflowClient, pipeline_id: str, profile: str, rows: list[dict]
) -> str:
    """One run in `rnnflow/pipeline` per pipeline run, carrying the table across all tasks."""
    run = client.create_run(
        experiment_id(client, PIPELINE_EXPERIMENT),
        run_name=f"pipeline-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"rnnflow.role": "pipeline", "rnnflow.profile": profile,
              "rnnflow.pipeline_id": pipeline_id,
              "rnnflow.tasks": ",".join(sorted({r.get("task", "") for r in rows}))},
    )
    finish_parent_run(client, run.info.run_id, rows=rows)
    return run.info.run_id
