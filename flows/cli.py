"""The `rnnflow` command line: each command runs one Prefect flow and prints a readable summary."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="rnnflow: recurrent-network experiments as a Prefect + MLflow batch workflow.",
    no_args_is_help=True,
    add_completion=False,
)

# Commands are added below, one section per flow. Keep each command a thin call into flows/.


# --- run: the whole pipeline -------------------------------------------------------------------
@app.command()
def run(
    profile: str = typer.Option("default", help="smoke, default, full, or a path to a .toml"),
    only: list[str] = typer.Option(None, help="run only these experiments (repeatable)"),
    data_dir: str = typer.Option("data", help="raw downloads and processed Parquet"),
    work_dir: str = typer.Option("checkpoints", help="checkpoints, per pipeline run"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
):
    """Prepare the data, then train and evaluate every experiment of a profile."""
    import time

    from rich.console import Console
    from rich.table import Table

    from flows.pipeline import pipeline

    started = time.perf_counter()
    results = pipeline(
        profile=profile, data_dir=data_dir, work_dir=work_dir, tracking_uri=tracking_uri,
        only=only or None,
    )
    table = Table(title=f"rnnflow pipeline, profile {profile}")
    for column in ("experiment", "configuration", "headline", "value", "seconds", "device"):
        table.add_column(column)
    for name, rows in results.items():
        for row in rows:
            table.add_row(name, row["config"], row["headline_metric"], f"{row['headline']:.4g}",
                          f"{row['seconds']:.0f}", row["device"])
    console = Console()
    console.print(table)
    console.print(f"Done in {time.perf_counter() - started:.0f} s. Open the results with "
                  "`make ui` (MLflow at http://127.0.0.1:5000).")


if __name__ == "__main__":
    app()
