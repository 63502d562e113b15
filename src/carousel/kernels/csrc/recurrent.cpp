// Compiled forward and backward through time for carousel's built-in cells.
//
// The time loop runs here: one matrix product per step (mm_acc / mm_into, into preallocated
// buffers: in float32 a register-tiled AVX-512 kernel while the weight matrix fits in L2,
// oneDNN for other large products, else at::addmm) and one fused pass of the gate arithmetic
// over the B x H units. The input projections of all steps and the weight
// gradients, summed over time, are single matrix products done by the Python wrapper
// (carousel/kernels/__init__.py, through the matmul operators below), which also checks every
// argument. The math and the mask convention are those of the pure-PyTorch path,
// carousel/bptt/ (its docstrings give the equations). The LSTM's layer-normalised variant
// normalises both parts of the pre-activation and c_t row by row in the loop (ln2_row,
// ln_row), full gate recurrence adds a second per-step product, W_gg s_{t-1}, and the
// projected LSTM (proj_size) one more each way: h_t = m_t W_hr^T after the gate pass, and
// delta m_t = delta h_t W_hr before the backward gate pass.
//
// Threads: the rows of a batch are independent through time, so with several threads and a
// batch large enough (batch_chunks) the batch is split into one block of contiguous rows per
// thread and each block runs its own time loop, its own per-step products on its rows
// included (over_batch: one at::parallel_for around the whole loop; inside it ATen's, MKL's and
// oneDNN's products run on the calling thread), with no synchronisation between steps.
// Otherwise one loop runs over the whole batch, its products threaded by ATen, and the gate
// pass of a step splits the rows over threads (at::parallel_for) when there are many. Built
// with -fopenmp where torch uses OpenMP: at::parallel_for is a header template that runs
// serially without it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

// oneDNN's matrix product as ATen builds it for addmm (result = alpha a b + beta result): on
// CPUs where MKL takes a slower path (AMD's) it runs the larger products about twice as fast.
// Declared weak: where a torch build does not export it the kernels use at::addmm.
namespace at {
namespace native {
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha) __attribute__((weak));
}  // namespace native
}  // namespace at

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// exp, sigmoid and tanh written so that the compiler vectorises the loops that call them
// (no libm call in float32; range reduction and a polynomial, Cephes' expf: relative error
// about 2e-7). float64 uses std::exp (accuracy for the float64 tests).
inline float exp_approx(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  const float t = x * 1.44269504088896341f;
  const int32_t n = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T sigm(T a) {
  return T(1) / (T(1) + exp_approx(-a));
}

template <typename T>
inline T tanh_(T a) {
  return T(1) - T(2) / (exp_approx(T(2) * a) + T(1));
}
inline double tanh_(double a) { return std::tanh(a); }

inline int64_t grain(int64_t H) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1)); }

// A block of the batch runs its own time loop only with at least this many rows and this
// many multiply-adds of its recurrent products over the sequence (below, a thread's share is
// too small to pay for the fork; batch-1 generation always stays on one loop).
constexpr int64_t kMinChunkRows = 4;
constexpr int64_t kMinChunkWork = int64_t(1) << 20;

// Number of blocks of rows the batch is split into for the time loop: one per thread, fewer
// where a block would fall under the minima above; 1 inside a parallel region.
int64_t batch_chunks(int64_t T, int64_t B, int64_t GH, int64_t H) {
  if (at::in_parallel_region()) return 1;
  const int64_t work = T * B * GH * std::max<int64_t>(H, 1);
  int64_t n = std::min<int64_t>(at::get_num_threads(), B / kMinChunkRows);
  n = std::min<int64_t>(n, work / kMinChunkWork);
  return std::max<int64_t>(n, 1);
}

// Runs f(b0, b1) on n blocks of contiguous rows covering [0, B), in parallel (n > 1) or
// once over the whole batch (n == 1).
template <typename F>
void over_batch(int64_t B, int64_t n, const F& f) {
  if (n <= 1) {
    f(int64_t(0), B);
    return;
  }
  // the caller's thread-local state (grad mode: the blocks make views and modify them in
  // place) in every thread
  const at::ThreadLocalState state;
  at::parallel_for(0, n, 1, [&](int64_t c0, int64_t c1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t c = c0; c < c1; ++c) f(B * c / n, B * (c + 1) / n);
  });
}

// ------------------------------------------------------------------------ matrix products
// float32 products with at least this many multiply-adds (M K N) go to oneDNN: below, its
// fixed cost per call (about 15 us here) outweighs its faster arithmetic.
constexpr int64_t kOneDnnMinWork = int64_t(1) << 21;

// Set when oneDNN refused a product (it checks its arguments before computing): ATen's
// products from then on.
std::atomic<bool> onednn_failed{false};

bool use_onednn(const at::Tensor& a, const at::Tensor& b) {
  if (&at::native::mkldnn_matmul == nullptr || a.scalar_type() != at::kFloat ||
      onednn_failed.load(std::memory_order_relaxed) || !at::hasMKLDNN() ||
      !at::globalContext().userEnabledMkldnn())
    return false;
  return a.size(0) * a.size(1) * b.size(1) >= kOneDnnMinWork;
}

// out = beta out + a b with oneDNN; false (out untouched) where it refuses.
bool onednn_mm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  try {
    at::native::mkldnn_matmul(a, b, out, beta, 1.0f);
    return true;
  } catch (const c10::Error&) {
    onednn_failed.store(true);
    return false;
  }
}

// ------------------------------------------------- small products: a register-tiled kernel
// The per-step products (a block's rows times a weight matrix) are too small for MKL's and
// oneDNN's per-call costs and blocking; where the compiler targets AVX-512 a register-tiled
// kernel (6 rows x 64 columns of accumulators, the weight panel streamed from L1/L2) runs them
// in float32. C (M, N) = [C +] A (M, K) B (K, N), row-major with row
// strides, unit column strides.
#if defined(__AVX512F__)
constexpr bool kSmallGemm = true;

template <int MR, int NV>
void gemm_tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, __mmask16 last, bool acc) {
  __m512 c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = B + k * ldb;
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, bk + 16 * v) : _mm512_loadu_ps(bk + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* cp = C + r * ldc + 16 * v;
      const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
      __m512 x = c[r][v];
      if (acc) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
      _mm512_mask_storeu_ps(cp, m, x);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                        __mmask16, bool);
template <int MR>
constexpr std::array<TileFn, 4> tile_row() {
  return {&gemm_tile<MR, 1>, &gemm_tile<MR, 2>, &gemm_tile<MR, 3>, &gemm_tile<MR, 4>};
}
constexpr std::array<std::array<TileFn, 4>, 6> kTiles = {
    tile_row<1>(), tile_row<2>(), tile_row<3>(), tile_row<4>(), tile_row<5>(), tile_row<6>()};

void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                int64_t ldb, float* C, int64_t ldc, bool acc) {
  for (int64_t j0 = 0; j0 < N; j0 += 64) {
    const int64_t nc = std::min<int64_t>(64, N - j0);
    const int nv = static_cast<int>((nc + 15) / 16);
    const int rem = static_cast<int>(nc % 16);
    const __mmask16 last = rem ? __mmask16((1u << rem) - 1) : __mmask16(0xFFFF);
    for (int64_t i0 = 0; i0 < M; i0 += 6) {
      const int mr = static_cast<int>(std::min<int64_t>(6, M - i0));
      kTiles[mr - 1][nv - 1](K, A + i0 * lda, lda, B + j0, ldb, C + i0 * ldc + j0, ldc, last,
                             acc);
    }
  }
}
#else
constexpr bool kSmallGemm = false;
void small_gemm(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                int64_t, bool) {}
#endif

// The small kernel takes float32 products with unit column strides, a weight matrix of at
// most 2^20 elements (4 MiB; measured here at 210-230 GFLOP/s a core for the per-step shapes,
// against 80-95 for MKL and 130-215 for oneDNN with its fixed cost) and at most 256 rows.
constexpr int64_t kSmallMaxWeight = int64_t(1) << 20;
constexpr int64_t kSmallMaxRows = 256;
std::atomic<bool> small_gemm_enabled{true};

// Whether the small kernel takes `rows` rows times the weight w (K, N).
bool small_weight(const at::Tensor& w, int64_t rows) {
  return kSmallGemm && small_gemm_enabled.load(std::memory_order_relaxed) &&
         w.scalar_type() == at::kFloat && rows > 0 && rows <= kSmallMaxRows &&
         w.numel() <= kSmallMaxWeight && w.size(1) > 0 && w.stride(1) == 1;
}

bool use_small(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return small_weight(b, a.size(0)) && a.scalar_type() == at::kFloat &&
         out.scalar_type() == at::kFloat && a.stride(1) == 1 && out.stride(1) == 1;
}

void run_small(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool acc) {
  small_gemm(a.size(0), b.size(1), a.size(1), a.data_ptr<float>(), a.stride(0),
             b.data_ptr<float>(), b.stride(0), out.data_ptr<float>(), out.stride(0), acc);
}

// The forward's recurrent weights are copied transposed (unit column stride, for the small
// kernel) only where the sequence has this many rows (T B) to repay the copy: a one-step
// generation call keeps the transposed view, on ATen's product.
constexpr int64_t kPackMinRows = 64;

at::Tensor transposed(const at::Tensor& w, int64_t rows) {
  return rows >= kPackMinRows && w.scalar_type() == at::kFloat ? w.t().contiguous() : w.t();
}

// A per-step product of a time loop, c (+)= a w with the weight w (K, N) fixed: decided once
// for the loop (shapes, dtype and strides do not change from step to step), then run on raw
// pointers by the small kernel, or else by `fallback`, which builds the ATen views.
struct StepProduct {
  bool small = false;
  const float* w = nullptr;
  int64_t ldw = 0, K = 0, N = 0;

