"""Shapes, masking, state carrying and config round trips of rnn_core.models; generation and
gradient diagnostics. Every model test runs on both recurrent backends."""

import json

import pytest
import torch

from rnn_core.generation import decode, encode, generate
from rnn_core.gradients import hidden_gradient_norms
from rnn_core.models import (
    Batch,
    CharLanguageModel,
    Forecaster,
    SequenceClassifier,
    build_model,
    config_dict,
    forecast_targets,
    time_of_day_features,
)

BACKENDS = ["fused", "scratch"]
CELLS = ["rnn", "lstm", "gru"]


def _classifier(backend, cell, **kw):
    cfg = {
        "kind": "classifier",
        "num_classes": 3,
        "vocab_size": 20,
        "embedding_dim": 6,
        "hidden_size": 8,
    }
    return build_model({**cfg, "cell": cell, "backend": backend, **kw})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_shapes_and_padding_invariance(backend, cell, bidirectional):
    model = _classifier(backend, cell, bidirectional=bidirectional, num_layers=2).eval()
    x = torch.randint(1, 20, (7, 4))
    lengths = torch.tensor([7, 3, 5, 1])
    logits, state = model(x, lengths=lengths)
    assert logits.shape == (4, 3)
    h_n = state[0] if cell == "lstm" else state
    assert h_n.shape == (2 * (2 if bidirectional else 1), 4, 8)
    # A padded sequence is classified exactly as the same sequence alone without padding.
    alone, _ = model(x[:3, 1:2])
    torch.testing.assert_close(logits[1:2], alone, atol=1e-5, rtol=1e-5)
    loss = model.loss(logits, torch.tensor([0, 1, 2, 0]))
    assert loss.dim() == 0 and loss.item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_on_float_features(backend):
    model = build_model(
        {
            "kind": "classifier",
            "num_classes": 2,
            "input_size": 3,
            "hidden_size": 5,
            "backend": backend,
        }
    )
    logits, _ = model(torch.randn(6, 2, 3))
    assert isinstance(model, SequenceClassifier) and logits.shape == (2, 2)


