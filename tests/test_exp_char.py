"""char_generation on the protocol: the text streams truncated BPTT reads; the train | val | test
cut; profile tables and bad values; smoke runs through the runner (names, metrics, no test
figure per epoch, baselines on the test characters, samples, checkpoint, resume)."""

import dataclasses
import math

import pytest
import torch

from flows.profiles import ProfileError, build_config, load_profile, resolve
from rnn_core import baselines
from rnn_core.checkpoints import load_checkpoint
from rnn_core.config import ConfigError, check
from rnn_core.datasets.corpus import load_corpus
from rnn_core.experiments import char_generation as cg
from rnn_core.experiments.protocol import SealedSplitError
from rnn_core.experiments.runner import run_configuration
from rnn_core.experiments.text_streams import (
    as_streams,
    chunk_batches,
    encode_ids,
    epoch_batch_source,
    load_corpus_ids,
    stream_targets_nats,
)
from rnn_core.models import build_model, config_dict
from rnn_core.training import evaluate

EXP = cg.EXPERIMENT
METRICS = {
    "test_nats_per_char",
    "test_bits_per_char",
    "test_perplexity",
    "unigram_nats_per_char",
    "bigram_nats_per_char",
    "bigram_minus_model_nats",
    "train_nats_per_char",
    "chosen_epoch",  # the runner's, with the chosen epoch's validation figures
    "resumed_from_epoch",
    "val_loss",
    "val_nats",
    "val_bits_per_char",
    "val_perplexity",
}
HISTORY = {"epoch", "train_loss", "val_loss", "val_nats", "val_bits_per_char", "val_perplexity",
           "lr", "seconds"}


def smoke_config(**changes) -> cg.Config:
    return dataclasses.replace(load_profile("smoke", only=["char_generation"])
                               .config("char_generation"), **changes)


# --- text streams ------------------------------------------------------------------------------


def test_streams_are_contiguous_slices_and_chunks_shift_by_one():
    ids = torch.arange(103)
    streams = as_streams(ids, 4)  # 25 x 4, the tail of 3 dropped
    assert streams.shape == (25, 4)
    assert torch.equal(streams[:, 1], torch.arange(25, 50))
    batches = chunk_batches(streams, bptt=10)
    assert [b.x.shape[0] for b in batches] == [10, 10, 4]  # 24 inputs per stream
    x = torch.cat([b.x for b in batches])
    y = torch.cat([b.y for b in batches])
    assert torch.equal(x, streams[:-1]) and torch.equal(y, streams[1:])


def test_short_epochs_take_successive_windows_and_wrap():
    ids = torch.arange(1000)
    source = epoch_batch_source(ids, num_streams=2, bptt=5, seed=0, max_chars=400)
    starts = [int(source(epoch)[0].x[0, 0]) for epoch in range(3)]
    assert 0 <= starts[0] < 5 and 400 <= starts[1] < 405 and 800 <= starts[2] < 805
    # epoch 2's window runs past the end of the text: it continues at its beginning
    batches = source(2)
    streams = torch.cat([torch.cat([b.x for b in batches]), batches[-1].y[-1:]])  # 200 x 2
    window = streams.t().reshape(-1)
    start = starts[2]
    expected = torch.cat([torch.arange(start, 1000), torch.arange(0, 400 - (1000 - start))])
    assert torch.equal(window, expected)


def test_encode_rejects_unknown_characters_and_stream_baseline_matches_flat():
    with pytest.raises(ValueError, match="train.parquet"):
        encode_ids("abz", ["a", "b"], "train.parquet")
    ids = encode_ids("abcabcaabbcc" * 5, ["a", "b", "c"])
    bigram = baselines.fit_bigram(ids, 3)
    one_stream = as_streams(ids, 1)
    flat = baselines.bigram_nats(bigram, ids)
    assert stream_targets_nats(one_stream, lambda s: baselines.bigram_nats(bigram, s)) == flat


# --- plan, config tree, profiles ---------------------------------------------------------------


