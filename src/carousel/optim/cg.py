r"""Preconditioned conjugate gradient with Martens' stopping rule and stored iterates.

Minimises the quadratic

.. math:: \phi(x) = \tfrac12 x^\top A x - b^\top x

for a symmetric positive-definite :math:`A` given only as a product ``matvec(v) = A v``
(Martens 2010, "Deep learning via Hessian-free optimization", Algorithm 2). Stops when the
relative progress of :math:`\phi` over the last :math:`k` iterations falls below
:math:`k\varepsilon` (section 4.4) and stores the iterates at iterations
:math:`\lceil\gamma^j\rceil` for CG-backtracking (section 4.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["CGResult", "conjugate_gradient"]

#: Why a run of :func:`conjugate_gradient` ended.
CG_STOPS = ("progress", "max_iter", "converged", "negative_curvature")


class CGResult(NamedTuple):
    """The outcome of :func:`conjugate_gradient`.

    Attributes:
        x: the last iterate, ``(P,)``.
        iterates: ``(iteration, x_i)`` pairs stored at iterations
            :math:`\\lceil\\gamma^j\\rceil` and at the last one, in increasing order of
            iteration (the last pair holds ``x``).
        iterations: number of products with ``A`` spent in the iterations (the initial residual
            of a warm start costs one more).
        objective: :math:`\\phi(x_i)` after every iteration, ``(iterations,)`` (float64 on the
            CPU).
        stop: why it ended: ``"progress"`` (Martens' relative-progress rule), ``"max_iter"``,
            ``"converged"`` (the residual vanished) or ``"negative_curvature"`` (a direction
            with :math:`p^\\top A p \\le 0` or a non-finite value: ``A`` is not positive
            definite in floating point; the iterate before it is returned).
    """

    x: Tensor
    iterates: list[tuple[int, Tensor]]
    iterations: int
    objective: Tensor
    stop: str


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    preconditioner: Tensor | None = None,
    max_iter: int = 250,
    min_iter: int = 1,
    tol: float = 5e-4,
    min_window: int = 10,
    window_fraction: float = 0.1,
    store_factor: float = 1.3,
) -> CGResult:
    r"""Approximately minimise :math:`\phi(x) = \frac12 x^\top A x - b^\top x` by preconditioned
    conjugate gradient (Martens 2010, Algorithm 2).

    With :math:`M` the diagonal ``preconditioner`` (``None``: the identity), from
    :math:`r_0 = b - A x_0`, :math:`y_0 = M^{-1} r_0`, :math:`p_0 = y_0`:

    .. math::

        \alpha_i = \frac{r_i^\top y_i}{p_i^\top A p_i}, \quad
        x_{i+1} = x_i + \alpha_i p_i, \quad r_{i+1} = r_i - \alpha_i A p_i, \quad
        y_{i+1} = M^{-1} r_{i+1}, \quad
        p_{i+1} = y_{i+1} + \frac{r_{i+1}^\top y_{i+1}}{r_i^\top y_i} p_i.

    :math:`\phi(x_i) = -\frac12 (r_i + b)^\top x_i` costs nothing extra. Stopping rule (Martens
    2010, section 4.4): after iteration :math:`i \ge` ``min_iter``, with
    :math:`k = \max(\text{min\_window}, \lceil \text{window\_fraction} \cdot i\rceil)`, stop when
    :math:`i > k`, :math:`\phi(x_i) < 0` and

    .. math:: \frac{\phi(x_i) - \phi(x_{i-k})}{\phi(x_i)} < k\,\varepsilon .

    Args:
        matvec: ``v -> A v`` for a symmetric positive-definite ``A``.
        b: right-hand side ``(P,)`` (for Hessian-free: minus the gradient).
        x0: initial iterate (the warm start); ``None`` starts at zero and saves one product.
        preconditioner: ``(P,)`` positive diagonal of :math:`M`, or ``None``.
        max_iter: most iterations.
        min_iter: fewest iterations before the progress rule may stop the run.
        tol: :math:`\varepsilon` of the progress rule (Martens: 0.0005).
        min_window, window_fraction: :math:`k` of the progress rule (Martens: 10 and 0.1).
        store_factor: :math:`\gamma`: iterates are stored at iterations
            :math:`\lceil\gamma^j\rceil` (Martens: 1.3).

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: for sizes that do not match or out-of-range settings.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> res = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0]), max_iter=2)
        >>> torch.allclose(A @ res.x, torch.tensor([1.0, 2.0]), atol=1e-5)
        True
    """
    owner = "conjugate_gradient"
    check_positive_int(owner, "max_iter", max_iter)
    check_positive_int(owner, "min_iter", min_iter)
    check_positive_int(owner, "min_window", min_window)
    if not tol > 0:
        raise ValueError(f"{owner}: tol must be > 0, got {tol}")
    if not store_factor > 1:
        raise ValueError(f"{owner}: store_factor must be > 1, got {store_factor}")
    if b.dim() != 1:
        raise ValueError(f"{owner}: b must be a flat vector (P,), got shape {tuple(b.shape)}")
    for name, t in (("x0", x0), ("preconditioner", preconditioner)):
        if t is not None and t.shape != b.shape:
            raise ValueError(
                f"{owner}: {name} must have the shape of b {tuple(b.shape)}, got {tuple(t.shape)}"
            )

    def solve_m(r: Tensor) -> Tensor:
        return r if preconditioner is None else r / preconditioner

    if x0 is None or not bool(x0.any()):
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
    y = solve_m(r)
    p = y.clone()
    ry = float(r.dot(y))
    phi: list[float] = []
    iterates: list[tuple[int, Tensor]] = []
    store_at, j = 1, 1
    stop = "max_iter"
    i = 0
    if ry == 0.0:
        stop = "converged"
    while i < max_iter and stop == "max_iter":
        Ap = matvec(p)
        pAp = float(p.dot(Ap))
        if not math.isfinite(pAp) or pAp <= 0.0:
            stop = "negative_curvature"
            break
        alpha = ry / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        i += 1
        phi.append(-0.5 * float((r + b).dot(x)))  # phi(x_i)
        if i == store_at:
            iterates.append((i, x))
            while store_at <= i:
                j += 1
                store_at = math.ceil(store_factor**j)
        # Martens 2010, section 4.4: relative progress over the last k iterations
        k = max(min_window, math.ceil(window_fraction * i))
        if i >= min_iter and i > k and phi[-1] < 0:
            if (phi[-1] - phi[-1 - k]) / phi[-1] < k * tol:
                stop = "progress"
                break
        y = solve_m(r)
        ry_new = float(r.dot(y))
        if ry_new == 0.0 or not math.isfinite(ry_new):
            stop = "converged" if ry_new == 0.0 else "negative_curvature"
            break
        p = y + (ry_new / ry) * p
        ry = ry_new
    if not iterates or iterates[-1][0] != i:
        iterates.append((i, x))
    objective = torch.tensor(phi, dtype=torch.float64)
    return CGResult(x, iterates, i, objective, stop)
