"""Champion / challenger: the `champion` alias of a registered model moves only on a real win.

Every logged configuration registers a new version of `rnnflow-<task>-<config>` (the
challenger). It takes the `champion` alias only when it beats the current champion on the task's
headline test metric, measured on the same test split of the same data variant; the figures are
read back from the champion version's own run, so nothing is trusted that was not logged. The
decision, its reason and both figures are logged on the challenger's run (tags + metrics) and as
tags on the new model version, so the UI shows why an alias did or did not move.

A win must not be noise: when both runs logged their per-example test outcomes
(`test_per_example.npy`, one value per test example, mean = the headline) and the arrays have one
length, the challenger wins only when a paired bootstrap over the test examples says it is better
at one-sided 95 % (2,000 resamples, seed 0; `rnn_core.significance`): the lower bound of the
improvement must exceed 0. The interval, the p-value (and McNemar's exact p for 0/1 outcomes)
are logged as `champion.*` metrics and version tags. Without both arrays the headlines alone
decide, as before, and the reason says so.

Champions are scoped. A smoke run (the `smoke` profile, or any run whose test split was
truncated) is registered under its own name, `rnnflow-<task>-<config>-smoke`
(`registered_model_name`), so it never blocks or takes the champion of the real model. Where a
version of another scope meets a champion anyway (an older store, a caller that registered it
under the plain name), the fuller evaluation wins: a real evaluation replaces a smoke champion,
the `full` data variant replaces a `subset` champion, and never the other way round; two real
scopes that differ otherwise (another test split) stay "not comparable" until someone moves the
alias by hand (`promote_by_hand`).

Inference loads `models:/<name>@champion` (see `tasks.tracking.inference`); `champion_info` says
which version that is and what it was measured on.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from rnn_core.results import Headline, RunResult
from rnn_core.significance import Comparison, paired_bootstrap
from tasks.tracking.names import (
    CHALLENGER_VALUE_METRIC,
    CHAMPION_ALIAS,
    CHAMPION_DECISION_TAG,
    CHAMPION_MODEL_TAG,
    CHAMPION_PREVIOUS_VERSION_TAG,
    CHAMPION_REASON_TAG,
    CHAMPION_TEST_TAG,
    CHAMPION_VERSION_TAG,
    CI_HIGH_METRIC,
    CI_LOW_METRIC,
    DATA_VARIANT_TAG,
    DIFF_METRIC,
    EVAL_SCOPE_TAG,
    HEADLINE_METRIC_TAG,
    INCUMBENT_VALUE_METRIC,
    KEPT,
    LEVEL_METRIC,
    MCNEMAR_P_METRIC,
    P_VALUE_METRIC,
    PER_EXAMPLE_ARTIFACT,
    PROFILE_TAG,
    PROMOTED,
    PROMOTED_BY_HAND,
    RESULT_PROFILE_TAG,
    TEST_SPLIT_TAG,
)
from tasks.tracking.store import store_lock

SMOKE = "smoke"  # the profile of tiny slices, and the scope qualifier of any truncated test
SMOKE_SUFFIX = "-smoke"  # registered name of smoke-scoped versions: rnnflow-<task>-<config>-smoke
FULL_VARIANT = "full"  # the data variant that outranks any other (e.g. AG News "subset")


@dataclass
class Decision:
    """What happened to the alias when one challenger version was registered."""

    model: str  # registered model name
    version: str  # the challenger's version
    promoted: bool  # True when the alias now points at the challenger
    reason: str  # one sentence for humans
    metric: str  # headline metric name, e.g. "test_accuracy"
    goal: str  # "max" or "min"
    challenger: float  # the challenger's headline value
    champion: float | None = None  # the previous champion's value (None: there was none)
    champion_version: str | None = None  # the previous champion's version
    test: str = ""  # the paired test and its level, or why the headlines alone decided
    comparison: Comparison | None = None  # the paired test's figures (None: not run)

    @property
    def outcome(self) -> str:
        """The decision as tagged and as the summary tables show it: promoted or kept."""
        return PROMOTED if self.promoted else KEPT

    def tags(self) -> dict[str, str]:
        return {
            CHAMPION_DECISION_TAG: self.outcome,
            CHAMPION_REASON_TAG: self.reason,
            CHAMPION_MODEL_TAG: self.model,
            CHAMPION_VERSION_TAG: self.version,
            CHAMPION_PREVIOUS_VERSION_TAG: self.champion_version or "",
            **({CHAMPION_TEST_TAG: self.test} if self.test else {}),
            **{k: f"{v:.6g}" for k, v in self.test_metrics().items()},
        }

    def test_metrics(self) -> dict[str, float]:
        """The paired test's improvement, interval, p-value(s) and level ({}: not run)."""
        c = self.comparison
        if c is None:
            return {}
        out = {DIFF_METRIC: c.diff, CI_LOW_METRIC: c.ci_low, CI_HIGH_METRIC: c.ci_high,
               P_VALUE_METRIC: c.p_value, LEVEL_METRIC: c.level}
        if c.mcnemar_p is not None:
            out[MCNEMAR_P_METRIC] = c.mcnemar_p
        return out

    def metrics(self) -> dict[str, float]:
        """Both figures, under names that say which is which, and the paired test's."""
        out = {CHALLENGER_VALUE_METRIC: self.challenger}
        if self.champion is not None:
            out[INCUMBENT_VALUE_METRIC] = self.champion
        return {**out, **self.test_metrics()}


