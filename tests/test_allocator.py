"""rnn_core.allocator: with MALLOC_TRIM_THRESHOLD_ set (as Dask's nanny sets it for its workers),
freed tensors go back to the OS and come back as fresh page faults every step; after
keep_freed_memory() the process reuses them. Counted in page faults, not timed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from rnn_core.allocator import keep_freed_memory

    torch.set_num_threads(1)
    x = torch.randn(64, 512)

    def faults(steps=50):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):  # a step's worth of 1 MB temporaries, allocated and freed
            y = (x.repeat(8, 1) * 2).exp()
            del y
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(5)
    pinned = faults()
    assert keep_freed_memory() and keep_freed_memory()  # once, then a no-op
    faults(5)
    print(pinned, faults())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what a Dask worker gets
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    pinned, kept = map(int, out.stdout.split())
    assert pinned > 50 * 256  # every step maps its MB temporaries afresh (4 kB pages)
    assert kept < pinned / 20, (pinned, kept)
