"""The training loop: overfitting a tiny batch, exact kill-and-resume, checkpoints, callbacks,
stateful (truncated BPTT) batches, and evaluate."""

import random

import numpy as np
import pytest
import torch

from rnn_core.checkpoints import LAST, load_checkpoint, load_model, save_checkpoint
from rnn_core.models import Batch, CharLanguageModel, build_model, config_dict, forecast_targets
from rnn_core.training import (
    Callback,
    PrintProgress,
    TrainConfig,
    autocast_dtype,
    evaluate,
    resolve_device,
    train,
)

BACKENDS = ["fused", "scratch"]


def _text_batches(n_batches=3, L=6, B=4, V=7):
    """Fixed random text chunks (x, y = x shifted by one) for a char LM."""
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, V, (n_batches, L + 1, B), generator=g)
    return [Batch(d[:-1], d[1:]) for d in data]


# --- overfitting -------------------------------------------------------------------------------


def _overfit_case(kind, backend):
    g = torch.Generator().manual_seed(2)
    common = {"hidden_size": 32, "backend": backend, "cell": "gru"}
    if kind == "classifier":
        model = build_model({"kind": kind, "num_classes": 3, "vocab_size": 10, **common})
        x = torch.randint(0, 10, (8, 6), generator=g)
        batch = Batch(x, torch.randint(0, 3, (6,), generator=g), torch.tensor([8, 5, 8, 3, 7, 8]))
    elif kind == "forecaster":
        model = build_model({"kind": kind, "num_flows": 2, "horizon": 2, **common})
        # Sines of random phase and frequency: the future is a function of the past, so a
        # causal model can fit it (white noise could not be forecast at t = 0).
        t = torch.arange(10.0).view(10, 1, 1)
        phase, freq = torch.rand(2, 1, 4, 2, generator=g)
        x = torch.sin((0.3 + 0.5 * freq) * t + 6 * phase)
        batch = Batch(x, forecast_targets(x, 2)[0])
    else:
        model = build_model({"kind": kind, "vocab_size": 8, **common})
        d = torch.randint(0, 8, (13, 4), generator=g)
        batch = Batch(d[:-1], d[1:])
    return model, batch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["classifier", "forecaster", "char_lm"])
def test_overfits_a_tiny_batch(kind, backend):
    model, batch = _overfit_case(kind, backend)
    start = evaluate(model, [batch])["loss"]
    config = TrainConfig(epochs=5, lr=0.02, grad_clip=5.0, device="cpu")
    result = train(model, lambda epoch: [batch] * 40, config)  # 200 steps
    final = evaluate(model, [batch])["loss"]
    assert final < 0.02 * start and final < 0.03, (start, final)
    assert result.epochs == 5 and len(result.history) == 5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# --- resume ------------------------------------------------------------------------------------


def _resume_case(kind, backend):
    """A model with dropout, and a batch source that draws from torch, numpy and random."""
    if kind == "classifier":
        cfg = {"kind": kind, "num_classes": 3, "vocab_size": 9, "bidirectional": True}
    else:
        cfg = {"kind": kind, "vocab_size": 9}
    cfg.update(hidden_size=8, num_layers=2, dropout=0.3, cell="lstm", backend=backend)
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 9, (12, 7, 4), generator=g)

    def batches(epoch):
        # The global generators' draws must be restored on resume for runs to match.
        order = torch.randperm(len(data)).tolist()
        order = [order[i] for i in np.random.permutation(len(order))]
        random.shuffle(order)
        for i in order[:4]:
            d = data[i]
            if kind == "classifier":
                yield Batch(d, d[0] % 3, torch.tensor([7, 3, 5, 7]))
            else:
                yield Batch(d[:-1], d[1:])

    val = (
        [Batch(data[0], data[0][0] % 3)]
        if kind == "classifier"
        else [Batch(data[0, :-1], data[0, 1:])]
    )
    return cfg, batches, val


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,optimizer", [("char_lm", "adam"), ("classifier", "sgd")])
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, kind, optimizer, backend):
    cfg, batches, val = _resume_case(kind, backend)
    config = TrainConfig(
        epochs=4,
        lr=0.01,
        lr_decay=0.9,
        optimizer=optimizer,
        momentum=0.9,
        stateful=kind == "char_lm",
        device="cpu",
        seed=7,
    )

    torch.manual_seed(0)
    full = build_model(cfg)
    ref = train(full, batches, config, eval_batches=val, checkpoint_dir=tmp_path / "full")

    torch.manual_seed(0)
    first = build_model(cfg)
    stopped = train(
        first,
        batches,
        TrainConfig(**{**vars(config), "epochs": 2}),
        eval_batches=val,
        checkpoint_dir=tmp_path / "killed",
    )
    assert stopped.epochs == 2
    torch.manual_seed(99)  # a new process: different initial weights and RNG
    resumed_model = build_model(cfg)
    resumed = train(
        resumed_model, batches, config, eval_batches=val, checkpoint_dir=tmp_path / "killed"
    )

    assert resumed.resumed_from == 2 and resumed.epochs == 4
    for key in ("train_loss", "val_loss", "lr"):
        got = [h[key] for h in resumed.history]
        assert got == pytest.approx([h[key] for h in ref.history], abs=1e-6), key
    for (name, a), b in zip(full.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    # A finished run resumed again trains no further and returns the same history.
    again = train(build_model(cfg), batches, config, checkpoint_dir=tmp_path / "killed")
    assert again.epochs == 4 and again.resumed_from == 4


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    batches = _text_batches()
    config = TrainConfig(epochs=1, device="cpu")
    train(
        build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 4}),
        batches,
        config,
        checkpoint_dir=tmp_path,
    )
    other = build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 5})
    with pytest.raises(ValueError, match="last.pt"):
        train(other, batches, TrainConfig(epochs=2, device="cpu"), checkpoint_dir=tmp_path)


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_holds_plain_values_and_rebuilds_the_model(tmp_path):
    model = build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 6, "cell": "rnn"})
    result = train(
        model,
        _text_batches(),
        TrainConfig(epochs=3, checkpoint_every=2, device="cpu"),
        checkpoint_dir=tmp_path,
    )
    assert result.checkpoint == str(tmp_path / LAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # no temp files left behind
    ckpt = torch.load(tmp_path / LAST, weights_only=True)  # no pickled modules inside
    assert ckpt["epoch"] == 3 and ckpt["step"] == 9 and len(ckpt["history"]) == 3
    assert ckpt["config"] == config_dict(model) and ckpt["train_config"]["epochs"] == 3
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    loaded = load_model(tmp_path / LAST)
    x = _text_batches()[0].x
    model.eval()
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_bad_checkpoint_files_name_the_file(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.pt"):
        load_checkpoint(bad)
    save_checkpoint(bad, {"model_state": {}})
    with pytest.raises(ValueError, match="config"):
        load_checkpoint(bad)


# --- callbacks, state, evaluation --------------------------------------------------------------


class Recorder(Callback):
    def __init__(self):
        self.steps, self.epochs, self.checkpoints = [], [], []

    def on_batch_end(self, step, loss):
        self.steps.append((step, loss))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))

    def on_checkpoint(self, path, epoch):
        self.checkpoints.append(epoch)


