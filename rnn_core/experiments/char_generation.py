"""Character language models on Trump's speeches and on Molière, with generated text.

Configurations are named "<corpus>-<model>" (e.g. "trump-lstm", "moliere-mikolov"):
    corpus  trump | moliere           (rnn_core.datasets.corpus: contiguous 90/10 split)
    model   mikolov  Mikolov et al. 2010: one-hot input concatenated with the sigmoid state
            rnn      tanh RNN over a character embedding
            lstm     LSTM over a character embedding
            gru      GRU over a character embedding

Training is truncated BPTT (see text_streams): the training text becomes `batch_size` parallel
contiguous streams read in chunks of `bptt` steps, the state carried (detached) from chunk to chunk
(`TrainConfig.stateful`). The test split is read the same way, state carried, and every test
character after the first of each stream is scored; the unigram and bigram baselines (fitted on
the whole training split, add-one smoothing) are scored on exactly those characters.

Metrics (test split unless named train):
    test_nats_per_char, test_bits_per_char, test_perplexity     the model
    unigram_nats_per_char, bigram_nats_per_char                  baselines
    bigram_minus_model_nats                                      > 0: the model beats the bigram
    train_nats_per_char        the final model re-scored on the first `train_eval_chars` of train
History (per epoch): train_running_nats_per_char (mean loss while training), test_nats_per_char,
test_bits_per_char, lr, seconds. Texts: "samples.txt" (greedy and sampled at each temperature, from
the corpus' prompt and from an empty state).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnn_core import baselines, plots
from rnn_core.datasets.corpus import load_corpus
from rnn_core.datasets.io import read_json
from rnn_core.experiments.text_streams import (
    as_streams,
    chunk_batches,
    encode_ids,
    epoch_batch_source,
    stream_targets_nats,
)
from rnn_core.generation import decode, encode, generate
from rnn_core.metrics import bits_per_char, perplexity
from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.training import TrainConfig, evaluate, resolve_device, train

TASK = "char_generation"
HEADLINE = Headline("test_bits_per_char", "min")
CORPORA = ("trump", "moliere")
MODELS = ("mikolov", "rnn", "lstm", "gru")


@dataclass
class Config:
    corpora: list[str] = field(default_factory=lambda: ["trump", "moliere"])  # see CORPORA
    models: list[str] = field(default_factory=lambda: ["lstm", "gru"])  # see MODELS
    hidden_size: int = 256  # units per layer (mikolov: its single sigmoid layer)
    num_layers: int = 1  # stacked layers (embedding models only)
    embedding_dim: int = 32  # character embedding (embedding models only)
    dropout: float = 0.0  # between stacked layers
    backend: str = "fused"  # fused (torch.nn / cuDNN) | scratch (hand-written loop)
    batch_size: int = 32  # B parallel training streams
    bptt: int = 50  # steps per chunk: the gradient is truncated at chunk boundaries
    epochs: int = 3  # epochs of `max_train_chars` characters each (or whole passes)
    # Characters per epoch: successive epochs read successive windows of the training text
    # (wrapping around), so short epochs give more test points on the curve. 0 = whole text.
    max_train_chars: int | None = 500_000
    max_test_chars: int | None = None  # cap on scored test characters (None = all; smoke only)
    eval_streams: int = 32  # parallel streams when scoring (the state is carried within each)
    train_eval_chars: int = 150_000  # training characters re-scored for train_nats_per_char
    lr: float = 6e-3  # Adam, first epoch
    lr_decay: float = 0.6  # lr multiplier per epoch
    grad_clip: float = 1.0  # max global gradient norm
    device: str = "auto"  # auto = CUDA when present
    precision: str = "bf16"  # autocast on CUDA (the CPU runs fp32)
    seed: int = 0  # model init, batch offsets and sampling
    sample_chars: int = 300  # characters per generated sample
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])  # sampled texts
    prompts: dict[str, str] = field(  # prompt per corpus for the "from a prompt" samples
        default_factory=lambda: {"trump": "We are going to ", "moliere": "SGANARELLE.\n\n"}
    )


def plan(config: Config) -> list[str]:
    """Every corpus x model, corpus-major: ["trump-lstm", "moliere-lstm", ...]."""
    for corpus in config.corpora:
        if corpus not in CORPORA:
            raise ValueError(f"{TASK}: unknown corpus {corpus!r}; expected one of {CORPORA}")
    for model in config.models:
        if model not in MODELS:
            raise ValueError(f"{TASK}: unknown model {model!r}; expected one of {MODELS}")
    return [f"{corpus}-{model}" for corpus in config.corpora for model in config.models]


def parse_name(name: str) -> tuple[str, str]:
    corpus, _, model = name.partition("-")
    if corpus not in CORPORA or model not in MODELS:
        raise ValueError(f"{TASK}: bad configuration name {name!r}; expected <corpus>-<model>")
    return corpus, model


def model_config(config: Config, model: str, vocab_size: int) -> dict:
    """The CharLanguageModel config dict (with "kind") for one model name."""
    common = {
        "kind": "char_lm",
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "backend": config.backend,
    }
    if model == "mikolov":
        return {**common, "mode": "mikolov", "cell": "rnn", "nonlinearity": "sigmoid"}
    return {
        **common,
        "mode": "embedding",
        "cell": model,
        "embedding_dim": config.embedding_dim,
        "num_layers": config.num_layers,
        "dropout": config.dropout if config.num_layers > 1 else 0.0,
    }


def train_config(config: Config) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        lr_decay=config.lr_decay,
        grad_clip=config.grad_clip,
        stateful=True,  # truncated BPTT: carry the state across consecutive chunks
        device=config.device,
        precision=config.precision,
        seed=config.seed,
    )


def _history(rows: list[dict]) -> list[dict[str, float]]:
    """The loop's per-epoch rows under this experiment's metric names."""
    return [
        {
            "epoch": row["epoch"],
            "train_running_nats_per_char": row["train_loss"],
            "test_nats_per_char": row["val_nats"],
            "test_bits_per_char": row["val_bits_per_char"],
            "lr": row["lr"],
            "seconds": row["seconds"],
        }
        for row in rows
    ]


def samples_text(model, vocab: list[str], prompt: str, config: Config) -> str:
    """Greedy and sampled continuations, from `prompt` and from an empty state (fed "\\n")."""
    start_id = vocab.index("\n") if "\n" in vocab else vocab.index(" ")
    prompt_ids = encode(prompt, vocab)
    modes = [("greedy", None)] + [("sample", t) for t in config.temperatures]
    sections = []
    for start, ids in (("prompt", prompt_ids), ("empty state", None)):
        for mode, temperature in modes:
            # One seed per sample: with a shared seed, the prompt and empty-state samples at a
            # temperature would draw the same numbers and soon write the same text.
            generator = torch.Generator().manual_seed(config.seed + len(sections))
            out = generate(
                model,
                ids,
                config.sample_chars,
                mode=mode,
                temperature=temperature or 1.0,
                generator=generator,
                start_id=start_id,
            )
            label = "greedy" if mode == "greedy" else f"sampled, temperature {temperature}"
            head = f"=== {label}, from {start}" + (f" {prompt!r}" if ids else "") + " ==="
            sections.append(f"{head}\n{prompt if ids else ''}{decode(out, vocab)}\n")
    return "\n".join(sections)


def run_one(config: Config, name: str, data_dir: Path, work_dir: Path, callbacks=None) -> RunResult:
    """Train one "<corpus>-<model>", score it on the test split, generate text."""
    started = time.perf_counter()
    corpus, model_name = parse_name(name)
    torch.manual_seed(config.seed)  # the model's initial weights
    out_dir = Path(data_dir) / "processed" / corpus
    train_text, test_text, vocab = load_corpus(out_dir)
    meta = read_json(out_dir / "meta.json")
    prompt = config.prompts.get(corpus, "")
    encode(prompt, vocab)  # fail now, not after training, on a prompt outside the vocabulary

    # -- data: training streams per epoch, test streams scored with the state carried ----------
    train_ids = encode_ids(train_text, vocab, str(out_dir / "train.parquet"))
    test_ids = encode_ids(test_text, vocab, str(out_dir / "test.parquet"))
    if config.max_test_chars is not None:
        test_ids = test_ids[: config.max_test_chars]
    test_streams = as_streams(test_ids, config.eval_streams)  # T x B
    test_batches = chunk_batches(test_streams, config.bptt)
    train_batches = epoch_batch_source(
        train_ids, config.batch_size, config.bptt, config.seed, config.max_train_chars
    )

    # -- baselines: fitted on the whole training split, scored on the model's test targets ------
    unigram = baselines.fit_unigram(train_ids, len(vocab))
    bigram = baselines.fit_bigram(train_ids, len(vocab))
    unigram_nats = stream_targets_nats(test_streams, lambda s: baselines.unigram_nats(unigram, s))
    bigram_nats = stream_targets_nats(test_streams, lambda s: baselines.bigram_nats(bigram, s))

    # -- train (resumes from work_dir/name/last.pt) --------------------------------------------
    mcfg = model_config(config, model_name, len(vocab))
    model = build_model(mcfg)
    tcfg = train_config(config)
    result = train(
        model,
        train_batches,
        tcfg,
        eval_batches=test_batches,
        callbacks=callbacks,
        checkpoint_dir=Path(work_dir) / name,
    )
    history = _history(result.history)
    test_nats = history[-1]["test_nats_per_char"]  # the final model, scored after its last epoch
    train_slice = as_streams(train_ids[: config.train_eval_chars], config.eval_streams)
    train_nats = evaluate(model, chunk_batches(train_slice, config.bptt), stateful=True)["nats"]

    metrics = {
        "test_nats_per_char": test_nats,
        "test_bits_per_char": bits_per_char(test_nats),
        "test_perplexity": perplexity(test_nats),
        "unigram_nats_per_char": unigram_nats,
        "bigram_nats_per_char": bigram_nats,
        "bigram_minus_model_nats": bigram_nats - test_nats,
        "train_nats_per_char": train_nats,
    }

    # -- text and plots -------------------------------------------------------------------------
    texts = {"samples.txt": samples_text(model, vocab, prompt, config)}
    plot_dir = Path(work_dir) / name / "plots"
    figures = {
        "learning_curves": plots.learning_curves(
            history,
            ["train_running_nats_per_char", "test_nats_per_char"],
            plot_dir / "learning_curves.png",
            title=f"{name}: nats per char (bigram {bigram_nats:.2f}, unigram {unigram_nats:.2f})",
        )
    }
    dataset = {
        "dataset": corpus,
        "variant": "full",
        "source": meta.get("source"),
        "clean_chars": meta.get("clean_chars"),
        "vocab_size": len(vocab),
        "train_chars": len(train_text),
        "test_chars": len(test_text),
        "train_chars_per_epoch": sum(b.y.numel() for b in train_batches(0)),
        "test_chars_scored": int(test_streams[1:].numel()),
        "test_truncated": config.max_test_chars is not None,
    }
    return RunResult(
        task=TASK,
        name=name,
        params={
            "experiment": dataclasses.asdict(config),
            "model": mcfg,
            "train": dataclasses.asdict(tcfg),
        },
        metrics=metrics,
        headline=HEADLINE,
        history=history,
        figures=figures,
        texts=texts,
        tags={"model": model_name, "dataset": corpus, "data_variant": "full"},
        dataset=dataset,
        model_config=config_dict(model),
        checkpoint=Path(result.checkpoint),
        device=str(resolve_device(config.device)),
        seconds=time.perf_counter() - started,
    )
