"""The training loop: seed, data, model, optimizer, train, evaluate, checkpoint.

:func:`train` runs one :class:`~carousel.train.Config` from start to end (or resumes it from its
last checkpoint) and returns a :class:`TrainResult`. Everything task-specific comes from the
task (:class:`carousel.tasks.Task`); everything else is here:

- full backpropagation through time on batches of whole sequences, or truncated BPTT over the
  task's stream (Williams & Peng 1990's BPTT(k2; k1)): each update reads ``k1`` new steps of
  ``B`` parallel streams, backpropagates through the last ``k2 >= k1`` steps, and carries the
  network's state, detached, to the next update (see :class:`_Forward`);
- every optimizer through ``optimizer.step(closure)`` (``torch.optim.LBFGS``'s contract);
- gradient clipping by global norm or by value, the pre-clip norm logged (Pascanu et al. 2013);
- Pascanu et al. 2013's vanishing-gradient regulariser (:mod:`carousel.train.penalties`);
- NaN/inf in the data, the loss or a gradient stops training with :class:`NonFiniteError`
  naming the step and the tensor, or, with ``train.skip_nonfinite``, skips that update and
  counts it;
- data-parallel training under ``torchrun`` (:mod:`carousel.train.distributed`);
- checkpoints that resume exactly: the data of step ``t`` is a function of ``(seed, t)``, the
  schedules are functions of ``t``, and model, optimizer, RNG states and the carried stream
  state are saved, so a run stopped and resumed ends with the same weights, bit for bit, as one
  that never stopped.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor, nn

from carousel._config import ConfigError
from carousel.layers.sequence import map_state, state_fields
from carousel.models import ModelOutput
from carousel.tasks import Batch, Task, make_task
from carousel.train import distributed
from carousel.train.checkpoint import (
    Checkpoint,
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from carousel.train.config import (
    UNSET,
    Config,
    config_diff,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    fill_added_keys,
)
from carousel.train.interrupt import deferred_interrupt
from carousel.train.metrics import MetricsLogger, plot_metrics, read_metrics
from carousel.train.optim import build_optimizer, momentum_at, set_schedules
from carousel.train.penalties import vanishing_gradient_penalty

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from carousel.optim import HessianFree

__all__ = [
    "NonFiniteError",
    "ResumeError",
    "TrainResult",
    "derive_seed",
    "evaluate_checkpoint",
    "evaluate_trained",
    "load_trained",
    "resolve_device",
    "train",
]

log = logging.getLogger("carousel.train")

#: Config keys a resumed run may change (everything else must match the checkpoint).
RESUMABLE_CHANGES = (
    "train.steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_skipped_in_a_row",
    "train.device",
    "train.threads",
    "log.",
)


class NonFiniteError(FloatingPointError):
    """NaN or inf in the data, the loss or a gradient.

    Attributes:
        step: the update (1-based) at which it happened.
        what: the tensor (``"the loss"``, ``"the gradient of rnn.weight_hh_l0"``, ...).
    """

    def __init__(self, step: int, what: str, detail: str = "") -> None:
        self.step, self.what = step, what
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"step {step}: {what} is not finite{extra}; lower optim.lr, set train.clip_norm, "
            "or set train.skip_nonfinite = true to skip such updates"
        )


class ResumeError(ConfigError):
    """A run directory holds a checkpoint of a different config."""


class _Skip(Exception):
    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(what)
        self.what, self.detail = what, detail


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        config: the run's config.
        run_dir: the run directory.
        step: updates done.
        checkpoint: the last checkpoint written (``None`` on processes other than rank 0).
        evaluation: final metrics per held-out split (``{"valid": {"accuracy": 1.0, ...}}``).
        train_metrics: the last training record (loss, metrics, grad_norm, lr, ...).
        skipped_steps: updates skipped because of NaN/inf.
        seconds: wall-clock time of this call's training.
        plot: the loss-curve PNG, if written.
        model: the trained model (unwrapped from DDP), in eval mode.
        resumed_from: the step this call resumed from, or ``None``.
        rank: this process's rank (0 for a single process; only rank 0 writes files).
    """

    config: Config
    run_dir: Path
    step: int
    checkpoint: Path | None
    evaluation: dict[str, dict[str, float]]
    train_metrics: dict[str, Any]
    skipped_steps: int
    seconds: float
    plot: Path | None
    model: nn.Module
    resumed_from: int | None = None
    rank: int = 0


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a base seed and labels, e.g. ``derive_seed(0, "train", 17)``
    (independent streams for data, initialisation, evaluation, ...)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def resolve_device(
    name: str, info: distributed.DistInfo | None = None, *, key: str = "train.device"
) -> torch.device:
    """``"auto"`` -> CUDA if available (this process's GPU under torchrun), else CPU.

    Raises:
        ConfigError: naming ``key``, for a device that is not one or that this machine lacks.
    """
    where = key.split(".")[0]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info is not None and info.enabled:
        name = f"cuda:{info.local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            [f"{key} must be auto, cpu, cuda, cuda:N or mps, got {name!r}"], where
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"{key} is {name!r} but CUDA is not available"], where)
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                [f"{key} is {name!r} but this machine has {count} CUDA device(s)"], where
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"{key} is {name!r} but MPS is not available"], where)
    return device


