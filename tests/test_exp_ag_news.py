"""AG News experiment: the smoke configuration end to end on small slices of the mirror data."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from flows.profiles import ProfileError, build_config, experiment_config, load_profile
from rnn_core.checkpoints import load_checkpoint
from rnn_core.experiments import ag_news as exp
from rnn_core.experiments.runner import BEST, MODEL, run_configuration
from rnn_core.models import build_model
from rnn_core.training import evaluate

AG = exp.EXPERIMENT
# The smoke profile's table: 600 train rows (60 held out), 300 test rows, one epoch.
SMOKE = experiment_config(load_profile("smoke"), "ag_news")


@pytest.fixture(scope="module")
def ag_manifests(manifests):
    return manifests("ag_news")


def test_plan_names_and_profile_tables():
    # the lesson's five models, and the LSTM(8) again on the hand-written backend
    assert AG.plan(exp.Config()) == ["simplernn16-title", "simplernn16-full", "simplernn16-masked",
                                     "lstm8", "lstm8-scratch", "bilstm64x2"]
    assert AG.plan(SMOKE) == ["simplernn16-full", "bilstm64x2"]
    assert SMOKE.train.epochs == 1 and SMOKE.train.lr == exp.Config().train.lr
    full = experiment_config(load_profile("full"), "ag_news")
    assert set(AG.plan(full)) == set(exp.ARCHITECTURES) | {"lstm8-scratch"}
    assert full.train.select_epoch == "best_val"
    assert experiment_config(load_profile("default"), "ag_news") == exp.Config()
    # narrowing the models leaves out the twin of a configuration no longer planned
    assert AG.plan(exp.Config(models=["bilstm64x2"])) == ["bilstm64x2"]


@pytest.mark.parametrize("values, key", [
    ({"models": ["gru3"]}, "models"),
    ({"train": {"select_epoch": "best_test"}}, "train.select_epoch"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"model": {"backend": "cudnn"}}, "model.backend"),
    ({"model": {"hidden": 3}}, "model.hidden"),
    ({"backend_twins": ["lstm9"]}, "backend_twins"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ProfileError, match=rf"\[ag_news\] (unknown key )?{key}"):
        build_config("p.toml", "ag_news", values)


def test_batches_mask_only_when_padded():
    split = exp.Split([np.array([5, 6, 7]), np.array([8, 9]), np.array([2, 3])],
                      np.array([0, 1, 2]), np.arange(3))
    padded = exp.make_batch(split, np.array([0, 1]), "masked", pad_id=0)
    assert padded.x[:, 1].tolist() == [8, 9, 0] and padded.lengths.tolist() == [3, 2]
    same = exp.make_batch(split, np.array([1, 2]), "masked", pad_id=0)
    assert same.lengths is None and same.x.shape == (2, 2)
    left = exp.make_batch(split, np.array([0, 1]), "pre", pad_id=0)
    assert left.lengths is None and left.x[:, 1].tolist() == [0, 8, 9]  # padding first
    # the lesson's TextVectorization: padding after the text, and nothing masks it
    post = exp.make_batch(split, np.array([0, 1]), "post", pad_id=0)
    assert post.lengths is None and post.x[:, 1].tolist() == [8, 9, 0]
    with pytest.raises(ValueError, match="unknown padding"):
        exp.make_batch(split, np.array([0]), "both", pad_id=0)

    # A batch without padding scores the same with or without lengths (the fast path is exact).
    model = build_model({"kind": "classifier", "num_classes": 4, "vocab_size": 20,
                         "cell": "lstm", "hidden_size": 8, "bidirectional": True,
                         "num_layers": 2}).eval()
    x = torch.randint(2, 20, (7, 3))
    with torch.no_grad():
        masked, _ = model(x, lengths=torch.full((3,), 7))
        plain, _ = model(x)
    torch.testing.assert_close(masked, plain)


def test_splits_hold_out_val_from_train_never_test(ag_manifests):
    data = AG.data(SMOKE, "bilstm64x2", ag_manifests)
    train, val = data.train, data.val
    assert len(train) + len(val) == SMOKE.max_train_rows and len(val) == 60
    assert not set(train.rows) & set(val.rows)
    with data.unsealed():
        test = data.test
    assert len(test) == SMOKE.max_test_rows and data.info["variant"] == "subset"
    assert max(int(s.max()) for s in train.seqs + test.seqs) < SMOKE.vocab_size
    assert min(len(s) for s in train.seqs) >= 1
    assert max(len(s) for s in train.seqs) <= SMOKE.max_length


def test_post_padded_configurations_see_padding_in_random_batches(ag_manifests):
    """simplernn16-title / -full: batches of random rows (not length buckets) padded after the
    text, unmasked, and a pad token that is a trainable word (no padding_idx); scored the same
    way. The masked configurations keep their buckets and padding_idx."""
    for name, masked in [("simplernn16-full", False), ("bilstm64x2", True)]:
        data = AG.data(SMOKE, name, ag_manifests)
        model = AG.model(SMOKE, name, data)
        assert (model.embedding.padding_idx is None) == (not masked)
        train = AG.batches(SMOKE, name, data).train(0)
        pads = [int((b.x == data.vocab.pad_id).sum()) for b in train]
        if masked:
            assert all(b.lengths is None or b.lengths.max() == b.x.shape[0] for b in train)
        else:
            assert all(b.lengths is None for b in train) and sum(pads) > 0
            assert all(bool((b.x[0] != data.vocab.pad_id).all()) for b in train)  # text first
    rows = exp.eval_index(data.train, SMOKE, exp.ARCHITECTURES["simplernn16-full"])
    assert np.concatenate(rows).tolist() == list(range(len(data.train)))  # the split's order


@pytest.mark.parametrize("name", ["simplernn16-full", "bilstm64x2"])
def test_smoke_run(name, ag_manifests, tmp_path):
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            seen.append(epoch)

    result = run_configuration("ag_news", SMOKE, name, ag_manifests, tmp_path,
                               callbacks=Recorder())
    m = result.metrics
    names = {"test_accuracy", "test_error", "test_loss", "train_accuracy", "train_eval_loss",
             "majority_accuracy", "val_accuracy", "test_accuracy_world", "test_accuracy_sports",
             "test_accuracy_business", "test_accuracy_sci_tech", "chosen_epoch"}
    assert names <= set(m) and all(math.isfinite(v) for v in m.values())
    assert m["test_accuracy"] + m["test_error"] == pytest.approx(1.0)
    assert 0.0 < m["majority_accuracy"] < 0.5  # four nearly balanced classes
    assert result.headline_value == m["test_accuracy"] and seen == [0]
    assert result.tags["data_variant"] == "subset" == result.dataset["variant"]
    assert result.dataset["train_rows"] == 540 and result.dataset["test_rows"] == 300
    assert [row["epoch"] for row in result.history] == [0.0]
    assert not [k for row in result.history for k in row if k.startswith("test_")]
    assert result.params == dataclasses.asdict(SMOKE)  # the config tree, as the profile wrote it
    for path in result.figures.values():
        assert path.exists() and path.stat().st_size > 1000

    # The checkpoint rebuilds a model that scores the test split exactly as reported.
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"] == result.model_config
    assert ckpt["meta"]["config"] == dataclasses.asdict(SMOKE)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model_state"])
    data = AG.data(SMOKE, name, ag_manifests)
    with data.unsealed():
        batches = exp.eval_batches(data.test, SMOKE, data.arch, pad_id=0)
    rescored = evaluate(model, batches)
    assert rescored["accuracy"] == pytest.approx(m["test_accuracy"])
    assert rescored["loss"] == pytest.approx(m["test_loss"], rel=1e-5)

    # A rerun in the same folder resumes from the finished checkpoint: same numbers.
    again = run_configuration("ag_news", SMOKE, name, ag_manifests, tmp_path)
    assert again.metrics["test_accuracy"] == m["test_accuracy"]


def test_scratch_twin_trains_the_same_model_on_the_other_backend(ag_manifests, tmp_path):
    """simplernn16-title-scratch: the same configuration on the hand-written backend, from the
    same seed; their test metrics agree within rnn_core.comparisons' tolerances."""
    from rnn_core.comparisons import backend_agreement

    config = dataclasses.replace(SMOKE, models=["simplernn16-title"],
                                 backend_twins=["simplernn16-title"])
    results = [run_configuration("ag_news", config, name, ag_manifests, tmp_path)
               for name in ("simplernn16-title", "simplernn16-title-scratch")]
    assert [r.model_config["backend"] for r in results] == ["fused", "scratch"]
    assert results[1].tags["model"] == "simplernn16-title-scratch"
    rows = backend_agreement([("ag_news", r.name, r.metrics) for r in results])
    assert [r["metric"] for r in rows] == ["test_accuracy"]
    assert rows[0]["agree"], rows


def test_best_val_epoch_is_the_one_scored(ag_manifests, tmp_path):
    train = dataclasses.replace(SMOKE.train, epochs=2, select_epoch="best_val")
    config = dataclasses.replace(SMOKE, train=train, max_train_rows=300, models=["lstm8"])
    result = run_configuration("ag_news", config, "lstm8", ag_manifests, tmp_path)
    val = [row["val_accuracy"] for row in result.history]
    chosen = int(result.metrics["chosen_epoch"])
    assert val[chosen] == max(val) and result.metrics["val_accuracy"] == max(val)
    assert result.checkpoint.name == MODEL and (tmp_path / "lstm8" / BEST).exists()
    saved = load_checkpoint(result.checkpoint)
    assert saved["epoch"] == chosen and "optimizer_state" not in saved
