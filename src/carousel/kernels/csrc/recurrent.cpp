// Compiled forward and backward through time for carousel's built-in cells.
//
// The time loop runs here: one matrix product per step (at::addmm_out into a preallocated
// buffer) and one fused pass of the gate arithmetic over the B x H units (at::parallel_for
// over the batch). The input projections of all steps and the weight gradients, summed over
// time, are single matrix products done by the Python wrapper (carousel/kernels/__init__.py),
// which also checks every argument. The math and the mask convention are those of the
// pure-PyTorch path, carousel/bptt/ (its docstrings give the equations).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <cstdint>

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

// ------------------------------------------------------------------------------------ LSTM
// Gate rows in torch.nn's order with absent gates left out; oi, of_, og, oo are the column
// offsets of the gates in a (B, G*H) row (-1: absent). flags: peephole, input_activation,
// output_activation, coupled.
struct LstmLayout {
  int64_t oi, of, og, oo;
  bool peep, in_act, out_act, coupled;
};

template <typename T>
void lstm_fwd_step(const LstmLayout& L, int64_t B, int64_t H, int64_t GH, T* a, const T* hprev,
                   const T* cprev, T* h, T* c, T* act_out, const bool* m, const T* wci,
                   const T* wcf, const T* wco) {
  at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
    std::vector<T> ones(H, T(1)), fbuf(H), cbuf(H);
    for (int64_t b = b0; b < b1; ++b) {
      T* ab = a + b * GH;
      const T* cp = cprev + b * H;
      T* act = act_out + b * H;
      const T* ip = ones.data();
      const T* fp = ones.data();
      const T* op = ones.data();
      if (L.oi >= 0) {
        T* ai = ab + L.oi;
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
        if (L.peep)
          for (int64_t j = 0; j < H; ++j) ao[j] += wco[j] * cn[j];
        for (int64_t j = 0; j < H; ++j) ao[j] = sigm(ao[j]);
        op = ao;
      }
      if (L.out_act) {
        for (int64_t j = 0; j < H; ++j) act[j] = tanh_(cn[j]);
      } else {
        for (int64_t j = 0; j < H; ++j) act[j] = cn[j];
      }
      T* hb = h + b * H;
      T* cb = c + b * H;
      if (m == nullptr || m[b]) {
        for (int64_t j = 0; j < H; ++j) hb[j] = op[j] * act[j];
        for (int64_t j = 0; j < H; ++j) cb[j] = cn[j];
      } else {
        const T* hp = hprev + b * H;
        for (int64_t j = 0; j < H; ++j) hb[j] = hp[j];
        for (int64_t j = 0; j < H; ++j) cb[j] = cp[j];
      }
    }
  });
}

// Backward of one step. dh, dc: total gradients of h_t, c_t (complete). Writes the
// pre-activation gradients into da (B, GH), adds the gradient of c_{t-1} into dcp and, for
// frozen rows, passes dh on into dhp (the recurrent product is added by the caller).
template <typename T>
void lstm_bwd_step(const LstmLayout& L, int64_t B, int64_t H, int64_t GH, const T* gates,
                   const T* cprev, const T* acts, const T* dh, const T* dc, T* da, T* dhp, T* dcp,
                   const bool* m, const T* wci, const T* wcf, const T* wco) {
  at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* gb = gates + b * GH;
      T* dab = da + b * GH;
      const T* cp = cprev + b * H;
      const T* actb = acts + b * H;
      const T* dhb = dh + b * H;
      const T* dcb = dc + b * H;
      T* dhpb = dhp + b * H;
      T* dcpb = dcp + b * H;
      if (m != nullptr && !m[b]) {
        for (int64_t k = 0; k < GH; ++k) dab[k] = T(0);
        for (int64_t j = 0; j < H; ++j) {
          dhpb[j] += dhb[j];
          dcpb[j] += dcb[j];
        }
        continue;
      }
      for (int64_t j = 0; j < H; ++j) {
        const T cpj = cp[j], dhj = dhb[j];
        const T i = L.oi >= 0 ? gb[L.oi + j] : T(1);
        const T f = L.coupled ? T(1) - i : (L.of >= 0 ? gb[L.of + j] : T(1));
        const T g = gb[L.og + j];
        const T o = L.oo >= 0 ? gb[L.oo + j] : T(1);
        const T act = actb[j];
        T dcj = dcb[j] + dhj * o * (L.out_act ? T(1) - act * act : T(1));
        if (L.oo >= 0) {
          const T dao = dhj * act * o * (T(1) - o);
          dab[L.oo + j] = dao;
          if (L.peep) dcj += dao * wco[j];
        }
        T dcprev = dcj * f;
        if (L.oi >= 0) {
          const T dai = dcj * (L.coupled ? g - cpj : g) * i * (T(1) - i);
          dab[L.oi + j] = dai;
          if (L.peep) dcprev += dai * wci[j];
        }
        if (L.of >= 0) {
          const T daf = dcj * cpj * f * (T(1) - f);
          dab[L.of + j] = daf;
          if (L.peep) dcprev += daf * wcf[j];
        }
        dab[L.og + j] = L.in_act ? dcj * i * (T(1) - g * g) : dcj * i;
        dcpb[j] += dcprev;
      }
    }
  });
}

