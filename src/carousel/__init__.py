"""carousel: recurrent neural networks on PyTorch.

Every LSTM/GRU/RNN variant as a drop-in for torch.nn, with explicit backpropagation through
time, training, analysis, echo state networks and Hessian-free optimisation.
"""

import importlib
from types import ModuleType

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

#: Subpackages imported on first use (``import carousel`` then ``carousel.train.train(...)``),
#: so that ``import carousel`` stays light.
_LAZY = frozenset(
    {
        "analysis", "baselines", "bptt", "cli", "ctc", "esn", "handwriting", "kernels",
        "models", "speech", "study", "tasks", "text", "train", "web",
    }
)  # fmt: skip


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        module = importlib.import_module(f"carousel.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'carousel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
