r"""Seeded benchmark time series for reservoir computing: Mackey-Glass, NARMA, Lorenz.

Every generator is a pure function of its arguments: the same arguments (and ``seed``) give the
same series, bit for bit. All arithmetic is done in Python floats (float64) and the result is
returned as a tensor of the requested ``dtype``.

- :func:`mackey_glass`: the delay differential equation of Mackey & Glass (1977), integrated
  with the classical Runge-Kutta method (RK4) on a fine grid with a history buffer, sampled
  every ``sample_every`` time units.
- :func:`narma`: the NARMA-n system identification task (Atiya & Parlos 2000; Jaeger 2003).
- :func:`lorenz`: the Lorenz (1963) system, RK4.

Example:
    >>> x = mackey_glass(500, seed=0)
    >>> x.shape, x.dtype
    (torch.Size([500, 1]), torch.float64)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["NARMA", "lorenz", "mackey_glass", "narma"]


def _check_float(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value}")
    return value


def _grid_count(owner: str, name: str, span: float, dt: float) -> int:
    """``span / dt`` as an int, or an error if ``span`` is not a whole number of steps."""
    count = round(span / dt)
    if count < 1 or abs(count * dt - span) > 1e-9 * max(1.0, span):
        raise ValueError(
            f"{owner}: {name}={span} must be a positive whole multiple of dt={dt} "
            f"(got {span / dt:.6g} steps); choose dt so that {name}/dt is an integer"
        )
    return count


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def mackey_glass(
    n_steps: int,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
    x0: float = 1.2,
    dt: float = 0.1,
    sample_every: float = 1.0,
    discard: int = 0,
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""The Mackey-Glass delay differential equation (Mackey & Glass 1977, Science 197:287):

    .. math::

        \frac{dx}{dt} = \beta \frac{x(t-\tau)}{1 + x(t-\tau)^{n}} - \gamma x(t)

    Integration: classical RK4 with step ``dt`` on the grid :math:`t_k = k\,dt`, with a
    history buffer of the last :math:`\tau/dt` grid values (``tau`` must be a whole number of
    steps). RK4 needs the delayed term at half steps, :math:`x(t_k + dt/2 - \tau)`, which falls
    between two stored grid points; it is taken from the cubic Hermite interpolant through the
    two neighbours and their derivatives, :math:`(x_a + x_b)/2 + dt\,(x'_a - x'_b)/8`, whose
    error :math:`O(dt^4)` matches RK4's local accuracy (the derivative at each grid point is
    RK4's first stage, so it costs nothing). The history on :math:`[-\tau, 0]` is the constant
    ``x0`` (with ``seed``: ``x0`` plus uniform noise in :math:`[-0.1, 0.1]` at each history grid
    point, like reservoirpy's random history). Samples are taken every ``sample_every`` time
    units (Jaeger 2001 and Jaeger & Haas 2004 use 1 with a fine internal step); the first
    ``discard`` samples (transient) are dropped.

    The default ``dt = 0.1`` gives samples accurate to about 1e-8 over hundreds of time units
    (tests compare against ``dt = 0.05`` and against the closed-form solution on
    :math:`[0, \tau]`).

    Args:
        n_steps: number of samples ``T`` returned.
        tau: delay :math:`\tau` (17 is the classic mildly chaotic case, 30 is more chaotic;
            below about 4.5 the solution settles on the fixed point :math:`x^* = 1` for the
            default coefficients).
        beta, gamma, exponent: the coefficients :math:`\beta, \gamma, n`.
        x0: initial (history) value.
        dt: internal RK4 step; ``tau`` and ``sample_every`` must be whole multiples of it.
        sample_every: time between two returned samples.
        discard: number of initial samples dropped.
        seed: randomises the history (see above); ``None`` for the constant history.
        dtype: dtype of the result.

    Returns:
        Tensor of shape ``(T, 1)``.

    Raises:
        ValueError: for non-positive sizes/steps or ``tau``/``sample_every`` that are not whole
            multiples of ``dt``.
    """
    owner = "mackey_glass"
    n_steps = check_positive_int(owner, "n_steps", n_steps)
    discard = check_positive_int(owner, "discard", discard, minimum=0)
    tau = _check_float(owner, "tau", tau, positive=True)
    dt = _check_float(owner, "dt", dt, positive=True)
    sample_every = _check_float(owner, "sample_every", sample_every, positive=True)
    beta = _check_float(owner, "beta", beta)
    gamma = _check_float(owner, "gamma", gamma)
    exponent = _check_float(owner, "exponent", exponent)
    x0 = _check_float(owner, "x0", x0)
    delay = _grid_count(owner, "tau", tau, dt)  # grid steps per delay
    stride = _grid_count(owner, "sample_every", sample_every, dt)
    gen = _generator(seed)

    if gen is None:
        hist = [x0] * (delay + 1)
    else:
        noise = (torch.rand(delay + 1, generator=gen, dtype=torch.float64) - 0.5) * 0.2
        hist = [x0 + float(v) for v in noise]
    # Ring buffers of x and dx/dt at the last delay+1 grid points; index k % (delay+1).
    size = delay + 1
    # Ring buffers over the last delay+1 grid points: grid index k lives at k % size.
    xs = [0.0] * size  # x(t_k)
    ds = [0.0] * size  # dx/dt(t_k) (0 on the history, which is piecewise constant)
    for j, k in enumerate(range(-delay, 1)):
        xs[k % size] = hist[j]
    x = xs[0]

    def rhs(x_now: float, x_lag: float) -> float:
        return beta * x_lag / (1.0 + abs(x_lag) ** exponent) - gamma * x_now

    total = (n_steps + discard) * stride
    out: list[float] = []
    half = 0.5 * dt
    for n in range(total):
        if n % stride == 0:
            out.append(x)
        lag_a = xs[(n - delay) % size]  # x(t_n - tau)
        lag_b = xs[(n - delay + 1) % size]  # x(t_{n+1} - tau)
        if n - delay + 1 <= 0:  # the lag interval lies in the (piecewise constant) history
            da = db = 0.0
        else:
            da = ds[(n - delay) % size]
            db = ds[(n - delay + 1) % size]
        lag_mid = 0.5 * (lag_a + lag_b) + 0.125 * dt * (da - db)  # Hermite at the half step
        k1 = rhs(x, lag_a)
        k2 = rhs(x + half * k1, lag_mid)
        k3 = rhs(x + half * k2, lag_mid)
        k4 = rhs(x + dt * k3, lag_b)
        ds[n % size] = k1  # dx/dt at t_n, needed once t_n is a delayed point
        x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        if not math.isfinite(x):
            raise ValueError(f"{owner}: the solution diverged at step {n}; reduce dt")
        xs[(n + 1) % size] = x
    values = out[discard:]
    return torch.tensor(values, dtype=dtype).unsqueeze(1)


