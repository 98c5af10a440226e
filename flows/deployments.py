"""Deployments: the whole pipeline and each experiment, with parameters and a nightly retrain.

Two routes register the same deployments (same names, entrypoints, parameters and schedules):

- `rnnflow serve` — one process registers them all and runs their flow runs (a laptop):
  `prefect.serve(*deployments())`.
- `prefect deploy --all` with prefect.yaml — a `process` work pool and `prefect worker start`.

    rnnflow-pipeline/nightly       the pipeline, profile "default", every night at 02:00 Paris time
    <experiment flow>/on-demand    each experiment alone (e.g. ag-news/on-demand), no schedule

Each deployment runs one flow run at a time (`CONCURRENCY`): a second run of the same deployment
(a nightly run still going when someone triggers one, two `prefect deployment run`s) waits in
AwaitingConcurrencySlot until the first finishes, instead of training beside it on the same
cores and writing the same store. Prefect enforces this on the server, for every worker and
serving process alike.

Trigger one by hand with `prefect deployment run rnnflow-pipeline/nightly -p profile=smoke`.
Flow runs start in the serving process's working directory: serve from the project root, so the
default data/, checkpoints/ and mlruns/ are the project's.
"""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.experiments import FLOWS
from flows.pipeline import pipeline

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every day
TIMEZONE = "Europe/Paris"  # cron times are local to this zone (daylight saving included)
PIPELINE_DEPLOYMENT = "nightly"
EXPERIMENT_DEPLOYMENT = "on-demand"
TAGS = ["rnnflow"]
# One flow run per deployment at a time; more are queued, not cancelled (prefect.yaml agrees).
CONCURRENCY = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def pipeline_deployment(profile: str = "default", schedule_active: bool = True,
                        cron: str = NIGHTLY_CRON, timezone: str = TIMEZONE) -> RunnerDeployment:
    """The whole pipeline, retrained nightly (the schedule is on unless `schedule_active=False`)."""
    return pipeline.to_deployment(
        name=PIPELINE_DEPLOYMENT,
        schedules=[Cron(cron, timezone=timezone, active=schedule_active)],
        parameters={"profile": profile},
        description="Prepare the data, then retrain and evaluate every experiment of a profile; "
        "each new model version challenges its champion.",
        tags=[*TAGS, "pipeline"],
        entrypoint_type=EntrypointType.MODULE_PATH,  # flows.pipeline.pipeline: any working dir
        concurrency_limit=CONCURRENCY,
    )


def experiment_deployments(profile: str = "default") -> list[RunnerDeployment]:
    """One unscheduled deployment per experiment flow."""
    return [
        flow.to_deployment(
            name=EXPERIMENT_DEPLOYMENT,
            parameters={"profile": profile},
            description=(flow.description or "").strip().splitlines()[0],
            tags=[*TAGS, "experiment", name],
            entrypoint_type=EntrypointType.MODULE_PATH,
            concurrency_limit=CONCURRENCY,
        )
        for name, flow in FLOWS.items()
    ]


def deployments(profile: str = "default", schedule_active: bool = True) -> list[RunnerDeployment]:
    """Every rnnflow deployment: the scheduled pipeline first, then the experiments."""
    return [pipeline_deployment(profile, schedule_active), *experiment_deployments(profile)]


def serve_all(profile: str = "default", schedule_active: bool = True, limit: int = 1) -> None:
    """Register every deployment and run their flow runs from this process until interrupted.

    `limit` flow runs at a time: training runs share the machine's cores, so one by default.
    """
    from prefect import serve

    serve(*deployments(profile, schedule_active), limit=limit)
