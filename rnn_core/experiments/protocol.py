"""The shape every experiment has: named phases that one runner drives.

An experiment is a subclass of `Experiment` holding the science only:

    data(config, name, manifests)  -> Splits      train / val / test from the prepared manifests
    model(config, name, data)      -> nn.Module   built from the config's model block
    batches(config, name, data)    -> Batches     training batches per epoch, validation batches
    (train: the runner, with rnn_core.training.train and the config's train block)
    score(config, name, model, data) -> scores    the test split, once, plus baselines: numbers
                                                  are the run's metrics; other values (a
                                                  confusion matrix) go to the report only
    report(config, name, model, data, history, scores, folder) -> Report   figures, samples

`rnn_core.experiments.runner.run_configuration` does everything else, once for all of them:
threads, seeding, device, the checkpoint folder and resume, epoch selection, the history's metric
names (epoch, train_loss, val_<metric>, lr, seconds) and the RunResult.

The test split is sealed inside `Splits` until the runner opens it for `score`: reading
`data.test` in any other phase raises `SealedSplitError`, so no per-epoch curve, epoch choice
or setting can ever be based on it.

Its Config is one dataclass tree that maps 1:1 onto the profile's tables:

    [ag_news]          the experiment's own fields (which configurations, data slices, ...)
    [ag_news.train]    rnn_core.training.TrainConfig, embedded (epochs, lr, seed, select_epoch)
    [ag_news.model]    the model block, from which the model config is built

Seeds: with `train.repeats = 3` each planned configuration trains three times, with seeds
`seed`, `seed + 1`, `seed + 2`; the extra runs are named "<configuration>-seed<k>"
(`Experiment.runs`) and are variance repeats: logged beside it, summarised as mean and spread,
never registered (the first seed's model is the one that challenges the champion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from rnn_core.datasets.manifest import DatasetManifest
from rnn_core.models import Batch
from rnn_core.results import Headline

_REPEAT = re.compile(r"^(?P<base>.+)-seed(?P<seed>\d+)$")


def repeat_of(run_name: str) -> str | None:
    """"lstm8-seed2" -> "lstm8" (the configuration a seed repeat measures); None otherwise."""
    match = _REPEAT.match(run_name)
    return match["base"] if match else None


class SealedSplitError(RuntimeError):
    """A phase other than `score` read the test split."""


class Splits:
    """One configuration's data: `train`, `val`, `test` (any objects) plus experiment extras.

        Splits(train=x, val=v, test=t, info={...}, vocab=vocab)   # extras become attributes

    `info` is what the run records about the data (variant, rows, checksums, slices).
    """

    def __init__(self, train: Any, val: Any, test: Any, info: dict[str, Any] | None = None,
                 **extras: Any):
        self.train, self.val, self._test = train, val, test
        self.info = dict(info or {})
        self._sealed = True
        for key, value in extras.items():
            setattr(self, key, value)

    @property
    def test(self) -> Any:
        if self._sealed:
            raise SealedSplitError(
                "the test split is read only by the final scoring phase (score); use val")
        return self._test

    @contextlib.contextmanager
    def unsealed(self):
        """The runner's scoring phase: the test split may be read inside this block only."""
        self._sealed = False
        try:
            yield self
        finally:
            self._sealed = True


@dataclass
class Batches:
    """What the training loop reads: `train(epoch)` batches and the validation batches scored
    after every epoch (a callable returning an iterable, or a re-iterable collection)."""

    train: Callable[[int], Iterable[Batch]]
    val: Callable[[], Iterable[Batch]] | Iterable[Batch]


@dataclass
class Report:
    """Artifacts of one configuration: PNG figures (name -> path) and texts (name -> text)."""

    figures: dict[str, Path] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


