"""Understanding recurrent networks: gradient flow through time, Jacobians and Lyapunov
exponents, traces of states and gates, saliency, and export for LSTMVis.

Every function takes a carousel layer, or any ``nn.Module`` that holds carousel layers, and its
input; it returns tensors in dataclasses with documented fields. Per-step tensors are time-major
``(T, B, *)``; each layer and direction is a *track* named like its parameters' suffix
(``"l0"``, ``"rnn.l1_reverse"``). Plots live beside them in :mod:`carousel.analysis.plots`
(matplotlib, imported lazily); :func:`analyze` writes them all with an HTML report; the
lectures' demonstrations are in :mod:`carousel.analysis.demos`. See docs/analysis.md.
"""

from carousel.analysis.dynamics import (
    JacobianSpectrum,
    LyapunovExponents,
    jacobian_spectrum,
    lyapunov_exponents,
    regime,
)
from carousel.analysis.export import export_hdf5, export_lstmvis, read_hdf5
from carousel.analysis.gradients import (
    GradientFlow,
    default_loss,
    flow_from_recording,
    gradient_norms_through_time,
    state_gradients,
)
from carousel.analysis.record import (
    LayerRecord,
    Recording,
    find_layers,
    record,
    reference_path,
    traces,
)
from carousel.analysis.report import WHAT, AnalysisReport, analyze
from carousel.analysis.saliency import Saliency, evaluation_mode, saliency

__all__ = [
    "WHAT",
    "AnalysisReport",
    "GradientFlow",
    "JacobianSpectrum",
    "LayerRecord",
    "LyapunovExponents",
    "Recording",
    "Saliency",
    "analyze",
    "default_loss",
    "evaluation_mode",
    "export_hdf5",
    "export_lstmvis",
    "find_layers",
    "flow_from_recording",
    "gradient_norms_through_time",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "read_hdf5",
    "record",
    "reference_path",
    "regime",
    "saliency",
    "state_gradients",
    "traces",
]