def test_plan_names_and_errors():
    # the product, then the course's two (tanh RNN on Trump, with its scratch twin; Mikolov on
    # Moliere)
    assert EXP.plan(cg.Config()) == ["trump-lstm", "trump-gru", "moliere-lstm", "moliere-gru",
                                     "trump-rnn", "trump-rnn-scratch", "moliere-mikolov"]
    config = cg.Config(corpora=["moliere"], models=["mikolov", "gru"], extra=[])
    assert EXP.plan(config) == ["moliere-mikolov", "moliere-gru"]
    assert EXP.needs(config) == ["moliere"]
    assert EXP.needs(cg.Config(corpora=["moliere"], models=["gru"])) == ["trump", "moliere"]
    assert cg.parse_name("trump-rnn-scratch") == ("trump", "rnn")
    with pytest.raises(ValueError, match="no fused torch.nn equivalent"):
        EXP.plan(cg.Config(backend_twins=["moliere-mikolov"]))
    with pytest.raises(ValueError, match="already name a backend"):
        EXP.plan(cg.Config(backend_twins=["trump-rnn-scratch"]))
    with pytest.raises(ValueError, match="bad configuration name"):
        cg.parse_name("trump_lstm")
    with pytest.raises(ValueError, match="stateful"):
        EXP.plan(cg.Config(train=dataclasses.replace(cg.Config().train, stateful=False)))


@pytest.mark.parametrize("change, key", [
    ({"models": ["transformer"]}, "models"),
    ({"corpora": []}, "corpora"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"bptt": 0}, "bptt"),
    ({"temperatures": [0.0]}, "temperatures"),
])
def test_bad_values_name_their_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key} = "):
        check(cg.Config(**change))


@pytest.mark.parametrize("values, message", [
    ({"train": {"epochs": 0}}, r"train\.epochs = 0: must be >= 1"),
    ({"model": {"hidden_size": 0}}, r"model\.hidden_size = 0"),
    ({"model": {"backend": "cudnn"}}, r"model\.backend = 'cudnn'"),
    ({"model": {"hidden": 8}}, r"unknown key model\.hidden"),
    ({"epochs": 3}, "unknown key epochs"),  # the old flat key: now [char_generation.train]
    ({"train": {"stateful": False}}, "stateful must be true"),
])
def test_profile_rejects_bad_tables(values, message):
    with pytest.raises(ProfileError, match=message):
        build_config(resolve("smoke"), "char_generation", values)


def test_profile_tables_plan_the_expected_configurations():
    smoke = load_profile("smoke", only=["char_generation"]).config("char_generation")
    assert EXP.plan(smoke) == ["trump-lstm", "trump-lstm-scratch", "trump-mikolov"]
    assert smoke.train.epochs == 1 and smoke.mikolov.epochs == 1
    assert smoke.model.hidden_size == 32 and smoke.train.stateful

    default = load_profile("default", only=["char_generation"]).config("char_generation")
    assert default == cg.Config()  # the default profile is the Config defaults
    assert EXP.plan(default)[:4] == ["trump-lstm", "trump-gru", "moliere-lstm", "moliere-gru"]
    assert (default.train.epochs, default.train.lr, default.train.lr_decay) == (3, 6e-3, 0.6)
    assert default.model.hidden_size == 256 and default.val_fraction == 0.05

    full = load_profile("full", only=["char_generation"]).config("char_generation")
    assert len(EXP.plan(full)) == 9 and "moliere-mikolov" in EXP.plan(full)
    assert "trump-rnn-scratch" in EXP.plan(full) and full.mikolov.hidden_size == 512
    assert (full.model.num_layers, full.model.hidden_size, full.model.dropout) == (2, 512, 0.3)
    assert full.train.epochs == 20 and full.train.select_epoch == "best_val"
    assert full.max_train_chars == 0  # the whole training part


