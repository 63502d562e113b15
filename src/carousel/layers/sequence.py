"""Running one cell over one sequence, in one direction: the reference autograd loop.

A *runner* takes ``(cell, params, x, state0, mask)`` and returns a :class:`SequenceResult`.
The layers call a runner once per layer and direction; the hand-written BPTT of
:mod:`carousel.bptt` is another runner with the same contract, tested against this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "SequenceResult",
    "map_state",
    "run_reference",
    "stack_states",
    "state_fields",
]


class SequenceResult(NamedTuple):
    """What a runner returns for one layer and direction.

    Attributes:
        output: ``(T, B, O)``; zero at steps where ``mask`` is False.
        state: the final state (the cell's state type, fields ``(B, *)``); with a mask, the
            state after each sequence's last valid step.
        states: the state after every step (the cell's state type, fields ``(T, B, *)``), or
            ``None`` if not requested. Past a sequence's end it holds the final state.
        gates: gate activations, name -> ``(T, B, H)`` (zero past a sequence's end), or
            ``None`` if not requested.
    """

    output: Tensor
    state: Any
    states: Any | None
    gates: dict[str, Tensor] | None


def state_fields(state: Any) -> tuple[Tensor, ...]:
    """The tensors of a state: a single tensor or a NamedTuple of tensors."""
    return (state,) if isinstance(state, Tensor) else tuple(state)


def map_state(fn: Callable[..., Tensor], *states: Any) -> Any:
    """Apply ``fn`` field-wise to states of one structure (tensor or NamedTuple)."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    return type(first)(*(fn(*fields) for fields in zip(*states)))


def stack_states(states: list[Any], dim: int = 0) -> Any:
    """Stack a list of states of one structure field-wise along ``dim``."""
    first = states[0]
    if isinstance(first, Tensor):
        return torch.stack(states, dim)
    return type(first)(*(torch.stack(list(f), dim) for f in zip(*states)))


def _where(m: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(m.view(m.shape[0], *([1] * (new.dim() - 1))), new, old)


def run_reference(
    cell: Any,
    params: dict[str, Tensor] | None,
    x: Tensor,
    state0: Any,
    mask: Tensor | None,
    *,
    return_states: bool = False,
    return_gates: bool = False,
) -> SequenceResult:
    """Plain autograd loop over ``cell``: the oracle every other path is tested against.

    Args:
        cell: any cell (built-in cells read their weights from ``params`` when given).
        params: weights for ``cell.step_with_params``, or ``None`` to use the cell's own.
        x: ``(T, B, I)``.
        state0: initial state, fields ``(B, *)``.
        mask: ``(T, B)`` bool, True where a step is valid, or ``None``.
        return_states, return_gates: record the per-step states / gates.
    """
    if params is not None:

        def step(x_t: Tensor, s: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
            return cell.step_with_params(params, x_t, s)
    elif hasattr(cell, "step_with_gates"):
        step = cell.step_with_gates
    else:
        if return_gates:
            raise ValueError(
                f"{type(cell).__name__} has no step_with_gates(x, state); gate activations "
                "cannot be recorded for it (return_gates=True)"
            )

        def step(x_t: Tensor, s: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
            y, s = cell(x_t, s)
            return y, s, {}

    state = state0
    outputs, states, gates = [], [], []
    # unbind, not x[t]: autograd then sums T slices once, not T full-size zero-padded grads
    for t, x_t in enumerate(x.unbind(0)):
        y, new_state, g = step(x_t, state)  # y: (B, O)
        if mask is not None:
            m = mask[t]  # (B,)
            new_state = map_state(lambda n, o, m=m: _where(m, n, o), new_state, state)
            y = _where(m, y, torch.zeros_like(y))
            if return_gates:
                g = {k: _where(m, v, torch.zeros_like(v)) for k, v in g.items()}
        state = new_state
        outputs.append(y)
        if return_states:
            states.append(state)
        if return_gates:
            gates.append(g)
    output = torch.stack(outputs)
    seq_states = stack_states(states) if return_states else None
    seq_gates = {k: torch.stack([g[k] for g in gates]) for k in gates[0]} if return_gates else None
    return SequenceResult(output, state, seq_states, seq_gates)
