"""Recurrent cells written by hand: the vanilla RNN, LSTM, GRU and Mikolov's character RNN.

One contract for every cell:

    state = cell.one_step(x, state)     x: B x input_size, state: B x H (LSTM: (h, c))

The sequence models (`RNN`, `MikolovRNN`) add

    states = model.forward(x, h=None)   x: L x B x input_size -> L x B x H (every step's state)
    out    = model.decode(h)            ... x H -> ... x output_size

Each cell splits a step in two so a whole sequence can be run fast: `project_input` (one matmul
over all L x B inputs at once) and `recur` (the per-step recurrence on the projected input). The
recurrences are also exposed as plain functions (`rnn_recur`, `lstm_recur`, `gru_recur`) that
`rnn_core.stacked` calls with torch.nn-named parameters. Parameter shapes, gate order and
initialisation match `torch.nn.RNNCell / LSTMCell / GRUCell`:

    weight_ih  G*H x input_size    weight_hh  G*H x H    bias_ih, bias_hh  G*H
    G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n); all uniform(-1/sqrt(H), 1/sqrt(H)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- recurrences on a projected input: xp = x @ weight_ih.T + bias_ih, B x G*H ---------------


# w_hh_t is weight_hh transposed (H x G*H): callers transpose once per sequence, not per step.


def rnn_recur(xp, h, w_hh_t, b_hh=None, activation=torch.tanh):
    """h' = act(xp + h W_hh^T + b_hh).  xp, h: B x H -> B x H.

    b_hh may be None when the caller has already added it into xp (saves one add per step)."""
    pre = torch.addmm(xp, h, w_hh_t)
    return activation(pre if b_hh is None else pre + b_hh)


def lstm_recur(xp, state, w_hh_t, b_hh=None):
    """One LSTM step, torch.nn's formula and gate order (i, f, g, o).

    xp: B x 4H, state: (h, c) each B x H -> (h', c').  b_hh may be folded into xp (None)."""
    h, c = state
    gates = torch.addmm(xp, h, w_hh_t)  # B x 4H
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))  # f*c + i*g
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_recur(xp, h, w_hh_t, b_hh):
    """One GRU step, torch.nn's formula and gate order (r, z, n).

        r = sigmoid(xp_r + W_hr h + b_hr)        z = sigmoid(xp_z + W_hz h + b_hz)
        n = tanh(xp_n + r * (W_hn h + b_hn))     h' = (1 - z) * n + z * h

    xp: B x 3H, h: B x H -> B x H.  b_hh cannot be folded into xp: b_hn sits inside r * (...)."""
    hidden = h.shape[1]
    gh = torch.addmm(b_hh, h, w_hh_t)  # B x 3H
    # r and z share one add and one sigmoid on their B x 2H slice: fewer autograd nodes per step.
    rz = torch.sigmoid(xp[:, : 2 * hidden] + gh[:, : 2 * hidden])
    r, z = rz.chunk(2, dim=1)
    n = torch.tanh(torch.addcmul(xp[:, 2 * hidden :], r, gh[:, 2 * hidden :]))
    return torch.lerp(n, h, z)  # n + z * (h - n) == (1 - z) * n + z * h


# --- cells --------------------------------------------------------------------------------------


class _Cell(nn.Module):
    """Shared parameters of the torch.nn-shaped cells; subclasses define `recur`."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        rows = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch.nn's init, so both backends start alike
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """... x input_size -> ... x G*H: the input's part of every gate, for any number of steps."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def one_step(self, x, state):
        """x: B x input_size, state: B x H (LSTM: (h, c)) -> the next state, same shapes."""
        return self.recur(self.project_input(x), state)

    def initial_state(self, batch: int, like: torch.Tensor):
        return like.new_zeros(batch, self.hidden_size)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class RNNCell(_Cell):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act in tanh (default), relu, sigmoid."""

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh"):
        super().__init__(input_size, hidden_size)
        self.activation_name = activation
        self.activation = _activation(activation)

    def recur(self, xp, h):
        return rnn_recur(xp, h, self.weight_hh.t(), self.bias_hh, self.activation)