  StepProduct(const at::Tensor& weight, int64_t rows) {
    small = small_weight(weight, rows);
    if (small) {
      w = weight.data_ptr<float>();
      ldw = weight.stride(0);
      K = weight.size(0);
      N = weight.size(1);
    }
  }

  // c (rows x N, row stride ldc) (+)= a (rows x K, row stride lda) w.
  template <typename T, typename F>
  void run(int64_t rows, const T* a, int64_t lda, T* c, int64_t ldc, bool acc,
           const F& fallback) const {
    if constexpr (std::is_same_v<T, float>) {
      if (small) {
        small_gemm(rows, N, K, a, lda, w, ldw, c, ldc, acc);
        return;
      }
    }
    fallback();
  }
};

// out = a b, or out = bias + a b (bias (N,), broadcast over the rows); out (M, N) may be a
// view with a row stride.
void mm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
             const c10::optional<at::Tensor>& bias) {
  if (use_small(out, a, b)) {
    if (bias.has_value()) out.copy_(bias->expand_as(out));
    run_small(out, a, b, bias.has_value());
    return;
  }
  if (use_onednn(a, b)) {
    if (bias.has_value()) out.copy_(bias->expand_as(out));
    if (onednn_mm(out, a, b, bias.has_value() ? 1.0f : 0.0f)) return;
  }
  if (bias.has_value()) {
    at::addmm_out(const_cast<at::Tensor&>(out), *bias, a, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a, b);
  }
}

// out += a b.
void mm_acc(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (use_small(out, a, b)) {
    run_small(out, a, b, true);
    return;
  }
  if (use_onednn(a, b) && onednn_mm(out, a, b, 1.0f)) return;
  out.addmm_(a, b);
}

// a b by the small kernel where it is compiled in, else by ATen (for the tests).
at::Tensor small_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  if (kSmallGemm && a.scalar_type() == at::kFloat) {
    run_small(out, a.stride(1) == 1 ? a : a.contiguous(), b.stride(1) == 1 ? b : b.contiguous(),
              false);
  } else {
    at::mm_out(out, a, b);
  }
  return out;
}

// Whether a product of a (M, K) and b (K, N) of a's dtype goes to oneDNN (for the tests).
bool onednn_used(const at::Tensor& a, const at::Tensor& b) { return use_onednn(a, b); }

// The operators for the wrapper's products over all steps: a b (+ bias) and out += a b.
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& bias) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  mm_into(out, a, b, bias);
  return out;
}
void matmul_acc(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  mm_acc(out, a, b);
}

// The mask of step t, (B,) (mask: (T, B) contiguous bool), or nullptr without one.
inline const bool* mask_at(const bool* mask, int64_t t, int64_t B) {
  return mask == nullptr ? nullptr : mask + t * B;
}

// ------------------------------------------------------------------------------------ LSTM
// Gate rows in torch.nn's order with absent gates left out; oi, of_, og, oo are the column
// offsets of the gates in a (B, G*H) row (-1: absent). flags: peephole, input_activation,
// output_activation, coupled. si, sf, so: the offsets of i, f, o in FGR's gate state s
// (B, S*H), the sigmoid gates with weights in the order i, f, o (absent ones left out).
struct LstmLayout {
  int64_t oi, of, og, oo;
  bool peep, in_act, out_act, coupled;
  int64_t si, sf, so, SH;
};

LstmLayout lstm_layout(at::IntArrayRef offsets, at::IntArrayRef flags, int64_t H) {
  LstmLayout L{offsets[0], offsets[1], offsets[2], offsets[3],
               flags[0] != 0, flags[1] != 0, flags[2] != 0, flags[3] != 0, 0, 0, 0, 0};
  L.sf = L.oi >= 0 ? H : 0;
  L.so = L.sf + (L.of >= 0 ? H : 0);
  L.SH = L.so + (L.oo >= 0 ? H : 0);
  return L;
}

// The sigmoid gates' blocks of a gate row (torch.nn's order) copied into a row of FGR's gate
// state (order i, f, o; absent gates left out): s_t in the forward, their gradients backward.
template <typename T>
void sigmoid_gates_to_s(const LstmLayout& L, int64_t H, const T* row, T* s) {
  if (L.oi >= 0) std::copy(row + L.oi, row + L.oi + H, s + L.si);
  if (L.of >= 0) std::copy(row + L.of, row + L.of + H, s + L.sf);
  if (L.oo >= 0) std::copy(row + L.oo, row + L.oo + H, s + L.so);
}

// The columns of an LSTM step's per-row products (W_hh's gate rows, W_gg's with FGR, W_hr's
// with a projection), for batch_chunks.
int64_t lstm_step_columns(int64_t GH, int64_t SH, int64_t H, bool fgr, bool proj) {
  return GH + (fgr ? SH : 0) + (proj ? H : 0);
}

// Row sums written with 16 partial sums, so that they vectorise without -ffast-math.
template <typename T>
T row_dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) acc[k] += x[j + k] * y[j + k];
  T s = T(0);
  for (; j < n; ++j) s += x[j] * y[j];
  for (int k = 0; k < 16; ++k) s += acc[k];
  return s;
}

template <typename T>
T row_sum(const T* __restrict x, int64_t n) {
  T acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) acc[k] += x[j + k];
  T s = T(0);
  for (; j < n; ++j) s += x[j];
  for (int k = 0; k < 16; ++k) s += acc[k];
  return s;
}

// Layer normalisation of a row in place, without gain and bias (Ba et al. 2016, eq. 4: the
// biased variance, as torch's layer_norm): x = (x - mean) / sqrt(var + eps). Returns the
// reciprocal standard deviation 1 / sqrt(var + eps).
template <typename T>
T ln_row(T* __restrict x, int64_t n, T eps) {
  const T mu = row_sum(x, n) / T(n);
  for (int64_t j = 0; j < n; ++j) x[j] -= mu;
  const T rs = T(1) / std::sqrt(row_dot(x, x, n) / T(n) + eps);
  for (int64_t j = 0; j < n; ++j) x[j] *= rs;
  return rs;
}

// Backward of y = LN(x) gamma for a row: dx = rs (d - mean(d) - xn mean(d xn)) with
// d = dy gamma (written into the scratch row d), xn the normalised row, rs its reciprocal
// standard deviation.
template <typename T>
void ln_row_backward(int64_t n, const T* __restrict dy, const T* __restrict gamma,
                     const T* __restrict xn, T rs, T* __restrict d, T* __restrict dx) {
  for (int64_t j = 0; j < n; ++j) d[j] = dy[j] * gamma[j];
  const T m1 = row_sum(d, n) / T(n);
  const T m2 = row_dot(d, xn, n) / T(n);
  for (int64_t j = 0; j < n; ++j) dx[j] = rs * (d[j] - m1 - xn[j] * m2);
}

// The pre-activations of a layer-normalised LSTM row (Ba et al. 2016, eq. 20):
// a = LN(x) gam_x + LN(z) gam_z + bias over the n = G*H gate rows, with x = W_ih x_t and
// z = W_hh h_{t-1} normalised in place (saved for the backward pass); rs_x, rs_z receive their
// reciprocal standard deviations. Three passes: the means, the variances (two-pass, as
// torch's layer_norm: no cancellation), then the normalisation and the sum.
template <typename T>
void ln2_row(int64_t n, T* __restrict x, T* __restrict z, const T* __restrict gam_x,
             const T* __restrict gam_z, const T* __restrict bias, T eps, T* __restrict a,
             T& rs_x, T& rs_z) {
  T sx[16] = {}, sz[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) {
      sx[k] += x[j + k];
      sz[k] += z[j + k];
    }
  T mx = T(0), mz = T(0);
  for (; j < n; ++j) {
    mx += x[j];
    mz += z[j];
  }
  for (int k = 0; k < 16; ++k) {
    mx += sx[k];
    mz += sz[k];
    sx[k] = sz[k] = T(0);
  }
  mx /= T(n);
  mz /= T(n);
  T vx = T(0), vz = T(0);
  for (j = 0; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) {
      const T dx = x[j + k] - mx, dz = z[j + k] - mz;
      sx[k] += dx * dx;
      sz[k] += dz * dz;
    }
  for (; j < n; ++j) {
    vx += (x[j] - mx) * (x[j] - mx);
    vz += (z[j] - mz) * (z[j] - mz);
  }
  for (int k = 0; k < 16; ++k) {
    vx += sx[k];
    vz += sz[k];
  }
  const T rx = T(1) / std::sqrt(vx / T(n) + eps), rz = T(1) / std::sqrt(vz / T(n) + eps);
  for (j = 0; j < n; ++j) {
    x[j] = (x[j] - mx) * rx;
    z[j] = (z[j] - mz) * rz;
    a[j] = x[j] * gam_x[j] + z[j] * gam_z[j] + bias[j];
  }
  rs_x = rx;
  rs_z = rz;
}

// Backward of ln2_row: given da (n), adds the gradients of gam_x, gam_z and the bias into gx,
// gz, gb, writes the gradient of z into dz and overwrites da with that of x (ln_row_backward
// for both layer norms, in two passes).
template <typename T>
void ln2_row_backward(int64_t n, T* __restrict da, const T* __restrict xn,
                      const T* __restrict zn, const T* __restrict gam_x,
                      const T* __restrict gam_z, T rs_x, T rs_z, T* __restrict gx,
                      T* __restrict gz, T* __restrict gb, T* __restrict dz) {
  T s1[16] = {}, s2[16] = {}, s3[16] = {}, s4[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; ++k) {
      const T d = da[j + k], xv = xn[j + k], zv = zn[j + k];
      gx[j + k] += d * xv;
      gz[j + k] += d * zv;
      gb[j + k] += d;
      const T dx = d * gam_x[j + k], dzv = d * gam_z[j + k];
      s1[k] += dx;
      s2[k] += dx * xv;
      s3[k] += dzv;
      s4[k] += dzv * zv;
    }
  T m1 = T(0), m2 = T(0), m3 = T(0), m4 = T(0);
  for (; j < n; ++j) {
    const T d = da[j], xv = xn[j], zv = zn[j];
    gx[j] += d * xv;
    gz[j] += d * zv;
    gb[j] += d;
    const T dx = d * gam_x[j], dzv = d * gam_z[j];
    m1 += dx;
    m2 += dx * xv;
    m3 += dzv;
    m4 += dzv * zv;
  }
  for (int k = 0; k < 16; ++k) {
    m1 += s1[k];
    m2 += s2[k];
    m3 += s3[k];
    m4 += s4[k];
  }
  m1 /= T(n);
  m2 /= T(n);
  m3 /= T(n);
  m4 /= T(n);
  for (j = 0; j < n; ++j) {
    const T d = da[j];
    dz[j] = rs_z * (d * gam_z[j] - m3 - zn[j] * m4);
    da[j] = rs_x * (d * gam_x[j] - m1 - xn[j] * m2);
  }
}

