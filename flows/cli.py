"""The `rnnflow` command line: each command runs one Prefect flow and prints a readable summary."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="rnnflow: recurrent-network experiments as a Prefect + MLflow batch workflow.",
    no_args_is_help=True,
    add_completion=False,
)

# Commands are added below, one section per flow. Keep each command a thin call into flows/.


if __name__ == "__main__":
    app()
