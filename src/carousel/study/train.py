"""One run of the long-lag study: train a model on a task until the paper's stopping rule holds
or the budget is spent, then test it on fresh sequences.

The loop reads top to bottom: seed, data, model, optimiser, train (with the paper's online
criterion read before each update, as the 1997 paper counts "sequences processed correctly"),
test. Sequences-to-criterion count training sequences, the unit of the 1997 paper's tables;
carousel trains on mini-batches, so the number of weight updates is that divided by the batch
size (the paper updated after every sequence).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from carousel.study.models import ModelSpec
from carousel.study.tasks import StudyTask
from carousel.tasks.longlag import StopRule

__all__ = ["RunResult", "stop_rule_of", "train_until_solved"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        status: ``"solved"`` (the stopping rule held), ``"budget"`` (sequence or time budget
            spent first), ``"diverged"`` (non-finite loss) or ``"interrupted"`` (stopped by the
            study's deadline; not a result, the study reruns it).
        solved: ``status == "solved"``.
        sequences: training sequences seen (to the criterion if solved).
        updates: weight updates made.
        seconds: wall-clock training time.
        train_loss: mean loss of the last 20 updates.
        window_wrong: wrong sequences in the stopping rule's window at the end.
        test_wrong: sequences of the test set failing the success test.
        test_size: size of the test set.
        test_loss: loss on the test set.
    """

    status: str
    solved: bool
    sequences: int
    updates: int
    seconds: float
    train_loss: float
    window_wrong: int
    test_wrong: int
    test_size: int
    test_loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluate(
    model: nn.Module, task: StudyTask[Any], size: int, seed: int, chunk: int = 512
) -> tuple[int, float]:
    g = torch.Generator().manual_seed(seed)
    wrong, loss_sum, n = 0, 0.0, 0
    with torch.no_grad():
        while n < size:
            b = task.sample(min(chunk, size - n), generator=g)
            out = model(b.inputs)
            wrong += int((~task.correct(out, b)).sum())
            loss_sum += float(task.loss(out, b)) * b.lengths.numel()
            n += b.lengths.numel()
    return wrong, loss_sum / n


def train_until_solved(
    spec: ModelSpec,
    task: StudyTask[Any],
    *,
    seed: int = 0,
    max_sequences: int = 100_000,
    max_seconds: float = math.inf,
    deadline: float | None = None,
    test_size: int = 2560,
    model: torch.nn.Module | None = None,
) -> RunResult:
    """Train ``spec`` on ``task`` until the task's stopping rule holds or a budget is spent.

    Args:
        spec: the model and its optimiser.
        task: the long-lag task.
        seed: seeds the weights (``seed``), the training stream and the test set (derived).
        max_sequences: training-sequence budget.
        max_seconds: training-time budget of this run.
        deadline: a ``time.time()`` after which the run stops as ``"interrupted"``.
        test_size: fresh test sequences drawn after training (2560 in the 1997 paper).
        model: the network to train in place (default: ``spec.build(..., seed=seed)``);
            pass one to keep the trained weights.

    Returns:
        A :class:`RunResult`.
    """
    # seed, data, model, optimiser
    stream = torch.Generator().manual_seed(1_000_003 * seed + 17)
    if model is None:
        model = spec.build(task.input_size, task.output_size, seed=seed)
    opt = spec.make_optimizer(model.parameters())
    rule = stop_rule_of(task)
    errors = getattr(task, "errors", None)
    recent_ok: deque[bool] = deque(maxlen=rule.window)
    recent_err: deque[float] = deque(maxlen=rule.window)
    losses: deque[float] = deque(maxlen=20)
    sequences = updates = 0
    status = "budget"
    start = time.perf_counter()
    # train
    while sequences < max_sequences:
        elapsed = time.perf_counter() - start
        if elapsed > max_seconds:
            break
        if deadline is not None and time.time() > deadline:
            status = "interrupted"
            break
        batch = task.sample(spec.batch_size, generator=stream)
        out = model(batch.inputs)
        loss = task.loss(out, batch)
        if not torch.isfinite(loss):
            status = "diverged"
            log.info("%s on %s seed %d: non-finite loss at update %d", spec.name, task.name,
                     seed, updates)  # fmt: skip
            break
        with torch.no_grad():  # the paper's online criterion, before this update
            recent_ok.extend(task.correct(out, batch).tolist())
            if errors is not None:
                recent_err.extend(errors(out, batch).tolist())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
        mu = spec.momentum_at(updates)
        if mu is not None:
            for group in opt.param_groups:
                group["momentum"] = mu
        opt.step()
        updates += 1
        sequences += batch.lengths.numel()
        losses.append(loss.item())
        if len(recent_ok) == rule.window and _rule_holds(rule, recent_ok, recent_err):
            status = "solved"
            break
    seconds = time.perf_counter() - start
    # test
    model.eval()
    test_wrong, test_loss = _evaluate(model, task, test_size, seed=2_000_003 * seed + 29)
    window_wrong = len(recent_ok) - sum(recent_ok)
    log.info("%s on %s (T=%s) seed %d: %s after %d sequences, %.1f s, test %d/%d wrong",
             spec.name, task.name, task.lag, seed, status, sequences, seconds, test_wrong,
             test_size)  # fmt: skip
    return RunResult(
        status=status,
        solved=status == "solved",
        sequences=sequences,
        updates=updates,
        seconds=round(seconds, 3),
        train_loss=sum(losses) / max(len(losses), 1) if losses else math.nan,
        window_wrong=window_wrong,
        test_wrong=test_wrong,
        test_size=test_size,
        test_loss=test_loss,
    )


def stop_rule_of(task: StudyTask[Any]) -> StopRule:
    """The task's stopping rule; for tasks that state only a success threshold (the
    pathological problems: at most 1% of sequences wrong), that fraction of the 2000 most
    recent training sequences."""
    rule = getattr(task, "stop_rule", None)
    if rule is not None:
        return rule
    threshold = float(getattr(task, "success_threshold", 0.0))
    return StopRule(window=2000, max_wrong=round(threshold * 2000))


def _rule_holds(rule: StopRule, recent_ok: deque[bool], recent_err: deque[float]) -> bool:
    if len(recent_ok) - sum(recent_ok) > rule.max_wrong:
        return False
    if rule.max_mean_error is not None and recent_err:
        return sum(recent_err) / len(recent_err) < rule.max_mean_error
    return True
