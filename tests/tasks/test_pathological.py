"""The pathological problems of Martens & Sutskever 2011: shapes, determinism, the papers'
definitions, success tests and errors. Every task in PATHOLOGICAL_TASKS is swept."""

import math

import pytest
import torch
import torch.nn.functional as F

from carousel.optim import MATCHING_LOSSES, matching_loss
from carousel.tasks.pathological import (
    PATHOLOGICAL_TASKS,
    XOR,
    Addition,
    Memorisation,
    Multiplication,
    RandomPermutation,
    TemporalOrder,
    TemporalOrder3,
    generate,
    make_pathological,
)

NAMES = sorted(PATHOLOGICAL_TASKS)


def _oracle_outputs(task, batch):
    """Outputs (T, B, O) that answer every scored step right."""
    T, B = batch.mask.shape
    out = torch.zeros(T, B, task.output_size)
    if task.readout == "last":
        rows = torch.arange(B)
        last = batch.lengths - 1
        if task.kind == "classification":
            out[last, rows, batch.targets] = 10.0
        elif task.kind == "binary":
            out[last, rows, 0] = 10.0 * (2 * batch.targets[:, 0] - 1)
        else:
            out[last, rows] = batch.targets
        return out
    return F.one_hot(batch.targets, task.output_size).float() * 10.0


@pytest.mark.parametrize("name", NAMES)
def test_every_task_shapes_determinism_and_scoring(name):
    task = make_pathological(name, 30)
    b = task.sample(16, seed=3)
    T = b.inputs.shape[0]
    assert b.inputs.shape == (T, 16, task.input_size) and b.inputs.dtype == torch.float32
    assert b.mask.shape == (T, 16) and b.mask.dtype == torch.bool
    assert b.lengths.shape == (16,) and int(b.lengths.max()) == T
    assert task.loss_name in MATCHING_LOSSES and task.lag == 30
    if task.readout == "last":
        assert torch.equal(b.mask.sum(0), torch.ones(16, dtype=torch.long))
        assert torch.equal(b.mask.float().argmax(0), b.lengths - 1)
        assert b.targets.shape[0] == 16
    else:
        assert b.targets.shape[:2] == (T, 16)
    steps = torch.arange(T).unsqueeze(1)
    assert bool((b.inputs[steps >= b.lengths] == 0).all())  # zero past each end
    # pure: the same seed or generator state gives the same batch, another seed another one
    again = task.sample(16, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(b, again))
    other = task.sample(16, seed=4)
    assert not torch.equal(b.inputs, other.inputs)
    assert all(torch.equal(x, y) for x, y in zip(b, generate(name, 30, 16, seed=3)))
    # scoring: the oracle passes, all-zero outputs fail somewhere, the loss is the matching loss
    good = _oracle_outputs(task, b)
    assert bool(task.correct(good, b).all()) and task.error_rate(good, b) == 0.0
    assert task.solved(good, b)
    zero = torch.zeros_like(good)
    assert not task.solved(zero, b)
    rows = task.rows(zero, b)
    assert rows.dim() == 2 and rows.shape[-1] == task.output_size
    expected = matching_loss(task.loss_name, rows, task.row_targets(b))
    assert float(task.loss(zero, b)) == pytest.approx(float(expected))
    assert float(task.loss(good, b)) < float(task.loss(zero, b))