// The optional parts of a forward step (nullptr: off), pointers to row 0 of the step's block.
// Layer norm (Ba et al. 2016): x (B, GH) holds W_ih x_t and z (B, GH) W_hh h_{t-1}, both
// normalised in place, rs_x and rs_z (B) their reciprocal standard deviations, gam_ih and
// gam_hh (GH) their gains, bias (GH) b_ih + b_hh; the pre-activations are then
// LN(x) gam_ih + LN(z) gam_hh + bias. cn (B, H) receives LN(c_t) before gain and bias, rs_c
// (B) its reciprocal std, gam_c and beta_c (H). FGR: sp (B, SH) = s_{t-1} W_gg^T, s_prev and
// s_out (B, SH) the gate states s_{t-1} and s_t. Projection (proj): the step's h receives
// m_t = o_t act(c_t) (B, H), zero in frozen rows (the caller projects it, h_t = m_t W_hr^T,
// and holds h_{t-1} (B, P) in frozen rows).
template <typename T>
struct LstmFwdExtra {
  T* x = nullptr;
  T* rs_x = nullptr;
  const T* gam_ih = nullptr;
  const T* bias = nullptr;
  T* z = nullptr;
  T* rs_z = nullptr;
  const T* gam_hh = nullptr;
  T* cn = nullptr;
  T* rs_c = nullptr;
  const T* gam_c = nullptr;
  const T* beta_c = nullptr;
  T eps = T(0);
  const T* sp = nullptr;
  const T* s_prev = nullptr;
  T* s_out = nullptr;
  bool proj = false;
};

// The optional parts of a backward step: with layer norm, xn, zn (B, GH) and rs_x, rs_z (B) as
// saved by the forward (the normalised products), dz (B, GH) receives the gradient of
// W_hh h_{t-1} and da is overwritten with that of W_ih x_t (the pre-activation gradients are
// not needed after the step: the gradients of the biases and peepholes are summed here); cn,
// rs_c as saved, c (B, H) the cell state c_t. The gain, bias and peephole gradients are summed
// over the steps into rows of their own (summed over the batch by the caller): g_ih, g_hh,
// g_b (B, GH) for gamma_ih, gamma_hh and b_ih + b_hh, g_c and b_c (B, H) for gamma_c and
// beta_c, g_peep (B, 3H) for w_ci, w_cf, w_co (nullptr without peepholes). With FGR, ds (B, SH) is the total gradient of s_t, dsp (B, SH) that of s_{t-1}
// (frozen rows pass ds on into it), dasig (B, SH) receives the pre-activation gradients of the
// sigmoid gates in s's order. Projection: dh is the gradient of m_t (B, H) = dh_t W_hr, dhh
// that of h_t (B, P), passed on into dhp (B, P) by the frozen rows.
template <typename T>
struct LstmBwdExtra {
  const T* xn = nullptr;
  const T* rs_x = nullptr;
  const T* gam_ih = nullptr;
  const T* c = nullptr;
  T* g_ih = nullptr;
  T* g_b = nullptr;
  T* g_peep = nullptr;
  const T* zn = nullptr;
  const T* rs_z = nullptr;
  const T* gam_hh = nullptr;
  T* dz = nullptr;
  const T* cn = nullptr;
  const T* rs_c = nullptr;
  const T* gam_c = nullptr;
  T* g_hh = nullptr;
  T* g_c = nullptr;
  T* b_c = nullptr;
  const T* ds = nullptr;
  T* dsp = nullptr;
  T* dasig = nullptr;
  const T* dhh = nullptr;
  int64_t P = 0;
};

// The gate pass of one step over the rows [b0, b1); every pointer is to row 0 of its (B, *)
// block of the step, m to the step's mask (nullptr: none); E the layer norm and FGR parts.
template <typename T>
void lstm_fwd_step(const LstmLayout& L, int64_t b0, int64_t b1, int64_t H, int64_t GH, T* a,
                   const T* hprev, const T* cprev, T* h, T* c, T* act_out, const bool* m,
                   const T* wci, const T* wcf, const T* wco, const LstmFwdExtra<T>& E) {
  const int64_t SH = L.SH;
  at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
    std::vector<T> ones(H, T(1)), fbuf(H), cbuf(H), ybuf(E.cn != nullptr ? H : 0);
    for (int64_t b = r0; b < r1; ++b) {
      T* ab = a + b * GH;
      const T* cp = cprev + b * H;
      T* act = act_out + b * H;
      if (E.z != nullptr)  // a = LN(W_ih x_t) gamma_ih + LN(W_hh h_{t-1}) gamma_hh + b
        ln2_row(GH, E.x + b * GH, E.z + b * GH, E.gam_ih, E.gam_hh, E.bias, E.eps, ab,
                E.rs_x[b], E.rs_z[b]);
      const T* spb = E.sp != nullptr ? E.sp + b * SH : nullptr;  // FGR: + W_gg s_{t-1}
      const T* ip = ones.data();
      const T* fp = ones.data();
      const T* op = ones.data();
      if (L.oi >= 0) {
        T* ai = ab + L.oi;
        if (spb != nullptr)
          for (int64_t j = 0; j < H; ++j) ai[j] += spb[L.si + j];
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) ai[j] += wci[j] * cp[j];
        for (int64_t j = 0; j < H; ++j) ai[j] = sigm(ai[j]);
        ip = ai;
      }
      if (L.coupled) {
        for (int64_t j = 0; j < H; ++j) fbuf[j] = T(1) - ip[j];
        fp = fbuf.data();
      } else if (L.of >= 0) {
        T* af = ab + L.of;
        if (spb != nullptr)
          for (int64_t j = 0; j < H; ++j) af[j] += spb[L.sf + j];
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) af[j] += wcf[j] * cp[j];
        for (int64_t j = 0; j < H; ++j) af[j] = sigm(af[j]);
        fp = af;
      }
      T* g = ab + L.og;
      if (L.in_act)
        for (int64_t j = 0; j < H; ++j) g[j] = tanh_(g[j]);
      T* cn = cbuf.data();
      for (int64_t j = 0; j < H; ++j) cn[j] = fp[j] * cp[j] + ip[j] * g[j];
      if (L.oo >= 0) {
        T* ao = ab + L.oo;
        if (spb != nullptr)
          for (int64_t j = 0; j < H; ++j) ao[j] += spb[L.so + j];
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) ao[j] += wco[j] * cn[j];
        for (int64_t j = 0; j < H; ++j) ao[j] = sigm(ao[j]);
        op = ao;
      }
      const T* y = cn;  // what the output activation reads: c_t, or LN(c_t) gamma_c + beta_c
      if (E.cn != nullptr) {
        T* cnb = E.cn + b * H;
        std::copy(cn, cn + H, cnb);
        E.rs_c[b] = ln_row(cnb, H, E.eps);
        for (int64_t j = 0; j < H; ++j) ybuf[j] = cnb[j] * E.gam_c[j] + E.beta_c[j];
        y = ybuf.data();
      }
      if (L.out_act) {
        for (int64_t j = 0; j < H; ++j) act[j] = tanh_(y[j]);
      } else {
        for (int64_t j = 0; j < H; ++j) act[j] = y[j];
      }
      T* hb = h + b * H;
      T* cb = c + b * H;
      const bool valid = m == nullptr || m[b];
      if (valid) {
        for (int64_t j = 0; j < H; ++j) hb[j] = op[j] * act[j];
        for (int64_t j = 0; j < H; ++j) cb[j] = cn[j];
      } else {
        if (E.proj) {  // m_t = 0: no part in W_hr's gradient; the caller holds h_{t-1}
          std::fill(hb, hb + H, T(0));
        } else {
          const T* hp = hprev + b * H;
          for (int64_t j = 0; j < H; ++j) hb[j] = hp[j];
        }
        for (int64_t j = 0; j < H; ++j) cb[j] = cp[j];
      }
      if (E.s_out != nullptr) {  // s_t: the sigmoid gates, or s_{t-1} held
        T* sb = E.s_out + b * SH;
        if (!valid) {
          std::copy(E.s_prev + b * SH, E.s_prev + (b + 1) * SH, sb);
        } else {
          sigmoid_gates_to_s(L, H, ab, sb);
        }
      }
    }
  });
}

