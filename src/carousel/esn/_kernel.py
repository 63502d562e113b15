"""An optional compiled CPU loop for the reservoir recurrence (``impl="compiled"``).

For one sequence on the CPU, torch spends more time dispatching the three small operations of
each step (matrix-vector product, tanh, lerp) than computing them; for a 100-unit reservoir the
whole step is about a microsecond of arithmetic. This module compiles a few lines of C (the
whole time loop, dense or CSR recurrent matrix, float32 or float64) with the system C compiler
into a shared library cached under ``~/.cache/carousel`` (or ``$CAROUSEL_CACHE``), and calls it
through ``ctypes`` on the tensors' memory. Nothing is compiled until the compiled path is first
asked for; without a compiler, :func:`load` returns ``None`` and the reservoir uses torch.

Each step computes the row products (CSR rows with 16-bit column indices up to 65,536 units;
where the compiler targets AVX-512, 8 entries of the state at a time loaded one by one and
packed into a vector, with the 16-bit indices taken four from a load; elsewhere gathered 8
lanes at a time in float32 and in four scalar chains in float64; dense rows as
vectorised dot products; a matrix larger than most of the last-level cache is prefetched
ahead), then the leaky tanh update in one vectorised pass (in float64 with AVX-512 the
library's own tanh, within 2 ulp; elsewhere glibc's vector tanh where libmvec has it); with
``threads > 1`` (OpenMP) every step's rows are split between the threads, which meet at a
barrier after each step. The results agree with the torch path to rounding (the sums run in a
different order, tanh is not torch's) and do not depend on the number of threads.

The same library holds the ridge readout's Gram sums ``S += X^T X`` in float64 (:func:`gram`),
an AVX-512 kernel built where ``-march=native`` gives AVX-512: on AMD Zen 5 MKL and OpenBLAS
run float64 products at the AVX2 rate, half what the core can do.
"""

from __future__ import annotations

import ctypes
import functools
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

__all__ = ["available", "gram", "gram_available", "load", "recur"]

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef CAROUSEL_MVEC
/* glibc's libmvec (2.35+) has vector tanh; its header declares it only under -ffast-math.
   Declared here, the update loops under `omp simd` call the vector variants. */
__attribute__((simd("notinbranch"))) double tanh(double);
__attribute__((simd("notinbranch"))) float tanhf(float);
#endif

#ifdef __AVX512F__
/* tanh of 8 float64 lanes, for the update of the float64 loops: 1.5 us a step less than
   libmvec's at 1000 units (26.2-26.7 against 27.8-28.2 us, one process, AMD Zen 5), with at
   most 2 ulp of error against Python's math.tanh over 2.3 million arguments (libmvec: 3;
   tests/esn/test_tanh.py). tanh is odd: the magnitude is computed from |x| and x's sign put
   back. Below |x| = 0.625, tanh(x) = x + x z Q(z) with z = x^2 and Q of degree 10, a fit of
   (tanh(x)/x - 1)/z at 50 digits (least squares on 300 Chebyshev nodes of z in [0, 0.625^2],
   weighted for relative error; the test recomputes it). Above, tanh = 1 - 2/(e^{2|x|} + 1)
   with |x| clamped to 22 (beyond which tanh rounds to 1): e^y = 2^k e^r, k = round(y/ln 2),
   r = y - k ln 2 in two FMAs (ln 2 as a sum of two doubles), e^r by its Taylor series to
   r^13 (|r| <= 0.35: the remainder is below 5e-18), 2^k by scalef. NaN stays NaN (the clamp
   takes NaN from its second operand), +-inf gives +-1, -0 gives -0. */
static const double TANH_Q[11] = {
    -0.3333333333333332, 0.13333333333326464, -0.05396825396123356,
    0.0218694882553017, -0.008863229744154214, 0.0035920581539310996,
    -0.0014553045347742318, 0.0005874202257123278, -0.00023073921066570638,
    7.955522313130078e-05, -1.7222258316517355e-05};
static const double EXP_TAYLOR[14] = {
    1.0, 1.0, 0.5, 0.16666666666666666,
    0.041666666666666664, 0.008333333333333333, 0.001388888888888889, 0.0001984126984126984,
    2.48015873015873e-05, 2.7557319223985893e-06, 2.755731922398589e-07, 2.505210838544172e-08,
    2.08767569878681e-09, 1.6059043836821613e-10};
