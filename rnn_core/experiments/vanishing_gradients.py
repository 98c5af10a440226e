"""The vanishing-gradient study: how much of the loss's gradient reaches the state d steps back.

For a tanh RNN, an LSTM and a GRU (character language models over an embedding, same model
block), on real text windows of `seq_len` characters from the corpus' TEST split, we take the
loss at the last step only and measure ||d loss / d h_{L-1-d}|| for every distance d, averaged
over `measure_batch` windows (rnn_core.gradients.hidden_gradient_norms, in float64 so tiny norms
do not underflow; with num_layers > 1, of the top layer). Each curve is divided by its value at
d = 0, so the models share one scale. Two stages, because the picture changes with training:
    init     the freshly initialised model (torch.nn's uniform(+-1/sqrt(H)) weights): rebuilt in
             `score` from the seed, the very weights the runner built before training,
    trained  the same model after brief truncated-BPTT training on the training part.

The LSTM's argument is about its cell state: d c_t / d c_{t-1} = f_t, no weight matrix and no
squashing on that path, so for LSTM models the study also measures ||d loss / d c_{L-1-d}||
(rnn_core.gradients.cell_state_gradient_norms; the total derivative, through h and through
c_{t+1}). "lstm-fb1" is the LSTM with its forget-gate bias set to 1.0 at init (forget_bias):
f starts near sigmoid(1) = 0.73 instead of 0.5, and the cell-state gradient reaches further
back from the very first step. Why the tanh RNN loses it: tanh' = 1 - tanh^2 <= 1, and ~0 once
|x| > 3, and each step multiplies by W_hh^T diag(tanh'); `summarise` draws tanh and tanh'.

Each model is ONE configuration ("rnn", "lstm", "gru", "lstm-fb1"; `Config.models`; a backend
twin "<model>-scratch" / "-fused" when `backend_twins` lists it), trained by the runner
like any other: the brief training is validated after every epoch on the first `val_chars` of
the validation tail (the last `val_fraction` of the training text, text_streams.load_corpus_ids).
Both measurements and the test cross-entropy come once, at the end, in `score`.

Metrics of a configuration (no prefix = after training, "init_" = at initialisation):
    grad_norm_ratio_d50    norm at distance 50 / norm at distance 0
    vanish_distance        first distance where the ratio drops below Config.threshold (1e-3);
                           seq_len when it never does inside the window (censored)
    cell_grad_norm_ratio_d50, cell_vanish_distance   the same for the cell state c (LSTMs)
    test_nats_per_char     the trained model on the first `test_chars` test characters (shows
                           that the brief training did learn something)
    val_nats, ...          (the runner) the chosen epoch's validation figures
HEADLINE: grad_norm_ratio_d50 (goal max). The study is a diagnostic (`diagnostic = True`): the
ratio describes the model, it does not rank it, and never moves a champion.

Report per configuration: grad_norm_vs_distance.png (init and trained; c too for LSTMs) and
grad_norms.csv (the raw norms by distance: distance,init,trained[,c_init,c_trained]).
`summarise` draws every model together (grad_norm_vs_distance[_init|_trained].png, as the
study's figure; cell_grad_norm_vs_distance.png, the LSTMs' c), tanh_and_derivative.png (the
lesson's figure), and writes the combined grad_norms.csv (distance,<model>_init,
<model>_trained,..., then <model>_c_init,<model>_c_trained for the LSTMs), from the
configurations' CSVs; backend twins are left out of the cross-model figures.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnn_core import plots
from rnn_core.checkpoints import seed_everything
from rnn_core.config import knob
from rnn_core.experiments.pairs import split_twin, with_twins
from rnn_core.experiments.protocol import Batches, Experiment, Report, Splits
from rnn_core.experiments.text_streams import (
    CORPORA,
    CharModel,
    as_streams,
    char_lm,
    chunk_batches,
    epoch_batch_source,
    load_corpus_ids,
)
from rnn_core.gradients import hidden_gradient_norms, state_gradient_norms
from rnn_core.models import Batch
from rnn_core.results import Headline
from rnn_core.training import TrainConfig, evaluate

DISTANCE = 50  # D of the grad_norm_ratio_d50 metrics (fixed: they are compared across runs)
MODELS = ("rnn", "lstm", "gru", "lstm-fb1")
FORGET_BIAS = {"lstm-fb1": 1.0}  # configuration -> forget-gate bias at init
STAGES = ("init", "trained")
CSV = "grad_norms.csv"


@dataclass
class Config:
    models: list[str] = knob(["rnn", "lstm", "gru", "lstm-fb1"], choices=MODELS, nonempty=True)
    backend_twins: list[str] = knob(["lstm"], choices=MODELS)  # also trained on the other
    # backend, when planned
    corpus: str = knob("trump", choices=CORPORA)
    seq_len: int = knob(150, min=DISTANCE + 1)  # window length L: distances 0 .. L-1
    measure_batch: int = knob(32, min=1)  # test windows the norms are averaged over
    threshold: float = knob(1e-3, above=0, below=1)  # ratio below which the gradient vanished
    train_chars: int | None = knob(100_000, min=0)  # characters per epoch (successive windows
    # of the training part); 0 or None = the whole training part
    batch_size: int = knob(16, min=1)  # parallel training streams
    bptt: int = knob(100, min=1)  # truncated-BPTT chunk length during the brief training
    val_fraction: float = knob(0.05, above=0, below=1)  # tail of the training text held out
    val_chars: int | None = knob(30_000, min=2)  # val characters scored per epoch (None = all)
    test_chars: int | None = knob(30_000, min=2)  # test characters scored at the end
    eval_streams: int = knob(16, min=1)  # parallel streams when scoring val and test
    # brief training: 2 epochs of 100k characters
    train: TrainConfig = knob(TrainConfig(epochs=2, lr=4e-3, grad_clip=1.0, stateful=True))
    model: CharModel = knob(CharModel(hidden_size=128))


def measure_windows(test_ids: torch.Tensor, config: Config) -> Batch:
    """`measure_batch` windows of seq_len + 1 test characters at seeded random offsets:
    x = L x B ids, y = the next characters (only y[-1] enters the last-step loss)."""
    span = config.seq_len + 1
    if test_ids.numel() < span:
        raise ValueError(f"vanishing_gradients: the test split has {test_ids.numel()} chars "
                         f"< {span}")
    rng = np.random.default_rng(config.train.seed)
    starts = rng.integers(0, test_ids.numel() - span + 1, size=config.measure_batch)
    windows = torch.stack([test_ids[s : s + span] for s in starts.tolist()], dim=1)  # span x B
    return Batch(windows[:-1], windows[1:])


def gradient_ratios(model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(norms, ratios), both indexed by distance d = 0 .. L-1 from the loss (d = L-1-t)."""
    norms = hidden_gradient_norms(model, batch, float64=True).numpy()[::-1].copy()
    return norms, norms / norms[0]


