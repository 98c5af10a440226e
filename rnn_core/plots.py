"""The experiments' plots, written as PNG files (matplotlib's headless Agg backend).

Each function takes plain numbers, writes one figure to `path` atomically and returns the path,
so experiments stay free of plotting details and tests can check the file exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on the machines this runs on
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def learning_curves(history: Sequence[Mapping[str, float]], keys: Sequence[str], path: Path,
                    title: str = "") -> Path:
    """One line per metric key against the epoch (history: one dict per epoch)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for key in keys:
        values = [row.get(key, np.nan) for row in history]
        ax.plot(epochs, values, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def series_by_x(series: Mapping[str, Mapping[float, float]], path: Path, xlabel: str,
                ylabel: str, title: str = "", logy: bool = False) -> Path:
    """Several named curves y(x): error vs test length, MSE vs horizon, gradient vs distance."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path,
                     title: str = "") -> Path:
    """Counts, rows = true class, columns = predicted class."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if matrix[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour)
    ax.set_title(title)
    return _save(fig, path)
