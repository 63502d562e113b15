"""The tasks a study can run: the long-lag problems of :mod:`carousel.tasks.longlag` and the
pathological problems of Martens & Sutskever 2011 (:mod:`carousel.tasks.pathological`), both
with the same sampling and scoring interface."""

from __future__ import annotations

from carousel.tasks.longlag import LONGLAG_TASKS, EmbeddedReber, make_task
from carousel.tasks.pathological import PATHOLOGICAL_TASKS, make_pathological

__all__ = ["make_study_task", "study_task_names", "task_has_lag", "task_source"]


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


def make_study_task(name: str, T: int | None):
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
