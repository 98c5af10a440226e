"""The scratch backend of `rnn_core.layers.Recurrent`: stacked, bidirectional, masked recurrences
of any registered cell (`rnn_core.cells.CELLS`), run by the cell's own `recur` step.

Same contract, parameter names, shapes and initialisation as the fused torch.nn backend (see
`rnn_core.layers`), so a `state_dict` loads either way with strict=True:

    outputs, state = ScratchRecurrent("gru", 64, 128, num_layers=2, bidirectional=True)(
        x, h0=None, lengths=None)
    x L x B x input_size -> outputs L x B x (dirs * H); state (layers * dirs) x B x H, or a tuple
    of those for tuple-state cells (LSTM: (h_n, c_n)).

Nothing here depends on which cell runs: gates, parameter shapes, state structure, bias folding
and the step come from the cell class, so a new cell needs no change in this file.

How it stays fast: per layer and direction, the input's part of every gate is one matmul over all
L x B steps (with bias_hh folded in where the cell allows); the recurrence is then the cell's
`kernel` (the built-in cells: rnn_core.bptt, forward and backward through time by hand, one
autograd node per sequence) or, for a cell without one, `rnn_core.cells.scan` calling the cell's
step once per step.

How masking works: a padded step keeps the previous state (`torch.where` on every state tensor).
Running the reverse direction from position L-1 therefore carries h0 unchanged until each
sequence's own last real step, which is exactly "start the reverse pass at length-1". Outputs at
padded steps are zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.cells import get_cell

PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch.nn's names, in its order


class ScratchRecurrent(nn.Module):
    """Hand-written equivalent of torch.nn.RNN / LSTM / GRU (time-major) with `lengths` masking,
    for every registered cell."""

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
        cell_type = get_cell(cell)  # unknown names fail here, listing the registered cells
        cell_type.check_nonlinearity(nonlinearity)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        self.cell, self.cell_type = cell, cell_type
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.nonlinearity, self.dropout = nonlinearity, float(dropout)
        self.num_directions = 2 if bidirectional else 1
        # Registered in torch.nn's order and under its names: layer, direction, then ih/hh w/b.
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            shapes = cell_type.parameter_shapes(layer_input, hidden_size)
            if tuple(shapes) != PARAMETERS:
                raise TypeError(f"{cell_type.__qualname__}.parameter_shapes must name {PARAMETERS}")
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
        if self.cell_type.nonlinearities is not None:
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + (f", dropout={self.dropout}" if self.dropout else "")

    # --- inputs -------------------------------------------------------------------------------

    def _initial_states(self, h0, batch: int, like: torch.Tensor) -> list:
        """h0: (layers*dirs) x B x H, or a tuple of those (LSTM: (h0, c0)), or None -> one state
        per layer-direction, each B x H (or a tuple of B x H)."""
        cell = self.cell_type
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        parts = cell.state_parts(cell.zero_state(shape, like) if h0 is None else h0, "h0")
        for part in parts:
            if tuple(part.shape) != shape:
                raise ValueError(f"h0 must have shape {shape}, got {tuple(part.shape)}")
        return [cell.join_state(p) for p in zip(*(part.unbind(0) for part in parts), strict=True)]

    def _masks(self, lengths, length: int, batch: int, device):
        """-> (steps to run, L' x B x 1 bool mask or None)."""
        if lengths is None:
            return length, None
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest < 1 or longest > length:
            raise ValueError(f"lengths must lie in [1, {length}], got {shortest}..{longest}")
        if shortest == length:  # nothing padded: skip the masking ops
            return length, None
        # Steps past the longest sequence are padding for everyone: do not run them at all.
        steps = torch.arange(longest, device=device).unsqueeze(1)  # L' x 1
        mask = (steps < lengths.to(device).unsqueeze(0)).unsqueeze(2)  # L' x B x 1
        return longest, mask

    # --- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, h0=None, lengths=None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"x must be L x B x {self.input_size} (time-major), got {tuple(x.shape)}"
            )
        cell = self.cell_type
        length, batch = x.shape[0], x.shape[1]
        states = self._initial_states(h0, batch, x)
        steps, mask = self._masks(lengths, length, batch, x.device)
        step = cell.step(self.nonlinearity)  # options bound once per call, not per step
        kernel = cell.kernel(self.nonlinearity)  # None: scan `step`
        layer_input = x[:steps]
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                params = [getattr(self, name + suffix) for name in PARAMETERS]
                hs, final = cell.run_sequence(
                    step,
                    layer_input,
                    states[layer * self.num_directions + direction],
                    *params,
                    masks=mask,
                    reverse=direction == 1,
                    kernel=kernel,
                )
                outputs.append(hs)  # L' x B x H
                finals.append(cell.state_parts(final))
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        # Padded steps carry the state along; the contract wants zeros there.
        out = layer_input if mask is None else layer_input * mask
        if steps < length:
            out = F.pad(out, (0, 0, 0, 0, 0, length - steps))
        # finals: (layers*dirs) tuples of B x H parts -> each part stacked to (layers*dirs) x B x H
        return out, cell.join_state([torch.stack(p) for p in zip(*finals, strict=True)])
