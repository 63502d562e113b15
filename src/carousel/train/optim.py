r"""Optimizers from a config, and learning-rate and momentum schedules.

The schedules are pure functions of the step, set on every parameter group before each update,
so a resumed run continues them exactly without saving scheduler state.

Every optimizer is driven through ``optimizer.step(closure)``, the contract of
``torch.optim.LBFGS``: the closure clears the gradients, computes the loss, backpropagates and
returns the loss. SGD, Adam and RMSprop call it once; LBFGS (and the Hessian-free optimizer of
:mod:`carousel.optim`, registered with :func:`register_optimizer`) call it as often as they need.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from carousel._config import ConfigError
from carousel.train.config import OptimConfig

if TYPE_CHECKING:
    from carousel.optim import HessianFree

__all__ = [
    "OPTIMIZERS",
    "build_optimizer",
    "lr_at",
    "momentum_at",
    "register_optimizer",
    "set_schedules",
]

#: Called as ``factory(params, config)``, with ``model=`` and ``task=`` added where the factory
#: takes them (:func:`build_optimizer` reads its signature), hence the open argument list.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _sgd(params: Iterable[torch.nn.Parameter], c: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=c.lr,
        momentum=c.momentum,
        nesterov=c.nesterov,
        weight_decay=c.weight_decay,
        **c.options,
    )


def _adam(params: Iterable[torch.nn.Parameter], c: OptimConfig) -> torch.optim.Adam:
    return torch.optim.Adam(
        params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **c.options
    )


def _adamw(params: Iterable[torch.nn.Parameter], c: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **c.options
    )


def _rmsprop(params: Iterable[torch.nn.Parameter], c: OptimConfig) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(
        params,
        lr=c.lr,
        alpha=c.alpha,
        eps=c.eps,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        **c.options,
    )


def _lbfgs(params: Iterable[torch.nn.Parameter], c: OptimConfig) -> torch.optim.LBFGS:
    return torch.optim.LBFGS(params, lr=c.lr, **c.options)


def _hessian_free(
    params: Iterable[torch.nn.Parameter],
    c: OptimConfig,
    *,
    model: torch.nn.Module,
    task: Any = None,
) -> HessianFree:
    """Martens & Sutskever 2011's Hessian-free optimizer (:class:`carousel.optim.HessianFree`)
    with the task's matching loss; its settings (``damping``, ``structural_damping``,
    ``max_cg_iter``, ...) come from ``[optim.options]``; ``lr`` and the schedules do not apply.
    The loop selects the scored outputs of each batch (``Task.curvature_outputs``)."""
    from carousel.optim import HessianFree

    loss = getattr(task, "curvature_loss", None) if task is not None else "mse"
    if loss is None:
        raise ValueError(
            f"hessian-free needs a task whose loss matches a Gauss-Newton curvature "
            f"(cross-entropy, squared error, logistic); task {task.name!r} has none"
        )
    # Martens & Sutskever's structural damping (1/30) where the model has recurrent layers
    from carousel.layers.recurrent import RecurrentBase

    recurrent = any(isinstance(m, (RecurrentBase, torch.nn.RNNBase)) for m in model.modules())
    options = {"structural_damping": 1.0 / 30.0 if recurrent else 0.0, **c.options}
    return HessianFree(params, model=model, loss=loss, weight_decay=c.weight_decay, **options)


#: Optimizer name -> factory ``(params, OptimConfig) -> Optimizer``.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
    "lbfgs": _lbfgs,
    "hessian-free": _hessian_free,
}


def register_optimizer(name: str, factory: OptimizerFactory) -> None:
    """Make ``optim.name = NAME`` build an optimizer with ``factory(params, config)``.

    A factory that also takes a keyword argument ``model`` gets the model being trained (an
    optimizer that needs the network itself, such as Hessian-free's Gauss-Newton products).
    ``config.options`` (the ``[optim.options]`` table) carries the optimizer's own settings.
    The optimizer must follow ``torch.optim.Optimizer`` (``step(closure)``, all state in
    ``state_dict()``), so the loop and the checkpoints handle it like the built-in ones.

    Example:
        >>> import torch
        >>> register_optimizer("adagrad", lambda params, c: torch.optim.Adagrad(params, lr=c.lr))
        >>> opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig(name="adagrad"))
        >>> type(opt).__name__
        'Adagrad'
        >>> del OPTIMIZERS["adagrad"]
    """
    if not callable(factory):
        raise TypeError(f"register_optimizer: factory must be callable, got {factory!r}")
    OPTIMIZERS[name] = factory


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    config: OptimConfig,
    *,
    model: torch.nn.Module | None = None,
    task: Any = None,
) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over ``params``.

    Args:
        params: the parameters to optimise.
        config: the ``[optim]`` table.
        model: the model being trained, passed to factories that take ``model``.
        task: the task being trained, passed to factories that take ``task``.

    Raises:
        ConfigError: an unknown name, or options the optimizer does not accept.
    """
    factory = OPTIMIZERS.get(config.name)
    if factory is None:
        raise ConfigError(
            [f"optim.name must be one of {sorted(OPTIMIZERS)}, got {config.name!r}"], "optim"
        )
    kwargs = {}
    try:
        accepted = inspect.signature(factory).parameters
        if "model" in accepted:
            kwargs["model"] = model
        if "task" in accepted:
            kwargs["task"] = task
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    try:
        return factory(list(params), config, **kwargs)
    except TypeError as e:
        raise ConfigError([f"optim.options: {e}"], "optim") from None
    except ValueError as e:
        raise ConfigError([f"optim: {e}"], "optim") from None