@pytest.mark.parametrize("T", [10, 100, 400])
def test_addition_and_multiplication_follow_the_definition(T):
    b = Addition(T).sample(300, seed=0)
    L = b.inputs.shape[0]
    assert bool((b.lengths >= T).all()) and bool((b.lengths <= T + T // 10).all())
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    marked = markers == 1.0
    assert torch.equal(marked.sum(0), torch.full((300,), 2))
    pos = torch.stack([torch.nonzero(marked[:, i]).squeeze(-1) for i in range(300)], 1)  # (2, B)
    assert bool((pos[0] < math.ceil(T / 10)).all())
    assert bool((pos[1] >= math.ceil(T / 10)).all() and (pos[1] < math.ceil(T / 2)).all())
    cols = torch.arange(300)
    a, c = values[pos[0], cols], values[pos[1], cols]
    torch.testing.assert_close(b.targets[:, 0], a + c)
    assert bool((values >= 0).all() and (values <= 1).all())
    # markers -1 at the first and the last step unless marked
    first_unmarked = pos[0] != 0
    assert bool((markers[0, first_unmarked] == -1).all())
    assert bool((markers[b.lengths - 1, cols] == -1).all())
    assert L == int(b.lengths.max())
    m = Multiplication(T).sample(300, seed=0)
    torch.testing.assert_close(m.targets[:, 0], a * c)  # same draws, other target


def test_xor_values_are_bits_and_target_their_xor():
    b = XOR(50).sample(200, seed=1)
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    steps = torch.arange(values.shape[0]).unsqueeze(1)
    valid = steps < b.lengths
    assert set(values[valid].unique().tolist()) <= {0.0, 1.0}
    pos = torch.stack([torch.nonzero(markers[:, i] == 1).squeeze(-1) for i in range(200)], 1)
    cols = torch.arange(200)
    want = (values[pos[0], cols] != values[pos[1], cols]).float()
    assert torch.equal(b.targets[:, 0], want)
    assert 0.3 < float(want.mean()) < 0.7


@pytest.mark.parametrize("cls", [TemporalOrder, TemporalOrder3])
@pytest.mark.parametrize("T", [20, 100, 300])
def test_temporal_order_follows_hochreiter_schmidhuber(cls, T):
    task = cls(T)
    b = task.sample(256, seed=2)
    sym = b.inputs.argmax(-1)  # (T, B)
    cols = torch.arange(256)
    assert bool((sym[0] == 6).all()) and bool((sym[b.lengths - 1, cols] == 7).all())
    relevant = (sym == 4) | (sym == 5)
    n = len(cls.windows)
    assert torch.equal(relevant.sum(0), torch.full((256,), n))
    label = torch.zeros(256, dtype=torch.long)
    for i in range(256):
        p = torch.nonzero(relevant[:, i]).squeeze(-1)
        for k, (lo, hi) in enumerate(cls.windows):
            assert round(lo * T) <= int(p[k]) <= round(hi * T)
        for k in range(n):
            label[i] = label[i] * 2 + (sym[p[k], i] - 4)
    assert torch.equal(label, b.targets)
    assert task.output_size == 2**n
    assert set(b.targets.tolist()) == set(range(2**n))


def test_random_permutation_predicts_next_symbol_and_recalls_the_first():
    task = RandomPermutation(40)
    b = task.sample(64, seed=5)
    sym = b.inputs.argmax(-1)  # (T, B)
    assert b.inputs.shape == (40, 64, 100)
    assert bool((sym[0] <= 1).all()) and bool((sym[1:] >= 2).all())
    assert torch.equal(b.targets[:-1], sym[1:]) and torch.equal(b.targets[-1], sym[0])
    assert bool(b.mask.all())
    # only the last step counts for success: wrong next-symbol guesses do not matter
    out = torch.zeros(40, 64, 100)
    out[-1, torch.arange(64), sym[0]] = 5.0
    assert bool(task.correct(out, b).all())


def test_memorisation_layout():
    task = Memorisation(12, pattern_length=3, alphabet=5)
    b = task.sample(32, seed=0)
    L = 12 + 2 * 3
    assert b.inputs.shape == (L, 32, 7) and task.output_size == 6
    sym = b.inputs.argmax(-1)
    blank, go = 5, 6
    assert bool((sym[:3] < 5).all())
    assert bool((sym[3 : 12 + 3] == blank).all()) and bool((sym[15] == go).all())
    assert bool((sym[16:] == blank).all())
    assert bool((b.targets[:15] == 5).all()) and torch.equal(b.targets[15:], sym[:3])
    # one wrong step fails the sequence
    out = _oracle_outputs(task, b)
    out[4, 0] = 0.0
    out[4, 0, 0] = 10.0
    ok = task.correct(out, b)
    assert not bool(ok[0]) and bool(ok[1:].all())


def test_errors():
    with pytest.raises(ValueError, match="T must be >= 10, got 5"):
        Addition(5)
    with pytest.raises(TypeError, match="T must be an int"):
        TemporalOrder(20.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        XOR(20).sample(0)
    with pytest.raises(ValueError, match="symbols must be >= 3"):
        RandomPermutation(20, symbols=2)
    with pytest.raises(ValueError, match="alphabet must be >= 2"):
        Memorisation(20, alphabet=1)
    with pytest.raises(ValueError, match="unknown task 'adding'"):
        make_pathological("adding", 20)
    task = Addition(20)
    b = task.sample(4, seed=0)
    with pytest.raises(ValueError, match=r"expected outputs of shape \(T, B, O\)"):
        task.loss(torch.zeros(b.inputs.shape[0], 4, 2), b)


@pytest.mark.gpu
def test_device():
    b = Addition(20).sample(4, seed=0, device="cuda")
    assert all(t.device.type == "cuda" for t in b)
