"""Summary rows and tables: one row per child run, the same whether just logged or read back.

A row is made right after logging (`SummaryRow.from_result`, what the flows return) or from a
run in the store (`SummaryRow.from_run`, what `rnnflow compare` prints and what a retried flow
run reuses for a configuration an earlier attempt finished). Both must agree column for column:
the parent run's table and `rnnflow compare` are read side by side.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from pydantic import ConfigDict

from rnn_core.experiments.protocol import repeat_of
from rnn_core.results import RunResult
from tasks.tracking.names import (
    CHAMPION_DECISION_TAG,
    CHAMPION_METRIC_PREFIX,
    CHAMPION_VERSION_TAG,
    CONFIG_TAG,
    DATA_VARIANT_TAG,
    DEVICE_TAG,
    FINAL_METRICS_TAG,
    HEADLINE_METRIC_TAG,
    PROFILE_TAG,
    TASK_TAG,
    TRAIN_SECONDS_METRIC,
)

# Columns first in every table, in this order; the metrics follow, sorted by name.
FRONT_COLUMNS = ["task", "config", "profile", "data_variant", "headline_metric", "headline",
                 "seeds", "headline_mean", "headline_sd", "champion", "model_version", "seconds", "device", "started", "run_id"]
SUMMARY_FILES = ("summary.csv", "summary.md", "summary.html")


@dataclass
class SummaryRow:
    """One trained configuration as the summary tables show it.

    A plain dataclass of JSON types: Prefect flows return lists of rows (in memory, pickled or
    as JSON), and pydantic validates and serialises it as it is. A headline that is NaN (e.g. a
    diverged run) stays NaN through JSON, not null, so the row still validates on the way back.
    """

    __pydantic_config__ = ConfigDict(ser_json_inf_nan="constants")

    task: str
    config: str
    profile: str = ""
    data_variant: str = ""
    run_id: str = ""
    # The registered version; None when nothing was registered at logging time, "" when a run
    # read back carries no champion decision (both print as an empty cell).
    model_version: str | None = None
    headline_metric: str = ""
    headline: float = math.nan
    champion: str = ""  # the champion decision: "promoted", "kept" or "" (not challenged)
    seconds: float = math.nan  # training wall time, 0.1 s
    device: str = ""
    # Only a run read back knows when it started; rows made while logging leave it empty and
    # their tables (the parent run's summary) go without the column, as they always have.
    started: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the final metrics, by name

    @classmethod
    def from_result(cls, result: RunResult, run_id: str, model_version: str | None,
                    profile: str = "", champion: str = "") -> SummaryRow:
        """The row of a result just logged as child run `run_id`."""
        return cls(
            task=result.task, config=result.name, profile=profile,
            data_variant=result.tags.get(DATA_VARIANT_TAG, ""), run_id=run_id,
            model_version=model_version, headline_metric=result.headline.metric,
            headline=result.headline_value, champion=champion, seconds=round(result.seconds, 1),
            device=result.device, metrics={k: _plain(v) for k, v in result.metrics.items()},
        )

    @classmethod
    def from_run(cls, run: Run) -> SummaryRow:
        """The row of a logged child run, from its tags and final metrics only."""
        tags, metrics = run.data.tags, run.data.metrics
        final = [n for n in tags.get(FINAL_METRICS_TAG, "").split(",") if n]
        if not final:  # logged before the tag existed: every metric but the bookkeeping ones
            final = [n for n in metrics
                     if not n.startswith(CHAMPION_METRIC_PREFIX) and n != TRAIN_SECONDS_METRIC]
        headline = tags.get(HEADLINE_METRIC_TAG, "")
        return cls(
            task=tags.get(TASK_TAG, ""), config=tags.get(CONFIG_TAG, run.info.run_name),
            profile=tags.get(PROFILE_TAG, ""), data_variant=tags.get(DATA_VARIANT_TAG, ""),
            run_id=run.info.run_id, model_version=tags.get(CHAMPION_VERSION_TAG, ""),
            headline_metric=headline, headline=metrics.get(headline, math.nan),
            champion=tags.get(CHAMPION_DECISION_TAG, ""),
            seconds=round(metrics.get(TRAIN_SECONDS_METRIC, math.nan), 1),
            device=tags.get(DEVICE_TAG, ""),
            started=time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
            metrics={n: metrics[n] for n in final if n in metrics},
        )

    def as_dict(self) -> dict[str, Any]:
        """The flat form the tables use: every field but `metrics`, then one key per metric."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}
        if not self.started:
            del flat["started"]
        # A metric never shadows a column: the tables and the CLI read those by name.
        flat.update((k, v) for k, v in self.metrics.items() if k not in flat)
        return flat

    def __getitem__(self, key: str) -> Any:
        """The flat form by key, so code written against the old dict rows (`row["headline"]`)
        keeps working; new code reads attributes."""
        return self.as_dict()[key]