const bool* mask_ptr(const c10::optional<at::Tensor>& mask, int64_t t) {
  if (!mask.has_value()) return nullptr;
  return mask->select(0, t).data_ptr<bool>();
}

template <typename T>
const T* opt_ptr(const c10::optional<at::Tensor>& w) {
  return w.has_value() ? w->data_ptr<T>() : nullptr;
}

// xw: (T, B, GH) input projections with both biases; returns (hs, cs, gates).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& c0,
    const c10::optional<at::Tensor>& mask, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_ci, const c10::optional<at::Tensor>& w_cf,
    const c10::optional<at::Tensor>& w_co, at::IntArrayRef offsets, at::IntArrayRef flags) {
  const int64_t T = xw.size(0), B = xw.size(1), GH = xw.size(2), H = c0.size(-1);
  LstmLayout L{offsets[0], offsets[1], offsets[2], offsets[3],
               flags[0] != 0, flags[1] != 0, flags[2] != 0, flags[3] != 0};
  // xw is a fresh buffer of the caller: overwritten in place, step by step, with the
  // activations
  at::Tensor gates = xw.is_contiguous() ? xw : xw.contiguous();
  at::Tensor hs = at::empty({T, B, H}, xw.options());
  at::Tensor cs = at::empty({T, B, H}, xw.options());
  at::Tensor acts = at::empty({T, B, H}, xw.options());
  at::Tensor w_t = w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      at::Tensor c_prev = t == 0 ? c0 : cs[t - 1];
      at::Tensor a = gates[t];
      a.addmm_(h_prev, w_t);
      lstm_fwd_step<scalar_t>(L, B, H, GH, a.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                              c_prev.data_ptr<scalar_t>(), hs[t].data_ptr<scalar_t>(),
                              cs[t].data_ptr<scalar_t>(), acts[t].data_ptr<scalar_t>(),
                              mask_ptr(mask, t), opt_ptr<scalar_t>(w_ci),
                              opt_ptr<scalar_t>(w_cf), opt_ptr<scalar_t>(w_co));
    }
  });
  return {hs, cs, gates, acts};
}

