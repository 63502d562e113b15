"""Seeded data generators and corpora for sequence tasks, and the task registry.

A *task* (:class:`Task`) bundles seeded data, a model, a loss and metrics for the training
engine; ``carousel tasks`` lists the registered ones and ``carousel train NAME`` trains one.
Modules of this package register their tasks with :func:`register_task` when imported; the
registry imports them all on first use.

Example:
    >>> from carousel.tasks import get_task
    >>> get_task("binary-addition").source.startswith("Hinton")
    True
"""

from carousel.tasks.base import Batch, NoOptions, Task
from carousel.tasks.registry import (
    TaskSpec,
    all_tasks,
    get_task,
    make_task,
    register_task,
    task_names,
)

__all__ = [
    "Batch",
    "NoOptions",
    "Task",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "make_task",
    "register_task",
    "task_names",
]