// Backward of one step over the rows [b0, b1). dh, dc: total gradients of h_t, c_t
// (complete). Writes the pre-activation gradients into da (B, GH), adds the gradient of
// c_{t-1} into dcp and, for frozen rows, passes dh on into dhp (the recurrent product is added
// by the caller); E the layer norm and FGR parts. Written as short passes over a row (the gate
// switches tested outside the loops) so that each loop vectorises.
template <typename T>
void lstm_bwd_step(const LstmLayout& L, int64_t b0, int64_t b1, int64_t H, int64_t GH,
                   const T* gates, const T* cprev, const T* acts, const T* dh, const T* dc,
                   T* da, T* dhp, T* dcp, const bool* m, const T* wci, const T* wcf,
                   const T* wco, const LstmBwdExtra<T>& E) {
  const int64_t SH = L.SH;
  at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
    std::vector<T> ones(H, T(1)), dcbuf(H), scratch(E.dz != nullptr ? H : 0);
    std::vector<T> dybuf(E.dz != nullptr ? H : 0);
    T* dcv = dcbuf.data();  // the total gradient of c_t
    for (int64_t b = r0; b < r1; ++b) {
      const T* gb = gates + b * GH;
      T* dab = da + b * GH;
      const T* cp = cprev + b * H;
      const T* act = acts + b * H;
      const T* dhb = dh + b * H;
      const T* dcb = dc + b * H;
      T* dcpb = dcp + b * H;
      if (m != nullptr && !m[b]) {
        for (int64_t k = 0; k < GH; ++k) dab[k] = T(0);
        if (E.dhh != nullptr) {  // projection: delta h_t (P), not delta m_t
          const T* dhhb = E.dhh + b * E.P;
          T* dhpb = dhp + b * E.P;
          for (int64_t j = 0; j < E.P; ++j) dhpb[j] += dhhb[j];
        } else {
          T* dhpb = dhp + b * H;
          for (int64_t j = 0; j < H; ++j) dhpb[j] += dhb[j];
        }
        for (int64_t j = 0; j < H; ++j) dcpb[j] += dcb[j];
        if (E.dz != nullptr) std::fill(E.dz + b * GH, E.dz + (b + 1) * GH, T(0));
        if (E.dasig != nullptr) {
          std::fill(E.dasig + b * SH, E.dasig + (b + 1) * SH, T(0));
          const T* dsb = E.ds + b * SH;
          T* dspb = E.dsp + b * SH;
          for (int64_t k = 0; k < SH; ++k) dspb[k] += dsb[k];
        }
        continue;
      }
      const T* dsb = E.ds != nullptr ? E.ds + b * SH : nullptr;  // FGR: delta s_t
      const T* i = L.oi >= 0 ? gb + L.oi : ones.data();
      const T* g = gb + L.og;
      T* dao = L.oo >= 0 ? dab + L.oo : nullptr;
      // dcv = the gradient of the output activation's input (c_t, or LN(c_t) gamma + beta)
      if (L.oo >= 0) {
        const T* o = gb + L.oo;
        if (L.out_act) {
          for (int64_t j = 0; j < H; ++j) dcv[j] = dhb[j] * o[j] * (T(1) - act[j] * act[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) dcv[j] = dhb[j] * o[j];
        }
        for (int64_t j = 0; j < H; ++j) dao[j] = dhb[j] * act[j] * o[j] * (T(1) - o[j]);
        if (dsb != nullptr)
          for (int64_t j = 0; j < H; ++j) dao[j] += dsb[L.so + j] * o[j] * (T(1) - o[j]);
      } else if (L.out_act) {
        for (int64_t j = 0; j < H; ++j) dcv[j] = dhb[j] * (T(1) - act[j] * act[j]);
      } else {
        for (int64_t j = 0; j < H; ++j) dcv[j] = dhb[j];
      }
      if (E.dz != nullptr) {  // through LN(c_t): dcv is the gradient of LN(c_t) gamma + beta
        T* dyb = dybuf.data();
        const T* cnb = E.cn + b * H;
        T* gcb = E.g_c + b * H;
        T* bcb = E.b_c + b * H;
        std::copy(dcv, dcv + H, dyb);
        for (int64_t j = 0; j < H; ++j) gcb[j] += dyb[j] * cnb[j];
        for (int64_t j = 0; j < H; ++j) bcb[j] += dyb[j];
        ln_row_backward(H, dyb, E.gam_c, cnb, E.rs_c[b], scratch.data(), dcv);
      }
      for (int64_t j = 0; j < H; ++j) dcv[j] += dcb[j];
      if (L.oo >= 0 && L.peep)
        for (int64_t j = 0; j < H; ++j) dcv[j] += dao[j] * wco[j];  // through w_co c_t
      T* dag = dab + L.og;
      if (L.in_act) {
        for (int64_t j = 0; j < H; ++j) dag[j] = dcv[j] * i[j] * (T(1) - g[j] * g[j]);
      } else {
        for (int64_t j = 0; j < H; ++j) dag[j] = dcv[j] * i[j];
      }
      // the gradient of c_{t-1} through c_t = f c_{t-1} + i g (f = 1 - i when coupled)
      if (L.coupled) {
        for (int64_t j = 0; j < H; ++j) dcpb[j] += dcv[j] * (T(1) - i[j]);
      } else if (L.of >= 0) {
        const T* f = gb + L.of;
        for (int64_t j = 0; j < H; ++j) dcpb[j] += dcv[j] * f[j];
      } else {
        for (int64_t j = 0; j < H; ++j) dcpb[j] += dcv[j];
      }
      if (L.oi >= 0) {
        T* dai = dab + L.oi;
        if (L.coupled) {
          for (int64_t j = 0; j < H; ++j) dai[j] = dcv[j] * (g[j] - cp[j]) * i[j] * (T(1) - i[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) dai[j] = dcv[j] * g[j] * i[j] * (T(1) - i[j]);
        }
        if (dsb != nullptr)
          for (int64_t j = 0; j < H; ++j) dai[j] += dsb[L.si + j] * i[j] * (T(1) - i[j]);
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) dcpb[j] += dai[j] * wci[j];
      }
      if (L.of >= 0) {
        const T* f = gb + L.of;
        T* daf = dab + L.of;
        for (int64_t j = 0; j < H; ++j) daf[j] = dcv[j] * cp[j] * f[j] * (T(1) - f[j]);
        if (dsb != nullptr)
          for (int64_t j = 0; j < H; ++j) daf[j] += dsb[L.sf + j] * f[j] * (T(1) - f[j]);
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) dcpb[j] += daf[j] * wcf[j];
      }
      if (E.dasig != nullptr) {  // the sigmoid gates' gradients in s's order, for W_gg
        T* dsig = E.dasig + b * SH;
        sigmoid_gates_to_s(L, H, dab, dsig);
      }
      if (E.dz != nullptr) {  // through LN(W_hh h_{t-1}) gamma_hh and LN(W_ih x_t) gamma_ih
        if (E.g_peep != nullptr) {  // w_ci, w_cf see c_{t-1}, w_co sees c_t
          T* gp = E.g_peep + b * 3 * H;
          const T* ct = E.c + b * H;
          if (L.oi >= 0)
            for (int64_t j = 0; j < H; ++j) gp[j] += dab[L.oi + j] * cp[j];
          if (L.of >= 0)
            for (int64_t j = 0; j < H; ++j) gp[H + j] += dab[L.of + j] * cp[j];
          if (L.oo >= 0)
            for (int64_t j = 0; j < H; ++j) gp[2 * H + j] += dab[L.oo + j] * ct[j];
        }
        ln2_row_backward(GH, dab, E.xn + b * GH, E.zn + b * GH, E.gam_ih, E.gam_hh, E.rs_x[b],
                         E.rs_z[b], E.g_ih + b * GH, E.g_hh + b * GH, E.g_b + b * GH,
                         E.dz + b * GH);  // dab becomes the gradient of W_ih x_t
      }
    }
  });
}

// The (T, B) bool mask made contiguous (undefined without one) and its data.
at::Tensor mask_tensor(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->contiguous() : at::Tensor();
}
inline const bool* mask_data(const at::Tensor& m) {
  return m.defined() ? m.data_ptr<bool>() : nullptr;
}

template <typename T>
const T* opt_ptr(const c10::optional<at::Tensor>& w) {
  return w.has_value() ? w->data_ptr<T>() : nullptr;
}

void check_grad_buffer(const at::Tensor& d, const at::Tensor& like, const char* name) {
  TORCH_CHECK(d.is_contiguous() && d.dim() == 3 && d.size(0) == like.size(0) + 1 &&
                  d.size(1) == like.size(1),
              name, ": expected a contiguous (T+1, B, H) tensor, got sizes ", d.sizes());
}