class NARMA(NamedTuple):
    """A NARMA series: the driving input ``u`` and the system output ``y``, both ``(T, 1)``."""

    u: Tensor
    y: Tensor


def narma(
    n_steps: int,
    *,
    order: int = 10,
    seed: int = 0,
    discard: int = 200,
    dtype: torch.dtype = torch.float64,
) -> NARMA:
    r"""The NARMA-n task (Atiya & Parlos 2000, IEEE TNN 11(3); Jaeger 2003, NIPS 15):

    .. math::

        y(t+1) = 0.3\, y(t) + 0.05\, y(t) \sum_{i=0}^{n-1} y(t-i)
                 + 1.5\, u(t-n+1)\, u(t) + 0.1,
        \qquad u(t) \sim \mathcal{U}[0, 0.5]

    with :math:`y(t) = 0` for :math:`t < n`. The model has to predict ``y[t+1]`` from the
    inputs up to ``u[t]``; the returned pairs are aligned so that ``y[t]`` is the target for the
    input ``u[t]`` (``y`` is :math:`y(t+1)`). The first ``discard`` steps (the start-up from
    zeros) are dropped. For ``order > 10`` the recursion can diverge for some input draws; a
    ``ValueError`` says so.

    Args:
        n_steps: number of samples ``T``.
        order: ``n`` (10 for NARMA-10).
        seed: seed of the input draw.
        discard: start-up steps dropped.
        dtype: dtype of the result.

    Returns:
        ``NARMA(u, y)``, each of shape ``(T, 1)``.

    Raises:
        ValueError: for bad sizes, or if the series diverges.
    """
    owner = "narma"
    n_steps = check_positive_int(owner, "n_steps", n_steps)
    order = check_positive_int(owner, "order", order)
    discard = check_positive_int(owner, "discard", discard, minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}: seed must be an int, got {type(seed).__name__}")
    total = n_steps + discard
    gen = torch.Generator().manual_seed(seed)
    u = [float(v) for v in torch.rand(total, generator=gen, dtype=torch.float64) * 0.5]
    y = [0.0] * (total + 1)  # y[t] is y(t); y[t+1] is the target for u[t]
    window = 0.0  # running sum of y(t-n+1) .. y(t)
    for t in range(total):
        window += y[t]
        if t - order >= 0:
            window -= y[t - order]
        lagged_u = u[t - order + 1] if t - order + 1 >= 0 else 0.0
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * window + 1.5 * lagged_u * u[t] + 0.1
        if not math.isfinite(y[t + 1]) or abs(y[t + 1]) > 1e6:
            raise ValueError(f"{owner}: NARMA-{order} diverged at step {t} for seed {seed}")
    u_t = torch.tensor(u[discard:], dtype=dtype).unsqueeze(1)
    y_t = torch.tensor(y[discard + 1 :], dtype=dtype).unsqueeze(1)
    return NARMA(u_t, y_t)