def state_norms(model, batch: Batch) -> dict[str, np.ndarray]:
    """{"h": norms, "c": norms (LSTMs)}, each indexed by distance d = 0 .. L-1 (float64)."""
    return {k: v.numpy()[::-1].copy()
            for k, v in state_gradient_norms(model, batch, float64=True).items()}


def vanish_distance(ratios: np.ndarray, threshold: float) -> int:
    """First distance whose ratio is below `threshold`, or len(ratios) when none is."""
    below = np.flatnonzero(ratios < threshold)
    return int(below[0]) if below.size else len(ratios)


def norms_csv(columns: dict[str, np.ndarray]) -> str:
    """distance,<column>,... one row per distance (raw norms, 7 significant digits)."""
    lines = ["distance," + ",".join(columns)]
    length = len(next(iter(columns.values())))
    for d in range(length):
        lines.append(f"{d}," + ",".join(f"{values[d]:.6e}" for values in columns.values()))
    return "\n".join(lines) + "\n"


def read_norms_csv(text: str) -> dict[str, np.ndarray]:
    """The columns of `norms_csv` (without distance) -> arrays indexed by distance."""
    table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2)
    header = text.split("\n", 1)[0].split(",")
    return {name: table[:, i] for i, name in enumerate(header) if name != "distance"}