def test_callbacks_receive_steps_epochs_and_validation_metrics(tmp_path):
    model = build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 6})
    rec, printed = Recorder(), []
    config = TrainConfig(epochs=2, lr_decay=0.5, checkpoint_every=1, device="cpu")
    result = train(
        model,
        _text_batches(),
        config,
        eval_batches=lambda: _text_batches(1),
        callbacks=[rec, PrintProgress(every=2, print_fn=printed.append), object()],
        checkpoint_dir=tmp_path,
    )
    assert [s for s, _ in rec.steps] == [1, 2, 3, 4, 5, 6]
    assert [e for e, _ in rec.epochs] == [0, 1] and rec.checkpoints == [0, 1]
    metrics = rec.epochs[-1][1]
    assert metrics == result.metrics and metrics["lr"] == pytest.approx(5e-4)
    assert {"val_loss", "val_nats", "val_bits_per_char", "val_perplexity"} <= set(metrics)
    assert metrics["val_nats"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert printed[0] == f"step 2: loss {rec.steps[1][1]:.4f}" and printed[-1].startswith("epoch 1")


class StateSpy(CharLanguageModel):
    """Records, for each forward call, whether a state came in."""

    def __init__(self, config):
        super().__init__(config)
        self.got_state = []

    def forward(self, x, lengths=None, state=None):
        self.got_state.append(state is not None)
        return super().forward(x, lengths, state)


@pytest.mark.parametrize("stateful", [False, True])
def test_stateful_training_carries_detached_state(stateful):
    model = StateSpy(build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 6}).config)
    batches = _text_batches(3) + _text_batches(2, B=2)  # the batch size changes at batch 4
    train(model, batches, TrainConfig(epochs=2, stateful=stateful, device="cpu"))
    expected = [False, True, True, False, True] if stateful else [False] * 5
    assert model.got_state == expected * 2  # and each epoch starts fresh


def test_evaluate_is_exact_and_restores_training_mode():
    model = build_model({"kind": "classifier", "num_classes": 2, "input_size": 2, "hidden_size": 4})
    x, y = torch.randn(5, 6, 2), torch.tensor([0, 1, 1, 0, 1, 1])
    batches = [Batch(x[:, :4], y[:4]), Batch(x[:, 4:], y[4:])]
    scores = evaluate(model, batches)
    assert model.training
    model.eval()
    logits, _ = model(x)
    assert scores["loss"] == pytest.approx(model.loss(logits, y).item(), rel=1e-6)
    assert scores["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


def test_device_precision_and_optimizer_choices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype("bf16", torch.device("cpu")) is None  # the CPU always runs fp32
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp8", torch.device("cpu"))
    model = build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 4})
    with pytest.raises(ValueError, match="optimizer"):
        train(model, _text_batches(), TrainConfig(epochs=1, optimizer="lbfgs", device="cpu"))


def test_a_diverged_loss_stops_training():
    model = build_model({"kind": "char_lm", "vocab_size": 7, "hidden_size": 4})
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        train(model, _text_batches(), TrainConfig(epochs=1, device="cpu"))