def test_mikolov_trains_as_the_lesson_sets_it_up_and_twins_change_only_the_backend():
    """Mikolov: hidden 128 and plain SGD ([char_generation.mikolov]), the rest of the training
    block shared; a backend twin is the same model on the other backend."""
    config = cg.Config()
    mikolov = EXP.train_config(config, "moliere-mikolov")
    assert (mikolov.optimizer, mikolov.momentum, mikolov.epochs) == ("sgd", 0.0,
                                                                     config.mikolov.epochs)
    assert (mikolov.seed, mikolov.stateful, mikolov.grad_clip) == (
        config.train.seed, True, config.train.grad_clip)
    assert EXP.train_config(config, "trump-rnn") is config.train
    vocab = type("D", (), {"model_name": "mikolov", "vocab": list("abcd")})()
    assert EXP.model(config, "moliere-mikolov", vocab).mikolov.hidden_size == 128
    rnn = type("D", (), {"model_name": "rnn", "vocab": list("abcd")})()
    fused, scratch = (EXP.model(config, n, rnn) for n in ("trump-rnn", "trump-rnn-scratch"))
    assert (fused.config.backend, scratch.config.backend) == ("fused", "scratch")
    assert {**config_dict(fused), "backend": "scratch"} == config_dict(scratch)


def test_mikolov_is_one_layer_and_single_layers_have_no_dropout():
    block = cg.Config(model=cg.CharModel(num_layers=2, dropout=0.3)).model
    mikolov = EXP.model(cg.Config(model=block), "trump-mikolov",
                        type("D", (), {"model_name": "mikolov", "vocab": list("abc")})())
    assert mikolov.config.mode == "mikolov" and mikolov.config.num_layers == 1
    assert mikolov.config.nonlinearity == "sigmoid"
    one = cg.char_lm(cg.CharModel(num_layers=1, dropout=0.3), "gru", 10)
    assert one.config.dropout == 0.0 and one.config.cell == "gru"
    two = cg.char_lm(block, "lstm", 10)
    assert (two.config.num_layers, two.config.dropout, two.config.hidden_size) == (2, 0.3, 256)


# --- data: train | val | test ------------------------------------------------------------------


def test_val_is_the_training_tail_disjoint_from_train_and_test(manifests):
    m = manifests("trump")
    config = smoke_config(max_val_chars=None, max_test_chars=None)
    data = EXP.data(config, "trump-lstm", m)
    spans = data.spans
    train_text, test_text, vocab = load_corpus(m["trump"].folder)
    whole_train = encode_ids(train_text, vocab)
    # contiguous cut train | val | test: no character in two splits
    assert spans["train"][0] == 0 and spans["train"][1] == spans["val"][0]
    assert spans["val"][1] == spans["test"][0] == len(train_text)
    assert spans["test"][1] == len(train_text) + len(test_text)
    n_val = spans["val"][1] - spans["val"][0]
    assert n_val == round(0.05 * len(train_text))
    assert torch.equal(data.train, whole_train[: spans["train"][1]])  # the model trains on this
    val_chars = data.val.t().reshape(-1)  # the streams side by side, back in text order
    assert torch.equal(val_chars, whole_train[spans["val"][0]:][: val_chars.numel()])
    assert data.info["val_chars"] == n_val and data.info["train_chars"] == spans["train"][1]
    assert data.info["val_chars_scored"] == data.val[1:].numel()
    # the test split is sealed outside `score`, and is the prepared test split
    with pytest.raises(SealedSplitError):
        _ = data.test
    with data.unsealed():
        test_chars = data.test.t().reshape(-1)
    assert torch.equal(test_chars, encode_ids(test_text, vocab)[: test_chars.numel()])
    # training batches read the training part only
    train_ids = set(torch.cat([b.x.reshape(-1) for b in EXP.batches(config, "trump-lstm",
                                                                     data).train(0)]).tolist())
    assert train_ids <= set(data.train.tolist())
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus_ids(m["trump"], 1e-9)


# --- smoke runs through the runner -------------------------------------------------------------


