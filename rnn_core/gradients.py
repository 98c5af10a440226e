"""Gradient diagnostics: how much of the loss's gradient reaches the state k steps back.

`hidden_gradient_norms(model, batch)` takes the loss at the LAST step only and returns, for every
step t, the norm of d loss / d h_t averaged over the batch. Plotted against L - 1 - t (distance
from the loss) it shows vanishing (tanh RNN with small weights) or preserved (LSTM, GRU) gradients.

How: the recurrent stack is called one step at a time (`model.rnn(x[t:t+1], state)`), which keeps
each step's state as a separate tensor in the graph, and `torch.autograd.grad` returns the
gradient for each of them (the same values `retain_grad` would give, without touching the
parameters' `.grad`). This works with both backends: the scratch loop and the fused torch.nn
module (cuDNN is switched off for the call, because cuDNN's RNN backward refuses eval mode).
The Mikolov language model is stepped with its own `one_step`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.models import Batch, last_layer_state


def _last_step_loss(model: nn.Module, state, batch: Batch) -> torch.Tensor:
    """Summed (not averaged) loss of the last step, so each sequence gets its own gradient.

    Computed from the final state's top layer (equal to the last output of a causal stack), so
    that the gradient reaches h_{L-1} through the very tensor whose gradient is measured.
    """
    kind = model.config.kind
    out_last = last_layer_state(state, 1)  # B x hidden
    if kind == "classifier":
        return F.cross_entropy(model.head(out_last), batch.y, reduction="sum")
    if kind == "char_lm":
        return F.cross_entropy(model.head(out_last), batch.y[-1], reduction="sum")
    if kind == "forecaster":
        # The prediction made at the last step (H x F per sequence) against y[-1]; with targets
        # from `forecast_targets` those lie past the window (zeros), which still gives a
        # well-defined gradient; a caller with longer series can pass the real future there.
        c = model.config
        pred = model.head(out_last).view(-1, c.horizon, c.num_flows)
        if c.residual:
            pred = pred + batch.x[-1, :, : c.num_flows].unsqueeze(1)
        return F.mse_loss(pred, batch.y[-1].to(pred.dtype), reduction="sum")
    raise ValueError(f"no last-step loss for model kind {kind!r}")


def _per_step_states(model: nn.Module, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the model one step at a time: (L hidden states, the last-step loss)."""
    config = model.config
    if getattr(config, "mode", None) == "mikolov":
        cell = model.mikolov
        h = cell.weight.new_zeros(batch.x.shape[1], cell.hidden_size)  # B x hidden
        hs = []
        for x_t in batch.x.unbind(0):
            h = cell.one_step(x_t, h)
            hs.append(h)
        loss = F.cross_entropy(cell.decode(h), batch.y[-1], reduction="sum")
        return hs, loss
    if getattr(config, "bidirectional", False):
        raise ValueError(
            "gradient norms need a causal model: the reverse direction sees the future"
        )
    inputs = model.embed(batch.x)  # L x B x input
    state, hs = None, []
    for t in range(inputs.shape[0]):
        _, state = model.rnn(inputs[t : t + 1], state)
        hs.append(state[0] if isinstance(state, tuple) else state)  # layers x B x hidden
    return hs, _last_step_loss(model, state, batch)


def hidden_gradient_norms(
    model: nn.Module, batch: Batch, layer: int = -1, float64: bool = False
) -> torch.Tensor:
    """L floats: mean over the batch of || d loss_{L-1} / d h_t || for t = 0 .. L-1.

    `float64=True` runs a float64 copy of the model: far from the loss a tanh RNN's gradients
    fall below 1e-20, whose squares underflow float32, and the curve would end in exact zeros.

    h_t is the hidden state h of layer `layer` (default the top one; for an LSTM h, not the cell
    c). The loss is the model's loss at the last step only, summed over the batch so each
    sequence's gradient is its own. The batch must be unpadded (lengths None or all L).
    """
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
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            hs, loss = _per_step_states(model, batch)
            grads = torch.autograd.grad(loss, hs)
    finally:
        model.train(was_training)
    norms = []
    for g in grads:
        g = g if g.dim() == 2 else g[layer]  # B x hidden
        norms.append(g.norm(dim=-1).mean())  # in the gradient's own dtype
    return torch.stack(norms).detach().cpu()
