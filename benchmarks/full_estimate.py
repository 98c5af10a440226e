"""The `full` profile's wall time with N workers, estimated from measured per-configuration
times (benchmarks/scale_out.py measures them on a smaller grid and calls `estimate_full`).

Each full-profile run is scaled from the measured configuration of the same experiment nearest
to it in cost per step: training steps x multiply-adds per step; N workers are simulated by
list scheduling (`list_schedule`). ESTIMATE_METHOD and ESTIMATE_ASSUMPTIONS go into the JSON.
"""

from __future__ import annotations

import math
from pathlib import Path

# --- full-profile estimate: relative cost of a configuration ------------------------------------
GATES = {"rnn": 1, "course": 1, "mikolov": 1, "gru": 3, "lstm": 4}  # weight matrices per step
TWIN_SUFFIXES = ("-scratch", "-fused")  # a backend twin costs what its configuration costs


def stack_cost(cell: str, input_size: float, hidden: int, layers: int = 1, dirs: int = 1) -> float:
    """Multiply-adds of one step of a recurrent stack (input + recurrent weights, every layer
    and direction); forward + backward is a constant multiple of it, which cancels."""
    cost, width = 0.0, input_size
    for _ in range(layers):
        cost += dirs * GATES[cell] * hidden * (width + hidden)
        width = dirs * hidden
    return cost


def base_name(config_name: str) -> str:
    """"gru-10st-inout-scratch" -> "gru-10st-inout" (a backend twin's configuration; a seed
    repeat "...-seed2" costs what its configuration costs)."""
    from rnn_core.experiments.protocol import repeat_of

    config_name = repeat_of(config_name) or config_name
    for suffix in TWIN_SUFFIXES:
        if config_name.endswith(suffix):
            return config_name.removesuffix(suffix)
    return config_name


def cell_of(experiment: str, config_name: str) -> str:
    """The recurrent cell a configuration trains (the model part of its name)."""
    parts = base_name(config_name).split("-")
    if experiment == "char_generation":
        return parts[1]
    if experiment == "ag_news":
        from rnn_core.experiments.ag_news import ARCHITECTURES

        arch = ARCHITECTURES.get(base_name(config_name))
        return arch.cell if arch else parts[0]
    return parts[0]


def workload(name: str, config, config_name: str, facts: dict) -> tuple[float, float]:
    """(training steps, cost per step) of one configuration: steps x cost is its training work.

    steps = epochs x sequence steps trained per epoch; cost = stack_cost + output layer.
    Input sizes are the experiments' own where they are simple, approximated otherwise (metro
    covariates ~3-6 inputs): next to hidden sizes of 64-512 they barely move the estimate.
    """
    tc = config.train
    parts = base_name(config_name).split("-")
    if name in ("metro_classification", "metro_forecasting"):
        cell = parts[0]
        flows = 2 if "inout" in parts else 1
        m = config.model
        mean_len = (config.min_length + config.max_length) / 2
        steps = tc.epochs * config.batches_per_epoch * config.batch_size * mean_len
        if name == "metro_classification":
            stations = int(next(p for p in parts if p.endswith("st")).removesuffix("st"))
            extra = 3 if "tod" in parts else 0
            out = m.hidden_size * stations / mean_len  # one output per window
        else:
            extra = 6 if "ctx" in parts else 0
            out = m.hidden_size * config.horizon * flows  # every step predicts t+1..t+H
        return steps, stack_cost(cell, flows + extra, m.hidden_size, m.num_layers) + out
    if name in ("char_generation", "vanishing_gradients"):
        if name == "char_generation":
            corpus, cell = parts[0], parts[1]
            chars = config.max_train_chars or facts["chars"][corpus] * (1 - config.val_fraction)
        else:
            corpus, cell = config.corpus, parts[0]
            chars = config.train_chars or facts["chars"][corpus] * (1 - config.val_fraction)
        vocab = facts["vocab"][corpus]
        m = config.model
        epochs = tc.epochs
        if cell == "mikolov":  # one sigmoid layer over the one-hot characters, its own knobs
            mk = getattr(config, "mikolov", None)
            hidden = mk.hidden_size if mk else m.hidden_size
            epochs = mk.epochs if mk else epochs
            cost = hidden * (vocab + hidden) + hidden * vocab
        else:
            cost = stack_cost(cell, m.embedding_dim, m.hidden_size, m.num_layers) \
                + m.hidden_size * vocab
        return epochs * chars, cost
    if name == "ag_news":
        from rnn_core.experiments.ag_news import ARCHITECTURES

        arch = ARCHITECTURES[base_name(config_name)]
        lengths = facts["ag_news_lengths"]["title_ids" if arch.text == "title" else "ids"]
        cap = config.max_length or max(lengths)
        rows = config.max_train_rows or len(lengths)
        tokens = sum(min(n, cap) for n in lengths) * rows / len(lengths)
        tokens *= 1 - config.val_fraction
        cost = stack_cost(arch.cell, arch.embedding_dim, arch.hidden_size, arch.num_layers,
                          2 if arch.bidirectional else 1)
        return tc.epochs * tokens, cost
    raise KeyError(f"no workload model for experiment {name!r}")