def is_smoke(result: RunResult, profile: str | None = None) -> bool:
    """Whether a result was measured on a smoke scope: the smoke profile, or a test split the
    experiment says it truncated (`test_truncated` in its dataset facts)."""
    profile = profile or result.tags.get(RESULT_PROFILE_TAG)
    return profile == SMOKE or bool(result.dataset.get("test_truncated"))


def registered_model_name(result: RunResult, profile: str | None = None) -> str:
    """The registered model a result's version belongs to: `rnnflow-<task>-<config>`, or
    `rnnflow-<task>-<config>-smoke` for a smoke-scoped result (`is_smoke`), so that smoke runs
    keep their own champion and never touch the real one's."""
    from tasks.tracking.models import registered_name  # lazy: models may import this module

    return registered_name(result) + (SMOKE_SUFFIX if is_smoke(result, profile) else "")


def eval_scope(result: RunResult, profile: str | None = None) -> str:
    """A short fingerprint of what the headline was measured on: metric, data variant, test
    split, and `|smoke` for a smoke scope (`is_smoke`).

    The test split is the experiment's `test_split` tag when it sets one, else the dataset facts
    it reports about the test split (keys starting with "test", e.g. rows and checksums), else
    the profile (profiles slice data differently, so runs of different profiles never compete).
    """
    test_facts = {k: v for k, v in sorted(result.dataset.items()) if str(k).startswith("test")}
    if TEST_SPLIT_TAG in result.tags:
        split = result.tags[TEST_SPLIT_TAG]
    elif test_facts:
        split = json.dumps(test_facts, sort_keys=True, default=str)
    else:
        split = f"profile:{profile or result.tags.get(RESULT_PROFILE_TAG, 'unknown')}"
    variant = result.tags.get(DATA_VARIANT_TAG, result.dataset.get("variant", "unknown"))
    digest = hashlib.sha1(split.encode("utf-8")).hexdigest()[:12]
    scope = f"{result.headline.metric}|{variant}|{digest}"
    return scope + (f"|{SMOKE}" if is_smoke(result, profile) else "")


@dataclass(frozen=True)
class Scope:
    """An eval_scope string taken apart: what decides which of two scopes outranks the other."""

    text: str
    variant: str
    smoke: bool

    @classmethod
    def parse(cls, scope: str, profile: str | None = None) -> Scope:
        """`profile`: the run's profile tag, for scopes logged before `|smoke` was added."""
        parts = scope.split("|")
        variant = parts[1] if len(parts) >= 3 else "unknown"
        return cls(scope, variant, parts[-1] == SMOKE or profile == SMOKE)

    @property
    def rank(self) -> tuple[int, int]:
        """Real before smoke, then the full data variant before any other."""
        return (0 if self.smoke else 1, 1 if self.variant == FULL_VARIANT else 0)

    def describe(self) -> str:
        what = "a smoke slice" if self.smoke else "the real test split"
        return f"{what} of the {self.variant} data ({self.text})"