def test_forecast_targets_by_hand():
    x = torch.arange(1.0, 6.0).view(5, 1, 1)  # one sequence 1..5, one flow
    y, mask = forecast_targets(x, horizon=2)
    assert y.shape == (5, 1, 2, 1) and mask.shape == (5, 1, 2)
    assert y[:, 0, :, 0].tolist() == [[2, 3], [3, 4], [4, 5], [5, 0], [0, 0]]
    assert mask[:, 0].tolist() == [[1, 1], [1, 1], [1, 1], [1, 0], [0, 0]]
    # With lengths, targets past each sequence's own end are masked and zeroed.
    x2 = torch.arange(1.0, 11.0).view(5, 2, 1)
    y2, mask2 = forecast_targets(x2, 2, lengths=torch.tensor([5, 3]))
    assert mask2[:, 1].tolist() == [[1, 1], [1, 0], [0, 0], [0, 0], [0, 0]]
    assert y2[1, 1, 1, 0] == 0 and y2[0, 1, 1, 0] == x2[2, 1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_forecaster_shapes_and_masked_loss(backend, cell):
    cfg = {
        "kind": "forecaster",
        "num_flows": 2,
        "num_covariates": 2,
        "horizon": 3,
        "hidden_size": 8,
    }
    model = build_model({**cfg, "cell": cell, "backend": backend})
    assert isinstance(model, Forecaster)
    x = torch.randn(6, 4, 4)
    lengths = torch.tensor([6, 4, 2, 6])
    pred, _ = model(x, lengths=lengths)
    assert pred.shape == (6, 4, 3, 2)
    y, mask = forecast_targets(x[..., :2], 3, lengths)
    loss = model.loss(pred, y, lengths)
    # The loss is the MSE over exactly the valid targets: garbage at masked ones changes nothing.
    y_garbage = torch.where(mask.unsqueeze(-1), y, 1e6)
    assert model.loss(pred, y_garbage, lengths).item() == pytest.approx(loss.item())
    m = mask.unsqueeze(-1).expand_as(pred)
    assert loss.item() == pytest.approx(((pred - y)[m] ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="L x B x 4"):
        model(torch.randn(6, 4, 2))


def test_time_of_day_features_are_cyclic_covariates():
    slots = torch.tensor([[0, 18], [36, 72]])  # L x B slot ids, 73 slots a day
    feats = time_of_day_features(slots, 73)
    assert feats.shape == (2, 2, 2)
    torch.testing.assert_close(feats[0, 0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 2))
    # The day's last slot is as close to its first as two neighbouring slots are.
    gap = lambda a, b: (feats.view(-1, 2)[a] - feats.view(-1, 2)[b]).norm()
    step = (time_of_day_features(torch.tensor(1), 73) - feats[0, 0]).norm()
    torch.testing.assert_close(gap(3, 0), step)
    model = build_model({"kind": "forecaster", "num_flows": 1, "num_covariates": 2})
    x = torch.cat([torch.randn(2, 2, 1), feats], dim=-1)
    assert model(x)[0].shape == (2, 2, 1, 1)


def test_residual_forecaster_starts_from_persistence():
    model = build_model({"kind": "forecaster", "num_flows": 1, "horizon": 2, "residual": True})
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.randn(5, 3, 1)
    pred, _ = model(x)
    torch.testing.assert_close(pred, x.unsqueeze(2).expand(-1, -1, 2, -1))


@pytest.mark.parametrize(
    "mode,backend", [("embedding", "fused"), ("embedding", "scratch"), ("mikolov", "fused")]
)
@pytest.mark.parametrize("cell", CELLS)
def test_char_lm_shapes_and_carried_state(mode, backend, cell):
    cfg = {"kind": "char_lm", "vocab_size": 11, "mode": mode, "hidden_size": 8, "num_layers": 2}
    model = build_model({**cfg, "cell": cell, "backend": backend}).eval()
    assert isinstance(model, CharLanguageModel)
    x = torch.randint(0, 11, (10, 3))
    logits, _ = model(x)
    assert logits.shape == (10, 3, 11)
    # Truncated BPTT relies on this: two chunks with the state carried == one long pass.
    first, state = model(x[:6])
    second, _ = model(x[6:], state=state)
    torch.testing.assert_close(torch.cat([first, second]), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["embedding", "mikolov"])
def test_char_lm_loss_ignores_padding(mode):
    model = build_model(
        {"kind": "char_lm", "vocab_size": 7, "mode": mode, "hidden_size": 6, "pad_id": 0}
    )
    x = torch.randint(1, 7, (5, 2))
    y = torch.randint(1, 7, (5, 2))
    lengths = torch.tensor([5, 3])
    logits, state = model(x, lengths=lengths)
    full = model.loss(logits, y, lengths)
    y_pad = y.clone()
    y_pad[3:, 1] = 0  # past the end: masked by lengths
    y_pad[0, 0] = 0  # a pad target inside the sequence: masked by pad_id
    keep = torch.ones(5, 2, dtype=torch.bool)
    keep[3:, 1] = False
    keep[0, 0] = False
    expected = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    torch.testing.assert_close(model.loss(logits, y_pad, lengths), expected)
    assert full.item() != pytest.approx(expected.item())
    if mode == "mikolov":  # the state is each sequence's state at its own last step
        short, _ = model(x[:3, 1:2])
        alone = model.mikolov(x[:3, 1:2])[-1]
        torch.testing.assert_close(state[1:2], alone)
        assert short.shape == (3, 1, 7)


@pytest.mark.parametrize(
    "config",
    [
        {
            "kind": "classifier",
            "num_classes": 4,
            "vocab_size": 30,
            "bidirectional": True,
            "cell": "gru",
        },
        {"kind": "forecaster", "num_flows": 2, "horizon": 4, "num_covariates": 3, "residual": True},
        {"kind": "char_lm", "vocab_size": 40, "mode": "mikolov", "hidden_size": 16},
        {
            "kind": "char_lm",
            "vocab_size": 40,
            "cell": "rnn",
            "nonlinearity": "relu",
            "backend": "scratch",
        },
    ],
)
def test_config_round_trip_through_json(config):
    model = build_model(config)
    saved = json.loads(json.dumps(config_dict(model)))
    rebuilt = build_model(saved)
    assert config_dict(rebuilt) == saved and saved["kind"] == config["kind"]
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters


def test_build_model_rejects_bad_configs():
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "transformer"})
    with pytest.raises(ValueError, match="hiden_size"):
        build_model({"kind": "char_lm", "hiden_size": 3})
    with pytest.raises(ValueError, match="mode"):
        build_model({"kind": "char_lm", "mode": "bogus"})


