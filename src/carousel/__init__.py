"""carousel: recurrent neural networks on PyTorch.

Every LSTM/GRU/RNN variant as a drop-in for torch.nn, with explicit backpropagation through
time, training, analysis, echo state networks and Hessian-free optimisation.
"""

from carousel import (
    init,  # carousel.init: orthogonal_, identity_, echo_state_, ...
    optim,  # carousel.optim.HessianFree
)
from carousel.cells import Cell, GRUCell, LSTMCell, RecurrentCell, RNNCell
from carousel.functional import LSTM_VARIANTS, LSTMGateState, LSTMState, LSTMVariant

# carousel.generate is the function; its module's other names: from carousel.generate import ...
from carousel.generate import generate
from carousel.layers import GRU, LSTM, RNN, Recurrent, RecurrentOutput

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "LSTM_VARIANTS",
    "RNN",
    "Cell",
    "GRUCell",
    "LSTMCell",
    "LSTMGateState",
    "LSTMState",
    "LSTMVariant",
    "RNNCell",
    "Recurrent",
    "RecurrentCell",
    "RecurrentOutput",
    "__version__",
    "generate",
    "init",
    "optim",
]
