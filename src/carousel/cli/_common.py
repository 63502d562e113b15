"""Helpers shared by the training commands: logging to the terminal, error reporting."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["format_metrics", "setup_logging"]


class _TqdmHandler(logging.Handler):
    """Writes log records through ``tqdm.write`` so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(quiet: bool = False) -> None:
    """Show carousel's log messages on stderr (warnings only with ``quiet`` or on processes
    other than rank 0 under torchrun)."""
    logger = logging.getLogger("carousel")
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logger.setLevel(level)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        prefix = f"[rank {rank}] " if rank else ""
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


def format_metrics(metrics: dict[str, float], first: str | None = None) -> str:
    """``"accuracy 1.0000, bit_accuracy 1.0000, loss 0.000135"`` (``first`` leading)."""
    keys = sorted(metrics, key=lambda k: (k != first, k == "loss", k))
    return ", ".join(
        f"{k} {metrics[k]:.4f}"
        if abs(metrics[k]) >= 1e-3 or metrics[k] == 0
        else f"{k} {metrics[k]:.3g}"
        for k in keys
    )
