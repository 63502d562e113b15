"""Facts about the machine that caches of compiled code are keyed by."""

from __future__ import annotations

import platform


def cpu_id() -> str:
    """The CPU's model and feature flags (Linux), else the platform's description: a library
    built with ``-march=native`` is reused only on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            keep = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(keep) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()
