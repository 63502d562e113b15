"""Interrupting a training run without losing its steps.

While :func:`deferred_interrupt` is active, the first SIGINT (Ctrl-C) or SIGTERM (a job
scheduler's stop) only sets a flag: the loop finishes the step it is in, saves a checkpoint at
that step and stops, so running the same command again resumes exactly where it stopped. A
second signal stops at once (``KeyboardInterrupt``), losing the steps since the last checkpoint.

Signal handlers can only be installed from the main thread and are left alone in processes
that ignore the signal (``nohup``) and in data-parallel runs, where the processes would reach
the checkpoint's collectives at different steps.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["deferred_interrupt"]

log = logging.getLogger("carousel.train")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[Callable[[], str | None]]:
    """Defer SIGINT and SIGTERM to the end of the current step.

    Yields:
        A function that returns the name of the signal received (``"SIGINT"``), or ``None``.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:  # a second signal: stop now
            raise KeyboardInterrupt
        received.append(name)
        log.warning("%s: finishing this step and saving a checkpoint (again to stop at once)", name)

    previous = {}
    for sig in _SIGNALS:
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN:
            continue  # the process was told to ignore it
        previous[sig] = old
        signal.signal(sig, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
