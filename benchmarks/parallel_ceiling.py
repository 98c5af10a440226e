"""What this machine gives two processes at once: the ceiling of any 2-worker speedup here.

    .venv/bin/python benchmarks/parallel_ceiling.py [--seconds 8] [--json out.json]

Runs the same fixed training workload (forward + backward + Adam of a one-layer LSTM, one torch
thread, the char model's shape: batch 32, length 50, 32 -> 256) in one process alone, then in
N processes started together (default 2), each doing the same number of steps. ceiling =
N x (time alone) / (time of the slowest of N together): 2.0 means two processes run as fast as
one; on a VM whose two vCPUs share a physical core (or whose host is busy) it is lower, and no
scheduling of the grid can beat it. Writes benchmarks/results/parallel_ceiling-<machine>.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _workload(steps: int, barrier, out) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(32, 256)
    head = torch.nn.Linear(256, 32)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3)
    x, y = torch.randn(50, 32, 32), torch.randn(50, 32, 32)
    for _ in range(3):  # warm-up, outside the timing
        opt.zero_grad()
        torch.nn.functional.mse_loss(head(lstm(x)[0]), y).backward()
        opt.step()
    if barrier is not None:
        barrier.wait()  # everyone starts at the same moment
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(head(lstm(x)[0]), y).backward()
        opt.step()
    out.put(time.perf_counter() - t0)


def _run(n: int, steps: int) -> list[float]:
    ctx = mp.get_context("spawn")  # fresh interpreters, as Dask's worker processes are
    barrier, out = (ctx.Barrier(n) if n > 1 else None), ctx.Queue()
    procs = [ctx.Process(target=_workload, args=(steps, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    times = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return times


def measure(processes: int = 2, seconds: float = 8.0) -> dict:
    """Time alone, time together, ceiling; the number of steps is set to take ~`seconds`."""
    probe = _run(1, 5)[0] / 5
    steps = max(5, int(seconds / probe))
    alone = _run(1, steps)[0]
    together = _run(processes, steps)
    return {
        "processes": processes, "steps": steps, "alone_s": round(alone, 2),
        "together_s": [round(t, 2) for t in together],
        "slowdown_beside_others": round(max(together) / alone, 3),
        "ceiling_speedup": round(processes * alone / max(together), 3),
        "workload": "torch.nn.LSTM(32, 256) + Linear, batch 32, length 50, forward + backward + "
                    "Adam, 1 torch thread per process, processes started together (spawn)",
        "load_average": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each timed run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks.machine import machine_info, machine_tag, write_json

    result = {"benchmark": "parallel_ceiling", "machine": machine_info(),
              **measure(args.processes, args.seconds)}
    print(f"{result['steps']} steps alone {result['alone_s']:.1f} s; {args.processes} together "
          f"{', '.join(f'{t:.1f}' for t in result['together_s'])} s -> each "
          f"{result['slowdown_beside_others']:.2f}x slower, ceiling "
          f"{result['ceiling_speedup']:.2f}x of {args.processes}x "
          f"(load {result['load_average'][0]:.2f})")
    path = args.json or REPO / "benchmarks" / "results" / \
        f"parallel_ceiling-{machine_tag(result['machine'])}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
