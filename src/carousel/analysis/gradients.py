r"""Gradient flow through time: the norm of :math:`\partial L / \partial h_t` for every step and
layer.

Backpropagation through time multiplies the error derivative by the Jacobian of one step per
step back (Williams & Zipser 1995; Hinton, lecture 7b/7d):

.. math::

    \frac{\partial L}{\partial s_{t-1}}
        = \Big(\frac{\partial s_t}{\partial s_{t-1}}\Big)^{\!\top}
          \frac{\partial L}{\partial s_t}
          + \frac{\partial L_{t-1}}{\partial s_{t-1}},

so for a loss at the last step the error reaching step ``t`` is a product of ``T - 1 - t``
Jacobians and shrinks or grows exponentially unless those Jacobians stay close to norm one
(Bengio et al. 1994; Hochreiter 1991; Pascanu et al. 2013, eq. 3-5). For the linear RNN
``h_t = w h_{t-1} + x_t`` with ``L = h_T`` it is exactly ``w^{T-t}``. The LSTM's memory cell has
``\partial c_t / \partial c_{t-1} = f_t`` (Hochreiter & Schmidhuber 1997's constant error
carousel), which stays near 1 while the forget ("keep") gate is open.

:func:`gradient_norms_through_time` measures these norms for any model that holds carousel
layers, at initialisation or at any point of training.

Logging it from a training loop (one extra forward and backward pass on the reference path; the
model's ``.grad`` fields are not touched, so it can run between ``backward`` and ``step``)::

    from carousel.analysis import gradient_norms_through_time

    if step % 100 == 0:
        flow = gradient_norms_through_time(model, x, lambda out: criterion(out, y))
        logger.log(step, flow.summary())  # {"gradflow/l0/h/first": ..., ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from carousel.analysis.record import Recording, find_layers, primary_output, record

__all__ = [
    "LOSS_AT",
    "GradientFlow",
    "default_loss",
    "flow_from_recording",
    "gradient_norms_through_time",
    "state_gradients",
]

#: Where the default loss sits: the output at the last step only, or at every step.
LOSS_AT = ("last", "every")


@dataclass
class GradientFlow:
    r"""Norms of :math:`\partial L/\partial s_t` per track, state field and step.

    Attributes:
        norms: track -> field -> ``(T, B)``: the Euclidean norm over the hidden units of
            :math:`\partial L/\partial h_t` (field ``"h"``) or :math:`\partial L/\partial c_t`
            (``"c"``, LSTM), per step (time order) and sequence; zero past a sequence's end.
            This is the total derivative: through later steps and through the layers above.
        masks: track -> ``(T, B)`` bool valid steps, or ``None``.
        loss: the loss's value.
    """

    norms: dict[str, dict[str, Tensor]]
    masks: dict[str, Tensor | None]
    loss: float

    @property
    def tracks(self) -> list[str]:
        """Track names (layers and directions), bottom layer first."""
        return list(self.norms)

    def _track(self, track: str | None) -> str:
        if track is None:
            return self.tracks[0]
        if track not in self.norms:
            raise KeyError(f"GradientFlow: no track {track!r}; have {self.tracks}")
        return track

    def curve(self, track: str | None = None, field: str = "h") -> Tensor:
        """Mean over sequences (valid steps only) of the norms: ``(T,)`` in time order.

        Args:
            track: the track (default: the first, i.e. the bottom layer).
            field: the state field, ``"h"`` or (LSTM) ``"c"``.

        Raises:
            KeyError: for an unknown track or field.
        """
        name = self._track(track)
        if field not in self.norms[name]:
            raise KeyError(
                f"GradientFlow: track {name!r} has no field {field!r}; have "
                f"{list(self.norms[name])}"
            )
        n = self.norms[name][field]  # (T, B)
        m = self.masks[name]
        if m is None:
            return n.mean(1)
        m = m.to(n.device, n.dtype)
        return (n * m).sum(1) / m.sum(1).clamp_min(1)

    def by_distance(self, track: str | None = None, field: str = "h") -> Tensor:
        """:meth:`curve` reversed: entry ``k`` is the step ``k`` steps before the last one."""
        return self.curve(track, field).flip(0)

    def summary(self, prefix: str = "gradflow") -> dict[str, float]:
        """Scalars for a metrics log: per track and field the mean norm at the first and the
        last step and ``log10(first / last)`` (negative: the error vanishes going back).

        Returns:
            ``{f"{prefix}/{track}/{field}/first": ..., ".../last": ..., ".../log10_ratio": ...}``
        """
        out: dict[str, float] = {}
        for name, fields in self.norms.items():
            for f in fields:
                c = self.curve(name, f)
                first, last = float(c[0]), float(c[-1])
                key = f"{prefix}/{name}/{f}"
                out[key + "/first"] = first
                out[key + "/last"] = last
                ratio = first / last if last > 0 else math.inf
                out[key + "/log10_ratio"] = math.log10(ratio) if ratio > 0 else -math.inf
        return out


def default_loss(
    output: Any,
    loss_at: str = "last",
    *,
    batch_first: bool = False,
    lengths: Tensor | None = None,
) -> Tensor:
    """The loss used when none is given: the sum of the model's outputs at the last step
    (``loss_at="last"``; each sequence's own last step with ``lengths``) or at every step
    (``"every"``).

    With the sum, :math:`\\partial L/\\partial y = 1` at the chosen steps, so the measured norms
    show how the network itself carries errors back in time.

    Args:
        output: the model's output; a tuple's first element (``(output, state)``) is used.
        loss_at: ``"last"`` or ``"every"``.
        batch_first: whether the output is ``(B, T, *)``.
        lengths: ``(B,)`` sequence lengths, or ``None`` if every sequence has ``T`` steps.

    Raises:
        ValueError: for an unknown ``loss_at``, or ``"every"`` on an output with no time axis.
    """
    if loss_at not in LOSS_AT:
        raise ValueError(f"default_loss: loss_at must be one of {list(LOSS_AT)}, got {loss_at!r}")
    fix = "pass a loss_fn that turns it into a scalar"
    y, packed = primary_output(output, "gradient_norms_through_time", fix)
    time_dim = 1 if batch_first and not packed else 0
    if y.dim() < 3:
        if loss_at == "every":
            raise ValueError(
                f"default_loss: loss_at='every' needs an output with a time axis (T, B, *), got "
                f"shape {tuple(y.shape)}; pass a loss_fn instead"
            )
        return y.sum()
    if loss_at == "every":
        return y.sum()
    if lengths is None:
        return y.select(time_dim, -1).sum()
    y = y.movedim(time_dim, 0)  # (T, B, *)
    last = (lengths.to(y.device, torch.long) - 1).view(1, -1, *([1] * (y.dim() - 2)))
    return y.gather(0, last.expand(1, *y.shape[1:])).sum()


def _require_grad_input(inputs: Any) -> Any:
    """A fresh leaf for a floating input, so a model with frozen weights still has a graph."""
    if isinstance(inputs, Tensor) and inputs.is_floating_point():
        return inputs.detach().requires_grad_()
    if isinstance(inputs, PackedSequence):  # a tuple too: its data is the input
        if not inputs.data.is_floating_point():
            return inputs
        return inputs._replace(data=inputs.data.detach().requires_grad_())
    if isinstance(inputs, tuple) and inputs and isinstance(inputs[0], Tensor):
        if inputs[0].is_floating_point():
            return (inputs[0].detach().requires_grad_(), *inputs[1:])
    return inputs


def state_gradients(
    rec: Recording, loss: Tensor, *, retain_graph: bool = False
) -> dict[str, dict[str, Tensor]]:
    r"""The gradients :math:`\partial L/\partial s_t` of every recorded state field.

    Args:
        rec: a :class:`~carousel.analysis.record.Recording` made with ``grad=True``.
        loss: a scalar computed from ``rec.output``.
        retain_graph: keep the graph for further backward passes.

    Returns:
        track -> field -> ``(T, B, *)`` (time order; zero past a sequence's end).
    """
    flat: list[Tensor] = []
    index: list[tuple[str, str, int]] = []
    for name, fields in rec.graph_states.items():
        for f, seq in fields.items():
            index.append((name, f, len(seq)))
            flat.extend(seq)
    needs = [t.requires_grad for t in flat]
    grads: list[Tensor | None] = [None] * len(flat)
    wanted = [t for t, n in zip(flat, needs) if n]
    if wanted:
        got = torch.autograd.grad(loss, wanted, allow_unused=True, retain_graph=retain_graph)
        it = iter(got)
        grads = [next(it) if n else None for n in needs]
    out: dict[str, dict[str, Tensor]] = {}
    pos = 0
    for name, f, n in index:
        seq = [g if g is not None else torch.zeros_like(t) for g, t in
               zip(grads[pos:pos + n], flat[pos:pos + n])]  # fmt: skip
        pos += n
        lay = rec.layers[name]
        g = lay.processing_order(torch.stack(seq))  # (T, B, *) time order
        if lay.mask is not None:
            m = lay.mask.to(g.device).view(*lay.mask.shape, *([1] * (g.dim() - 2)))
            g = torch.where(m, g, torch.zeros_like(g))
        out.setdefault(name, {})[f] = g
    return out


def gradient_norms_through_time(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    *,
    loss_at: str | None = None,
    forward_kwargs: dict | None = None,
) -> GradientFlow:
    r"""Norms of :math:`\partial L/\partial h_t` (and :math:`\partial L/\partial c_t`) for every
    step, layer and direction of the carousel layers in ``model``.

    The model runs once on the reference path (see
    :func:`~carousel.analysis.record.reference_path`) in its current mode (``train()`` or
    ``eval()``); the gradients are taken with ``torch.autograd.grad``, so parameters' ``.grad``
    are left as they were. Cost: one forward and one backward pass.

    Args:
        model: a carousel layer or any module holding carousel layers.
        inputs: the model's input, a tensor or PackedSequence, or a tuple of positional
            arguments.
        loss_fn: ``loss_fn(output) -> scalar`` on the model's raw output (e.g.
            ``lambda out: F.cross_entropy(head(out[0][-1]), y)``). Default:
            :func:`default_loss`, the sum of the outputs at the last step or every step.
        loss_at: for the default loss only: ``"last"`` (default) or ``"every"``.
        forward_kwargs: keyword arguments for the model's forward (e.g. ``lengths``).

    Returns:
        :class:`GradientFlow`.

    Raises:
        ValueError: if ``loss_at`` is given together with ``loss_fn`` or is unknown, if the loss
            is not a scalar, is not finite, or the model holds no carousel layer.

    Shape:
        ``norms[track][field]``: ``(T, B)``, time-major in time order.

    Example:
        >>> import torch, carousel
        >>> from carousel.analysis import gradient_norms_through_time
        >>> flow = gradient_norms_through_time(carousel.LSTM(3, 8), torch.randn(20, 2, 3))
        >>> flow.tracks, tuple(flow.norms["l0"]["c"].shape)
        (['l0'], (20, 2))
    """
    name = "gradient_norms_through_time"
    if loss_fn is not None and loss_at is not None:
        raise ValueError(
            f"{name}: loss_at selects the steps of the default loss; with a loss_fn, select the "
            f"steps inside loss_fn (got loss_at={loss_at!r})"
        )
    layers = find_layers(model)
    at = "last" if loss_at is None else loss_at
    if at not in LOSS_AT:
        raise ValueError(f"{name}: loss_at must be one of {list(LOSS_AT)}, got {at!r}")
    batch_first = layers[0][1].batch_first
    rec = record(model, _require_grad_input(inputs), forward_kwargs=forward_kwargs, grad=True)
    return flow_from_recording(rec, loss_fn, loss_at=at, batch_first=batch_first)


def flow_from_recording(
    rec: Recording,
    loss_fn: Callable[[Any], Tensor] | None = None,
    *,
    loss_at: str = "last",
    batch_first: bool = False,
    retain_graph: bool = False,
) -> GradientFlow:
    """The second half of :func:`gradient_norms_through_time`, for a recording already made
    with ``grad=True`` (so :func:`~carousel.analysis.report.analyze` shares one forward pass).

    Args:
        rec: the recording.
        loss_fn: as :func:`gradient_norms_through_time` (``None``: :func:`default_loss`).
        loss_at: the default loss's steps.
        batch_first: whether the model's output is ``(B, T, *)``.
        retain_graph: keep the graph for further backward passes.

    Raises:
        ValueError: if the loss is not a finite scalar.
    """
    name = "gradient_norms_through_time"
    if loss_fn is None:
        first = next(iter(rec.layers.values()))
        lengths = None if first.mask is None else first.mask.sum(0)
        loss = default_loss(rec.output, loss_at, batch_first=batch_first, lengths=lengths)
    else:
        loss = loss_fn(rec.output)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{name}: loss_fn must return a scalar tensor, got {got}")
    if not torch.isfinite(loss).all():
        raise ValueError(f"{name}: the loss is {loss.item()}; gradients would not be finite")
    grads = state_gradients(rec, loss.reshape(()), retain_graph=retain_graph)
    norms = {
        track: {f: g.flatten(2).norm(dim=-1) for f, g in fields.items()}
        for track, fields in grads.items()
    }
    masks = {track: rec.layers[track].mask for track in norms}
    return GradientFlow(norms=norms, masks=masks, loss=float(loss.detach()))
