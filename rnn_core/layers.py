"""Recurrent layers: one contract, two backends.

`Recurrent` is what every model in `rnn_core.models` uses. It mirrors `torch.nn.RNN/LSTM/GRU`
(time-major) so that a `state_dict` saved from one backend loads into the other:

    layer = Recurrent("lstm", input_size=64, hidden_size=128, num_layers=2,
                      bidirectional=True, backend="scratch")   # or backend="fused"
    outputs, state = layer(x, h0=None, lengths=None)

    x        L x B x input_size             (padded steps anywhere after each sequence's end)
    lengths  B (int64, on any device)       None = every sequence has length L
    outputs  L x B x (dirs * hidden_size)   zeros at padded steps when lengths is given
    state    h_n: (layers * dirs) x B x hidden_size, or (h_n, c_n) for LSTM; with lengths,
             each sequence's state at its own last real step (both directions)

`cell` is any name registered in `rnn_core.cells` (`cell_names()`); the fused backend needs the
cell's `fused` torch.nn class (a clear error otherwise). Neither backend switches on the name.

Parameter names follow torch.nn: weight_ih_l{k}[_reverse], weight_hh_l{k}[_reverse], bias_ih_...,
bias_hh_...; gate order LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnn_core.cells import State, cell_names, get_cell
from rnn_core.stacked import ScratchRecurrent

Backend = Literal["scratch", "fused"]
BACKENDS: tuple[str, ...] = ("scratch", "fused")  # what `backend=` accepts (configs validate it)

__all__ = ["BACKENDS", "INITS", "Backend", "FusedRecurrent", "Recurrent", "ScratchRecurrent",
           "State", "init_forget_bias", "init_keras"]


class _PackedMixin:
    """Adds `lengths` masking to a `torch.nn` recurrent module through packed sequences.

    Padded steps cost nothing and each sequence's final state is taken at its own last real step,
    in both directions. The parameters stay torch.nn's own (`weight_ih_l0`, ...), which the
    scratch backend copies, so a `state_dict` moves between backends unchanged.
    """

    def forward(self, x, h0=None, lengths=None):
        if lengths is None:
            return super().forward(x, h0)
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, state = super().forward(packed, h0)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, state


_PACKED: dict[type[nn.Module], type[nn.Module]] = {}


def packed_class(fused: type[nn.Module]) -> type[nn.Module]:
    """`fused` (nn.RNN, nn.LSTM, ...) with `lengths` masking: FusedRNN, FusedLSTM, ... (one class
    per torch.nn class, made on first use so a cell's `fused` needs no wrapper written here)."""
    if fused not in _PACKED:
        name = f"Fused{fused.__name__}"
        _PACKED[fused] = type(name, (_PackedMixin, fused), {"__module__": __name__})
    return _PACKED[fused]


def FusedRecurrent(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """The cell's torch.nn equivalent (cuDNN on GPU) behind the `Recurrent` contract."""
    cell_type = get_cell(cell)
    if cell_type.fused is None:
        with_fused = ", ".join(n for n in cell_names() if get_cell(n).fused is not None)
        raise ValueError(
            f"the {cell} cell has no fused torch.nn equivalent: use backend='scratch' "
            f"(cells with one: {with_fused})"
        )
    cell_type.check_nonlinearity(nonlinearity)
    options = {} if cell_type.nonlinearities is None else {"nonlinearity": nonlinearity}
    return packed_class(cell_type.fused)(
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=dropout,
        **options,
    )


def init_forget_bias(layer: nn.Module, cell: str, hidden_size: int, value: float) -> nn.Module:
    """Set the forget gate's bias at init, in every layer and direction of a `Recurrent` stack:
    bias_ih's forget block = value, bias_hh's = 0 (so the gate starts at sigmoid(value) before
    the inputs: 0.73 for 1.0, Jozefowicz et al. 2015). Both backends name their parameters alike,
    so the same call gives the same weights on either. The cell says where its forget gate is
    (`Cell.forget_gate`); a cell without one is an error."""
    block = get_cell(cell).forget_gate
    if block is None:
        raise ValueError(f"forget_bias: the {cell} cell has no forget gate")
    rows = slice(block * hidden_size, (block + 1) * hidden_size)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.startswith("bias_ih"):
                param[rows] = value
            elif name.startswith("bias_hh"):
                param[rows] = 0.0
    return layer


INITS = ("torch", "keras")


def init_keras(layer: nn.Module, cell: str, hidden_size: int) -> nn.Module:
    """Keras' initialisation of a recurrent layer (its SimpleRNN / LSTM / GRU defaults), in every
    layer and direction: the input kernel glorot-uniform, the recurrent kernel orthogonal (so a
    state keeps its norm from step to step at init), biases zero, and for a cell with a forget
    gate that gate's bias 1 (Keras' unit_forget_bias). Both backends name their parameters
    alike, so the same call gives the same weights on either (from the same RNG state)."""
    forget = get_cell(cell).forget_gate
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)
            else:
                param.zero_()
                if forget is not None and name.startswith("bias_ih"):
                    param[forget * hidden_size : (forget + 1) * hidden_size] = 1.0
    return layer


def Recurrent(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    backend: Backend = "scratch",
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """Build a recurrent layer stack with the given backend (see the module docstring).

    cell: a registered name (`rnn_core.cells.cell_names()`: rnn, lstm, gru and any plug-in)."""
    if backend == "fused":
        return FusedRecurrent(
            cell, input_size, hidden_size, num_layers, bidirectional, nonlinearity, dropout
        )
    if backend == "scratch":
        return ScratchRecurrent(
            cell, input_size, hidden_size, num_layers, bidirectional, nonlinearity, dropout
        )
    raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