// dH: (T+1, B, H), dC: (T+1, B, H) with row t+1 the upstream gradient of the state after
// step t and row 0 zero; both are accumulated in place (row 0 ends as the initial state's
// gradient). Returns dA (T, B, GH).
at::Tensor lstm_backward(const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& c0,
                         const at::Tensor& acts,
                         const at::Tensor& dH, const at::Tensor& dC, const c10::optional<at::Tensor>& mask,
                         const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_ci,
                         const c10::optional<at::Tensor>& w_cf,
                         const c10::optional<at::Tensor>& w_co, at::IntArrayRef offsets,
                         at::IntArrayRef flags) {
  const int64_t T = gates.size(0), B = gates.size(1), GH = gates.size(2), H = cs.size(-1);
  LstmLayout L{offsets[0], offsets[1], offsets[2], offsets[3],
               flags[0] != 0, flags[1] != 0, flags[2] != 0, flags[3] != 0};
  at::Tensor dA = at::empty_like(gates);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      at::Tensor c_prev = t == 0 ? c0 : cs[t - 1];
      at::Tensor da = dA[t];
      at::Tensor dhp = dH[t];
      lstm_bwd_step<scalar_t>(L, B, H, GH, gates[t].data_ptr<scalar_t>(),
                              c_prev.data_ptr<scalar_t>(), acts[t].data_ptr<scalar_t>(),
                              dH[t + 1].data_ptr<scalar_t>(), dC[t + 1].data_ptr<scalar_t>(),
                              da.data_ptr<scalar_t>(), dhp.data_ptr<scalar_t>(),
                              dC[t].data_ptr<scalar_t>(), mask_ptr(mask, t),
                              opt_ptr<scalar_t>(w_ci), opt_ptr<scalar_t>(w_cf),
                              opt_ptr<scalar_t>(w_co));
      dhp.addmm_(da, w_hh);
    }
  });
  return dA;
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
  at::Tensor w_t = w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      if (b_hh.has_value()) {
        at::addmm_out(p, *b_hh, h_prev, w_t);
      } else {
        at::mm_out(p, h_prev, w_t);
      }
      scalar_t* a = gates[t].data_ptr<scalar_t>();
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* h = hs[t].data_ptr<scalar_t>();
      scalar_t* pnt = pn[t].data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* ab = a + b * G;
          const scalar_t* pb = pp + b * G;
          for (int64_t j = 0; j < 2 * H; ++j) ab[j] = sigm(ab[j] + pb[j]);  // r, z
          scalar_t* an = ab + 2 * H;
          const scalar_t* pnb = pb + 2 * H;
          scalar_t* pno = pnt + b * H;
          for (int64_t j = 0; j < H; ++j) pno[j] = pnb[j];
          for (int64_t j = 0; j < H; ++j) an[j] = tanh_(an[j] + ab[j] * pnb[j]);  // n
          const scalar_t* hpb = hp + b * H;
          scalar_t* hb = h + b * H;
          if (m == nullptr || m[b]) {
            const scalar_t* z = ab + H;
            for (int64_t j = 0; j < H; ++j) hb[j] = an[j] + z[j] * (hpb[j] - an[j]);
          } else {
            for (int64_t j = 0; j < H; ++j) hb[j] = hpb[j];
          }
        }
      });
    }
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
  at::Tensor dX = at::empty_like(gates);
  at::Tensor dP = at::empty_like(gates);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      at::Tensor dhp = dH[t];
      const scalar_t* gt = gates[t].data_ptr<scalar_t>();
      const scalar_t* pnt = pn[t].data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* dh = dH[t + 1].data_ptr<scalar_t>();
      scalar_t* dx = dX[t].data_ptr<scalar_t>();
      scalar_t* dp = dP[t].data_ptr<scalar_t>();
      scalar_t* dhpp = dhp.data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* gb = gt + b * G;
          scalar_t* dxb = dx + b * G;
          scalar_t* dpb = dp + b * G;
          if (m != nullptr && !m[b]) {
            for (int64_t k = 0; k < G; ++k) dxb[k] = dpb[k] = scalar_t(0);
            for (int64_t j = 0; j < H; ++j) dhpp[b * H + j] += dh[b * H + j];
            continue;
          }
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t r = gb[j], z = gb[H + j], n = gb[2 * H + j];
            const scalar_t dhj = dh[b * H + j], hpj = hp[b * H + j];
            const scalar_t dan = dhj * (scalar_t(1) - z) * (scalar_t(1) - n * n);
            const scalar_t daz = dhj * (hpj - n) * z * (scalar_t(1) - z);
            const scalar_t dar = dan * pnt[b * H + j] * r * (scalar_t(1) - r);
            dxb[j] = dpb[j] = dar;
            dxb[H + j] = dpb[H + j] = daz;
            dxb[2 * H + j] = dan;
            dpb[2 * H + j] = dan * r;
            dhpp[b * H + j] += dhj * z;
          }
        }
      });
      dhp.addmm_(dP[t], w_hh);
    }
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
  at::Tensor w_rz_t = w_hh.narrow(0, 0, 2 * H).t();
  at::Tensor w_n_t = w_hh.narrow(0, 2 * H, H).t();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_cho_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      at::Tensor g = gates[t];
      at::Tensor rz = g.narrow(1, 0, 2 * H);
      rz.addmm_(h_prev, w_rz_t);
      scalar_t* a = g.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* rht = rh[t].data_ptr<scalar_t>();
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* ab = a + b * G;
          for (int64_t j = 0; j < 2 * H; ++j) ab[j] = sigm(ab[j]);  // r, z
          const scalar_t* hpb = hp + b * H;
          scalar_t* rhb = rht + b * H;
          for (int64_t j = 0; j < H; ++j) rhb[j] = ab[j] * hpb[j];
        }
      });
      g.narrow(1, 2 * H, H).addmm_(rh[t], w_n_t);
      scalar_t* h = hs[t].data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* ab = a + b * G;
          scalar_t* an = ab + 2 * H;
          for (int64_t j = 0; j < H; ++j) an[j] = tanh_(an[j]);  // n
          const scalar_t* hpb = hp + b * H;
          scalar_t* hb = h + b * H;
          if (m == nullptr || m[b]) {
            const scalar_t* z = ab + H;
            for (int64_t j = 0; j < H; ++j) hb[j] = an[j] + z[j] * (hpb[j] - an[j]);
          } else {
            for (int64_t j = 0; j < H; ++j) hb[j] = hpb[j];
          }
        }
      });
    }
  });
  return {hs, gates, rh};
}

