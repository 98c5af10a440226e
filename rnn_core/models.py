"""Three task shapes behind one contract, so one training loop and one `evaluate` serve all.

    model = build_model({"kind": "classifier", "num_classes": 4, "vocab_size": 100})
    output, state = model(batch.x, lengths=batch.lengths, state=None)
    loss = model.loss(output, batch.y, lengths=batch.lengths)          # scalar
    metrics = model.make_metrics()                                     # see rnn_core.metrics
    config_dict(model)     # JSON-serialisable dict with "kind"; build_model(...) rebuilds it

All tensors are time-major. `Batch(x, y, lengths)`:

    kind          x                          y                 output
    classifier    L x B ids | L x B x D      B class ids       B x C logits
    forecaster    L x B x (F + covariates)   L x B x H x F     L x B x H x F (H = horizon)
    char_lm       L x B ids                  L x B ids         L x B x V logits

`state` is the recurrent state: h_n ((layers * dirs) x B x hidden), a tuple with h_n first for
tuple-state cells ((h_n, c_n) for LSTM), or B x hidden for the course's RNN class and the
Mikolov RNN; passing it back in continues the sequences (truncated BPTT). Any cell registered in
`rnn_core.cells` can be used.

The course's own models are modes of the same kinds, so everything downstream (training,
serving, logging) sees a classifier or a forecaster:
    classifier / forecaster, mode="course"   the course's `rnn_core.course_models.RNN` class is the whole
        model: its `forward` (its tanh cell's `one_step` repeated, by the hand-written kernel)
        runs the sequence and its `decode` is the head. One layer, one direction, cell "rnn".
        From the same seed it starts from exactly the weights of the mode="stack" model with
        cell="rnn", num_layers=1 (torch.nn's init order), so the two train side by side.
    char_lm, mode="mikolov"                  `rnn_core.course_models.MikolovRNN`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rnn_core.course_models import RNN, MikolovRNN
from rnn_core.layers import INITS, Recurrent, init_forget_bias, init_keras
from rnn_core.metrics import (
    ClassificationMetrics,
    ForecastMetrics,
    LanguageModelMetrics,
    forecast_mask,
    sequence_mask,
)


class Batch(NamedTuple):
    """One time-major batch: x (L x B ids or L x B x D floats), y (per model), lengths (B)."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Batch(self.x.to(device), self.y.to(device), lengths)


# --- configs -----------------------------------------------------------------------------------


@dataclass
class RecurrentConfig:
    """The recurrent stack shared by every model (see rnn_core.layers.Recurrent)."""

    cell: str = "lstm"  # a registered cell: rnn_core.cells.cell_names() (rnn, lstm, gru, ...)
    hidden_size: int = 128  # units per layer and direction
    num_layers: int = 1  # stacked layers
    backend: str = "fused"  # fused (torch.nn / cuDNN) | scratch (rnn_core.stacked, per-step loop)
    nonlinearity: str = "tanh"  # for cells with a choice (the cell's `nonlinearities`: rnn)
    dropout: float = 0.0  # between stacked layers
    # Forget-gate bias at init (cells with a forget gate: lstm): bias_ih's forget block = value,
    # bias_hh's = 0, in every layer and direction, both backends alike. None = torch.nn's init.
    forget_bias: float | None = None
    # The recurrent stack's initial weights: torch (torch.nn's uniform(+-1/sqrt(H))) | keras
    # (Keras' defaults: glorot-uniform input kernel, orthogonal recurrent kernel, zero biases,
    # forget bias 1: rnn_core.layers.init_keras). forget_bias, when set, is applied after it.
    init: str = "torch"


@dataclass
class ClassifierConfig(RecurrentConfig):
    kind: ClassVar[str] = "classifier"
    num_classes: int = 2  # output logits
    vocab_size: int | None = None  # token ids -> embedding; None = float features
    embedding_dim: int = 64  # used when vocab_size is set
    input_size: int = 1  # feature size D when vocab_size is None
    bidirectional: bool = False  # concat both directions' final states before the head
    padding_idx: int | None = None  # embedding row kept at zero (padding token)
    mode: str = "stack"  # stack (Recurrent -> Linear head) | course (rnn_core.course_models.RNN)


@dataclass
class ForecasterConfig(RecurrentConfig):
    kind: ClassVar[str] = "forecaster"
    num_flows: int = 1  # F predicted series per element (1 = inflow, 2 = in + out)
    num_covariates: int = 0  # input-only columns after the flows (time of day, station, ...)
    horizon: int = 1  # H: every step predicts t+1 .. t+H
    residual: bool = False  # predict the change from x_t (persistence + a learned correction)
    mode: str = "stack"  # stack (Recurrent -> Linear head) | course (rnn_core.course_models.RNN)


