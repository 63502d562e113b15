"""Recurrent cells: ``nn.Module`` for one time step, ``forward(x, state) -> (y, state)``."""

from carousel.cells.base import Cell, RecurrentCell
from carousel.cells.gru import GRUCell
from carousel.cells.lstm import LSTMCell
from carousel.cells.rnn import RNNCell

__all__ = ["Cell", "GRUCell", "LSTMCell", "RNNCell", "RecurrentCell"]
