r"""Error measures and the memory capacity of reservoirs."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_choice, check_positive_int, shape_str

if TYPE_CHECKING:
    import numpy.typing as npt

    from carousel.esn.reservoir import Reservoir

__all__ = ["MemoryCapacity", "memory_capacity", "nrmse", "r2_score", "rmse"]


def _pair(
    owner: str, prediction: Tensor | npt.ArrayLike, target: Tensor | npt.ArrayLike
) -> tuple[Tensor, Tensor]:
    p = torch.as_tensor(prediction)
    t = torch.as_tensor(target)
    if p.shape != t.shape:
        raise ValueError(
            f"{owner}: prediction and target must have the same shape, got "
            f"{shape_str(tuple(p.shape))} and {shape_str(tuple(t.shape))}"
        )
    if p.numel() == 0:
        raise ValueError(f"{owner}: empty input")
    return p.double(), t.double()


def rmse(prediction: Tensor | npt.ArrayLike, target: Tensor | npt.ArrayLike) -> float:
    """Root mean squared error over all elements."""
    p, t = _pair("rmse", prediction, target)
    return float(((p - t) ** 2).mean().sqrt())


def nrmse(
    prediction: Tensor | npt.ArrayLike,
    target: Tensor | npt.ArrayLike,
    *,
    normalization: str | float = "std",
) -> float:
    r"""Normalised root mean squared error :math:`\mathrm{RMSE} / s`.

    Args:
        prediction, target: same shape.
        normalization: ``"std"`` (:math:`s` = standard deviation of the target, the NRMSE of
            Jaeger & Haas 2004 and reservoirpy), ``"var"`` (:math:`s` = variance), ``"range"``
            (max - min), ``"mean"``, or a number used as :math:`s` (e.g. the standard deviation
            of the whole signal when the target is a short stretch of it).

    Returns:
        The NRMSE as a float.
    """
    p, t = _pair("nrmse", prediction, target)
    if isinstance(normalization, str):
        check_choice("nrmse", "normalization", normalization, ("std", "var", "range", "mean"))
        scale = {
            "std": lambda: t.std(unbiased=False),
            "var": lambda: t.var(unbiased=False),
            "range": lambda: t.max() - t.min(),
            "mean": lambda: t.mean(),
        }[normalization]()
        s = float(scale)
    else:
        s = float(normalization)
    if s == 0:
        raise ValueError("nrmse: the normalisation is 0 (constant target); pass a number")
    return rmse(p, t) / s


def r2_score(prediction: Tensor | npt.ArrayLike, target: Tensor | npt.ArrayLike) -> float:
    r"""Coefficient of determination :math:`R^2 = 1 - \sum (y - \hat y)^2 / \sum (y - \bar y)^2`
    over all elements (reservoirpy's ``rsquare``)."""
    p, t = _pair("r2_score", prediction, target)
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0:
        raise ValueError("r2_score: the target is constant, R^2 is undefined")
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot


class MemoryCapacity(NamedTuple):
    """Result of :func:`memory_capacity`.

    Attributes:
        total: :math:`MC = \\sum_k MC_k`.
        per_delay: ``(K,)`` the squared correlations :math:`MC_k`, ``k = 1..K``.
    """

    total: float
    per_delay: Tensor


@torch.no_grad()
def memory_capacity(
    reservoir: Reservoir,
    *,
    max_delay: int | None = None,
    train_steps: int = 2000,
    test_steps: int = 1000,
    washout: int = 200,
    ridge: float = 1e-9,
    seed: int = 0,
) -> MemoryCapacity:
    r"""Short-term memory capacity (Jaeger 2001, "Short term memory in echo state networks",
    GMD report 152, definition 1):

    .. math::

        MC = \sum_{k=1}^{K} MC_k, \qquad
        MC_k = \operatorname{corr}^2\big(u(t - k),\, y_k(t)\big)

    The reservoir is driven by i.i.d. inputs :math:`u(t) \sim \mathcal U[-0.8, 0.8]`; for each
    delay :math:`k` a ridge readout :math:`y_k` is trained (all delays at once, one solve) on
    ``train_steps`` steps to recall :math:`u(t-k)` and scored on ``test_steps`` fresh steps.
    :math:`MC \le H` (Jaeger's theorem for linear reservoirs with i.i.d. input).

    Args:
        reservoir: a :class:`~carousel.esn.Reservoir` with ``input_size == 1`` and no
            feedback.
        max_delay: ``K`` (default ``2 H``).
        train_steps, test_steps, washout: lengths of the runs.
        ridge: regularisation of the readouts.
        seed: seed of the input sequence.

    Returns:
        :class:`MemoryCapacity`.
    """
    from carousel.esn.readout import RidgeReadout

    owner = "memory_capacity"
    if getattr(reservoir, "input_size", None) != 1 or getattr(reservoir, "feedback_size", 1):
        raise ValueError(f"{owner}: needs a Reservoir with input_size=1 and no feedback")
    K = check_positive_int(
        owner, "max_delay", 2 * reservoir.units if max_delay is None else max_delay
    )
    check_positive_int(owner, "train_steps", train_steps)
    check_positive_int(owner, "test_steps", test_steps)
    check_positive_int(owner, "washout", washout, minimum=0)
    start = washout + K
    total = start + train_steps + test_steps
    gen = torch.Generator().manual_seed(seed)
    u = (torch.rand(total, generator=gen, dtype=torch.float64) * 1.6 - 0.8).to(reservoir.bias)
    states, _ = reservoir(u[:, None])  # (total, H)
    # Targets: column k-1 is u(t - k).
    idx = torch.arange(start, total, device=u.device)
    lags = torch.arange(1, K + 1, device=u.device)
    targets = u[idx[:, None] - lags[None, :]]  # (N, K)
    x = states[start:]
    n_train = train_steps
    readout = RidgeReadout(reservoir.units, K, ridge=ridge, device=u.device, dtype=torch.float64)
    readout.accumulate(x[:n_train], targets[:n_train])
    readout.solve()
    pred = readout(x[n_train:].double())
    tgt = targets[n_train:].double()
    pc = pred - pred.mean(0)
    tc = tgt - tgt.mean(0)
    corr2 = (pc * tc).sum(0) ** 2 / ((pc**2).sum(0) * (tc**2).sum(0)).clamp_min(1e-300)
    corr2 = corr2.cpu()
    return MemoryCapacity(float(corr2.sum()), corr2)
