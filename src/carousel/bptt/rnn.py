r"""Hand-written BPTT for the Elman RNN (:func:`carousel.functional.rnn_step`).

Forward (Elman 1990), for ``t = 0..T-1``:

.. math::

    a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \qquad h_t = \phi(a_t)

Backward (Werbos 1990; Williams & Zipser 1995), peeling the steps off in reverse with
``\delta h_t`` the total gradient reaching ``h_t`` (from the loss at ``t`` and from step ``t+1``):

.. math::

    \delta a_t = \delta h_t \odot \phi'(a_t), \qquad
    \delta h_{t-1} \mathrel{+}= \delta a_t W_{hh}, \\
    \nabla W_{ih} = \sum_t \delta a_t^\top x_t, \quad
    \nabla W_{hh} = \sum_t \delta a_t^\top h_{t-1}, \quad
    \nabla b = \sum_t \delta a_t, \quad \nabla x_t = \delta a_t W_{ih}

with ``\phi'(a) = 1 - h^2`` (tanh) or ``[h > 0]`` (ReLU), computed from the stored ``h_t`` for
all steps at once. The weight gradients are single matrix products over all ``T`` steps, taken
after the loop.
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
    sigmoid_tanh,
    twice_differentiable,
)

__all__ = ["RNNFunction"]


class RNNFunction(torch.autograd.Function):
    """Elman RNN over a whole sequence: ``apply(x, h0, mask, W_ih, W_hh, b_ih, b_hh, relu)``.

    Returns the state after every step, ``(T, B, H)`` (frozen past a sequence's end where
    ``mask`` is False). Differentiable in ``x``, ``h0`` and every weight; twice only given a
    trailing ``recompute`` (:mod:`carousel._recompute`).
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
        relu: bool,
        recompute: Recompute | None = None,
    ) -> Tensor:
        keep_for_recompute(
            ctx, recompute, x, h0, mask, weight_ih, weight_hh, bias_ih, bias_hh, relu
        )
        T, B, I = x.shape
        H = weight_hh.shape[0]
        x2 = x.reshape(T * B, I)
        # tanh(a) = 2 sigmoid(2a) - 1 with the weights doubled (exact; _common.sigmoid_tanh)
        sig = not relu and sigmoid_tanh(B * H, x.device)
        scale = 2.0 if sig else 1.0
        w_ih = weight_ih * scale if sig else weight_ih
        hh_acc = products.acc_fn(weight_hh * scale if sig else weight_hh, B)
        # input projections of all steps in one product: W_ih x_t + b_ih + b_hh
        bias = bias_sum(bias_ih, bias_hh)
        if bias is not None and sig:
            bias.mul_(scale)
        hs = products.linear(x2, w_ih, bias).view(T, B, H)
        steps = hs.unbind(0)
        mv = masks(mask, x.dtype)
        minus_one = x.new_full((1,), -1.0)
        add = torch.add
        h = h0
        if mv is None:
            if relu:
                for h_t in steps:
                    hh_acc(h_t, h).relu_()  # h_t = phi(a_t)
                    h = h_t
            elif sig:
                for h_t in steps:
                    add(minus_one, hh_acc(h_t, h).sigmoid_(), alpha=2, out=h_t)
                    h = h_t
            else:
                for h_t in steps:
                    hh_acc(h_t, h).tanh_()
                    h = h_t
        else:
            where = torch.where
            for h_t, m_t in zip(steps, mv.bool3.unbind(0)):
                hh_acc(h_t, h)
                if relu:
                    h_t.relu_()
                elif sig:
                    add(minus_one, h_t.sigmoid_(), alpha=2, out=h_t)
                else:
                    h_t.tanh_()
                where(m_t, h_t, h, out=h_t)  # frozen past the end
                h = h_t
        ctx.relu = relu
        ctx.has_bias = bias_ih is not None
        ctx.save_for_backward(x2, h0, mask, weight_ih, weight_hh, hs)
        ctx.set_materialize_grads(False)
        return hs

    @staticmethod
    @twice_differentiable
    @gc_paused
    def backward(ctx: Any, grad_hs: Tensor | None) -> tuple[Tensor | None, ...]:
        x2, h0, mask, weight_ih, weight_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape
        I = x2.shape[-1]
        if grad_hs is None:
            return (None,) * 8
        needs = ctx.needs_input_grad
        mv = masks(mask, hs.dtype)
        # dH[t + 1]: gradient of h_t; dH[0]: of h_0
        dH = hs.new_empty(T + 1, B, H)
        dH[0].zero_()
        dH[1:].copy_(grad_hs)
        # phi'(a_t) for all steps at once, times m_t
        if ctx.relu:
            k = (hs > 0).to(hs.dtype)
        else:
            k = torch.addcmul(hs.new_ones(1), hs, hs, value=-1.0)
        if mv is not None:
            k.mul_(mv.float3)
        dA = torch.empty_like(hs)
        dHs, dAs, ks = dH.unbind(0), dA.unbind(0), k.unbind(0)
        mul = torch.mul
        hh_acc = products.acc_fn(weight_hh.t(), B)  # delta a_t W_hh
        if mv is None:
            for t in range(T - 1, -1, -1):
                da = mul(dHs[t + 1], ks[t], out=dAs[t])  # delta a_t
                hh_acc(dHs[t], da)  # delta h_{t-1} += delta a_t W_hh
        else:
            inv = mv.inv3.unbind(0)
            for t in range(T - 1, -1, -1):
                da = mul(dHs[t + 1], ks[t], out=dAs[t])
                dHs[t].addcmul_(dHs[t + 1], inv[t])  # frozen state passes its gradient on
                hh_acc(dHs[t], da)
        dA2 = dA.view(T * B, H)
        dx = products.mm(dA2, weight_ih).view(T, B, I) if needs[0] else None
        dh0 = dH[0] if needs[1] else None
        dw_ih = products.mm(dA2.t(), x2) if needs[3] else None
        dw_hh = grad_with_prev(dA, hs, h0) if needs[4] else None
        db_ih, db_hh = bias_grads(dA, ctx.has_bias, needs[5], needs[6])
        return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None