# ---------------------------------------------------------------------------- one forward


class _Forward(nn.Module):
    """One forward pass of a training update, as a module so that DDP wraps one call.

    For truncated BPTT the batch is a *window*: ``n_hist`` steps already trained on (kept for
    the gradient path when ``k2 > k1``) followed by the new chunk; the loss covers the chunk
    only. The window is run in two pieces split at ``split_at``, so that the state there (the
    start of the next window) comes out without tracing every step.
    """

    def __init__(self, model: nn.Module, task: Task, penalty_weight: float) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.penalty_weight = penalty_weight

    def _loss(self, out: ModelOutput, batch: Batch, n_hist: int) -> Tensor:
        if n_hist:
            out = out._replace(output=out.output[n_hist:])
            batch = batch.time_slice(n_hist, batch.num_steps)
        return self.task.loss(out, batch)

    def forward(
        self, batch: Batch, state: Any, n_hist: int, split_at: int | None
    ) -> tuple[Tensor, Tensor, ModelOutput, Any]:
        task, model = self.task, self.model
        T = batch.num_steps
        if self.penalty_weight > 0:
            res = vanishing_gradient_penalty(
                model,
                batch.inputs,
                lambda o: self._loss(o, batch, n_hist),
                state=state,
                lengths=batch.lengths,
            )
            split_state = None
            if split_at is not None:
                split_state = state if split_at == 0 else res.states[split_at - 1]
            return res.loss, res.penalty, res.output, split_state
        if split_at is None or split_at >= T or split_at == 0:
            out = task.forward(model, batch, state)
            split_state = out.state if split_at is None or split_at >= T else state
        else:
            first = task.forward(model, batch.time_slice(0, split_at), state)
            second = task.forward(model, batch.time_slice(split_at, T), first.state)
            out = ModelOutput(torch.cat([first.output, second.output]), second.state)
            split_state = first.state
        loss = self._loss(out, batch, n_hist)
        return loss, loss.new_zeros(()), out, split_state


def _detach(state: Any) -> Any:
    return None if state is None else map_state(lambda t: t.detach(), state)


# ---------------------------------------------------------------------------- the trainer


@dataclass
class _Context:
    loss: Tensor | None = None
    penalty: Tensor | None = None
    output: ModelOutput | None = None
    split_state: Any = None
    grad_norm: float = float("nan")
    loss_value: float = float("nan")


@dataclass
class _Carry:
    """Truncated BPTT's state between updates: the state at the start of the kept history and
    the history itself (the last ``k2 - k1`` steps)."""

    state: Any = None
    history: Batch | None = None


