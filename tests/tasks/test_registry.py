"""The task registry, and a sweep over every registered task."""

import math
import shutil

import pytest
import torch

from carousel.models import ModelOutput
from carousel.tasks import Batch, Task, all_tasks, get_task, make_task, register_task, task_names
from carousel.train import load_config


def _needs(name: str) -> list[pytest.MarkDecorator]:
    if name.startswith("speech"):
        reason = "espeak-ng is not installed (apt-get install espeak-ng)"
        return [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason=reason)]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs(n)) for n in task_names()])
def test_every_registered_task_runs_one_batch(name):
    spec = get_task(name)
    assert spec.summary and spec.source and spec.success and spec.cls.name == name
    config = load_config(name)  # the task's defaults, built as the engine builds them
    task = make_task(name, config.data)
    model = task.make_model(config.model, generator=torch.Generator().manual_seed(0))
    batch = task.batch("train", 4, generator=torch.Generator().manual_seed(0))
    assert isinstance(batch, Batch) and batch.batch_size == 4
    out = task.forward(model, batch)
    assert isinstance(out, ModelOutput)
    loss = task.loss(out, batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    for value in task.metrics(out, batch).values():
        assert math.isfinite(value)
    assert task.eval_splits


def test_unknown_task_suggests_a_close_name():
    with pytest.raises(
        ValueError, match=r"unknown task 'binary-adition' \(did you mean 'binary-addition'\?\)"
    ):
        get_task("binary-adition")


def test_registration_errors():
    with pytest.raises(TypeError, match="expected a Task subclass"):
        register_task("not-a-task", summary="s", source="s", success="s")(object)

    class Other(Task):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_task("binary-addition", summary="s", source="s", success="s")(Other)
    assert get_task("binary-addition").cls is not Other


def test_all_tasks_sorted_and_config_type_checked():
    names = [t.name for t in all_tasks()]
    assert names == sorted(names) and "binary-addition" in names
    with pytest.raises(TypeError, match="config must be a BinaryAdditionConfig"):
        make_task("binary-addition", {"train_bits": 8})


def test_batch_shard_select_and_time_slice():
    x = torch.arange(24.0).view(3, 4, 2)
    b = Batch(
        x,
        torch.arange(12.0).view(3, 4),
        torch.ones(3, 4, dtype=torch.bool),
        extras={"n": torch.arange(4)},
    )
    s = b.shard(1, 2)
    assert torch.equal(s.inputs, x[:, 2:]) and torch.equal(s.extras["n"], torch.tensor([2, 3]))
    t = b.time_slice(1, 3)
    assert t.num_steps == 2 and torch.equal(Batch.cat_time(b.time_slice(0, 1), t).inputs, x)
    assert b.tokens == 12
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        b.shard(0, 3)
    per_seq = Batch(x, torch.zeros(4), per_step=False, lengths=torch.tensor([3, 1, 2, 3]))
    assert per_seq.tokens == 9
    with pytest.raises(ValueError, match="needs per-step targets"):
        per_seq.time_slice(0, 1)
