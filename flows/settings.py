"""Prefect defaults for running offline from the project folder; import before prefect.

Prefect reads its settings from the environment when it is first imported, so this module only
fills in variables nobody has set (the Makefile exports the same values; a user's own exports
win). Why each one (see shared/STACK.md):
- PREFECT_HOME in the project: the temporary server's database stays with the project.
- results in the project: cached task results are files there; deleting .prefect/ forgets them.
- a 120 s ephemeral start-up timeout: a fresh PREFECT_HOME can take over the 20 s default.
- analytics off: one telemetry lookup per process otherwise, and this machine is offline.
- rnn_core's loggers go to the flow's log, so the library's warnings (e.g. the AG News subset
  fallback) show up in the Prefect UI too.
- MLflow's "View run ... at" line per closed run is off (the summary table links the runs).
"""

from __future__ import annotations

import os
from pathlib import Path


def apply_defaults(project_dir: Path | None = None) -> dict[str, str]:
    """Set the offline Prefect defaults that are not set yet; returns what was applied."""
    home = os.environ.get("PREFECT_HOME") or str((project_dir or Path.cwd()).resolve() / ".prefect")
    defaults = {
        "PREFECT_HOME": home,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(Path(home) / "storage"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "rnn_core",
        # MLflow prints "View run ... at: <url>" for every run it closes over HTTP: dozens of
        # lines per pipeline run that say nothing the summary table does not.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    applied = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


apply_defaults()

# Where a run keeps its files, relative to the working directory (the project root when served
# from there): every flow parameter and CLI option defaults to these.
DATA_DIR = "data"  # raw/ downloads and processed/ Parquet with their manifests
WORK_DIR = "checkpoints"  # checkpoints/<flow run id>/<experiment>/<configuration>/
