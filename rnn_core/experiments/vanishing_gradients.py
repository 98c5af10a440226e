"""The vanishing-gradient study: how much of the loss's gradient reaches the state d steps back.

For a tanh RNN, an LSTM and a GRU (character language models over an embedding, same hidden
size), on real text windows of `seq_len` characters from the corpus' TEST split, we take the loss
at the last step only and measure ||d loss / d h_{L-1-d}|| for every distance d, averaged over
`measure_batch` windows (rnn_core.gradients.hidden_gradient_norms, in float64 so
tiny norms do not underflow). Each curve is divided by its value at d = 0, so the three models share
one scale. Two stages, because the picture changes with training:
    init     the freshly initialised models (torch.nn's uniform(+-1/sqrt(H)) weights),
    trained  the same models after brief truncated-BPTT training on the training split.

Metrics ({m} in rnn, lstm, gru; no prefix = after training, "init_" = at initialisation):
    grad_norm_ratio_d50_{m}    norm at distance 50 / norm at distance 0
    vanish_distance_{m}        first distance where the ratio drops below Config.threshold (1e-3);
                               seq_len when it never does inside the window (censored)
    test_nats_per_char_{m}     the trained model on the first `test_chars` test characters
                               (shows the brief training did learn something)
HEADLINE: grad_norm_ratio_d50_lstm (goal max): the share of the gradient that still reaches 50
characters back through a trained LSTM; the larger it is, the longer the dependencies an LSTM can
learn from this text, which is the point of the study (compare with the rnn's metric).

One RunResult for the whole study ("rnn-lstm-gru"); its checkpoint is the trained LSTM's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnn_core import plots
from rnn_core.datasets.corpus import load_corpus
from rnn_core.datasets.io import read_json
from rnn_core.experiments.text_streams import (
    as_streams,
    chunk_batches,
    encode_ids,
    epoch_batch_source,
)
from rnn_core.gradients import hidden_gradient_norms
from rnn_core.models import Batch, build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.training import TrainConfig, resolve_device, train

TASK = "vanishing_gradients"
HEADLINE = Headline("grad_norm_ratio_d50_lstm", "max")
DISTANCE = 50  # D of the grad_norm_ratio_d50_* metrics (fixed: they are compared across runs)
MODELS = ("rnn", "lstm", "gru")
STAGES = ("init", "trained")


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["rnn", "lstm", "gru"])  # see MODELS
    corpus: str = "trump"  # trump | moliere (processed by rnn_core.datasets.corpus)
    hidden_size: int = 128  # units of every model
    embedding_dim: int = 32  # character embedding
    backend: str = "fused"  # fused | scratch
    seq_len: int = 150  # window length L: distances 0 .. L-1 from the loss
    measure_batch: int = 32  # test windows the norms are averaged over
    threshold: float = 1e-3  # ratio below which the gradient counts as vanished
    epochs: int = 2  # brief training: epochs of `train_chars` characters each
    train_chars: int = 100_000  # characters per epoch (successive windows of the train split)
    batch_size: int = 16  # parallel training streams
    bptt: int = 100  # truncated-BPTT chunk length during the brief training
    lr: float = 4e-3  # Adam
    grad_clip: float = 1.0  # max global gradient norm
    test_chars: int = 30_000  # test characters scored after training
    device: str = "auto"  # auto = CUDA when present
    seed: int = 0  # model init, batches and the measured windows


def plan(config: Config) -> list[str]:
    """One configuration for the whole study, named after its models ("rnn-lstm-gru")."""
    for model in config.models:
        if model not in MODELS:
            raise ValueError(f"{TASK}: unknown model {model!r}; expected one of {MODELS}")
    if not config.models:
        raise ValueError(f"{TASK}: no models to compare")
    if "lstm" not in config.models:
        raise ValueError(f"{TASK}: the study needs the lstm (its metric is the headline)")
    if config.seq_len <= DISTANCE:
        raise ValueError(f"{TASK}: seq_len {config.seq_len} must exceed distance {DISTANCE}")
    return ["-".join(config.models)]


def model_config(config: Config, model: str, vocab_size: int) -> dict:
    return {
        "kind": "char_lm",
        "vocab_size": vocab_size,
        "mode": "embedding",
        "cell": model,
        "hidden_size": config.hidden_size,
        "embedding_dim": config.embedding_dim,
        "backend": config.backend,
    }


def measure_windows(test_ids: torch.Tensor, config: Config) -> Batch:
    """`measure_batch` windows of seq_len + 1 test characters at seeded random offsets:
    x = L x B ids, y = the next characters (only y[-1] enters the last-step loss)."""
    span = config.seq_len + 1
    if test_ids.numel() < span:
        raise ValueError(f"{TASK}: the test split has {test_ids.numel()} chars < {span}")
    rng = np.random.default_rng(config.seed)
    starts = rng.integers(0, test_ids.numel() - span + 1, size=config.measure_batch)
    windows = torch.stack([test_ids[s : s + span] for s in starts.tolist()], dim=1)  # span x B
    return Batch(windows[:-1], windows[1:])


def gradient_ratios(model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(norms, ratios), both indexed by distance d = 0 .. L-1 from the loss (d = L-1-t)."""
    norms = hidden_gradient_norms(model, batch, float64=True).numpy()[::-1].copy()
    return norms, norms / norms[0]


