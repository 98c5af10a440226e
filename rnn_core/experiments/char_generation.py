"""Character language models on Trump's speeches and on Molière, with generated text.

Configurations are named "<corpus>-<model>" (e.g. "trump-lstm", "moliere-mikolov"): every
corpus x model of the lists, then those named in `extra`, each followed by its backend twin
"<name>-<backend>" when `backend_twins` lists it (rnn_core.comparisons compares the pair):
    corpus  trump | moliere           (rnn_core.datasets.corpus: contiguous 90/10 train/test)
    model   mikolov  Mikolov et al. 2010, as the course's lesson sets it up: one-hot input
                     concatenated with the state, sigmoid, softmax output, trained with plain
                     SGD ([char_generation.mikolov]: its own hidden size and optimiser)
            rnn      tanh RNN over a character embedding (the course's model on Trump)
            lstm     LSTM over a character embedding
            gru      GRU over a character embedding

Mikolov's RNN, decided: the lesson (CoursDeepLearning 05_NLP/05_Rnn, on moliere.txt) builds
s(t) = sigmoid(W [onehot(c_t); s(t-1)]), y(t) = softmax(V s(t)) with hidden_dim = 128 and
torch.optim.SGD(lr=0.1), updating after every character with the state detached (one-step
gradients) over the first 50,000 characters. Kept: the architecture, the hidden size 128 and
SGD without momentum (the paper's and the lesson's optimiser). Changed, said here: it trains
like the other models (32 parallel streams, truncated BPTT over 50 steps, the mean loss of a
chunk per update, the whole training text), so SGD's learning rate is per mean-of-1,600 loss,
not per character: lr 10 (x0.9 per epoch, 12 epochs of 500k characters, ~25 s of CPU). The
rate was chosen on the validation tail in 8-epoch runs (final val nats: lr 0.3 2.72, 1 2.30,
3 2.08, 10 1.87, 30 1.93); Moliere's test split then reads 2.69 bits per character against the
bigram's 3.49.

Data: the prepared corpus (its manifest), cut contiguously into train | val | test. The
validation split is the last `val_fraction` (5 %) of the prepared training text, right before
the test split (text_streams.load_corpus_ids); the model trains on the rest. Validation is
scored after every epoch (the learning curve; `train.select_epoch = "best_val"` keeps the epoch
with the lowest validation nats); the test split is scored once, by the chosen epoch's model.

Training is truncated BPTT (see text_streams): the training part becomes `batch_size` parallel
contiguous streams read in chunks of `bptt` steps, the state carried (detached) from chunk to
chunk (`train.stateful`, required). Validation and test are read the same way in `eval_streams`
streams, state carried, and every character after the first of each stream is scored; the
unigram and bigram baselines (fitted on the training part, add-one smoothing) are scored on
exactly the model's test characters.

Metrics (test split unless named otherwise):
    test_nats_per_char, test_bits_per_char, test_perplexity     the model
    unigram_nats_per_char, bigram_nats_per_char                  baselines
    bigram_minus_model_nats                                      > 0: the model beats the bigram
    train_nats_per_char        the final model re-scored on the first `train_eval_chars` of train
    val_nats, val_bits_per_char, val_perplexity, val_loss, chosen_epoch   (the runner: the chosen
                               epoch's validation figures)
History (per epoch, the runner's names): train_loss (mean nats per char while training), val_loss,
val_nats, val_bits_per_char, val_perplexity, lr, seconds. Texts: "samples.txt" (greedy and sampled
at each temperature, from the corpus' prompt and from an empty state). Figure: learning_curves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rnn_core import baselines, plots
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
    stream_targets_nats,
)
from rnn_core.generation import decode, encode, generate
from rnn_core.metrics import bits_per_char, perplexity
from rnn_core.results import Headline
from rnn_core.significance import PerSegmentBits, subsample
from rnn_core.training import TrainConfig, evaluate

MODELS = ("mikolov", "rnn", "lstm", "gru")


@dataclass
class Mikolov:
    """[char_generation.mikolov]: what the Mikolov RNN does not share with the other models
    (its training otherwise follows [char_generation.train]; see the module docstring)."""

    hidden_size: int = knob(128, min=1)  # the lesson's hidden_dim
    optimizer: str = knob("sgd", choices=("adam", "sgd"))  # the lesson's and the paper's: SGD
    lr: float = knob(10.0, above=0)  # per mean loss of a 32 x 50 chunk (the lesson: 0.1 per char)
    lr_decay: float = knob(0.9, above=0, max=1)
    momentum: float = knob(0.0, min=0, below=1)
    epochs: int = knob(12, min=1)  # of max_train_chars each: cheap (~2 s of CPU per epoch)


@dataclass
class Config:
    corpora: list[str] = knob(["trump", "moliere"], choices=CORPORA, nonempty=True)
    models: list[str] = knob(["lstm", "gru"], choices=MODELS, nonempty=True)
    val_fraction: float = knob(0.05, above=0, below=1)  # tail of the training text held out
    batch_size: int = knob(32, min=1)  # B parallel training streams
    bptt: int = knob(50, min=1)  # steps per chunk: the gradient is truncated at chunk boundaries
    # Characters per epoch: successive epochs read successive windows of the training part
    # (wrapping around), so short epochs give more points on the curve. 0 or None = whole text.
    max_train_chars: int | None = knob(500_000, min=0)
    max_val_chars: int | None = knob(None, min=2)  # first val characters scored (None = all)
    max_test_chars: int | None = knob(None, min=2)  # first test characters scored (smoke only)
    eval_streams: int = knob(32, min=1)  # parallel streams when scoring (state carried in each)
    train_eval_chars: int = knob(150_000, min=2)  # training chars re-scored: train_nats_per_char
    sample_chars: int = knob(300, min=1)  # characters per generated sample
    temperatures: list[float] = knob([0.5, 0.8, 1.0], above=0)  # one sampled text each
    prompts: dict[str, str] = knob(  # prompt per corpus for the "from a prompt" samples
        {"trump": "We are going to ", "moliere": "SGANARELLE.\n\n"})
    # default profile: 3 epochs of 500k characters, ~25-40 s of CPU per configuration
    train: TrainConfig = knob(TrainConfig(epochs=3, lr=6e-3, lr_decay=0.6, grad_clip=1.0,
                                          stateful=True))
    model: CharModel = knob(CharModel)
    mikolov: Mikolov = knob(Mikolov)  # [char_generation.mikolov]: the Mikolov RNN's own knobs
    extra: list[str] = knob(["trump-rnn", "moliere-mikolov"])  # more configurations by name
    backend_twins: list[str] = knob(["trump-rnn"])  # also trained on the other backend


def parse_name(name: str) -> tuple[str, str]:
    """"trump-lstm" -> ("trump", "lstm"); a backend twin ("trump-rnn-scratch") -> its own."""
    corpus, _, model = split_twin(name)[0].partition("-")
    if corpus not in CORPORA or model not in MODELS:
        raise ValueError(f"char_generation: bad configuration name {name!r}; expected "
                         f"<corpus>-<model> with corpus in {CORPORA} and model in {MODELS}")
    return corpus, model


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
            generator = torch.Generator().manual_seed(config.train.seed + len(sections))
            out = generate(model, ids, config.sample_chars, mode=mode,
                           temperature=temperature or 1.0, generator=generator, start_id=start_id)
            label = "greedy" if mode == "greedy" else f"sampled, temperature {temperature}"
            head = f"=== {label}, from {start}" + (f" {prompt!r}" if ids else "") + " ==="
            sections.append(f"{head}\n{prompt if ids else ''}{decode(out, vocab)}\n")
    return "\n".join(sections)


class CharGeneration(Experiment):
    """Character language models on Trump and Molière: bits per char and generated text."""

    name = "char_generation"
    axes = ("corpora", "models", "extra", "backend_twins")  # which configurations
    Config = Config
    headline = Headline("test_bits_per_char", "min")
    datasets = CORPORA
    select_on = ("nats", "min")

    def needs(self, config: Config) -> list[str]:
        return sorted({parse_name(n)[0] for n in self.plan(config)}, key=CORPORA.index)

    def plan(self, config: Config) -> list[str]:
        """Every corpus x model, corpus-major (["trump-lstm", "trump-gru", "moliere-lstm", ...]),
        then `extra`, each followed by its backend twin when `backend_twins` lists it."""
        if not config.train.stateful:
            raise ValueError("char_generation: train.stateful must be true (truncated BPTT "
                             "carries the state from chunk to chunk, as scoring does)")
        names = [f"{corpus}-{model}" for corpus in config.corpora for model in config.models]
        names += [n for n in config.extra if parse_name(n) and n not in names]
        if any(parse_name(n)[1] == "mikolov" for n in config.backend_twins):
            raise ValueError("char_generation: the Mikolov RNN has no fused torch.nn "
                             "equivalent: it cannot be a backend twin")
        return with_twins(self.name, names, config.backend_twins, lambda n: config.model.backend)

    def train_config(self, config: Config, name: str) -> TrainConfig:
        """The Mikolov RNN trains with its own optimiser ([char_generation.mikolov])."""
        if parse_name(name)[1] != "mikolov":
            return config.train
        m = config.mikolov
        return dataclasses.replace(config.train, optimizer=m.optimizer, lr=m.lr,
                                   lr_decay=m.lr_decay, momentum=m.momentum, epochs=m.epochs)

    def data(self, config: Config, name: str, manifests) -> Splits:
        """train = the training part's ids; val, test = T x eval_streams streams to score."""
        corpus, model_name = parse_name(name)
        manifest = manifests[corpus]
        ids = load_corpus_ids(manifest, config.val_fraction)
        prompt = config.prompts.get(corpus, "")
        encode(prompt, ids.vocab)  # fail now, not after training, on a prompt outside the vocab
        val = as_streams(ids.val[: config.max_val_chars], config.eval_streams)
        test = as_streams(ids.test[: config.max_test_chars], config.eval_streams)
        source = epoch_batch_source(ids.train, config.batch_size, config.bptt, config.train.seed,
                                    config.max_train_chars)
        info = ids.info(manifest) | {
            "train_chars_per_epoch": sum(b.y.numel() for b in source(0)),
            "val_chars_scored": int(val[1:].numel()),
            "test_chars_scored": int(test[1:].numel()),
            "test_truncated": config.max_test_chars is not None
            and config.max_test_chars < ids.test.numel(),
        }
        return Splits(ids.train, val, test, info, vocab=ids.vocab, spans=ids.spans,
                      corpus=corpus, model_name=model_name, prompt=prompt, source=source)

    def model(self, config: Config, name: str, data: Splits):
        block = config.model
        backend = split_twin(name)[1]
        if backend is not None:  # a backend twin: the same model on the other backend
            block = dataclasses.replace(block, backend=backend)
        if data.model_name == "mikolov":
            block = dataclasses.replace(block, hidden_size=config.mikolov.hidden_size)
        return char_lm(block, data.model_name, len(data.vocab))

    def batches(self, config: Config, name: str, data: Splits) -> Batches:
        """Successive windows of the training part per epoch; the val streams in chunks."""
        return Batches(data.source, chunk_batches(data.val, config.bptt))

    def score(self, config: Config, name: str, model, data: Splits) -> dict[str, float]:
        """Test streams (once, the chosen model, state carried), baselines on the same
        characters, and the model re-scored on the start of the training part."""
        vocab_size = len(data.vocab)
        segments = PerSegmentBits(model.make_metrics().ignore_index)  # the paired test's units
        nats = evaluate(model, chunk_batches(data.test, config.bptt),
                        [model.make_metrics(), segments], stateful=True)["nats"]
        unigram = baselines.fit_unigram(data.train, vocab_size)
        bigram = baselines.fit_bigram(data.train, vocab_size)
        unigram_nats = stream_targets_nats(data.test,
                                           lambda s: baselines.unigram_nats(unigram, s))
        bigram_nats = stream_targets_nats(data.test, lambda s: baselines.bigram_nats(bigram, s))
        train_slice = as_streams(data.train[: config.train_eval_chars], config.eval_streams)
        train_nats = evaluate(model, chunk_batches(train_slice, config.bptt),
                              stateful=True)["nats"]
        return {
            "test_nats_per_char": nats,
            "test_bits_per_char": bits_per_char(nats),
            "test_perplexity": perplexity(nats),
            "unigram_nats_per_char": unigram_nats,
            "bigram_nats_per_char": bigram_nats,
            "bigram_minus_model_nats": bigram_nats - nats,
            "train_nats_per_char": train_nats,
            # bits per (chunk, stream) segment of <= bptt chars, mean = test_bits_per_char
            # (a fixed stride keeps at most 200k segments)
            "per_example": subsample(segments.values()),
        }

    def report(self, config, name, model, data, history, scores, folder) -> Report:
        title = (f"{name}: nats per char\ntest {scores['test_nats_per_char']:.3f} "
                 f"(bigram {scores['bigram_nats_per_char']:.2f}, "
                 f"unigram {scores['unigram_nats_per_char']:.2f})")
        return Report(
            figures={"learning_curves": plots.learning_curves(
                history, ["train_loss", "val_nats"], folder / "learning_curves.png", title=title)},
            texts={"samples.txt": samples_text(model, data.vocab, data.prompt, config)},
        )

    def tags(self, config: Config, name: str, data: Splits) -> dict[str, str]:
        backend = "scratch" if data.model_name == "mikolov" else (split_twin(name)[1]
                                                                   or config.model.backend)
        return {"model": data.model_name, "dataset": data.corpus, "backend": backend,
                "data_variant": str(data.info.get("variant", "full"))}

    def serving(self, config: Config, name: str, data: Splits) -> dict:
        """A prompt -> generated text: the corpus' characters and its cleaner."""
        from rnn_core.serving.chars import char_lm_spec

        return char_lm_spec(data.vocab, data.corpus)


EXPERIMENT = CharGeneration()
