"""The `rnnflow` command line: each command runs one Prefect flow and prints a readable summary."""

from __future__ import annotations

import typer

from flows.settings import DATA_DIR, WORK_DIR

app = typer.Typer(
    help="rnnflow: recurrent-network experiments as a Prefect + MLflow batch workflow.",
    no_args_is_help=True,
    add_completion=False,
)

# Commands are added below, one section per flow. Keep each command a thin call into flows/.


# --- prepare: download and preprocess the datasets ---------------------------------------------
@app.command()
def prepare(
    data_dir: str = typer.Option("data", help="raw downloads and processed Parquet go here"),
    dataset: list[str] = typer.Option(  # noqa: B008  (typer's way to declare an option)
        [], "--dataset", "-d", help="only these datasets (repeatable; default: all four)"),
    vocab_size: int = typer.Option(20000, help="AG News word vocabulary size"),
):
    """Download (mirror first: $RNN_DATA_MIRROR), verify and preprocess the datasets."""
    import sys
    import time

    from rich.console import Console
    from rich.table import Table

    from flows.prepare import ALL_DATASETS, prepare_data, step_count, step_states, summarise

    unknown = sorted(set(dataset) - set(ALL_DATASETS))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; choose from {ALL_DATASETS}")
    chosen = dataset or ALL_DATASETS
    started = time.perf_counter()
    state = prepare_data(datasets=chosen, data_dir=data_dir, vocab_size=vocab_size,
                         return_state=True)
    manifests = state.result()  # raises the failing step's error (it names the file)
    seconds = time.perf_counter() - started
    summary = {name: summarise(m) for name, m in manifests.items()}
    table = Table(title=f"Prepared data under {data_dir}/processed (each folder's manifest.json)")
    for column in ("dataset", "train", "train rows", "test rows", "train chars", "test chars",
                   "vocab", "padding, random", "padding, buckets"):
        table.add_column(column, justify="left" if column in ("dataset", "train") else "right")
    batch = "-"
    for name, s in summary.items():
        pad = s["padding"]
        batch = pad["batch_size"] if pad else batch
        table.add_row(
            name, s["variant"] if s["variant"] == "full" else f"[bold red]{s['variant']}[/]",
            f"{s['rows']['train']:,}", f"{s['rows']['test']:,}",
            *(["-", "-"] if not s["chars"] else
              [f"{s['chars']['train']:,}", f"{s['chars']['test']:,}"]),
            "-" if s["vocab_size"] is None else f"{s['vocab_size']:,}",
            "-" if pad is None else f"{pad['random']:.1%}",
            "-" if pad is None else f"{pad['buckets']:.1%} ({pad['num_buckets']})")
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(f"Padding: share of padded slots in train batches of {batch}, drawn at random "
                  "or per length bucket (number of buckets). Rows: metro one per (day, slot, "
                  "station); trump/moliere one per line of text; ag_news one per article.")
    for name, s in summary.items():
        for note in s["notes"]:
            console.print(f"[bold red]WARNING[/] {name}: {note}")
    states = step_states(state, expected=step_count(chosen))
    cached = sum(1 for v in states.values() if v == "Cached")
    console.print(f"Done in {seconds:.1f} s: {cached} of {len(states)} steps reused from the "
                  "cache (downloads always re-verify the files on disk; a preprocess step whose "
                  "files no longer match its manifest runs again).")