class Experiment:
    """Base class: subclasses set the class attributes and implement the phases."""

    name: ClassVar[str]  # e.g. "ag_news": MLflow experiment rnnflow/<name>, profile table
    Config: ClassVar[type]  # the config tree (a dataclass with `train` and `model` blocks)
    headline: ClassVar[Headline]  # the test metric a configuration is judged by
    datasets: ClassVar[tuple[str, ...]] = ()  # prepared datasets the experiment reads
    # The validation metric (a key of evaluate()'s output, without "val_") and its goal, for
    # `select_epoch = "best_val"`.
    select_on: ClassVar[tuple[str, str]] = ("loss", "min")
    # Config fields that only list which configurations to train (e.g. `models`): a change
    # there does not change what an existing configuration trains (rnn_core.fingerprints).
    axes: ClassVar[tuple[str, ...]] = ()
    # True for diagnostics (the vanishing-gradient study): their headline is not a model score
    # and never moves a champion.
    diagnostic: ClassVar[bool] = False

    def __str__(self) -> str:  # task run names ("train-{experiment}-...") show the name
        return self.name

    @property
    def title(self) -> str:
        """One line for the flow's description: the subclass docstring's first line."""
        return (type(self).__doc__ or self.name).strip().splitlines()[0]

    def needs(self, config: Any) -> list[str]:
        """The datasets this config reads (default: `datasets`)."""
        return list(self.datasets)

    def plan(self, config: Any) -> list[str]:
        """The configuration names this config trains, in order; validates cross-field rules."""
        raise NotImplementedError

    def runs(self, config: Any) -> list[str]:
        """What the grid trains: each planned configuration, then its seed repeats when
        `train.repeats` > 1 ("<configuration>-seed<k>" for the seeds after the first)."""
        names = []
        for name in self.plan(config):
            tc = self.train_config(config, name)
            names += [name] + [f"{name}-seed{tc.seed + k}" for k in range(1, tc.repeats)]
        return names

    def resolve(self, config: Any, run: str) -> tuple[str, Any]:
        """A name of `runs(config)` -> (the configuration it trains, the config it trains
        with): a seed repeat is its configuration with `train.seed` set to the repeat's seed."""
        match = _REPEAT.match(run)
        if match is None or match["base"] not in self.plan(config):
            return run, config
        train = dataclasses.replace(config.train, seed=int(match["seed"]))
        return match["base"], dataclasses.replace(config, train=train)

    def data(self, config: Any, name: str, manifests: dict[str, DatasetManifest]) -> Splits:
        raise NotImplementedError

    def model(self, config: Any, name: str, data: Splits) -> nn.Module:
        raise NotImplementedError

    def batches(self, config: Any, name: str, data: Splits) -> Batches:
        raise NotImplementedError

    def score(self, config: Any, name: str, model: nn.Module, data: Splits) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, config: Any, name: str, model: nn.Module, data: Splits,
               history: list[dict[str, float]], scores: dict[str, Any],
               folder: Path) -> Report:
        return Report()

    def train_config(self, config: Any, name: str) -> Any:
        """Optional: the training block configuration `name` trains with (default: the config's
        `train`), e.g. a model with an optimiser of its own (char_generation's Mikolov RNN)."""
        return config.train

    def summarise(self, config: Any, results: list[Any], folder: Path) -> Report:
        """Optional: figures across all configurations of one run (logged on the parent run),
        e.g. the gradient study's three cells on one plot. `results`: the RunResults."""
        return Report()

    def serving(self, config: Any, name: str, data: Splits) -> dict[str, Any]:
        """Optional: the serving spec of this configuration's model, i.e. what a served model
        needs to turn raw input into model input and back (vocabulary, normalisation maxima,
        station count, covariate recipe), built with the helpers of `rnn_core.serving`
        (e.g. `text_classifier_spec`). The runner puts it in `RunResult.serving`; the tracker
        ships it inside the logged model. Default: {} (the model takes tensors)."""
        return {}

    def tags(self, config: Any, name: str, data: Splits) -> dict[str, str]:
        """Run tags; the data variant comes from the data phase's info."""
        return {"model": name, "dataset": ",".join(self.needs(config)),
                "data_variant": str(data.info.get("variant", "full"))}