// xw: (T, B, GH) input projections with both biases, or with layer norm W_ih x without them
// (normalised in place). ln: empty, or (gamma_ih, b_ih + b_hh (GH; zeros without biases),
// gamma_hh (GH), gamma_c (H), beta_c (H)) for Ba et al.'s layer-normalised LSTM with epsilon
// ln_eps. fgr: empty, or (W_gg (SH, SH), s0 (B, SH)) for full gate recurrence. Returns [hs, cs,
// gates, acts], then with layer norm [xn, zn (T, B, GH) = LN(W_ih x_t), LN(W_hh h_{t-1})
// before their gains, rs_x, rs_z (T, B), cn (T, B, H) = LN(c_t) before gain and bias, rs_c
// (T, B)] (rs: the reciprocal standard deviations), then with FGR [ss (T, B, SH)], the gate
// states (frozen where masked). proj: empty, or (W_hr (P, H)) for the projected LSTM (Sak et al.
// 2014): h0 and hs are then (B, P) and (T, B, P), h_t = m_t W_hr^T with m_t = o_t act(c_t), and
// [ms (T, B, H)], the m_t (zero where masked), comes last.
std::vector<at::Tensor> lstm_forward(const at::Tensor& xw, const at::Tensor& h0,
                                     const at::Tensor& c0, const c10::optional<at::Tensor>& mask,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_ci,
                                     const c10::optional<at::Tensor>& w_cf,
                                     const c10::optional<at::Tensor>& w_co, at::IntArrayRef offsets,
                                     at::IntArrayRef flags, at::TensorList ln, double ln_eps,
                                     at::TensorList fgr, at::TensorList proj) {
  const int64_t T = xw.size(0), B = xw.size(1), GH = xw.size(2), H = c0.size(-1);
  const int64_t P = h0.size(-1);
  const LstmLayout L = lstm_layout(offsets, flags, H);
  const int64_t SH = L.SH;
  const bool has_ln = !ln.empty(), has_fgr = !fgr.empty(), has_proj = !proj.empty();
  TORCH_CHECK(ln.empty() || ln.size() == 5, "lstm_forward: ln must be empty or 5 tensors");
  TORCH_CHECK(fgr.empty() || fgr.size() == 2, "lstm_forward: fgr must be empty or 2 tensors");
  TORCH_CHECK(proj.size() <= 1, "lstm_forward: proj must be empty or 1 tensor");
  TORCH_CHECK(has_proj || P == H, "lstm_forward: h0 of size ", P, " without projection");
  // xw is a fresh buffer of the caller: overwritten in place, step by step, with the
  // activations (with layer norm: with the normalised W_ih x, the activations elsewhere)
  at::Tensor xs = xw.is_contiguous() ? xw : xw.contiguous();
  at::Tensor gates = has_ln ? at::empty_like(xs) : xs;
  at::Tensor hs = at::empty({T, B, P}, xw.options());
  at::Tensor cs = at::empty({T, B, H}, xw.options());
  at::Tensor acts = at::empty({T, B, H}, xw.options());
  at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous(), mk = mask_tensor(mask);
  at::Tensor w_t = transposed(w_hh, T * B);
  // projection: the gate pass writes m_t into ms, then h_t = m_t W_hr^T
  at::Tensor ms = has_proj ? at::empty({T, B, H}, xw.options()) : hs;
  at::Tensor w_hr_t = has_proj ? transposed(proj[0], T * B) : w_t;
  at::Tensor rs_x, zs, rs_z, cns, rs_c, gam_ih, bias, gam_hh, gam_c, beta_c;
  if (has_ln) {
    rs_x = at::empty({T, B}, xw.options());
    zs = at::empty({T, B, GH}, xw.options());
    rs_z = at::empty({T, B}, xw.options());
    cns = at::empty({T, B, H}, xw.options());
    rs_c = at::empty({T, B}, xw.options());
    gam_ih = ln[0].contiguous();
    bias = ln[1].contiguous();
    gam_hh = ln[2].contiguous();
    gam_c = ln[3].contiguous();
    beta_c = ln[4].contiguous();
  }
  at::Tensor ss, s0c, w_gg_t, sp;
  if (has_fgr) {
    ss = at::empty({T, B, SH}, xw.options());
    s0c = fgr[1].contiguous();
    w_gg_t = transposed(fgr[0], T * B);
    sp = at::empty({B, SH}, xw.options());
  }
  const int64_t chunks =
      batch_chunks(T, B, lstm_step_columns(GH, SH, H, has_fgr, has_proj), P);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    scalar_t* gp = gates.data_ptr<scalar_t>();
    scalar_t* hp = hs.data_ptr<scalar_t>();
    scalar_t* mp_out = ms.data_ptr<scalar_t>();
    scalar_t* cp = cs.data_ptr<scalar_t>();
    scalar_t* ap = acts.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    const scalar_t* c0p = c0c.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    const scalar_t* wci = opt_ptr<scalar_t>(w_ci);
    const scalar_t* wcf = opt_ptr<scalar_t>(w_cf);
    const scalar_t* wco = opt_ptr<scalar_t>(w_co);
    scalar_t* zp = has_ln ? zs.data_ptr<scalar_t>() : nullptr;
    scalar_t* ssp = has_fgr ? ss.data_ptr<scalar_t>() : nullptr;
    scalar_t* spp = has_fgr ? sp.data_ptr<scalar_t>() : nullptr;
    const scalar_t* s0p = has_fgr ? s0c.data_ptr<scalar_t>() : nullptr;
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor g_c = gates.narrow(1, b0, b1 - b0);
      const at::Tensor hs_c = hs.narrow(1, b0, b1 - b0);
      const at::Tensor h0_c = h0c.narrow(0, b0, b1 - b0);
      const StepProduct prod(w_t, b1 - b0);
      at::Tensor zs_c, ss_c, s0_c, sp_c;
      if (has_ln) zs_c = zs.narrow(1, b0, b1 - b0);
      if (has_fgr) {
        ss_c = ss.narrow(1, b0, b1 - b0);
        s0_c = s0c.narrow(0, b0, b1 - b0);
        sp_c = sp.narrow(0, b0, b1 - b0);
      }
      const StepProduct prod_gg(has_fgr ? w_gg_t : w_t, b1 - b0);
      const StepProduct prod_hr(w_hr_t, b1 - b0);
      const at::Tensor ms_c = ms.narrow(1, b0, b1 - b0);
      LstmFwdExtra<scalar_t> E;
      E.eps = static_cast<scalar_t>(ln_eps);
      E.proj = has_proj;
      if (has_ln) {
        E.gam_ih = gam_ih.data_ptr<scalar_t>();
        E.bias = bias.data_ptr<scalar_t>();
        E.gam_hh = gam_hh.data_ptr<scalar_t>();
        E.gam_c = gam_c.data_ptr<scalar_t>();
        E.beta_c = beta_c.data_ptr<scalar_t>();
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t s = t * B * H;
        const scalar_t* hprev = t == 0 ? h0p : hp + (t - 1) * B * P;
        if (has_ln) {  // z = W_hh h_{t-1}, normalised in the gate pass (as x = W_ih x_t)
          E.x = xs.data_ptr<scalar_t>() + t * B * GH;
          E.rs_x = rs_x.data_ptr<scalar_t>() + t * B;
          E.z = zp + t * B * GH;
          E.rs_z = rs_z.data_ptr<scalar_t>() + t * B;
          E.cn = cns.data_ptr<scalar_t>() + s;
          E.rs_c = rs_c.data_ptr<scalar_t>() + t * B;
          prod.run<scalar_t>(b1 - b0, hprev + b0 * P, P, E.z + b0 * GH, GH, false, [&] {
            mm_into(zs_c[t], t == 0 ? h0_c : hs_c[t - 1], w_t, c10::nullopt);
          });
        } else {
          prod.run<scalar_t>(b1 - b0, hprev + b0 * P, P, gp + (t * B + b0) * GH, GH, true,
                             [&] { mm_acc(g_c[t], t == 0 ? h0_c : hs_c[t - 1], w_t); });
        }
        if (has_fgr) {  // sp = W_gg s_{t-1}
          E.s_prev = t == 0 ? s0p : ssp + (t - 1) * B * SH;
          E.s_out = ssp + t * B * SH;
          E.sp = spp;
          prod_gg.run<scalar_t>(b1 - b0, E.s_prev + b0 * SH, SH, spp + b0 * SH, SH, false, [&] {
            mm_into(sp_c, t == 0 ? s0_c : ss_c[t - 1], w_gg_t, c10::nullopt);
          });
        }
        lstm_fwd_step<scalar_t>(L, b0, b1, H, GH, gp + t * B * GH, hprev,
                                t == 0 ? c0p : cp + s - B * H, mp_out + s, cp + s, ap + s,
                                mask_at(mp, t, B), wci, wcf, wco, E);
        if (has_proj) {  // h_t = m_t W_hr^T (Sak et al. 2014), h_{t-1} held where masked
          scalar_t* ht = hp + t * B * P;
          prod_hr.run<scalar_t>(b1 - b0, mp_out + s + b0 * H, H, ht + b0 * P, P, false,
                                [&] { mm_into(hs_c[t], ms_c[t], w_hr_t, c10::nullopt); });
          if (const bool* mt = mask_at(mp, t, B))
            for (int64_t b = b0; b < b1; ++b)
              if (!mt[b]) std::copy(hprev + b * P, hprev + (b + 1) * P, ht + b * P);
        }
      }
    });
  });
  std::vector<at::Tensor> out{hs, cs, gates, acts};
  if (has_ln) out.insert(out.end(), {xs, zs, rs_x, rs_z, cns, rs_c});
  if (has_fgr) out.push_back(ss);
  if (has_proj) out.push_back(ms);
  return out;
}