def vanish_distance(ratios: np.ndarray, threshold: float) -> int:
    """First distance whose ratio is below `threshold`, or len(ratios) when none is."""
    below = np.flatnonzero(ratios < threshold)
    return int(below[0]) if below.size else len(ratios)


def run_one(config: Config, name: str, data_dir: Path, work_dir: Path, callbacks=None) -> RunResult:
    """Measure every model at initialisation, train it briefly, measure again."""
    started = time.perf_counter()
    if name != plan(config)[0]:
        raise ValueError(f"{TASK}: unknown configuration {name!r}; plan gives {plan(config)}")
    out_dir = Path(data_dir) / "processed" / config.corpus
    train_text, test_text, vocab = load_corpus(out_dir)
    meta = read_json(out_dir / "meta.json")
    train_ids = encode_ids(train_text, vocab, str(out_dir / "train.parquet"))
    test_ids = encode_ids(test_text, vocab, str(out_dir / "test.parquet"))
    windows = measure_windows(test_ids, config)
    test_batches = chunk_batches(as_streams(test_ids[: config.test_chars], 16), config.bptt)
    tcfg = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        grad_clip=config.grad_clip,
        stateful=True,
        device=config.device,
        seed=config.seed,
    )

    metrics: dict[str, float] = {}
    curves: dict[str, dict[str, np.ndarray]] = {stage: {} for stage in STAGES}  # ratios
    norms: dict[str, np.ndarray] = {}  # "rnn init" -> raw norms by distance
    history_rows: dict[int, dict[str, float]] = {}
    registered = None  # the trained LSTM: (model, checkpoint)
    for model_name in config.models:
        torch.manual_seed(config.seed)  # every model starts from its seeded torch.nn init
        mcfg = model_config(config, model_name, len(vocab))
        model = build_model(mcfg).to(resolve_device(config.device))
        norms[f"{model_name} init"], curves["init"][model_name] = gradient_ratios(model, windows)

        result = train(
            model,
            epoch_batch_source(
                train_ids, config.batch_size, config.bptt, config.seed, config.train_chars
            ),
            tcfg,
            eval_batches=test_batches,
            callbacks=callbacks,
            checkpoint_dir=Path(work_dir) / name / model_name,
        )
        norms[f"{model_name} trained"], curves["trained"][model_name] = gradient_ratios(
            model, windows
        )
        for row in result.history:
            merged = history_rows.setdefault(int(row["epoch"]), {"epoch": row["epoch"]})
            merged[f"train_running_nats_per_char_{model_name}"] = row["train_loss"]
            merged[f"test_nats_per_char_{model_name}"] = row["val_nats"]
        metrics[f"test_nats_per_char_{model_name}"] = result.history[-1]["val_nats"]
        for stage, prefix in (("init", "init_"), ("trained", "")):
            ratios = curves[stage][model_name]
            metrics[f"{prefix}grad_norm_ratio_d{DISTANCE}_{model_name}"] = float(ratios[DISTANCE])
            metrics[f"{prefix}vanish_distance_{model_name}"] = float(
                vanish_distance(ratios, config.threshold)
            )
        if model_name == "lstm":
            registered = (model, Path(result.checkpoint))

    # -- one figure with both stages, one per stage for a closer look, the numbers as CSV ------
    plot_dir = Path(work_dir) / name / "plots"
    ylabel = "||dL/dh|| / its value at distance 0"
    xlabel = "distance from the loss (steps)"

    def series(stages):
        return {
            f"{m} ({stage})": {d: float(r) for d, r in enumerate(curves[stage][m]) if r > 0}
            for stage in stages
            for m in config.models
        }

    figures = {
        "grad_norm_vs_distance": plots.series_by_x(
            series(STAGES),
            plot_dir / "grad_norm_vs_distance.png",
            xlabel,
            ylabel,
            title=f"Gradient vs distance, {config.corpus} text, init and trained",
            logy=True,
        )
    }
    for stage in STAGES:
        figures[f"grad_norm_vs_distance_{stage}"] = plots.series_by_x(
            series([stage]),
            plot_dir / f"grad_norm_vs_distance_{stage}.png",
            xlabel,
            ylabel,
            title=f"Gradient vs distance ({stage})",
            logy=True,
        )
    columns = list(norms)
    lines = ["distance," + ",".join(c.replace(" ", "_") for c in columns)]
    for d in range(config.seq_len):
        lines.append(f"{d}," + ",".join(f"{norms[c][d]:.6e}" for c in columns))

    model, checkpoint = registered
    return RunResult(
        task=TASK,
        name=name,
        params={
            "experiment": dataclasses.asdict(config),
            "models": {m: model_config(config, m, len(vocab)) for m in config.models},
            "train": dataclasses.asdict(tcfg),
        },
        metrics=metrics,
        headline=HEADLINE,
        history=[history_rows[e] for e in sorted(history_rows)],
        figures=figures,
        texts={"grad_norms.csv": "\n".join(lines) + "\n"},
        tags={"model": name, "dataset": config.corpus, "data_variant": "full"},
        dataset={
            "dataset": config.corpus,
            "variant": "full",
            "source": meta.get("source"),
            "vocab_size": len(vocab),
            "train_chars": len(train_text),
            "test_chars": len(test_text),
            "measured_windows": f"{config.measure_batch} x {config.seq_len} test characters",
        },
        model_config=config_dict(model),
        checkpoint=checkpoint,
        device=str(resolve_device(config.device)),
        seconds=time.perf_counter() - started,
    )
