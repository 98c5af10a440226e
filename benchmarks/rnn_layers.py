"""Forward+backward time per batch: hand-written (scratch) vs torch.nn (fused) recurrent layers.

    .venv/bin/python benchmarks/rnn_layers.py                      # table on stdout
    .venv/bin/python benchmarks/rnn_layers.py --json benchmarks/results/rnn_layers-cpu-2core.json

Both backends get the same weights (state_dict copied). Scratch and fused runs alternate, so a
burst of load from other processes hits both alike; each time is the median of --repeats runs
after --warmup runs. Time-major input L x B x D, loss = outputs.sum() + h_n.sum().
--masked gives every sequence a random length in [L/2, L] (the fused side packs, the scratch
side masks), as padded batches of real text do. glibc's allocator thresholds are raised as the
runner raises them for training (rnn_core.allocator; --glibc-defaults leaves them). The last
column names the default profile's configuration that trains the shape on the scratch backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from benchmarks.machine import code_version, machine_info, write_json
from rnn_core.allocator import keep_freed_memory
from rnn_core.cells import CELLS as REGISTERED
from rnn_core.course_models import MikolovRNN
from rnn_core.layers import Recurrent

# (batch, length, input_size, hidden_size): the course's reference shape, then a larger one.
SHAPES = [(64, 50, 64, 128), (128, 100, 128, 256)]
# Every registered cell with a fused torch.nn equivalent to compare against, in registration
# order (rnn, lstm, gru).
CELLS = [name for name, cell in REGISTERED.items() if cell.fused is not None]


class Case(NamedTuple):
    """One shape the default profile trains: where it comes from, the cell and its sizes."""

    label: str
    cell: str  # a registered cell, or "mikolov" (rnn_core.course_models.MikolovRNN)
    batch: int
    length: int
    input_size: int  # features per step (mikolov: the vocabulary, one-hot)
    hidden: int
    masked: bool = False
    trained_by: str = ""  # the default profile's configuration that trains it on scratch, if any


# The default profile's shapes (batch x typical length x input x hidden), one thread each.
PROFILE_CASES = [
    Case("ag_news lstm8", "lstm", 64, 40, 32, 8),
    Case("ag_news lstm8, padded", "lstm", 64, 40, 32, 8, masked=True,
         trained_by="ag_news/lstm8-scratch"),
    Case("ag_news simplernn16", "rnn", 64, 40, 32, 16),
    Case("ag_news simplernn16, padded", "rnn", 64, 40, 32, 16, masked=True),
    Case("metro rnn64 (course)", "rnn", 64, 40, 2, 64, trained_by="metro_*/course-*"),
    Case("metro gru64", "gru", 64, 40, 2, 64,
         trained_by="metro_classification/gru-10st-inout-scratch"),
    Case("metro gru64 + context", "gru", 64, 40, 14, 64,
         trained_by="metro_forecasting/gru-inout-ctx-scratch"),
    Case("char rnn256", "rnn", 32, 50, 32, 256, trained_by="char_generation/trump-rnn-scratch"),
    Case("char lstm256", "lstm", 32, 50, 32, 256),
    Case("char gru256", "gru", 32, 50, 32, 256),
    Case("char mikolov128", "mikolov", 32, 50, 85, 128,
         trained_by="char_generation/moliere-mikolov"),
    Case("vanishing lstm128", "lstm", 16, 100, 32, 128,
         trained_by="vanishing_gradients/lstm-scratch"),
]


def run_info(device: torch.device, threads: int) -> dict:
    """Where the numbers come from (benchmarks.machine), and how this run measured them."""
    info = machine_info()
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return {**info, "threads": threads, "device": device.type,
            "load_average_before": list(os.getloadavg())}


class TorchMikolov(nn.Module):
    """Mikolov's sigmoid RNN computed by torch.nn.RNN (tanh), the fused reference for
    `MikolovRNN`: with u = 2s - 1, sigmoid(z) = (tanh(z / 2) + 1) / 2 gives

        u_t = tanh(W_x/2 onehot(c_t) + W_h/4 u_{t-1} + b/2 + W_h 1/4),   s_t = (u_t + 1) / 2

    so an nn.RNN over one-hot inputs with those weights yields the very same states."""

    def __init__(self, model: MikolovRNN):
        super().__init__()
        vocab, hidden = model.vocab_size, model.hidden_size
        self.vocab_size = vocab
        self.rnn = nn.RNN(vocab, hidden)
        w_x, w_h = model.weight.detach()[:, :vocab], model.weight.detach()[:, vocab:]
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(w_x / 2)
            self.rnn.weight_hh_l0.copy_(w_h / 4)
            self.rnn.bias_ih_l0.copy_(model.bias.detach() / 2 + w_h.sum(1) / 4)
            self.rnn.bias_hh_l0.zero_()

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(chars, self.vocab_size).to(self.rnn.weight_ih_l0.dtype)
        u0 = -torch.ones(1, chars.shape[1], self.rnn.hidden_size, device=chars.device)
        u, _ = self.rnn(onehot, u0)
        return (u + 1) / 2  # L x B x H states s_t


def _step(layer, x, lengths=None) -> None:
    """One forward+backward pass, gradients cleared first as a training loop would."""
    layer.zero_grad(set_to_none=True)
    if isinstance(layer, (MikolovRNN, TorchMikolov)):
        states = layer(x)
        (states.sum() + states[-1].sum()).backward()
        return
    outputs, state = layer(x, lengths=lengths)
    h_n = state[0] if isinstance(state, tuple) else state
    (outputs.sum() + h_n.sum()).backward()


def _timed(layer, x, lengths, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    _step(layer, x, lengths)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _layers(case: Case, device):
    """(scratch, fused, x, lengths): both sides computing the same function, same weights."""
    if case.cell == "mikolov":
        scratch = MikolovRNN(case.input_size, case.hidden).to(device)
        fused = TorchMikolov(scratch).to(device)
        x = torch.randint(0, case.input_size, (case.length, case.batch), device=device)
        with torch.no_grad():  # the reference must compute the same states
            torch.testing.assert_close(fused(x), scratch(x), atol=1e-5, rtol=1e-4)
        return scratch, fused, x, None
    scratch = Recurrent(case.cell, case.input_size, case.hidden, backend="scratch").to(device)
    fused = Recurrent(case.cell, case.input_size, case.hidden, backend="fused").to(device)
    fused.load_state_dict(scratch.state_dict(), strict=True)
    x = torch.randn(case.length, case.batch, case.input_size, device=device)
    lengths = None
    if case.masked:
        lengths = torch.randint(case.length // 2, case.length + 1, (case.batch,))
        lengths[0] = case.length
    return scratch, fused, x, lengths


def bench_one(case: Case, device, warmup: int, repeats: int) -> dict:
    scratch, fused, x, lengths = _layers(case, device)
    for _ in range(warmup):
        _step(scratch, x, lengths)
        _step(fused, x, lengths)
    times = {"scratch": [], "fused": []}
    for _ in range(repeats):  # alternate so background load hits both backends alike
        times["scratch"].append(_timed(scratch, x, lengths, device))
        times["fused"].append(_timed(fused, x, lengths, device))
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    spread = {k: 1000 * (max(v) - min(v)) for k, v in times.items()}
    return {
        "label": case.label,
        "cell": case.cell,
        "batch": case.batch,
        "length": case.length,
        "input_size": case.input_size,
        "hidden_size": case.hidden,
        "masked": case.masked,
        "scratch_ms": round(ms["scratch"], 3),
        "fused_ms": round(ms["fused"], 3),
        "ratio": round(ms["scratch"] / ms["fused"], 3),
        "scratch_range_ms": round(spread["scratch"], 3),
        "fused_range_ms": round(spread["fused"], 3),
        "repeats": repeats,
        "trained_by": case.trained_by,
    }


def print_table(rows: list[dict], info: dict) -> None:
    print(
        f"# {info['device_name']} ({info['device']}), torch {info['torch']}, "
        f"{info['threads']} thread(s), median of {rows[0]['repeats']} fwd+bwd; "
        "padded = random lengths in [L/2, L]"
    )
    print(
        f"{'case':30} {'cell':7} {'B':>4} {'L':>4} {'D':>4} {'H':>4} {'scratch ms':>11} "
        f"{'fused ms':>9} {'scratch/fused':>13}  trained on scratch by"
    )
    for r in rows:
        print(
            f"{r['label']:30} {r['cell']:7} {r['batch']:4d} {r['length']:4d} "
            f"{r['input_size']:4d} {r['hidden_size']:4d} {r['scratch_ms']:11.2f} "
            f"{r['fused_ms']:9.2f} {r['ratio']:12.2f}x  {r['trained_by']}"
        )


def reference_cases(cells: list[str], shapes, masked: bool) -> list[Case]:
    return [Case(f"reference {b}x{n}x{d}x{h}" + (", padded" if masked else ""), cell, b, n, d, h,
                 masked)
            for b, n, d, h in shapes for cell in cells]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (cores are shared)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cells", nargs="+", choices=CELLS, default=CELLS,
                   help="cells of the reference shapes")
    p.add_argument("--small-only", action="store_true", help="only the first reference shape")
    p.add_argument("--masked", action="store_true", help="reference shapes padded: random "
                   "lengths in [L/2, L]")
    p.add_argument("--profile-only", action="store_true",
                   help="only the default profile's shapes (PROFILE_CASES)")
    p.add_argument("--no-profile", action="store_true", help="only the reference shapes")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="only the cases whose label contains one of these texts")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--glibc-defaults", action="store_true",
                   help="leave glibc's allocator thresholds alone (training raises them)")
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = run_info(device, args.threads)
    # As the runner does for every training process (rnn_core.allocator): without it large
    # freed tensors go back to the kernel and are faulted in again, which taxes the scratch
    # kernels' per-step buffers (e.g. 3,000 page faults a batch at the vanishing LSTM(128)).
    info["allocator"] = ("glibc defaults" if args.glibc_defaults
                         else "keep_freed_memory" if keep_freed_memory() else "not settable")
    shapes = SHAPES[:1] if args.small_only else SHAPES
    cases = [] if args.profile_only else reference_cases(args.cells, shapes, args.masked)
    cases += [] if args.no_profile else PROFILE_CASES
    if args.only:
        cases = [c for c in cases if any(text in c.label for text in args.only)]
    rows = [bench_one(case, device, args.warmup, args.repeats) for case in cases]
    info["load_average_after"] = list(os.getloadavg())
    print_table(rows, info)
    if args.json:
        write_json(args.json, {"machine": info, "code": code_version(None), "results": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