// dH: (T+1, B, H), dC: (T+1, B, H) with row t+1 the upstream gradient of the state after
// step t and row 0 zero; both are accumulated in place (row 0 ends as the initial state's
// gradient). ln: empty, or (gamma_ih, xn, rs_x, gamma_hh, zn, rs_z, gamma_c, cn, rs_c) as
// lstm_forward's; fgr: empty, or (W_gg, dS (T+1, B, SH)), dS accumulated in place as dH.
// Returns [dA (T, B, GH)] (with layer norm: the gradient of W_ih x_t instead), then with layer
// norm [dZ (T, B, GH), the gradient of W_hh h_{t-1}, and those of gamma_ih, gamma_hh, b_ih +
// b_hh (GH), gamma_c, beta_c (H) and of the peepholes (3, H), rows w_ci, w_cf, w_co], then
// with FGR [dAsig (T, B, SH), the sigmoid gates' pre-activation gradients in s's order].
// proj: empty, or (W_hr (P, H)): dH is then (T+1, B, P), and each step's delta m_t =
// delta h_t W_hr (one more per-step product) feeds the gate pass in place of delta h_t.
std::vector<at::Tensor> lstm_backward(const at::Tensor& gates, const at::Tensor& cs,
                                      const at::Tensor& c0, const at::Tensor& acts,
                                      const at::Tensor& dH, const at::Tensor& dC,
                                      const c10::optional<at::Tensor>& mask,
                                      const at::Tensor& w_hh,
                                      const c10::optional<at::Tensor>& w_ci,
                                      const c10::optional<at::Tensor>& w_cf,
                                      const c10::optional<at::Tensor>& w_co,
                                      at::IntArrayRef offsets, at::IntArrayRef flags,
                                      at::TensorList ln, at::TensorList fgr,
                                      at::TensorList proj) {
  const int64_t T = gates.size(0), B = gates.size(1), GH = gates.size(2), H = cs.size(-1);
  const int64_t P = dH.size(-1);
  const LstmLayout L = lstm_layout(offsets, flags, H);
  const int64_t SH = L.SH;
  const bool has_ln = !ln.empty(), has_fgr = !fgr.empty(), has_proj = !proj.empty();
  TORCH_CHECK(proj.size() <= 1, "lstm_backward: proj must be empty or 1 tensor");
  TORCH_CHECK(has_proj || P == H, "lstm_backward: dH of size ", P, " without projection");
  TORCH_CHECK(ln.empty() || ln.size() == 9, "lstm_backward: ln must be empty or 9 tensors");
  TORCH_CHECK(fgr.empty() || fgr.size() == 2, "lstm_backward: fgr must be empty or 2 tensors");
  check_grad_buffer(dH, gates, "dH");
  check_grad_buffer(dC, gates, "dC");
  TORCH_CHECK(gates.is_contiguous() && cs.is_contiguous() && acts.is_contiguous(),
              "lstm_backward: saved tensors must be contiguous");
  at::Tensor dA = at::empty_like(gates, at::MemoryFormat::Contiguous);
  at::Tensor c0c = c0.contiguous(), mk = mask_tensor(mask);
  at::Tensor gam_ih, xn, rs_x, gam_hh, zn, rs_z, gam_c, cn, rs_c, dZ, g_ih, g_hh, g_b, g_c, b_c;
  at::Tensor g_peep;
  if (has_ln) {
    gam_ih = ln[0].contiguous();
    xn = ln[1].contiguous();
    rs_x = ln[2].contiguous();
    gam_hh = ln[3].contiguous();
    zn = ln[4].contiguous();
    rs_z = ln[5].contiguous();
    gam_c = ln[6].contiguous();
    cn = ln[7].contiguous();
    rs_c = ln[8].contiguous();
    dZ = at::empty_like(gates, at::MemoryFormat::Contiguous);
    g_ih = at::zeros({B, GH}, gates.options());
    g_b = at::zeros({B, GH}, gates.options());
    g_peep = at::zeros({B, 3, H}, gates.options());
    g_hh = at::zeros({B, GH}, gates.options());
    g_c = at::zeros({B, H}, gates.options());
    b_c = at::zeros({B, H}, gates.options());
  }
  at::Tensor w_gg, dS, dAsig;
  if (has_fgr) {
    w_gg = fgr[0];
    dS = fgr[1];
    check_grad_buffer(dS, gates, "dS");
    dAsig = at::empty({T, B, SH}, gates.options());
  }
  at::Tensor w_hr, dM;  // projection: delta m_t (B, H) of the current step
  if (has_proj) {
    w_hr = proj[0].contiguous();
    dM = at::empty({B, H}, gates.options());
  }
  const int64_t chunks =
      batch_chunks(T, B, lstm_step_columns(GH, SH, H, has_fgr, has_proj), P);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    const scalar_t* csp = cs.data_ptr<scalar_t>();
    const scalar_t* c0p = c0c.data_ptr<scalar_t>();
    const scalar_t* ap = acts.data_ptr<scalar_t>();
    scalar_t* dhp = dH.data_ptr<scalar_t>();
    scalar_t* dcp = dC.data_ptr<scalar_t>();
    scalar_t* dap = dA.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    const scalar_t* wci = opt_ptr<scalar_t>(w_ci);
    const scalar_t* wcf = opt_ptr<scalar_t>(w_cf);
    const scalar_t* wco = opt_ptr<scalar_t>(w_co);
    // the per-step product into delta h_{t-1}: of dZ with layer norm, else of dA
    scalar_t* dzp = has_ln ? dZ.data_ptr<scalar_t>() : nullptr;
    scalar_t* dsp = has_fgr ? dS.data_ptr<scalar_t>() : nullptr;
    scalar_t* dgp = has_fgr ? dAsig.data_ptr<scalar_t>() : nullptr;
    const at::Tensor& dprod = has_ln ? dZ : dA;
    scalar_t* dprodp = has_ln ? dzp : dap;
    scalar_t* dmp = has_proj ? dM.data_ptr<scalar_t>() : nullptr;
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor dP_c = dprod.narrow(1, b0, b1 - b0);
      const at::Tensor dH_c = dH.narrow(1, b0, b1 - b0);
      const StepProduct prod(w_hh, b1 - b0);
      at::Tensor dS_c, dG_c;
      if (has_fgr) {
        dS_c = dS.narrow(1, b0, b1 - b0);
        dG_c = dAsig.narrow(1, b0, b1 - b0);
      }
      const StepProduct prod_gg(has_fgr ? w_gg : w_hh, b1 - b0);
      const StepProduct prod_hr(has_proj ? w_hr : w_hh, b1 - b0);
      at::Tensor dM_c;
      if (has_proj) dM_c = dM.narrow(0, b0, b1 - b0);
      LstmBwdExtra<scalar_t> E;
      E.P = P;
      if (has_ln) {
        E.gam_hh = gam_hh.data_ptr<scalar_t>();
        E.gam_c = gam_c.data_ptr<scalar_t>();
        E.gam_ih = gam_ih.data_ptr<scalar_t>();
        E.g_ih = g_ih.data_ptr<scalar_t>();
        E.g_b = g_b.data_ptr<scalar_t>();
        if (L.peep) E.g_peep = g_peep.data_ptr<scalar_t>();
        E.g_hh = g_hh.data_ptr<scalar_t>();
        E.g_c = g_c.data_ptr<scalar_t>();
        E.b_c = b_c.data_ptr<scalar_t>();
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t s = t * B * H;
        if (has_ln) {
          E.xn = xn.data_ptr<scalar_t>() + t * B * GH;
          E.rs_x = rs_x.data_ptr<scalar_t>() + t * B;
          E.c = csp + s;
          E.zn = zn.data_ptr<scalar_t>() + t * B * GH;
          E.rs_z = rs_z.data_ptr<scalar_t>() + t * B;
          E.dz = dzp + t * B * GH;
          E.cn = cn.data_ptr<scalar_t>() + s;
          E.rs_c = rs_c.data_ptr<scalar_t>() + t * B;
        }
        if (has_fgr) {
          E.ds = dsp + (t + 1) * B * SH;
          E.dsp = dsp + t * B * SH;
          E.dasig = dgp + t * B * SH;
        }
        scalar_t* dh_t = dhp + (t + 1) * B * P;  // delta h_t, complete
        scalar_t* dh_prev = dhp + t * B * P;
        const scalar_t* dm = dh_t;  // delta m_t: delta h_t, or delta h_t W_hr (projection)
        if (has_proj) {
          prod_hr.run<scalar_t>(b1 - b0, dh_t + b0 * P, P, dmp + b0 * H, H, false,
                                [&] { mm_into(dM_c, dH_c[t + 1], w_hr, c10::nullopt); });
          dm = dmp;
          E.dhh = dh_t;
        }
        lstm_bwd_step<scalar_t>(L, b0, b1, H, GH, gp + t * B * GH,
                                t == 0 ? c0p : csp + s - B * H, ap + s, dm, dcp + s + B * H,
                                dap + t * B * GH, dh_prev, dcp + s, mask_at(mp, t, B), wci,
                                wcf, wco, E);
        prod.run<scalar_t>(b1 - b0, dprodp + (t * B + b0) * GH, GH, dh_prev + b0 * P, P, true,
                           [&] { mm_acc(dH_c[t], dP_c[t], w_hh); });
        if (has_fgr)  // delta s_{t-1} += delta a^sigma_t W_gg
          prod_gg.run<scalar_t>(b1 - b0, dgp + (t * B + b0) * SH, SH, dsp + (t * B + b0) * SH,
                                SH, true, [&] { mm_acc(dS_c[t], dG_c[t], w_gg); });
      }
    });
  });
  std::vector<at::Tensor> out{dA};
  if (has_ln)
    out.insert(out.end(), {dZ, g_ih.sum(0), g_hh.sum(0), g_b.sum(0), g_c.sum(0), b_c.sum(0),
                           g_peep.sum(0)});
  if (has_fgr) out.push_back(dAsig);
  return out;
}

// ------------------------------------------------------------------ GRU and RNN: one row
// The gate passes of one batch row, outside the dispatch macros and with restrict pointers so
// that every loop vectorises. valid: the row's mask at this step (false: the state is held).

// Both GRUs' new state from their gates gb = (r, z, n): h_t = n + z (h_{t-1} - n), or h_{t-1}
// held where the row is masked (valid false).
template <typename T>
void gru_state_row(int64_t H, const T* __restrict gb, const T* __restrict hpb,
                   T* __restrict hb, bool valid) {
  if (valid) {
    const T* z = gb + H;
    const T* n = gb + 2 * H;
    for (int64_t j = 0; j < H; ++j) hb[j] = n[j] + z[j] * (hpb[j] - n[j]);
  } else {
    for (int64_t j = 0; j < H; ++j) hb[j] = hpb[j];
  }
}

// torch.nn's GRU, forward. ab: (3H) pre-activations, input part (r, z, n; overwritten with the
// gates); pb: (3H) recurrent part W_hh h + b_hh; pno: (H) kept p_n; hpb, hb: h_{t-1}, h_t.
template <typename T>
void gru_fwd_row(int64_t H, T* __restrict ab, const T* __restrict pb, T* __restrict pno,
                 const T* __restrict hpb, T* __restrict hb, bool valid) {
  for (int64_t j = 0; j < 2 * H; ++j) ab[j] = sigm(ab[j] + pb[j]);  // r, z
  T* an = ab + 2 * H;
  const T* pnb = pb + 2 * H;
  for (int64_t j = 0; j < H; ++j) pno[j] = pnb[j];
  for (int64_t j = 0; j < H; ++j) an[j] = tanh_(an[j] + ab[j] * pnb[j]);  // n
  gru_state_row(H, ab, hpb, hb, valid);
}