class LSTMCell(_Cell):
    """LSTM cell with torch.nn.LSTMCell's parameters and formula; state is (h, c)."""

    gates = 4

    def recur(self, xp, state):
        return lstm_recur(xp, state, self.weight_hh.t(), self.bias_hh)

    def initial_state(self, batch: int, like: torch.Tensor):
        h = like.new_zeros(batch, self.hidden_size)
        return h, torch.zeros_like(h)


class GRUCell(_Cell):
    """GRU cell with torch.nn.GRUCell's parameters and formula (see `gru_recur`)."""

    gates = 3

    def recur(self, xp, h):
        return gru_recur(xp, h, self.weight_hh.t(), self.bias_hh)


# --- sequence models with the course's one_step / forward / decode contract ---------------------


class RNN(nn.Module):
    """Vanilla RNN over whole sequences, plus a linear decoder.

    one_step(x, h):    x B x input_size, h B x H           -> next state B x H
    forward(x, h=None): x L x B x input_size, h B x H      -> all states L x B x H
                        (h None: zero initial state; the last state is forward(x)[-1])
    decode(h):          ... x H                            -> ... x output_size

    output_size defaults to input_size (predict the next input, as in forecasting).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        activation: str = "tanh",
    ):
        super().__init__()
        self.cell = RNNCell(input_size, hidden_size, activation)
        self.decoder = nn.Linear(hidden_size, input_size if output_size is None else output_size)

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def one_step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.cell.one_step(x, h)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"RNN.forward expects L x B x input_size, got shape {tuple(x.shape)}")
        if h is None:
            h = self.cell.initial_state(x.shape[1], x)
        # All input projections in one matmul (L x B x H, both biases folded in), then split per
        # step with unbind: indexing xp[t] instead would double the backward cost.
        cell = self.cell
        xp = F.linear(x, cell.weight_ih, cell.bias_ih + cell.bias_hh)
        w_hh_t = cell.weight_hh.t()  # transposed once, not per step
        states = []
        for xp_t in xp.unbind(0):
            h = rnn_recur(xp_t, h, w_hh_t, None, cell.activation)
            states.append(h)
        return torch.stack(states)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)


class MikolovRNN(nn.Module):
    """Mikolov et al. (2010) character RNN.

        s_t = sigmoid(W [onehot(c_t); s_{t-1}] + b)       W: H x (V + H)
        y_t = softmax(V s_t)                                (decode returns the logits V s_t + b_V;
                                                             train with cross-entropy on logits)

    W times a one-hot vector is one column of W, so the input part is a column lookup rather than
    a V-wide matmul; the result is the same.

    one_step(c, h):     c B (int64 ids), h B x H     -> next state B x H
    forward(c, h=None): c L x B (int64 ids)          -> all states L x B x H
    decode(h):          ... x H                      -> logits ... x vocab_size
    """

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.weight = nn.Parameter(torch.empty(hidden_size, vocab_size + hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.output = nn.Linear(hidden_size, vocab_size)
        # The paper initialises with small Gaussian noise; std 0.1 keeps sigmoid unsaturated.
        nn.init.normal_(self.weight, std=0.1)
        nn.init.normal_(self.output.weight, std=0.1)
        nn.init.zeros_(self.output.bias)

    def _project_chars(self, chars: torch.Tensor) -> torch.Tensor:
        """... int64 ids -> ... x H: W's one-hot columns plus the bias."""
        if chars.dtype != torch.int64:
            raise TypeError(f"MikolovRNN expects int64 character ids, got {chars.dtype}")
        return F.embedding(chars, self.weight[:, : self.vocab_size].t()) + self.bias

    def _recur(self, xp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.addmm(xp, h, self.weight[:, self.vocab_size :].t()))

    def one_step(self, chars: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._recur(self._project_chars(chars), h)

    def forward(self, chars: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if chars.dim() != 2:
            raise ValueError(f"MikolovRNN.forward expects L x B ids, got {tuple(chars.shape)}")
        if h is None:
            h = self.weight.new_zeros(chars.shape[1], self.hidden_size)
        states = []
        for xp_t in self._project_chars(chars).unbind(0):
            h = self._recur(xp_t, h)
            states.append(h)
        return torch.stack(states)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h)