@pytest.mark.parametrize("name", ["trump-lstm", "moliere-mikolov"])
def test_run_smoke(manifests, tmp_path, name):
    config = smoke_config(corpora=["trump", "moliere"], models=["lstm", "mikolov"])
    corpus = name.split("-")[0]
    m = manifests("trump", "moliere")
    epochs_seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            epochs_seen.append(epoch)

    result = run_configuration("char_generation", config, name, m, tmp_path,
                               callbacks=Recorder())
    assert epochs_seen == [0]  # callbacks reach the training loop
    assert set(result.metrics) == METRICS
    assert all(math.isfinite(v) for v in result.metrics.values())
    r = result.metrics
    assert r["test_bits_per_char"] == pytest.approx(r["test_nats_per_char"] / math.log(2))
    assert r["bigram_minus_model_nats"] == pytest.approx(
        r["bigram_nats_per_char"] - r["test_nats_per_char"])
    assert r["bigram_nats_per_char"] < r["unigram_nats_per_char"]
    assert result.headline_value == r["test_bits_per_char"]
    # per epoch: the runner's names, validation only, never the test split
    assert len(result.history) == config.train.epochs
    assert all(set(row) == HISTORY for row in result.history)
    assert not any(k.startswith("test_") for row in result.history for k in row)
    assert r["val_nats"] == result.history[-1]["val_nats"]
    assert result.params == dataclasses.asdict(config)  # the whole config tree
    assert result.tags["model"] == name.split("-")[1] and result.tags["dataset"] == corpus
    assert result.dataset["test_truncated"] and result.dataset["test_chars_scored"] == 3996
    assert all(path.exists() for path in result.figures.values())
    samples = result.texts["samples.txt"]
    assert samples.count("=== ") == 2 * (1 + len(config.temperatures))
    assert config.prompts[corpus] in samples

    # The checkpoint rebuilds, through build_model, a model that scores exactly the reported
    # test cross-entropy on the same test streams; the baselines, fitted on the training part
    # (val excluded), are scored on those very characters.
    payload = load_checkpoint(result.checkpoint)
    assert payload["config"] == result.model_config
    rebuilt = build_model(payload["config"])
    rebuilt.load_state_dict(payload["model_state"])
    data = EXP.data(config, name, m)
    with data.unsealed():
        test = data.test
    nats = evaluate(rebuilt, chunk_batches(test, config.bptt), stateful=True)["nats"]
    assert nats == pytest.approx(r["test_nats_per_char"], rel=1e-6)
    bigram = baselines.fit_bigram(data.train, len(data.vocab))
    assert r["bigram_nats_per_char"] == pytest.approx(
        stream_targets_nats(test, lambda s: baselines.bigram_nats(bigram, s)))
    val = evaluate(rebuilt, chunk_batches(data.val, config.bptt), stateful=True)["nats"]
    assert val == pytest.approx(r["val_nats"], rel=1e-6)

    # A rerun resumes from the finished checkpoint: nothing retrained, the same scores.
    again = run_configuration("char_generation", config, name, m, tmp_path)
    assert again.metrics["test_nats_per_char"] == r["test_nats_per_char"]
    assert (r["resumed_from_epoch"], again.metrics["resumed_from_epoch"]) == (0, 1)
    assert again.history == result.history and again.texts == result.texts


def test_best_val_scores_the_epoch_with_the_lowest_val_nats(manifests, tmp_path):
    config = smoke_config()
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, epochs=3, lr=0.05, lr_decay=1.0, select_epoch="best_val"))
    result = run_configuration("char_generation", config, "trump-lstm", manifests("trump"),
                               tmp_path)
    vals = [row["val_nats"] for row in result.history]
    chosen = int(result.metrics["chosen_epoch"])
    assert chosen == vals.index(min(vals)) and result.metrics["val_nats"] == min(vals)
    scored = load_checkpoint(result.checkpoint)["model_state"]  # the chosen epoch's weights
    best = load_checkpoint(tmp_path / "trump-lstm" / "best.pt")["model_state"]
    assert all(torch.equal(scored[k], best[k]) for k in best)
