"""The cell contract shared by every recurrent cell, built-in or user-defined."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from carousel._checks import autocast_on, check_floating, check_shape

__all__ = ["Cell", "RecurrentCell"]


@runtime_checkable
class Cell(Protocol):
    """What a layer needs from a cell (any ``nn.Module`` with these members works).

    - ``input_size`` and ``hidden_size``; the output ``y`` has size ``output_size`` if the
      cell defines it, else ``hidden_size``;
    - ``forward(x, state) -> (y, state)``: one time step, ``x`` of shape ``(B, I)``, ``y`` of
      shape ``(B, H)``; ``state`` is a tensor ``(B, *)`` or a NamedTuple of such tensors;
    - ``initial_state(batch_size, *, device=None, dtype=None)``: the zero state.

    Optionally ``step_with_gates(x, state) -> (y, state, gates)`` with ``gates`` a dict of
    ``(B, H)`` tensors, which lets layers record gate activations.
    """

    input_size: int
    hidden_size: int

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]: ...

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any: ...


class RecurrentCell(nn.Module):
    """Base of the built-in cells: input checks in ``forward``, math in ``step_with_gates``."""

    input_size: int
    hidden_size: int

    @property
    def output_size(self) -> int:
        """Size of the output ``y`` (the next layer's input)."""
        return self.hidden_size

    def _factory(
        self, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> dict[str, Any]:
        p = next(self.parameters(), None)
        return {
            "device": device if device is not None else (p.device if p is not None else None),
            "dtype": dtype if dtype is not None else (p.dtype if p is not None else None),
        }

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        kw = self._factory(device, dtype)
        return torch.zeros(batch_size, self.hidden_size, **kw)

    def init_parameter(self, name: str, p: Tensor) -> None:
        """Initialise the parameter ``name`` (one of :meth:`param_names`) in place: torch.nn's
        default, uniform in ``(-1/sqrt(H), 1/sqrt(H))``. :meth:`reset_parameters` applies it to
        the cell's own parameters; a layer that owns them under torch.nn's names applies it to
        its copies."""
        k = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(p, -k, k)

    def reset_parameters(self) -> None:
        """Initialise every parameter of the cell (:meth:`init_parameter`)."""
        for name, p in self.named_parameters(recurse=False):
            self.init_parameter(name, p)

    def param_names(self) -> tuple[str, ...]:
        """Names of this cell's own parameters (those ``step_with_params`` reads)."""
        return tuple(name for name, _ in self.named_parameters(recurse=False))

    def step_with_params(
        self, params: dict[str, Tensor], x: Tensor, state: Any
    ) -> tuple[Tensor, Any, dict[str, Tensor]]:
        """One step with the weights given in ``params`` (keys: :meth:`param_names`).

        Layers that name the weights of their cells as torch.nn does (``weight_ih_l0``) own
        the parameters and call this; the cell itself then holds configuration only.
        """
        raise NotImplementedError

    def step_with_gates(self, x: Tensor, state: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
        """One step with this cell's own weights: ``(y, state, gates)``."""
        return self.step_with_params({n: getattr(self, n) for n in self.param_names()}, x, state)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One time step.

        Args:
            x: input ``(B, I)``, or unbatched ``(I,)`` (as torch.nn's cells take it; then the
                state's fields and the output have no batch dimension either).
            state: the previous state, or ``None`` for zeros.

        Returns:
            ``(y, state)``: the output ``(B, H)`` and the new state.

        Raises:
            ValueError: if ``x`` or ``state`` have the wrong shape.
            TypeError: if ``x`` or ``state`` is not floating point or its dtype differs from
                the weights' (under ``torch.autocast``, any floating dtype, as torch.nn's
                cells take it).
        """
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: x must be a Tensor, got {type(x).__name__}")
        dtype = next(self.parameters()).dtype
        mixed = autocast_on(x.device.type)
        check_floating(name, "x", x, None if mixed else dtype)
        unbatched = x.dim() == 1  # as torch.nn's cells take it
        I = self.input_size
        if unbatched:
            check_shape(name, "x", x, (I,), (), f"(unbatched) or (B, {I})")
        else:
            check_shape(name, "x", x, (None, I), ("B",), f"(or unbatched ({I},))")
        B = 1 if unbatched else x.shape[0]
        if state is None:
            state = self.initial_state(B, device=x.device, dtype=dtype)
        else:
            self.check_state(state, B, dtype=None if mixed else dtype, unbatched=unbatched)
            if unbatched:
                state = _batch_dim(state, add=True)
        if unbatched:
            x = x.unsqueeze(0)
        y, state, _ = self.step_with_gates(x, state)
        if unbatched:
            y = y.squeeze(0)
            state = _batch_dim(state, add=False)
        return y, state

    def check_state(
        self,
        state: Any,
        batch_size: int,
        dtype: torch.dtype | None = None,
        *,
        unbatched: bool = False,
    ) -> None:
        """Check ``state``'s type and shapes for ``batch_size`` sequences (without the batch
        dimension if ``unbatched``), and its fields' dtype if given."""
        name = type(self).__name__
        ref = self.initial_state(batch_size, device="meta")
        cut = 1 if unbatched else 0
        if isinstance(ref, Tensor):
            if not isinstance(state, Tensor):
                raise TypeError(f"{name}: state must be a Tensor, got {type(state).__name__}")
            check_shape(name, "state", state, tuple(ref.shape[cut:]), ())
            if dtype is not None:
                check_floating(name, "state", state, dtype)
            return
        if not isinstance(state, tuple) or len(state) != len(ref):
            raise TypeError(
                f"{name}: state must be a {type(ref).__name__}{tuple(ref._fields)}, "
                f"got {type(state).__name__}"
            )
        for field, s, r in zip(ref._fields, state, ref):
            if not isinstance(s, Tensor):
                raise TypeError(f"{name}: state.{field} must be a Tensor, got {type(s).__name__}")
            check_shape(name, f"state.{field}", s, tuple(r.shape[cut:]), ())
            if dtype is not None:
                check_floating(name, f"state.{field}", s, dtype)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


def _batch_dim(state: Any, add: bool) -> Any:
    """A checked state with a batch dimension of one added in front of each field (``add``),
    or taken away: between an unbatched step's state (fields ``(*)``) and a batch of one."""
    if isinstance(state, Tensor):
        return state.unsqueeze(0) if add else state.squeeze(0)
    fields = [f.unsqueeze(0) if add else f.squeeze(0) for f in state]
    return type(state)(*fields) if hasattr(state, "_fields") else tuple(fields)
