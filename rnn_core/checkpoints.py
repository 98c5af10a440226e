"""Checkpoints: state dicts, configs and RNG states; never a pickled module.

A checkpoint is a dict of tensors and plain values, written to a temp file in the same folder and
moved into place with os.replace (a crash never leaves half a file where a good one was), and read
back with `torch.load(..., weights_only=True)` so that loading cannot run code.

    {"model_state", "optimizer_state", "scaler_state", "config" (models.config_dict),
     "train_config" (dict), "epoch" (finished epochs), "step", "history" (list of dicts),
     "rng" (torch, cuda, numpy, python)}
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnn_core.models import build_model

LAST = "last.pt"  # the file `train` writes and resumes from, inside its checkpoint folder


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a temp file next to `path`, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (weights_only); a clear error naming the file if it is not one."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a readable rnnflow checkpoint ({err})") from err
    missing = {"model_state", "config"} - set(payload if isinstance(payload, dict) else ())
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's config and load its weights (eval mode)."""
    payload = load_checkpoint(path, map_location=device)
    model = build_model(payload["config"])
    model.load_state_dict(payload["model_state"])
    return model.to(device).eval()


def rng_state() -> dict[str, Any]:
    """Every random generator a training run draws from, in a weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
