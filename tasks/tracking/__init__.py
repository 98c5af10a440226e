"""The one place rnnflow talks to MLflow.

Layout in the store:
- one experiment per task, named `rnnflow/<task>` (e.g. `rnnflow/ag_news`);
- one parent run per pipeline run and task, tagged with the profile and the pipeline run id;
- one child run per trained configuration: params (whole configs), per-epoch metrics with
  steps, final metrics with stable names, PNG plots, text samples, dataset facts, and the model
  logged as a pyfunc (rebuilt from config + state_dict) and registered as `rnnflow-<task>-<name>`;
- one run per pipeline run in `rnnflow/pipeline`, with the summary table across tasks.

Modules: `names` (every tag, metric and model name), `store` (URI, client, experiments),
`runs` (writing parent, child and pipeline runs), `models` (the pyfunc and its registered name),
`summaries` (`SummaryRow` and the tables), `compare` (reading runs back), `champion` (the alias),
`inference` (loading the champion). This module re-exports what the flows and tasks call, so
`from tasks import tracking; tracking.configure(...)` is all a caller needs.
"""

from tasks.tracking.models import champion_uri, model_name, registered_name
from tasks.tracking.names import EXPERIMENT_PREFIX, PARENT_RUN_TAG
from tasks.tracking.recovery import close_running
from tasks.tracking.runs import (
    finish_parent_run,
    log_pipeline_summary,
    log_report,
    log_result,
    pipeline_tags,
    start_parent_run,
)
from tasks.tracking.store import configure, default_tracking_uri, experiment_id, git_commit
from tasks.tracking.summaries import SummaryRow, summary_table

__all__ = [
    "EXPERIMENT_PREFIX",
    "PARENT_RUN_TAG",
    "SummaryRow",
    "champion_uri",
    "close_running",
    "configure",
    "default_tracking_uri",
    "experiment_id",
    "finish_parent_run",
    "git_commit",
    "log_pipeline_summary",
    "log_report",
    "log_result",
    "model_name",
    "pipeline_tags",
    "registered_name",
    "start_parent_run",
    "summary_table",
]