@dataclass
class CharLMConfig(RecurrentConfig):
    kind: ClassVar[str] = "char_lm"
    vocab_size: int = 96  # characters
    mode: str = "embedding"  # embedding (Embedding -> stack -> Linear) | mikolov (course_models.MikolovRNN)
    embedding_dim: int = 32  # embedding mode only
    pad_id: int | None = None  # targets equal to this id are ignored by the loss


CONFIGS: dict[str, type] = {c.kind: c for c in (ClassifierConfig, ForecasterConfig, CharLMConfig)}


def config_dict(model_or_config: Any) -> dict[str, Any]:
    """JSON-serialisable config with its `kind`: what checkpoints and the tracker store."""
    config = getattr(model_or_config, "config", model_or_config)
    return {"kind": config.kind, **dataclasses.asdict(config)}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model (fresh weights) from `config_dict(model)`."""
    values = dict(config)
    kind = values.pop("kind", None)
    if kind not in CONFIGS:
        raise ValueError(f"unknown model kind {kind!r}: expected one of {sorted(CONFIGS)}")
    cls = CONFIGS[kind]
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {kind} config fields: {sorted(unknown)}")
    return MODELS[kind](cls(**values))


def _stack(config: RecurrentConfig, input_size: int, bidirectional: bool = False) -> nn.Module:
    layer = Recurrent(
        config.cell,
        input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=bidirectional,
        backend=config.backend,
        nonlinearity=config.nonlinearity,
        dropout=config.dropout,
    )
    if config.init == "keras":
        init_keras(layer, config.cell, config.hidden_size)
    elif config.init != "torch":
        raise ValueError(f"unknown init {config.init!r}: expected one of {', '.join(INITS)}")
    if config.forget_bias is not None:
        init_forget_bias(layer, config.cell, config.hidden_size, config.forget_bias)
    return layer


MODES = ("stack", "course")


def _course_rnn(config, input_size: int, output_size: int) -> nn.Module:
    """The course's RNN class for a mode="course" config (its rules checked here)."""
    if config.mode not in MODES:
        raise ValueError(f"unknown {config.kind} mode {config.mode!r}: expected stack or course")
    problems = [what for what, bad in [
        (f"cell {config.cell!r} (the course's class is a vanilla RNN: rnn)", config.cell != "rnn"),
        (f"num_layers {config.num_layers} (one layer)", config.num_layers != 1),
        ("bidirectional (one direction)", getattr(config, "bidirectional", False)),
        ("forget_bias (no forget gate)", config.forget_bias is not None),
        (f"init {config.init!r} (the course's class: torch.nn's init)",
         config.init != "torch")] if bad]
    if problems:
        raise ValueError(f"{config.kind} mode='course' (rnn_core.course_models.RNN) does not take "
                         + "; ".join(problems))
    return RNN(input_size, config.hidden_size, output_size, activation=config.nonlinearity)


def last_layer_state(state, num_directions: int) -> torch.Tensor:
    """h_n of the top layer, both directions concatenated: B x (dirs * hidden)."""
    h_n = state[0] if isinstance(state, tuple) else state  # (layers * dirs) x B x hidden
    return torch.cat(list(h_n[-num_directions:]), dim=-1)


