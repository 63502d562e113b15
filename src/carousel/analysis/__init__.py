"""Understanding recurrent networks: gradient flow through time, Jacobians and Lyapunov
exponents, traces of states and gates, saliency, and export for LSTMVis.

Every function takes a carousel layer, or any ``nn.Module`` that holds carousel layers, and
input tensors; it returns tensors (in dataclasses with documented fields). Plots live beside them
in :mod:`carousel.analysis.plots` (matplotlib, imported lazily). See docs/analysis.md.
"""

from carousel.analysis.dynamics import (
    JacobianSpectrum,
    LyapunovExponents,
    jacobian_spectrum,
    lyapunov_exponents,
    regime,
)
from carousel.analysis.gradients import GradientFlow, default_loss, gradient_norms_through_time
from carousel.analysis.record import LayerRecord, Recording, find_layers, record, reference_path

__all__ = [
    "GradientFlow",
    "JacobianSpectrum",
    "LayerRecord",
    "LyapunovExponents",
    "Recording",
    "default_loss",
    "find_layers",
    "gradient_norms_through_time",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "record",
    "reference_path",
    "regime",
]
