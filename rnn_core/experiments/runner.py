"""The one runner: drives an experiment's phases for one configuration and returns its RunResult.

    result = run_configuration("ag_news", config, "lstm8", manifests, work_dir="checkpoints/x")

What it does once, for every experiment (see rnn_core.experiments.protocol):
- threads (`train.torch_threads`) for the configuration, restored afterwards, and an
  allocator that keeps freed tensor memory (rnn_core.allocator: Dask workers' does not);
- checks the prepared files it reads against their manifest (a clear error naming the file);
- seeds everything from `train.seed` before the data phase and again before the model is built,
  so the initial weights depend on the seed alone; a seed repeat ("lstm8-seed1", see
  `Experiment.runs`) is its configuration trained with that seed, in its own folder;
- trains with the one loop, checkpointing under `work_dir/<name>/` and resuming from there;
- chooses the epoch (`train.select_epoch`: last, or best on the experiment's validation metric);
- opens the sealed test split for the scoring phase only;
- names the history's metrics the same way everywhere (epoch, train_loss, val_*, lr, seconds);
- assembles the RunResult: params = the whole config tree, as the profile wrote it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_core import experiments
from rnn_core.allocator import keep_freed_memory
from rnn_core.checkpoints import load_checkpoint, save_checkpoint, seed_everything
from rnn_core.config import as_dict
from rnn_core.datasets.manifest import DatasetManifest, as_manifests
from rnn_core.experiments.protocol import Experiment
from rnn_core.models import config_dict
from rnn_core.results import RunResult
from rnn_core.training import as_callbacks, resolve_device, train

BEST = "best.pt"  # the best-validation weights, beside training's last.pt
MODEL = "model.pt"  # the scored weights and model config only: what the model artefact copies


class KeepBest:
    """Callback: after each epoch, save the weights to `path` when the validation metric improves.

    On a resumed run the best so far is read back from `path`, so the choice spans all epochs.
    """

    def __init__(self, model, path: Path, metric: str, goal: str):
        self.model, self.path, self.key, self.goal = model, Path(path), f"val_{metric}", goal
        self.best, self.epoch = None, -1
        if self.path.exists():
            saved = load_checkpoint(self.path)
            if saved["config"] != config_dict(model):
                raise ValueError(f"{self.path}: saved for another model config; use another dir")
            self.best, self.epoch = float(saved["value"]), int(saved["epoch"])

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.goal == "max" else value < self.best

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.key not in metrics:
            raise KeyError(f"select_epoch=best_val needs {self.key!r} in the validation scores; "
                           f"got {sorted(metrics)}")
        if self._better(metrics[self.key]):
            self.best, self.epoch = float(metrics[self.key]), epoch
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            save_checkpoint(self.path, {"model_state": state, "config": config_dict(self.model),
                                        "epoch": epoch, "value": self.best})


def check_history(history: list[dict[str, float]], where: str) -> None:
    """No per-epoch key may come from the test split."""
    leaked = sorted({k for row in history for k in row if k.startswith("test_")})
    if leaked:
        raise AssertionError(f"{where}: per-epoch history holds test metrics {leaked}")


def run_configuration(experiment: str | Experiment, config: Any, name: str,
                      manifests: dict[str, Any], work_dir: str | Path,
                      callbacks=None) -> RunResult:
    """Train and score configuration `name` of `experiment` (see the module docstring)."""
    exp = experiments.get(experiment) if isinstance(experiment, str) else experiment
    planned = exp.runs(config)
    if name not in planned:
        raise KeyError(f"{exp.name}: unknown configuration {name!r}; planned: {planned}")
    base, config = exp.resolve(config, name)  # a seed repeat: its configuration, its seed
    tc = exp.train_config(config, base)
    keep_freed_memory()  # a Dask worker's allocator would return every freed tensor to the OS
    threads = torch.get_num_threads()
    if tc.torch_threads > 0:
        torch.set_num_threads(tc.torch_threads)
    try:
        return _run(exp, config, base, name, as_manifests(manifests), Path(work_dir), callbacks)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was


def _run(exp: Experiment, config: Any, name: str, label: str,
         manifests: dict[str, DatasetManifest], work_dir: Path, callbacks) -> RunResult:
    """Configuration `name` trained as run `label` (the same, or a seed repeat's name)."""
    started = time.perf_counter()
    tc = exp.train_config(config, name)  # config.train unless the experiment says otherwise
    missing = [d for d in exp.needs(config) if d not in manifests]
    if missing:
        raise KeyError(f"{exp.name}: no prepared manifest for {missing}; prepare them first")
    for dataset in exp.needs(config):
        # Exists, same size and sha256 as prepared: a worker on another host that sees no copy,
        # or a stale one, of the shared data folder fails here naming the file (the largest,
        # AG News' 15 MB, hashes in ~30 ms).
        manifests[dataset].verify()

    # -- data -> model -> batches --------------------------------------------------------------
    seed_everything(tc.seed)  # splits, samplers
    data = exp.data(config, name, manifests)
    seed_everything(tc.seed)  # the initial weights depend on the seed alone
    model = exp.model(config, name, data)
    batches = exp.batches(config, name, data)

    # -- train (resumes from work_dir/name/last.pt) ----------------------------------------------
    run_dir = work_dir / label
    for partial in run_dir.glob(".*.tmp"):  # a checkpoint write cut short by a kill
        partial.unlink(missing_ok=True)
    keep = KeepBest(model, run_dir / BEST, *exp.select_on) if tc.select_epoch == "best_val" else None
    trained = train(
        model, batches.train, tc, eval_batches=batches.val,
        callbacks=[*as_callbacks(callbacks), *([keep] if keep else [])],
        checkpoint_dir=run_dir,
        checkpoint_meta={"experiment": exp.name, "configuration": label,
                         "config": as_dict(config)},
    )
    # Per-class accuracies stay out of the per-epoch series (80 stations would be 80 curves per
    # epoch in MLflow); the chosen epoch's validation figures below keep them.
    history = [{k: v for k, v in row.items() if "_class_" not in k} for row in trained.history]
    check_history(history, f"{exp.name}/{label}")

    # -- epoch choice: the chosen epoch's weights are the ones scored and registered ------------
    checkpoint = Path(trained.checkpoint)
    chosen = len(history) - 1
    if keep is not None:
        chosen, checkpoint = keep.epoch, run_dir / BEST
        model.load_state_dict(load_checkpoint(checkpoint)["model_state"])
    model.eval()

    # -- score: the test split, once --------------------------------------------------------------
    with data.unsealed():
        scores = dict(exp.score(config, name, model, data))
    # Optional per-example test outcomes (mean = headline): the champion's paired test reads them.
    per_example = scores.pop("per_example", None)
    if per_example is not None:
        per_example = np.asarray(per_example, dtype=np.float32).ravel()
    # Numbers are metrics; anything else the scoring phase returns (a confusion matrix, an
    # example forecast) is for the report only.
    metrics = {k: float(v) for k, v in scores.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["chosen_epoch"] = float(chosen)
    metrics["resumed_from_epoch"] = float(trained.resumed_from)  # 0 = trained from scratch
    for key, value in trained.history[chosen].items():
        if key.startswith("val_"):
            metrics.setdefault(key, float(value))  # the validation figures of the chosen epoch

    # The registered model needs weights and config, not Adam's moments or the RNG states
    # that last.pt keeps for resuming (twice the size for Adam).
    weights = save_checkpoint(run_dir / MODEL, {
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_dict(model), "epoch": chosen,
        "meta": {"experiment": exp.name, "configuration": label, "config": as_dict(config)}})

    # -- report -----------------------------------------------------------------------------------
    report = exp.report(config, name, model, data, history, {**scores, **metrics},
                        run_dir / "plots")
    return RunResult(
        task=exp.name,
        name=label,
        params=as_dict(config),
        metrics=metrics,
        headline=exp.headline,
        history=history,
        figures=report.figures,
        texts=report.texts,
        tags={**exp.tags(config, name, data),
              **({"repeat_of": name, "seed": str(tc.seed)} if label != name else {})},
        dataset=data.info,
        model_config=config_dict(model),
        checkpoint=Path(weights),
        device=str(resolve_device(tc.device)),
        seconds=time.perf_counter() - started,
        diagnostic=exp.diagnostic,
        serving=exp.serving(config, name, data),  # raw input -> model input (rnn_core.serving)
        per_example=per_example,
        repeat_of=name if label != name else None,
    )
