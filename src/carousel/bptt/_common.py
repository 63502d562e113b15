"""Helpers shared by the hand-written BPTT functions: masks, previous states, weight gradients.

Conventions used in :mod:`carousel.bptt.rnn`, :mod:`~carousel.bptt.gru` and
:mod:`~carousel.bptt.lstm`:

- every buffer is time-major, ``(T, B, *)``, preallocated once per call, and written in place
  step by step through per-step views made in one ``unbind`` call (no Python indexing in the
  loops);
- a gradient buffer for a state has ``T + 1`` rows: row ``t + 1`` holds the gradient of the
  state after step ``t`` and row ``0`` that of the initial state, so the backward loop peels
  step ``t`` off by reading row ``t + 1`` and accumulating into row ``t``;
- with a mask ``m_t`` (True while step ``t`` of a sequence is valid) the state is frozen past a
  sequence's end, ``s_t = m_t s'_t + (1 - m_t) s_{t-1}`` where ``s'_t`` is the cell's new
  state. The backward pass folds ``m_t`` into the bulk-precomputed local derivatives, so the
  gradient reaching the cell's step is zero where ``m_t = 0`` and the state's gradient passes
  through to ``s_{t-1}`` unchanged there;
- the forward and backward passes run with Python's cyclic garbage collector paused
  (:func:`gc_paused`);
- the hand-written backward is not itself differentiable. Given a ``recompute`` (the same
  sequence as a plain autograd loop over the cell), a backward asked for its own graph
  (``create_graph=True``: double backward, gradient penalties) recomputes the forward pass
  with autograd and differentiates that instead (:func:`twice_differentiable`).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

import torch
from torch import Tensor

from carousel._recompute import Recompute, keep_for_recompute, twice_differentiable
from carousel.bptt import _products as products

__all__ = [
    "MaskViews",
    "Recompute",
    "bias_grads",
    "bias_sum",
    "gc_paused",
    "grad_with_prev",
    "keep_for_recompute",
    "masks",
    "prev_states",
    "sigmoid_tanh",
    "sum_rows",
    "twice_differentiable",
]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with Python's cyclic garbage collector paused (unless it is already off).

    The per-step views of the time loops are some thousand tensor objects alive at once, and
    CPython counts live tracked objects to decide when to collect: a forward or backward pass
    set off several collections, among them full ones over every object of the process (torch's
    included), about 5 ms of a 17 ms backward pass at (B=32, T=100, I=64, H=128). Nothing the
    passes create forms a reference cycle, so pausing loses nothing; the views are freed when
    the pass returns, which brings the count back down. The collector is switched back on
    even if ``fn`` raises.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


class MaskViews:
    """A ``(T, B)`` bool mask prepared for the loops.

    Attributes:
        bool3: ``(T, B, 1)`` bool, for ``torch.where`` in the forward loop.
        float3: ``(T, B, 1)`` in the compute dtype (``m_t``).
        inv3: ``(T, B, 1)``, ``1 - m_t``.
    """

    def __init__(self, mask: Tensor, dtype: torch.dtype) -> None:
        self.bool3 = mask.unsqueeze(-1)
        self.float3 = self.bool3.to(dtype)
        self.inv3 = 1.0 - self.float3


def masks(mask: Tensor | None, dtype: torch.dtype) -> MaskViews | None:
    """:class:`MaskViews` for ``mask``, or ``None``."""
    return None if mask is None else MaskViews(mask, dtype)


def prev_states(s0: Tensor, states: Tensor) -> Tensor:
    """``(T, B, *)``: the state entering each step, ``[s_0, s_1, ..., s_{T-1}]``."""
    return torch.cat([s0.unsqueeze(0), states[:-1]])


def grad_with_prev(
    d: Tensor,
    states: Tensor,
    s0: Tensor,
    *,
    mm: Callable[[Tensor, Tensor], Tensor] | None = None,
    mm_acc: Callable[[Tensor, Tensor, Tensor], object] | None = None,
) -> Tensor:
    """``sum_t d_t^T s_{t-1}`` without building the shifted stack: the weight gradient of a
    recurrent matrix, ``dW = sum_t dA_t^T h_{t-1}``, as two matrix products.

    Args:
        d: ``(T, B, N)`` gradients of the pre-activations.
        states: ``(T, B, K)`` states after every step.
        s0: ``(B, K)`` initial state.
        mm, mm_acc: the products ``mm(a, b) -> a @ b`` and ``mm_acc(out, a, b)``
            (``out += a @ b``); by default :mod:`carousel.bptt._products`' (torch's ``mm``, or
            oneDNN where that is faster; the compiled kernels pass theirs).

    Returns:
        ``(N, K)``.
    """
    T, B, N = d.shape
    K = states.shape[-1]
    mm = products.mm if mm is None else mm
    mm_acc = products.mm_acc if mm_acc is None else mm_acc
    out = mm(d[0].t(), s0)
    if T > 1:
        mm_acc(out, d[1:].reshape(-1, N).t(), states[:-1].reshape(-1, K))
    return out


def sum_rows(d: Tensor) -> Tensor:
    """Sum of ``d`` over every dimension but the last (a bias gradient)."""
    return d.reshape(-1, d.shape[-1]).sum(0)


def bias_sum(bias_ih: Tensor | None, bias_hh: Tensor | None) -> Tensor | None:
    """``b_ih + b_hh`` (a new tensor), or ``None`` for a cell without biases (``b_ih``
    ``None``).

    Raises:
        TypeError: if ``b_ih`` is given without ``b_hh``.
    """
    if bias_ih is None:
        return None
    if bias_hh is None:
        raise TypeError("bias_hh is None but bias_ih is given: a cell has both biases or neither")
    return bias_ih + bias_hh


def bias_grads(
    d: Tensor, has_bias: bool, need_ih: bool, need_hh: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``b_ih`` and ``b_hh`` when both add to the same pre-activations ``d``:
    equal, but distinct tensors (autograd may keep a returned gradient as ``.grad``)."""
    if not has_bias or not (need_ih or need_hh):
        return None, None
    db = sum_rows(d)
    return (db if need_ih else None), ((db.clone() if need_ih else db) if need_hh else None)


