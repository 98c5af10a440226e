"""Gradient diagnostics: how much of the loss's gradient reaches the state k steps back.

`hidden_gradient_norms(model, batch)` takes the loss at the LAST step only and returns, for every
step t, the norm of d loss / d h_t averaged over the batch. Plotted against L - 1 - t (distance
from the loss) it shows vanishing (tanh RNN with small weights) or preserved (LSTM, GRU) gradients.
`cell_state_gradient_norms` does the same for an LSTM's cell state c_t, the quantity the LSTM
argument is about: d c_t / d c_{t-1} = f_t (no weight matrix, no squashing), so along the cell
state the gradient shrinks only by the forget gates. `state_gradient_norms` returns both at once.

How: the model's recurrence is stepped by hand, one step at a time, with its cell's own step
function (`rnn_core.cells`, torch.nn's formulas) on the stack's own parameters - both backends
name them alike (weight_ih_l0, ...), so a fused model is measured exactly as a scratch one.
Each step's state tensors are the very tensors the next step, the next layer and (top layer,
last step) the loss read, so `torch.autograd.grad` returns the TOTAL derivative d loss / d h_t
and d loss / d c_t (for c_t: through h_t = o_t tanh(c_t) and through c_{t+1}), without touching
the parameters' `.grad`. The course's RNN class and the Mikolov RNN are stepped with their own
`one_step`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.cells import get_cell
from rnn_core.models import Batch
from rnn_core.stacked import PARAMETERS


def _head_loss(model: nn.Module, top: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Summed (not averaged) loss of the last step from the top layer's last state h (B x H), so
    each sequence gets its own gradient."""
    config = model.config
    kind, course = config.kind, getattr(config, "mode", "stack") == "course"
    head = model.rnn.decode if course else model.head
    if kind == "classifier":
        return F.cross_entropy(head(top), batch.y, reduction="sum")
    if kind == "char_lm":
        return F.cross_entropy(head(top), batch.y[-1], reduction="sum")
    if kind == "forecaster":
        # The prediction made at the last step (H x F per sequence) against y[-1]; with targets
        # from `forecast_targets` those lie past the window (zeros), which still gives a
        # well-defined gradient; a caller with longer series can pass the real future there.
        pred = head(top).view(-1, config.horizon, config.num_flows)
        if config.residual:
            pred = pred + batch.x[-1, :, : config.num_flows].unsqueeze(1)
        return F.mse_loss(pred, batch.y[-1].to(pred.dtype), reduction="sum")
    raise ValueError(f"no last-step loss for model kind {kind!r}")


def _stepped(model: nn.Module, batch: Batch, layer: int):
    """Run the model one step at a time: ({"h": L tensors B x H, "c": ...}, last-step loss)."""
    config = model.config
    mode = getattr(config, "mode", "stack")
    if mode in ("mikolov", "course"):  # one layer, stepped by its class's own one_step
        cell = model.mikolov if mode == "mikolov" else model.rnn
        inputs = batch.x if mode == "mikolov" else model.embed(batch.x)
        h = inputs.new_zeros(batch.x.shape[1], cell.hidden_size, dtype=_dtype(model))
        hs = []
        for x_t in inputs.unbind(0):
            h = cell.one_step(x_t, h)
            hs.append(h)
        if mode == "mikolov":
            return {"h": hs}, F.cross_entropy(cell.decode(h), batch.y[-1], reduction="sum")
        return {"h": hs}, _head_loss(model, h, batch)
    if getattr(config, "bidirectional", False):
        raise ValueError(
            "gradient norms need a causal model: the reverse direction sees the future"
        )
    cell = get_cell(config.cell)
    step = cell.step(config.nonlinearity)
    layer_input = model.embed(batch.x)  # L x B x input
    batch_size, layers = layer_input.shape[1], config.num_layers
    measured = layer % layers
    kept: dict[str, list[torch.Tensor]] = {}
    for k in range(layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(model.rnn, f"{name}_l{k}") for name in PARAMETERS)
        if cell.folds_hh_bias:
            xp, b = F.linear(layer_input, w_ih, b_ih + b_hh), None
        else:
            xp, b = F.linear(layer_input, w_ih, b_ih), b_hh
        state = cell.zero_state((batch_size, config.hidden_size), layer_input)
        states, w_t = [], w_hh.t()
        for xp_t in xp.unbind(0):
            state = step(xp_t, state, w_t, b)
            states.append(cell.state_parts(state))
        if k == measured:
            kept = {name: [s[i] for s in states] for i, name in enumerate(cell.state_names)}
        layer_input = torch.stack([s[0] for s in states])  # this layer's h_t: the next's input
    return kept, _head_loss(model, layer_input[-1], batch)


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def state_gradient_norms(
    model: nn.Module, batch: Batch, layer: int = -1, float64: bool = False
) -> dict[str, torch.Tensor]:
    """{state name: L floats}: mean over the batch of || d loss_{L-1} / d s_t ||, t = 0 .. L-1,
    for each state tensor of the cell ("h"; "h" and "c" for an LSTM), of layer `layer` (default
    the top one). See `hidden_gradient_norms` for the loss, the batch and `float64`."""
    L = batch.x.shape[0]
    if batch.lengths is not None and bool((batch.lengths != L).any()):
        raise ValueError("hidden_gradient_norms needs sequences of equal length (no padding)")
    device = next(model.parameters()).device
    batch = batch.to(device)
    if float64:
        model = copy.deepcopy(model).double()
        as64 = lambda t: t.double() if t.is_floating_point() else t
        batch = Batch(as64(batch.x), as64(batch.y), batch.lengths)
    was_training = model.training
    model.eval()  # no dropout: the curve should not depend on a random mask
    try:
        with torch.enable_grad():
            states, loss = _stepped(model, batch, layer)
            names = list(states)
            grads = torch.autograd.grad(loss, [s for n in names for s in states[n]])
    finally:
        model.train(was_training)
    out = {}
    for i, name in enumerate(names):
        mine = grads[i * L : (i + 1) * L]
        out[name] = torch.stack([g.norm(dim=-1).mean() for g in mine]).detach().cpu()
    return out


def hidden_gradient_norms(
    model: nn.Module, batch: Batch, layer: int = -1, float64: bool = False
) -> torch.Tensor:
    """L floats: mean over the batch of || d loss_{L-1} / d h_t || for t = 0 .. L-1.

    `float64=True` runs a float64 copy of the model: far from the loss a tanh RNN's gradients
    fall below 1e-20, whose squares underflow float32, and the curve would end in exact zeros.

    h_t is the hidden state h of layer `layer` (default the top one; for an LSTM h, not the cell
    c: see `cell_state_gradient_norms`). The loss is the model's loss at the last step only,
    summed over the batch so each sequence's gradient is its own. The batch must be unpadded
    (lengths None or all L).
    """
    return state_gradient_norms(model, batch, layer, float64)["h"]


def cell_state_gradient_norms(
    model: nn.Module, batch: Batch, layer: int = -1, float64: bool = False
) -> torch.Tensor:
    """L floats: mean over the batch of || d loss_{L-1} / d c_t || (an LSTM's cell state; the
    total derivative, through h_t and through c_{t+1}). Cells without one raise ValueError."""
    norms = state_gradient_norms(model, batch, layer, float64)
    if "c" not in norms:
        raise ValueError("cell_state_gradient_norms needs a cell with a cell state c (lstm)")
    return norms["c"]
