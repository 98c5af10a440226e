"""Shapes and formulas of the hand-written cells (rnn_core.cells) and the course's models over
them (rnn_core.course_models), checked against torch.nn."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.cells import (
    Cell,
    GRUCell,
    LSTMCell,
    RNNCell,
    cell_names,
    get_cell,
    register_cell,
)
from rnn_core.course_models import RNN, MikolovRNN

B, D, H, L = 3, 4, 5, 6


# --- the course's RNN ---------------------------------------------------------------------------


def test_rnn_shapes():
    model = RNN(D, H, output_size=2)
    x, h = torch.randn(L, B, D), torch.randn(B, H)
    assert model.one_step(x[0], h).shape == (B, H)
    states = model(x)
    assert states.shape == (L, B, H)
    assert model.decode(states[-1]).shape == (B, 2)
    assert model.decode(states).shape == (L, B, 2)  # decode works on any leading dims
    assert RNN(D, H).decode(states).shape == (L, B, D)  # output_size defaults to input_size


def test_rnn_forward_is_one_step_repeated():
    model = RNN(D, H, activation="relu").double()
    x, h = torch.randn(L, B, D, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    states, expected = model(x, h), []
    for x_t in x:
        h = model.one_step(x_t, h)
        expected.append(h)
    torch.testing.assert_close(states, torch.stack(expected))
    # h=None means a zero initial state
    torch.testing.assert_close(model(x), model(x, torch.zeros(B, H, dtype=torch.float64)))


@pytest.mark.parametrize(
    "activation, low, high", [("tanh", -1, 1), ("relu", 0, float("inf")), ("sigmoid", 0, 1)]
)
def test_rnn_activation_ranges(activation, low, high):
    states = RNN(D, H, activation=activation)(3 * torch.randn(L, B, D))
    assert states.min() >= low and states.max() <= high
    # The formula itself: act(W_ih x + b_ih + W_hh h + b_hh)
    cell, x, h = RNNCell(D, H, activation), torch.randn(B, D), torch.randn(B, H)
    pre = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    torch.testing.assert_close(cell.one_step(x, h), getattr(torch, activation)(pre))


def test_rnn_rejects_bad_input():
    with pytest.raises(ValueError, match="activation"):
        RNN(D, H, activation="gelu")
    with pytest.raises(ValueError, match="L x B"):
        RNN(D, H)(torch.randn(B, D))


# --- torch.nn-shaped cells ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: RNNCell(D, H), lambda: nn.RNNCell(D, H)),
        (lambda: RNNCell(D, H, "relu"), lambda: nn.RNNCell(D, H, nonlinearity="relu")),
        (lambda: LSTMCell(D, H), lambda: nn.LSTMCell(D, H)),
        (lambda: GRUCell(D, H), lambda: nn.GRUCell(D, H)),
    ],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru"],
)
def test_cell_matches_torch_nn(ours, theirs):
    """Same parameter names and shapes (strict load) and the same step, value and gradients."""
    mine, ref = ours().double(), theirs().double()
    assert {k: v.shape for k, v in mine.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(B, D, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    if isinstance(mine, LSTMCell):
        state = (h, torch.randn(B, H, dtype=torch.float64))
        out, expected = mine.one_step(x, state), ref(x, state)
        assert out[0].shape == out[1].shape == (B, H)
        torch.testing.assert_close(out, expected)
        out, expected = out[0] + 2 * out[1], expected[0] + 2 * expected[1]
    else:
        out, expected = mine.one_step(x, h), ref(x, h)
        assert out.shape == (B, H)
        torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), list(mine.parameters()))
    ref_grads = torch.autograd.grad(expected.square().sum(), list(ref.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_cell_init_matches_torch_nn_distribution():
    """uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, like torch.nn."""
    hidden = 64
    bound = hidden**-0.5
    for p in LSTMCell(32, hidden).parameters():
        assert p.abs().max() <= bound
        assert abs(p.std().item() - bound / 3**0.5) < 0.15 * bound / 3**0.5


def test_lstm_forget_gate_is_second_block():
    """Gate order i, f, g, o: a huge forget bias keeps c (with input gate shut), as in torch."""
    cell = LSTMCell(D, H)
    with torch.no_grad():
        cell.bias_ih.zero_()
        cell.bias_ih[:H] = -50  # i closed
        cell.bias_ih[H : 2 * H] = 50  # f open
    c = torch.randn(B, H)
    _, c_next = cell.one_step(torch.randn(B, D), (torch.randn(B, H), c))
    torch.testing.assert_close(c_next, c)


# --- Mikolov's character RNN --------------------------------------------------------------------


def test_mikolov_shapes_and_loss():
    vocab = 7
    model = MikolovRNN(vocab, H)
    chars = torch.randint(0, vocab, (L, B))
    assert model.one_step(chars[0], torch.zeros(B, H)).shape == (B, H)
    states = model(chars)
    assert states.shape == (L, B, H)
    assert 0 < states.min() and states.max() < 1  # sigmoid states
    logits = model.decode(states)
    assert logits.shape == (L, B, vocab)
    loss = F.cross_entropy(logits[:-1].reshape(-1, vocab), chars[1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mikolov_is_the_paper_formula():
    """s_t = sigmoid(W [onehot(c_t); s_{t-1}] + b): the column lookup equals the explicit concat."""
    vocab = 7
    model = MikolovRNN(vocab, H).double()
    chars = torch.randint(0, vocab, (L, B))
    h0 = torch.rand(B, H, dtype=torch.float64)
    h, expected = h0, []
    for c_t in chars:
        joint = torch.cat([F.one_hot(c_t, vocab).double(), h], dim=1)
        h = torch.sigmoid(joint @ model.weight.T + model.bias)
        expected.append(h)
    torch.testing.assert_close(model(chars, h0), torch.stack(expected))
    probs = model.decode(h).softmax(-1)  # y_t = softmax(V s_t)
    expected_probs = torch.softmax(h @ model.output.weight.T + model.output.bias, dim=-1)
    torch.testing.assert_close(probs, expected_probs)


def test_mikolov_rejects_float_input():
    with pytest.raises(TypeError, match="int64"):
        MikolovRNN(5, H).one_step(torch.zeros(B), torch.zeros(B, H))


# --- the registry's built-in cells --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls, fused",
    [("rnn", RNNCell, nn.RNN), ("lstm", LSTMCell, nn.LSTM), ("gru", GRUCell, nn.GRU)],
)
def test_builtin_cells_are_registered_with_their_torch_nn_layer(name, cls, fused):
    assert get_cell(name) is cls and cls.name == name and cls.fused is fused
    # The cell's parameters are one layer-direction of its fused layer: same names and shapes.
    layer = fused(D, H)
    cell = cls(D, H)
    assert {k + "_l0": v.shape for k, v in cell.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }
    assert len(cls.state_names) == (2 if name == "lstm" else 1)  # LSTM: (h, c), h first


def test_cell_sequence_is_one_step_repeated_for_tuple_states():
    """`sequence` (one projection + the shared loop) == `one_step` per step, (h, c) as a list too."""
    cell = LSTMCell(D, H).double()
    x = torch.randn(L, B, D, dtype=torch.float64)
    state = [torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)]
    hs, final = cell.sequence(x, state)
    step_state, expected = tuple(state), []
    for x_t in x:
        step_state = cell.one_step(x_t, step_state)
        expected.append(step_state[0])
    torch.testing.assert_close(hs, torch.stack(expected))
    torch.testing.assert_close(final, step_state)
    zero_h, zero_c = cell.initial_state(B, x)
    assert zero_h.shape == zero_c.shape == (B, H) and not zero_h.any()


def test_register_cell_needs_a_step():
    class NoStep(Cell):
        pass

    with pytest.raises(TypeError, match="defines no step"):
        register_cell("nostep")(NoStep)
    assert "nostep" not in cell_names()