// torch.nn's GRU, backward: dxb, dpb (3H) the gradients of the input and recurrent parts;
// adds the direct part of the gradient of h_{t-1} into dhpb.
template <typename T>
void gru_bwd_row(int64_t H, const T* __restrict gb, const T* __restrict pnb,
                 const T* __restrict hpb, const T* __restrict dhb, T* __restrict dxb,
                 T* __restrict dpb, T* __restrict dhpb, bool valid) {
  if (!valid) {
    for (int64_t k = 0; k < 3 * H; ++k) dxb[k] = T(0);
    for (int64_t k = 0; k < 3 * H; ++k) dpb[k] = T(0);
    for (int64_t j = 0; j < H; ++j) dhpb[j] += dhb[j];
    return;
  }
  const T* r = gb;
  const T* z = gb + H;
  const T* n = gb + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T dhj = dhb[j];
    const T dan = dhj * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    const T daz = dhj * (hpb[j] - n[j]) * z[j] * (T(1) - z[j]);
    const T dar = dan * pnb[j] * r[j] * (T(1) - r[j]);
    dxb[j] = dar;
    dpb[j] = dar;
    dxb[H + j] = daz;
    dpb[H + j] = daz;
    dxb[2 * H + j] = dan;
    dpb[2 * H + j] = dan * r[j];
    dhpb[j] += dhj * z[j];
  }
}

// Cho's GRU, forward, before the product W_hn (r h): the gates r, z and r h_{t-1} into rhb.
template <typename T>
void gru_cho_fwd_row1(int64_t H, T* __restrict ab, const T* __restrict hpb,
                      T* __restrict rhb) {
  for (int64_t j = 0; j < 2 * H; ++j) ab[j] = sigm(ab[j]);  // r, z
  for (int64_t j = 0; j < H; ++j) rhb[j] = ab[j] * hpb[j];
}

// Cho's GRU, forward, after the product: n and h_t.
template <typename T>
void gru_cho_fwd_row2(int64_t H, T* __restrict ab, const T* __restrict hpb, T* __restrict hb,
                      bool valid) {
  T* an = ab + 2 * H;
  for (int64_t j = 0; j < H; ++j) an[j] = tanh_(an[j]);  // n
  gru_state_row(H, ab, hpb, hb, valid);
}

// Cho's GRU, backward, before the product with W_hn: the gradients of n and z.
template <typename T>
void gru_cho_bwd_row1(int64_t H, const T* __restrict gb, const T* __restrict hpb,
                      const T* __restrict dhb, T* __restrict dab, T* __restrict dhpb,
                      bool valid) {
  if (!valid) {
    for (int64_t k = 0; k < 3 * H; ++k) dab[k] = T(0);
    for (int64_t j = 0; j < H; ++j) dhpb[j] += dhb[j];
    return;
  }
  const T* z = gb + H;
  const T* n = gb + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    dab[2 * H + j] = dhb[j] * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    dab[H + j] = dhb[j] * (hpb[j] - n[j]) * z[j] * (T(1) - z[j]);
    dhpb[j] += dhb[j] * z[j];
  }
}

// Cho's GRU, backward, after the product: drb = delta (r h_{t-1}) gives the gradient of r.
template <typename T>
void gru_cho_bwd_row2(int64_t H, const T* __restrict gb, const T* __restrict hpb,
                      const T* __restrict drb, T* __restrict dab, T* __restrict dhpb) {
  const T* r = gb;
  for (int64_t j = 0; j < H; ++j) {
    dab[j] = drb[j] * hpb[j] * r[j] * (T(1) - r[j]);
    dhpb[j] += drb[j] * r[j];
  }
}

// Elman RNN, forward: hb holds W_hh h_{t-1} + W_ih x_t + b, overwritten with h_t.
template <typename T>
void rnn_fwd_row(int64_t H, T* __restrict hb, const T* __restrict hqb, bool valid, bool relu) {
  if (!valid) {
    for (int64_t j = 0; j < H; ++j) hb[j] = hqb[j];
  } else if (relu) {
    for (int64_t j = 0; j < H; ++j) hb[j] = hb[j] > T(0) ? hb[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) hb[j] = tanh_(hb[j]);
  }
}

// Elman RNN, backward: the pre-activation gradient dab; frozen rows pass dh on into dhpb.
template <typename T>
void rnn_bwd_row(int64_t H, const T* __restrict hb, const T* __restrict dhb, T* __restrict dab,
                 T* __restrict dhpb, bool valid, bool relu) {
  if (!valid) {
    for (int64_t j = 0; j < H; ++j) dab[j] = T(0);
    for (int64_t j = 0; j < H; ++j) dhpb[j] += dhb[j];
  } else if (relu) {
    for (int64_t j = 0; j < H; ++j) dab[j] = hb[j] > T(0) ? dhb[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) dab[j] = dhb[j] * (T(1) - hb[j] * hb[j]);
  }
}

// ------------------------------------------------------------------------------------- GRU
// torch.nn's GRU (reset_after=True), gate order r, z, n. xw: (T, B, 3H) = W_ih x + b_ih.
// Returns (hs, gates (T, B, 3H) = r, z, n, pn (T, B, H) = W_hn h_{t-1} + b_hn).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& xw, const at::Tensor& h0, const c10::optional<at::Tensor>& mask,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(-1), G = 3 * H;
  at::Tensor gates = xw.is_contiguous() ? xw : xw.contiguous();  // overwritten in place
  at::Tensor hs = at::empty({T, B, H}, xw.options());
  at::Tensor pn = at::empty({T, B, H}, xw.options());
  at::Tensor p = at::empty({B, G}, xw.options());
  at::Tensor h0c = h0.contiguous(), mk = mask_tensor(mask);
  at::Tensor w_t = transposed(w_hh, T * B);
  const int64_t chunks = batch_chunks(T, B, G, H);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    scalar_t* gp = gates.data_ptr<scalar_t>();
    scalar_t* hsp = hs.data_ptr<scalar_t>();
    scalar_t* pnp = pn.data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    const scalar_t* bhp = opt_ptr<scalar_t>(b_hh);
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      at::Tensor p_c = p.narrow(0, b0, b1 - b0);
      const at::Tensor hs_c = hs.narrow(1, b0, b1 - b0);
      const at::Tensor h0_c = h0c.narrow(0, b0, b1 - b0);
      const StepProduct prod(w_t, b1 - b0);
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* hp = t == 0 ? h0p : hsp + (t - 1) * B * H;
        if (prod.small && bhp != nullptr)  // p = b_hh + h_{t-1} W_hh^T
          for (int64_t b = b0; b < b1; ++b) std::copy(bhp, bhp + G, pp + b * G);
        prod.run<scalar_t>(b1 - b0, hp + b0 * H, H, pp + b0 * G, G, bhp != nullptr, [&] {
          mm_into(p_c, t == 0 ? h0_c : hs_c[t - 1], w_t, b_hh);
        });
        scalar_t* a = gp + t * B * G;
        scalar_t* h = hsp + t * B * H;
        scalar_t* pnt = pnp + t * B * H;
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_fwd_row<scalar_t>(H, a + b * G, pp + b * G, pnt + b * H, hp + b * H, h + b * H,
                                  m == nullptr || m[b]);
        });
      }
    });
  });
  return {hs, gates, pn};
}

// dH: (T+1, B, H) as for the LSTM. Returns (dX, dP): the gradients of the input part
// [r, z, n] and of the recurrent part [r, z, p_n] of the pre-activations, (T, B, 3H) each.
std::tuple<at::Tensor, at::Tensor> gru_backward(const at::Tensor& gates, const at::Tensor& pn,
                                                const at::Tensor& hs, const at::Tensor& h0,
                                                const at::Tensor& dH,
                                                const c10::optional<at::Tensor>& mask,
                                                const at::Tensor& w_hh) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(-1), G = 3 * H;
  check_grad_buffer(dH, gates, "dH");
  TORCH_CHECK(gates.is_contiguous() && pn.is_contiguous() && hs.is_contiguous(),
              "gru_backward: saved tensors must be contiguous");
  at::Tensor dX = at::empty_like(gates, at::MemoryFormat::Contiguous);
  at::Tensor dP = at::empty_like(gates, at::MemoryFormat::Contiguous);
  at::Tensor h0c = h0.contiguous(), mk = mask_tensor(mask);
  const int64_t chunks = batch_chunks(T, B, G, H);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    const scalar_t* pnp = pn.data_ptr<scalar_t>();
    const scalar_t* hsp = hs.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    scalar_t* dHp = dH.data_ptr<scalar_t>();
    scalar_t* dXp = dX.data_ptr<scalar_t>();
    scalar_t* dPp = dP.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor dP_c = dP.narrow(1, b0, b1 - b0);
      const at::Tensor dH_c = dH.narrow(1, b0, b1 - b0);
      const StepProduct prod(w_hh, b1 - b0);
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* gt = gp + t * B * G;
        const scalar_t* pnt = pnp + t * B * H;
        const scalar_t* hp = t == 0 ? h0p : hsp + (t - 1) * B * H;
        const scalar_t* dh = dHp + (t + 1) * B * H;
        scalar_t* dx = dXp + t * B * G;
        scalar_t* dp = dPp + t * B * G;
        scalar_t* dhpp = dHp + t * B * H;
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_bwd_row<scalar_t>(H, gt + b * G, pnt + b * H, hp + b * H, dh + b * H, dx + b * G,
                                  dp + b * G, dhpp + b * H, m == nullptr || m[b]);
        });
        prod.run<scalar_t>(b1 - b0, dp + b0 * G, G, dhpp + b0 * H, H, true,
                           [&] { mm_acc(dH_c[t], dP_c[t], w_hh); });
      }
    });
  });
  return {dX, dP};
}