# --- models ------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """Many-to-one: the final state of each sequence (at its own length) -> class logits B x C."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        if config.vocab_size is not None:
            self.embedding = nn.Embedding(
                config.vocab_size, config.embedding_dim, padding_idx=config.padding_idx
            )
            input_size = config.embedding_dim
        else:
            self.embedding = None
            input_size = config.input_size
        self.num_directions = 2 if config.bidirectional else 1
        if config.mode != "stack":  # the course's class: its cell and its decoder (the head)
            self.rnn = _course_rnn(config, input_size, config.num_classes)
            return
        self.rnn = _stack(config, input_size, config.bidirectional)
        self.head = nn.Linear(self.num_directions * config.hidden_size, config.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L x B ids -> L x B x E, or float features unchanged."""
        return x if self.embedding is None else self.embedding(x)

    def forward(self, x, lengths=None, state=None):
        if self.config.mode == "course":  # RNN.forward: L x B x H states; decode the last one
            states = self.rnn(self.embed(x), state)
            last = states[-1] if lengths is None else _state_at(states, lengths)
            return self.rnn.decode(last), last
        _, state = self.rnn(self.embed(x), state, lengths)
        return self.head(last_layer_state(state, self.num_directions)), state

    def loss(self, output, y, lengths=None):
        return F.cross_entropy(output.float(), y)

    def make_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.config.num_classes)


class Forecaster(nn.Module):
    """Many-to-many: at every step t predict flows t+1 .. t+H. Causal, so one direction only."""

    def __init__(self, config: ForecasterConfig):
        super().__init__()
        self.config = config
        inputs, outputs = config.num_flows + config.num_covariates, config.horizon * config.num_flows
        if config.mode != "stack":  # the course's class: every state decoded into H x F
            self.rnn = _course_rnn(config, inputs, outputs)
            return
        self.rnn = _stack(config, inputs)
        self.head = nn.Linear(config.hidden_size, outputs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.config.num_flows + self.config.num_covariates
        if x.dim() != 3 or x.shape[-1] != expected:
            raise ValueError(f"Forecaster expects L x B x {expected} inputs, got {tuple(x.shape)}")
        return x

    def forward(self, x, lengths=None, state=None):
        if self.config.mode == "course":
            out = self.rnn(self.embed(x), state)  # RNN.forward: L x B x hidden states
            state = out[-1] if lengths is None else _state_at(out, lengths)
            L, B = out.shape[:2]
            pred = self.rnn.decode(out).view(L, B, self.config.horizon, self.config.num_flows)
        else:
            out, state = self.rnn(self.embed(x), state, lengths)  # L x B x hidden
            L, B = out.shape[:2]
            pred = self.head(out).view(L, B, self.config.horizon, self.config.num_flows)
        if self.config.residual:
            pred = pred + x[..., : self.config.num_flows].unsqueeze(2)
        return pred, state  # L x B x H x F

    def loss(self, output, y, lengths=None):
        """MSE over the targets inside each sequence (t + h + 1 < length)."""
        L, B = output.shape[:2]
        mask = forecast_mask(L, self.config.horizon, lengths, batch=B).to(output.device)
        mask = mask.unsqueeze(-1).expand_as(output)
        return F.mse_loss(output.float()[mask], y.float()[mask])

    def make_metrics(self) -> ForecastMetrics:
        return ForecastMetrics(self.config.horizon)


def forecast_targets(x: torch.Tensor, horizon: int, lengths: torch.Tensor | None = None):
    """Targets for a `Forecaster` from its flows x (L x B x F).

    Returns y (L x B x H x F) with y[t, b, h] = x[t + h + 1, b] (zero where that falls outside
    the sequence) and the mask (L x B x H bool) of the valid targets, which the loss recomputes
    from `lengths`.
    """
    L, B = x.shape[:2]
    mask = forecast_mask(L, horizon, lengths, batch=B).to(x.device)
    y = x.new_zeros(L, B, horizon, x.shape[-1])
    for h in range(horizon):
        y[: max(L - h - 1, 0), :, h] = x[h + 1 :]
    y = torch.where(mask.unsqueeze(-1), y, 0.0)
    return y, mask


def time_of_day_features(slots: torch.Tensor, slots_per_day: int) -> torch.Tensor:
    """Covariates for a `Forecaster`: slot ids (any shape, int) -> (..., 2) sin and cos of the
    time of day, so that the last slot of a day sits next to the first."""
    angle = slots.double() * (2 * torch.pi / slots_per_day)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).float()


class CharLanguageModel(nn.Module):
    """Next-character logits L x B x V at every step; the state carries across chunks."""

    def __init__(self, config: CharLMConfig):
        super().__init__()
        self.config = config
        if config.mode == "embedding":
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
            self.rnn = _stack(config, config.embedding_dim)
            self.head = nn.Linear(config.hidden_size, config.vocab_size)
        elif config.mode == "mikolov":
            self.mikolov = MikolovRNN(config.vocab_size, config.hidden_size)
        else:
            raise ValueError(f"unknown CharLM mode {config.mode!r}: expected embedding or mikolov")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def forward(self, x, lengths=None, state=None):
        if self.config.mode == "mikolov":
            # The Mikolov RNN has no length masking: padded steps run, their targets are masked by
            # the loss, and the returned state is each sequence's state at its own last step.
            states = self.mikolov(x, state)  # L x B x hidden
            last = states[-1] if lengths is None else _state_at(states, lengths)
            return self.mikolov.decode(states), last
        out, state = self.rnn(self.embed(x), state, lengths)
        return self.head(out), state

    def loss(self, output, y, lengths=None):
        """Mean cross-entropy (nats) over real steps whose target is not `pad_id`."""
        L, B = y.shape
        mask = sequence_mask(L, lengths, B).to(y.device)
        if self.config.pad_id is not None:
            mask &= y != self.config.pad_id
        return F.cross_entropy(output.float()[mask], y[mask])

    def make_metrics(self) -> LanguageModelMetrics:
        return LanguageModelMetrics(self.config.pad_id)


def _state_at(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """states L x B x H -> B x H, each sequence's state at step lengths[b] - 1."""
    idx = (lengths.to(states.device).long() - 1).view(1, -1, 1).expand(1, -1, states.shape[-1])
    return states.gather(0, idx).squeeze(0)


MODELS: dict[str, type[nn.Module]] = {
    "classifier": SequenceClassifier,
    "forecaster": Forecaster,
    "char_lm": CharLanguageModel,
}
