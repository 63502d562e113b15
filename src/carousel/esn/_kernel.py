"""An optional compiled CPU loop for the reservoir recurrence (``impl="compiled"``).

For one sequence on the CPU, torch spends more time dispatching the three small operations of
each step (matrix-vector product, tanh, lerp) than computing them; for a 100-unit reservoir the
whole step is about a microsecond of arithmetic. This module compiles a few lines of C (the
whole time loop, dense or CSR recurrent matrix, float32 or float64) with the system C compiler
into a shared library cached under ``~/.cache/carousel`` (or ``$CAROUSEL_CACHE``), and calls it
through ``ctypes`` on the tensors' memory. Nothing is compiled until the compiled path is first
asked for; without a compiler, :func:`load` returns ``None`` and the reservoir uses torch.

Each step computes the row products (CSR rows with 16-bit column indices up to 65,536 units,
gathered 8 lanes at a time in float32 and in four scalar chains in float64; dense rows as
vectorised dot products), then the leaky tanh update in one vectorised pass (glibc's vector
tanh where libmvec has it); with ``threads > 1`` (OpenMP) every step's rows are split between
the threads, which meet at a barrier after each step. The results agree with the torch path to
rounding (the sums run in a different order, tanh comes from libm) and do not depend on the
number of threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from carousel._platform import cpu_id

__all__ = ["available", "load", "recur"]

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef CAROUSEL_MVEC
/* glibc's libmvec (2.35+) has vector tanh; its header declares it only under -ffast-math.
   Declared here, the update loops under `omp simd` call the vector variants. */
__attribute__((simd("notinbranch"))) double tanh(double);
__attribute__((simd("notinbranch"))) float tanhf(float);
#endif

/* The rows [lo, hi) of thread `me` of `n`: about equal shares of the nonzeros (crow given)
   or of the rows (dense). */
static void share(int64_t H, const int32_t* crow, int me, int n, int64_t* lo, int64_t* hi) {
    if (n <= 1) {
        *lo = 0;
        *hi = H;
        return;
    }
    int64_t bound[2];
    for (int e = 0; e < 2; ++e) {
        int64_t part = me + e;
        if (crow == 0 || part == 0 || part == n) {
            bound[e] = H * part / n;
            continue;
        }
        int64_t target = (int64_t)crow[H] * part / n, a = 0, b = H;
        while (a < b) { /* the first row that starts at or after target */
            int64_t m = (a + b) / 2;
            if (crow[m] < target) a = m + 1; else b = m;
        }
        bound[e] = a;
    }
    /* interior bounds on multiples of 16 rows: every thread count then splits the update
       loop into the same vector blocks, so the results do not depend on it */
    for (int e = 0; e < 2; ++e)
        if (me + e != 0 && me + e != n) bound[e] = bound[e] / 16 * 16;
    *lo = bound[0];
    *hi = bound[1];
}

/* The whole loop: one step's row products into s, then s = (1 - a) h + a tanh(drive + s)
   over the same rows (vectorised tanh where libmvec is there), then a barrier. With
   nthreads > 1 one parallel region spans all steps, each thread owning a block of rows. */
#define LOOP(NAME, REAL, TANH, MATRIX, ROWDOT, CROW)                                       \
void NAME(int64_t T, int64_t H, MATRIX, const REAL* drive, const REAL* h0, double leak,    \
          REAL* out, int nthreads) {                                                      \
    const REAL a = (REAL)leak, b = (REAL)(1.0 - leak);                                    \
    _Pragma("omp parallel num_threads(nthreads) if (nthreads > 1)")                       \
    {                                                                                     \
        int me = 0, n = 1;                                                                \
        OMP_IDS                                                                           \
        int64_t lo, hi;                                                                   \
        share(H, CROW, me, n, &lo, &hi);                                                  \
        const REAL* h = h0;                                                               \
        for (int64_t t = 0; t < T; ++t) {                                                 \
            const REAL* d = drive + t * H;                                                \
            REAL* s = out + t * H;                                                        \
            for (int64_t i = lo; i < hi; ++i) {                                           \
                REAL acc = 0;                                                             \
                ROWDOT                                                                    \
                s[i] = acc;                                                               \
            }                                                                             \
            _Pragma("omp simd")                                                           \
            for (int64_t i = lo; i < hi; ++i) s[i] = b * h[i] + a * TANH(d[i] + s[i]);    \
            h = s;                                                                        \
            if (n > 1) {                                                                  \
                _Pragma("omp barrier")                                                    \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
}

#ifdef _OPENMP
#define OMP_IDS me = omp_get_thread_num(); n = omp_get_num_threads();
#else
#define OMP_IDS
#endif

#define DENSE_MATRIX(REAL) const REAL* W
#define DENSE_ROW                                                                         \
    const __typeof__(acc)* w = W + i * H;                                                 \
    _Pragma("omp simd reduction(+:acc)")                                                  \
    for (int64_t j = 0; j < H; ++j) acc += w[j] * h[j];
/* A CSR row's products. Column indices are 16-bit (uint16) up to 65,536 units: a third less
   matrix to stream every step in float32, a fifth in float64. Measured on AMD Zen 4 (one
   thread, 1000 and 5000 units, 10% connectivity), the fastest forms were: float32, gathers
   of 8 lanes (0.023 / 0.59 ms a step, against 0.025 / 0.62 with 4 lanes and 32-bit
   indices); float64, four scalar chains (0.029 ms at 1000 units, against 0.037 for 4-lane
   gathers; 1.41 against 1.35 ms at 5000 units, where the matrix streams from memory). */
#define CSR_MATRIX(REAL) const int32_t* crow, const int32_t* col, const REAL* val
#define CSR16_MATRIX(REAL) const int32_t* crow, const uint16_t* col, const REAL* val
#define CSR_ROW_F32                                                                       \
    const int32_t end = crow[i + 1];                                                      \
    _Pragma("omp simd reduction(+:acc) simdlen(8)")                                       \
    for (int32_t k = crow[i]; k < end; ++k) acc += val[k] * h[col[k]];
#define CSR_ROW_F64                                                                       \
    int32_t k = crow[i];                                                                  \
    const int32_t end = crow[i + 1];                                                      \
    double a1 = 0, a2 = 0, a3 = 0;                                                        \
    for (; k + 4 <= end; k += 4) {                                                        \
        acc += val[k] * h[col[k]];                                                        \
        a1 += val[k + 1] * h[col[k + 1]];                                                 \
        a2 += val[k + 2] * h[col[k + 2]];                                                 \
        a3 += val[k + 3] * h[col[k + 3]];                                                 \
    }                                                                                     \
    for (; k < end; ++k) acc += val[k] * h[col[k]];                                       \
    acc = (acc + a1) + (a2 + a3);

LOOP(esn_dense_f64, double, tanh, DENSE_MATRIX(double), DENSE_ROW, 0)
LOOP(esn_dense_f32, float, tanhf, DENSE_MATRIX(float), DENSE_ROW, 0)
LOOP(esn_csr_f64, double, tanh, CSR_MATRIX(double), CSR_ROW_F64, crow)
LOOP(esn_csr_f32, float, tanhf, CSR_MATRIX(float), CSR_ROW_F32, crow)
LOOP(esn_csr16_f64, double, tanh, CSR16_MATRIX(double), CSR_ROW_F64, crow)
LOOP(esn_csr16_f32, float, tanhf, CSR16_MATRIX(float), CSR_ROW_F32, crow)
"""

