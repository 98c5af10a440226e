"""What every benchmark records beside its numbers, and how it writes them.

    cpu_name()                 "Intel(R) Xeon(R) Processor" (the CPU's model name)
    write_json(path, payload)  atomically: a crash never leaves half a result
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, payload: dict) -> None:
    """Temp file in the same folder then os.replace: a crash never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
