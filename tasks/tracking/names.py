"""Every name rnnflow writes into MLflow and reads back: tags, metrics, experiments, models.

The store is an interface between modules that never call each other: `runs` writes child runs,
`compare` and `champion` search and read them back, the flows and tests filter on the same tags.
A name spelt twice can drift apart silently (a search that finds nothing is not an error), so
each one is spelt once, here, and everyone imports it.
"""

from __future__ import annotations

# --- experiments and registered models -----------------------------------------------------------
EXPERIMENT_PREFIX = "rnnflow/"  # one experiment per task: rnnflow/<task>
PIPELINE_EXPERIMENT = "pipeline"  # rnnflow/pipeline: one run per pipeline run, across all tasks
MODEL_PREFIX = "rnnflow-"  # registered models: rnnflow-<task>-<config>, "_" spelt "-"

# --- tags MLflow itself gives a meaning to -------------------------------------------------------
PARENT_RUN_TAG = "mlflow.parentRunId"  # nests a child under its parent in the UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown as the run's source version

# --- tags on rnnflow runs ------------------------------------------------------------------------
ROLE_TAG = "rnnflow.role"  # which kind of run: one of the ROLE_* values below
ROLE_PARENT = "parent"  # one per task and pipeline run, carries the task's summary table
ROLE_CHILD = "child"  # one per trained configuration
ROLE_PIPELINE = "pipeline"  # one per pipeline run, in rnnflow/pipeline
TASK_TAG = "rnnflow.task"
CONFIG_TAG = "rnnflow.config"  # configuration label, unique within the task
PROFILE_TAG = "rnnflow.profile"
PIPELINE_ID_TAG = "rnnflow.pipeline_id"  # the flow run id: a retry keeps it, so it finds its runs
DEVICE_TAG = "rnnflow.device"
HEADLINE_METRIC_TAG = "rnnflow.headline_metric"  # name of the metric the task is judged by
# Comma-separated names of the final metrics (RunResult.metrics), so a row read back from the
# store tells them from the per-epoch series.
FINAL_METRICS_TAG = "rnnflow.final_metrics"
INTERRUPTED_TAG = "rnnflow.interrupted"  # why a run left RUNNING by a killed attempt is KILLED
TASKS_TAG = "rnnflow.tasks"  # on the pipeline run: the tasks its table covers

# --- tags experiments put in RunResult.tags (logged as they are) ---------------------------------
DATA_VARIANT_TAG = "data_variant"  # e.g. "full" or "subset": headlines of variants never compete
TEST_SPLIT_TAG = "test_split"  # optional: names the test split when dataset facts cannot
RESULT_PROFILE_TAG = "profile"  # optional: the profile an experiment says it ran under

# --- metrics -------------------------------------------------------------------------------------
TRAIN_SECONDS_METRIC = "train_seconds"  # wall time of the training, logged with the final metrics

# --- champion / challenger (tasks/tracking/champion.py) ------------------------------------------
CHAMPION_ALIAS = "champion"  # models:/<name>@champion is what inference loads
EVAL_SCOPE_TAG = "rnnflow.eval_scope"  # what the headline was measured on; must match to compare
CHAMPION_TAG_PREFIX = "rnnflow.champion."  # the decision, on the challenger's run and version
CHAMPION_DECISION_TAG = CHAMPION_TAG_PREFIX + "decision"  # one of the decisions below
CHAMPION_REASON_TAG = CHAMPION_TAG_PREFIX + "reason"
CHAMPION_MODEL_TAG = CHAMPION_TAG_PREFIX + "model"
CHAMPION_VERSION_TAG = CHAMPION_TAG_PREFIX + "version"  # the challenger's own version
CHAMPION_PREVIOUS_VERSION_TAG = CHAMPION_TAG_PREFIX + "previous_version"
PROMOTED = "promoted"
KEPT = "kept"
PROMOTED_BY_HAND = "promoted by hand"
# Metrics the decision logs on the challenger's run; bookkeeping, not results of the model.
CHAMPION_METRIC_PREFIX = "champion."
CHALLENGER_VALUE_METRIC = CHAMPION_METRIC_PREFIX + "challenger_value"
INCUMBENT_VALUE_METRIC = CHAMPION_METRIC_PREFIX + "incumbent_value"
# The paired significance test (rnn_core.significance), as metrics on the run and version tags.
CHAMPION_TEST_TAG = CHAMPION_TAG_PREFIX + "test"  # the method and level, or why only headlines
P_VALUE_METRIC = CHAMPION_METRIC_PREFIX + "p_value"  # one-sided bootstrap p
MCNEMAR_P_METRIC = CHAMPION_METRIC_PREFIX + "mcnemar_p"  # exact McNemar, 0/1 outcomes only
DIFF_METRIC = CHAMPION_METRIC_PREFIX + "diff"  # mean per-example improvement (> 0: better)
CI_LOW_METRIC = CHAMPION_METRIC_PREFIX + "ci_low"
CI_HIGH_METRIC = CHAMPION_METRIC_PREFIX + "ci_high"
LEVEL_METRIC = CHAMPION_METRIC_PREFIX + "level"
PER_EXAMPLE_ARTIFACT = "test_per_example.npy"  # on the child run: per-example test outcomes

# --- logged models (tasks/tracking/models.py, integrity.py) --------------------------------------
# sha256 of the model's digest list, on the registered version: checked before every load.
MODEL_DIGEST_TAG = "rnnflow.model.sha256"
MODEL_DIGESTS_ARTIFACT = "model_digests.json"  # on the model's run: relative path -> sha256
SERVING_KIND_TAG = "rnnflow.serving"  # on the version: the raw input it takes (rnn_core.serving)

# --- live child runs (tasks/tracking/live.py) and their dataset inputs (lineage.py) --------------
SYSTEM_METRICS_PREFIX = "system/"  # MLflow's system-metrics monitor: CPU, memory, GPU
DATASET_CONTEXT_TAG = "mlflow.data.context"  # train | validation | test, on each dataset input

# Retrain only when something changed (rnn_core.fingerprints): the digests on every child run.
FINGERPRINT_TAG = "rnnflow.fingerprint"  # data + config + code + seed, combined
FINGERPRINT_PART_TAG = "rnnflow.fingerprint."  # + data | config | code | seed
REUSED_FROM_TAG = "rnnflow.reused_from"  # on a parent: config -> the run it reused
