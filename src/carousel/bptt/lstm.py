r"""Hand-written BPTT for the whole LSTM family (:func:`carousel.functional.lstm_step`).

Forward, for ``t = 0..T-1`` (Hochreiter & Schmidhuber 1997; Gers et al. 2000; the switches of
Greff et al. 2017 as in :class:`~carousel.functional.LSTMVariant`):

.. math::

    a_t &= \underbrace{W_{ih} x_t + b_{ih} + b_{hh}}_{\text{all } t \text{ in one product}}
          + W_{hh} h_{t-1} \;[+\, W_{gg} s_{t-1} \text{ on the sigmoid gates, FGR}] \\
    i_t &= \sigma(a^i_t + w_{ci} \odot c_{t-1}), \quad
    f_t = \sigma(a^f_t + w_{cf} \odot c_{t-1}), \quad g_t = \tanh(a^g_t) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    o_t &= \sigma(a^o_t + w_{co} \odot c_t), \qquad
    h_t = W_{hr}\,(o_t \odot \tanh(c_t))

with ``i = 1`` (NIG), ``f = 1`` (NFG), ``f = 1 - i`` (CIFG), ``o = 1`` (NOG), identity ``g``
(NIAF) or identity output activation (NOAF), peepholes only with ``peephole``, ``W_{hr}`` only
with a projection, and with layer normalisation (Ba et al. 2016, Sec. 3.1)
``a_t = LN(W_{ih} x_t)\gamma_{ih} + LN(W_{hh} h_{t-1})\gamma_{hh} + b`` and
``h_t = o_t \tanh(LN(c_t)\gamma_c + \beta_c)``. With full gate recurrence (FGR) ``s_t`` is the
vector of the sigmoid gates of step ``t``.

Backward: with ``\delta h_t``, ``\delta c_t`` (and ``\delta s_t``) the total gradients reaching
the state after step ``t``, and ``\delta m_t = \delta h_t W_{hr}`` (or ``\delta h_t``):

.. math::

    \delta \hat o_t &= \delta m_t \odot \tanh(c_t)\, o_t (1 - o_t)
        \;[+\, \delta s^o_t\, o_t (1 - o_t)] \\
    \delta c_t &\mathrel{+}= \delta m_t \odot o_t (1 - \tanh^2 c_t)
        + \delta \hat o_t \odot w_{co} \\
    \delta \hat i_t &= \delta c_t \odot g_t\, i_t (1 - i_t), \quad
    \delta \hat f_t = \delta c_t \odot c_{t-1}\, f_t (1 - f_t), \quad
    \delta \hat g_t = \delta c_t \odot i_t (1 - g_t^2) \\
    \delta c_{t-1} &\mathrel{+}= \delta c_t \odot f_t
        + \delta \hat i_t \odot w_{ci} + \delta \hat f_t \odot w_{cf}, \qquad
    \delta h_{t-1} \mathrel{+}= \delta a_t W_{hh}, \qquad
    \delta s_{t-1} \mathrel{+}= \delta a^{\sigma}_t W_{gg}

(hats mark pre-activations). Every factor in these products depends only on stored activities,
so it is computed for a block of steps at once (about a megabyte of gates,
``_DERIVATIVE_BLOCK_BYTES``) just before the loop peels those steps off, while the block is still
in the cache, with the mask and the peepholes folded in; the loop does five operations per step
for every variant but FGR and LN. Every weight gradient is one matrix product over all steps
after the loop:
``\nabla W_{ih} = \sum_t \delta a_t^\top x_t``,
``\nabla W_{hh} = \sum_t \delta a_t^\top h_{t-1}``, ...

Internally the gate blocks are ordered ``[o, i, f, g]`` (absent gates left out) so that the
sigmoid gates form one contiguous block (one ``sigmoid`` per step, and FGR's ``s_t`` is a slice)
and the gates multiplied by ``\delta c_t`` form another (one product per step). The weights are
permuted to this order on entry and their gradients back on exit; the interface uses torch.nn's
order. On the CPU ``g_t = tanh(a^g_t)`` is computed as ``2 sigmoid(2 a^g_t) - 1`` by the same
``sigmoid`` call as the gates, with the ``g`` rows of the forward pass's weight copies doubled
(exact in floating point), and ``tanh(c_t)`` likewise from about a thousand elements a step
(:func:`carousel.bptt._common.sigmoid_tanh`): ``torch.tanh`` costs about four sigmoids there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

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
    prev_states,
    scale_rows,
    sigmoid_tanh,
    twice_differentiable,
)
from carousel.functional.lstm import LSTMGateState, LSTMState, LSTMVariant

if TYPE_CHECKING:
    from carousel.cells.lstm import LSTMCell

__all__ = ["LSTMFunction", "LSTMSpec", "lstm_sequence"]

_ln_backward = torch.ops.aten.native_layer_norm_backward
#: The backward pass computes its local derivatives for blocks of steps of about this many
#: bytes of gates each, just before the loop uses them (in the cache, not streamed from memory).
_DERIVATIVE_BLOCK_BYTES = 1 << 20
#: Per-step views of a ``(T, ...)`` buffer (``unbind(0)``); empty for an absent one.
_Views = tuple[Tensor, ...]


@dataclass(frozen=True)
class LSTMSpec:
    """Static configuration of one LSTM-family cell, as the BPTT function needs it.

    Attributes:
        variant: the cell's switches.
        proj: whether the output is projected (``weight_hr``).
        ln_eps: layer-norm epsilon.
    """

    variant: LSTMVariant
    proj: bool = False
    ln_eps: float = 1e-5

    @property
    def has_i(self) -> bool:
        return self.variant.input_gate

    @property
    def has_f(self) -> bool:
        return self.variant.has_forget_weights

    @property
    def has_o(self) -> bool:
        return self.variant.output_gate

    @property
    def n_pre(self) -> int:
        """Sigmoid gates computed before ``c_t`` (``i`` and ``f`` where present)."""
        return int(self.has_i) + int(self.has_f)

    @property
    def n_sig(self) -> int:
        """All sigmoid gates (``S``)."""
        return self.n_pre + int(self.has_o)

    def internal_order(self) -> tuple[str, ...]:
        """Gate blocks in the internal order ``[o, i, f, g]``."""
        return tuple(n for n in ("o", "i", "f", "g") if n in self.variant.gate_names())

    def cell_update(self) -> str:
        """How ``c_t`` is formed: ``std``, ``nfg`` (f = 1), ``cifg`` (f = 1 - i), ``nig``
        (i = 1) or ``add`` (i = f = 1)."""
        v = self.variant
        if v.coupled:
            return "cifg"
        if not v.input_gate:
            return "nig" if v.forget_gate else "add"
        return "std" if v.forget_gate else "nfg"

    def gate_perm(self, H: int, device: torch.device | str) -> Tensor | None:
        """Row index: internal gate rows -> torch.nn rows (``None`` if the orders agree)."""
        ext = self.variant.gate_names()
        internal = self.internal_order()
        if internal == ext:
            return None
        return _block_index([ext.index(n) for n in internal], H, device)

    def state_perm(self, H: int, device: torch.device | str) -> Tensor | None:
        """Index of FGR's ``s``: internal order ``[o, i, f]`` -> the state's order ``[i, f,
        o]`` (:meth:`LSTMVariant.recurrent_gate_names`); ``None`` if they agree."""
        ext = self.variant.recurrent_gate_names()
        internal = tuple(n for n in self.internal_order() if n != "g")
        if internal == ext:
            return None
        return _block_index([ext.index(n) for n in internal], H, device)


def _block_index(blocks: list[int], H: int, device: torch.device | str) -> Tensor:
    return torch.cat([torch.arange(b * H, (b + 1) * H, device=device) for b in blocks])


def _inverse(perm: Tensor) -> Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


@overload
def _rows(t: Tensor, perm: Tensor | None) -> Tensor: ...
@overload
def _rows(t: Tensor | None, perm: Tensor | None) -> Tensor | None: ...
def _rows(t: Tensor | None, perm: Tensor | None) -> Tensor | None:
    return t if t is None or perm is None else t.index_select(0, perm)


def _need(t: Tensor | None, name: str) -> Tensor:
    """``t``, which this cell's configuration needs (``name`` for the error)."""
    if t is None:
        raise TypeError(f"LSTMFunction: {name} is None, but this cell's configuration needs it")
    return t