@dataclass
class _Run:
    config: Config
    info: distributed.DistInfo
    device: torch.device
    dtype: torch.dtype
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    forward: nn.Module  # _Forward, possibly DDP-wrapped
    run_dir: Path
    start: int = 0
    skipped: int = 0
    skipped_in_a_row: int = 0
    carry: _Carry = field(default_factory=_Carry)
    last_train: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    logger: MetricsLogger | None = None
    last_checkpoint: Path | None = None
    resumed_from: int | None = None


def train(config: Config, *, resume: bool = True, restart: bool = False) -> TrainResult:
    """Train ``config`` to ``config.train.steps`` updates.

    Args:
        config: the run (see :func:`carousel.train.load_config`).
        resume: continue from the run directory's last checkpoint if there is one.
        restart: start from step 0, deleting the run directory's checkpoints and metrics.

    Like any training script, it seeds torch's global generator (dropout draws come from it);
    ``train.threads`` applies for the run only.

    Returns:
        :class:`TrainResult`.

    Raises:
        NonFiniteError: NaN/inf in data, loss or gradient (unless ``train.skip_nonfinite``).
        ResumeError: the run directory holds a checkpoint of another config.
        ConfigError: invalid settings found when the run starts (device, optimizer options).
    """
    if not isinstance(config, Config):
        raise TypeError(
            f"train: config must be a carousel.train.Config, got {type(config).__name__}"
        )
    tc = config.train
    device_type = (
        "cuda"
        if tc.device.startswith("cuda") or (tc.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    info = distributed.setup(device_type)
    threads = torch.get_num_threads()
    try:
        return _train(config, info, resume=resume and not restart, restart=restart)
    finally:
        torch.set_num_threads(threads)
        if info.owns_group:
            # the DDP wrapper holds the process group through its reducer and sits in a
            # reference cycle: freed here, before the group, not during the interpreter's exit
            # (where gloo's threads have aborted processes, "terminate called without an
            # active exception")
            gc.collect()
        distributed.cleanup(info)


def _train(
    config: Config, info: distributed.DistInfo, *, resume: bool, restart: bool
) -> TrainResult:
    tc = config.train
    device = resolve_device(tc.device, info)
    dtype = getattr(torch, tc.dtype)
    run_dir = config.run_dir
    if restart and info.is_main:
        _clear_run(run_dir)
    distributed.barrier(info)

    if tc.threads:
        torch.set_num_threads(tc.threads)
    # 1. seed: the global RNG (dropout) per process; data and initialisation get their own
    torch.manual_seed(derive_seed(config.seed, "torch", info.rank))
    # 2. data
    task = make_task(config.task, config.data)
    # 3. model
    model = task.make_model(
        config.model, generator=_generator(config.seed, "init"), device=device, dtype=dtype
    )
    # 4. optimizer
    optimizer = build_optimizer(model.parameters(), config.optim, model=model, task=task)
    _check_hessian_free(optimizer, config, info)
    run = _Run(config, info, device, dtype, task, model, optimizer, model, run_dir)
    # 5. resume
    ckpt_path = latest_checkpoint(run_dir) if resume else None
    if ckpt_path is not None:
        _restore(run, load_checkpoint(ckpt_path))
    fwd: nn.Module = _Forward(model, task, tc.vanishing_penalty)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(
            fwd,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=tc.tbptt_k1 is not None,
        )
    run.forward = fwd
    if info.is_main:
        run.logger = MetricsLogger(
            run_dir, tensorboard=config.log.tensorboard, resume_step=run.resumed_from
        )
        atomic_write_text(run_dir / "config.toml", config_to_toml(config))
        log.info(
            "%s: %s on %s%s, %d parameters, run directory %s",
            "resuming" if run.resumed_from is not None else "training",
            task.describe(),
            device,
            f" x{info.world_size} processes" if info.enabled else "",
            sum(p.numel() for p in model.parameters()),
            run_dir,
        )
    t0 = time.perf_counter()
    try:
        _loop(run)
        evaluation = _final(run)
    finally:
        if run.logger is not None:
            run.logger.close()
    seconds = time.perf_counter() - t0
    plot = None
    if info.is_main and config.log.plot:
        try:
            plot = plot_metrics(
                read_metrics(run_dir),
                run_dir / "loss.png",
                title=task.describe(),
                metric=task.primary_metric,
            )
        except ImportError as e:
            log.warning("no loss plot: %s", e)
    model.eval()
    return TrainResult(
        config=config,
        run_dir=run_dir,
        step=max(run.start, tc.steps),
        checkpoint=run.last_checkpoint,
        evaluation=evaluation,
        train_metrics=run.last_train,
        skipped_steps=run.skipped,
        seconds=seconds,
        plot=plot,
        model=model,
        resumed_from=run.resumed_from,
        rank=info.rank,
    )


def _clear_run(run_dir: Path) -> None:
    for p in list_checkpoints(run_dir):
        shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    last = run_dir / "last"
    if last.is_symlink() or last.is_file():
        last.unlink()


# ---------------------------------------------------------------------------- data


def _batches(run: _Run) -> Iterator[Batch]:
    cfg, task = run.config, run.task
    B = cfg.train.batch_size
    if cfg.train.tbptt_k1 is not None:
        yield from task.stream(
            "train",
            B,
            cfg.train.tbptt_k1,
            generator=_generator(cfg.seed, "stream"),
            start=run.start,
        )
        return
    step = run.start
    while True:
        yield task.batch("train", B, generator=_generator(cfg.seed, "train", step))
        step += 1


# ---------------------------------------------------------------------------- the loop


def _progress(run: _Run) -> tqdm[Any]:
    from tqdm.auto import tqdm

    mode = run.config.log.progress
    disable = None if mode == "auto" else mode == "off"
    return tqdm(
        total=run.config.train.steps,
        initial=min(run.start, run.config.train.steps),
        desc=run.config.task,
        unit="step",
        disable=disable if run.info.is_main else True,
        dynamic_ncols=True,
        leave=True,
    )


def _loop(run: _Run) -> None:
    cfg, tc = run.config, run.config.train
    if run.start >= tc.steps:
        if run.resumed_from is not None:
            log.info(
                "the run is already trained to step %d (train.steps = %d)", run.start, tc.steps
            )
        return
    data = _batches(run)
    bar = _progress(run)
    tokens_rate = None
    t_start = time.perf_counter()
    saved = run.start  # the step of the newest checkpoint (or where the run starts)
    # Ctrl-C or SIGTERM: finish the step, save it, stop (carousel.train.interrupt); not under
    # torchrun, where the processes would save at different steps
    try:
        with deferred_interrupt(enabled=not run.info.enabled) as interrupted:
            for step in range(run.start, tc.steps):
                t0 = time.perf_counter()
                lr = set_schedules(run.optimizer, cfg.optim, step, tc.steps)
                batch = next(data)
                if run.info.enabled:
                    batch = batch.shard(run.info.rank, run.info.world_size)
                batch = batch.to(run.device, run.dtype)
                ctx, ok, metrics = _update(run, step, batch)
                run.start = step + 1
                dt = max(time.perf_counter() - t0, 1e-9)
                tokens = batch.tokens * run.info.world_size
                rate = tokens / dt
                tokens_rate = rate if tokens_rate is None else 0.9 * tokens_rate + 0.1 * rate
                record = {
                    "kind": "train",
                    "step": step + 1,
                    "loss": ctx.loss_value,
                    **(
                        {
                            "penalty": float(ctx.penalty.detach())
                            if ctx.penalty is not None
                            else math.nan
                        }
                        if tc.vanishing_penalty > 0
                        else {}
                    ),
                    **metrics,
                    "grad_norm": ctx.grad_norm,
                    "lr": lr,
                    **(
                        {"momentum": momentum_at(cfg.optim, step)}
                        if cfg.optim.momentum_schedule != "constant"
                        else {}
                    ),
                    "tokens_per_s": rate,
                    "seconds": time.perf_counter() - t_start,
                    "skipped": run.skipped,
                }
                run.last_train = record
                if run.logger is not None and ((step + 1) % cfg.log.every == 0 or not ok):
                    run.logger.log(record)
                if not bar.disable:
                    post = {"loss": f"{ctx.loss_value:.4g}"}
                    metric = run.task.primary_metric
                    if metric in metrics:  # bits_per_char -> bits/char, accuracy -> accuracy
                        label = metric.replace("_per_", "/") if "_per_" in metric else metric[:8]
                        post[label] = f"{metrics[metric]:.3f}"
                    post["tok/s"] = f"{tokens_rate:,.0f}"
                    if run.skipped:
                        post["skipped"] = str(run.skipped)
                    bar.set_postfix(post, refresh=False)
                bar.update(1)
                done = step + 1
                if tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:
                    _evaluate(run, run.task.eval_splits[:1], done)
                if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps:
                    _save(run, done)
                    saved = done
                signal_name = interrupted()
                if signal_name is not None:
                    if saved != done:
                        _save(run, done)
                    log.warning("%s: stopped after step %d, saved to resume", signal_name, done)
                    raise KeyboardInterrupt
    finally:
        bar.close()


def _grads(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]


def _is_hessian_free(optimizer: torch.optim.Optimizer) -> TypeGuard[HessianFree]:
    from carousel.optim import HessianFree

    return isinstance(optimizer, HessianFree)


def _check_hessian_free(
    optimizer: torch.optim.Optimizer, config: Config, info: distributed.DistInfo
) -> None:
    """What the Hessian-free optimizer (under any registered name) cannot combine with, as one
    clear error."""
    if not _is_hessian_free(optimizer):
        return
    errors = []
    if info.enabled:
        errors.append("optim.name=hessian-free runs in one process (no torchrun)")
    if config.train.tbptt_k1 is not None:
        errors.append("optim.name=hessian-free needs whole sequences: unset train.tbptt_k1")
    if config.train.vanishing_penalty > 0:
        errors.append("optim.name=hessian-free: set train.vanishing_penalty=0")
    if errors:
        raise ConfigError(errors, "config")


def _update(run: _Run, step: int, batch: Batch) -> tuple[_Context, bool, dict[str, float]]:
    """One optimizer update through ``optimizer.step(closure)``."""
    tc = run.config.train
    ctx = _Context()
    tbptt = tc.tbptt_k1 is not None
    carry = run.carry
    for name, t in batch.named_tensors():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return _nonfinite(run, step, ctx, _Skip(f"the batch's {name}"), batch=batch)
    if tc.tbptt_k1 is not None and tc.k2 is not None:  # truncated BPTT (tbptt)
        window = batch if carry.history is None else Batch.cat_time(carry.history, batch)
        n_hist = window.num_steps - batch.num_steps
        keep = min(tc.k2 - tc.tbptt_k1, window.num_steps)
        split_at = window.num_steps - keep
        state0 = carry.state
    else:
        window, n_hist, split_at, state0 = batch, 0, None, None

    def closure() -> Tensor:
        run.optimizer.zero_grad(set_to_none=True)
        loss, penalty, output, split_state = run.forward(window, state0, n_hist, split_at)
        total = loss + tc.vanishing_penalty * penalty if tc.vanishing_penalty > 0 else loss
        total.backward()
        ctx.loss, ctx.penalty, ctx.output, ctx.split_state = loss, penalty, output, split_state
        ctx.loss_value = float(distributed.all_reduce_mean(loss.detach(), run.info))
        if not math.isfinite(ctx.loss_value):
            raise _Skip("the loss", f"{ctx.loss_value}")
        grads = _grads(run.model)
        norm = float(torch.nn.utils.get_total_norm([g for _, g in grads])) if grads else 0.0
        if not math.isfinite(norm):
            for name, g in grads:
                bad = ~torch.isfinite(g)
                if bool(bad.any()):
                    nan = int(torch.isnan(g).sum())
                    raise _Skip(
                        f"the gradient of {name}",
                        f"{nan} NaN and {int(bad.sum()) - nan} inf values",
                    )
        ctx.grad_norm = norm
        if hessian_free:
            return total  # HF needs the true gradient: no clipping (it bounds its own steps)
        params = [p for p in run.model.parameters() if p.grad is not None]
        if tc.clip_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, tc.clip_norm, torch.tensor(norm))
        if tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, tc.clip_value)
        return total

    hf = run.optimizer if _is_hessian_free(run.optimizer) else None
    hessian_free = hf is not None
    if hf is not None:
        # the Gauss-Newton products go through this batch's scored outputs
        hf.output_fn = functools.partial(run.task.curvature_outputs, batch=window)
    try:
        # torch types a closure as returning a float; its optimizers take the loss tensor
        run.optimizer.step(closure)  # type: ignore[arg-type]
    except _Skip as e:
        return _nonfinite(run, step, ctx, e, window=window, split_at=split_at)
    run.skipped_in_a_row = 0
    if tbptt:
        _advance(run, window, split_at, ctx.split_state)
    out = ctx.output
    if n_hist and out is not None:
        out = out._replace(output=out.output[n_hist:])
    with torch.no_grad():
        metrics = run.task.metrics(out, batch) if out is not None else {}
    return ctx, True, metrics