def test_batch_to_device_keeps_none_lengths():
    b = Batch(torch.zeros(2, 3), torch.zeros(3)).to("cpu")
    assert b.lengths is None and b.x.shape == (2, 3)


# --- generation --------------------------------------------------------------------------------


def test_encode_decode_round_trip_and_unknown_char():
    vocab = list("abc \n")
    assert decode(encode("a cab\n", vocab), vocab) == "a cab\n"
    with pytest.raises(ValueError, match="'z'"):
        encode("az", vocab)


@pytest.mark.parametrize("mode", ["embedding", "mikolov"])
def test_generation_is_deterministic_with_a_seeded_generator(mode):
    model = build_model({"kind": "char_lm", "vocab_size": 9, "mode": mode, "hidden_size": 8})
    run = lambda seed, **kw: generate(
        model, [1, 2, 3], 20, mode="sample", generator=torch.Generator().manual_seed(seed), **kw
    )
    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c and len(a) == 20 and all(0 <= i < 9 for i in a)
    greedy = generate(model, [1, 2, 3], 20)
    assert run(5, top_k=1) == greedy == generate(model, [1, 2, 3], 20)
    # Without a prompt, generation starts from the zero state with start_id.
    assert generate(model, None, 8, start_id=4) == generate(model, [4], 8)
    assert model.training  # restored after generation


