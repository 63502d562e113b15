"""Hand-written backpropagation through time for the built-in cells.

Each cell family has a ``torch.autograd.Function`` that runs the whole sequence: the forward
pass computes the input projections of all steps in one matrix product, then steps through
time writing every activity into preallocated ``(T, B, ...)`` buffers; the backward pass
precomputes the local derivatives of all steps at once, peels the steps off in reverse, and
takes each weight's gradient, summed over time, as one matrix product after the loop
(Werbos 1990, "Backpropagation through time: what it does and how to do it").

- :mod:`carousel.bptt.rnn`: Elman RNN (tanh, ReLU).
- :mod:`carousel.bptt.gru`: GRU, ``reset_after`` True (torch.nn) and False (Cho et al. 2014).
- :mod:`carousel.bptt.lstm`: the LSTM family, every switch of
  :class:`~carousel.functional.LSTMVariant` in any combination, with or without projection.

:func:`run_sequence` has exactly the contract of
:func:`carousel.layers.sequence.run_reference` and is tested against it (tests/test_bptt.py).
One departure, documented there: the gate activations it returns are not differentiable.
The backward passes are not themselves differentiable either; a second derivative
(``create_graph=True``) recomputes the sequence with the reference loop and differentiates
that (:mod:`carousel._recompute`, :func:`reference_recompute`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from carousel._recompute import Recompute
from carousel.bptt.gru import GRUFunction
from carousel.bptt.lstm import LSTMFunction, LSTMSpec, lstm_sequence
from carousel.bptt.rnn import RNNFunction
from carousel.cells.gru import GRUCell
from carousel.cells.lstm import LSTMCell
from carousel.cells.rnn import RNNCell
from carousel.functional.lstm import LSTMGateState, LSTMState
from carousel.layers.sequence import SequenceResult, run_reference, state_fields

__all__ = [
    "GRUFunction",
    "LSTMFunction",
    "LSTMSpec",
    "RNNFunction",
    "reference_recompute",
    "run_sequence",
    "supports",
]

_BUILTIN = (RNNCell, GRUCell, LSTMCell)


def _family(cell: Any) -> type | None:
    """The built-in class whose math ``cell`` runs, or ``None`` if it may run other math (a
    subclass that overrides a step method)."""
    for base in _BUILTIN:
        if isinstance(cell, base):
            cls = type(cell)
            if (
                cls.step_with_params is base.step_with_params
                and cls.step_with_gates is base.step_with_gates
            ):
                return base
            return None
    return None


def supports(cell: Any) -> bool:
    """Whether a hand-written forward/backward exists for ``cell``.

    True for :class:`~carousel.cells.RNNCell` (tanh, ReLU), :class:`~carousel.cells.GRUCell`
    (both formulations) and :class:`~carousel.cells.LSTMCell` with any combination of variant
    switches and projection, including subclasses that do not override the step methods.
    """
    return _family(cell) is not None


#: The LSTM Functions' weight arguments, in order (after ``x, h0, c0, s0, mask``).
_LSTM_WEIGHTS = (
    "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf", "weight_co",
    "weight_gg", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias", "weight_hr",
)  # fmt: skip


def _recompute_h(
    cell: Any, x: Tensor, h0: Tensor, mask: Tensor | None, *args: Any
) -> tuple[Tensor]:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    params = {n: w for n, w in zip(names, args) if isinstance(w, Tensor)}
    states = run_reference(cell, params, x, h0, mask, return_states=True).states
    assert isinstance(states, Tensor)  # asked for above; an RNN's or GRU's state is h
    return (states,)


def _recompute_lstm(cell: Any, skip: int, *args: Any) -> tuple[Tensor, ...]:
    x, h0, c0, s0, mask, *weights = args[skip:]
    params = {n: w for n, w in zip(_LSTM_WEIGHTS, weights) if isinstance(w, Tensor)}
    fgr = cell.variant.full_gate_recurrence
    state0 = LSTMGateState(h0, c0, s0) if fgr else LSTMState(h0, c0)
    states = run_reference(cell, params, x, state0, mask, return_states=True).states
    return state_fields(states)


def reference_recompute(cell: Any, *, skip: int = 0) -> Recompute:
    """The sequence Functions' ``recompute`` for a built-in cell: their differentiable
    outputs (the states after every step) from their positional arguments, by the reference
    loop (:func:`~carousel.layers.sequence.run_reference`). ``skip``: leading arguments
    before ``x`` (1 for :class:`LSTMFunction`'s ``spec``)."""
    if _family(cell) is LSTMCell:
        return functools.partial(_recompute_lstm, cell, skip)
    return functools.partial(_recompute_h, cell)


# torch.compile runs the whole time loop eagerly, as one call: Dynamo cannot trace the compiled
# kernels' C++ operators, and tracing the hand-written loop would unroll every step (a new
# graph for every sequence length)
@torch.compiler.disable
def run_sequence(
    cell: Any,
    params: dict[str, Tensor] | None,
    x: Tensor,
    state0: Any,
    mask: Tensor | None,
    *,
    return_states: bool = False,
    return_gates: bool = False,
) -> SequenceResult:
    """Run a built-in cell over a sequence with the hand-written BPTT.

    Same contract and results as :func:`carousel.layers.sequence.run_reference` (the oracle
    it is tested against), with two departures: the gate activations (``return_gates``) are
    not differentiable (they are traces; gradients do not flow back through them), and the
    backward pass is not itself differentiable: a second derivative (``create_graph=True``)
    recomputes the sequence with the reference loop and differentiates that.

    Args:
        cell: an :class:`~carousel.cells.RNNCell`, :class:`~carousel.cells.GRUCell` or
            :class:`~carousel.cells.LSTMCell` (see :func:`supports`).
        params: the weights by the cell's parameter names (:meth:`param_names`), or ``None``
            for the cell's own.
        x: ``(T, B, I)``.
        state0: the initial state, fields ``(B, *)``.
        mask: ``(T, B)`` bool, True where a step is valid, or ``None``. Where it is False the
            state stays as it was and the output and gates are zero.
        return_states: also return the state after every step (differentiable).
        return_gates: also return the gate activations, name -> ``(T, B, H)``.

    Returns:
        :class:`~carousel.layers.sequence.SequenceResult` ``(output, state, states, gates)``.

    Raises:
        TypeError: if ``cell`` is not supported.

    Shape:
        - output ``(T, B, O)``; state and states fields ``(B, *)`` and ``(T, B, *)``.
    """
    family = _family(cell)
    if family is None:
        raise TypeError(
            "bptt.run_sequence: cell must be a built-in RNNCell, GRUCell or LSTMCell (without "
            f"overridden step methods), got {type(cell).__name__}; use run_reference"
        )
    if params is None:
        params = {n: getattr(cell, n) for n in cell.param_names()}
    gates: dict[str, Tensor] = {}
    if family is RNNCell:
        states = RNNFunction.apply(
            x, state0, mask, params["weight_ih"], params["weight_hh"], params.get("bias_ih"),
            params.get("bias_hh"), cell.nonlinearity == "relu", reference_recompute(cell),
        )  # fmt: skip
        hs = states
    elif family is GRUCell:
        states, g = GRUFunction.apply(
            x, state0, mask, params["weight_ih"], params["weight_hh"], params.get("bias_ih"),
            params.get("bias_hh"), cell.reset_after, reference_recompute(cell),
        )  # fmt: skip
        hs = states
        if return_gates:
            gates = dict(zip(("r", "z", "n"), g.chunk(3, dim=-1)))
    else:
        states, gates = lstm_sequence(
            cell, params, x, state0, mask, reference_recompute(cell, skip=1)
        )
        hs = states.h
    if mask is None:
        output = hs
    else:
        m = mask.unsqueeze(-1).to(hs.dtype)
        output = hs * m
        if return_gates:
            gates = {k: v * m for k, v in gates.items()}
    final = states[-1] if isinstance(states, Tensor) else type(states)(*(s[-1] for s in states))
    return SequenceResult(
        output,
        final,
        states if return_states else None,
        gates if return_gates else None,
    )