def _advance(run: _Run, window: Batch, split_at: int | None, split_state: Any) -> None:
    T = window.num_steps
    run.carry = _Carry(
        state=_detach(split_state),
        history=None if split_at is None or split_at >= T else window.time_slice(split_at, T),
    )


def _nonfinite(
    run: _Run,
    step: int,
    ctx: _Context,
    err: _Skip,
    *,
    batch: Batch | None = None,
    window: Batch | None = None,
    split_at: int | None = None,
) -> tuple[_Context, bool, dict[str, float]]:
    tc = run.config.train
    if not tc.skip_nonfinite:
        raise NonFiniteError(step + 1, err.what, err.detail)
    run.optimizer.zero_grad(set_to_none=True)
    run.skipped += 1
    run.skipped_in_a_row += 1
    log.warning(
        "step %d: %s is not finite; update skipped (%d so far)", step + 1, err.what, run.skipped
    )
    if tc.max_skipped_in_a_row and run.skipped_in_a_row >= tc.max_skipped_in_a_row:
        raise NonFiniteError(
            step + 1,
            err.what,
            f"{run.skipped_in_a_row} updates in a row skipped, the limit "
            "train.max_skipped_in_a_row",
        )
    if window is None and tc.tbptt_k1 is not None:
        run.carry = _Carry()  # bad data: the stream restarts from the initial state
    elif window is not None and tc.tbptt_k1 is not None:
        # the stream moves on; the state carried on is the one this (skipped) pass computed,
        # or, if it is not finite, the initial state
        state = ctx.split_state
        if state is not None and not all(
            bool(torch.isfinite(f).all()) for f in state_fields(state)
        ):
            state = None
        _advance(run, window, split_at, state)
    return ctx, False, {}