def test_greedy_generation_follows_a_memorised_cycle():
    # A model trained to continue 0 1 2 3 0 1 ... must reproduce the cycle from a prompt.
    model = build_model({"kind": "char_lm", "vocab_size": 4, "hidden_size": 16, "cell": "gru"})
    seq = torch.arange(41) % 4
    x, y = seq[:-1].view(-1, 1), seq[1:].view(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        logits, _ = model(x)
        model.loss(logits, y).backward()
        opt.step()
    assert generate(model, [2, 3], 8) == [0, 1, 2, 3, 0, 1, 2, 3]


# --- gradient diagnostics ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["classifier", "forecaster", "char_lm"])
def test_gradient_norms_shape(backend, cell, kind):
    cfg = {
        "classifier": {"num_classes": 3, "vocab_size": 10},
        "char_lm": {"vocab_size": 10},
        "forecaster": {"num_flows": 2, "horizon": 2},
    }[kind]
    model = build_model(
        dict(kind=kind, cell=cell, backend=backend, hidden_size=6, num_layers=2, dropout=0.5, **cfg)
    )
    L, B = 9, 3
    if kind == "forecaster":
        x = torch.randn(L, B, 2)
        y = forecast_targets(x, 2)[0]
    else:
        x = torch.randint(0, 10, (L, B))
        y = torch.randint(0, 3, (B,)) if kind == "classifier" else torch.randint(0, 10, (L, B))
    norms = hidden_gradient_norms(model, Batch(x, y))
    assert norms.shape == (L,) and torch.isfinite(norms).all() and (norms > 0).all()
    assert model.training and all(p.grad is None for p in model.parameters())
    # Dropout is off during the diagnostic, so it is repeatable.
    torch.testing.assert_close(hidden_gradient_norms(model, Batch(x, y)), norms)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_norms_match_a_hand_written_tanh_loop(backend):
    model = build_model(
        {"kind": "char_lm", "vocab_size": 5, "cell": "rnn", "hidden_size": 4, "backend": backend}
    )
    x, y = torch.randint(0, 5, (6, 2)), torch.randint(0, 5, (6, 2))
    rnn = model.rnn
    h, hs = torch.zeros(2, 4), []
    for e in model.embedding(x):
        h = torch.tanh(
            e @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        )
        h.retain_grad()
        hs.append(h)
    torch.nn.functional.cross_entropy(model.head(h), y[-1], reduction="sum").backward()
    expected = torch.stack([s.grad.norm(dim=-1).mean() for s in hs])
    torch.testing.assert_close(hidden_gradient_norms(model, Batch(x, y)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_vanish_with_distance_in_a_small_tanh_rnn(backend):
    model = build_model(
        {
            "kind": "classifier",
            "num_classes": 2,
            "input_size": 3,
            "cell": "rnn",
            "hidden_size": 16,
            "backend": backend,
        }
    )
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            p.uniform_(-0.1, 0.1) if name.startswith("weight") else p.zero_()
    x, y = torch.randn(20, 8, 3), torch.randint(0, 2, (8,))
    norms = hidden_gradient_norms(model, Batch(x, y))
    assert (norms[:-1] < norms[1:]).all()  # strictly smaller the further from the loss
    assert norms[0] < 1e-6 * norms[-1]


def test_gradient_norms_reject_bidirectional_and_padding():
    model = _classifier("fused", "gru", bidirectional=True)
    x, y = torch.randint(0, 20, (5, 2)), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="causal"):
        hidden_gradient_norms(model, Batch(x, y))
    with pytest.raises(ValueError, match="equal length"):
        hidden_gradient_norms(_classifier("fused", "gru"), Batch(x, y, torch.tensor([5, 3])))


# --- the course's RNN class as a model (mode="course") -------------------------------------------


def _course_pair(kind, **kw):
    """A mode="course" model and the mode="stack" fused torch.nn model built from the same seed."""
    base = {"classifier": {"num_classes": 3, "input_size": 2},
            "forecaster": {"num_flows": 2, "horizon": 2}}[kind]
    config = {"kind": kind, "cell": "rnn", "hidden_size": 6, **base, **kw}
    torch.manual_seed(3)
    course = build_model({**config, "mode": "course"})
    torch.manual_seed(3)
    fused = build_model({**config, "backend": "fused"})
    return course, fused


@pytest.mark.parametrize("kind", ["classifier", "forecaster"])
def test_course_model_is_the_course_rnn_class_and_starts_as_torch_nn(kind):
    from rnn_core.course_models import RNN

    course, fused = _course_pair(kind)
    assert isinstance(course.rnn, RNN) and not hasattr(course, "head")
    # Same seed, same initial numbers: torch.nn.RNN + Linear and the course's cell + decoder.
    torch.testing.assert_close(course.rnn.cell.weight_hh, fused.rnn.weight_hh_l0)
    torch.testing.assert_close(course.rnn.decoder.weight, fused.head.weight)
    x = torch.randn(7, 4, 2)
    out_c, state_c = course(x)
    out_f, state_f = fused(x)
    torch.testing.assert_close(out_c, out_f)
    torch.testing.assert_close(state_c, state_f[-1])  # B x H: the course's state convention
    # decode(forward(x)[-1]) is the classifier's output: the class's own contract.
    if kind == "classifier":
        torch.testing.assert_close(course.rnn.decode(course.rnn(x)[-1]), out_c)
    rebuilt = build_model(json.loads(json.dumps(config_dict(course))))
    rebuilt.load_state_dict(course.state_dict())


def test_course_classifier_trains_and_takes_its_state_at_each_length():
    course, _ = _course_pair("classifier")
    x = torch.randn(6, 16, 2)
    y = (x[..., 0].sum(0) > 0).long() + (x[..., 1].sum(0) > 0).long()
    opt = torch.optim.Adam(course.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        loss = course.loss(course(x)[0], y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    lengths = torch.tensor([6, 3] + [6] * 14)
    logits, _ = course(x, lengths=lengths)
    torch.testing.assert_close(logits[1:2], course(x[:3, 1:2])[0])


def test_course_mode_refuses_what_the_class_cannot_be():
    for bad, match in [({"cell": "lstm"}, "cell 'lstm'"), ({"num_layers": 2}, "num_layers"),
                       ({"bidirectional": True}, "bidirectional"), ({"mode": "keras"}, "mode")]:
        with pytest.raises(ValueError, match=match):
            build_model({"kind": "classifier", "num_classes": 2, "mode": "course", **bad})


# --- forget-gate bias and the cell state's gradient ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_forget_bias_is_set_at_init_in_every_layer_and_direction(backend):
    model = _classifier(backend, "lstm", num_layers=2, bidirectional=True, forget_bias=1.0)
    names = [n for n, _ in model.rnn.named_parameters() if n.startswith("bias")]
    assert len(names) == 8  # 2 layers x 2 directions x (ih, hh)
    for name, p in model.rnn.named_parameters():
        if name.startswith("bias_ih"):
            assert (p[8:16] == 1.0).all() and not (p[:8] == 1.0).all()
        elif name.startswith("bias_hh"):
            assert (p[8:16] == 0.0).all()
    with pytest.raises(ValueError, match="no forget gate"):
        _classifier(backend, "gru", forget_bias=1.0)


def test_forget_bias_gives_both_backends_the_same_weights():
    torch.manual_seed(5)
    scratch = _classifier("scratch", "lstm", forget_bias=1.0)
    torch.manual_seed(5)
    fused = _classifier("fused", "lstm", forget_bias=1.0)
    for (n, a), (_, b) in zip(scratch.state_dict().items(), fused.state_dict().items(),
                              strict=True):
        torch.testing.assert_close(a, b, msg=n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_state_gradient_is_the_total_derivative(backend):
    """d loss / d c_t through h_t = o tanh(c_t) and through c_{t+1}, as retain_grad sees it in a
    hand-written LSTM loop; the same numbers on both backends."""
    from rnn_core.gradients import cell_state_gradient_norms, state_gradient_norms

    model = build_model({"kind": "char_lm", "vocab_size": 5, "cell": "lstm", "hidden_size": 4,
                         "backend": backend}).double()
    x, y = torch.randint(0, 5, (6, 2)), torch.randint(0, 5, (6, 2))
    rnn = model.rnn
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    cs = []
    for e in model.embedding(x):
        gates = (e @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T
                 + rnn.bias_hh_l0)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c.retain_grad()
        cs.append(c)
        h = torch.sigmoid(o) * torch.tanh(c)
    torch.nn.functional.cross_entropy(model.head(h), y[-1], reduction="sum").backward()
    expected = torch.stack([s.grad.norm(dim=-1).mean() for s in cs])
    norms = cell_state_gradient_norms(model, Batch(x, y))
    assert norms.shape == (6,)
    torch.testing.assert_close(norms, expected)
    both = state_gradient_norms(model, Batch(x, y))
    assert set(both) == {"h", "c"} and both["h"].shape == (6,)
    with pytest.raises(ValueError, match="cell state"):
        cell_state_gradient_norms(_classifier(backend, "gru"), Batch(x, y[-1] % 3))


def test_forget_bias_keeps_more_of_the_cell_state_gradient_at_init():
    from rnn_core.gradients import cell_state_gradient_norms

    x, y = torch.randint(0, 20, (40, 8)), torch.randint(0, 3, (8,))
    ratios = {}
    for bias in (None, 1.0):
        torch.manual_seed(0)
        norms = cell_state_gradient_norms(_classifier("fused", "lstm", forget_bias=bias),
                                          Batch(x, y), float64=True)
        ratios[bias] = float(norms[0] / norms[-1])  # 39 steps back over at the loss
    assert ratios[1.0] > 10 * ratios[None]


def test_gradient_norms_of_the_course_and_mikolov_models():
    course, fused = _course_pair("classifier")
    x, y = torch.randn(8, 3, 2), torch.tensor([0, 1, 2])
    torch.testing.assert_close(hidden_gradient_norms(course, Batch(x, y)),
                               hidden_gradient_norms(fused, Batch(x, y)))
    mikolov = build_model({"kind": "char_lm", "vocab_size": 7, "mode": "mikolov",
                           "hidden_size": 5})
    chars = torch.randint(0, 7, (9, 2))
    assert hidden_gradient_norms(mikolov, Batch(chars, chars)).shape == (9,)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_init_is_keras_defaults_and_equal_on_both_backends(cell):
    """init="keras" (the AG News lesson's layers): glorot-uniform input kernel, orthogonal
    recurrent kernel, zero biases, an LSTM's forget bias 1; the same numbers on both backends."""
    models = []
    for backend in BACKENDS:
        torch.manual_seed(11)
        models.append(_classifier(backend, cell, init="keras", num_layers=2))
    for (name, a), (_, b) in zip(*(m.state_dict().items() for m in models), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    rnn = models[0].rnn
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    w_hh = rnn.weight_hh_l0  # G*H x H: orthonormal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(8), atol=1e-5, rtol=0)
    limit = (6 / (6 + gates * 8)) ** 0.5  # glorot: fan_in 6 (the embedding), fan_out G*H
    assert rnn.weight_ih_l0.abs().max() <= limit
    forget = slice(8, 16) if cell == "lstm" else slice(0, 0)
    assert (rnn.bias_ih_l0[forget] == 1).all() and rnn.bias_hh_l0.abs().sum() == 0
    rest = torch.cat([rnn.bias_ih_l0[:8], rnn.bias_ih_l0[16:]]) if cell == "lstm" else \
        rnn.bias_ih_l0
    assert rest.abs().sum() == 0
    with pytest.raises(ValueError, match="unknown init"):
        _classifier("fused", cell, init="xavier")
