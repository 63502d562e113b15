"""Training: configs, the loop, optimizers and schedules, checkpoints, metrics, data-parallel.

Example:
    >>> from carousel.train import load_config
    >>> cfg = load_config("binary-addition", overrides=["train.steps=10", "log.dir=/tmp/x"])
    >>> cfg.train.steps, cfg.optim.name
    (10, 'adam')

``train(cfg)`` then trains it (see :func:`carousel.train.loop.train`).
"""

from carousel._config import ConfigError
from carousel.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from carousel.train.config import (
    Config,
    LogConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    fill_added_keys,
    load_config,
)
from carousel.train.loop import (
    NonFiniteError,
    ResumeError,
    TrainResult,
    derive_seed,
    evaluate_checkpoint,
    evaluate_trained,
    load_trained,
    train,
)
from carousel.train.metrics import MetricsLogger, plot_metrics, read_metrics
from carousel.train.optim import (
    OPTIMIZERS,
    build_optimizer,
    lr_at,
    momentum_at,
    register_optimizer,
)
from carousel.train.penalties import vanishing_gradient_penalty

__all__ = [
    "OPTIMIZERS",
    "Checkpoint",
    "CheckpointError",
    "Config",
    "ConfigError",
    "LogConfig",
    "MetricsLogger",
    "NonFiniteError",
    "OptimConfig",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "derive_seed",
    "evaluate_checkpoint",
    "evaluate_trained",
    "fill_added_keys",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "load_trained",
    "lr_at",
    "momentum_at",
    "plot_metrics",
    "read_metrics",
    "register_optimizer",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
    "vanishing_gradient_penalty",
]
