"""Seed repeats (`train.repeats`): each configuration trained with several seeds, logged beside
it, its mean and spread in the summary tables, only the first seed's model registered."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from fault_support import NAME, Config, register

from rnn_core import experiments
from rnn_core.experiments.protocol import repeat_of
from rnn_core.experiments.runner import run_configuration
from rnn_core.fingerprints import fingerprint
from rnn_core.training import TrainConfig
from tasks.tracking.summaries import SummaryRow, seed_spread, summary_table


def _config(repeats: int, seed: int = 0, cells=("gru",)) -> Config:
    return Config(cells=list(cells), train_size=128,
                  train=TrainConfig(epochs=1, lr=1e-2, torch_threads=1, seed=seed,
                                    repeats=repeats))


def test_runs_lists_each_configuration_then_its_seed_repeats():
    exp = register()
    assert exp.runs(_config(1, cells=["gru", "rnn"])) == ["gru", "rnn"]
    assert exp.runs(_config(3, seed=5, cells=["gru", "rnn"])) == [
        "gru", "gru-seed6", "gru-seed7", "rnn", "rnn-seed6", "rnn-seed7"]
    name, config = exp.resolve(_config(3, seed=5), "gru-seed7")
    assert name == "gru" and config.train.seed == 7 and config.train.repeats == 3
    assert exp.resolve(_config(3), "gru") == ("gru", _config(3))
    assert repeat_of("trump-lstm-scratch-seed2") == "trump-lstm-scratch"
    assert repeat_of("gru") is None


def test_a_built_in_experiment_repeats_every_planned_configuration():
    exp = experiments.get("ag_news")
    config = exp.Config()
    planned = exp.plan(config)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, repeats=2))
    runs = exp.runs(config)
    assert len(runs) == 2 * len(planned)
    assert [r for r in runs if repeat_of(r) is None] == planned


def test_a_seed_repeat_trains_its_configuration_with_its_own_seed(tmp_path):
    exp = register()
    config = _config(2)
    first = run_configuration(exp, config, "gru", {}, tmp_path)
    again = run_configuration(exp, config, "gru-seed1", {}, tmp_path)
    assert first.repeat_of is None and again.repeat_of == "gru"
    assert again.name == "gru-seed1" and again.params["train"]["seed"] == 1
    assert again.tags["repeat_of"] == "gru" and again.tags["seed"] == "1"
    assert (tmp_path / "gru").is_dir() and (tmp_path / "gru-seed1").is_dir()
    w0 = torch.load(first.checkpoint, weights_only=True)["model_state"]
    w1 = torch.load(again.checkpoint, weights_only=True)["model_state"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # another seed, other weights
    # The same seed as a configuration of its own trains the same model as the repeat.
    alone = run_configuration(exp, _config(1, seed=1), "gru", {}, tmp_path / "alone")
    wa = torch.load(alone.checkpoint, weights_only=True)["model_state"]
    assert all(torch.equal(w1[k], wa[k]) for k in w1)
    with pytest.raises(KeyError, match="gru-seed2"):
        run_configuration(exp, config, "gru-seed2", {}, tmp_path)  # only seeds 0 and 1 run


def test_fingerprints_tell_seeds_apart_and_ignore_the_repeat_count():
    exp = register()
    one, three = _config(1), _config(3)
    assert fingerprint(exp, one, "gru", {}) == fingerprint(exp, three, "gru", {})
    repeat = fingerprint(exp, three, "gru-seed1", {})
    assert repeat["seed"] == "1" and repeat["fingerprint"] != fingerprint(exp, one, "gru", {})[
        "fingerprint"]


def _row(config: str, headline: float, task: str = NAME) -> SummaryRow:
    return SummaryRow(task=task, config=config, headline_metric="test_accuracy",
                      headline=headline)


def test_summary_tables_show_mean_and_spread_over_seeds():
    rows = [_row("gru", 0.8), _row("gru-seed1", 0.7), _row("gru-seed2", 0.9), _row("rnn", 0.6)]
    [(key, spread)] = seed_spread(rows).items()
    assert key == (NAME, "gru") and spread.seeds == 3
    assert spread.mean == pytest.approx(0.8) and spread.sd == pytest.approx(0.1)
    assert str(spread) == "0.8 ± 0.1 (3 seeds)"
    table = summary_table(rows).set_index("config")
    assert list(table["seeds"]) == [3, 3, 3, 1]
    assert table.loc["gru-seed2", "headline_mean"] == pytest.approx(0.8)
    assert table.loc["rnn", "headline_mean"] == 0.6 and math.isnan(table.loc["rnn", "headline_sd"])
    assert "seeds" not in summary_table([_row("gru", 0.8), _row("rnn", 0.6)]).columns


@pytest.mark.slow
def test_the_grid_logs_every_seed_and_registers_the_first(prefect_harness, tmp_path):
    from mlflow import MlflowClient

    from flows.experiments import experiment_flow

    register()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = experiment_flow(NAME)(config=_config(3), profile="seeds", manifests={},
                                 work_dir=str(tmp_path / "checkpoints"), tracking_uri=uri,
                                 pipeline_id="seeds-run")
    assert [r.config for r in rows] == ["gru", "gru-seed1", "gru-seed2"]
    assert [r.champion for r in rows] == ["promoted", "", ""]  # repeats never challenge
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = 'rnnflow-{NAME.replace('_', '-')}-gru'")
    assert [v.run_id for v in versions] == [rows[0].run_id]
    assert not client.search_registered_models("name LIKE '%seed%'")
    children = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name(f"rnnflow/{NAME}").experiment_id],
        "tags.`rnnflow.role` = 'child'")}
    assert set(children) == {"gru", "gru-seed1", "gru-seed2"}
    assert children["gru-seed2"].data.tags["repeat_of"] == "gru"
    assert children["gru-seed2"].data.params["train.seed"] == "2"
    # The parent's summary table carries the spread.
    [parent] = client.search_runs([children["gru"].info.experiment_id],
                                  "tags.`rnnflow.role` = 'parent'")
    path = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
    import pandas as pd

    table = pd.read_csv(path)
    assert set(table["seeds"]) == {3}
    headlines = [r.headline for r in rows]
    assert table["headline_mean"].iloc[0] == pytest.approx(sum(headlines) / 3)
