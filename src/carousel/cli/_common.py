"""Helpers shared by the training commands: logging to the terminal, error reporting."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable

__all__ = ["format_metrics", "one_line_errors", "setup_logging"]

Command = Callable[[argparse.Namespace], int]


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


def one_line_errors(prefix: str) -> Callable[[Command], Command]:
    """A command whose ``ValueError``/``TypeError`` (the library's checks of its arguments,
    which name them) is printed as one line, ``"{prefix}: {message}"``, with exit status 2,
    not as a traceback."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except (ValueError, TypeError) as e:
                print(f"{prefix}: {e}", file=sys.stderr)
                return 2

        return run

    return wrap