def lorenz(
    n_steps: int,
    *,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    initial: tuple[float, float, float] = (1.0, 1.0, 1.0),
    dt: float = 0.01,
    sample_every: float = 0.01,
    discard: int = 0,
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""The Lorenz (1963) system, integrated with RK4:

    .. math::

        \dot x = \sigma (y - x), \quad \dot y = x(\rho - z) - y, \quad \dot z = xy - \beta z

    Args:
        n_steps: number of samples ``T``.
        sigma, rho, beta: the coefficients (the classic chaotic 10, 28, 8/3 by default).
        initial: the state at time 0.
        dt: RK4 step; ``sample_every`` must be a whole multiple of it.
        sample_every: time between samples.
        discard: initial samples dropped (transient).
        seed: with a seed, the initial state is perturbed by uniform noise in ``[-1, 1]``.
        dtype: dtype of the result.

    Returns:
        Tensor of shape ``(T, 3)``: columns ``x, y, z``.
    """
    owner = "lorenz"
    n_steps = check_positive_int(owner, "n_steps", n_steps)
    discard = check_positive_int(owner, "discard", discard, minimum=0)
    dt = _check_float(owner, "dt", dt, positive=True)
    sample_every = _check_float(owner, "sample_every", sample_every, positive=True)
    sigma = _check_float(owner, "sigma", sigma)
    rho = _check_float(owner, "rho", rho)
    beta = _check_float(owner, "beta", beta)
    if len(initial) != 3:
        raise ValueError(f"{owner}: initial must have 3 values (x, y, z), got {len(initial)}")
    stride = _grid_count(owner, "sample_every", sample_every, dt)
    x, y, z = (float(v) for v in initial)
    gen = _generator(seed)
    if gen is not None:
        dx, dy, dz = (float(v) for v in torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1)
        x, y, z = x + dx, y + dy, z + dz

    def f(x: float, y: float, z: float) -> tuple[float, float, float]:
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    out: list[tuple[float, float, float]] = []
    for n in range((n_steps + discard) * stride):
        if n % stride == 0:
            out.append((x, y, z))
        a1, b1, c1 = f(x, y, z)
        a2, b2, c2 = f(x + 0.5 * dt * a1, y + 0.5 * dt * b1, z + 0.5 * dt * c1)
        a3, b3, c3 = f(x + 0.5 * dt * a2, y + 0.5 * dt * b2, z + 0.5 * dt * c2)
        a4, b4, c4 = f(x + dt * a3, y + dt * b3, z + dt * c3)
        x += dt / 6.0 * (a1 + 2 * a2 + 2 * a3 + a4)
        y += dt / 6.0 * (b1 + 2 * b2 + 2 * b3 + b4)
        z += dt / 6.0 * (c1 + 2 * c2 + 2 * c3 + c4)
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            raise ValueError(f"{owner}: the solution diverged at step {n}; reduce dt")
    return torch.tensor(out[discard:], dtype=dtype)