# --- run: the whole pipeline -------------------------------------------------------------------
@app.command()
def run(
    profile: str = typer.Option("default", help="smoke, default, full, or a path to a .toml"),
    only: list[str] = typer.Option(  # noqa: B008  (typer's way to declare an option)
        None, help="run only these experiments (repeatable); only their datasets are prepared"
    ),
    data_dir: str = typer.Option(DATA_DIR, help="raw downloads and processed Parquet"),
    work_dir: str = typer.Option(WORK_DIR, help="checkpoints, per pipeline run"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
    workers: int = typer.Option(
        0, help="train this many configurations at once on a local Dask cluster (0 or 1: one "
        "at a time in this process)", min=0),
    cluster: str = typer.Option(
        None, help="an existing Dask scheduler, tcp://HOST:PORT (started with `dask scheduler`)"),
    force: bool = typer.Option(
        False, "--force", help="retrain configurations whose data, config, code and seed are "
        "unchanged since a logged run (default: reuse that run)"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the last killed run (its profile and experiments): "
        "finished configurations are kept, the interrupted one resumes from its checkpoint"),
):
    """Prepare the data, then train and evaluate every experiment of a profile."""
    import os
    import sys
    import time

    from rich.console import Console
    from rich.table import Table

    from flows.profiles import ProfileError, load_profile
    from flows.runners import (
        ClusterUnreachable,
        StoreNotShared,
        check_scheduler,
        check_shared_store,
    )

    try:  # the whole profile and the cluster, before Prefect starts or any data is touched
        load_profile(profile, only=only or None)
        if cluster:
            from tasks.tracking import default_tracking_uri

            check_shared_store(cluster, tracking_uri or default_tracking_uri())
            check_scheduler(cluster)
    except (ProfileError, ClusterUnreachable, StoreNotShared) as err:
        typer.echo(f"rnnflow run: {err}", err=True)
        raise typer.Exit(2) from None

    from flows import supervise

    if not os.environ.get(supervise.SUPERVISED):  # this process only watches the real run
        raise typer.Exit(supervise.supervise([sys.executable, "-m", "flows.cli", *sys.argv[1:]]))
    supervise.exit_on_signals()

    from flows.pipeline import pipeline
    from tasks.tracking.summaries import seed_spread

    killed = supervise.close_killed_runs()  # runs whose process died: Crashed / KILLED now
    resume_id = None
    if resume:
        if not killed:
            typer.echo("rnnflow run: --resume: no killed run to continue", err=True)
            raise typer.Exit(2)
        last = killed[0]
        resume_id, profile, only = last["pipeline_id"], last["profile"], last["only"]
        typer.echo(f"Resuming pipeline run {resume_id} (profile {profile}).")
    elif killed:
        typer.echo(f"{len(killed)} killed run(s) marked Crashed; `rnnflow run --resume` "
                   f"continues the last one ({killed[0]['pipeline_id']}).")

    started = time.perf_counter()
    results = pipeline(
        profile=profile, data_dir=data_dir, work_dir=work_dir, tracking_uri=tracking_uri,
        only=only or None, workers=workers, cluster=cluster, force=force, resume=resume_id,
    )
    table = Table(title=f"rnnflow pipeline, profile {profile}")
    spreads = seed_spread(row for rows in results.values() for row in rows)
    columns = ("experiment", "configuration", "headline", "value", *(
        ("over seeds",) if spreads else ()), "seconds", "device", "champion")
    for column in columns:
        table.add_column(column)
    reused = 0
    for name, rows in results.items():
        for row in rows:
            reused += row.champion == "reused"
            spread = spreads.get((row.task, row.config))  # shown on the first seed's row
            table.add_row(name, row.config, row.headline_metric, f"{row.headline:.4g}",
                          *((str(spread) if spread else "",) if spreads else ()),
                          f"{row.seconds:.0f}", row.device, row.champion or "-")
    console = Console(width=None if sys.stdout.isatty() else 120)  # logs: no truncated cells
    console.print(table)
    if reused:
        total = sum(len(rows) for rows in results.values())
        console.print(f"{reused} of {total} configurations reused: data, config, code and seed "
                      "unchanged since their logged run (seconds are that run's); --force "
                      "retrains them.")
    console.print(f"Done in {time.perf_counter() - started:.0f} s. Open the results with "
                  "`make ui` (MLflow at http://127.0.0.1:5000).")


# --- operate: servers, deployments, comparisons, champions --------------------------------------
def _print_frame(frame, title: str, fmt: str) -> None:
    """A DataFrame as a rich table (fmt=table), Markdown or CSV on stdout."""
    from rich.console import Console
    from rich.table import Table

    if frame.empty:
        typer.echo(f"{title}: nothing found.")
        return
    if fmt == "markdown":
        typer.echo(frame.to_markdown(index=False, floatfmt=".4g"))
    elif fmt == "csv":
        typer.echo(frame.to_csv(index=False), nl=False)
    else:
        table = Table(title=title)
        for column in frame.columns:
            table.add_column(str(column), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        Console(width=max(200, Console().width)).print(table)


@app.command()
def ui(
    prefect_port: int = typer.Option(4200, help="Prefect UI and API port"),
    mlflow_port: int = typer.Option(5000, help="MLflow UI and tracking server port"),
    backend_store_uri: str = typer.Option(
        None, help="MLflow store (default: sqlite:///<project>/mlruns/mlflow.db; a "
        "postgresql:// URI is passed through unchanged)"),
    host: str = typer.Option("127.0.0.1", help="address both servers bind; anything but "
                             "loopback needs --auth (README: Servers)"),
    allowed_host: list[str] = typer.Option(  # noqa: B008  (typer's way to declare an option)
        [], "--allowed-host", help="another name clients reach the servers by, e.g. "
        "mlops.example.org (repeatable); other Host headers are refused"),
    auth: bool = typer.Option(False, help="MLflow's basic-auth app and Prefect's API auth "
                              "($PREFECT_SERVER_API_AUTH_STRING=user:password)"),
):
    """Start the Prefect server and the MLflow UI (127.0.0.1 by default) with the project's
    stores; both stop with this command, even when it is killed."""
    import signal
    import sys
    import time
    from pathlib import Path

    from flows.servers import exposure_problems, local_servers

    problems = exposure_problems(host, auth)
    if problems:
        raise typer.BadParameter("; ".join(problems), param_hint="--host/--auth")
    # A SIGTERM (kill, a supervisor) unwinds like Ctrl-C, so both server groups get stopped;
    # a SIGKILL leaves that to the servers' watchdog (flows/servers.py).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with local_servers(Path.cwd(), prefect_port, mlflow_port, backend_store_uri, host=host,
                       allowed_hosts=allowed_host,
                       mlflow_app_name="basic-auth" if auth else None) as (pf, ml):
        typer.echo(f"Prefect UI  {pf.url}    (export PREFECT_API_URL={pf.api_url}; pid "
                   f"{pf.process.pid})")
        typer.echo(f"MLflow UI   {ml.url}    (export MLFLOW_TRACKING_URI={ml.url} to log "
                   f"through it; runs written straight to mlruns/mlflow.db show up as well; pid "
                   f"{ml.process.pid})")
        typer.echo("Ctrl-C stops both.")
        try:
            while pf.process.poll() is None and ml.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("Stopping the servers...")


@app.command()
def serve(
    profile: str = typer.Option("default", help="profile the deployments run by default"),
    schedule: bool = typer.Option(True, help="nightly pipeline schedule on (--no-schedule: off)"),
    limit: int = typer.Option(1, help="flow runs at a time (training shares the cores)"),
    api_url: str = typer.Option(None, help="Prefect API (default: $PREFECT_API_URL, else the "
                                "`make ui` server at http://127.0.0.1:4200/api)"),
):
    """Register the pipeline and experiment deployments and run their flow runs (one process)."""
    import os
    import urllib.request

    url = api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5).close()
    except OSError as err:
        raise typer.BadParameter(f"no Prefect server answers at {url} ({err}); start one with "
                                 "`make ui` or pass --api-url", param_hint="--api-url") from None
    os.environ["PREFECT_API_URL"] = url  # before prefect reads its settings
    from flows.deployments import serve_all

    serve_all(profile=profile, schedule_active=schedule, limit=limit)


