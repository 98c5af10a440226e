"""char_generation on the smoke profile: names, metrics, texts, plots, checkpoint and resume;
plus the text streams truncated BPTT reads."""

import dataclasses
import math

import pytest
import torch

from flows.profiles import experiment_config, load_profile
from rnn_core import baselines
from rnn_core.checkpoints import load_checkpoint
from rnn_core.datasets.corpus import load_corpus
from rnn_core.experiments import char_generation as cg
from rnn_core.experiments.text_streams import (
    as_streams,
    chunk_batches,
    encode_ids,
    epoch_batch_source,
    stream_targets_nats,
)
from rnn_core.models import build_model
from rnn_core.training import evaluate

METRICS = {
    "test_nats_per_char",
    "test_bits_per_char",
    "test_perplexity",
    "unigram_nats_per_char",
    "bigram_nats_per_char",
    "bigram_minus_model_nats",
    "train_nats_per_char",
}


def smoke_config(**changes) -> cg.Config:
    return dataclasses.replace(
        experiment_config(load_profile("smoke"), "char_generation"), **changes
    )


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


# --- the experiment ----------------------------------------------------------------------------


def test_plan_names_and_errors():
    assert cg.plan(cg.Config()) == ["trump-lstm", "trump-gru", "moliere-lstm", "moliere-gru"]
    config = cg.Config(corpora=["moliere"], models=["mikolov", "gru"])
    assert cg.plan(config) == ["moliere-mikolov", "moliere-gru"]
    with pytest.raises(ValueError, match="unknown model"):
        cg.plan(cg.Config(models=["transformer"]))
    with pytest.raises(ValueError, match="bad configuration name"):
        cg.parse_name("trump_lstm")


@pytest.mark.parametrize("name", ["trump-lstm", "moliere-mikolov"])
def test_run_one_smoke(prepared_data, tmp_path, name):
    config = smoke_config(corpora=["trump", "moliere"], models=["lstm", "mikolov"])
    assert name in cg.plan(config)
    data_dir = prepared_data(name.split("-")[0])
    epochs_seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            epochs_seen.append(epoch)

    result = cg.run_one(config, name, data_dir, tmp_path, callbacks=Recorder())
    assert epochs_seen == [0]  # callbacks reach the training loop
    assert set(result.metrics) == METRICS
    assert all(math.isfinite(v) for v in result.metrics.values())
    m = result.metrics
    assert m["test_bits_per_char"] == pytest.approx(m["test_nats_per_char"] / math.log(2))
    assert m["bigram_minus_model_nats"] == pytest.approx(
        m["bigram_nats_per_char"] - m["test_nats_per_char"]
    )
    assert m["bigram_nats_per_char"] < m["unigram_nats_per_char"]
    assert result.headline_value == m["test_bits_per_char"]
    assert len(result.history) == config.epochs and "test_nats_per_char" in result.history[0]
    assert result.history[-1]["test_nats_per_char"] == m["test_nats_per_char"]
    assert result.tags["model"] == name.split("-")[1] and result.dataset["test_truncated"]
    assert all(path.exists() for path in result.figures.values())
    samples = result.texts["samples.txt"]
    assert samples.count("=== ") == 2 * (1 + len(config.temperatures))
    assert config.prompts[name.split("-")[0]] in samples

    # The checkpoint rebuilds, through build_model, a model that scores exactly the reported
    # test cross-entropy on the same test streams.
    payload = load_checkpoint(result.checkpoint)
    assert payload["config"] == result.model_config
    rebuilt = build_model(payload["config"])
    rebuilt.load_state_dict(payload["model_state"])
    out_dir = data_dir / "processed" / name.split("-")[0]
    _, test_text, vocab = load_corpus(out_dir)
    test_ids = encode_ids(test_text, vocab)[: config.max_test_chars]
    batches = chunk_batches(as_streams(test_ids, config.eval_streams), config.bptt)
    nats = evaluate(rebuilt, batches, stateful=True)["nats"]
    assert nats == pytest.approx(m["test_nats_per_char"], rel=1e-6)

    # A rerun resumes from the finished checkpoint: nothing retrained, the same test score.
    again = cg.run_one(config, name, data_dir, tmp_path)
    assert again.metrics["test_nats_per_char"] == m["test_nats_per_char"]
    assert again.texts == result.texts
