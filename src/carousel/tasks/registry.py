"""The task registry: ``carousel tasks`` lists it, ``carousel train NAME`` looks names up.

Task modules in :mod:`carousel.tasks` register their tasks when imported; the registry imports
every module of the package on first use, so a new module needs no edit elsewhere.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from carousel.tasks.base import Task

__all__ = ["TaskSpec", "all_tasks", "get_task", "make_task", "register_task", "task_names"]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    Attributes:
        name: the registry name (``"binary-addition"``).
        cls: the :class:`~carousel.tasks.base.Task` subclass.
        summary: one line: what the model must do.
        source: where the task comes from (paper, section, lecture).
        success: the task's success criterion, as a sentence a user can check.
    """

    name: str
    cls: type[Task]
    summary: str
    source: str
    success: str


_REGISTRY: dict[str, TaskSpec] = {}
_SKIP = {"base", "registry"}
_discovered = False


def register_task(
    name: str, *, summary: str, source: str, success: str
) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that registers a :class:`~carousel.tasks.base.Task` subclass.

    Args:
        name: the registry name, lower case with dashes.
        summary: one line: what the model must do.
        source: the paper, section or lecture the task comes from.
        success: the success criterion.

    Raises:
        ValueError: if ``name`` is taken by another class.
        TypeError: if the decorated object is not a Task subclass.
    """

    def decorate(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}): expected a Task subclass, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"register_task: {name!r} is already registered by {old.cls}")
        cls.name = name
        _REGISTRY[name] = TaskSpec(name, cls, summary, source, success)
        return cls

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import carousel.tasks as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _SKIP:
            continue
        importlib.import_module(f"carousel.tasks.{info.name}")


def all_tasks() -> list[TaskSpec]:
    """Every registered task, sorted by name."""
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def task_names() -> list[str]:
    """The registered names, sorted."""
    return [t.name for t in all_tasks()]


def get_task(name: str) -> TaskSpec:
    """Look a task up by name.

    Raises:
        ValueError: for an unknown name, listing the known ones and the closest match.
    """
    _discover()
    spec = _REGISTRY.get(name)
    if spec is None:
        names = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown task {name!r}{hint}; registered tasks: {', '.join(names)} "
            "(`carousel tasks` describes them)"
        )
    return spec


def make_task(name: str, config: Any = None) -> Task:
    """An instance of the task ``name`` with options ``config`` (its ``Config`` dataclass,
    ``None`` for the defaults)."""
    return get_task(name).cls(config)
