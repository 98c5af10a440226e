"""Cells as plug-ins: a cell defined here, in the test file alone, registered through the public
registry (`rnn_core.cells.register_cell`), runs through the stacked, bidirectional, masked scratch
layers and the models without any change to rnn_core; unknown names fail listing the registry."""

import pytest
import torch
import torch.nn.functional as F

from rnn_core.cells import CELLS, Cell, cell_names, get_cell, register_cell
from rnn_core.layers import Recurrent
from rnn_core.models import build_model
from rnn_core.stacked import ScratchRecurrent

D, H = 3, 6


class IndRNNCell(Cell):
    """IndRNN (Li et al. 2018): h' = relu(W_ih x + b_ih + u * h + b_hh), with u a vector (H):
    one recurrent weight per unit instead of an H x H matrix. No torch.nn equivalent."""

    @classmethod
    def parameter_shapes(cls, input_size, hidden_size):
        # torch.nn's names and order, only weight_hh changes shape: H instead of H x H.
        return {**super().parameter_shapes(input_size, hidden_size), "weight_hh": (hidden_size,)}

    @staticmethod
    def recur(xp, h, u, b_hh):
        """xp, h: B x H, u: H (weight_hh.t() of a 1-D weight is itself) -> B x H."""
        return torch.relu(torch.addcmul(xp if b_hh is None else xp + b_hh, h, u))


class LeakyPairCell(Cell):
    """A tuple-state cell other than the LSTM: state (h, m), h first, both B x H.

    h' = tanh(xp + h W_hh^T + b_hh + m),  m' = (m + h') / 2  (a running average of h)."""

    state_names = ("h", "m")

    @staticmethod
    def recur(xp, state, w_hh_t, b_hh):
        h, m = state
        pre = torch.addmm(xp, h, w_hh_t) + m
        h = torch.tanh(pre if b_hh is None else pre + b_hh)
        return h, (m + h) / 2


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """Register the test cells for this module only, as `@register_cell(name)` would."""
    register_cell("indrnn")(IndRNNCell)
    register_cell("leakypair")(LeakyPairCell)
    yield
    del CELLS["indrnn"], CELLS["leakypair"]


def _task(batch=48, length=10, seed=1):
    """Sign of the sum of feature 0 over each sequence's real steps; padding is large noise,
    so a model that let padded steps leak through could not fit it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(length, batch, D, generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length
    pad = torch.arange(length).unsqueeze(1) >= lengths.unsqueeze(0)  # L x B
    y = (torch.where(pad, 0.0, x[..., 0]).sum(0) > 0).long()  # B
    x[pad] = 100 * torch.randn(int(pad.sum()), D, generator=g)
    return x, lengths, y


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_plugin_cell_trains_stacked_bidirectional_masked(bidirectional):
    layer = ScratchRecurrent("indrnn", D, H, num_layers=2, bidirectional=bidirectional)
    dirs = 2 if bidirectional else 1
    assert layer.weight_hh_l1.shape == (H,) and layer.weight_ih_l1.shape == (H, dirs * H)
    head = torch.nn.Linear(dirs * H, 2)
    params = [*layer.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.03)
    x, lengths, y = _task()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out, h_n = layer(x, lengths=lengths)  # h_n: (2 * dirs) x B x H
        assert out.shape == (10, 48, dirs * H) and h_n.shape == (2 * dirs, 48, H)
        loss = F.cross_entropy(head(torch.cat(list(h_n[-dirs:]), dim=-1)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # Padded steps: zero outputs, and their (huge) inputs get no gradient.
    x = x.clone().requires_grad_()
    out, _ = layer(x, lengths=lengths)
    out.sum().backward()
    pad = torch.arange(10).unsqueeze(1) >= lengths.unsqueeze(0)
    assert (out[pad] == 0).all() and (x.grad[pad] == 0).all()


@pytest.mark.parametrize("cell", ["indrnn", "leakypair"])
def test_plugin_masking_equals_running_each_sequence_alone(cell):
    layer = ScratchRecurrent(cell, D, H, num_layers=2, bidirectional=True).double()
    lengths = torch.tensor([7, 2, 5, 1])  # steps 7, 8 are padding for everyone
    x = torch.randn(9, 4, D, dtype=torch.float64)
    outputs, state = layer(x, lengths=lengths)
    parts = state if cell == "leakypair" else (state,)
    assert all(p.shape == (4, 4, H) for p in parts)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_state = layer(x[:n, b : b + 1])
        torch.testing.assert_close(outputs[:n, b : b + 1], alone_out)
        alone_parts = alone_state if cell == "leakypair" else (alone_state,)
        for full, alone in zip(parts, alone_parts, strict=True):
            torch.testing.assert_close(full[:, b : b + 1], alone)


@pytest.mark.parametrize("cell", ["indrnn", "leakypair"])
def test_plugin_layer_is_its_cell_stepped_by_hand(cell):
    """One layer, one direction == the registered cell's own one_step, with the same weights."""
    layer = ScratchRecurrent(cell, D, H).double()
    single = get_cell(cell)(D, H).double()
    single.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(5, 2, D, dtype=torch.float64)
    state, hs = single.initial_state(2, x), []
    for x_t in x:
        state = single.one_step(x_t, state)
        hs.append(state[0] if isinstance(state, tuple) else state)
    out, _ = layer(x)
    torch.testing.assert_close(out, torch.stack(hs))
    torch.testing.assert_close(single.sequence(x)[0], out)


def test_plugin_cell_through_models_and_its_missing_fused_backend():
    model = build_model(
        {
            "kind": "classifier",
            "num_classes": 2,
            "input_size": D,
            "hidden_size": H,
            "cell": "leakypair",
            "backend": "scratch",
            "num_layers": 2,
            "bidirectional": True,
        }
    )
    logits, (h_n, m_n) = model(torch.randn(4, 3, D), lengths=torch.tensor([4, 2, 3]))
    assert logits.shape == (3, 2) and h_n.shape == m_n.shape == (4, 3, H)
    with pytest.raises(ValueError, match="indrnn cell has no fused torch.nn equivalent"):
        Recurrent("indrnn", D, H, backend="fused")
    with pytest.raises(ValueError, match=r"must be a tuple \(h, m\)"):
        ScratchRecurrent("leakypair", D, H)(torch.randn(2, 1, D), torch.zeros(1, 1, H))


def test_registry_lists_and_guards_names():
    assert {"rnn", "lstm", "gru", "indrnn"} <= set(cell_names())
    assert cell_names() == sorted(cell_names())
    assert get_cell("indrnn") is IndRNNCell and IndRNNCell.name == "indrnn"
    with pytest.raises(ValueError, match="already registered"):
        register_cell("lstm")(IndRNNCell)
    with pytest.raises(TypeError, match="subclass"):
        register_cell("notacell")(torch.nn.Linear)


@pytest.mark.parametrize(
    "make",
    [
        lambda: get_cell("mamba"),
        lambda: Recurrent("mamba", D, H, backend="scratch"),
        lambda: Recurrent("mamba", D, H, backend="fused"),
        lambda: build_model({"kind": "char_lm", "vocab_size": 5, "cell": "mamba"}),
    ],
    ids=["get_cell", "scratch", "fused", "build_model"],
)
def test_unknown_cell_lists_the_registered_cells(make):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert "unknown cell 'mamba'" in message
    assert f"registered cells are {', '.join(cell_names())}" in message
    assert all(name in message for name in ("gru", "lstm", "rnn", "indrnn"))
