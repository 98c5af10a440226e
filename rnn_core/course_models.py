"""The course's sequence models, with its one_step / forward / decode contract.

    RNN(input_size, hidden_size, output_size=None, activation="tanh")   the course's RNN class
    MikolovRNN(vocab_size, hidden_size)                                  Mikolov et al. (2010)

Both run their recurrence by the hand-written kernels (`rnn_core.bptt`): `RNN` through the
registered "rnn" cell (rnn_core.cells.RNNCell), `MikolovRNN` with its own joint weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core import bptt
from rnn_core.cells import RNNCell


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
        # The registered cell's sequence loop: all input projections in one matmul (L x B x H,
        # both biases folded in), then the recurrence by the cell's hand-written kernel (its
        # forward is `one_step` repeated; see `Cell.run_sequence` and rnn_core.bptt).
        states, _ = self.cell.sequence(x, h)  # h None: zero initial state
        return states  # L x B x H

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
        # `one_step` repeated, by the hand-written sigmoid-RNN kernel (rnn_core.bptt).
        w_hh = self.weight[:, self.vocab_size :]
        states, _ = bptt.rnn_sequence(self._project_chars(chars), h, w_hh, "sigmoid")
        return states

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h)