// dH: (T+1, B, H) as for the LSTM. Returns dA (T, B, 3H), the gradients of the
// pre-activations [r, z, n] (those of W_hn (r h) equal those of n).
at::Tensor gru_cho_backward(const at::Tensor& gates, const at::Tensor& hs, const at::Tensor& h0,
                            const at::Tensor& dH, const c10::optional<at::Tensor>& mask,
                            const at::Tensor& w_hh) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(-1), G = 3 * H;
  at::Tensor dA = at::empty_like(gates);
  at::Tensor drh = at::empty({B, H}, gates.options());
  at::Tensor w_rz = w_hh.narrow(0, 0, 2 * H);
  at::Tensor w_n = w_hh.narrow(0, 2 * H, H);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_cho_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      at::Tensor dhp = dH[t];
      at::Tensor dat = dA[t];
      const scalar_t* gt = gates[t].data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* dh = dH[t + 1].data_ptr<scalar_t>();
      scalar_t* da = dat.data_ptr<scalar_t>();
      scalar_t* dhpp = dhp.data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* gb = gt + b * G;
          scalar_t* dab = da + b * G;
          const scalar_t* dhb = dh + b * H;
          scalar_t* dhpb = dhpp + b * H;
          if (m != nullptr && !m[b]) {
            for (int64_t k = 0; k < G; ++k) dab[k] = scalar_t(0);
            for (int64_t j = 0; j < H; ++j) dhpb[j] += dhb[j];
            continue;
          }
          const scalar_t* hpb = hp + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t z = gb[H + j], n = gb[2 * H + j];
            dab[2 * H + j] = dhb[j] * (scalar_t(1) - z) * (scalar_t(1) - n * n);
            dab[H + j] = dhb[j] * (hpb[j] - n) * z * (scalar_t(1) - z);
            dhpb[j] += dhb[j] * z;
          }
        }
      });
      at::mm_out(drh, dat.narrow(1, 2 * H, H), w_n);  // delta (r h_{t-1})
      const scalar_t* drp = drh.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* gb = gt + b * G;
          scalar_t* dab = da + b * G;
          const scalar_t* hpb = hp + b * H;
          const scalar_t* drb = drp + b * H;
          scalar_t* dhpb = dhpp + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t r = gb[j];
            dab[j] = drb[j] * hpb[j] * r * (scalar_t(1) - r);
            dhpb[j] += drb[j] * r;
          }
        }
      });
      dhp.addmm_(dat.narrow(1, 0, 2 * H), w_rz);
    }
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
  at::Tensor w_t = w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnn_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
      at::Tensor h = hs[t];
      h.addmm_(h_prev, w_t);
      scalar_t* hp = h.data_ptr<scalar_t>();
      const scalar_t* hq = h_prev.data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* hb = hp + b * H;
          if (m != nullptr && !m[b]) {
            for (int64_t j = 0; j < H; ++j) hb[j] = hq[b * H + j];
            continue;
          }
          if (relu) {
            for (int64_t j = 0; j < H; ++j) hb[j] = hb[j] > scalar_t(0) ? hb[j] : scalar_t(0);
          } else {
            for (int64_t j = 0; j < H; ++j) hb[j] = tanh_(hb[j]);
          }
        }
      });
    }
  });
  return hs;
}

// dH: (T+1, B, H) as for the LSTM. Returns dA (T, B, H), the pre-activation gradients.
at::Tensor rnn_backward(const at::Tensor& hs, const at::Tensor& dH,
                        const c10::optional<at::Tensor>& mask, const at::Tensor& w_hh,
                        bool relu) {
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  at::Tensor dA = at::empty_like(hs);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* h = hs[t].data_ptr<scalar_t>();
      const scalar_t* dh = dH[t + 1].data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      at::Tensor dhp = dH[t];
      scalar_t* dhpp = dhp.data_ptr<scalar_t>();
      const bool* m = mask_ptr(mask, t);
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t o = b * H;
          if (m != nullptr && !m[b]) {
            for (int64_t j = 0; j < H; ++j) {
              da[o + j] = scalar_t(0);
              dhpp[o + j] += dh[o + j];
            }
            continue;
          }
          if (relu) {
            for (int64_t j = 0; j < H; ++j) da[o + j] = h[o + j] > scalar_t(0) ? dh[o + j] : 0;
          } else {
            for (int64_t j = 0; j < H; ++j)
              da[o + j] = dh[o + j] * (scalar_t(1) - h[o + j] * h[o + j]);
          }
        }
      });
      dhp.addmm_(dA[t], w_hh);
    }
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
}
