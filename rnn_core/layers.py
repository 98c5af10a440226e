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

Parameter names follow torch.nn: weight_ih_l{k}[_reverse], weight_hh_l{k}[_reverse], bias_ih_...,
bias_hh_...; gate order LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CellKind = Literal["rnn", "lstm", "gru"]
Backend = Literal["scratch", "fused"]

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


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


class FusedRNN(_PackedMixin, nn.RNN):
    pass


class FusedLSTM(_PackedMixin, nn.LSTM):
    pass


class FusedGRU(_PackedMixin, nn.GRU):
    pass


def FusedRecurrent(
    cell: CellKind,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """`torch.nn.RNN/LSTM/GRU` (cuDNN on GPU) behind the `Recurrent` contract."""
    common = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "dropout": dropout,
    }
    if cell == "rnn":
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"the fused RNN supports tanh or relu, not {nonlinearity!r}")
        return FusedRNN(nonlinearity=nonlinearity, **common)
    if cell == "lstm":
        return FusedLSTM(**common)
    if cell == "gru":
        return FusedGRU(**common)
    raise ValueError(f"unknown cell {cell!r}: expected rnn, lstm or gru")


def Recurrent(
    cell: CellKind,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    backend: Backend = "scratch",
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
) -> nn.Module:
    """Build a recurrent layer stack with the given backend (see the module docstring)."""
    if backend == "fused":
        return FusedRecurrent(
            cell, input_size, hidden_size, num_layers, bidirectional, nonlinearity, dropout
        )
    if backend == "scratch":
        from rnn_core.stacked import ScratchRecurrent

        return ScratchRecurrent(
            cell, input_size, hidden_size, num_layers, bidirectional, nonlinearity, dropout
        )
    raise ValueError(f"unknown backend {backend!r}: expected 'scratch' or 'fused'")
