"""What every benchmark records beside its numbers, and how it writes them.

    cpu_name()                 "Intel(R) Xeon(R) Processor" (the CPU's model name)
    machine_info()             platform, python, torch, cores, CPU and GPU names, start time
    machine_tag(info)          "cpu-2core" / "gpu-h100": the results file's machine part
    code_version(given)        the commit measured, and whether the checkout had local changes
    write_json(path, payload)  atomically: a crash never leaves half a result
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "device_name": cpu_name(),
            "gpu": gpu, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def machine_tag(info: dict) -> str:
    """cpu-2core on this machine kind; gpu-<name> where training would use a GPU."""
    if info["gpu"]:
        return "gpu-" + info["gpu"].lower().replace("nvidia", "").strip().replace(" ", "-")
    return f"cpu-{info['cpu_count']}core"


def code_version(given: str | None) -> dict:
    """The commit measured, and whether the checkout had local changes."""

    def git(*a):
        out = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10,
                             check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": given or commit or "unknown",
            "checkout": ("git checkout, " + ("local changes" if dirty else "clean"))
            if commit else "an export of the commit (no .git)"}


def write_json(path: Path, payload: dict) -> None:
    """Temp file in the same folder then os.replace: a crash never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