// Cho et al. 2014's GRU (reset_after=False): n_t = tanh(xbar^n + W_hn (r_t h_{t-1})), every
// bias outside r. xw: (T, B, 3H) = W_ih x + b_ih + b_hh, overwritten in place. Returns (hs,
// gates (T, B, 3H) = r, z, n, rh (T, B, H) = r_t h_{t-1}).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_cho_forward(
    const at::Tensor& xw, const at::Tensor& h0, const c10::optional<at::Tensor>& mask,
    const at::Tensor& w_hh) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(-1), G = 3 * H;
  at::Tensor gates = xw.is_contiguous() ? xw : xw.contiguous();
  at::Tensor hs = at::empty({T, B, H}, xw.options());
  at::Tensor rh = at::empty({T, B, H}, xw.options());
  at::Tensor h0c = h0.contiguous(), mk = mask_tensor(mask);
  at::Tensor w_rz_t = transposed(w_hh.narrow(0, 0, 2 * H), T * B);
  at::Tensor w_n_t = transposed(w_hh.narrow(0, 2 * H, H), T * B);
  const int64_t chunks = batch_chunks(T, B, G, H);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_cho_forward", [&] {
    scalar_t* gp = gates.data_ptr<scalar_t>();
    scalar_t* hsp = hs.data_ptr<scalar_t>();
    scalar_t* rhp = rh.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor g_c = gates.narrow(1, b0, b1 - b0);
      const at::Tensor hs_c = hs.narrow(1, b0, b1 - b0);
      const at::Tensor rh_c = rh.narrow(1, b0, b1 - b0);
      const at::Tensor h0_c = h0c.narrow(0, b0, b1 - b0);
      const StepProduct prod_rz(w_rz_t, b1 - b0), prod_n(w_n_t, b1 - b0);
      for (int64_t t = 0; t < T; ++t) {
        scalar_t* a = gp + t * B * G;
        const scalar_t* hp = t == 0 ? h0p : hsp + (t - 1) * B * H;
        scalar_t* rht = rhp + t * B * H;
        prod_rz.run<scalar_t>(b1 - b0, hp + b0 * H, H, a + b0 * G, G, true, [&] {
          mm_acc(g_c[t].narrow(1, 0, 2 * H), t == 0 ? h0_c : hs_c[t - 1], w_rz_t);
        });
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_cho_fwd_row1<scalar_t>(H, a + b * G, hp + b * H, rht + b * H);
        });
        prod_n.run<scalar_t>(b1 - b0, rht + b0 * H, H, a + b0 * G + 2 * H, G, true,
                             [&] { mm_acc(g_c[t].narrow(1, 2 * H, H), rh_c[t], w_n_t); });
        scalar_t* h = hsp + t * B * H;
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_cho_fwd_row2<scalar_t>(H, a + b * G, hp + b * H, h + b * H, m == nullptr || m[b]);
        });
      }
    });
  });
  return {hs, gates, rh};
}

// dH: (T+1, B, H) as for the LSTM. Returns dA (T, B, 3H), the gradients of the
// pre-activations [r, z, n] (those of W_hn (r h) equal those of n).
at::Tensor gru_cho_backward(const at::Tensor& gates, const at::Tensor& hs, const at::Tensor& h0,
                            const at::Tensor& dH, const c10::optional<at::Tensor>& mask,
                            const at::Tensor& w_hh) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(-1), G = 3 * H;
  check_grad_buffer(dH, gates, "dH");
  TORCH_CHECK(gates.is_contiguous() && hs.is_contiguous(),
              "gru_cho_backward: saved tensors must be contiguous");
  at::Tensor dA = at::empty_like(gates, at::MemoryFormat::Contiguous);
  at::Tensor drh = at::empty({B, H}, gates.options());
  at::Tensor h0c = h0.contiguous(), mk = mask_tensor(mask);
  at::Tensor w_rz = w_hh.narrow(0, 0, 2 * H);
  at::Tensor w_n = w_hh.narrow(0, 2 * H, H);
  const int64_t chunks = batch_chunks(T, B, G, H);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_cho_backward", [&] {
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    const scalar_t* hsp = hs.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    scalar_t* dHp = dH.data_ptr<scalar_t>();
    scalar_t* dAp = dA.data_ptr<scalar_t>();
    scalar_t* drp = drh.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor dA_c = dA.narrow(1, b0, b1 - b0);
      const at::Tensor dH_c = dH.narrow(1, b0, b1 - b0);
      at::Tensor drh_c = drh.narrow(0, b0, b1 - b0);
      const StepProduct prod_n(w_n, b1 - b0), prod_rz(w_rz, b1 - b0);
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* gt = gp + t * B * G;
        const scalar_t* hp = t == 0 ? h0p : hsp + (t - 1) * B * H;
        const scalar_t* dh = dHp + (t + 1) * B * H;
        scalar_t* da = dAp + t * B * G;
        scalar_t* dhpp = dHp + t * B * H;
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_cho_bwd_row1<scalar_t>(H, gt + b * G, hp + b * H, dh + b * H, da + b * G,
                                       dhpp + b * H, m == nullptr || m[b]);
        });
        prod_n.run<scalar_t>(b1 - b0, da + b0 * G + 2 * H, G, drp + b0 * H, H, false, [&] {
          mm_into(drh_c, dA_c[t].narrow(1, 2 * H, H), w_n, c10::nullopt);  // delta (r h_{t-1})
        });
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            gru_cho_bwd_row2<scalar_t>(H, gt + b * G, hp + b * H, drp + b * H, da + b * G,
                                       dhpp + b * H);
        });
        prod_rz.run<scalar_t>(b1 - b0, da + b0 * G, G, dhpp + b0 * H, H, true,
                              [&] { mm_acc(dH_c[t], dA_c[t].narrow(1, 0, 2 * H), w_rz); });
      }
    });
  });
  return dA;
}

// ------------------------------------------------------------------------------------- RNN
// xw: (T, B, H) = W_ih x + b_ih + b_hh. Returns hs.
at::Tensor rnn_forward(const at::Tensor& xw, const at::Tensor& h0,
                       const c10::optional<at::Tensor>& mask, const at::Tensor& w_hh,
                       bool relu) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(-1);
  at::Tensor hs = xw.is_contiguous() ? xw : xw.contiguous();  // overwritten in place
  at::Tensor h0c = h0.contiguous(), mk = mask_tensor(mask);
  at::Tensor w_t = transposed(w_hh, T * B);
  const int64_t chunks = batch_chunks(T, B, H, H);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnn_forward", [&] {
    scalar_t* hsp = hs.data_ptr<scalar_t>();
    const scalar_t* h0p = h0c.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor hs_c = hs.narrow(1, b0, b1 - b0);
      const at::Tensor h0_c = h0c.narrow(0, b0, b1 - b0);
      const StepProduct prod(w_t, b1 - b0);
      for (int64_t t = 0; t < T; ++t) {
        scalar_t* hp = hsp + t * B * H;
        const scalar_t* hq = t == 0 ? h0p : hsp + (t - 1) * B * H;
        prod.run<scalar_t>(b1 - b0, hq + b0 * H, H, hp + b0 * H, H, true,
                           [&] { mm_acc(hs_c[t], t == 0 ? h0_c : hs_c[t - 1], w_t); });
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            rnn_fwd_row<scalar_t>(H, hp + b * H, hq + b * H, m == nullptr || m[b], relu);
        });
      }
    });
  });
  return hs;
}

// dH: (T+1, B, H) as for the LSTM. Returns dA (T, B, H), the pre-activation gradients.
at::Tensor rnn_backward(const at::Tensor& hs, const at::Tensor& dH,
                        const c10::optional<at::Tensor>& mask, const at::Tensor& w_hh,
                        bool relu) {
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  check_grad_buffer(dH, hs, "dH");
  TORCH_CHECK(hs.is_contiguous(), "rnn_backward: saved tensors must be contiguous");
  at::Tensor dA = at::empty_like(hs, at::MemoryFormat::Contiguous);
  at::Tensor mk = mask_tensor(mask);
  const int64_t chunks = batch_chunks(T, B, H, H);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_backward", [&] {
    const scalar_t* hsp = hs.data_ptr<scalar_t>();
    scalar_t* dHp = dH.data_ptr<scalar_t>();
    scalar_t* dAp = dA.data_ptr<scalar_t>();
    const bool* mp = mask_data(mk);
    over_batch(B, chunks, [&](int64_t b0, int64_t b1) {
      const at::Tensor dA_c = dA.narrow(1, b0, b1 - b0);
      const at::Tensor dH_c = dH.narrow(1, b0, b1 - b0);
      const StepProduct prod(w_hh, b1 - b0);
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* h = hsp + t * B * H;
        const scalar_t* dh = dHp + (t + 1) * B * H;
        scalar_t* da = dAp + t * B * H;
        scalar_t* dhpp = dHp + t * B * H;
        const bool* m = mask_at(mp, t, B);
        at::parallel_for(b0, b1, grain(H), [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b)
            rnn_bwd_row<scalar_t>(H, h + b * H, dh + b * H, da + b * H, dhpp + b * H,
                                  m == nullptr || m[b], relu);
        });
        prod.run<scalar_t>(b1 - b0, da + b0 * H, H, dhpp + b0 * H, H, true,
                           [&] { mm_acc(dH_c[t], dA_c[t], w_hh); });
      }
    });
  });
  return dA;
}

}  // namespace

TORCH_LIBRARY(carousel_kernels, m) {
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("gru_cho_forward", &gru_cho_forward);
  m.def("gru_cho_backward", &gru_cho_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
  m.def("batch_chunks", &batch_chunks);
  m.def("matmul", &matmul);
  m.def("onednn_used", &onednn_used);
  m.def("small_mm", &small_mm);
  m.def("matmul_acc(Tensor(a!) out, Tensor a, Tensor b) -> ()", &matmul_acc);
}
