"""The scratch backend against the fused torch.nn one: same state_dict, same numbers.

Outputs, final states and gradients (w.r.t. x, h0/c0 and every parameter) must agree to
1e-6 in float64 and 1e-4 in float32, over small random shapes, 1-2 layers, both directions,
with and without `lengths` masks.
"""

import pytest
import torch

from rnn_core.layers import Recurrent
from rnn_core.stacked import ScratchRecurrent

D, H = 3, 4
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
CELL_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]


def _pair(cell, nonlinearity, layers, bidirectional, dtype, dropout=0.0):
    """A scratch and a fused layer sharing the scratch layer's weights."""
    scratch = Recurrent(cell, D, H, layers, bidirectional, "scratch", nonlinearity, dropout)
    fused = Recurrent(cell, D, H, layers, bidirectional, "fused", nonlinearity, dropout)
    fused.load_state_dict(scratch.state_dict(), strict=True)
    return scratch.to(dtype), fused.to(dtype)


def _run(layer, x, h0, lengths, weights):
    """Forward, then gradients of a random weighting of outputs and states (not a plain sum)."""
    outputs, state = layer(x, h0, lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = (outputs * weights[0]).sum() + sum(
        (s * w).sum() for s, w in zip(states, weights[1:], strict=False)
    )
    inputs = [x, *(h0 if isinstance(h0, tuple) else (h0,))]
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad(loss, inputs + list(params.values()))
    return outputs, states, grads[: len(inputs)], dict(zip(params, grads[len(inputs) :]))


def _inputs(cell, length, batch, layers, dirs, dtype, masked, short=False):
    x = torch.randn(length, batch, D, dtype=dtype, requires_grad=True)
    shape = (layers * dirs, batch, H)
    h0 = torch.randn(shape, dtype=dtype, requires_grad=True)
    if cell == "lstm":
        h0 = (h0, torch.randn(shape, dtype=dtype, requires_grad=True))
    lengths = None
    if masked:  # lengths anywhere in 1..length, one of them full (unless short)
        lengths = torch.randint(1, length + 1, (batch,))
        lengths[0] = length
        if short:  # the tail is padding for every sequence: the scratch side skips it
            lengths = lengths.clamp(max=max(length - 2, 1))
    return x, h0, lengths


@pytest.mark.parametrize(
    "masked, short", [(False, False), (True, False), (True, True)], ids=["full", "masked", "short"]
)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("length, batch", [(1, 1), (5, 3), (9, 4)])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_scratch_matches_fused(
    dtype, cell, nonlinearity, length, batch, layers, bidirectional, masked, short
):
    scratch, fused = _pair(cell, nonlinearity, layers, bidirectional, dtype)
    dirs = 1 + bidirectional
    x, h0, lengths = _inputs(cell, length, batch, layers, dirs, dtype, masked, short)
    dirs_h = (1 + bidirectional) * H
    weights = [torch.randn(length, batch, dirs_h, dtype=dtype)]
    weights += [torch.randn(layers * (1 + bidirectional), batch, H, dtype=dtype) for _ in "hc"]

    out_s, states_s, in_grads_s, p_grads_s = _run(scratch, x, h0, lengths, weights)
    out_f, states_f, in_grads_f, p_grads_f = _run(fused, x, h0, lengths, weights)

    tol = {"atol": TOL[dtype], "rtol": TOL[dtype]}
    assert out_s.shape == out_f.shape == (length, batch, dirs_h)
    torch.testing.assert_close(out_s, out_f, **tol)
    for s, f in zip(states_s, states_f, strict=True):
        torch.testing.assert_close(s, f, **tol)
    for s, f in zip(in_grads_s, in_grads_f, strict=True):  # x, h0 (, c0)
        torch.testing.assert_close(s, f, **tol)
    assert p_grads_s.keys() == p_grads_f.keys()
    for name in p_grads_s:
        torch.testing.assert_close(p_grads_s[name], p_grads_f[name], **tol, msg=name)
    if masked:  # padded steps: zero outputs, and the inputs there have no influence
        pad = torch.arange(length).unsqueeze(1) >= lengths.unsqueeze(0)  # L x B
        assert (out_s[pad] == 0).all()
        assert (in_grads_s[0][pad] == 0).all()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_dict_loads_both_ways_strictly(cell):
    scratch = Recurrent(cell, D, H, 2, True, "scratch")
    fused = Recurrent(cell, D, H, 2, True, "fused")
    assert isinstance(scratch, ScratchRecurrent)
    assert list(scratch.state_dict()) == list(fused.state_dict())  # names, in torch.nn's order
    for src, dst in [(scratch, fused), (fused, scratch)]:
        torch.nn.init.normal_(src.weight_hh_l1_reverse)
        dst.load_state_dict(src.state_dict(), strict=True)
        torch.testing.assert_close(dst.weight_hh_l1_reverse, src.weight_hh_l1_reverse)


def test_init_distribution_matches_torch_nn():
    hidden = 64
    bound = hidden**-0.5
    for p in Recurrent("gru", 16, hidden, 2, True, "scratch").parameters():
        assert p.abs().max() <= bound
        assert abs(p.std().item() - bound / 3**0.5) < 0.15 * bound / 3**0.5


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_mask_equals_running_each_sequence_alone(cell, bidirectional):
    """With lengths, each sequence's outputs and final state are those of its unpadded run."""
    layer = Recurrent(cell, D, H, 2, bidirectional, "scratch").double()
    length, lengths = 9, torch.tensor([7, 2, 5, 1])  # steps 7, 8 are padding for everyone
    x = torch.randn(length, 4, D, dtype=torch.float64)
    outputs, state = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_state = layer(x[:n, b : b + 1])
        torch.testing.assert_close(outputs[:n, b : b + 1], alone_out)
        assert (outputs[n:, b] == 0).all()
        pairs = zip(state, alone_state, strict=True) if cell == "lstm" else [(state, alone_state)]
        for full, alone in pairs:
            torch.testing.assert_close(full[:, b : b + 1], alone)


def test_dropout_between_layers_only_in_training():
    scratch, fused = _pair("lstm", "tanh", 2, False, torch.float64, dropout=0.5)
    x = torch.randn(6, 3, D, dtype=torch.float64)
    scratch.eval(), fused.eval()
    torch.testing.assert_close(scratch(x)[0], fused(x)[0])
    scratch.train()
    assert not torch.allclose(scratch(x)[0], scratch(x)[0])  # a fresh mask each call
    single = Recurrent("gru", D, H, 1, backend="scratch", dropout=0.5).train()
    torch.testing.assert_close(single(x.float())[0], single(x.float())[0])  # no layer after


def test_bad_arguments_are_named():
    layer = Recurrent("lstm", D, H, 1, backend="scratch")
    x = torch.randn(5, 2, D)
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer(x, lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer(x, lengths=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer(x, lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match="h0 must have shape"):
        layer(x, (torch.zeros(1, 3, H), torch.zeros(1, 3, H)))
    with pytest.raises(ValueError, match="tuple"):
        layer(x, torch.zeros(1, 2, H))
    with pytest.raises(ValueError, match="time-major"):
        layer(torch.randn(5, 2, D + 1))
    with pytest.raises(ValueError, match="tanh or relu"):
        Recurrent("rnn", D, H, backend="scratch", nonlinearity="sigmoid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_scratch_matches_fused_on_cuda(cell):
    """cuDNN's kernels against the scratch loop, masked and bidirectional, on the GPU."""
    scratch, fused = _pair(cell, "tanh", 2, True, torch.float64)
    scratch, fused = scratch.cuda(), fused.cuda()
    x, h0, lengths = _inputs(cell, 6, 3, 2, 2, torch.float64, masked=True)
    x = x.detach().cuda().requires_grad_()
    h0 = tuple(h.detach().cuda().requires_grad_() for h in (h0 if cell == "lstm" else (h0,)))
    h0 = h0 if cell == "lstm" else h0[0]
    weights = [torch.randn(6, 3, 2 * H, dtype=torch.float64, device="cuda")]
    weights += [torch.randn(4, 3, H, dtype=torch.float64, device="cuda") for _ in "hc"]
    got, want = _run(scratch, x, h0, lengths, weights), _run(fused, x, h0, lengths, weights)
    torch.testing.assert_close(got[:3], want[:3], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[3], want[3], atol=1e-6, rtol=1e-6)


# --- the hand-written backward through time (rnn_core.bptt) --------------------------------------


def _params(*shapes, dtype=torch.float64):
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in shapes]


def _gradcheck_layer(cell, hidden, masked, reverse, activation="tanh"):
    from rnn_core import bptt, bptt_lstm

    length, batch, inputs = 4, 3, 2
    mask = None
    if masked:
        lengths = torch.tensor([4, 1, 3])
        mask = (torch.arange(length).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x, h0, c0 = _params((length, batch, inputs), (batch, hidden), (batch, hidden))
    weights = _params((gates * hidden, inputs), (gates * hidden, hidden), (gates * hidden,),
                      (gates * hidden,))
    if cell == "lstm":
        def fn(x, h0, c0, *w):
            hs, (h_n, c_n) = bptt_lstm.lstm_layer(x, (h0, c0), *w, mask, reverse)
            return hs, h_n, c_n

        return torch.autograd.gradcheck(fn, (x, h0, c0, *weights))
    if cell == "gru":
        return torch.autograd.gradcheck(
            lambda *a: bptt.gru_layer(*a, mask, reverse), (x, h0, *weights))
    return torch.autograd.gradcheck(
        lambda *a: bptt.rnn_layer(*a, activation, mask, reverse), (x, h0, *weights))


@pytest.mark.parametrize("layout", ["transposed", "rows"])
@pytest.mark.parametrize("masked, reverse", [(False, False), (True, False), (True, True)],
                         ids=["full", "masked", "masked-reverse"])
@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "relu"),
                                              ("rnn", "sigmoid"), ("lstm", "tanh"),
                                              ("gru", "tanh")],
                         ids=["rnn-tanh", "rnn-relu", "rnn-sigmoid", "lstm", "gru"])
def test_hand_written_backward_passes_gradcheck(monkeypatch, cell, activation, masked, reverse,
                                                layout):
    """Every gradient of the kernels (x, h0, c0, both weights, both biases) against finite
    differences in float64, in both of their internal layouts (forced by TRANSPOSED_MAX)."""
    from rnn_core import bptt

    monkeypatch.setattr(bptt, "TRANSPOSED_MAX", 64 if layout == "transposed" else 0)
    assert _gradcheck_layer(cell, 3, masked, reverse, activation)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_large_layers_match_fused_too(cell):
    """Above bptt.TRANSPOSED_MAX the kernels run in torch.nn's batch x units layout: the same
    parity with torch.nn (outputs, states, every gradient), masked, two layers, both ways."""
    from rnn_core import bptt

    hidden = bptt.TRANSPOSED_MAX + 8
    scratch = Recurrent(cell, D, hidden, 2, True, "scratch").double()
    fused = Recurrent(cell, D, hidden, 2, True, "fused").double()
    fused.load_state_dict(scratch.state_dict(), strict=True)
    length, batch = 6, 3
    x = torch.randn(length, batch, D, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    weights = [torch.randn(length, batch, 2 * hidden, dtype=torch.float64)]
    weights += [torch.randn(4, batch, hidden, dtype=torch.float64) for _ in "hc"]
    out_s, state_s = scratch(x, lengths=lengths)
    out_f, state_f = fused(x, lengths=lengths)
    torch.testing.assert_close(out_s, out_f)
    for s, f in zip(state_s if cell == "lstm" else (state_s,),
                    state_f if cell == "lstm" else (state_f,), strict=True):
        torch.testing.assert_close(s, f)
    loss_s = (out_s * weights[0]).sum() + ((state_s[0] if cell == "lstm" else state_s)
                                           * weights[1]).sum()
    loss_f = (out_f * weights[0]).sum() + ((state_f[0] if cell == "lstm" else state_f)
                                           * weights[1]).sum()
    grads_s = torch.autograd.grad(loss_s, [x, *scratch.parameters()])
    grads_f = torch.autograd.grad(loss_f, [x, *fused.parameters()])
    for s, f in zip(grads_s, grads_f, strict=True):
        torch.testing.assert_close(s, f, atol=1e-6, rtol=1e-6)


def test_mikolov_kernel_gradients_equal_its_one_step_loop():
    """MikolovRNN.forward (the sigmoid-RNN kernel) against `one_step` repeated under autograd."""
    from rnn_core.course_models import MikolovRNN

    model = MikolovRNN(7, 5).double()
    chars = torch.randint(0, 7, (6, 3))
    h0 = torch.rand(3, 5, dtype=torch.float64)
    weights = torch.randn(6, 3, 5, dtype=torch.float64)
    fast = torch.autograd.grad((model(chars, h0) * weights).sum(), list(model.parameters()),
                               allow_unused=True)
    h, states = h0, []
    for c in chars:
        h = model.one_step(c, h)
        states.append(h)
    slow = torch.autograd.grad((torch.stack(states) * weights).sum(), list(model.parameters()),
                               allow_unused=True)
    for a, b in zip(fast, slow, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b)