def data_facts(manifests: dict[str, dict]) -> dict:
    """Sizes the workload model reads: corpus characters and vocabularies, AG News lengths."""
    facts: dict = {"chars": {}, "vocab": {}, "ag_news_lengths": {}}
    for name, m in manifests.items():
        train = m.get("summary", {}).get("train", {})
        if "chars" in train:
            facts["chars"][name] = train["chars"]
            facts["vocab"][name] = m["vocab_size"]
    if "ag_news" in manifests:
        import pyarrow.parquet as pq

        table = pq.read_table(Path(manifests["ag_news"]["folder"]) / "train.parquet",
                              columns=["ids", "title_ids"])
        for column in ("ids", "title_ids"):
            facts["ag_news_lengths"][column] = [len(v) for v in table.column(column).to_pylist()]
    return facts


def list_schedule(durations: list[float], workers: int) -> float:
    """Makespan of greedy list scheduling in submission order: each configuration goes to the
    first worker that is free, as Dask's scheduler queue hands root tasks out."""
    free = [0.0] * workers
    for d in durations:
        i = min(range(workers), key=free.__getitem__)
        free[i] += d
    return max(free, default=0.0)


def estimate_full(measured: dict[tuple[str, str], float], facts: dict, workers: list[int],
                  task_overhead: float, fixed: dict[int, float], base_profile: str) -> dict:
    """The full profile's wall time with N workers from measured per-configuration seconds."""
    from flows.profiles import load_profile
    from rnn_core import experiments

    base, full = load_profile(base_profile), load_profile("full")
    ref: dict[str, list[tuple[str, float, float, float]]] = {}
    skipped = []
    for (name, cfg_name), seconds in measured.items():
        try:
            steps, cost = workload(name, base.config(name), cfg_name, facts)
        except (KeyError, ValueError, StopIteration, AttributeError) as err:
            skipped.append(f"{name}/{cfg_name} (measured): {type(err).__name__}: {err}")
            continue
        ref.setdefault(name, []).append((cfg_name, seconds, steps, cost))
    configs = []
    for name in [n for n in full.experiments if n in ref]:  # the experiments measured here
        config = full.config(name)
        for cfg_name in experiments.get(name).runs(config):  # seed repeats included
            try:
                steps, cost = workload(name, config, cfg_name, facts)
            except (KeyError, ValueError, StopIteration, AttributeError) as err:
                skipped.append(f"{name}/{cfg_name}: {type(err).__name__}: {err}")
                configs.append({"experiment": name, "config": cfg_name, "seconds": None})
                continue
            cell = cell_of(name, cfg_name)
            # The measured configuration nearest in cost per step (same cell first): small
            # models are dominated by per-step overhead, not multiply-adds.
            pick = min(ref[name], key=lambda c, cell=cell, name=name: (
                cell_of(name, c[0]) != cell, abs(math.log(cost / c[3]))))
            ref_name, ref_seconds, ref_steps, ref_cost = pick
            seconds = ref_seconds * (steps / ref_steps) * (cost / ref_cost)
            configs.append({"experiment": name, "config": cfg_name,
                            "seconds": round(seconds, 1), "scaled_from": ref_name,
                            "steps_ratio": round(steps / ref_steps, 3),
                            "step_cost_ratio": round(cost / ref_cost, 3)})
    durations = [c["seconds"] + task_overhead for c in configs if c["seconds"] is not None]
    serial = sum(durations)
    estimates = {}
    for n in workers:
        fifo = list_schedule(durations, n) if n > 1 else serial
        lpt = list_schedule(sorted(durations, reverse=True), n) if n > 1 else serial
        extra = fixed.get(min(n, 2), 0.0) if n > 1 else fixed.get(1, 0.0)
        estimates[str(n)] = {
            "wall_s_submission_order": round(fifo + extra),
            "wall_s_longest_first": round(lpt + extra),
            "lower_bound_s": round(max(serial / n, max(durations, default=0)) + extra),
            "hours_submission_order": round((fifo + extra) / 3600, 2),
        }
    return {
        "experiments": sorted({c["experiment"] for c in configs}),
        "configurations": len(configs),
        "training_seconds_serial": round(sum(c["seconds"] or 0 for c in configs)),
        "per_configuration": configs,
        "not_estimated": skipped,
        "wall_time_by_workers": estimates,
    }


ESTIMATE_METHOD = (
    "Each full-profile configuration's training time = the measured seconds (row.seconds, "
    "1-worker run) of the measured configuration of the same experiment nearest to it in cost "
    "per step (same cell preferred), times (its training steps / the measured one's) times (its "
    "cost per step / the measured one's). Steps = epochs x sequence steps per epoch (metro: "
    "batches x batch size x mean window length; characters: characters per epoch; AG News: "
    "tokens of the training rows after max_length). Cost per step = multiply-adds of the "
    "recurrent stack (gates x hidden x (input + hidden), every layer and direction) plus the "
    "output layer where it runs every step. Each configuration then pays the measured mean task "
    "overhead; N workers are simulated by greedy list scheduling in the grid's submission "
    "order (what Dask's queue does) and, for comparison, longest first; N > 1 adds the measured "
    "fixed costs of the 2-worker run (cluster and mlflow server, scaled by nothing).")
ESTIMATE_ASSUMPTIONS = [
    ("CPU like this one, one torch thread per configuration, one free core per worker (no "
     "contention: on 2 cores, 4 or 8 workers would only time-share)"),
    ("training time scales with multiply-adds: per-step overhead, which dominates tiny models "
     "(hidden 8-16), is only captured by scaling from a measured model of similar size"),
    ("evaluation, scoring and plotting time are not modelled (the full metro profile scores "
     "every window of every length: up to 200,000 per split and length), nor data loading"),
    "metro covariate input sizes approximated (3-6 inputs); dropout, AMP, cuDNN ignored",
    "the full profile is meant for a GPU: these are CPU hours, an upper bound there",
]
