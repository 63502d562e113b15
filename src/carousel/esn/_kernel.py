"""An optional compiled CPU loop for the reservoir recurrence (``impl="compiled"``).

For one sequence on the CPU, torch spends more time dispatching the three small operations of
each step (matrix-vector product, tanh, lerp) than computing them; for a 100-unit reservoir the
whole step is about a microsecond of arithmetic. This module compiles a few lines of C (the
whole time loop, dense or CSR recurrent matrix, float32 or float64) with the system C compiler
into a shared library cached under ``~/.cache/carousel`` (or ``$CAROUSEL_CACHE``), and calls it
through ``ctypes`` on the tensors' memory. Nothing is compiled until the compiled path is first
asked for; without a compiler, :func:`load` returns ``None`` and the reservoir uses torch.

The results agree with the torch path to rounding (the sums run in a different order and tanh
comes from libm), which is why it is never chosen automatically.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "load", "recur"]

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

#define DENSE(NAME, REAL, TANH)                                                            \
void NAME(int64_t T, int64_t H, const REAL* W, const REAL* drive, const REAL* h0,         \
          double leak, REAL* out) {                                                       \
    const REAL a = (REAL)leak, b = (REAL)(1.0 - leak);                                    \
    const REAL* h = h0;                                                                   \
    for (int64_t t = 0; t < T; ++t) {                                                     \
        const REAL* d = drive + t * H;                                                    \
        REAL* s = out + t * H;                                                            \
        for (int64_t i = 0; i < H; ++i) {                                                 \
            const REAL* w = W + i * H;                                                    \
            REAL acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;                                  \
            int64_t j = 0;                                                                \
            for (; j + 4 <= H; j += 4) {                                                  \
                acc0 += w[j] * h[j];                                                      \
                acc1 += w[j + 1] * h[j + 1];                                              \
                acc2 += w[j + 2] * h[j + 2];                                              \
                acc3 += w[j + 3] * h[j + 3];                                              \
            }                                                                             \
            for (; j < H; ++j) acc0 += w[j] * h[j];                                       \
            REAL pre = d[i] + ((acc0 + acc1) + (acc2 + acc3));                            \
            s[i] = b * h[i] + a * TANH(pre);                                              \
        }                                                                                 \
        h = s;                                                                            \
    }                                                                                     \
}

#define CSR(NAME, REAL, TANH)                                                              \
void NAME(int64_t T, int64_t H, const int32_t* crow, const int32_t* col, const REAL* val, \
          const REAL* drive, const REAL* h0, double leak, REAL* out) {                    \
    const REAL a = (REAL)leak, b = (REAL)(1.0 - leak);                                    \
    const REAL* h = h0;                                                                   \
    for (int64_t t = 0; t < T; ++t) {                                                     \
        const REAL* d = drive + t * H;                                                    \
        REAL* s = out + t * H;                                                            \
        for (int64_t i = 0; i < H; ++i) {                                                 \
            REAL acc0 = 0, acc1 = 0;                                                      \
            int32_t k = crow[i], end = crow[i + 1];                                       \
            for (; k + 2 <= end; k += 2) {                                                \
                acc0 += val[k] * h[col[k]];                                               \
                acc1 += val[k + 1] * h[col[k + 1]];                                       \
            }                                                                             \
            if (k < end) acc0 += val[k] * h[col[k]];                                      \
            REAL pre = d[i] + (acc0 + acc1);                                              \
            s[i] = b * h[i] + a * TANH(pre);                                              \
        }                                                                                 \
        h = s;                                                                            \
    }                                                                                     \
}

DENSE(esn_dense_f64, double, tanh)
DENSE(esn_dense_f32, float, tanhf)
CSR(esn_csr_f64, double, tanh)
CSR(esn_csr_f32, float, tanhf)
"""

_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno"]
_NATIVE = ["-march=native"]  # tried first; the cache key includes the CPU model
_lib: ctypes.CDLL | None = None
_tried = False
_compiler: str | None = None
_warned = False


def _cache_dir() -> Path:
    root = os.environ.get("CAROUSEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "carousel"
    )
    return Path(root)


