"""Recurrent cells written by hand, and the registry that makes a cell a plug-in.

A cell is ONE class, registered under a name; everything that runs recurrences looks it up
there (the course's `rnn_core.course_models.RNN`, `rnn_core.stacked.ScratchRecurrent`, `rnn_core.layers.Recurrent`'s
fused backend), so adding a cell touches no other file:

    @register_cell("mycell")
    class MyCell(Cell):
        gates = 1                     # G: weight_ih is G*H x input_size, weight_hh G*H x H
        state_names = ("h",)          # ("h", "c") for an LSTM-like (h, c) tuple state; h first
        folds_hh_bias = True          # b_hh only ever adds onto the projected input
        fused = None                  # or its torch.nn equivalent (nn.LSTM, ...)

        @staticmethod
        def recur(xp, state, w_hh_t, b_hh):   # xp B x G*H, state B x H -> next state
            ...

    get_cell("mycell"), cell_names()  # lookup (a clear error for unknown names), listing

Optional hooks: `parameter_shapes` (a cell whose parameters are not torch.nn's G*H blocks),
`nonlinearities` + `step` (a cell with a choice of nonlinearity, like the vanilla RNN), `kernel`
(the whole sequence forward and backward by hand: the built-in cells' `rnn_core.bptt` and
`rnn_core.bptt_lstm`).

Per step, a cell's `one_step(x, state)` is `recur(project_input(x), state, W_hh^T, b_hh)`; over
a sequence, `run_sequence` projects all L x B inputs in one matmul, then runs the cell's `kernel`
when it has one (one autograd node for the sequence, same numbers) or else `scan`, which calls
`recur` per step under autograd. Built-in cells match `torch.nn.RNNCell / LSTMCell / GRUCell` (names, shapes, gate order,
init), so state_dicts move between them with strict=True:

    weight_ih  G*H x input_size    weight_hh  G*H x H    bias_ih, bias_hh  G*H
    G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n); all uniform(-1/sqrt(H), 1/sqrt(H)).

The course's sequence models over these cells (`RNN`, and `MikolovRNN` with its one joint
weight over [onehot; state], outside the registry) are `rnn_core.course_models`.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import repeat
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core import bptt, bptt_lstm

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}

State = torch.Tensor | tuple[torch.Tensor, ...]  # B x H, or a tuple of B x H (LSTM: (h, c))


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- the registry: the only place a cell's name is turned into code -----------------------------

CELLS: dict[str, type[Cell]] = {}


def register_cell(name: str):
    """Class decorator: make `cls` available as `Recurrent(name, ...)` / `get_cell(name)`."""

    def register(cls: type[Cell]) -> type[Cell]:
        if not (isinstance(cls, type) and issubclass(cls, Cell)):
            raise TypeError(f"register_cell({name!r}) needs a subclass of rnn_core.cells.Cell")
        if cls.recur is Cell.recur and cls.step.__func__ is Cell.step.__func__:
            raise TypeError(f"{cls.__qualname__} defines no step: override `recur` (or `step`)")
        if CELLS.get(name, cls) is not cls:
            raise ValueError(f"cell {name!r} is already registered ({CELLS[name].__qualname__})")
        cls.name = name
        CELLS[name] = cls
        return cls

    return register


def cell_names() -> list[str]:
    """Registered cell names, sorted: what `cell=` accepts everywhere."""
    return sorted(CELLS)


def get_cell(name: str) -> type[Cell]:
    """The cell class registered as `name`; unknown names fail listing the registered ones."""
    cls = CELLS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown cell {name!r}: registered cells are {', '.join(cell_names())}")
    return cls


# --- the sequence loop shared by every cell and layer -------------------------------------------


def scan(step, xps, state, w_hh_t, b_hh, masks=None, reverse=False):
    """Run `step` over projected inputs, one direction.

    step   recur(xp, state, w_hh_t, b_hh) -> state (a cell's `step()`)
    xps    L tensors B x G*H (one L x B x G*H projection, unbound: indexing would double backward)
    state  B x H, or a tuple of B x H tensors with h first (LSTM: (h, c))
    masks  None, or L bool tensors B x 1: where False (padding) every state tensor keeps its value
    -> (L states h_t, each B x H, in time order; the final state)

    The tuple / mask choice is made once here, so each step costs one call to `step` (plus one
    `torch.where` per state tensor when masked) and no Python branching on the cell.
    """
    steps = range(len(xps) - 1, -1, -1) if reverse else range(len(xps))
    hs: list[torch.Tensor | None] = [None] * len(xps)
    if not isinstance(state, torch.Tensor):
        state = tuple(state)  # (h, c) given as a list: the loop below relies on a tuple
        if masks is None:
            for t in steps:
                state = step(xps[t], state, w_hh_t, b_hh)
                hs[t] = state[0]
        else:
            for t in steps:
                new = step(xps[t], state, w_hh_t, b_hh)
                state = tuple(map(torch.where, repeat(masks[t]), new, state))
                hs[t] = state[0]
        return hs, state
    if masks is None:
        for t in steps:
            state = step(xps[t], state, w_hh_t, b_hh)
            hs[t] = state
    else:
        for t in steps:
            state = torch.where(masks[t], step(xps[t], state, w_hh_t, b_hh), state)
            hs[t] = state
    return hs, state


# --- recurrences on a projected input: xp = x @ weight_ih.T + bias_ih, B x G*H ---------------
# w_hh_t is weight_hh transposed (H x G*H): callers transpose once per sequence, not per step.
# b_hh is None when the caller has already added it into xp (saves one add per step).


def rnn_recur(xp, h, w_hh_t, b_hh=None, activation=torch.tanh):
    """h' = act(xp + h W_hh^T + b_hh).  xp, h: B x H -> B x H."""
    pre = torch.addmm(xp, h, w_hh_t)
    return activation(pre if b_hh is None else pre + b_hh)


def lstm_recur(xp, state, w_hh_t, b_hh=None):
    """One LSTM step, torch.nn's formula and gate order (i, f, g, o).

    xp: B x 4H, state: (h, c) each B x H -> (h', c')."""
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


# --- the cell contract --------------------------------------------------------------------------


class Cell(nn.Module):
    """Base of every registered cell: the contract as class attributes and class methods (what
    the stacked layers use, without an instance), plus one step's parameters (what `one_step`
    and the course's `RNN` use)."""

    name: ClassVar[str] = ""  # set by register_cell
    gates: ClassVar[int] = 1  # G
    state_names: ClassVar[tuple[str, ...]] = ("h",)  # one name: a plain tensor state
    folds_hh_bias: ClassVar[bool] = True  # False: recur always receives b_hh (GRU)
    fused: ClassVar[type[nn.Module] | None] = None  # torch.nn equivalent, same state_dict
    # Values of `nonlinearity` the stacked layers accept (both backends alike); None: the formula
    # has no choice and the argument is ignored. Passed to `fused` as its `nonlinearity=`.
    nonlinearities: ClassVar[tuple[str, ...] | None] = None
    # Which G*H block of bias_ih / bias_hh is the forget gate (`forget_bias`), None: no such gate.
    forget_gate: ClassVar[int | None] = None

    @staticmethod
    def recur(xp, state, w_hh_t, b_hh):
        """One step: xp B x G*H (input part of every gate), state -> next state, same structure.
        w_hh_t is weight_hh.t() (a 1-D weight_hh stays as is); b_hh None when folded into xp."""
        raise NotImplementedError

    @classmethod
    def step(cls, nonlinearity: str = "tanh"):
        """The per-step function handed to `scan`, options bound (once per sequence, not step)."""
        return cls.recur

    @classmethod
    def kernel(cls, nonlinearity: str = "tanh"):
        """Optional: one layer-direction with a hand-written backward through time,

            kernel(x L x B x D, state, weight_ih, weight_hh, bias_ih, bias_hh,
                   mask L x B x 1 | None, reverse) -> (states L x B x H, final state)

        computing exactly what `run_sequence` computes by scanning `step` (the built-in cells:
        rnn_core.bptt). None (the default): `run_sequence` scans `step` under autograd."""
        return

    @classmethod
    def check_nonlinearity(cls, nonlinearity: str) -> None:
        if cls.nonlinearities is not None and nonlinearity not in cls.nonlinearities:
            choices = " or ".join(cls.nonlinearities)
            raise ValueError(f"the {cls.name} cell supports {choices}, not {nonlinearity!r}")

    @classmethod
    def parameter_shapes(cls, input_size: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """torch.nn's names, order and shapes; a cell may change the shapes, not the names."""
        rows = cls.gates * hidden_size
        return {
            "weight_ih": (rows, input_size),
            "weight_hh": (rows, hidden_size),
            "bias_ih": (rows,),
            "bias_hh": (rows,),
        }

    # --- state helpers: a state is one tensor, or a tuple of len(state_names) tensors ---------

    @classmethod
    def zero_state(cls, shape: tuple[int, ...], like: torch.Tensor) -> State:
        zeros = like.new_zeros(shape)
        return zeros if len(cls.state_names) == 1 else (zeros,) * len(cls.state_names)

    @classmethod
    def state_parts(cls, state: State, what: str = "state") -> tuple[torch.Tensor, ...]:
        """state -> tuple of its tensors, checking its structure (not shapes)."""
        names = cls.state_names
        if len(names) == 1:
            if not isinstance(state, torch.Tensor):
                raise ValueError(f"the {cls.name} cell's {what} must be one tensor ({names[0]})")
            return (state,)
        if not (isinstance(state, tuple | list) and len(state) == len(names)):
            raise ValueError(f"the {cls.name} cell's {what} must be a tuple ({', '.join(names)})")
        return tuple(state)

    @classmethod
    def join_state(cls, parts) -> State:
        """Inverse of `state_parts`."""
        return parts[0] if len(cls.state_names) == 1 else tuple(parts)

    # --- whole sequences ------------------------------------------------------------------------

    @classmethod
    def run_sequence(
        cls, step, x, state, weight_ih, weight_hh, bias_ih, bias_hh, masks=None, reverse=False,
        kernel=None,
    ):
        """x L x B x input_size -> (states h_t L x B x H, final state): the input's part of every
        gate in one matmul over all L x B steps (b_hh folded in where allowed), then `kernel`
        (a cell's `kernel(...)`, when given) or `scan` over `step`.

        masks: None, or L x B x 1 bool (a list of L B x 1 masks is accepted too)."""
        if masks is not None and not isinstance(masks, torch.Tensor):
            masks = torch.stack(list(masks))
        if kernel is not None:
            return kernel(x, state, weight_ih, weight_hh, bias_ih, bias_hh, masks, reverse)
        if cls.folds_hh_bias:
            xp, b_hh = F.linear(x, weight_ih, bias_ih + bias_hh), None
        else:
            xp, b_hh = F.linear(x, weight_ih, bias_ih), bias_hh
        steps = None if masks is None else masks.unbind(0)
        hs, final = scan(step, xp.unbind(0), state, weight_hh.t(), b_hh, steps, reverse)
        return torch.stack(hs), final

    # --- one cell's parameters ------------------------------------------------------------------

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        for name, shape in self.parameter_shapes(input_size, hidden_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self._step = self.step(nonlinearity)
        self._kernel = self.kernel(nonlinearity)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch.nn's init, so both backends start alike
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """... x input_size -> ... x G*H: the input's part of every gate, for any number of steps."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def one_step(self, x: torch.Tensor, state: State) -> State:
        """x: B x input_size, state: B x H (LSTM: (h, c)) -> the next state, same shapes."""
        return self._step(self.project_input(x), state, self.weight_hh.t(), self.bias_hh)

    def sequence(self, x: torch.Tensor, state: State | None = None):
        """x: L x B x input_size -> (states h_t L x B x H, final state); zero initial state if
        None. Same numbers as `one_step` repeated (the cell's kernel when it has one)."""
        if state is None:
            state = self.initial_state(x.shape[1], x)
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return self.run_sequence(self._step, x, state, *params, kernel=self._kernel)

    def initial_state(self, batch: int, like: torch.Tensor) -> State:
        return self.zero_state((batch, self.hidden_size), like)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


# --- the built-in cells -------------------------------------------------------------------------


@register_cell("rnn")
class RNNCell(Cell):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act in tanh (default), relu, sigmoid (the
    stacked layers: tanh or relu, as torch.nn.RNN)."""

    fused = nn.RNN
    nonlinearities = ("tanh", "relu")
    recur = staticmethod(rnn_recur)

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh"):
        super().__init__(input_size, hidden_size, activation)
        self.activation_name = activation
        self.activation = _activation(activation)

    @classmethod
    def step(cls, nonlinearity: str = "tanh"):
        return partial(rnn_recur, activation=_activation(nonlinearity))

    @classmethod
    def kernel(cls, nonlinearity: str = "tanh"):
        _activation(nonlinearity)  # unknown names fail here, as in `step`

        def rnn(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse):
            return bptt.rnn_layer(x, state, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
                                  mask, reverse)

        return rnn


@register_cell("lstm")
class LSTMCell(Cell):
    """LSTM cell with torch.nn.LSTMCell's parameters and formula; state is (h, c)."""

    gates = 4
    state_names = ("h", "c")
    fused = nn.LSTM
    forget_gate = 1  # i, f, g, o
    recur = staticmethod(lstm_recur)

    @classmethod
    def kernel(cls, nonlinearity: str = "tanh"):
        return _lstm_kernel


@register_cell("gru")
class GRUCell(Cell):
    """GRU cell with torch.nn.GRUCell's parameters and formula (see `gru_recur`)."""

    gates = 3
    folds_hh_bias = False
    fused = nn.GRU
    recur = staticmethod(gru_recur)

    @classmethod
    def kernel(cls, nonlinearity: str = "tanh"):
        return _gru_kernel


def _lstm_kernel(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse):
    return bptt_lstm.lstm_layer(x, tuple(state), weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse)


def _gru_kernel(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse):
    return bptt.gru_layer(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse)
