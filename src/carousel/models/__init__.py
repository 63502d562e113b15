"""Task models: a recurrent core from :mod:`carousel.layers` with task-specific input and
output layers, built from a :class:`ModelConfig`."""

from carousel.models.config import CELLS, InitConfig, ModelConfig
from carousel.models.sequence import (
    READOUTS,
    ModelOutput,
    SequenceModel,
    build_recurrent,
    init_model_,
)

__all__ = [
    "CELLS",
    "READOUTS",
    "InitConfig",
    "ModelConfig",
    "ModelOutput",
    "SequenceModel",
    "build_recurrent",
    "init_model_",
]