static inline __m512d tanh8_f64(__m512d x) {
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d ax = _mm512_abs_pd(x);
    const __m512d z = _mm512_mul_pd(x, x);
    __m512d q = _mm512_set1_pd(TANH_Q[10]);
    for (int j = 9; j >= 0; --j) q = _mm512_fmadd_pd(q, z, _mm512_set1_pd(TANH_Q[j]));
    const __m512d small = _mm512_fmadd_pd(_mm512_mul_pd(ax, z), q, ax);
    const __m512d c = _mm512_min_pd(_mm512_set1_pd(22.0), ax);
    const __m512d y = _mm512_add_pd(c, c);
    const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(y, _mm512_set1_pd(1.4426950408889634)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(0.6931471805599453), y);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(2.3190468138462996e-17), r);
    __m512d e = _mm512_set1_pd(EXP_TAYLOR[13]);
    for (int j = 12; j >= 0; --j) e = _mm512_fmadd_pd(e, r, _mm512_set1_pd(EXP_TAYLOR[j]));
    e = _mm512_scalef_pd(e, k);
    const __m512d q2 = _mm512_div_pd(_mm512_set1_pd(2.0), _mm512_add_pd(e, one));
    const __m512d big = _mm512_sub_pd(one, q2);
    const __mmask8 m = _mm512_cmp_pd_mask(ax, _mm512_set1_pd(0.625), _CMP_LT_OQ);
    const __m512i mag = _mm512_castpd_si512(_mm512_mask_blend_pd(m, big, small));
    const __m512i sign = _mm512_and_si512(_mm512_castpd_si512(x), _mm512_set1_epi64(INT64_MIN));
    return _mm512_castsi512_pd(_mm512_or_si512(mag, sign));
}
/* s = b h + a tanh(s) over [lo, hi), 8 at a time, the rest under a mask */
static inline void update_f64(int64_t lo, int64_t hi, double* s, const double* h, double a,
                              double b) {
    const __m512d va = _mm512_set1_pd(a), vb = _mm512_set1_pd(b);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        const __m512d t = tanh8_f64(_mm512_loadu_pd(s + i));
        _mm512_storeu_pd(s + i, _mm512_fmadd_pd(vb, _mm512_loadu_pd(h + i), _mm512_mul_pd(va, t)));
    }
    if (i < hi) {
        const __mmask8 m = (__mmask8)((1u << (hi - i)) - 1u);
        const __m512d t = tanh8_f64(_mm512_maskz_loadu_pd(m, s + i));
        const __m512d hv = _mm512_maskz_loadu_pd(m, h + i);
        _mm512_mask_storeu_pd(s + i, m, _mm512_fmadd_pd(vb, hv, _mm512_mul_pd(va, t)));
    }
}
/* the tanh of an array (for the tests) */
void esn_tanh_f64(int64_t n, const double* x, double* y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm512_storeu_pd(y + i, tanh8_f64(_mm512_loadu_pd(x + i)));
    if (i < n) {
        const __mmask8 m = (__mmask8)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_pd(y + i, m, tanh8_f64(_mm512_maskz_loadu_pd(m, x + i)));
    }
}
#define UPDATE_F64(lo, hi, s, h, a, b) update_f64(lo, hi, s, h, a, b);
#else
#define UPDATE_F64(lo, hi, s, h, a, b)                                                    \
    _Pragma("omp simd")                                                                   \
    for (int64_t i = lo; i < hi; ++i) s[i] = b * h[i] + a * tanh(s[i]);
#endif
#define UPDATE_F32(lo, hi, s, h, a, b)                                                    \
    _Pragma("omp simd")                                                                   \
    for (int64_t i = lo; i < hi; ++i) s[i] = b * h[i] + a * tanhf(s[i]);

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

