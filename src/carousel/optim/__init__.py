"""Second-order optimisation for recurrent networks: Hessian-free optimisation with the
Gauss-Newton matrix and structural damping (Martens 2010; Martens & Sutskever 2011).

- :class:`HessianFree`: a ``torch.optim.Optimizer`` with ``step(closure)`` as
  ``torch.optim.LBFGS``; per-step :class:`HFDiagnostics`.
- :class:`GaussNewton`: damped Gauss-Newton products of one mini-batch through ``torch.func``.
- :func:`conjugate_gradient`: preconditioned CG with Martens' stopping rule.
- :func:`matching_loss`: the losses whose curvature the optimizer knows.
"""

from carousel.optim.cg import CGResult, conjugate_gradient
from carousel.optim.curvature import (
    MATCHING_LOSSES,
    GaussNewton,
    loss_hessian_vector_product,
    matching_loss,
    model_function,
    sample_loss_hessian_factor,
)
from carousel.optim.hessian_free import PRECONDITIONERS, HessianFree, HFDiagnostics

__all__ = [
    "MATCHING_LOSSES",
    "PRECONDITIONERS",
    "CGResult",
    "GaussNewton",
    "HFDiagnostics",
    "HessianFree",
    "conjugate_gradient",
    "loss_hessian_vector_product",
    "matching_loss",
    "model_function",
    "sample_loss_hessian_factor",
]