# ---------------------------------------------------------------------------- eval, checkpoints


def _evaluate(
    run: _Run, splits: Iterable[str], step: int, record: bool = True
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    if run.info.is_main:
        for split in splits:
            m = run.task.evaluate(
                run.model,
                split,
                generator=_generator(run.config.seed, "eval", split),
                device=run.device,
                dtype=run.dtype,
            )
            results[split] = m
            run.last_eval[split] = m
            if run.logger is not None and record:
                run.logger.log({"kind": "eval", "step": step, "split": split, **m})
            log.info(
                "step %d, %s: %s", step, split, ", ".join(f"{k} {v:.4g}" for k, v in m.items())
            )
    distributed.barrier(run.info)
    return results


def _final(run: _Run) -> dict[str, dict[str, float]]:
    steps = run.config.train.steps
    if run.resumed_from is None or run.resumed_from < steps:
        evaluation = _evaluate(run, run.task.eval_splits, max(run.start, steps))
        _save(run, run.start)
        return evaluation
    return _evaluate(run, run.task.eval_splits, run.start, record=False)  # already logged


def _state_type_name(state: Any) -> str:
    if isinstance(state, Tensor):
        return "tensor"
    cls = type(state)
    return f"{cls.__module__}:{cls.__qualname__}"


def _state_type(name: str) -> Any:
    if name == "tensor":
        return None
    module, _, qual = name.partition(":")
    if not module.startswith("carousel."):
        raise ValueError(f"checkpoint names a state type outside carousel: {name!r}")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _save(run: _Run, step: int) -> None:
    info = run.info
    # every process's RNG state (a collective: all processes take part)
    cpu = torch.get_rng_state()
    gather_dev = run.device if info.enabled and run.device.type == "cuda" else torch.device("cpu")
    rng = {
        f"rng.torch.rank{r}": t.cpu()
        for r, t in enumerate(distributed.all_gather_tensor(cpu.to(gather_dev), info))
    }
    if run.device.type == "cuda":
        cuda = torch.cuda.get_rng_state(run.device)
        for r, t in enumerate(distributed.all_gather_tensor(cuda.to(gather_dev), info)):
            rng[f"rng.cuda.rank{r}"] = t.cpu()
    if info.is_main:
        tensors = dict(rng)
        carry_meta: dict[str, Any] = {"state": None, "history": None}
        if run.carry.state is not None:
            fields = state_fields(run.carry.state)
            carry_meta["state"] = {"type": _state_type_name(run.carry.state), "fields": len(fields)}
            for i, f in enumerate(fields):
                tensors[f"carry.state.{i}"] = f
        if run.carry.history is not None:
            h = run.carry.history
            carry_meta["history"] = [
                n for n in ("inputs", "targets", "mask") if getattr(h, n) is not None
            ]
            for n in carry_meta["history"]:
                tensors[f"carry.history.{n}"] = getattr(h, n)
        run.last_checkpoint = save_checkpoint(
            run.run_dir,
            step,
            model=run.model.state_dict(),
            config=config_to_dict(run.config),
            optimizer=run.optimizer.state_dict(),
            tensors=tensors,
            meta={
                "metrics": {"train": run.last_train, "eval": run.last_eval},
                "task_state": run.task.state_dict(),
                "trainer": {
                    "skipped": run.skipped,
                    "world_size": info.world_size,
                    "carry": carry_meta,
                },
            },
            keep=run.config.train.keep_checkpoints,
        )
        log.info("step %d: checkpoint %s", step, run.last_checkpoint)
    distributed.barrier(info)


def _restore(run: _Run, ckpt: Checkpoint) -> None:
    # a key added to carousel after the checkpoint was written resumes at the value that keeps
    # the behaviour of the runs made before it (config.fill_added_keys)
    added = fill_added_keys(ckpt.config)[1]
    changes = []
    for key, a, b in config_diff(ckpt.config, config_to_dict(run.config)):
        if key.startswith(RESUMABLE_CHANGES) or (a is UNSET and key in added and added[key] == b):
            continue
        if a is UNSET and key in added:
            changes.append(
                f"{key}: not in the checkpoint, which predates this key (such runs resume "
                f"with {added[key]!r}), {b!r} now"
            )
        else:
            changes.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    if changes:
        raise ResumeError(
            [
                *changes,
                f"the run directory {run.run_dir} holds a checkpoint of another config: resume "
                "with the same config, pass --restart to start over (deleting its checkpoints), "
                "or choose another directory with --set log.dir=DIR",
            ],
            str(ckpt.path),
        )
    if added:
        log.warning(
            "%s predates the config keys %s; resuming with these values, which keep the "
            "behaviour of the runs made before them",
            ckpt.path,
            ", ".join(f"{k} = {v!r}" for k, v in added.items()),
        )
    try:
        run.model.load_state_dict(ckpt.model)
        if ckpt.optimizer is not None:
            run.optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ResumeError([f"cannot load {ckpt.path}: {e}"], str(ckpt.path)) from None
    run.task.load_state_dict(ckpt.meta.get("task_state", {}))
    trainer = ckpt.meta.get("trainer", {})
    run.start = ckpt.step
    run.resumed_from = ckpt.step
    run.last_checkpoint = ckpt.path if run.info.is_main else None
    run.skipped = int(trainer.get("skipped", 0))
    metrics = ckpt.metrics
    run.last_train = dict(metrics.get("train", {}))
    run.last_eval = dict(metrics.get("eval", {}))
    # RNG states: each process its own (same number of processes), else fresh per-step seeds
    info = run.info
    key = f"rng.torch.rank{info.rank}"
    if trainer.get("world_size", 1) == info.world_size and key in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors[key])
        ckey = f"rng.cuda.rank{info.rank}"
        if run.device.type == "cuda" and ckey in ckpt.tensors:
            torch.cuda.set_rng_state(ckpt.tensors[ckey], run.device)
    else:
        log.warning(
            "resuming with %d processes from a checkpoint of %s: dropout draws differ from an "
            "uninterrupted run",
            info.world_size,
            trainer.get("world_size", "?"),
        )
        torch.manual_seed(derive_seed(run.config.seed, "torch", info.rank, ckpt.step))
    carry = trainer.get("carry", {}) or {}
    state = None
    if carry.get("state"):
        fields = [
            ckpt.tensors[f"carry.state.{i}"].to(run.device, run.dtype)
            for i in range(carry["state"]["fields"])
        ]
        stype = _state_type(carry["state"]["type"])
        state = fields[0] if stype is None else stype(*fields)
    history = None
    if carry.get("history"):
        parts = {n: ckpt.tensors[f"carry.history.{n}"].to(run.device) for n in carry["history"]}
        history = Batch(
            parts["inputs"].to(run.dtype)
            if parts["inputs"].is_floating_point()
            else parts["inputs"],
            parts["targets"],
            parts.get("mask"),
        )
    run.carry = _Carry(state, history)
    log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)


