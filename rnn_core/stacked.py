"""The scratch backend of `rnn_core.layers.Recurrent`: stacked, bidirectional, masked recurrences
built from the hand-written steps in `rnn_core.cells`.

Same contract, parameter names, shapes and initialisation as the fused torch.nn backend (see
`rnn_core.layers`), so a `state_dict` loads either way with strict=True:

    outputs, state = ScratchRecurrent("gru", 64, 128, num_layers=2, bidirectional=True)(
        x, h0=None, lengths=None)
    x L x B x input_size -> outputs L x B x (dirs * H); state (layers * dirs) x B x H, or (h, c).

How it stays fast: per layer and direction, the input's part of every gate is one matmul over all
L x B steps (with bias_hh folded in where the formula allows), split per step with `unbind`; the
loop then does one addmm and a few element-wise ops per step.

How masking works: a padded step keeps the previous state (`torch.where`). Running the reverse
direction from position L-1 therefore carries h0 unchanged until each sequence's own last real
step, which is exactly "start the reverse pass at length-1". Outputs at padded steps are zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.cells import gru_recur, lstm_recur, rnn_recur

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def _run_direction(cell, xps, state, w_hh_t, b_hh, activation, masks, reverse):
    """Run one direction of one layer over the projected inputs.

    xps: L tensors B x G*H; state: B x H (LSTM: (h, c)); masks: None or L bool tensors B x 1.
    Returns (L states B x H in time order, final state)."""
    steps = range(len(xps) - 1, -1, -1) if reverse else range(len(xps))
    hs: list[torch.Tensor | None] = [None] * len(xps)
    if cell == "lstm":
        h, c = state
        for t in steps:
            h_new, c_new = lstm_recur(xps[t], (h, c), w_hh_t)
            if masks is None:
                h, c = h_new, c_new
            else:
                h, c = torch.where(masks[t], h_new, h), torch.where(masks[t], c_new, c)
            hs[t] = h
        return hs, (h, c)
    h = state
    for t in steps:
        if cell == "gru":
            h_new = gru_recur(xps[t], h, w_hh_t, b_hh)
        else:
            h_new = rnn_recur(xps[t], h, w_hh_t, None, activation)
        h = h_new if masks is None else torch.where(masks[t], h_new, h)
        hs[t] = h
    return hs, h


class ScratchRecurrent(nn.Module):
    """Hand-written equivalent of torch.nn.RNN / LSTM / GRU (time-major) with `lengths` masking."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
    ):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}: expected rnn, lstm or gru")
        if cell == "rnn" and nonlinearity not in NONLINEARITIES:
            raise ValueError(f"the RNN supports tanh or relu, not {nonlinearity!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.nonlinearity, self.dropout = nonlinearity, float(dropout)
        self.num_directions = 2 if bidirectional else 1
        rows = GATES[cell] * hidden_size
        # Registered in torch.nn's order and under its names: layer, direction, then ih/hh w/b.
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            shapes = {
                "weight_ih": (rows, layer_input),
                "weight_hh": (rows, hidden_size),
                "bias_ih": (rows,),
                "bias_hh": (rows,),
            }
            for suffix in self._suffixes(layer):
                for name, shape in shapes.items():
                    self.register_parameter(name + suffix, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch.nn's init: uniform(-1/sqrt(H), 1/sqrt(H))
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.cell}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.cell == "rnn":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + (f", dropout={self.dropout}" if self.dropout else "")

    # --- inputs -------------------------------------------------------------------------------

    def _initial_states(self, h0, batch: int, like: torch.Tensor) -> list:
        """h0 (layers*dirs) x B x H (LSTM: (h0, c0)) or None -> one B x H state per layer-dir."""
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if h0 is None:
            zeros = like.new_zeros(shape)
            h0 = (zeros, zeros) if self.cell == "lstm" else zeros
        parts = h0 if self.cell == "lstm" else (h0,)
        if self.cell == "lstm" and not (isinstance(h0, tuple | list) and len(h0) == 2):
            raise ValueError("an LSTM's h0 must be a tuple (h0, c0)")
        for part in parts:
            if tuple(part.shape) != shape:
                raise ValueError(f"h0 must have shape {shape}, got {tuple(part.shape)}")
        if self.cell == "lstm":
            return list(zip(h0[0].unbind(0), h0[1].unbind(0), strict=True))
        return list(h0.unbind(0))

    def _masks(self, lengths, length: int, batch: int, device):
        """-> (steps to run, per-step B x 1 bool masks or None, L' x B x 1 output mask or None)."""
        if lengths is None:
            return length, None, None
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest < 1 or longest > length:
            raise ValueError(f"lengths must lie in [1, {length}], got {shortest}..{longest}")
        if shortest == length:  # nothing padded: skip the masking ops
            return length, None, None
        # Steps past the longest sequence are padding for everyone: do not run them at all.
        steps = torch.arange(longest, device=device).unsqueeze(1)  # L' x 1
        mask = (steps < lengths.to(device).unsqueeze(0)).unsqueeze(2)  # L' x B x 1
        return longest, list(mask.unbind(0)), mask

    # --- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, h0=None, lengths=None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"x must be L x B x {self.input_size} (time-major), got {tuple(x.shape)}"
            )
        length, batch = x.shape[0], x.shape[1]
        states = self._initial_states(h0, batch, x)
        steps, masks, out_mask = self._masks(lengths, length, batch, x.device)
        activation = NONLINEARITIES.get(self.nonlinearity, torch.tanh)
        layer_input = x[:steps]
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                w_ih, w_hh, b_ih, b_hh = (
                    getattr(self, f"{name}{suffix}")
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                # b_hh adds straight onto the projected input except inside the GRU's r * (...).
                bias = b_ih if self.cell == "gru" else b_ih + b_hh
                xp = F.linear(layer_input, w_ih, bias)  # L' x B x G*H, one matmul for all steps
                hs, final = _run_direction(
                    self.cell,
                    xp.unbind(0),
                    states[layer * self.num_directions + direction],
                    w_hh.t(),
                    b_hh,
                    activation,
                    masks,
                    reverse=direction == 1,
                )
                outputs.append(torch.stack(hs))  # L' x B x H
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        # Padded steps carry the state along; the contract wants zeros there.
        out = layer_input if out_mask is None else layer_input * out_mask
        if steps < length:
            out = F.pad(out, (0, 0, 0, 0, 0, length - steps))
        if self.cell == "lstm":
            return out, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        return out, torch.stack(finals)
