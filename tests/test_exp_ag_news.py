"""AG News experiment: the smoke configuration end to end on small slices of the mirror data."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from flows.profiles import experiment_config, load_profile
from rnn_core.checkpoints import load_checkpoint
from rnn_core.experiments import ag_news as exp
from rnn_core.models import build_model
from rnn_core.training import evaluate

# The smoke profile's table: 600 train rows (60 held out), 300 test rows, one epoch.
SMOKE = experiment_config(load_profile("smoke"), "ag_news")


@pytest.fixture(scope="module")
def data_dir(prepared_data):
    return prepared_data("ag_news")


def test_plan_names_and_errors():
    assert exp.plan(exp.Config()) == ["lstm8", "bilstm64x2"]
    assert exp.plan(SMOKE) == ["simplernn16-title", "bilstm64x2"]
    full = experiment_config(load_profile("full"), "ag_news")
    assert exp.plan(full) == list(exp.ARCHITECTURES) and full.select_epoch == "best_val"
    assert experiment_config(load_profile("default"), "ag_news") == exp.Config()
    every = exp.Config(models=list(exp.ARCHITECTURES))
    assert exp.plan(every) == ["simplernn16-title", "simplernn16-masked", "lstm8", "bilstm64x2"]
    with pytest.raises(ValueError, match="unknown models"):
        exp.plan(exp.Config(models=["gru3"]))
    with pytest.raises(ValueError, match="select_epoch"):
        exp.plan(exp.Config(select_epoch="best_test"))


def test_batches_mask_only_when_padded():
    split = exp.Split([np.array([5, 6, 7]), np.array([8, 9]), np.array([2, 3])],
                      np.array([0, 1, 2]), np.arange(3))
    padded = exp.make_batch(split, np.array([0, 1]), masked=True, pad_id=0)
    assert padded.x[:, 1].tolist() == [8, 9, 0] and padded.lengths.tolist() == [3, 2]
    same = exp.make_batch(split, np.array([1, 2]), masked=True, pad_id=0)
    assert same.lengths is None and same.x.shape == (2, 2)
    left = exp.make_batch(split, np.array([0, 1]), masked=False, pad_id=0)
    assert left.lengths is None and left.x[:, 1].tolist() == [0, 8, 9]  # padding first

    # A batch without padding scores the same with or without lengths (the fast path is exact).
    model = build_model(exp.model_config(SMOKE, "bilstm64x2", 20, 0)).eval()
    x = torch.randint(2, 20, (7, 3))
    with torch.no_grad():
        masked, _ = model(x, lengths=torch.full((3,), 7))
        plain, _ = model(x)
    torch.testing.assert_close(masked, plain)


def test_splits_hold_out_val_from_train_never_test(data_dir):
    train, val, test, _, meta = exp.load_splits(SMOKE, "full", data_dir)
    assert len(train) + len(val) == SMOKE.max_train_rows and len(val) == 60
    assert not set(train.rows) & set(val.rows)
    assert len(test) == SMOKE.max_test_rows and meta["train_variant"] == "subset"
    assert max(int(s.max()) for s in train.seqs + test.seqs) < SMOKE.vocab_size
    assert min(len(s) for s in train.seqs) >= 1
    assert max(len(s) for s in train.seqs) <= SMOKE.max_length


@pytest.mark.parametrize("name", ["simplernn16-title", "bilstm64x2"])
def test_run_one_smoke(name, data_dir, tmp_path):
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            seen.append(epoch)

    result = exp.run_one(SMOKE, name, data_dir, tmp_path, callbacks=Recorder())
    m = result.metrics
    names = {"test_accuracy", "test_error", "test_loss", "train_accuracy", "train_loss",
             "majority_accuracy", "val_accuracy", "test_accuracy_world", "test_accuracy_sports",
             "test_accuracy_business", "test_accuracy_sci_tech"}
    assert names <= set(m) and all(math.isfinite(v) for v in m.values())
    assert m["test_accuracy"] + m["test_error"] == pytest.approx(1.0)
    assert 0.0 < m["majority_accuracy"] < 0.5  # four nearly balanced classes
    assert result.headline_value == m["test_accuracy"] and seen == [0]
    assert result.tags["data_variant"] == "subset" == result.dataset["variant"]
    assert result.dataset["train_rows"] == 540 and result.dataset["test_rows"] == 300
    assert [row["epoch"] for row in result.history] == [0.0]
    for path in result.figures.values():
        assert path.exists() and path.stat().st_size > 1000

    # The checkpoint rebuilds a model that scores the test split exactly as reported.
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"] == result.model_config
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model_state"])
    arch = exp.ARCHITECTURES[name]
    _, _, test, _, _ = exp.load_splits(SMOKE, arch.text, data_dir)
    rescored = evaluate(model, exp.eval_batches(test, SMOKE, arch.masked, pad_id=0))
    assert rescored["accuracy"] == pytest.approx(m["test_accuracy"])
    assert rescored["loss"] == pytest.approx(m["test_loss"], rel=1e-5)

    # A rerun in the same folder resumes from the finished checkpoint: same numbers.
    again = exp.run_one(SMOKE, name, data_dir, tmp_path)
    assert again.metrics["test_accuracy"] == m["test_accuracy"]


def test_best_val_epoch_is_the_one_scored(data_dir, tmp_path):
    config = dataclasses.replace(SMOKE, epochs=2, select_epoch="best_val", max_train_rows=300)
    result = exp.run_one(config, "lstm8", data_dir, tmp_path)
    val = [row["val_accuracy"] for row in result.history]
    chosen = int(result.metrics["chosen_epoch"])
    assert val[chosen] == max(val) and result.metrics["val_accuracy"] == max(val)
    assert result.checkpoint.name == exp.BEST
    assert load_checkpoint(result.checkpoint)["epoch"] == chosen
