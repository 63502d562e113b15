"""Hand-written backpropagation through time (``torch.autograd.Function``) for the built-in
cells, and truncated BPTT over long streams."""

from __future__ import annotations

from typing import Any

__all__ = ["run_sequence", "supports"]


def supports(cell: Any) -> bool:
    """Whether a hand-written forward/backward exists for ``cell``."""
    return False


def run_sequence(cell, params, x, state0, mask, *, return_states=False, return_gates=False):
    raise NotImplementedError
