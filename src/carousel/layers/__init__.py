"""Whole sequences: the generic :class:`Recurrent` layer and torch.nn-compatible layers."""

from carousel.layers.recurrent import IMPLS, Recurrent, RecurrentBase, RecurrentOutput
from carousel.layers.sequence import SequenceResult, run_reference
from carousel.layers.standard import GRU, LSTM, RNN

__all__ = [
    "GRU",
    "IMPLS",
    "LSTM",
    "RNN",
    "Recurrent",
    "RecurrentBase",
    "RecurrentOutput",
    "SequenceResult",
    "run_reference",
]
