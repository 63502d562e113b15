"""Training configuration: frozen dataclasses, loaded from TOML and ``--set`` overrides.

A config has a table per concern::

    task = "binary-addition"
    seed = 0

    [data]            # the task's options (its Config dataclass)
    train_bits = 8

    [model]           # the recurrent core (carousel.models.ModelConfig)
    cell = "rnn"
    hidden_size = 16

    [model.init]      # initialisation (carousel.models.InitConfig)
    recurrent = "orthogonal"

    [optim]           # optimizer and schedules (OptimConfig)
    name = "adam"
    lr = 0.01

    [train]           # the loop (TrainConfig)
    steps = 1000

    [log]             # where and how results are written (LogConfig)
    dir = "runs/binary-addition"

Values come, in increasing priority, from the dataclass defaults, the task's own defaults
(:attr:`carousel.tasks.Task.defaults`), the TOML file and ``--set key=value`` overrides
(``--set model.hidden_size=128``, converted to the field's type). Unknown keys, wrong types and
invalid values are all collected and reported in one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carousel._config import Checks, ConfigError
from carousel.models import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "LR_SCHEDULES",
    "MOMENTUM_SCHEDULES",
    "Config",
    "ConfigError",
    "LogConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "fill_added_keys",
    "load_config",
]

#: Learning-rate schedules (see :func:`carousel.train.optim.lr_at`).
LR_SCHEDULES = ("constant", "step", "exponential", "cosine", "linear")
#: Momentum schedules (see :func:`carousel.train.optim.momentum_at`).
MOMENTUM_SCHEDULES = ("constant", "sutskever")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its schedules (the ``[optim]`` table)."""

    # sgd, adam, adamw, rmsprop, lbfgs, hessian-free, or a name added with
    # carousel.train.register_optimizer
    name: str = "adam"
    # learning rate (the peak value of a schedule)
    lr: float = 1e-3
    # sgd and rmsprop: momentum coefficient (the maximum of a momentum schedule)
    momentum: float = 0.0
    # sgd: Nesterov's accelerated gradient instead of classical momentum
    nesterov: bool = False
    # constant, or sutskever: mu_t = min(1 - 2^(-1 - log2(floor(t / 250) + 1)), momentum)
    # (Sutskever et al. 2013, eq. 5)
    momentum_schedule: str = "constant"
    # L2 weight decay (decoupled for adamw)
    weight_decay: float = 0.0
    # adam, adamw: the decay rates of the moment estimates
    betas: tuple[float, float] = (0.9, 0.999)
    # adam, adamw, rmsprop: denominator epsilon
    eps: float = 1e-8
    # rmsprop: smoothing constant of the squared-gradient average
    alpha: float = 0.99
    # learning-rate schedule after warm-up: constant, step, exponential, cosine or linear
    schedule: str = "constant"
    # steps of linear warm-up from lr / warmup_steps to lr
    warmup_steps: int = 0
    # step: multiply by gamma every decay_steps; exponential: lr * gamma^(t / decay_steps)
    decay_steps: int = 1000
    # the decay factor of the step and exponential schedules
    gamma: float = 0.1
    # the final learning rate of the cosine and linear schedules
    min_lr: float = 0.0
    # further keyword arguments for the optimizer's constructor (e.g. history_size for lbfgs)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = Checks("optim")
        c.string("name", self.name)
        c.number("lr", self.lr, minimum=0.0)
        c.number("momentum", self.momentum, minimum=0.0, maximum=1.0)
        c.boolean("nesterov", self.nesterov)
        c.choice("momentum_schedule", self.momentum_schedule, MOMENTUM_SCHEDULES)
        c.number("weight_decay", self.weight_decay, minimum=0.0)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            c.fail("betas", f"must be a pair [beta1, beta2], got {self.betas!r}")
        else:
            for k, b in enumerate(self.betas):
                c.number(f"betas[{k}]", b, minimum=0.0, maximum=1.0)
        c.number("eps", self.eps, minimum=0.0)
        c.number("alpha", self.alpha, minimum=0.0, maximum=1.0)
        c.choice("schedule", self.schedule, LR_SCHEDULES)
        c.positive_int("warmup_steps", self.warmup_steps, minimum=0)
        c.positive_int("decay_steps", self.decay_steps)
        c.number("gamma", self.gamma, minimum=0.0)
        c.number("min_lr", self.min_lr, minimum=0.0)
        if not isinstance(self.options, dict):
            c.fail("options", f"must be a table, got {type(self.options).__name__}")
        if self.nesterov is True and self.name == "sgd" and self.momentum == 0:
            c.fail("nesterov", "needs momentum > 0 (optim.momentum)")
        if self.momentum_schedule == "sutskever" and self.momentum == 0:
            c.fail("momentum_schedule", "'sutskever' needs its maximum in optim.momentum (> 0)")
        c.done()


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (the ``[train]`` table)."""

    # optimizer updates in the whole run
    steps: int = 1000
    # sequences per update, all processes together (a multiple of the number of processes)
    batch_size: int = 32
    # evaluate on the task's first held-out split every N steps (0: only at the end)
    eval_every: int = 0
    # write a checkpoint every N steps (0: only at the end)
    checkpoint_every: int = 0
    # newest checkpoints kept in the run directory (0: keep all)
    keep_checkpoints: int = 3
    # clip the global L2 norm of the gradient to this value (Pascanu et al. 2013, alg. 1)
    clip_norm: float | None = None
    # clip every gradient entry to [-clip_value, clip_value]
    clip_value: float | None = None
    # skip updates whose loss or gradient has NaN/inf and count them, instead of stopping
    skip_nonfinite: bool = False
    # with skip_nonfinite: stop after this many skipped updates in a row (0: never)
    max_skipped_in_a_row: int = 100
    # truncated BPTT (Williams & Peng 1990): new time steps per update over the task's
    # stream, the network's state carried (detached) from update to update; none: full BPTT
    tbptt_k1: int | None = None
    # truncated BPTT: time steps backpropagated through at each update (>= tbptt_k1;
    # default tbptt_k1)
    tbptt_k2: int | None = None
    # weight of Pascanu et al. 2013's vanishing-gradient regulariser Omega (0: off)
    vanishing_penalty: float = 0.0
    # auto (cuda if available), cpu, cuda, cuda:N, mps
    device: str = "auto"
    # parameter dtype: float32 or float64
    dtype: str = "float32"
    # CPU threads for torch (torch.set_num_threads); 0 keeps torch's default. Small models
    # train fastest on 1 thread, and a busy machine makes more threads much slower
    threads: int = 0

    def __post_init__(self) -> None:
        c = Checks("train")
        c.positive_int("steps", self.steps, minimum=0)
        c.positive_int("batch_size", self.batch_size)
        c.positive_int("eval_every", self.eval_every, minimum=0)
        c.positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        c.positive_int("keep_checkpoints", self.keep_checkpoints, minimum=0)
        c.optional_number("clip_norm", self.clip_norm, minimum=0.0, exclusive_minimum=True)
        c.optional_number("clip_value", self.clip_value, minimum=0.0, exclusive_minimum=True)
        c.boolean("skip_nonfinite", self.skip_nonfinite)
        c.positive_int("max_skipped_in_a_row", self.max_skipped_in_a_row, minimum=0)
        c.optional_int("tbptt_k1", self.tbptt_k1)
        c.optional_int("tbptt_k2", self.tbptt_k2)
        if self.tbptt_k2 is not None and self.tbptt_k1 is None:
            c.fail("tbptt_k2", "needs train.tbptt_k1 (the steps per update)")
        if (
            isinstance(self.tbptt_k1, int)
            and isinstance(self.tbptt_k2, int)
            and self.tbptt_k2 < self.tbptt_k1
        ):
            c.fail("tbptt_k2", f"must be >= tbptt_k1={self.tbptt_k1}, got {self.tbptt_k2}")
        c.number("vanishing_penalty", self.vanishing_penalty, minimum=0.0)
        if c.string("device", self.device) and not _valid_device(self.device):
            c.fail("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        c.choice("dtype", self.dtype, ("float32", "float64"))
        c.positive_int("threads", self.threads, minimum=0)
        c.done()

    @property
    def k2(self) -> int | None:
        """The steps backpropagated through with truncated BPTT (``tbptt_k2 or tbptt_k1``)."""
        return self.tbptt_k2 if self.tbptt_k2 is not None else self.tbptt_k1


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


@dataclass(frozen=True)
class LogConfig:
    """Where and how a run writes its results (the ``[log]`` table)."""

    # run directory for checkpoints, metrics and plots ("": runs/<task>)
    dir: str = ""
    # write training metrics every N steps
    every: int = 1
    # progress bar: auto (only when stderr is a terminal), on or off
    progress: str = "auto"
    # TensorBoard event files: auto (if the tensorboard package is installed), on or off
    tensorboard: str = "auto"
    # save a plot of the loss curve (loss.png) at the end; needs matplotlib
    plot: bool = True

    def __post_init__(self) -> None:
        c = Checks("log")
        c.string("dir", self.dir)
        c.positive_int("every", self.every)
        c.choice("progress", self.progress, ("auto", "on", "off"))
        c.choice("tensorboard", self.tensorboard, ("auto", "on", "off"))
        c.boolean("plot", self.plot)
        c.done()


@dataclass(frozen=True)
class Config:
    """A whole training run: task, options, model, optimizer, loop and logging.

    Build one with :func:`load_config` (defaults, the task's defaults, a TOML file and
    overrides) or directly; ``data`` and ``model`` must then be instances of the task's
    ``Config`` and ``ModelConfig`` classes.
    """

    # the registered task (carousel tasks lists them)
    task: str
    # seeds the model's initialisation, the data and dropout
    seed: int = 0
    # the task's options (its Config dataclass); none: the task's defaults
    data: Any = None
    # the model (the task's ModelConfig)
    model: Any = field(default_factory=ModelConfig)
    # the optimizer and its schedules
    optim: OptimConfig = field(default_factory=OptimConfig)
    # the training loop
    train: TrainConfig = field(default_factory=TrainConfig)
    # logging and the run directory
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        from carousel.tasks import get_task

        c = Checks("")
        c.is_int("seed", self.seed)
        try:
            spec = get_task(self.task)
        except ValueError as e:
            raise ConfigError([str(e)]) from None
        if self.data is None:
            object.__setattr__(self, "data", spec.cls.Config())
        if not isinstance(self.data, spec.cls.Config):
            c.fail("data", f"must be a {spec.cls.Config.__name__}, got {type(self.data).__name__}")
        if not isinstance(self.model, spec.cls.ModelConfig):
            c.fail(
                "model",
                f"must be a {spec.cls.ModelConfig.__name__}, got {type(self.model).__name__}",
            )
        for name, cls in (("optim", OptimConfig), ("train", TrainConfig), ("log", LogConfig)):
            if not isinstance(getattr(self, name), cls):
                c.fail(name, f"must be a {cls.__name__}")
        c.done()
        if self.train.tbptt_k1 is not None:
            if not spec.cls.supports_stream():
                c.fail(
                    "train.tbptt_k1",
                    f"needs a task with a stream mode; {self.task!r} has none",
                )
            if getattr(self.model, "bidirectional", False):
                c.fail(
                    "train.tbptt_k1",
                    "cannot carry the state of a bidirectional model across a stream "
                    "(model.bidirectional = true)",
                )
        if self.train.vanishing_penalty > 0 and getattr(self.model, "cell", None) is None:
            c.fail("train.vanishing_penalty", "needs a model with a recurrent core")
        c.done()

    @property
    def run_dir(self) -> Path:
        """The run directory: ``log.dir``, or ``runs/<task>``."""
        return Path(self.log.dir) if self.log.dir else Path("runs") / self.task


# ---------------------------------------------------------------------------- conversion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_types(task: str) -> dict[str, type]:
    from carousel.tasks import get_task

    cls = get_task(task).cls
    return {"data": cls.Config, "model": cls.ModelConfig}


def _field_type(cls: type, name: str, sections: Mapping[str, type] | None) -> Any:
    if sections is not None and name in sections:
        return sections[name]
    return _hints(cls)[name]


def _unknown(path: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"{path}.{key}" if path else key
    return f"{where}: unknown key{hint}; known keys: {', '.join(known)}"


def _describe(value: Any) -> str:
    return f"{type(value).__name__} ({value!r})"


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Check/convert a TOML or JSON value to the annotated type ``tp``."""
    if tp is Any:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args and str not in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path, errors)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass, not an instance
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a table, got {_describe(value)}")
            return None
        return _build(tp, value, path, errors)
    origin = typing.get_origin(tp)
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected an array, got {_describe(value)}")
            return None
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_convert(v, items[0], f"{path}[{i}]", errors) for i, v in enumerate(value))
        if len(items) != len(value):
            errors.append(f"{path}: expected an array of {len(items)} values, got {list(value)!r}")
            return None
        return tuple(
            _convert(v, t, f"{path}[{i}]", errors) for i, (v, t) in enumerate(zip(value, items))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a table, got {_describe(value)}")
            return None
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {_describe(value)}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {_describe(value)}")
        return value
    return value


def _build(
    cls: type,
    data: Mapping[str, Any],
    path: str,
    errors: list[str],
    sections: Mapping[str, type] | None = None,
) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, collecting every error."""
    names = [f.name for f in dataclasses.fields(cls)]
    n_before = len(errors)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            errors.append(_unknown(path, key, names))
            continue
        sub = f"{path}.{key}" if path else key
        kwargs[key] = _convert(value, _field_type(cls, key, sections), sub, errors)
    if len(errors) > n_before:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        errors.extend(e.errors)
    except (TypeError, ValueError) as e:
        errors.append(f"{path or cls.__name__}: {e}")
    return None


def _parse_cli_value(raw: str, tp: Any) -> Any:
    """Convert the text of ``--set key=value`` to the field's type (best effort; the value is
    checked again by :func:`_convert`)."""
    text = raw.strip()
    args = _union_args(tp)
    if args is not None:
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_cli_value(raw, inner[0]) if len(inner) == 1 else _toml_literal(text)
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return text[1:-1]
        return raw
    if tp is bool:
        low = text.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        return raw
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            return raw
    if tp is float:
        try:
            return float(text.replace("_", ""))
        except ValueError:
            return raw
    if typing.get_origin(tp) is tuple:
        body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        parts = [p for p in body.split(",") if p.strip()]
        items = typing.get_args(tp)
        return [
            _parse_cli_value(p, items[0 if items[-1] is Ellipsis else min(i, len(items) - 1)])
            for i, p in enumerate(parts)
        ]
    return _toml_literal(text)


def _toml_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _resolve(path: list[str], task: str) -> tuple[Any, str | None]:
    """The annotated type of the field at ``path`` (``None`` and an error if unknown)."""
    cls: Any = Config
    sections: Mapping[str, type] | None = _section_types(task)
    done: list[str] = []
    for i, key in enumerate(path):
        if typing.get_origin(cls) is dict or cls is dict:
            return Any, None  # free-form table (optim.options)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None, f"{'.'.join(done)} is not a table"
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            return None, _unknown(".".join(done), key, names)
        cls = _field_type(cls, key, sections if i == 0 else None)
        args = _union_args(cls)
        if args is not None and i < len(path) - 1:
            cls = next(a for a in args if a is not type(None))
        done.append(key)
    return cls, None


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        ConfigError: if the file is missing, unreadable or not valid TOML.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"no such file: {p}"], str(p)) from None
    except IsADirectoryError:
        raise ConfigError([f"{p} is a directory, expected a TOML file"], str(p)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not a UTF-8 text file ({e.reason})"], str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], str(p)) from None


def load_config(
    task: str | None = None,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Build a :class:`Config` from defaults, a TOML file and ``key=value`` overrides.

    Args:
        task: the task name; may instead come from the file's ``task`` key.
        path: a TOML config file, or ``None``.
        overrides: ``"section.key=value"`` strings (``"model.hidden_size=128"``,
            ``"seed=3"``, ``"optim.betas=[0.9, 0.98]"``), converted to each field's type.

    Returns:
        The validated config.

    Raises:
        ConfigError: listing every unknown key, wrong type and invalid value.

    Example:
        >>> cfg = load_config("binary-addition", overrides=["model.hidden_size=8"])
        >>> cfg.model.cell, cfg.model.hidden_size
        ('rnn', 8)
    """
    from carousel.tasks import get_task

    where = str(path) if path is not None else "config"
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    errors: list[str] = []
    file_task = data.pop("task", None)
    if task is not None and file_task is not None and file_task != task:
        errors.append(f"task: the file says {file_task!r} but {task!r} was asked for")
    task = task if task is not None else file_task
    if task is None:
        raise ConfigError(
            ['task: no task given (name one, or set task = "..." in the file)'], where
        )
    try:
        spec = get_task(task)
    except ValueError as e:
        raise ConfigError([str(e)], where) from None
    merged = _merge({k: dict(v) for k, v in spec.cls.defaults.items()}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"--set {item!r}: expected key=value, e.g. model.hidden_size=128")
            continue
        parts = key.split(".")
        if parts[0] == "task":
            errors.append("--set task=...: the task is the TRAIN argument, not an override")
            continue
        tp, err = _resolve(parts, task)
        if err is not None:
            errors.append(f"--set {key}: {err}")
            continue
        _set_path(merged, parts, _parse_cli_value(raw, tp))
    merged["task"] = task
    config = _build(Config, merged, "", errors, _section_types(task))
    if errors:
        raise ConfigError(errors, where)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (tuples become lists), for JSON and TOML."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict`'s output (e.g. a checkpoint's).

    Raises:
        ConfigError: if the data does not describe a valid config.
    """
    data = dict(data)
    task = data.get("task")
    if not isinstance(task, str):
        raise ConfigError([f"task: expected a task name, got {task!r}"], where)
    errors: list[str] = []
    try:
        sections = _section_types(task)
    except ValueError as e:
        raise ConfigError([str(e)], where) from None
    config = _build(Config, data, "", errors, sections)
    if errors:
        raise ConfigError(errors, where)
    return config


def fill_added_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved config (a checkpoint's) with the keys added to carousel since it was written.

    Each missing key takes the value that keeps the behaviour of the runs made before it: the
    task's :attr:`~carousel.tasks.Task.predating` value where it has one, else the key's
    default (a key is added with a default that keeps the earlier behaviour).

    Returns:
        ``(filled, added)``: the config data with every key, and the dotted keys filled in
        with their values. Where this carousel cannot read ``data`` (an unknown task or key, an
        invalid value), ``(data, {})``, and :func:`config_from_dict` says why.
    """
    from carousel.tasks import get_task

    try:
        predating = get_task(data["task"]).cls.predating
    except (KeyError, TypeError, ValueError):
        return dict(data), {}
    given = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for section, values in predating.items():
        if isinstance(given.get(section, {}), dict):
            given[section] = {**values, **given.get(section, {})}
    try:
        filled = config_to_dict(config_from_dict(given))
    except ConfigError:
        return dict(data), {}
    return filled, {key: b for key, a, b in config_diff(data, filled) if a is UNSET}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


#: What :func:`config_diff` gives for a key one side lacks.
UNSET: Any = _Unset()


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key whose values differ between two
    configs as plain data (:data:`UNSET` where a side lacks the key); ``*options`` tables are
    compared whole, a table one side lacks is one key."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        a, b = old.get(k, UNSET), new.get(k, UNSET)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and not key.endswith("options"):
            out.extend(config_diff(a, b, key + "."))
        elif a != b:
            out.append((key, a, b))
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def config_to_toml(config: Config) -> str:
    """The config as a TOML document that :func:`load_config` reads back (unset optional
    values are written as comments)."""
    data = config_to_dict(config)
    lines: list[str] = []

    def table(name: str, d: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) or k == "options"}
        subs = {k: v for k, v in d.items() if isinstance(v, dict) and k != "options"}
        if name:
            lines.append(f"\n[{name}]")
        for k, v in scalars.items():
            lines.append(f"# {k} = none" if v is None else f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            table(f"{name}.{k}" if name else k, v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"
