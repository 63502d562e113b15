"""Pure tensor math of one time step per cell family (no ``nn.Module``)."""

from carousel.functional.gru import gru_step
from carousel.functional.lstm import (
    LSTM_VARIANTS,
    LSTMGateState,
    LSTMState,
    LSTMVariant,
    lstm_step,
)
from carousel.functional.rnn import NONLINEARITIES, rnn_step

__all__ = [
    "LSTM_VARIANTS",
    "NONLINEARITIES",
    "LSTMGateState",
    "LSTMState",
    "LSTMVariant",
    "gru_step",
    "lstm_step",
    "rnn_step",
]