_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno"]
#: Tried in order, the first that builds and loads is kept: OpenMP threads and glibc's vector
#: tanh (``-z defs`` makes a libmvec without tanh fail at link time, not at load), then
#: OpenMP's simd loops alone, then the plain flags (a compiler without ``-march=native``).
#: The cache key includes the flags and the CPU model.
_VARIANTS = [
    ["-march=native", "-fopenmp", "-DCAROUSEL_MVEC", "-Wl,-z,defs", "-lmvec", "-lm"],
    ["-march=native", "-fopenmp-simd", "-lm"],
    ["-lm"],
]
#: Up to this many units the CSR loop reads 16-bit column indices.
_MAX_16BIT_UNITS = 2**16
_lib: ctypes.CDLL | None = None
_tried = False
_compiler: str | None = None
_warned = False


def _cache_dir() -> Path:
    root = os.environ.get("CAROUSEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "carousel"
    )
    return Path(root)


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
    errors = []
    for flags in _VARIANTS:
        text = _SOURCE + " ".join(_FLAGS + flags) + cpu_id()
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        target = _cache_dir() / f"esn_kernel_{key}.so"
        try:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory() as tmp:
                    src = Path(tmp) / "esn_kernel.c"
                    src.write_text(_SOURCE)
                    out = Path(tmp) / "esn_kernel.so"
                    subprocess.run(
                        [compiler, *_FLAGS, str(src), "-o", str(out), *flags],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    os.replace(out, target)  # atomic: concurrent builders never see half a file
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.CalledProcessError) as exc:
            errors.append(getattr(exc, "stderr", "") or str(exc))
    else:
        log.warning(
            "carousel.esn: compiling the reservoir kernel failed (%s); using torch", errors[-1]
        )
        return None
    i64, dbl, ptr, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    for name in ("esn_dense_f64", "esn_dense_f32"):
        getattr(lib, name).argtypes = [i64, i64, ptr, ptr, ptr, dbl, ptr, i32]
        getattr(lib, name).restype = None
    for name in ("esn_csr_f64", "esn_csr_f32", "esn_csr16_f64", "esn_csr16_f32"):
        getattr(lib, name).argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, dbl, ptr, i32]
        getattr(lib, name).restype = None
    return lib


def available(weight: Tensor) -> bool:
    """Whether the compiled loop can run this recurrent matrix (CPU, float32/float64)."""
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)


def _mostly_zero(weight: Tensor, threshold: float = 0.3) -> bool:
    """Whether at most ``threshold`` of the entries are nonzero."""
    return int(torch.count_nonzero(weight)) <= threshold * weight.numel()


def recur(
    weight: Tensor, drive: Tensor, state: Tensor, leak_rate: float, threads: int = 1
) -> Tensor | None:
    """The whole recurrence for one sequence: ``drive (T, H)``, ``state (H,)`` -> states
    ``(T, H)``; ``None`` if the library is unavailable.

    ``threads > 1`` splits the rows of every step between that many OpenMP threads (equal
    shares of the nonzeros) that meet at a barrier after each step, where the library was
    built with OpenMP; the results do not depend on the number of threads."""
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
        crow = weight.crow_indices().to(torch.int32)
        kind = "csr16" if H <= _MAX_16BIT_UNITS else "csr"
        # int16 holds the column indices below 2^15 as they are; the C loop reads them as
        # uint16 (they fit 16 bits up to 2^16 units, where int16 wraps them to negatives)
        col = weight.col_indices().to(torch.int16 if kind == "csr16" else torch.int32)
        vals = weight.values().contiguous()
        getattr(lib, f"esn_{kind}_{suffix}")(
            T,
            H,
            crow.data_ptr(),
            col.data_ptr(),
            vals.data_ptr(),
            drive.data_ptr(),
            state.data_ptr(),
            float(leak_rate),
            out.data_ptr(),
            int(threads),
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
            int(threads),
        )
    return out
