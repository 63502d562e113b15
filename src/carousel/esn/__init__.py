"""Echo state networks (reservoir computing): a fixed random recurrent reservoir whose only
trained part is a linear readout (Jaeger 2001; Jaeger & Haas 2004).

>>> from carousel.esn import EchoStateNetwork
>>> esn = EchoStateNetwork(units=100, spectral_radius=1.25, leak_rate=0.3, ridge=1e-5)

See :class:`EchoStateNetwork` (fit / forward / generate), :class:`Reservoir`,
:class:`RidgeReadout`, :class:`RLSReadout` and :mod:`carousel.esn.metrics`.
"""

from carousel.esn.matrices import random_matrix, random_stream, spectral_radius
from carousel.esn.metrics import MemoryCapacity, memory_capacity, nrmse, r2_score, rmse
from carousel.esn.model import READOUTS, EchoStateNetwork, ESNOutput, ESNState
from carousel.esn.readout import RidgeReadout, RLSReadout
from carousel.esn.reservoir import Reservoir

__all__ = [
    "READOUTS",
    "ESNOutput",
    "ESNState",
    "EchoStateNetwork",
    "MemoryCapacity",
    "RLSReadout",
    "Reservoir",
    "RidgeReadout",
    "memory_capacity",
    "nrmse",
    "r2_score",
    "random_matrix",
    "random_stream",
    "rmse",
    "spectral_radius",
]
