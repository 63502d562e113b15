r"""Binary addition with a recurrent network (Hinton, Neural Networks for Machine Learning,
lecture 7c, "A toy example of training an RNN").

Two numbers are fed in one column at a time, least significant bit first: at step ``t`` the
input is the pair of bits :math:`(a_t, b_t)` and, ``delay`` steps later, the output unit must
give the sum bit :math:`s_t = a_t \oplus b_t \oplus c_t` with carry
:math:`c_{t+1} = \mathrm{maj}(a_t, b_t, c_t)`. The lecture's network has two input units, a few
hidden units and one output unit, and a delay of 2: one step for the hidden units to take in the
inputs, one for them to drive the output. A net that has learned the four-state carry automaton
adds numbers of any length, so carousel trains on short numbers (8 bits by default) and tests
on long ones (64 bits).

A sequence of ``n``-bit numbers has ``T = n + 1 + delay`` steps: the ``n`` input columns, then
zero inputs while the carry-out bit :math:`s_n` and the delayed bits come out. Targets before
step ``delay`` are not scored (``mask``).

Splits:
    - ``"train"``: random ``train_bits``-bit pairs whose first number is *not* in the held-out
      sixteenth of the ``train_bits``-bit numbers (for ``4 <= train_bits <= 20``; beyond that a
      repeat is improbable anyway);
    - ``"valid"``: ``valid_size`` pairs of ``train_bits``-bit numbers whose first number *is*
      held out, so the net has never seen them;
    - ``"long"``: ``long_size`` pairs of ``test_bits``-bit numbers: half uniform, a quarter with
      ``b = 2^n - a`` (a carry ripples through every column), a quarter with
      ``b = 2^n - 1 - a`` (no carry at all);
    - ``"stream"``: 64 streams of 512 columns of the stream mode below, run with the state
      carried from number to number (never reset): ``stream_size`` additions in all.

Stream mode (:meth:`BinaryAddition.stream`, for truncated BPTT) feeds ``B`` endless streams of
columns: ``stream_bits``-bit numbers, each followed by one zero column in which the carry comes
out, back to back, so the carry and the delayed sum bits run across the chunk boundaries and the
network's state must be carried from chunk to chunk. (With ``stream_bits = 0`` the stream is one
endless addition; its sum bits are then the parity of three random bits with no first step
free of a carry, which gradient descent barely starts to learn.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._config import Checks
from carousel.models import ModelConfig, ModelOutput, SequenceModel
from carousel.tasks.base import Batch, Task
from carousel.tasks.registry import register_task

__all__ = ["BinaryAddition", "BinaryAdditionConfig", "add_bits", "addition_batch"]

_HELD_OUT_MIN_BITS, _HELD_OUT_MAX_BITS = 4, 20
_EVAL_BATCH = 1024
_STREAM_B, _STREAM_CHUNK, _STREAM_CHUNKS = 64, 64, 8


@dataclass(frozen=True)
class BinaryAdditionConfig:
    """Options of the binary addition task (the ``[data]`` table)."""

    # bits of the numbers added in training
    train_bits: int = 8
    # bits of the numbers of the "long" held-out split
    test_bits: int = 64
    # steps from an input column to its sum bit at the output (lecture 7c: 2)
    delay: int = 2
    # additions in the "valid" split (train_bits-bit, first number never trained on)
    valid_size: int = 4096
    # additions in the "long" split (test_bits-bit)
    long_size: int = 2048
    # stream mode (train.tbptt_k1): bits of the numbers added back to back (0: one endless sum)
    stream_bits: int = 8

    def __post_init__(self) -> None:
        c = Checks("data")
        c.positive_int("train_bits", self.train_bits)
        c.positive_int("test_bits", self.test_bits)
        c.positive_int("delay", self.delay, minimum=0)
        c.positive_int("valid_size", self.valid_size)
        c.positive_int("long_size", self.long_size)
        c.positive_int("stream_bits", self.stream_bits, minimum=0)
        c.done()


def add_bits(a: Tensor, b: Tensor) -> Tensor:
    """Sum of binary numbers given as bits, least significant first.

    Args:
        a, b: ``(B, n)`` integer tensors of 0/1 bits.

    Returns:
        ``(B, n + 1)`` sum bits (the last one is the carry out).
    """
    B, n = a.shape
    s = torch.zeros(B, n + 1, dtype=torch.long, device=a.device)
    carry = torch.zeros(B, dtype=torch.long, device=a.device)
    for i in range(n):
        total = a[:, i] + b[:, i] + carry
        s[:, i] = total % 2
        carry = total // 2
    s[:, n] = carry
    return s


def addition_batch(a: Tensor, b: Tensor, delay: int) -> Batch:
    """The sequences that add the bit rows of ``a`` and ``b`` (``(B, n)``, LSB first).

    Returns:
        :class:`Batch` with ``inputs`` ``(n+1+delay, B, 2)``, ``targets`` and ``mask``
        ``(n+1+delay, B)``.
    """
    B, n = a.shape
    s = add_bits(a, b)  # (B, n+1)
    T = n + 1 + delay
    x = torch.zeros(T, B, 2)
    x[:n, :, 0] = a.T.float()
    x[:n, :, 1] = b.T.float()
    y = torch.zeros(T, B)
    y[delay:] = s.T.float()
    mask = torch.zeros(T, B, dtype=torch.bool)
    mask[delay:] = True
    return Batch(x, y, mask)


def _values(bits: Tensor) -> Tensor:
    """Integer values of ``(B, n)`` bit rows, LSB first (n <= 62)."""
    weights = 2 ** torch.arange(bits.shape[1], dtype=torch.long)
    return (bits * weights).sum(1)


def _held_out(values: Tensor) -> Tensor:
    """Whether each number is in the held-out sixteenth (a fixed multiplicative hash)."""
    return ((values * 2654435761) >> 11) % 16 == 0


def _bits_of(values: Tensor, n: int) -> Tensor:
    return (values.unsqueeze(1) >> torch.arange(n, dtype=torch.long)) & 1


@register_task(
    "binary-addition",
    summary="add two binary numbers fed least significant bit first; the sum bit comes "
    "`delay` steps later",
    source="Hinton, Neural Networks for Machine Learning, lecture 7c (an RNN that learns the "
    "carry automaton of binary addition)",
    success="every sum bit right (accuracy 1.0) on held-out 64-bit numbers after training on "
    "8-bit ones",
)
class BinaryAddition(Task):
    """Binary addition, lecture 7c (see the module docstring for the data)."""

    Config = BinaryAdditionConfig
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "model": {"cell": "rnn", "hidden_size": 16},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {
            "steps": 1000,
            "batch_size": 128,
            "eval_every": 250,
            "checkpoint_every": 500,
            "threads": 1,
        },
    }
    # a stream (train.tbptt_k1) made before data.stream_bits existed (896024e) was one
    # endless addition, which stream_bits = 0 gives; its default is 8
    predating: ClassVar[dict[str, dict[str, Any]]] = {"data": {"stream_bits": 0}}
    eval_splits = ("valid", "long", "stream")
    primary_metric = "accuracy"

    config: BinaryAdditionConfig

    def make_model(
        self,
        config: ModelConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SequenceModel:
        """A :class:`~carousel.models.SequenceModel` with 2 inputs and 1 output logit per step."""
        return SequenceModel(
            2, 1, config, readout="per-step", generator=generator, device=device, dtype=dtype
        )

    def describe_split(self, split: str) -> str:
        if split == "valid":
            held = " never trained on" if self._uses_held_out(self.config.train_bits) else ""
            return f"{self.config.train_bits}-bit numbers{held}"
        if split == "long":
            return f"{self.config.test_bits}-bit numbers"
        if split == "stream":
            return f"{self.config.stream_bits}-bit numbers back to back, state never reset"
        return split

    # ------------------------------------------------------------------ data
    def _uses_held_out(self, n: int) -> bool:
        return _HELD_OUT_MIN_BITS <= n <= _HELD_OUT_MAX_BITS

    def _pairs(self, split: str, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if split == "long":
            n = cfg.test_bits
            a = torch.randint(0, 2, (count, n), generator=generator)
            b = torch.randint(0, 2, (count, n), generator=generator)
            q = count // 4
            one = torch.zeros(q, n, dtype=torch.long)
            one[:, 0] = 1
            b[:q] = add_bits(1 - a[:q], one)[:, :n]  # 2^n - a: carries ripple all along
            b[q : 2 * q] = 1 - a[q : 2 * q]  # 2^n - 1 - a: no carry anywhere
            return a, b
        n = cfg.train_bits
        b = torch.randint(0, 2, (count, n), generator=generator)
        if not self._uses_held_out(n):
            return torch.randint(0, 2, (count, n), generator=generator), b
        numbers = torch.arange(2**n, dtype=torch.long)
        pool = numbers[_held_out(numbers) == (split == "valid")]
        a = pool[torch.randint(0, len(pool), (count,), generator=generator)]
        return _bits_of(a, n), b

    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        if split not in ("train", "valid", "long"):
            raise ValueError(f"binary-addition: unknown split {split!r}")
        a, b = self._pairs(split, batch_size, generator)
        return addition_batch(a, b, self.config.delay)

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterator[Batch]:
        size = self.config.valid_size if split == "valid" else self.config.long_size
        a, b = self._pairs(split, size, generator)
        for i in range(0, size, _EVAL_BATCH):
            yield addition_batch(a[i : i + _EVAL_BATCH], b[i : i + _EVAL_BATCH], self.config.delay)

    def stream(
        self,
        split: str,
        batch_size: int,
        chunk_len: int,
        *,
        generator: torch.Generator,
        start: int = 0,
    ) -> Iterator[Batch]:
        """``batch_size`` endless streams of ``stream_bits``-bit additions, each followed by a
        zero column, ``chunk_len`` columns per chunk; the carry and the ``delay`` pending sum
        bits run on from chunk to chunk."""
        delay, period = self.config.delay, self.config.stream_bits + 1
        carry = torch.zeros(batch_size, dtype=torch.long)
        pending = torch.zeros(delay, batch_size)
        k = 0
        while True:
            ab = torch.randint(0, 2, (chunk_len, batch_size, 2), generator=generator)
            steps = k * chunk_len + torch.arange(chunk_len)
            if period > 1:
                ab[steps % period == period - 1] = 0  # the column where the carry comes out
            s = torch.empty(chunk_len, batch_size)
            for t in range(chunk_len):
                total = ab[t, :, 0] + ab[t, :, 1] + carry
                s[t] = (total % 2).float()
                carry = total // 2
            ready = torch.cat([pending, s])  # (delay + L, B)
            targets, pending = ready[:chunk_len], ready[chunk_len:]
            mask = (steps >= delay).unsqueeze(1).expand(chunk_len, batch_size)
            if k >= start:
                yield Batch(ab.float(), targets, mask.clone())
            k += 1

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: str,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, float]:
        """As :meth:`Task.evaluate`; the ``"stream"`` split runs 64 streams of 512 columns
        with the state carried, and counts an addition right if all its sum bits are."""
        if split != "stream":
            return super().evaluate(model, split, generator=generator, device=device, dtype=dtype)
        was_training = model.training
        model.eval()
        state = None
        outs: list[Tensor] = []
        chunks: list[Batch] = []
        masks: list[Tensor] = []
        try:
            stream = self.stream(split, _STREAM_B, _STREAM_CHUNK, generator=generator)
            for _ in range(_STREAM_CHUNKS):
                chunk = next(stream).to(device, dtype)
                assert chunk.mask is not None  # stream() masks every chunk
                masks.append(chunk.mask)
                out = self.forward(model, chunk, state)
                state = out.state
                outs.append(out.output)
                chunks.append(chunk)
        finally:
            model.train(was_training)
        logits = torch.cat(outs).squeeze(-1)  # (T, B)
        mask = torch.cat(masks)
        batch = Batch(
            torch.cat([c.inputs for c in chunks]), torch.cat([c.targets for c in chunks]), mask
        )
        loss = float(self.loss(ModelOutput(logits.unsqueeze(-1)), batch))
        right = ((logits > 0).to(batch.targets.dtype) == batch.targets) | ~mask  # (T, B)
        delay, period = self.config.delay, self.config.stream_bits + 1
        T = right.shape[0]
        numbers = (T - delay) // period  # complete additions whose sum bits are all out
        per_number = right[delay : delay + numbers * period].reshape(numbers, period, -1)
        scored = mask.sum().clamp(min=1)
        return {
            "loss": loss,
            "accuracy": float(per_number.all(1).float().mean()),
            "bit_accuracy": float((right & mask).sum() / scored),
        }

    # ------------------------------------------------------------------ objective
    curvature_loss = "binary_cross_entropy"

    def curvature_outputs(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The logits of the scored steps, ``(N, 1)`` (see :meth:`Task.curvature_outputs`)."""
        logits = output.output  # (T, B, 1)
        mask = batch.mask
        return logits if mask is None else logits[mask]

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        """Binary cross-entropy of the output logits on the scored steps (mean)."""
        logits = output.output.squeeze(-1)  # (T, B)
        mask = batch.mask
        if mask is None or bool(mask.all()):
            return F.binary_cross_entropy_with_logits(logits, batch.targets)
        return F.binary_cross_entropy_with_logits(logits[mask], batch.targets[mask])

    @torch.no_grad()
    def metrics(self, output: ModelOutput, batch: Batch) -> dict[str, float]:
        """``bit_accuracy``: fraction of scored sum bits right; ``accuracy``: fraction of
        additions (sequences) with every scored bit right."""
        right = (output.output.squeeze(-1) > 0).to(batch.targets.dtype) == batch.targets
        mask = batch.mask if batch.mask is not None else torch.ones_like(right)
        bits = (right & mask).sum() / mask.sum().clamp(min=1)
        whole = (right | ~mask).all(0).float().mean()
        return {"accuracy": float(whole), "bit_accuracy": float(bits)}