#: Below this many elements per step ``torch.tanh`` is cheaper than the sigmoid identity.
_SIGMOID_TANH_MIN_NUMEL = 1024


def sigmoid_tanh(numel: int, device: torch.device) -> bool:
    """Whether to compute ``tanh(a)`` as ``2 sigmoid(2a) - 1`` for ``numel`` elements a step.

    The identity is exact in real arithmetic and the factor 2 is exact in floating point
    (it is folded into the weights), so the results differ from ``torch.tanh`` only by
    rounding. On the CPU ``torch.tanh`` costs about four times ``torch.sigmoid`` (measured,
    torch 2.13, AVX2/AVX-512), so from about a thousand elements a step the identity is faster
    even with its extra ``2s - 1``; below, the extra operation's dispatch costs more.
    """
    return device.type == "cpu" and numel >= _SIGMOID_TANH_MIN_NUMEL


@overload
def scale_rows(t: Tensor, start: int, stop: int, factor: float = 2.0) -> Tensor: ...
@overload
def scale_rows(t: None, start: int, stop: int, factor: float = 2.0) -> None: ...
@overload
def scale_rows(t: Tensor | None, start: int, stop: int, factor: float = 2.0) -> Tensor | None: ...
def scale_rows(t: Tensor | None, start: int, stop: int, factor: float = 2.0) -> Tensor | None:
    """A copy of ``t`` with rows ``start:stop`` multiplied by ``factor`` (for the sigmoid
    identity of :func:`sigmoid_tanh`)."""
    if t is None:
        return None
    out = t.clone()
    out[start:stop].mul_(factor)
    return out