def _plain(value: Any) -> float | int:
    """Metrics as plain Python numbers (numpy scalars are not JSON); counts stay integers."""
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def flat(row: SummaryRow | Mapping[str, Any]) -> dict[str, Any]:
    """A row's flat form; a mapping is taken as one already (e.g. a line of a summary.csv)."""
    return row.as_dict() if isinstance(row, SummaryRow) else dict(row)


@dataclass(frozen=True)
class SeedSpread:
    """A configuration's headline over its seeds (its first run and its seed repeats)."""

    seeds: int
    mean: float
    sd: float  # sample standard deviation (n - 1); NaN for one seed

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.sd:.2g} ({self.seeds} seeds)"


def seed_spread(rows: Iterable[SummaryRow | Mapping[str, Any]]) -> dict[tuple[str, str],
                                                                        SeedSpread]:
    """{(task, configuration): spread} for each configuration trained with several seeds
    ("lstm8" with "lstm8-seed1", "lstm8-seed2"); configurations with one seed are left out."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in map(flat, rows):  # rows of any table: those without a headline don't count
        config = str(row.get("config", ""))
        groups.setdefault((row.get("task", ""), repeat_of(config) or config), []).append(
            float(row.get("headline", math.nan)))
    spreads = {}
    for key, values in groups.items():
        if len(values) > 1:
            mean = math.fsum(values) / len(values)
            sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
            spreads[key] = SeedSpread(len(values), mean, sd)
    return spreads


def summary_table(rows: Iterable[SummaryRow | Mapping[str, Any]]):
    """A pandas DataFrame, one row per child run: the front columns, then metrics by name.
    With seed repeats, each run of a configuration also shows the configuration's `seeds`,
    `headline_mean` and `headline_sd` (sample standard deviation over its seeds)."""
    import pandas as pd

    rows = [flat(r) for r in rows]
    spreads = seed_spread(rows)
    for row in rows if spreads else ():
        config = str(row.get("config", ""))
        spread = spreads.get((row.get("task", ""), repeat_of(config) or config))
        row.update(seeds=spread.seeds if spread else 1,
                   headline_mean=spread.mean if spread else row.get("headline", math.nan),
                   headline_sd=spread.sd if spread else math.nan)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    rest = sorted(c for c in frame.columns if c not in FRONT_COLUMNS)
    return frame[[c for c in FRONT_COLUMNS if c in frame.columns] + rest]


def attach_summary(client: MlflowClient, run_id: str,
                   rows: Iterable[SummaryRow | Mapping[str, Any]]) -> None:
    """Log the rows' table on a run as CSV (to read back), Markdown and HTML (to read)."""
    table = summary_table(rows)
    with tempfile.TemporaryDirectory() as tmp:
        csv, markdown, html = (Path(tmp) / name for name in SUMMARY_FILES)
        table.to_csv(csv, index=False)
        markdown.write_text(table.to_markdown(index=False, floatfmt=".4g"), encoding="utf-8")
        html.write_text(table.to_html(index=False, float_format=lambda v: f"{v:.4g}"),
                        encoding="utf-8")
        for path in (csv, markdown, html):
            client.log_artifact(run_id, str(path))
