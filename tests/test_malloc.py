"""carousel._malloc: the allocator settings of the training command."""

from __future__ import annotations

import platform
import sys

import pytest

from carousel._malloc import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_raises_the_thresholds_on_glibc(monkeypatch):
    for name in ("CAROUSEL_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "GLIBC_TUNABLES", "LD_PRELOAD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize(
    "name, value",
    [("CAROUSEL_MALLOC", "default"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
     ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"), ("LD_PRELOAD", "libjemalloc.so")],
)  # fmt: skip
def test_leaves_a_user_setting_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False
