import pytest
import torch

from carousel._config import ConfigError
from carousel.models import ModelOutput
from carousel.tasks import make_task
from carousel.tasks.binary_addition import (
    BinaryAdditionConfig,
    _held_out,
    _values,
    add_bits,
    addition_batch,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def to_int(bits):
    return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def test_add_bits_equals_integer_addition_up_to_64_bits():
    g = gen()
    for n in (1, 8, 64):
        a = torch.randint(0, 2, (20, n), generator=g)
        b = torch.randint(0, 2, (20, n), generator=g)
        s = add_bits(a, b)
        for i in range(20):
            assert to_int(s[i]) == to_int(a[i]) + to_int(b[i])


def test_sequence_layout_delay_and_mask():
    a = torch.tensor([[1, 1, 0]])  # 3
    b = torch.tensor([[1, 0, 1]])  # 5 -> 8 = 0001
    batch = addition_batch(a, b, delay=2)
    assert batch.inputs.shape == (6, 1, 2)  # n + 1 + delay
    assert batch.inputs[:, 0].tolist() == [[1, 1], [1, 0], [0, 1], [0, 0], [0, 0], [0, 0]]
    assert batch.targets[:, 0].tolist() == [0, 0, 0, 0, 0, 1]
    assert batch.mask[:, 0].tolist() == [False, False, True, True, True, True]


def test_valid_numbers_are_held_out_of_training():
    task = make_task("binary-addition")
    train = task.batch("train", 4096, generator=gen())
    valid = next(iter(task.eval_batches("valid", generator=gen(1))))
    a_train = _values(train.inputs[:8, :, 0].T.long())
    a_valid = _values(valid.inputs[:8, :, 0].T.long())
    assert not _held_out(a_train).any() and _held_out(a_valid).all()
    assert 8 <= len(set(a_valid.tolist())) <= 16  # 1/16 of the 256 8-bit numbers


def test_long_split_has_full_carry_ripples_and_no_carry_cases():
    task = make_task("binary-addition", BinaryAdditionConfig(long_size=8))
    batch = next(iter(task.eval_batches("long", generator=gen())))
    sums = batch.targets[2:].T  # (B, 65)
    assert batch.inputs.shape[0] == 64 + 1 + 2
    assert (sums[:2, :64] == 0).all() and (sums[:2, 64] == 1).all()  # a + (2^n - a) = 2^n
    assert (sums[2:4, :64] == 1).all() and (sums[2:4, 64] == 0).all()  # 2^n - 1


def test_same_generator_same_batch():
    task = make_task("binary-addition")
    a, b = task.batch("train", 8, generator=gen(5)), task.batch("train", 8, generator=gen(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_stream_is_one_endless_addition(chunk):
    delay = 2
    task = make_task("binary-addition", BinaryAdditionConfig(delay=delay))
    chunks = [
        c for _, c in zip(range(24 // chunk + 1), task.stream("train", 3, chunk, generator=gen()))
    ]
    x = torch.cat([c.inputs for c in chunks]).long()  # (T, B, 2)
    y = torch.cat([c.targets for c in chunks])
    m = torch.cat([c.mask for c in chunks])
    s = add_bits(x[:, :, 0].T, x[:, :, 1].T)[:, :-1].T  # (T, B), carries run on
    T = x.shape[0]
    assert not m[:delay].any() and m[delay:].all()
    assert (x[8::9] == 0).all()  # each 8-bit addition ends with a zero column
    assert torch.equal(y[delay:], s[: T - delay].float())
    again = task.stream("train", 3, chunk, generator=gen(), start=2)
    assert torch.equal(next(again).inputs, chunks[2].inputs)


def test_metrics_perfect_and_one_wrong_bit():
    task = make_task("binary-addition")
    batch = task.batch("train", 4, generator=gen())
    logits = (batch.targets * 2 - 1) * 5
    assert task.metrics(ModelOutput(logits.unsqueeze(-1)), batch) == {
        "accuracy": 1.0,
        "bit_accuracy": 1.0,
    }
    logits[5, 0] *= -1
    m = task.metrics(ModelOutput(logits.unsqueeze(-1)), batch)
    assert m["accuracy"] == 0.75 and m["bit_accuracy"] == pytest.approx(1 - 1 / (4 * 9))
    # an unscored step does not count
    logits[0, 1] *= -1
    assert task.metrics(ModelOutput(logits.unsqueeze(-1)), batch)["accuracy"] == 0.75


def test_config_errors_all_at_once():
    with pytest.raises(ConfigError) as e:
        BinaryAdditionConfig(train_bits=0, delay=-1)
    assert len(e.value.errors) == 2 and "data.delay must be >= 0, got -1" in str(e.value)


def test_stream_bits_zero_is_one_endless_number():
    task = make_task("binary-addition", BinaryAdditionConfig(stream_bits=0))
    x = torch.cat([next(s).inputs for s in [task.stream("train", 64, 9, generator=gen())]])
    assert x[8].abs().sum() > 0
