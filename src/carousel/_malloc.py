"""glibc allocator settings for the training command.

A training step allocates and frees the same large buffers every step (activations, gradients,
the fused kernels' workspaces). glibc's ``malloc`` serves blocks above its *mmap threshold*
with ``mmap`` and unmaps them on ``free``, and returns the top of the heap to the system above
its *trim threshold*; either way the next step faults every page of its buffers in again and
the kernel zeroes them. On the ``charlm`` default (a 2x128 LSTM, 64 rows of 100 characters,
one thread) that was 61,000 page faults a second and a quarter of the process's CPU time spent
in the kernel. Raising both thresholds to 1 GiB keeps freed memory in the heap for the next
step: the same 6000-step training took 555 CPU seconds instead of 715 (system time 5 s instead
of 184), with bit-identical results (docs/results.md, Character-level language model). The
price is that the process keeps its peak heap until it exits, which is what a training run
needs anyway.

``carousel train`` calls :func:`keep_freed_memory` once at start. It is not done on import:
the allocator is the process's, not the library's.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30

# variables through which a user sets glibc's allocator up themselves
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB (see the module docstring).

    Nothing is changed off Linux or glibc, when ``CAROUSEL_MALLOC=default`` is set, or when
    the user configured glibc's allocator (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``GLIBC_TUNABLES``) or preloaded another one (``LD_PRELOAD``).

    Returns:
        Whether the thresholds were changed.
    """
    if os.environ.get("CAROUSEL_MALLOC", "").lower() == "default":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in (*_USER_SETTINGS, "LD_PRELOAD")):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: fixing the trim threshold alone would only stop glibc from
    # raising the mmap threshold by itself, which makes matters worse
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )
    logger.debug("glibc mmap and trim thresholds %s", "raised to 1 GiB" if ok else "unchanged")
    return ok
