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

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from carousel.bptt._common import bias_grads, grad_with_prev, masks, prev_states, sum_rows

__all__ = ["GRUFunction"]


class GRUFunction(torch.autograd.Function):
    """GRU over a whole sequence: ``apply(x, h0, mask, W_ih, W_hh, b_ih, b_hh, reset_after)``.

    Returns ``(states, gates)``: the state after every step ``(T, B, H)`` (frozen past a
    sequence's end) and the gate activations ``(T, B, 3H)`` in the order ``r, z, n`` (not
    masked; not differentiable). Differentiable in ``x``, ``h0`` and every weight; not twice.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        h0: Tensor,
        mask: Tensor | None,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        reset_after: bool,
    ) -> tuple[Tensor, Tensor]:
        T, B, I = x.shape
        H = weight_hh.shape[1]
        x2 = x.reshape(T * B, I)
        has_bias = bias_ih is not None
        gates = x.new_empty(T, B, 3 * H)  # pre-activations, then activations r, z, n
        g2 = gates.view(T * B, 3 * H)
        hs = x.new_empty(T, B, H)
        mv = masks(mask, x.dtype)
        where, lerp = torch.where, torch.lerp
        m_steps = mv.bool3.unbind(0) if mv is not None else (None,) * T
        rz_s = gates[..., : 2 * H].unbind(0)
        n_s = gates[..., 2 * H :].unbind(0)
        h_s = hs.unbind(0)
        h = h0
        if reset_after:
            # xbar_t = W_ih x_t + b_ih for all t; b_hh stays with p_t (it sits inside r * p)
            if has_bias:
                torch.addmm(bias_ih, x2, weight_ih.t(), out=g2)
            else:
                torch.mm(x2, weight_ih.t(), out=g2)
            hp = x.new_empty(T, B, 3 * H)  # W_hh h_{t-1} + b_hh, kept for the backward pass
            hp_s = hp.unbind(0)
            hrz_s = hp[..., : 2 * H].unbind(0)
            pn_s = hp[..., 2 * H :].unbind(0)
            w_hh_t = weight_hh.t()
            for t in range(T):
                if has_bias:
                    torch.addmm(bias_hh, h, w_hh_t, out=hp_s[t])
                else:
                    torch.mm(h, w_hh_t, out=hp_s[t])
                rz = rz_s[t].add_(hrz_s[t]).sigmoid_()  # r_t, z_t
                n = n_s[t].addcmul_(rz[:, :H], pn_s[t]).tanh_()  # n_t = tanh(xbar + r p)
                h_t = lerp(n, h, rz[:, H:], out=h_s[t])  # h_t = (1 - z) n + z h_{t-1}
                if m_steps[t] is not None:
                    where(m_steps[t], h_t, h, out=h_t)
                h = h_t
            saved = hp[..., 2 * H :]  # p_t
        else:
            # all biases act outside r: xbar_t = W_ih x_t + b_ih + b_hh
            if has_bias:
                torch.addmm(bias_ih + bias_hh, x2, weight_ih.t(), out=g2)
            else:
                torch.mm(x2, weight_ih.t(), out=g2)
            w_rz_t = weight_hh[: 2 * H].t()
            w_n_t = weight_hh[2 * H :].t()
            rh = x.new_empty(T, B, H)  # r_t * h_{t-1}, kept for the backward pass
            rh_s = rh.unbind(0)
            mul = torch.mul
            for t in range(T):
                rz = rz_s[t].addmm_(h, w_rz_t).sigmoid_()
                rh_t = mul(rz[:, :H], h, out=rh_s[t])
                n = n_s[t].addmm_(rh_t, w_n_t).tanh_()  # Cho et al. eq. 8
                h_t = lerp(n, h, rz[:, H:], out=h_s[t])
                if m_steps[t] is not None:
                    where(m_steps[t], h_t, h, out=h_t)
                h = h_t
            saved = rh
        ctx.reset_after = reset_after
        ctx.has_bias = has_bias
        ctx.save_for_backward(x2, h0, mask, weight_ih, weight_hh, hs, gates, saved)
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        return hs, gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs: Tensor | None, _grad_gates: Tensor | None):
        x2, h0, mask, weight_ih, weight_hh, hs, gates, saved = ctx.saved_tensors
        if grad_hs is None:
            return (None,) * 8
        T, B, H = hs.shape
        I = x2.shape[-1]
        needs = ctx.needs_input_grad
        mv = masks(mask, hs.dtype)
        dH = hs.new_empty(T + 1, B, H)  # dH[t + 1]: gradient of h_t; dH[0]: of h_0
        dH[0].zero_()
        dH[1:].copy_(grad_hs)
        r, z, n = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
        h_prev = prev_states(h0, hs)
        # factors multiplying delta h_t, for all steps at once (mask folded in)
        k_n = (1.0 - z) * (1.0 - n * n)  # d n-hat / d h_t
        k_z = (h_prev - n) * z * (1.0 - z)  # d z-hat / d h_t
        dsig_r = r * (1.0 - r)
        # h_{t-1} receives delta h_t * z_t directly (and everything where the step is masked)
        z_eff = z if mv is None else torch.where(mv.bool3, z, 1.0)
        if mv is not None:
            k_n.mul_(mv.float3)
            k_z.mul_(mv.float3)
        mul, mm = torch.mul, torch.mm
        dHs = dH.unbind(0)
        z_s = z_eff.unbind(0)
        if ctx.reset_after:
            p = saved
            k = torch.empty_like(gates)  # [d r-hat, d z-hat, d p] per unit of delta h_t
            k[..., :H] = k_n * p * dsig_r
            k[..., H : 2 * H] = k_z
            torch.mul(k_n, r, out=k[..., 2 * H :])
            dP = torch.empty_like(gates)  # gradient of W_hh h_{t-1} + b_hh, all gates
            k3 = k.view(T, B, 3, H).unbind(0)
            dP3 = dP.view(T, B, 3, H).unbind(0)
            dP_s = dP.unbind(0)
            for t in range(T - 1, -1, -1):
                dh = dHs[t + 1]
                mul(dh.unsqueeze(1), k3[t], out=dP3[t])
                dHs[t].addcmul_(dh, z_s[t])  # through h_t = ... + z_t h_{t-1}
                dHs[t].addmm_(dP_s[t], weight_hh)  # through W_hh h_{t-1}
            # gradient of xbar: r and z as for p, n-hat = delta h_t * k_n
            dX = torch.cat([dP[..., : 2 * H], dH[1:] * k_n], dim=-1)
            dw_hh = grad_with_prev(dP, hs, h0) if needs[4] else None
            db_hh = sum_rows(dP) if ctx.has_bias and needs[6] else None
            db_ih = sum_rows(dX) if ctx.has_bias and needs[5] else None
        else:
            rh = saved
            k_zn = torch.stack([k_z, k_n], dim=2)  # (T, B, 2, H)
            dsig_r.mul_(h_prev)  # d r-hat / d (r h_{t-1}) elementwise
            dX = torch.empty_like(gates)  # gradient of every pre-activation
            drh = torch.empty_like(hs)  # gradient of r_t * h_{t-1}
            w_rz, w_n = weight_hh[: 2 * H], weight_hh[2 * H :]
            k_zn_s = k_zn.unbind(0)
            dzn_s = dX[..., H:].unflatten(-1, (2, H)).unbind(0)
            dn_s = dX[..., 2 * H :].unbind(0)
            dr_s = dX[..., :H].unbind(0)
            drz_s = dX[..., : 2 * H].unbind(0)
            drh_s = drh.unbind(0)
            kr_s = dsig_r.unbind(0)
            r_s = r.unbind(0)
            for t in range(T - 1, -1, -1):
                dh = dHs[t + 1]
                mul(dh.unsqueeze(1), k_zn_s[t], out=dzn_s[t])  # z-hat, n-hat
                d_rh = mm(dn_s[t], w_n, out=drh_s[t])  # through W_hn (r h_{t-1})
                mul(d_rh, kr_s[t], out=dr_s[t])  # r-hat
                dHs[t].addcmul_(dh, z_s[t])
                dHs[t].addcmul_(d_rh, r_s[t])
                dHs[t].addmm_(drz_s[t], w_rz)
            dw_hh = None
            if needs[4]:
                dw_hh = torch.cat(
                    [
                        grad_with_prev(dX[..., : 2 * H], hs, h0),
                        dX[..., 2 * H :].reshape(T * B, H).t().mm(rh.view(T * B, H)),
                    ]
                )
            db_ih, db_hh = bias_grads(dX, ctx.has_bias, needs[5], needs[6])
        dX2 = dX.reshape(T * B, 3 * H)
        dx = dX2.mm(weight_ih).view(T, B, I) if needs[0] else None
        dh0 = dH[0] if needs[1] else None
        dw_ih = dX2.t().mm(x2) if needs[3] else None
        return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None
