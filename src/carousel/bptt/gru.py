r"""Hand-written BPTT for the GRU (:func:`carousel.functional.gru_step`), both formulations.

Forward (Cho et al. 2014; torch.nn's gate order ``r, z, n``), with ``\bar x_t = W_{ih} x_t +
b_{ih}`` for all steps in one product:

.. math::

    r_t &= \sigma(\bar x^r_t + W_{hr} h_{t-1} + b_{hr}), \qquad
    z_t = \sigma(\bar x^z_t + W_{hz} h_{t-1} + b_{hz}) \\
    n_t &= \tanh(\bar x^n_t + r_t \odot p_t), \quad p_t = W_{hn} h_{t-1} + b_{hn}
        \quad\text{(reset\_after=True)} \\
    n_t &= \tanh(\bar x^n_t + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
        \quad\text{(reset\_after=False, Cho et al. eq. 8)} \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1} = \mathrm{lerp}(n_t, h_{t-1}, z_t)

Backward, with ``\delta h_t`` the total gradient reaching ``h_t``:

.. math::

    \delta \hat n_t &= \delta h_t \odot (1 - z_t)(1 - n_t^2), \qquad
    \delta \hat z_t = \delta h_t \odot (h_{t-1} - n_t)\, z_t (1 - z_t) \\
    \delta \hat r_t &= \delta \hat n_t \odot p_t\, r_t (1 - r_t), \qquad
    \delta p_t = \delta \hat n_t \odot r_t \quad\text{(reset\_after=True)} \\
    \delta \hat r_t &= (\delta \hat n_t W_{hn}) \odot h_{t-1}\, r_t (1 - r_t)
        \quad\text{(reset\_after=False)} \\
    \delta h_{t-1} &\mathrel{+}= \delta h_t \odot z_t + [\delta \hat r_t, \delta \hat z_t,
        \delta p_t] W_{hh} \quad\text{(reset\_after=True)}

where hats mark pre-activations. Each factor that multiplies ``\delta h_t`` depends only on the
stored activities, so it is computed for all steps at once before the loop (with the mask
folded in); the loop then costs three operations per step (reset_after=True). The weight
gradients are single matrix products over all steps after the loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from carousel.bptt import _products as products
from carousel.bptt._common import (
    Recompute,
    bias_grads,
    bias_sum,
    gc_paused,
    grad_with_prev,
    keep_for_recompute,
    masks,
    scale_rows,
    sigmoid_tanh,
    sum_rows,
    twice_differentiable,
)

__all__ = ["GRUFunction"]


class GRUFunction(torch.autograd.Function):
    """GRU over a whole sequence: ``apply(x, h0, mask, W_ih, W_hh, b_ih, b_hh, reset_after)``.

    Returns ``(states, gates)``: the state after every step ``(T, B, H)`` (frozen past a
    sequence's end) and the gate activations ``(T, B, 3H)`` in the order ``r, z, n`` (not
    masked; not differentiable). Differentiable in ``x``, ``h0`` and every weight; twice only
    given a trailing ``recompute`` (:mod:`carousel._recompute`).
    """

    @staticmethod
    @gc_paused
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor,
        mask: Tensor | None,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        reset_after: bool,
        recompute: Recompute | None = None,
    ) -> tuple[Tensor, Tensor]:
        keep_for_recompute(
            ctx, recompute, x, h0, mask, weight_ih, weight_hh, bias_ih, bias_hh, reset_after
        )
        T, B, I = x.shape
        H = weight_hh.shape[1]
        x2 = x.reshape(T * B, I)
        has_bias = bias_ih is not None
        # n_t = tanh(u) = 2 sigmoid(2u) - 1: with sig_n the forward pass uses copies of the
        # weights whose n rows are doubled (exact; see _common.sigmoid_tanh)
        sig_n = sigmoid_tanh(B * H, x.device)
        lo, hi = 2 * H, 3 * H
        w_ih = scale_rows(weight_ih, lo, hi) if sig_n else weight_ih
        if not has_bias:
            b_in = None
        elif reset_after:  # xbar_t = W_ih x_t + b_ih; b_hh stays with p_t (inside r * p)
            b_in = scale_rows(bias_ih, lo, hi) if sig_n else bias_ih
        else:  # all biases act outside r: xbar_t = W_ih x_t + b_ih + b_hh
            b_in = bias_sum(bias_ih, bias_hh)
            if b_in is not None and sig_n:
                b_in[lo:].mul_(2.0)
        g2 = products.linear(x2, w_ih, b_in)  # pre-activations, then activations r, z, n
        gates = g2.view(T, B, 3 * H)
        hs = x.new_empty(T, B, H)
        mv = masks(mask, x.dtype)
        where, lerp, add, mul = torch.where, torch.lerp, torch.add, torch.mul
        minus_one = x.new_full((1,), -1.0)
        m_steps = mv.bool3.unbind(0) if mv is not None else (None,) * T
        rz_s = gates[..., :lo].unbind(0)
        r_s = gates[..., :H].unbind(0)
        z_s = gates[..., H:lo].unbind(0)
        n_s = gates[..., lo:].unbind(0)
        h_s = hs.unbind(0)
        h = h0
        if reset_after:
            w_hh = scale_rows(weight_hh, lo, hi) if sig_n else weight_hh
            b_hh = scale_rows(bias_hh, lo, hi) if sig_n else bias_hh
            hp = x.new_empty(T, B, 3 * H)  # W_hh h_{t-1} + b_hh (p_t in the n rows), kept
            hp_s = hp.unbind(0)
            hrz_s = hp[..., :lo].unbind(0)
            pn_s = hp[..., lo:].unbind(0)
            hh_into = products.into_fn(w_hh, B, b_hh if has_bias else None)
            for t in range(T):
                hh_into(hp_s[t], h)
                rz_s[t].add_(hrz_s[t]).sigmoid_()  # r_t, z_t
                n = n_s[t].addcmul_(r_s[t], pn_s[t])  # xbar^n + r p
                if sig_n:
                    add(minus_one, n.sigmoid_(), alpha=2, out=n)  # n_t
                else:
                    n.tanh_()
                h_t = lerp(n, h, z_s[t], out=h_s[t])  # h_t = (1 - z) n + z h_{t-1}
                m_t = m_steps[t]
                if m_t is not None:
                    where(m_t, h_t, h, out=h_t)  # frozen past the end
                h = h_t
            saved = hp[..., lo:]  # p_t (doubled with sig_n)
        else:
            rz_acc = products.acc_fn(weight_hh[:lo], B)
            n_acc = products.acc_fn(2.0 * weight_hh[lo:] if sig_n else weight_hh[lo:], B)
            rh = x.new_empty(T, B, H)  # r_t * h_{t-1}, kept for the backward pass
            rh_s = rh.unbind(0)
            for t in range(T):
                rz_acc(rz_s[t], h).sigmoid_()  # r_t, z_t
                rh_t = mul(r_s[t], h, out=rh_s[t])
                n = n_acc(n_s[t], rh_t)  # xbar^n + W_hn (r h_{t-1}), Cho et al. eq. 8
                if sig_n:
                    add(minus_one, n.sigmoid_(), alpha=2, out=n)  # n_t
                else:
                    n.tanh_()
                h_t = lerp(n, h, z_s[t], out=h_s[t])
                m_t = m_steps[t]
                if m_t is not None:
                    where(m_t, h_t, h, out=h_t)
                h = h_t
            saved = rh
        ctx.reset_after = reset_after
        ctx.has_bias = has_bias
        ctx.p_scale = 0.5 if sig_n else 1.0  # saved p_t = p_scale^-1 p_t
        ctx.save_for_backward(x2, h0, mask, weight_ih, weight_hh, hs, gates, saved)
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        return hs, gates

    @staticmethod
    @twice_differentiable
    @gc_paused
    def backward(
        ctx: Any, grad_hs: Tensor | None, _grad_gates: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x2, h0, mask, weight_ih, weight_hh, hs, gates, saved = ctx.saved_tensors
        if grad_hs is None:
            return (None,) * 8
        T, B, H = hs.shape
        I = x2.shape[-1]
        lo = 2 * H
        needs = ctx.needs_input_grad
        mv = masks(mask, hs.dtype)
        mf = mv.float3 if mv is not None else None
        dH = hs.new_empty(T + 1, B, H)  # dH[t + 1]: gradient of h_t; dH[0]: of h_0
        dH[0].zero_()
        dH[1:].copy_(grad_hs)
        r, z, n = gates[..., :H], gates[..., H:lo], gates[..., lo:]
        # factors multiplying delta h_t, for all steps at once (mask folded in)
        one = hs.new_ones(1)
        dtanh_n = torch.addcmul(one, n, n, value=-1.0)  # 1 - n^2
        dsig_z = torch.addcmul(z, z, z, value=-1.0)  # z (1 - z)
        dsig_r = torch.addcmul(r, r, r, value=-1.0)  # r (1 - r)
        # h_{t-1} receives delta h_t * z_t directly (and everything where the step is masked)
        z_eff = z if mv is None else torch.where(mv.bool3, z, 1.0)
        mul = torch.mul
        dHs = dH.unbind(0)
        zf_s = z_eff.unbind(0)

        # d z-hat per unit of delta h_t: (h_{t-1} - n_t) z (1 - z)
        def fill_k_z(out: Tensor) -> None:
            torch.sub(h0, n[0], out=out[0])
            torch.sub(hs[:-1], n[1:], out=out[1:])
            out.mul_(dsig_z)

        if ctx.reset_after:
            k = torch.empty_like(gates)  # [d r-hat, d z-hat, d p] per unit of delta h_t
            k_r, k_z, k_p = k[..., :H], k[..., H:lo], k[..., lo:]
            k_n = torch.addcmul(dtanh_n, z, dtanh_n, value=-1.0)  # (1 - z)(1 - n^2)
            fill_k_z(k_z)
            torch.mul(k_n, saved, out=k_r).mul_(dsig_r)  # (1 - z)(1 - n^2) p r (1 - r)
            if ctx.p_scale != 1.0:
                k_r.mul_(ctx.p_scale)
            torch.mul(k_n, r, out=k_p)
            if mf is not None:
                k.mul_(mf)
                k_n.mul_(mf)
            dP = torch.empty_like(gates)  # gradient of W_hh h_{t-1} + b_hh, all gates
            k3 = k.view(T, B, 3, H).unbind(0)
            dP3 = dP.view(T, B, 3, H).unbind(0)
            dP_s = dP.unbind(0)
            dh3 = dH.unsqueeze(2).unbind(0)
            hh_acc = products.acc_fn(weight_hh.t(), B)
            for t in range(T - 1, -1, -1):
                mul(dh3[t + 1], k3[t], out=dP3[t])  # delta [r-hat, z-hat, p]
                dHs[t].addcmul_(dHs[t + 1], zf_s[t])  # through h_t = ... + z_t h_{t-1}
                hh_acc(dHs[t], dP_s[t])  # through W_hh h_{t-1}
            # the pre-activations' gradient: r-hat and z-hat as for p, n-hat = delta h_t k_n
            dA_n = dH[1:].mul(k_n).view(T * B, H)
            dP2 = dP.view(T * B, 3 * H)
            dRZ2 = dP2[:, :lo]
            dx = None
            if needs[0]:
                dx = products.mm(dRZ2, weight_ih[:lo])
                dx = products.mm_acc(dx, dA_n, weight_ih[lo:]).view(T, B, I)
            dw_ih = None
            if needs[3]:
                dw_ih = torch.cat([products.mm(dRZ2.t(), x2), products.mm(dA_n.t(), x2)])
            dw_hh = grad_with_prev(dP, hs, h0) if needs[4] else None
            db_ih = db_hh = None
            if ctx.has_bias and (needs[5] or needs[6]):
                db_p = sum_rows(dP)  # b_hh's gradient; b_ih's in the r and z rows
                if needs[5]:
                    db_ih = torch.cat([db_p[:lo], dA_n.sum(0)])
                if needs[6]:
                    db_hh = db_p
        else:
            rh = saved
            k_zn = hs.new_empty(T, B, 2, H)  # [d z-hat, d n-hat] per unit of delta h_t
            fill_k_z(k_zn[:, :, 0])
            torch.addcmul(dtanh_n, z, dtanh_n, value=-1.0, out=k_zn[:, :, 1])
            if mf is not None:
                k_zn.mul_(mf.unsqueeze(-1))
            # d r-hat per unit of delta (r h_{t-1}): h_{t-1} r (1 - r)
            dsig_r[0].mul_(h0)
            dsig_r[1:].mul_(hs[:-1])
            dX = torch.empty_like(gates)  # gradient of every pre-activation
            drh = torch.empty_like(hs)  # gradient of r_t * h_{t-1}
            w_rz, w_n = weight_hh[:lo], weight_hh[lo:]
            k_zn_s = k_zn.unbind(0)
            dzn_s = dX[..., H:].unflatten(-1, (2, H)).unbind(0)
            dn_s = dX[..., lo:].unbind(0)
            dr_s = dX[..., :H].unbind(0)
            drz_s = dX[..., :lo].unbind(0)
            drh_s = drh.unbind(0)
            kr_s = dsig_r.unbind(0)
            r_s = r.unbind(0)
            dh3 = dH.unsqueeze(2).unbind(0)
            n_into = products.into_fn(w_n.t(), B)
            rz_acc = products.acc_fn(w_rz.t(), B)
            for t in range(T - 1, -1, -1):
                dh = dHs[t + 1]
                mul(dh3[t + 1], k_zn_s[t], out=dzn_s[t])  # delta z-hat, n-hat
                d_rh = n_into(drh_s[t], dn_s[t])  # through W_hn (r h_{t-1})
                mul(d_rh, kr_s[t], out=dr_s[t])  # delta r-hat
                dHs[t].addcmul_(dh, zf_s[t])
                dHs[t].addcmul_(d_rh, r_s[t])
                rz_acc(dHs[t], drz_s[t])
            dw_hh = None
            if needs[4]:
                dw_hh = torch.cat(
                    [
                        grad_with_prev(dX[..., :lo], hs, h0),
                        products.mm(dX[..., lo:].reshape(T * B, H).t(), rh.view(T * B, H)),
                    ]
                )
            db_ih, db_hh = bias_grads(dX, ctx.has_bias, needs[5], needs[6])
            dX2 = dX.view(T * B, 3 * H)
            dx = products.mm(dX2, weight_ih).view(T, B, I) if needs[0] else None
            dw_ih = products.mm(dX2.t(), x2) if needs[3] else None
        dh0 = dH[0] if needs[1] else None
        return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None