def lr_at(config: OptimConfig, step: int, total_steps: int) -> float:
    r"""The learning rate for update ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_steps`` (:math:`\eta (t+1)/W`), then with
    :math:`s = t - W` and :math:`S = \max(1, T - W - 1)` (so that the last update,
    :math:`t = T - 1`, ends the decay):

    - ``constant``: :math:`\eta`;
    - ``step``: :math:`\eta \gamma^{\lfloor s / d \rfloor}`;
    - ``exponential``: :math:`\eta \gamma^{s / d}`;
    - ``cosine``: :math:`\eta_{min} + (\eta - \eta_{min}) (1 + \cos(\pi s / S)) / 2`
      (Loshchilov & Hutter 2017, without restarts);
    - ``linear``: from :math:`\eta` to :math:`\eta_{min}` over :math:`S` steps.
    """
    lr, W = config.lr, config.warmup_steps
    if step < W:
        return lr * (step + 1) / W
    s = step - W
    S = max(1, total_steps - W - 1)  # the last update uses min_lr
    kind = config.schedule
    if kind == "constant":
        return lr
    if kind == "step":
        return lr * config.gamma ** (s // config.decay_steps)
    if kind == "exponential":
        return lr * config.gamma ** (s / config.decay_steps)
    frac = min(1.0, s / S)
    if kind == "cosine":
        return config.min_lr + (lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    return lr + (config.min_lr - lr) * frac  # linear


def momentum_at(config: OptimConfig, step: int) -> float:
    r"""The momentum coefficient for update ``step`` (0-based).

    ``sutskever``: :math:`\mu_t = \min(1 - 2^{-1 - \log_2(\lfloor t/250 \rfloor + 1)},
    \mu_{max})` (Sutskever et al. 2013, eq. 5), that is :math:`1 - 1/(2n)` with
    :math:`n = \lfloor t/250 \rfloor + 1`: 0.5, 0.75, 0.833, 0.875, ... every 250 updates,
    capped at ``config.momentum``; ``constant``: ``config.momentum``.
    """
    if config.momentum_schedule == "constant":
        return config.momentum
    mu = 1.0 - 2.0 ** (-1.0 - math.log2(step // 250 + 1))
    return min(mu, config.momentum)


def set_schedules(
    optimizer: torch.optim.Optimizer, config: OptimConfig, step: int, total: int
) -> float:
    """Set every parameter group's ``lr`` (and ``momentum`` where the group has one) for update
    ``step``; returns the learning rate."""
    lr = lr_at(config, step, total)
    mu = momentum_at(config, step) if config.momentum_schedule != "constant" else None
    for group in optimizer.param_groups:
        group["lr"] = lr
        if mu is not None and "momentum" in group:
            group["momentum"] = mu
    return lr


def needs_closure_more_than_once(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` may evaluate the closure several times (LBFGS, HF)."""
    if isinstance(
        optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)
    ):
        return False
    sig = inspect.signature(optimizer.step)
    return "closure" in sig.parameters
