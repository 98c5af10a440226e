"""Training progress for Prefect runs: epoch summaries to the run logger, a bar on a terminal."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm


class PrefectProgress:
    """Training callbacks (see rnn_core.training) that report to a logger and a tqdm bar."""

    def __init__(self, label: str, logger: logging.Logger | logging.LoggerAdapter):
        self.label = label
        self.logger = logger
        self.bar: tqdm | None = None

    def on_batch_end(self, step: int, loss: float) -> None:
        if self.bar is None:  # first batch of an epoch; the loop does not announce epochs
            self.bar = tqdm(desc=self.label, unit="batch", leave=False,
                            disable=not sys.stderr.isatty())
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        # Per-class figures (80 stations: 80 numbers) stay in MLflow, out of the log line.
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                          if k != "epoch" and "_class_" not in k)
        self.logger.info("%s epoch %d: %s", self.label, epoch + 1, shown)
