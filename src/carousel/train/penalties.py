r"""Pascanu, Mikolov & Bengio 2013's regulariser against vanishing gradients.

"On the difficulty of training recurrent neural networks" (ICML 2013, section 3.3, eq. 9)
asks each step's Jacobian to preserve the norm of the error signal in the direction it
travels:

.. math::

    \Omega = \sum_k \Omega_k = \sum_k \left(
        \frac{\lVert \frac{\partial E}{\partial x_{k+1}}
              \frac{\partial x_{k+1}}{\partial x_k} \rVert}
             {\lVert \frac{\partial E}{\partial x_{k+1}} \rVert} - 1 \right)^2

and, as in the paper (eq. 10), :math:`\partial E / \partial x_{k+1}` and :math:`x_k` are
treated as constants when differentiating :math:`\Omega` with respect to the weights: only
the *immediate* dependence of one step's Jacobian on the weights is trained.

Implementation: the model's recurrent core is unrolled step by step with a zero "probe" added
to each state, so that one backward pass gives the total derivatives
:math:`\partial E/\partial x_k` (the probes' gradients). All the vector-Jacobian products
:math:`g_{k+1}^\top \partial x_{k+1}/\partial x_k` are then computed at once by running one
step of the cell on the detached states of every time step folded into the batch, with
``create_graph=True`` so that :math:`\Omega` is differentiable in the weights.

Departures from the paper, and why:

- The state :math:`x_k` is the recurrent state of carousel's cells (``h`` for RNN/GRU, ``(h,
  c)`` concatenated for LSTM, every layer separately), not the pre-activation of eq. 11; the
  norm ratio measures the same flow of error through time.
- :math:`\Omega` is averaged over sequences, steps and layers instead of summed, so its
  weight does not depend on the batch size or the sequence length; steps where the error
  signal is zero (e.g. past a sequence's end) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel.layers.sequence import map_state, state_fields
from carousel.models import ModelOutput

if TYPE_CHECKING:
    from carousel.layers.recurrent import RecurrentBase
    from carousel.models.sequence import SequenceModel

__all__ = ["PenalisedLoss", "vanishing_gradient_penalty"]


class PenalisedLoss(NamedTuple):
    """The result of :func:`vanishing_gradient_penalty`.

    Attributes:
        loss: the task loss ``E`` (with its graph).
        penalty: :math:`\\Omega` (with its graph in the weights).
        output: the model's output.
        states: the state of the core after every step, a list over time of states with
            fields ``(L, B, *)`` (detached).
    """

    loss: Tensor
    penalty: Tensor
    output: ModelOutput
    states: list[Any]


def _flat(state: Any) -> Tensor:
    return torch.cat([f.reshape(f.shape[0], -1) for f in state_fields(state)], dim=-1)


def vanishing_gradient_penalty(
    model: nn.Module,
    inputs: Tensor,
    loss_fn: Callable[[ModelOutput], Tensor],
    *,
    state: Any = None,
    lengths: Tensor | None = None,
    eps: float = 1e-12,
) -> PenalisedLoss:
    """The task loss and Pascanu et al.'s :math:`\\Omega` for one batch.

    Args:
        model: a :class:`~carousel.models.SequenceModel` (it needs ``features``, ``rnn``
            and ``decode``) whose core is a unidirectional carousel layer.
        inputs: the model's input ``(T, B, ...)``.
        loss_fn: maps the model's :class:`~carousel.models.ModelOutput` to the scalar loss.
        state: initial state of the core (fields ``(L, B, *)``), or ``None``.
        lengths: ``(B,)`` sequence lengths, or ``None``.
        eps: error-signal norms below this are left out of :math:`\\Omega`.

    Returns:
        :class:`PenalisedLoss`; backpropagate ``loss + weight * penalty``.

    Raises:
        TypeError: if the model has no recurrent core of carousel's layers.
        ValueError: for a bidirectional core.
    """
    rnn = getattr(model, "rnn", None)
    if not (hasattr(model, "features") and hasattr(model, "decode") and hasattr(rnn, "_all_cells")):
        raise TypeError(
            "vanishing_gradient_penalty: needs a carousel.models.SequenceModel (features, a "
            f"carousel recurrent layer in .rnn, decode); got {type(model).__name__}"
        )
    # as checked above: a SequenceModel's interface around a carousel recurrent layer
    seq = cast("SequenceModel", model)
    rnn = cast("RecurrentBase", rnn)
    if rnn.bidirectional:
        raise ValueError("vanishing_gradient_penalty: the regulariser needs a unidirectional core")
    x = seq.features(inputs)  # (T, B, I)
    T, B = x.shape[0], x.shape[1]
    states0 = rnn._initial_states(state, B, x)
    mask = None
    if lengths is not None:
        mask = torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device).unsqueeze(0)
    layer_input = x
    finals, per_layer = [], []
    for l in range(rnn.num_layers):
        cell, params = rnn.cell(l, 0), rnn._params(l)
        s = states0[l]
        probes, probed, outputs = [], [], []
        for t in range(T):
            y, new, _ = cell.step_with_params(params, layer_input[t], s)
            if mask is not None:
                m = mask[t].view(B, *([1] * (y.dim() - 1)))
                new = map_state(lambda n, o, m=m: torch.where(m, n, o), new, s)
            z = map_state(lambda f: torch.zeros_like(f, requires_grad=True), new)
            new = map_state(lambda f, p: f + p, new, z)
            y = state_fields(new)[0]  # built-in cells output their h
            if mask is not None:
                y = torch.where(m, y, torch.zeros_like(y))
            probes.append(z)
            probed.append(new)
            outputs.append(y)
            s = new
        out = torch.stack(outputs)  # (T, B, H)
        per_layer.append((cell, params, layer_input, states0[l], probed, probes))
        finals.append(s)
        layer_input = out
        if rnn.dropout > 0 and rnn.training and l < rnn.num_layers - 1:
            layer_input = F.dropout(layer_input, rnn.dropout, training=True)
    final = map_state(lambda *fs: torch.stack(fs), *finals)  # fields (L, B, *)
    output = ModelOutput(seq.decode(layer_input, final), final)
    loss = loss_fn(output)

    # total derivatives dE/dx_k through the probes (constants for Omega, eq. 10)
    all_probes = [f for layer in per_layer for z in layer[5] for f in state_fields(z)]
    found = torch.autograd.grad(loss, all_probes, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(found, all_probes)]
    n_fields = len(state_fields(per_layer[0][5][0]))
    terms = []
    offset = 0
    for cell, params, inp, s0, probed, _ in per_layer:
        g_layer = grads[offset : offset + T * n_fields]
        offset += T * n_fields
        g_next = [torch.stack(g_layer[f::n_fields]) for f in range(n_fields)]  # (T, B, *)
        # x_k for k = 0..T-1 (the state before step k+1), detached: immediate derivative
        prev = [s0, *probed[:-1]]
        leaf = map_state(
            lambda *fs: torch.stack([f.detach() for f in fs]).flatten(0, 1).requires_grad_(),
            *prev,
        )  # fields (T*B, *)
        x_in = inp.detach().flatten(0, 1)  # (T*B, I)
        _, nxt, _ = cell.step_with_params(params, x_in, leaf)
        outs = state_fields(nxt)
        g_flat = [g.flatten(0, 1) for g in g_next]
        vjp = torch.autograd.grad(outs, state_fields(leaf), g_flat, create_graph=True)
        u = torch.cat([v.reshape(T * B, -1) for v in vjp], dim=-1)  # (T*B, S)
        g = torch.cat([v.reshape(T * B, -1) for v in g_flat], dim=-1)
        g_norm = g.norm(dim=-1)
        keep = g_norm > eps
        if mask is not None:
            keep = keep & mask.flatten()
        ratio = u.norm(dim=-1)[keep] / g_norm[keep]
        if ratio.numel():
            terms.append(((ratio - 1) ** 2).mean())
    penalty = torch.stack(terms).mean() if terms else loss.new_zeros(())
    states = [
        map_state(
            lambda *fs: torch.stack([f.detach() for f in fs]), *[layer[4][t] for layer in per_layer]
        )
        for t in range(T)
    ]
    return PenalisedLoss(loss, penalty, output, states)