def _cpu_model() -> str:
    """Identifies the CPU, so a library built with -march=native is not reused elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def load(*, quiet: bool = False) -> ctypes.CDLL | None:
    """The compiled library (compiled on first use), or ``None`` if there is no C compiler or
    compilation fails. A missing compiler is logged once, at the first call that is not
    ``quiet`` (``impl="auto"`` falls back silently); the search for it runs once."""
    global _lib, _tried, _compiler, _warned
    if not _tried:
        _tried = True
        _compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if _compiler is not None:
            _lib = _build(_compiler)
    if _compiler is None and not quiet and not _warned:
        _warned = True
        log.warning("carousel.esn: no C compiler found; impl='compiled' falls back to torch")
    return _lib


def _build(compiler: str) -> ctypes.CDLL | None:
    """Compile (or reuse the cached) library with ``compiler`` and declare its functions."""
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + _cpu_model()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"esn_kernel_{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "esn_kernel.c"
                src.write_text(_SOURCE)
                out = Path(tmp) / "esn_kernel.so"
                try:
                    subprocess.run(
                        [compiler, *_FLAGS, *_NATIVE, str(src), "-o", str(out), "-lm"],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                except subprocess.CalledProcessError:  # e.g. a compiler without -march=native
                    subprocess.run(
                        [compiler, *_FLAGS, str(src), "-o", str(out), "-lm"],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                os.replace(out, target)  # atomic: concurrent builders cannot leave half a file
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("carousel.esn: compiling the reservoir kernel failed (%s); using torch", detail)
        return None
    i64, dbl, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    for name in ("esn_dense_f64", "esn_dense_f32"):
        getattr(lib, name).argtypes = [i64, i64, ptr, ptr, ptr, dbl, ptr]
        getattr(lib, name).restype = None
    for name in ("esn_csr_f64", "esn_csr_f32"):
        getattr(lib, name).argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, dbl, ptr]
        getattr(lib, name).restype = None
    return lib


def available(weight: Tensor) -> bool:
    """Whether the compiled loop can run this recurrent matrix (CPU, float32/float64)."""
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)


def _mostly_zero(weight: Tensor, threshold: float = 0.3) -> bool:
    """Whether at most ``threshold`` of the entries are nonzero."""
    return int(torch.count_nonzero(weight)) <= threshold * weight.numel()


def recur(weight: Tensor, drive: Tensor, state: Tensor, leak_rate: float) -> Tensor | None:
    """The whole recurrence for one sequence: ``drive (T, H)``, ``state (H,)`` -> states
    ``(T, H)``; ``None`` if the library is unavailable."""
    lib = load()
    if lib is None or not available(weight):
        return None
    drive = drive.contiguous()
    state = state.contiguous()
    out = torch.empty_like(drive)
    T, H = drive.shape
    suffix = "f64" if weight.dtype == torch.float64 else "f32"
    if weight.layout == torch.strided and _mostly_zero(weight):
        # a dense matrix that is mostly zeros (the reservoir's connectivity, e.g. 10%): the
        # CSR loop does only the nonzero products (10x fewer at 10%)
        from carousel.esn.matrices import to_sparse_csr

        weight = to_sparse_csr(weight)
    if weight.layout == torch.sparse_csr:
        crow = weight.crow_indices()
        col = weight.col_indices()
        if crow.dtype != torch.int32:
            crow, col = crow.to(torch.int32), col.to(torch.int32)
        vals = weight.values().contiguous()
        getattr(lib, f"esn_csr_{suffix}")(
            T,
            H,
            crow.data_ptr(),
            col.data_ptr(),
            vals.data_ptr(),
            drive.data_ptr(),
            state.data_ptr(),
            float(leak_rate),
            out.data_ptr(),
        )
    else:
        w = weight.contiguous()
        getattr(lib, f"esn_dense_{suffix}")(
            T,
            H,
            w.data_ptr(),
            drive.data_ptr(),
            state.data_ptr(),
            float(leak_rate),
            out.data_ptr(),
        )
    return out