# ---------------------------------------------------------------------------- using a checkpoint


def load_trained(
    path: str | os.PathLike[str], *, device: str = "auto"
) -> tuple[nn.Module, Task, Config, Checkpoint]:
    """The trained model of a checkpoint, with its task and config.

    Args:
        path: a checkpoint directory, a run directory or its ``last`` link.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``(model, task, config, checkpoint)``; the model is in eval mode.

    Raises:
        CheckpointError: missing, damaged or foreign checkpoint files.
        ConfigError: a checkpoint whose config this carousel cannot read.
    """
    ckpt = load_checkpoint(path)
    config = config_from_dict(fill_added_keys(ckpt.config)[0], where=str(ckpt.path))
    dev = resolve_device(device, key="device")
    dtype = getattr(torch, config.train.dtype)
    task = make_task(config.task, config.data)
    task.load_state_dict(ckpt.meta.get("task_state", {}))
    model = task.make_model(config.model, device=dev, dtype=dtype)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        from carousel.train.checkpoint import CheckpointError

        raise CheckpointError(f"{ckpt.path}: the weights do not fit the model: {e}") from None
    model.eval()
    return model, task, config, ckpt


def evaluate_checkpoint(
    path: str | Path, splits: list[str] | None = None, *, device: str = "auto"
) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint on its task's held-out splits (the same data as in training).

    Args:
        path: a checkpoint directory, a run directory or its ``last`` link.
        splits: split names; ``None`` for all of the task's.
        device: where to run.

    Returns:
        ``{split: {metric: value}}``.
    """
    model, task, config, _ = load_trained(path, device=device)
    return evaluate_trained(model, task, config, splits)


def evaluate_trained(
    model: nn.Module, task: Task, config: Config, splits: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Evaluate a model on its task's held-out splits, with the data the training loop uses
    for evaluation (see :func:`load_trained`).

    Raises:
        ValueError: for a split the task does not have.
    """
    names = list(task.eval_splits) if splits is None else list(splits)
    for s in names:
        if s not in task.eval_splits:
            raise ValueError(
                f"evaluate_checkpoint: task {task.name!r} has no split {s!r}; "
                f"expected one of {list(task.eval_splits)}"
            )
    dev = next(model.parameters()).device
    return {
        s: task.evaluate(
            model,
            s,
            generator=_generator(config.seed, "eval", s),
            device=dev,
            dtype=getattr(torch, config.train.dtype),
        )
        for s in names
    }