def curves_figure(curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Ratio curves (label -> ratios by distance) on one log-scale plot; zeros left out."""
    series = {label: {d: float(r) for d, r in enumerate(ratios) if r > 0}
              for label, ratios in curves.items()}
    return plots.series_by_x(series, path, "distance from the loss (steps)",
                             "||dL/dh|| / its value at distance 0", title=title, logy=True)


class VanishingGradients(Experiment):
    """Gradient norm against distance from the loss for tanh RNN, LSTM and GRU."""

    name = "vanishing_gradients"
    axes = ("models", "backend_twins")  # which configurations, not how they train
    Config = Config
    headline = Headline(f"grad_norm_ratio_d{DISTANCE}", "max")
    datasets = CORPORA
    select_on = ("nats", "min")
    diagnostic = True

    def needs(self, config: Config) -> list[str]:
        return [config.corpus]

    def plan(self, config: Config) -> list[str]:
        """One configuration per model, in the order `config.models` lists them."""
        if len(set(config.models)) != len(config.models):
            raise ValueError(f"vanishing_gradients: models listed twice in {config.models}")
        if not config.train.stateful:
            raise ValueError("vanishing_gradients: train.stateful must be true (truncated BPTT)")
        return with_twins(self.name, config.models, config.backend_twins,
                          lambda n: config.model.backend)

    def data(self, config: Config, name: str, manifests) -> Splits:
        """train = the training part's ids; val = streams of its tail; test = the test ids."""
        manifest = manifests[config.corpus]
        ids = load_corpus_ids(manifest, config.val_fraction)
        val = as_streams(ids.val[: config.val_chars], config.eval_streams)
        measure_windows(ids.test, config)  # fail now, not after training, on a short test split
        info = ids.info(manifest) | {
            "val_chars_scored": int(val[1:].numel()),
            "measured_windows": f"{config.measure_batch} x {config.seq_len} test characters",
        }
        return Splits(ids.train, val, ids.test, info, vocab=ids.vocab)

    def model(self, config: Config, name: str, data: Splits):
        base, backend = split_twin(name)
        block = dataclasses.replace(config.model, backend=backend or config.model.backend,
                                    forget_bias=FORGET_BIAS.get(base, config.model.forget_bias))
        return char_lm(block, base.split("-")[0], len(data.vocab))

    def batches(self, config: Config, name: str, data: Splits) -> Batches:
        source = epoch_batch_source(data.train, config.batch_size, config.bptt,
                                    config.train.seed, config.train_chars)
        return Batches(source, chunk_batches(data.val, config.bptt))

    def score(self, config: Config, name: str, model, data: Splits) -> dict:
        """Gradient ratios at init and after training on the test windows; test nats."""
        windows = measure_windows(data.test, config)
        seed_everything(config.train.seed)  # as the runner did before building the model ...
        initial = self.model(config, name, data)  # ... so these are its initial weights
        initial.to(next(model.parameters()).device)
        measured = {"init": state_norms(initial, windows), "trained": state_norms(model, windows)}
        norms = {stage: measured[stage]["h"] for stage in STAGES}  # the CSV's columns
        norms |= {f"c_{stage}": measured[stage]["c"] for stage in STAGES
                  if "c" in measured[stage]}
        test = as_streams(data.test[: config.test_chars], config.eval_streams)
        scores: dict = {"test_nats_per_char": evaluate(model, chunk_batches(test, config.bptt),
                                                       stateful=True)["nats"]}
        for column, values in norms.items():
            stage = column.removeprefix("c_")
            prefix = ("init_" if stage == "init" else "") + ("cell_" if column[:2] == "c_" else "")
            ratios = values / values[0]
            scores[f"{prefix}grad_norm_ratio_d{DISTANCE}"] = float(ratios[DISTANCE])
            scores[f"{prefix}vanish_distance"] = float(vanish_distance(ratios, config.threshold))
        scores["norms"] = norms  # not a number: for the report (figure and CSV) only
        return scores

    def report(self, config, name, model, data, history, scores, folder) -> Report:
        norms = scores["norms"]
        curves = {f"{name} {'c' if col[:2] == 'c_' else 'h'} ({col.removeprefix('c_')})":
                  values / values[0] for col, values in norms.items()}
        figure = curves_figure(curves, folder / "grad_norm_vs_distance.png",
                               f"{name}: gradient vs distance, {config.corpus} test text")
        return Report(figures={"grad_norm_vs_distance": figure}, texts={CSV: norms_csv(norms)})

    def summarise(self, config: Config, results: list, folder: Path) -> Report:
        """Every configuration's curves on one plot (and per stage), and the combined CSV.

        Reads each result's grad_norms.csv (RunResult.texts), so results read back from a
        tracker (anything with `.name` and `.texts`) serve as well as fresh RunResults.
        """
        order = {m: i for i, m in enumerate(config.models)}
        results = sorted((r for r in results if CSV in r.texts and split_twin(r.name)[1] is None),
                         key=lambda r: order.get(r.name, len(order)))
        if not results:
            return Report()
        norms = {r.name: read_norms_csv(r.texts[CSV]) for r in results}
        figures = {"tanh_and_derivative": tanh_figure(folder / "tanh_and_derivative.png")}
        cells = {f"{m} c ({stage})": n[f"c_{stage}"] / n[f"c_{stage}"][0]
                 for stage in STAGES for m, n in norms.items() if f"c_{stage}" in n}
        if cells:
            figures["cell_grad_norm_vs_distance"] = curves_figure(
                cells, folder / "cell_grad_norm_vs_distance.png",
                f"LSTM cell state: ||dL/dc|| vs distance, {config.corpus} text")
        for suffix, stages in (("", STAGES), ("_init", ("init",)), ("_trained", ("trained",))):
            curves = {f"{m} ({stage})": n[stage] / n[stage][0]
                      for stage in stages for m, n in norms.items()}
            title = f"Gradient vs distance, {config.corpus} text, {' and '.join(stages)}"
            figures[f"grad_norm_vs_distance{suffix}"] = curves_figure(
                curves, folder / f"grad_norm_vs_distance{suffix}.png", title)
        columns = {f"{m}_{stage}": n[stage] for m, n in norms.items() for stage in STAGES}
        columns |= {f"{m}_{col}": n[col] for m, n in norms.items() for col in n
                    if col.startswith("c_")}
        return Report(figures=figures, texts={CSV: norms_csv(columns)})


def tanh_figure(path: Path) -> Path:
    """The lesson's figure: tanh and its derivative 1 - tanh^2 (at most 1, ~0 for |x| > 3)."""
    xs = np.linspace(-5, 5, 201)
    tanh = np.tanh(xs)
    return plots.series_by_x(
        {"tanh(x)": dict(zip(xs.tolist(), tanh.tolist())),
         "tanh'(x) = 1 - tanh(x)^2": dict(zip(xs.tolist(), (1 - tanh**2).tolist()))},
        path, "x", "", title="tanh and its derivative: each step multiplies the gradient by "
        "tanh' <= 1")


EXPERIMENT = VanishingGradients()