class LSTMFunction(torch.autograd.Function):
    """One LSTM-family cell over a whole sequence.

    ``apply(spec, x, h0, c0, s0, mask, weight_ih, weight_hh, bias_ih, bias_hh, weight_ci,
    weight_cf, weight_co, weight_gg, ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias,
    weight_hr)`` with absent weights (and ``s0`` without FGR, ``mask``) ``None``; weights in
    torch.nn's gate order.

    Returns ``(hs, cs, gates)`` or, with FGR, ``(hs, cs, ss, gates)``: the states after every
    step, ``(T, B, P)``, ``(T, B, H)`` and ``(T, B, S*H)`` (frozen past a sequence's end), and
    the gate activations ``(T, B, G*H)`` in the internal order ``[o, i, f, g]`` (not masked;
    not differentiable). Differentiable in ``x``, the initial state and every weight;
    twice only given a trailing ``recompute`` (:mod:`carousel._recompute`).
    """

    @staticmethod
    @gc_paused
    def forward(
        ctx: Any,
        spec: LSTMSpec,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        s0: Tensor | None,
        mask: Tensor | None,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        weight_ci: Tensor | None,
        weight_cf: Tensor | None,
        weight_co: Tensor | None,
        weight_gg: Tensor | None,
        ln_ih_weight: Tensor | None,
        ln_hh_weight: Tensor | None,
        ln_c_weight: Tensor | None,
        ln_c_bias: Tensor | None,
        weight_hr: Tensor | None,
        recompute: Recompute | None = None,
    ) -> tuple[Tensor | None, ...]:
        keep_for_recompute(
            ctx, recompute, spec, x, h0, c0, s0, mask, weight_ih, weight_hh, bias_ih, bias_hh,
            weight_ci, weight_cf, weight_co, weight_gg, ln_ih_weight, ln_hh_weight, ln_c_weight,
            ln_c_bias, weight_hr,
        )  # fmt: skip
        v = spec.variant
        T, B, I = x.shape
        H = c0.shape[-1]
        P = h0.shape[-1]
        GH = weight_ih.shape[0]
        S, n_pre = spec.n_sig, spec.n_pre
        SH = S * H
        has_o, peephole = spec.has_o, v.peephole
        fgr, ln, proj = v.full_gate_recurrence, v.layer_norm, spec.proj
        o_off = H if has_o else 0
        eps = spec.ln_eps
        dev = x.device
        # --- weights in the internal gate order [o, i, f, g]
        perm = spec.gate_perm(H, dev)
        w_ih = _rows(weight_ih, perm)
        w_hh = _rows(weight_hh, perm)
        bias = _rows(bias_sum(bias_ih, bias_hh), perm)
        gam_ih, gam_hh = _rows(ln_ih_weight, perm), _rows(ln_hh_weight, perm)
        # g_t = tanh(a^g_t) = 2 sigmoid(2 a^g_t) - 1: the forward pass uses copies whose g rows
        # are doubled (exact), so one sigmoid covers every gate (see _common.sigmoid_tanh)
        g_sig = v.input_activation
        fw_ih, fw_hh, fbias, fgam_ih, fgam_hh = w_ih, w_hh, bias, gam_ih, gam_hh
        if g_sig:
            fbias = scale_rows(bias, SH, GH)
            if ln:  # LN(W x) gamma: double gamma, not W (the statistics see every gate)
                fgam_ih, fgam_hh = scale_rows(gam_ih, SH, GH), scale_rows(gam_hh, SH, GH)
            else:
                fw_ih, fw_hh = scale_rows(w_ih, SH, GH), scale_rows(w_hh, SH, GH)
        act_sig = v.output_activation and sigmoid_tanh(B * H, dev)  # tanh(c) likewise
        w_pre = None
        if peephole and n_pre:
            w_pre = torch.stack([w for w in (weight_ci, weight_cf) if w is not None])  # (nP, H)
        sperm = spec.state_perm(H, dev) if fgr else None
        w_gg = s_prev0 = None
        if fgr:
            w_gg, s_prev0 = _need(weight_gg, "weight_gg"), _need(s0, "s0")
            if sperm is not None:
                w_gg, s_prev0 = w_gg[sperm][:, sperm], s_prev0.index_select(1, sperm)
        minus_one = x.new_full((1,), -1.0)
        two = x.new_full((1,), 2.0)
        # --- input projections of all steps at once
        x2 = x.reshape(T * B, I)
        xz = mu_x = rs_x = None
        if ln:
            xz = products.linear(x2, w_ih)  # (T*B, GH)
            gates2, mu_x, rs_x = torch.native_layer_norm(xz, [GH], fgam_ih, None, eps)
            if fbias is not None:
                gates2.add_(fbias)
            gates = gates2.view(T, B, GH)
        else:
            gates = products.linear(x2, fw_ih, fbias).view(T, B, GH)
        cs = x.new_empty(T, B, H)
        acts = x.new_empty(T, B, H) if v.output_activation or ln else cs  # tanh(c_t)
        ms = x.new_empty(T, B, H) if proj and has_o else acts  # o_t tanh(c_t)
        mv = masks(mask, x.dtype)
        # without an output gate (and projection) h_t = tanh(c_t): one buffer for both, no
        # copy a step (1.5 of NOG's 14 ms at (32, 100, 64, 128)); not where a frozen state
        # (lengths) would overwrite tanh(c_t), nor where tanh(c_t) is c_t itself
        h_is_act = not has_o and not proj and mv is None and acts is not cs
        hs = acts if h_is_act else x.new_empty(T, B, P)
        ss = x.new_empty(T, B, SH) if fgr and mv is not None else None
        zs = x.new_empty(T, B, GH) if ln else None  # W_hh h_{t-1} before its LN
        mu_z, rs_z, mu_c, rs_c = [], [], [], []
        gam_c = ln_c_weight
        beta_c = ln_c_bias
        if ln and act_sig:
            gam_c = 2.0 * _need(ln_c_weight, "ln_c_weight")
            beta_c = 2.0 * _need(ln_c_bias, "ln_c_bias")
        # --- per-step views
        # the block that gets its sigmoid before c_t: every gate without peepholes, else
        # i, f (and g); o waits for c_t when it has a peephole
        blk_lo = o_off if peephole else 0
        blk_hi = GH if g_sig else SH
        a_s = gates.unbind(0)
        blk_s = None
        if blk_hi > blk_lo:
            blk_s = a_s if blk_hi - blk_lo == GH else gates[..., blk_lo:blk_hi].unbind(0)
        # the views of an absent gate or buffer are empty: the loop reads them only where the
        # configuration has them
        sig_s = gates[..., :SH].unbind(0) if fgr else ()
        pre3_s: tuple[Tensor, ...] | None = None
        if w_pre is not None:  # peepholes on i and f
            w_pre_t = w_pre
            pre3_s = gates[..., o_off:SH].unflatten(-1, (n_pre, H)).unbind(0)
            cprev3_s = [c0.unsqueeze(1), *cs.unsqueeze(2).unbind(0)[:-1]]  # c_{t-1}, (B, 1, H)
        g_s = gates[..., SH:].unbind(0)
        o_s = gates[..., :H].unbind(0) if has_o else ()
        i_s = gates[..., o_off : o_off + H].unbind(0) if spec.has_i else ()
        f_s = gates[..., SH - H : SH].unbind(0) if spec.has_f else ()
        c_s, h_s = cs.unbind(0), hs.unbind(0)
        act_s = acts.unbind(0) if acts is not cs else c_s
        m_s = ms.unbind(0) if proj and has_o else ()
        z_s = zs.unbind(0) if zs is not None else ()
        s_s = ss.unbind(0) if ss is not None else ()
        mb_s = mv.bool3.unbind(0) if mv is not None else None
        update = spec.cell_update()
        # o_t sees c_t (a peephole on the output gate)
        co_late = _need(weight_co, "weight_co") if has_o and peephole else None
        # per-step products, each on the faster library for its size (see _products):
        # W_hh h_{t-1} into z_t with LN, else added to a_t
        hh_prod = products.into_fn(fw_hh, B) if ln else products.acc_fn(fw_hh, B)
        gg_acc = products.acc_fn(w_gg, B) if w_gg is not None else None  # FGR
        hr_into = products.into_fn(_need(weight_hr, "weight_hr"), B) if proj else None
        mul, add, where, tanh = torch.mul, torch.add, torch.where, torch.tanh
        native_ln = torch.native_layer_norm
        h, c = h0, c0
        if s_prev0 is not None:
            s = s_prev0  # FGR's s_{t-1}
        for t in range(T):
            a = a_s[t]  # (B, GH): a_t, then the activations in place
            if ln:
                z = hh_prod(z_s[t], h)
                zn, mu, rs = native_ln(z, [GH], fgam_hh, None, eps)
                a.add_(zn)  # + LN(W_hh h_{t-1}) gamma_hh
                mu_z.append(mu)
                rs_z.append(rs)
            else:
                hh_prod(a, h)  # + W_hh h_{t-1}
            if gg_acc is not None:
                gg_acc(sig_s[t], s)  # + W_gg s_{t-1} on the sigmoid gates
            if pre3_s is not None:
                pre3_s[t].addcmul_(cprev3_s[t], w_pre_t)  # + w_ci c_{t-1}, w_cf c_{t-1}
            if blk_s is not None:
                blk_s[t].sigmoid_()  # [o,] i, f [, sigmoid(2 a^g)]
            g = g_s[t]
            if g_sig:
                add(minus_one, g, alpha=2, out=g)  # g_t = 2 sigmoid(2 a^g) - 1 = tanh(a^g)
            c_new = c_s[t]  # c_t = f c_{t-1} + i g
            if update == "std":
                mul(f_s[t], c, out=c_new).addcmul_(i_s[t], g)
            elif update == "cifg":
                torch.lerp(c, g, i_s[t], out=c_new)  # (1 - i) c_{t-1} + i g
            elif update == "nfg":
                torch.addcmul(c, i_s[t], g, out=c_new)
            elif update == "nig":
                torch.addcmul(g, f_s[t], c, out=c_new)
            else:
                add(c, g, out=c_new)
            if co_late is not None:
                o_s[t].addcmul_(c_new, co_late).sigmoid_()  # o_t sees c_t
            act = act_s[t]
            if ln:
                cn, mu, rs = native_ln(c_new, [H], gam_c, beta_c, eps)  # LN(c_t) [times 2]
                mu_c.append(mu)
                rs_c.append(rs)
                if act_sig:
                    add(minus_one, cn.sigmoid_(), alpha=2, out=act)
                elif v.output_activation:
                    tanh(cn, out=act)
                else:
                    act.copy_(cn)
            elif act_sig:
                add(minus_one, mul(c_new, two, out=act).sigmoid_(), alpha=2, out=act)
            elif v.output_activation:
                tanh(c_new, out=act)
            else:
                act = c_new  # NOAF
            if hr_into is not None:  # proj
                m_t = mul(o_s[t], act, out=m_s[t]) if has_o else act
                h_new = hr_into(h_s[t], m_t)  # h_t = W_hr (o tanh c)
            elif has_o:
                h_new = mul(o_s[t], act, out=h_s[t])  # h_t = o tanh(c_t)
            else:
                h_new = act if h_is_act else h_s[t].copy_(act)
            if mb_s is not None:  # frozen past the end
                m_t = mb_s[t]
                where(m_t, h_new, h, out=h_new)
                where(m_t, c_new, c, out=c_new)
                if fgr:
                    s = where(m_t, sig_s[t], s, out=s_s[t])
            elif fgr:
                s = sig_s[t]
            h, c = h_new, c_new
        # FGR's state in the order of LSTMVariant.recurrent_gate_names
        ss_out = None
        if fgr:
            s_int = ss if ss is not None else gates[..., :SH]
            if sperm is not None:
                ss_out = s_int.index_select(-1, _inverse(sperm))
            else:
                ss_out = s_int if ss is not None else s_int.clone()
        ln_stats: tuple[Tensor | None, ...] = ()
        if ln:
            ln_stats = (xz, mu_x, rs_x, zs, torch.stack(mu_z), torch.stack(rs_z),
                        torch.stack(mu_c), torch.stack(rs_c), gam_ih, gam_hh)  # fmt: skip
        ctx.spec = spec
        ctx.has_bias = bias_ih is not None
        ctx.save_for_backward(
            x2, h0, c0, s_prev0, mask, w_ih, w_hh, w_pre, weight_co, w_gg, weight_hr,
            ln_c_weight, ln_c_bias, perm, sperm, gates, hs, cs, acts, ms, ss, *ln_stats,
        )  # fmt: skip
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        if fgr:
            return hs, cs, ss_out, gates
        return hs, cs, gates

    @staticmethod
    @twice_differentiable
    @gc_paused
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        spec: LSTMSpec = ctx.spec
        v = spec.variant
        fgr, ln, peephole, has_o = v.full_gate_recurrence, v.layer_norm, v.peephole, spec.has_o
        proj = spec.proj
        grad_hs, grad_cs = grads[0], grads[1]
        grad_ss = grads[2] if fgr else None
        if grad_hs is None and grad_cs is None and grad_ss is None:
            return (None,) * 19
        saved = ctx.saved_tensors
        (x2, h0, c0, s0, mask, w_ih, w_hh, w_pre, w_co, w_gg, w_hr, ln_c_weight, ln_c_bias,
         perm, sperm, gates, hs, cs, acts, ms, ss) = saved[:21]  # fmt: skip
        if ln:
            xz, mu_x, rs_x, zs, mu_z, rs_z, mu_c, rs_c, gam_ih, gam_hh = saved[21:]
        needs = ctx.needs_input_grad
        T, B, P = hs.shape
        H = cs.shape[-1]
        I = x2.shape[-1]
        GH = gates.shape[-1]
        S, n_pre = spec.n_sig, spec.n_pre
        SH = S * H
        o_off = H if has_o else 0
        mv = masks(mask, hs.dtype)
        mf = mv.float3 if mv is not None else None
        one = hs.new_ones(1)
        # --- gradient buffers: row t + 1 for the state after step t, row 0 for the initial one
        dH = hs.new_empty(T + 1, B, P)
        dH[0].zero_()
        dH[1:].copy_(grad_hs) if grad_hs is not None else dH[1:].zero_()
        dC = cs.new_empty(T + 1, B, H)
        dC[0].zero_()
        dC[1:].copy_(grad_cs) if grad_cs is not None else dC[1:].zero_()
        dS = None
        if fgr:
            dS = cs.new_zeros(T + 1, B, SH)
            if grad_ss is not None:
                dS[1:].copy_(grad_ss if sperm is None else grad_ss.index_select(-1, sperm))
        # --- local derivatives (the mask folded in): every factor of the loop's products that
        # depends only on stored activities, computed for a block of steps at once just before
        # the loop peels those steps off, so the block is still in the cache when it is read
        update = spec.cell_update()
        # peepholes: delta c gets delta o-hat w_co and delta [i, f]-hat w_c[i, f], which are
        # delta m k_o w_co and delta c k_[i, f] w_c[i, f]: folded into q and f_eff (one
        # operation a step each), except with FGR (delta s adds to the gates' gradients) and,
        # for w_co, with LN (delta m reaches c through the layer norm)
        fold = peephole and not fgr
        o_peep = has_o and peephole and not (fold and not ln)
        c_prev = prev_states(c0, cs)

        def local_derivatives(
            lo: int, hi: int
        ) -> tuple[_Views | None, _Views, _Views, _Views | None, _Views]:
            """Per-step views of ``q``, ``k_o``, ``k_rest``, ``f_eff``, ``dsig_m`` for the steps
            ``[lo, hi)`` (``None`` for an absent ``q`` or ``f_eff``, empty for an absent
            ``k_o`` or ``dsig_m``)."""
            n = hi - lo
            gt, a_t, cp = gates[lo:hi], acts[lo:hi], c_prev[lo:hi]
            mf_t = mf[lo:hi] if mf is not None else None
            sig = gt[..., :SH]
            dsig = torch.addcmul(sig, sig, sig, value=-1.0)  # sigma' = s (1 - s) for o, i, f
            o = gt[..., :H] if has_o else None
            g = gt[..., SH:]
            i = gt[..., o_off : o_off + H] if spec.has_i else None
            # q: d c_t (or d LN(c_t)) per unit of dm_t, o (1 - tanh^2), as o - (o tanh) tanh
            q = None
            if v.output_activation:
                if o is not None:
                    q = torch.addcmul(o, ms[lo:hi] if proj else o * a_t, a_t, value=-1.0)
                else:
                    q = torch.addcmul(one, a_t, a_t, value=-1.0)
            elif o is not None:
                q = o
            if mf_t is not None:
                q = mf_t.expand(n, B, H) if q is None else q * mf_t
            k_o = torch.mul(a_t, dsig[..., :H]) if has_o else None  # d o-hat per unit of dm
            # k_rest: d [i-hat, f-hat, g-hat] per unit of dc
            k_rest = hs.new_empty(n, B, n_pre + 1, H)
            j = 0
            if spec.has_i:
                di = g - cp if update == "cifg" else g  # dc/di
                torch.mul(di, dsig[..., o_off : o_off + H], out=k_rest[:, :, j])
                j += 1
            if spec.has_f:
                torch.mul(cp, dsig[..., SH - H : SH], out=k_rest[:, :, j])
                j += 1
            kg = k_rest[:, :, j]
            if v.input_activation:  # i (1 - g^2) = i - (i g) g
                if i is not None:
                    torch.addcmul(i, i * g, g, value=-1.0, out=kg)
                else:
                    torch.addcmul(one, g, g, value=-1.0, out=kg)
            elif i is not None:
                kg.copy_(i)
            else:
                kg.fill_(1.0)
            if mf_t is not None:
                k_rest.mul_(mf_t.unsqueeze(-1))
                if k_o is not None:
                    k_o.mul_(mf_t)
            # dc_{t-1} per unit of dc_t (the forget gate); 1 where the step is masked
            f_eff = None
            if update in ("std", "nig"):
                f_eff = gt[..., SH - H : SH]
            elif update == "cifg":
                assert i is not None  # CIFG has the input gate (LSTMVariant checks)
                f_eff = 1.0 - i
            if f_eff is not None and mv is not None:
                f_eff = torch.where(mv.bool3[lo:hi], f_eff, 1.0)
            if fold and not ln and q is not None and k_o is not None:  # both set: has_o
                q = torch.addcmul(q, k_o, w_co)
            if fold and n_pre:
                k_pre = k_rest[:, :, :n_pre]  # (n, B, nP, H), masked
                f_eff = (
                    (k_pre * w_pre).sum(2)
                    if f_eff is None
                    else torch.add(f_eff, (k_pre * w_pre).sum(2))
                )
                if update in ("nfg", "add"):
                    f_eff.add_(1.0)  # f = 1
            dsig_m = None
            if fgr:
                dsig_m = dsig if mf_t is None else dsig * mf_t
            return (
                None if q is None else q.unbind(0),
                () if k_o is None else k_o.unbind(0),
                k_rest.unbind(0),
                None if f_eff is None else f_eff.unbind(0),
                () if dsig_m is None else dsig_m.unbind(0),
            )

        # --- the backward loop
        # (the views of an absent buffer are empty, as in the forward pass)
        dA = torch.zeros_like(gates) if fgr else torch.empty_like(gates)
        dH_s, dC_s = dH.unbind(0), dC.unbind(0)
        dc3_s = dC.unsqueeze(2).unbind(0)
        dS_s = dS.unbind(0) if dS is not None else ()
        dA_s = dA.unbind(0)
        dAsig_s = dA[..., :SH].unbind(0) if fgr else ()
        dAo_s = dA[..., :H].unbind(0) if has_o else ()
        dArest_s = dA[..., o_off:].unflatten(-1, (n_pre + 1, H)).unbind(0)
        dApre_s = []
        if peephole and n_pre and not fold:
            dApre_s = [d.unbind(0) for d in dA[..., o_off:SH].unflatten(-1, (n_pre, H)).unbind(2)]
        w_pre_s = w_pre.unbind(0) if w_pre is not None else ()
        inv_s = mv.inv3.unbind(0) if mv is not None else None
        dm_s = torch.empty_like(cs).unbind(0) if proj else ()  # delta m_t
        if ln:
            dcn = torch.empty_like(cs)  # delta LN(c_t)
            dZ = torch.empty_like(zs)  # delta (W_hh h_{t-1}) before its LN
            dcn_s, dZ_s = dcn.unbind(0), dZ.unbind(0)
            c_s = cs.unbind(0)
            z_s, muz_s, rsz_s = zs.unbind(0), mu_z.unbind(0), rs_z.unbind(0)
            muc_s, rsc_s = mu_c.unbind(0), rs_c.unbind(0)
        mul = torch.mul
        hh_acc = products.acc_fn(w_hh.t(), B)  # delta a_t W_hh
        gg_acc = products.acc_fn(w_gg.t(), B) if fgr else None
        hr_into = products.into_fn(w_hr.t(), B) if proj else None
        steps = max(1, _DERIVATIVE_BLOCK_BYTES // (B * GH * gates.element_size()))
        for lo in range((T - 1) // steps * steps, -1, -steps):
            hi = min(lo + steps, T)
            q_s, ko_s, kr_s, f_s, dsm_s = local_derivatives(lo, hi)
            for t in range(hi - 1, lo - 1, -1):
                j = t - lo  # the step within the block
                dh = dH_s[t + 1]  # delta h_t (complete: step t+1 has been peeled off)
                dc = dC_s[t + 1]  # delta c_t so far
                dm = hr_into(dm_s[t], dh) if hr_into is not None else dh  # through W_hr
                if fgr:
                    mul(dS_s[t + 1], dsm_s[j], out=dAsig_s[t])  # s_t = the sigmoid gates
                    if has_o:
                        dAo_s[t].addcmul_(dm, ko_s[j])
                elif has_o:
                    mul(dm, ko_s[j], out=dAo_s[t])  # delta o-hat
                if ln:
                    # delta LN(c_t)
                    d = mul(dm, q_s[j], out=dcn_s[t]) if q_s is not None else dcn_s[t].copy_(dm)
                    dc.add_(_ln_backward(d, c_s[t], [H], muc_s[t], rsc_s[t], ln_c_weight,
                                         ln_c_bias, (True, False, False))[0])  # fmt: skip
                elif q_s is not None:
                    dc.addcmul_(dm, q_s[j])  # through h_t = o tanh(c_t)
                else:
                    dc.add_(dm)
                if o_peep:
                    dc.addcmul_(dAo_s[t], w_co)  # through w_co c_t
                if fgr:
                    dArest_s[t].addcmul_(dc3_s[t + 1], kr_s[j])
                else:
                    mul(dc3_s[t + 1], kr_s[j], out=dArest_s[t])  # delta i-hat, f-hat, g-hat
                if f_s is None:
                    dC_s[t].add_(dc)  # f = 1 (NFG)
                else:
                    dC_s[t].addcmul_(dc, f_s[j])  # delta c_{t-1} += delta c_t f_t
                for d_pre, w in zip(dApre_s, w_pre_s):
                    dC_s[t].addcmul_(d_pre[t], w)  # through w_ci c_{t-1}, w_cf c_{t-1}
                if ln:
                    # into one buffer: T separate results kept alive until the end would each
                    # be a fresh allocation (page faults) and then one more copy
                    dz = _ln_backward(dA_s[t], z_s[t], [GH], muz_s[t], rsz_s[t], gam_hh, None,
                                      (True, False, False))[0]  # fmt: skip
                    dz = dZ_s[t].copy_(dz)
                    hh_acc(dH_s[t], dz)
                else:
                    hh_acc(dH_s[t], dA_s[t])  # delta h_{t-1} += delta a_t W_hh
                if inv_s is not None:
                    dH_s[t].addcmul_(dh, inv_s[t])  # a frozen state passes its gradient on
                if gg_acc is not None:  # FGR
                    gg_acc(dS_s[t], dAsig_s[t])  # delta s_{t-1} += delta a^sigma_t W_gg
                    if inv_s is not None:
                        dS_s[t].addcmul_(dS_s[t + 1], inv_s[t])
        # --- weight gradients: one product over all steps each
        dA2 = dA.view(T * B, GH)
        g_ih = g_hh = g_c = b_c = None
        if ln:
            dxz, g_ih, _ = _ln_backward(dA2, xz, [GH], mu_x, rs_x, gam_ih, None,
                                        (True, needs[14], False))  # fmt: skip
            if needs[15]:
                g_hh = _ln_backward(dA, zs, [GH], mu_z, rs_z, gam_hh, None,
                                    (False, True, False))[1]  # fmt: skip
            if needs[16] or needs[17]:
                _, g_c, b_c = _ln_backward(dcn, cs, [H], mu_c, rs_c, ln_c_weight, ln_c_bias,
                                           (False, needs[16], needs[17]))  # fmt: skip
            dP2 = dxz
            dW_hh = None
            if needs[7]:
                dW_hh = grad_with_prev(dZ, hs, h0)
        else:
            dP2 = dA2
            dW_hh = grad_with_prev(dA, hs, h0) if needs[7] else None
        dx = products.mm(dP2, w_ih).view(T, B, I) if needs[1] else None
        dW_ih = products.mm(dP2.t(), x2) if needs[6] else None
        db_ih, db_hh = bias_grads(dA, ctx.has_bias, needs[8], needs[9])
        d_ci = d_cf = d_co = None
        if peephole:
            if spec.has_i and needs[10]:
                d_ci = (dA[..., o_off : o_off + H] * c_prev).sum((0, 1))
            if spec.has_f and needs[11]:
                d_cf = (dA[..., SH - H : SH] * c_prev).sum((0, 1))
            if has_o and needs[12]:
                d_co = (dA[..., :H] * cs).sum((0, 1))
        dW_gg = ds0 = None
        if dS is not None:  # FGR
            sinv = _inverse(sperm) if sperm is not None else None
            if needs[13]:
                s_int = ss if ss is not None else gates[..., :SH]
                dW_gg = grad_with_prev(dA[..., :SH], s_int, s0)
                if sinv is not None:
                    dW_gg = dW_gg[sinv][:, sinv]
            if needs[4]:
                ds0 = dS[0] if sinv is None else dS[0].index_select(-1, sinv)
        dW_hr = None
        if proj and needs[18]:
            dh_new = dH[1:] if mf is None else dH[1:] * mf
            dW_hr = products.mm(dh_new.reshape(T * B, P).t(), ms.reshape(T * B, H))
        if perm is not None:  # back to torch.nn's gate order
            inv = _inverse(perm)
            dW_ih, dW_hh, db_ih, db_hh, g_ih, g_hh = (
                _rows(t, inv) for t in (dW_ih, dW_hh, db_ih, db_hh, g_ih, g_hh)
            )
        dh0 = dH[0] if needs[2] else None
        dc0 = dC[0] if needs[3] else None
        return (
            None, dx, dh0, dc0, ds0, None, dW_ih, dW_hh, db_ih, db_hh, d_ci, d_cf, d_co,
            dW_gg, g_ih, g_hh, g_c, b_c, dW_hr,
        )  # fmt: skip


def lstm_sequence(
    cell: LSTMCell,
    params: dict[str, Tensor],
    x: Tensor,
    state0: tuple[Tensor, ...],
    mask: Tensor | None,
    recompute: Recompute | None = None,
) -> tuple[LSTMState | LSTMGateState, dict[str, Tensor]]:
    """Run an :class:`~carousel.cells.LSTMCell` over ``x`` (``recompute``: the Function's, for
    a second derivative; see :mod:`carousel._recompute`).

    Returns:
        ``(states, gates)``: the per-step state (``LSTMState`` or ``LSTMGateState`` with
        fields ``(T, B, *)``) and the gate activations by name, ``(T, B, H)`` each, in the
        cell's gate order (``f = 1 - i`` included for CIFG), not masked, not differentiable.
    """
    v = cell.variant
    spec = LSTMSpec(v, proj=bool(cell.proj_size), ln_eps=cell.ln_eps)
    fgr = v.full_gate_recurrence
    out = LSTMFunction.apply(
        spec,
        x,
        state0[0],
        state0[1],
        state0[2] if fgr else None,
        mask,
        params["weight_ih"],
        params["weight_hh"],
        params.get("bias_ih"),
        params.get("bias_hh"),
        params.get("weight_ci"),
        params.get("weight_cf"),
        params.get("weight_co"),
        params.get("weight_gg"),
        params.get("ln_ih_weight"),
        params.get("ln_hh_weight"),
        params.get("ln_c_weight"),
        params.get("ln_c_bias"),
        params.get("weight_hr"),
        recompute,
    )
    gates_int = out[-1]
    H = state0[1].shape[-1]
    blocks = {n: gates_int[..., k * H : (k + 1) * H] for k, n in enumerate(spec.internal_order())}
    gates: dict[str, Tensor] = {}
    for name in ("i", "f", "g", "o"):  # the order of lstm_step's gate dict
        if name in blocks:
            gates[name] = blocks[name]
        elif name == "f" and v.coupled:
            gates["f"] = 1.0 - blocks["i"]  # CIFG
    states = LSTMGateState(*out[:3]) if fgr else LSTMState(*out[:2])
    return states, gates