@app.command()
def compare(
    last: int = typer.Option(10, help="how many of the latest child runs"),
    task: str = typer.Option(None, help="only this experiment, e.g. ag_news"),
    profile: str = typer.Option(None, help="only runs of this profile"),
    pipeline_id: str = typer.Option(None, help="only runs of this pipeline run (flow run id)"),
    champions: bool = typer.Option(False, help="list each model's champion instead"),
    fmt: str = typer.Option("table", "--format", help="table, markdown or csv"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
):
    """Print the summary table of the latest runs (or the champions) from the MLflow store."""
    from tasks.tracking import configure
    from tasks.tracking.compare import champions_table, recent_runs_table

    client = configure(tracking_uri)
    if champions:
        _print_frame(champions_table(client), "champions", fmt)
    else:
        frame = recent_runs_table(client, last, task=task, profile=profile,
                                  pipeline_id=pipeline_id)
        _print_frame(frame, f"latest {last} runs", fmt)


@app.command()
def predict(
    model: str = typer.Argument(..., help="registered name (rnnflow-ag-news-lstm8), or a task "
                                "with --config"),
    config: str = typer.Option(None, help="configuration name when MODEL is a task"),
    text: str = typer.Option(None, help="AG News: a headline to classify"),
    description: str = typer.Option(None, help="AG News: the article's first lines"),
    prompt: str = typer.Option(None, help="character models: text to continue"),
    inputs: str = typer.Option(None, "--input", help="raw inputs: .csv/.txt of titles or "
                               "prompts, .csv/.npy of flows in passengers (README: Use the "
                               "models); .npy batch for models without a serving spec"),
    start: str = typer.Option(None, help="metro: time of the first value (07:30, or "
                              "2019-01-21T07:30 for forecasts)"),
    length: int = typer.Option(None, help="character models: characters to generate (200)"),
    temperature: float = typer.Option(None, help="character models: sampling temperature (1)"),
    seed: int = typer.Option(None, help="character models: sampling seed (0)"),
    output: str = typer.Option(None, help="write the predictions to this .csv (.npy for arrays)"),
    verify: bool = typer.Option(True, help="check the model's files against their recorded "
                                "sha256 first (--no-verify: models logged without digests)"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
):
    """Predict with models:/<name>@champion from raw input: a headline, flows in passengers, a
    prompt. Says which version (and evaluation scope) serves; errors are one line, exit 2."""
    import numpy as np

    from tasks.tracking.inference import PredictError, predict_raw

    try:
        served, out = predict_raw(
            model, config=config, tracking_uri=tracking_uri, verify=verify,
            params={"length": length, "temperature": temperature, "seed": seed},
            text=text, description=description, prompt=prompt, file=inputs, start=start)
    except PredictError as err:
        typer.echo(f"rnnflow predict: {err}", err=True)
        raise typer.Exit(2) from None
    checked = f"{served.files_checked} files match their sha256" if served.files_checked else \
        "files NOT verified (--no-verify)"
    typer.echo(f"serving {served.info.line()}; {checked}")
    if not hasattr(out, "columns"):  # an array model: shapes, and classes for logits
        out = np.asarray(out)
        typer.echo(f"output {out.shape} {out.dtype}" + (
            f"; argmax {out.argmax(axis=1).tolist()}" if out.ndim == 2 else ""))
        if output:
            np.save(output, out)
        return
    if output:
        out.to_csv(output, index=False)
    if "text" in out.columns:  # generated text reads best as text
        for row in out.itertuples(index=False):
            typer.echo(f"{row.prompt}{row.text}")
        return
    shown = out[[c for c in out.columns if c != "probabilities"]]  # per-station lists: --output
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


@app.command()
def promote(
    model: str = typer.Argument(..., help="registered name, e.g. rnnflow-ag-news-bilstm64x2"),
    version: str = typer.Argument(..., help="the version to make champion"),
    reason: str = typer.Option("promoted by hand", help="kept as a tag on the version"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
):
    """Move the champion alias by hand, e.g. away from a champion measured on another split."""
    from tasks.tracking import champion_uri, configure
    from tasks.tracking.champion import promote_by_hand

    promote_by_hand(configure(tracking_uri), model, version, reason)
    typer.echo(f"{champion_uri(model)} -> version {version}")


@app.command()
def gc(
    work_dir: str = typer.Option(WORK_DIR, help="the checkpoints folder of the runs"),
    keep: int = typer.Option(None, help="flow runs whose checkpoints stay whole (default "
                             "$RNNFLOW_KEEP_CHECKPOINT_RUNS, else 3)", min=0),
    unlogged: bool = typer.Option(False, help="also remove configurations no run logged (a "
                                  "retry of their flow run could have resumed them)"),
    versions: bool = typer.Option(False, help="also delete old model versions: each model "
                                  "keeps its champion and its newest --keep-versions"),
    keep_versions: int = typer.Option(3, help="newest versions kept per model with --versions",
                                      min=0),
    dry_run: bool = typer.Option(False, help="only say what would go"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: mlruns/mlflow.db)"),
):
    """Free disk: checkpoints of logged configurations beyond the last runs (and, with
    --versions, old non-champion model versions with their artefacts)."""
    from pathlib import Path

    from flows.housekeeping import disk_usage, prune_checkpoints, prune_model_versions
    from tasks.tracking import configure
    from tasks.tracking.store import sqlite_path

    client = configure(tracking_uri)
    db = sqlite_path(client.tracking_uri)
    watched = {"checkpoints": Path(work_dir), **({"mlruns": db.parent} if db else {})}
    before = {k: disk_usage(p) for k, p in watched.items()}
    report = prune_checkpoints(work_dir, client, keep=keep, unlogged=unlogged, dry_run=dry_run)
    for path in report.removed:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {path}")
    for path in report.kept_unlogged:
        typer.echo(f"kept (not logged: `--unlogged` removes it) {path}")
    typer.echo(("[dry run] " if dry_run else "") + "checkpoints: " + report.summary())
    if versions:
        vreport = prune_model_versions(client, keep=keep_versions, dry_run=dry_run)
        for model, version in vreport.deleted:
            typer.echo(f"{'would delete' if dry_run else 'deleted'} {model} version {version}")
        typer.echo(("[dry run] " if dry_run else "") + "model versions: " + vreport.summary())
    after = {k: disk_usage(p) for k, p in watched.items()}
    typer.echo("disk: " + ", ".join(f"{k} {before[k] / 1e6:.1f} -> {after[k] / 1e6:.1f} MB"
                                    for k in watched))


if __name__ == "__main__":
    app()
