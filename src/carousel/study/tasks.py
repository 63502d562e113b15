"""The tasks a study can run: the long-lag problems of :mod:`carousel.tasks.longlag` and the
pathological problems of Martens & Sutskever 2011 (:mod:`carousel.tasks.pathological`), both
with the same sampling and scoring interface."""

from __future__ import annotations

from typing import ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

from carousel.tasks.longlag import LONGLAG_TASKS, EmbeddedReber, LongLagTask, make_task
from carousel.tasks.pathological import PATHOLOGICAL_TASKS, PathologicalTask, make_pathological

__all__ = [
    "StudyBatch",
    "StudyTask",
    "make_study_task",
    "study_task_names",
    "task_has_lag",
    "task_source",
]


class StudyBatch(Protocol):
    """What a study reads of a task's batch (:class:`~carousel.tasks.longlag.LongLagBatch`,
    :class:`~carousel.tasks.pathological.PathologicalBatch`)."""

    @property
    def inputs(self) -> Tensor: ...

    @property
    def lengths(self) -> Tensor: ...


BatchT = TypeVar("BatchT", bound=StudyBatch)


class StudyTask(Protocol[BatchT]):
    """The sampling and scoring interface that :class:`~carousel.tasks.longlag.LongLagTask`
    and :class:`~carousel.tasks.pathological.PathologicalTask` share, for batches of type
    ``BatchT``; what :func:`carousel.study.train.train_until_solved` uses."""

    name: ClassVar[str]

    @property
    def input_size(self) -> int: ...

    @property
    def output_size(self) -> int: ...

    @property
    def lag(self) -> int | None: ...

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None) -> BatchT: ...

    def loss(self, outputs: Tensor, batch: BatchT) -> Tensor: ...

    def correct(self, outputs: Tensor, batch: BatchT) -> Tensor: ...


def study_task_names() -> list[str]:
    """Every task name a study accepts."""
    return [*LONGLAG_TASKS, *PATHOLOGICAL_TASKS]


def _check(name: str) -> None:
    if name not in LONGLAG_TASKS and name not in PATHOLOGICAL_TASKS:
        raise ValueError(f"study: unknown task {name!r}; expected one of {study_task_names()}")


def task_has_lag(name: str) -> bool:
    """Whether the task takes the lag parameter ``T``."""
    _check(name)
    return name in PATHOLOGICAL_TASKS or LONGLAG_TASKS[name][0] is not EmbeddedReber


def make_study_task(name: str, T: int | None) -> LongLagTask | PathologicalTask:
    """The task ``name`` at lag ``T`` (``None`` for a task without one)."""
    _check(name)
    if name in PATHOLOGICAL_TASKS:
        if T is None:
            raise TypeError(f"study: task {name!r} takes a lag T (an int), got None")
        return make_pathological(name, T)
    return make_task(name, T=T)


def task_source(name: str) -> str:
    """The paper a task's definition follows."""
    _check(name)
    cls = PATHOLOGICAL_TASKS[name] if name in PATHOLOGICAL_TASKS else LONGLAG_TASKS[name][0]
    return cls.source
