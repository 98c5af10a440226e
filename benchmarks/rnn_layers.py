"""Forward+backward time per batch: hand-written (scratch) vs torch.nn (fused) recurrent layers.

    .venv/bin/python benchmarks/rnn_layers.py                      # table on stdout
    .venv/bin/python benchmarks/rnn_layers.py --json benchmarks/results/rnn_layers-cpu-2core.json

Both backends get the same weights (state_dict copied). Scratch and fused runs alternate, so a
burst of load from other processes hits both alike; each time is the median of --repeats runs
after --warmup runs. Time-major input L x B x D, loss = outputs.sum() + h_n.sum().
--masked gives every sequence a random length in [L/2, L] (the fused side packs, the scratch
side masks), as padded batches of real text do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from rnn_core.cells import CELLS as REGISTERED
from rnn_core.layers import Recurrent

# (batch, length, input_size, hidden_size): the course's reference shape, then a larger one.
SHAPES = [(64, 50, 64, 128), (128, 100, 128, 256)]
# Every registered cell with a fused torch.nn equivalent to compare against, in registration
# order (rnn, lstm, gru).
CELLS = [name for name, cell in REGISTERED.items() if cell.fused is not None]


def machine_info(device: torch.device, threads: int) -> dict:
    """Where the numbers come from: they mean little without it."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device.type,
        "device_name": name,
        "load_average_before": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _step(layer, x, lengths=None) -> None:
    """One forward+backward pass, gradients cleared first as a training loop would."""
    layer.zero_grad(set_to_none=True)
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


def bench_one(cell: str, shape, device, warmup: int, repeats: int, masked: bool) -> dict:
    batch, length, input_size, hidden = shape
    scratch = Recurrent(cell, input_size, hidden, backend="scratch").to(device)
    fused = Recurrent(cell, input_size, hidden, backend="fused").to(device)
    fused.load_state_dict(scratch.state_dict(), strict=True)
    x = torch.randn(length, batch, input_size, device=device)
    lengths = torch.randint(length // 2, length + 1, (batch,)) if masked else None
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
        "cell": cell,
        "batch": batch,
        "length": length,
        "input_size": input_size,
        "hidden_size": hidden,
        "masked": masked,
        "scratch_ms": round(ms["scratch"], 3),
        "fused_ms": round(ms["fused"], 3),
        "ratio": round(ms["scratch"] / ms["fused"], 3),
        "scratch_range_ms": round(spread["scratch"], 3),
        "fused_range_ms": round(spread["fused"], 3),
        "repeats": repeats,
    }


def print_table(rows: list[dict], info: dict) -> None:
    print(
        f"# {info['device_name']} ({info['device']}), torch {info['torch']}, "
        f"{info['threads']} thread(s), median of {rows[0]['repeats']} fwd+bwd"
        + (", random lengths in [L/2, L]" if rows[0]["masked"] else "")
    )
    print(
        f"{'cell':5} {'B':>4} {'L':>4} {'D':>4} {'H':>4} {'scratch ms':>11} {'fused ms':>9} "
        f"{'scratch/fused':>13}"
    )
    for r in rows:
        print(
            f"{r['cell']:5} {r['batch']:4d} {r['length']:4d} {r['input_size']:4d} "
            f"{r['hidden_size']:4d} {r['scratch_ms']:11.2f} {r['fused_ms']:9.2f} "
            f"{r['ratio']:12.2f}x"
        )


def write_json(path: Path, payload: dict) -> None:
    """Temp file in the same folder then os.replace: a crash never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (cores are shared)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cells", nargs="+", choices=CELLS, default=CELLS)
    p.add_argument("--small-only", action="store_true", help="only the first (reference) shape")
    p.add_argument("--masked", action="store_true", help="random lengths in [L/2, L]")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info(device, args.threads)
    shapes = SHAPES[:1] if args.small_only else SHAPES
    rows = [
        bench_one(cell, shape, device, args.warmup, args.repeats, args.masked)
        for shape in shapes
        for cell in args.cells
    ]
    info["load_average_after"] = list(os.getloadavg())
    print_table(rows, info)
    if args.json:
        write_json(args.json, {"machine": info, "results": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