def _current_champion(client: MlflowClient, model: str):
    """The version holding the alias, or None (no alias yet)."""
    try:
        return client.get_model_version_by_alias(model, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def per_example(client: MlflowClient, run_id: str) -> np.ndarray | None:
    """The per-example test outcomes a run logged (`test_per_example.npy`), or None."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, PER_EXAMPLE_ARTIFACT, tmp)
            return np.load(path, allow_pickle=False).astype(np.float64).ravel()
        except (MlflowException, OSError, ValueError):
            return None


def compare_examples(
    headline: Headline, mine: np.ndarray | None, theirs: np.ndarray | None
) -> tuple[Comparison | None, str]:
    """The paired test of challenger (`mine`) vs champion (`theirs`) outcomes, and what was
    tested; (None, why not) when an array is missing or their lengths differ."""
    if mine is None or theirs is None:
        who = "challenger" if mine is None else "champion"
        return None, f"headlines only: the {who} run has no {PER_EXAMPLE_ARTIFACT}"
    if mine.size != theirs.size:
        return None, (f"headlines only: per-example outcomes of {mine.size} and {theirs.size} "
                      "test examples are not one test split")
    if not (np.isfinite(mine).all() and np.isfinite(theirs).all()):
        return None, "headlines only: per-example outcomes hold NaN or inf"
    comparison = paired_bootstrap(mine, theirs, headline.goal)
    return comparison, comparison.method


def decide(
    headline: Headline, challenger: float, scope: str, incumbent_run,
    comparison: Comparison | None = None, note: str = "",
) -> tuple[bool, str, float | None]:
    """(promote?, reason, incumbent value) for a challenger against the champion's run (or None).

    Same scope: with a paired `comparison` of per-example outcomes (`compare_examples`), the
    challenger wins only when it is better beyond noise (the interval's lower bound > 0); without
    one, the better headline wins (`note` says why) — a tie keeps the alias, NaN never wins.
    Other scopes: the one of higher `Scope.rank` wins whatever the figures (real over smoke, full
    data over a subset); equal ranks are not comparable and the alias stays.
    """
    if incumbent_run is None:
        return True, "first version with a headline: becomes champion", None
    old_scope = incumbent_run.data.tags.get(EVAL_SCOPE_TAG)
    old = incumbent_run.data.metrics.get(headline.metric)
    if old is None or old_scope is None:
        return True, f"champion run lacks a logged {headline.metric}: replaced", None
    if math.isnan(challenger):
        return False, f"challenger {headline.metric} is NaN; alias kept", old
    if old_scope != scope:
        mine = Scope.parse(scope)
        theirs = Scope.parse(old_scope, incumbent_run.data.tags.get(PROFILE_TAG))
        if mine.rank > theirs.rank:
            return True, (f"champion was measured on {theirs.describe()}, challenger on "
                          f"{mine.describe()}: the fuller evaluation takes the alias"), old
        if mine.rank < theirs.rank:
            return False, (f"challenger measured on {mine.describe()} never takes the alias "
                           f"from a champion measured on {theirs.describe()}"), old
        reason = f"not comparable: champion measured on {old_scope}, challenger on {scope}"
        return False, reason + "; alias kept", old
    if comparison is not None:
        c = comparison
        figures = (f"{headline.metric} {challenger:.6g} vs {old:.6g}: improvement {c.diff:.4g}, "
                   f"one-sided {c.level:.0%} interval [{c.ci_low:.4g}, {c.ci_high:.4g}], "
                   f"p = {c.p_value:.3g} ({c.method})")
        if c.significant:
            return True, f"{figures}: better beyond noise, promoted", old
        return False, f"{figures}: not better beyond noise, alias kept", old
    why = f" ({note})" if note else ""
    if headline.better(challenger, old):
        word = "higher" if headline.goal == "max" else "lower"
        return True, (f"{headline.metric} {challenger:.6g} is {word} than {old:.6g}: "
                      f"promoted{why}"), old
    return False, (f"{headline.metric} {challenger:.6g} does not beat {old:.6g}: "
                   f"alias kept{why}"), old


def challenge(
    client: MlflowClient,
    model: str,
    version: str,
    run_id: str,
    headline: Headline,
    value: float,
    scope: str,
) -> Decision:
    """Compare a freshly registered version with the champion, move the alias if it wins, log it.

    `scope` (see `eval_scope`) is logged on the challenger's run, so that a later challenger can
    check it competes on the same test split. On a SQLite store, reading the champion and moving
    the alias hold a lock shared by every process, so two runs finishing at once cannot both
    beat the same old champion and leave the worse one holding the alias.
    """
    mine = per_example(client, run_id)
    comparison, note = None, ""
    with store_lock(client.tracking_uri, "champion"):
        current = _current_champion(client, model)
        incumbent_run = client.get_run(current.run_id) if current and current.run_id else None
        if incumbent_run is not None and incumbent_run.data.tags.get(EVAL_SCOPE_TAG) == scope:
            comparison, note = compare_examples(headline, mine,
                                                per_example(client, incumbent_run.info.run_id))
        promote, reason, old = decide(headline, value, scope, incumbent_run, comparison, note)
        if promote:
            client.set_registered_model_alias(model, CHAMPION_ALIAS, str(version))
    decision = Decision(
        model=model, version=str(version), promoted=promote, reason=reason,
        metric=headline.metric, goal=headline.goal, challenger=float(value), champion=old,
        champion_version=str(current.version) if current is not None else None,
        test=note, comparison=comparison,
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in decision.metrics().items()],
        tags=[RunTag(k, v) for k, v in {**decision.tags(), EVAL_SCOPE_TAG: scope}.items()],
    )
    for key, val in decision.tags().items():
        client.set_model_version_tag(model, str(version), key, val)
    return decision


def challenge_result(
    client: MlflowClient, result: RunResult, run_id: str, model: str, version: str,
    profile: str | None = None,
) -> Decision:
    """`challenge` for one logged RunResult (its headline, value and evaluation scope)."""
    return challenge(client, model, version, run_id, result.headline, result.headline_value,
                     eval_scope(result, profile))


def promote_by_hand(client: MlflowClient, model: str, version: str, reason: str) -> None:
    """Move the alias to `version` whatever the figures say (e.g. the champion was measured on
    another test split, so no challenger can ever be compared with it); the reason is kept on the
    version."""
    client.get_model_version(model, str(version))  # a clear error for an unknown version
    client.set_registered_model_alias(model, CHAMPION_ALIAS, str(version))
    tags = {CHAMPION_DECISION_TAG: PROMOTED_BY_HAND, CHAMPION_REASON_TAG: reason}
    for key, val in tags.items():
        client.set_model_version_tag(model, str(version), key, val)


@dataclass
class ChampionInfo:
    """Which version `models:/<model>@champion` serves, and what its headline was measured on."""

    model: str
    version: str
    run_id: str
    metric: str  # the headline metric name ("" when the run lacks the tag)
    value: float | None  # the champion run's headline
    scope: str  # its eval_scope ("" for a version logged before scopes existed)
    profile: str
    data_variant: str
    smoke: bool  # measured on a smoke slice

    @property
    def uri(self) -> str:
        return f"models:/{self.model}@{CHAMPION_ALIAS}"

    def line(self) -> str:
        """One line for humans, e.g. what `rnnflow predict` prints before predicting."""
        figure = f"{self.metric} {self.value:.4g}" if self.value is not None else "no headline"
        kind = "SMOKE slice" if self.smoke else "real test split"
        return (f"{self.uri} = version {self.version} (run {self.run_id}, profile "
                f"{self.profile or '?'}, data {self.data_variant or '?'}, {figure} on the "
                f"{kind}; scope {self.scope or 'unknown'})")


def champion_info(client: MlflowClient, model: str) -> ChampionInfo | None:
    """The champion version of `model` and the facts of its run; None when it has no champion."""
    current = _current_champion(client, model)
    if current is None:
        return None
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if current.run_id:
        run = client.get_run(current.run_id)
        tags, metrics = run.data.tags, run.data.metrics
    metric = tags.get(HEADLINE_METRIC_TAG, "")
    scope = tags.get(EVAL_SCOPE_TAG, "")
    profile = tags.get(PROFILE_TAG, "")
    return ChampionInfo(
        model=model, version=str(current.version), run_id=current.run_id or "",
        metric=metric, value=metrics.get(metric) if metric else None, scope=scope,
        profile=profile, data_variant=tags.get(DATA_VARIANT_TAG, ""),
        smoke=Scope.parse(scope, profile).smoke if scope else profile == SMOKE,
    )
