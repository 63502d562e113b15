r"""Saliency: which input steps an output depends on.

The saliency of input step ``t`` for output ``y_c`` is the gradient
:math:`\partial y_c / \partial x_t` (Simonyan et al. 2014, eq. 2, for images; for sequences Li et
al. 2016, "Visualizing and understanding neural models in NLP", Sec. 4, and Denil et al. 2014),
summarised per step by its Euclidean norm over the input features. By default ``c`` is the class
the model currently scores highest. For token inputs (an ``nn.Embedding`` first) the gradient is
taken with respect to the embedding vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from carousel.analysis.record import find_layers, primary_output, reference_path, run_model

__all__ = ["Saliency", "evaluation_mode", "saliency", "saliency_from_output"]


@dataclass
class Saliency:
    r"""What :func:`saliency` returns.

    Attributes:
        gradients: :math:`\partial y_{c}/\partial x`, the shape of the input (of the embedding
            output for token inputs).
        scores: ``(T, B)`` the norm of the gradient over the features of each step
            (time-major).
        target: ``(B,)`` the output unit (class) explained for each sequence.
        step: the output step explained (``None`` if the output has no time axis).
        output: ``(B,)`` the value of the explained output.
    """

    gradients: Tensor
    scores: Tensor
    target: Tensor
    step: int | None
    output: Tensor


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside; each submodule's previous mode is restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def saliency(
    model: nn.Module,
    inputs: Any,
    *,
    target: int | Tensor | None = None,
    step: int = -1,
    output_fn: Callable[[Any], Tensor] | None = None,
    forward_kwargs: dict | None = None,
) -> Saliency:
    r"""Gradient of one output of ``model`` with respect to every input step, in evaluation mode.

    The model runs in ``eval()`` mode (restored afterwards) on the reference path, so this
    works on any device (cuDNN refuses RNN backward passes in evaluation mode). Each sequence's
    output depends only on its own input, so one backward pass gives every sequence's saliency.

    Args:
        model: a carousel layer or any module holding carousel layers.
        inputs: a floating tensor ``(T, B, I)`` (``(B, T, I)`` if the model's first carousel
            layer is ``batch_first``), an integer token tensor for a model with an
            ``nn.Embedding``, or a tuple of positional arguments whose first is such a tensor.
        target: the output unit (class) to explain: an int, a ``(B,)`` tensor, or ``None``
            for the most active unit of each sequence (argmax).
        step: for an output with a time axis ``(T, B, C)``, the output step to explain
            (default the last; with ``lengths`` in ``forward_kwargs``, each sequence's last).
        output_fn: maps the model's raw output to a ``(B, C)`` or ``(T, B, C)`` tensor
            (default: the first element of a tuple).
        forward_kwargs: keyword arguments for the model's forward (e.g. ``lengths``).

    Returns:
        :class:`Saliency`.

    Raises:
        TypeError: if the input is neither floating nor tokens for a model with an embedding.
        ValueError: for a bad ``target`` or ``step``.

    Example:
        >>> import torch, carousel
        >>> from carousel.analysis import saliency
        >>> s = saliency(carousel.GRU(3, 4), torch.randn(10, 2, 3))
        >>> tuple(s.scores.shape), tuple(s.target.shape)
        ((10, 2), (2,))
    """
    layers = find_layers(model)
    prepared = _Prepared(model, inputs)
    try:
        with evaluation_mode(model), reference_path(model), torch.enable_grad():
            raw = run_model(model, prepared.inputs, forward_kwargs)
    finally:
        prepared.close()
    return saliency_from_output(
        raw,
        prepared.wrt(),
        batch_first=layers[0][1].batch_first,
        unbatched=prepared.unbatched,
        target=target,
        step=step,
        output_fn=output_fn,
        lengths=(forward_kwargs or {}).get("lengths"),
    )


class _Prepared:
    """The model's inputs made ready for a saliency backward pass: a floating input becomes a
    leaf that requires grad; for token inputs the first ``nn.Embedding``'s output is caught."""

    def __init__(self, model: nn.Module, inputs: Any) -> None:
        owner = "saliency"
        if isinstance(inputs, PackedSequence):  # a tuple too, whose first is the flat data
            raise TypeError(
                f"{owner}: inputs is a PackedSequence; pass the padded tensor and "
                "forward_kwargs={'lengths': lengths} (saliency scores each padded step)"
            )
        first = inputs[0] if isinstance(inputs, tuple) else inputs
        if not isinstance(first, Tensor):
            raise TypeError(
                f"{owner}: inputs must be a Tensor (or a tuple whose first is one), got "
                f"{type(first).__name__}"
            )
        self.first = first
        # (T, I) floating or (T,) tokens: one sequence without a batch axis
        self.unbatched = first.dim() == (2 if first.is_floating_point() else 1)
        self.captured: list[Tensor] = []
        self.handle = None
        self.leaf: Tensor | None = None
        if first.is_floating_point():
            self.leaf = first.detach().requires_grad_()
            self.inputs = (self.leaf, *inputs[1:]) if isinstance(inputs, tuple) else self.leaf
            return
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        if emb is None:
            raise TypeError(
                f"{owner}: inputs have dtype {first.dtype} and the model has no nn.Embedding; "
                "give floating-point inputs (or a model that embeds its tokens)"
            )
        self.inputs = inputs
        self.handle = emb.register_forward_hook(lambda _m, _i, out: self.captured.append(out))

    def wrt(self) -> Tensor:
        if self.leaf is not None:
            return self.leaf
        if not self.captured:
            raise ValueError("saliency: the model's forward did not run its nn.Embedding")
        return self.captured[0]

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def saliency_from_output(
    raw: Any,
    wrt: Tensor,
    *,
    batch_first: bool = False,
    unbatched: bool = False,
    target: int | Tensor | None = None,
    step: int = -1,
    output_fn: Callable[[Any], Tensor] | None = None,
    lengths: Any = None,
    retain_graph: bool = False,
) -> Saliency:
    """The second half of :func:`saliency`: pick the output and differentiate it with respect
    to ``wrt``, for a forward pass already made (so :func:`~carousel.analysis.report.analyze`
    shares one forward pass between its analyses).

    Args:
        raw: the model's output, attached to the graph.
        wrt: the tensor to differentiate against (the input leaf or the embedding output).
        batch_first: whether the model's input and output are ``(B, T, *)``.
        unbatched: whether the input was an unbatched ``(T, I)``.
        target, step, output_fn: as :func:`saliency`.
        lengths: ``(B,)`` sequence lengths, or ``None``.
        retain_graph: keep the graph for further backward passes.

    Returns:
        :class:`Saliency`.
    """
    owner = "saliency"
    if output_fn is not None:
        y, packed = output_fn(raw), False
    else:
        fix = "pass output_fn to turn it into a (B, C) or (T, B, C) tensor"
        y, packed = primary_output(raw, owner, fix)
    out_step: int | None = None
    if unbatched and y.dim() in (1, 2):  # (C,) or (T, C) for one sequence: add its batch axis
        y = y.unsqueeze(0) if y.dim() == 1 else y.unsqueeze(1)
        batch_first = False
    if y.dim() == 3:
        ydim = 1 if batch_first and not packed else 0
        y = y.movedim(ydim, 0)  # (T, B, C)
        T = y.shape[0]
        if isinstance(step, bool) or not isinstance(step, int) or not -T <= step < T:
            raise ValueError(f"{owner}: step must be an int in [-{T}, {T}), got {step!r}")
        if lengths is not None and step == -1:
            last = torch.as_tensor(lengths, device=y.device).long() - 1
            y = y.gather(0, last.view(1, -1, 1).expand(1, *y.shape[1:])).squeeze(0)
        else:
            y = y[step]
        out_step = step % T
    elif y.dim() != 2:
        raise ValueError(
            f"{owner}: expected the output as (B, C) or (T, B, C), got shape {tuple(y.shape)}; "
            "pass output_fn"
        )
    B, C = y.shape
    if target is None:
        tgt = y.detach().argmax(-1)
    else:
        tgt = torch.as_tensor(target, device=y.device).long().expand(B).clone()
        if (tgt < 0).any() or (tgt >= C).any():
            raise ValueError(f"{owner}: target must lie in [0, {C}), got {tgt.tolist()}")
    chosen = y.gather(1, tgt.unsqueeze(1)).squeeze(1)  # (B,)
    (g,) = torch.autograd.grad(chosen.sum(), wrt, allow_unused=True, retain_graph=retain_graph)
    if g is None:
        g = torch.zeros_like(wrt)
    if unbatched:  # (T, I) or (T, E)
        scores = g.flatten(1).norm(dim=-1).unsqueeze(1)
    else:
        tdim = 1 if batch_first else 0
        scores = g.movedim(tdim, 0).flatten(2).norm(dim=-1)  # (T, B)
    return Saliency(gradients=g.detach(), scores=scores.detach(), target=tgt, step=out_step,
                    output=chosen.detach())  # fmt: skip
