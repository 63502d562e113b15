"""Double backward through carousel's sequence Functions, by recomputation.

The hand-written backward passes (:mod:`carousel.bptt`, :mod:`carousel.kernels`) are not
themselves differentiable. A Function given a ``recompute`` (the same sequence as a plain
autograd loop over the cell) keeps its inputs (:func:`keep_for_recompute`); when autograd asks
for the backward pass's own graph (``create_graph=True``: double backward, gradient penalties,
Hessian-vector products by double backward) its backward (:func:`twice_differentiable`) runs
the forward pass again with autograd and differentiates that. A first derivative costs
nothing more; a second one costs a recomputation on the reference path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["Recompute", "keep_for_recompute", "twice_differentiable"]

#: The differentiable leading outputs of a sequence Function (the states after every step),
#: computed from its positional arguments by a plain autograd loop over the cell.
Recompute = Callable[..., Sequence[Tensor | None]]


def keep_for_recompute(ctx: Any, recompute: Recompute | None, *args: Any) -> None:
    """Keep a Function's positional arguments (all but ``recompute``, which comes last) for
    :func:`twice_differentiable`. They are the inputs themselves, with their autograd history;
    the Function's saved tensors hold the same tensors, so nothing more is kept alive."""
    ctx.recompute = recompute
    if recompute is not None:
        ctx.recompute_args = args
        ctx.recompute_versions = [a._version if isinstance(a, Tensor) else None for a in args]


def twice_differentiable(
    backward: Callable[..., tuple[Tensor | None, ...]],
) -> Callable[..., tuple[Tensor | None, ...]]:
    """A Function's ``backward``: the hand-written one (run as ``once_differentiable`` runs it)
    unless autograd asks for the backward pass's own graph (``create_graph=True``) and the
    Function kept a ``recompute`` (:func:`keep_for_recompute`). Then the forward pass runs
    again as a plain autograd loop over the cell, from the inputs with their history, and the
    gradients are taken through it with ``create_graph=True``: a second derivative costs a
    recomputation, a first derivative nothing. The result is padded with ``None`` for the
    ``recompute`` argument."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        n = len(ctx.needs_input_grad)
        recompute = getattr(ctx, "recompute", None)
        if recompute is None or not torch.is_grad_enabled():
            out = once(ctx, *grads)
            return (*out, *(None,) * (n - len(out)))
        return _recomputed_grads(ctx, recompute, grads, n)

    return wrapper


def _recomputed_grads(
    ctx: Any, recompute: Recompute, grads: Sequence[Tensor | None], n: int
) -> tuple[Tensor | None, ...]:
    args = ctx.recompute_args
    for a, v in zip(args, ctx.recompute_versions):
        if isinstance(a, Tensor) and a._version != v:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                "inplace operation: an input of carousel's sequence Function (it is recomputed "
                "for the double backward)"
            )
    needs = ctx.needs_input_grad
    want = [i for i, a in enumerate(args) if needs[i] and isinstance(a, Tensor)]
    with torch.enable_grad():
        outs = recompute(*args)
    pairs = [
        (o, g) for o, g in zip(outs, grads) if o is not None and g is not None and o.requires_grad
    ]
    result: list[Tensor | None] = [None] * n
    if not pairs or not want:
        return tuple(result)
    got = torch.autograd.grad(
        [o for o, _ in pairs],
        [args[i] for i in want],
        [g for _, g in pairs],
        create_graph=True,
        allow_unused=True,
    )
    for i, g in zip(want, got):
        result[i] = g
    return tuple(result)