/* The whole loop: one step's row products plus the drive into s, then s = (1 - a) h +
   a tanh(s) over the same rows (float64 by tanh8_f64 where AVX-512 is there, else libmvec's
   vector tanh where it is there), then a barrier. With nthreads > 1 one parallel region
   spans all steps, each thread owning a block of rows. Row t
   of the drive is at drive + t * ldd and the state of step t at out + t * ldo: the states can
   go to the first H columns of a wider buffer (the readout's features), and out may be the
   drive itself (each entry of the drive is read before its row is written). `prefetch`
   asks the AVX-512 CSR rows to prefetch the matrix ESN_PREFETCH entries ahead (for a matrix
   that streams from memory every step; see the rows below). */
#define LOOP(NAME, REAL, UPDATE, MATRIX, ROWDOT, CROW)                                     \
void NAME(int64_t T, int64_t H, MATRIX, const REAL* drive, int64_t ldd, const REAL* h0,   \
          double leak, REAL* out, int64_t ldo, int prefetch, int nthreads) {              \
    const REAL a = (REAL)leak, b = (REAL)(1.0 - leak);                                    \
    (void)prefetch;                                                                       \
    _Pragma("omp parallel num_threads(nthreads) if (nthreads > 1)")                       \
    {                                                                                     \
        int me = 0, n = 1;                                                                \
        OMP_IDS                                                                           \
        int64_t lo, hi;                                                                   \
        share(H, CROW, me, n, &lo, &hi);                                                  \
        const REAL* h = h0;                                                               \
        for (int64_t t = 0; t < T; ++t) {                                                 \
            const REAL* d = drive + t * ldd;                                              \
            REAL* s = out + t * ldo;                                                      \
            for (int64_t i = lo; i < hi; ++i) {                                           \
                REAL acc = 0;                                                             \
                ROWDOT                                                                    \
                s[i] = d[i] + acc;                                                        \
            }                                                                             \
            UPDATE(lo, hi, s, h, a, b)                                                    \
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
   gathers; 1.41 against 1.35 ms at 5000 units, where the matrix streams from memory). Since
   2026-12-05 both are replaced where the compiler targets AVX-512 (below). */
#define CSR_MATRIX(REAL) const int32_t* crow, const int32_t* col, const REAL* val
#define CSR16_MATRIX(REAL) const int32_t* crow, const uint16_t* col, const REAL* val
#ifdef __AVX512F__
#include <string.h>
/* With AVX-512 (measured on AMD Zen 5: 1000 units, 80-120 nonzeros a row, one thread) a row's
   products take 8 entries of h at a time: scalar loads packed into one vector by the
   compiler's inserts, times 8 values loaded as one vector, in two vector accumulators; then
   blocks of 8 and single products for the rest of the row. The loads bound the row (one per
   product for h), so 16-bit column indices come 4 to a 64-bit load and are taken apart with
   shifts instead of loaded one by one. float64: 21 us a step, against 24 us with an index
   load each, 28 us for vgatherdpd (whose microcoded gather is slower than the loads it
   replaces) and 30 us for four scalar chains; float32: 20 us, against 24.5 us for the
   compiler's 8-lane gathers. */
static inline void idx8(const uint16_t* c, uint32_t* j) {
    uint64_t w0, w1;
    memcpy(&w0, c, 8);
    memcpy(&w1, c + 4, 8);
    for (int q = 0; q < 4; ++q) {
        j[q] = (uint32_t)(w0 >> (16 * q)) & 0xffffu;
        j[q + 4] = (uint32_t)(w1 >> (16 * q)) & 0xffffu;
    }
}
static inline void idx8_32(const int32_t* c, uint32_t* j) {
    for (int q = 0; q < 8; ++q) j[q] = (uint32_t)c[q];
}
#define IDX8(c, j)                                                                        \
    (sizeof(*(c)) == 2 ? idx8((const uint16_t*)(const void*)(c), j)                       \
                       : idx8_32((const int32_t*)(const void*)(c), j))
static inline __m512d h8_f64(const double* h, const uint32_t* j) {
    return _mm512_set_pd(h[j[7]], h[j[6]], h[j[5]], h[j[4]], h[j[3]], h[j[2]], h[j[1]], h[j[0]]);
}
static inline __m256 h8_f32(const float* h, const uint32_t* j) {
    return _mm256_set_ps(h[j[7]], h[j[6]], h[j[5]], h[j[4]], h[j[3]], h[j[2]], h[j[1]], h[j[0]]);
}
static inline double sum2_f64(__m512d a, __m512d b) {
    return _mm512_reduce_add_pd(_mm512_add_pd(a, b));
}
static inline float sum2_f32(__m256 a, __m256 b) {
    __m256 v = _mm256_add_ps(a, b);
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    u = _mm_add_ps(u, _mm_movehl_ps(u, u));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}
/* Software prefetch, where the caller asks for it: a matrix larger than the last-level cache
   streams from memory every step, and the hardware prefetchers alone kept one core at about
   20 GB/s. Measured on AMD Zen 5 (32 MB L3, one thread, 10% connectivity, standalone probe):
   5000 units (25 MB of float64 values and 16-bit indices) 0.71-0.85 ms a step against
   1.01-1.13 without; 7000 units (49 MB) 2.0-2.1 against 4.0-4.1 ms; but 1.5-10% slower where
   the matrix stays in the caches (1000-4000 units, 1-16 MB). 1024 entries ahead (8 KB of
   float64 values) was the best of 512-2048. */
#define ESN_PREFETCH 1024
/* One row for both precisions: VEC the vector of 8, ZERO/LOAD/FMA its intrinsics, H8 the
   packed entries of h, SUM2 the sum of two accumulators. */
#define CSR_ROW_AVX512(VEC, ZERO, LOAD, FMA, H8, SUM2)                                    \
    int32_t k = crow[i];                                                                  \
    const int32_t end = crow[i + 1];                                                      \
    VEC v0 = ZERO(), v1 = ZERO();                                                         \
    uint32_t j0[8], j1[8];                                                                \
    for (; k + 16 <= end; k += 16) {                                                      \
        if (prefetch) {                                                                   \
            _mm_prefetch((const char*)(val + k + ESN_PREFETCH), _MM_HINT_T0);             \
            _mm_prefetch((const char*)(val + k + ESN_PREFETCH + 8), _MM_HINT_T0);         \
            _mm_prefetch((const char*)(col + k + ESN_PREFETCH), _MM_HINT_T0);             \
        }                                                                                 \
        IDX8(col + k, j0);                                                                \
        IDX8(col + k + 8, j1);                                                            \
        v0 = FMA(LOAD(val + k), H8(h, j0), v0);                                           \
        v1 = FMA(LOAD(val + k + 8), H8(h, j1), v1);                                       \
    }                                                                                     \
    if (k + 8 <= end) {                                                                   \
        IDX8(col + k, j0);                                                                \
        v0 = FMA(LOAD(val + k), H8(h, j0), v0);                                           \
        k += 8;                                                                           \
    }                                                                                     \
    acc = SUM2(v0, v1);                                                                   \
    for (; k < end; ++k) acc += val[k] * h[col[k]];
#define CSR_ROW_F64                                                                       \
    CSR_ROW_AVX512(__m512d, _mm512_setzero_pd, _mm512_loadu_pd, _mm512_fmadd_pd, h8_f64,  \
                   sum2_f64)
#define CSR_ROW_F32                                                                       \
    CSR_ROW_AVX512(__m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, h8_f32,   \
                   sum2_f32)
#else
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
#endif

LOOP(esn_dense_f64, double, UPDATE_F64, DENSE_MATRIX(double), DENSE_ROW, 0)
LOOP(esn_dense_f32, float, UPDATE_F32, DENSE_MATRIX(float), DENSE_ROW, 0)
LOOP(esn_csr_f64, double, UPDATE_F64, CSR_MATRIX(double), CSR_ROW_F64, crow)
LOOP(esn_csr_f32, float, UPDATE_F32, CSR_MATRIX(float), CSR_ROW_F32, crow)
LOOP(esn_csr16_f64, double, UPDATE_F64, CSR16_MATRIX(double), CSR_ROW_F64, crow)
LOOP(esn_csr16_f32, float, UPDATE_F32, CSR16_MATRIX(float), CSR_ROW_F32, crow)

/* ------------------------------------------------------------------------------------------
   The ridge readout's Gram sums S += X^T X (float64), on and below the diagonal, in AVX-512.
   On AMD Zen 5 both MKL and OpenBLAS run float64 products at the AVX2 rate (about 53-57
   GFLOP/s on one thread), half the core's AVX-512 peak. Tiles of 6 rows x 32 columns of S
   (24 zmm accumulators; per row of X, 4 loads of a 32-column panel, 6 broadcasts, 24 FMAs),
   over blocks of GRAM_KC rows of X packed into 32-column panels (zero padded, so the tile
   needs masks only where it adds into S). The tile's 6 rows of A are read from the same
   panels, through a pointer each (a sliver may straddle two panels): packing them apart as
   6-column slivers too took 111-113 against 97-103 ms for a 9,900 x 1,000 stream in
   1,024-row chunks, one thread, with bit-identical sums. The rows of GRAM_MC rows of S stay
   in the caches while the panels on or below the diagonal pass by. A tile that straddles the
   diagonal also adds above it (left undefined there; the readout mirrors the lower triangle).
   With nthreads > 1 the (row chunk, panel) pairs go to OpenMP threads (dynamic schedule). */
#include <stdlib.h>
#define GRAM_KC 512
#define GRAM_MC 192

int esn_gram_avx512(void) {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
}
#ifdef __AVX512F__
/* One 6 x 32 tile of S += A^T B over kc rows: ar[r][32 k] is row k of column i0 + r of X (in
   its panel, whose rows are 32 apart), b holds kc rows of 32 (columns j0..); the first `rows`
   rows and the columns under `m` are added to s. */
static void gram_tile(int64_t kc, const double* const* ar, const double* b, double* s,
                      int64_t lds, int rows, const __mmask8* m, int subtract) {
    const double *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
    /* the part of S this tile adds to, asked for now and used after the kc rows: S (8 MB at
       1,000 features) lies beyond the L2 cache, and its misses at the end of every tile cost
       8-9% of the sums (1,024 x 1,001, one thread: 9.3-9.4 against 10.1-10.3 ms, AMD Zen 5) */
    for (int r = 0; r < rows; ++r)
        for (int q = 0; q < 4; ++q)
            if (m[q]) _mm_prefetch((const char*)(s + r * lds + 8 * q), _MM_HINT_T0);
    __m512d c[6][4];
    for (int r = 0; r < 6; ++r)
        for (int q = 0; q < 4; ++q) c[r][q] = _mm512_setzero_pd();
    for (int64_t k = 0, o = 0; k < kc; ++k, o += 32) {
        __m512d b0 = _mm512_load_pd(b), b1 = _mm512_load_pd(b + 8);
        __m512d b2 = _mm512_load_pd(b + 16), b3 = _mm512_load_pd(b + 24);
#define GRAM_ROW(r)                                                                       \
        {                                                                                 \
            __m512d x = _mm512_set1_pd(a##r[o]);                                          \
            c[r][0] = _mm512_fmadd_pd(x, b0, c[r][0]);                                    \
            c[r][1] = _mm512_fmadd_pd(x, b1, c[r][1]);                                    \
            c[r][2] = _mm512_fmadd_pd(x, b2, c[r][2]);                                    \
            c[r][3] = _mm512_fmadd_pd(x, b3, c[r][3]);                                    \
        }
        GRAM_ROW(0) GRAM_ROW(1) GRAM_ROW(2) GRAM_ROW(3) GRAM_ROW(4) GRAM_ROW(5)
#undef GRAM_ROW
        b += 32;
    }
    for (int r = 0; r < rows; ++r) {
        double* row = s + r * lds;
        for (int q = 0; q < 4; ++q) {
            if (!m[q]) continue;
            __m512d v = _mm512_maskz_loadu_pd(m[q], row + 8 * q);
            v = subtract ? _mm512_sub_pd(v, c[r][q]) : _mm512_add_pd(v, c[r][q]);
            _mm512_mask_storeu_pd(row + 8 * q, m[q], v);
        }
    }
}
#endif

/* S += X^T X on and below the diagonal (S row-major F x F, row stride lds; X row-major n x F,
   row stride ldx); S -= X^T X with `subtract` (the trailing update of a blocked Cholesky
   factorisation). Returns 1 when done, 0 if not built with AVX-512 (nothing done), -1 if out
   of memory (nothing done). */
int esn_gram_f64(int64_t n, int64_t F, const double* X, int64_t ldx, double* S, int64_t lds,
                 int nthreads, int subtract) {
#ifndef __AVX512F__
    (void)n; (void)F; (void)X; (void)ldx; (void)S; (void)lds; (void)nthreads; (void)subtract;
    return 0;
#else
    const int64_t kcmax = n < GRAM_KC ? n : GRAM_KC;
    const int64_t nblk = (F + 5) / 6, npan = (F + 31) / 32;
    const int64_t mb = GRAM_MC / 6, nchunk = (nblk + mb - 1) / mb;
    /* the packed blocks, kept from call to call by the calling thread (grown as needed):
       a fresh 8 MB for every 1,024-row chunk at 1,002 features made glibc keep about 20 MB
       more resident, and fresh pages from the system cost 30% of the time */
    static __thread double* work = 0;
    static __thread int64_t have = 0;
    const int64_t need = npan * 32 * kcmax;
    if (need > have) {
        free(work);
        work = (double*)aligned_alloc(64, (size_t)((need * 8 + 63) / 64 * 64));
        have = work ? need : 0;
        if (!work) return -1;
    }
    double* pb = work; /* 64-byte aligned */
    _Pragma("omp parallel num_threads(nthreads) if (nthreads > 1)")
    for (int64_t k0 = 0; k0 < n; k0 += kcmax) {
        const int64_t kc = n - k0 < kcmax ? n - k0 : kcmax;
        /* the k-block in panels of 32 columns, pb[p][k][c] = X[k0 + k, 32 p + c],
           zero-padded; row by row, so X streams in order (column strips of X ran 20% slower
           when X came from memory) */
        _Pragma("omp for schedule(static)")
        for (int64_t k = 0; k < kc; ++k) {
            const double* x = X + (k0 + k) * ldx;
            for (int64_t p = 0; p < npan; ++p) {
                const int64_t j0 = p * 32, w = F - j0 < 32 ? F - j0 : 32;
                const __mmask32 all = w == 32 ? 0xffffffffu : ((1u << w) - 1u);
                for (int q = 0; q < 4; ++q) {
                    const __mmask8 mq = (__mmask8)(all >> (8 * q));
                    _mm512_store_pd(pb + (p * kc + k) * 32 + 8 * q,
                                    _mm512_maskz_loadu_pd(mq, x + j0 + 8 * q));
                }
            }
        }
        /* (chunk of GRAM_MC rows, panel) pairs on or below the diagonal: disjoint parts of S */
        _Pragma("omp for schedule(dynamic, 1)")
        for (int64_t t = 0; t < nchunk * npan; ++t) {
            const int64_t c = t / npan, p = t % npan, j0 = p * 32;
            const int64_t blo = c * mb, bhi = blo + mb < nblk ? blo + mb : nblk;
            if (j0 > bhi * 6 - 1) continue;
            const int64_t w = F - j0 < 32 ? F - j0 : 32;
            const __mmask32 all = w == 32 ? 0xffffffffu : ((1u << w) - 1u);
            __mmask8 m[4];
            for (int q = 0; q < 4; ++q) m[q] = (__mmask8)(all >> (8 * q));
            for (int64_t ib = blo > j0 / 6 ? blo : j0 / 6; ib < bhi; ++ib) {
                const int64_t i0 = ib * 6;
                const int rows = F - i0 < 6 ? (int)(F - i0) : 6;
                const double* ar[6]; /* rows past F (the last sliver's) repeat row i0 */
                for (int r = 0; r < 6; ++r) {
                    const int64_t i = i0 + r < F ? i0 + r : i0;
                    ar[r] = pb + (i / 32) * 32 * kc + i % 32;
                }
                gram_tile(kc, ar, pb + p * 32 * kc, S + i0 * lds + j0, lds, rows, m, subtract);
            }
        }
    }
    return 1;
#endif
}
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
        getattr(lib, name).argtypes = [i64, i64, ptr, ptr, i64, ptr, dbl, ptr, i64, i32, i32]
        getattr(lib, name).restype = None
    for name in ("esn_csr_f64", "esn_csr_f32", "esn_csr16_f64", "esn_csr16_f32"):
        getattr(lib, name).argtypes = [
            i64, i64, ptr, ptr, ptr, ptr, i64, ptr, dbl, ptr, i64, i32, i32
        ]  # fmt: skip
        getattr(lib, name).restype = None
    if hasattr(lib, "esn_tanh_f64"):  # AVX-512 builds
        lib.esn_tanh_f64.argtypes = [i64, ptr, ptr]
        lib.esn_tanh_f64.restype = None
    lib.esn_gram_avx512.argtypes = []
    lib.esn_gram_avx512.restype = i32
    lib.esn_gram_f64.argtypes = [i64, i64, ptr, i64, ptr, i64, i32, i32]
    lib.esn_gram_f64.restype = i32
    return lib


def available(weight: Tensor) -> bool:
    """Whether the compiled loop can run this recurrent matrix (CPU, float32/float64)."""
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)


def _mostly_zero(weight: Tensor, threshold: float = 0.3) -> bool:
    """Whether at most ``threshold`` of the entries are nonzero."""
    return int(torch.count_nonzero(weight)) <= threshold * weight.numel()


#: The CSR loop prefetches a matrix larger than this share of the last-level cache (see
#: ESN_PREFETCH in the C source: 25 MB against a 32 MB L3 gained 25-30%, 16 MB lost 2-10%).
PREFETCH_CACHE_SHARE = 0.6
_DEFAULT_CACHE_BYTES = 32 * 2**20


@functools.cache
def last_level_cache_bytes() -> int:
    """The size of the largest CPU cache (Linux sysfs), or 32 MiB where it cannot be read."""
    best = 0
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size.read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if unit != 1 else text
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or _DEFAULT_CACHE_BYTES


def wants_prefetch(matrix_bytes: int) -> bool:
    """Whether the CSR loop should prefetch a matrix of ``matrix_bytes`` (values and column
    indices): one that does not stay in the last-level cache from step to step."""
    return matrix_bytes > PREFETCH_CACHE_SHARE * last_level_cache_bytes()


def _row_stride(x: Tensor) -> int | None:
    """The row stride of a ``(T, H)`` tensor whose rows are contiguous and do not overlap;
    ``None`` otherwise."""
    T, H = x.shape
    if H > 1 and x.stride(1) != 1:
        return None
    if T <= 1:
        return H
    return x.stride(0) if x.stride(0) >= H else None


def recur(
    weight: Tensor,
    drive: Tensor,
    state: Tensor,
    leak_rate: float,
    threads: int = 1,
    out: Tensor | None = None,
    prefetch: bool | None = None,
) -> Tensor | None:
    """The whole recurrence for one sequence: ``drive (T, H)``, ``state (H,)`` -> states
    ``(T, H)``; ``None`` if the library is unavailable.

    ``threads > 1`` splits the rows of every step between that many OpenMP threads (equal
    shares of the nonzeros) that meet at a barrier after each step, where the library was
    built with OpenMP; the results do not depend on the number of threads.

    ``drive`` and ``out`` (where to write the states; a fresh tensor if ``None``) may have
    their rows at any stride (e.g. the first ``H`` columns of a wider buffer), and ``out`` may
    be ``drive`` itself: each step reads its row of the drive before writing that row.

    ``prefetch``: software prefetch of a sparse matrix's rows ahead of the products; ``None``
    decides by size (:func:`wants_prefetch`). The results are the same either way."""
    lib = load()
    if lib is None or not available(weight):
        return None
    T, H = drive.shape
    ldd = _row_stride(drive)
    if ldd is None:
        drive = drive.contiguous()
        ldd = _row_stride(drive)
    state = state.contiguous()
    if out is None:
        out = torch.empty_like(drive)
    ldo = _row_stride(out)
    if (
        out.shape != drive.shape
        or out.dtype != drive.dtype
        or out.device != drive.device
        or ldo is None
    ):
        raise ValueError(
            f"carousel.esn._kernel.recur: expected out of shape {tuple(drive.shape)}, "
            f"{drive.dtype} on {drive.device}, with contiguous rows, got shape "
            f"{tuple(out.shape)}, {out.dtype} on {out.device}, strides {out.stride()}"
        )
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
        if prefetch is None:
            prefetch = wants_prefetch(
                vals.numel() * vals.element_size() + col.numel() * col.element_size()
            )
        getattr(lib, f"esn_{kind}_{suffix}")(
            T,
            H,
            crow.data_ptr(),
            col.data_ptr(),
            vals.data_ptr(),
            drive.data_ptr(),
            ldd,
            state.data_ptr(),
            float(leak_rate),
            out.data_ptr(),
            ldo,
            int(prefetch),
            int(threads),
        )
    else:
        w = weight.contiguous()
        getattr(lib, f"esn_dense_{suffix}")(
            T,
            H,
            w.data_ptr(),
            drive.data_ptr(),
            ldd,
            state.data_ptr(),
            float(leak_rate),
            out.data_ptr(),
            ldo,
            0,
            int(threads),
        )
    return out


def gram_available() -> bool:
    """Whether :func:`gram` can run here: the library is built, with AVX-512 (``-march=native``
    on a CPU that has it). Compiles the library on first use; never logs."""
    lib = load(quiet=True)
    return lib is not None and bool(lib.esn_gram_avx512())


def gram(xx: Tensor, x: Tensor, threads: int = 1, subtract: bool = False) -> bool:
    r"""``xx += x^T x`` (``xx -= x^T x`` with ``subtract``) on and below the diagonal with the
    library's AVX-512 float64 kernel; what lies above the diagonal is left undefined (partly
    added to). Returns ``False``, having done nothing, where the kernel cannot run: no library
    or no AVX-512, not both float64 CPU tensors, or ``xx``'s rows not contiguous. ``x`` with
    gapped columns is copied first.

    The packed copy of ``x`` (``512 x F`` float64 in 32-column panels: 4 MB at 1,002
    features, 20 MB at 5,002) is kept by the calling thread from call to call: fresh ones for
    every chunk cost 30% more time (new pages) or about 20 MB more resident memory (glibc's
    heap).

    Measured on AMD EPYC Zen 5 (2-core VM shared with other jobs, wall-clock best of 8,
    ``x`` of 1,024 x 1,002 / 1,024 x 5,002, counting the ``n F (F + 1)`` flops of the lower
    triangle; ``.venv/bin/python tests/esn/test_gram.py --features 1002 5002``): one thread
    80-89 / 86-92 GFLOP/s (11.6 / 284 ms) against 42-47 / 43-44 for the torch bands
    (``carousel.esn.readout._add_gram_torch`` on MKL; 21.9 / 577 ms) and 26-29 for one full
    ``addmm`` (its 52-58 GFLOP/s of full-product flops); two threads 165-173 / 182-184
    GFLOP/s (6.2 / 139 ms) against 75-89 / 80 (11.6 / 318 ms). A 9,900 x 1,002 stream in
    1,024-row chunks (the 1000-unit benchmark's sums) takes 0.12-0.14 s against 0.24 s on
    one thread, 0.063 s against 0.130 s on two. Since the tile reads its rows from the panels
    (no second packed copy): 11.0 ms at 1,002 features and 285 ms at 5,002 on one thread, 5.3-5.6
    and 138-145 ms on two; the 9,900-row stream at 1,000 features 97-103 ms of process time
    against 111-113 before.

    Args:
        xx: ``(F, F)`` float64 sums, rows contiguous (``xx.stride(1) == 1``).
        x: ``(N, F)`` float64 rows.
        threads: OpenMP threads (where the library was built with OpenMP).
        subtract: subtract the products instead of adding them (the trailing updates of
            :func:`carousel.esn.readout.cholesky_lower_`).

    Returns:
        Whether the sums were added.
    """
    if not (
        xx.device.type == "cpu"
        and x.device.type == "cpu"
        and xx.dtype == torch.float64
        and x.dtype == torch.float64
        and xx.dim() == 2
        and x.dim() == 2
        and xx.shape[0] == xx.shape[1] == x.shape[1]
        and xx.stride(1) == 1
        and gram_available()
    ):
        return False
    n, F = x.shape
    if n == 0:
        return True
    if x.stride(1) != 1:
        x = x.contiguous()
    ldx = x.stride(0) if n > 1 else F
    lds = xx.stride(0) if F > 1 else 1
    lib = load(quiet=True)
    assert lib is not None  # gram_available() above loaded it
    done = lib.esn_gram_f64(
        n, F, x.data_ptr(), ldx, xx.data_ptr(), lds, int(threads), int(bool(subtract))
    )
    if done < 0:
        raise MemoryError("carousel.esn: the Gram kernel could not allocate its packed blocks")
    return done == 1
