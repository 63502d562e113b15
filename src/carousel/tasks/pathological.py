r"""The pathological long-time-lag problems of Martens & Sutskever 2011 and Sutskever et al.
2013, with the minimal time lag ``T`` as a parameter.

Martens & Sutskever 2011 ("Learning recurrent neural networks with Hessian-free
optimization", ICML, section 4.1 and its appendix) trained RNNs on seven synthetic problems,
most of them from Hochreiter & Schmidhuber 1997 (section 5) scaled to an arbitrary lag ``T``;
Sutskever, Martens, Dahl & Hinton 2013 ("On the importance of initialization and momentum in
deep learning", ICML, section 4) reused them. The generators here follow the papers and the
generators the authors released with them (values, symbols, marker conventions, where the
loss applies and the per-sequence success tests):

==================================  ================  =======  =============  ================
name                                origin            readout  loss           success test
==================================  ================  =======  =============  ================
``addition-martens2011``            H&S exp. 4        last     mse            \|error\| < 0.04
``multiplication-martens2011``      H&S exp. 5        last     mse            \|error\| < 0.04
``xor-martens2011``                 M&S               last     binary CE      sign right
``temporal-order-martens2011``      H&S exp. 6a       last     CE, 4 classes  arg-max right
``temporal-order-3-martens2011``    H&S exp. 6b       last     CE, 8 classes  arg-max right
``random-permutation-martens2011``  M&S (H&S exp. 2)  all      CE, 100        last arg-max
``memorisation-martens2011``        M&S               all      CE             all arg-max
==================================  ================  =======  =============  ================

(H&S: Hochreiter & Schmidhuber 1997; M&S: Martens & Sutskever 2011; CE: softmax and
cross-entropy; binary CE: logistic and binary cross-entropy; mse: linear and squared error.)

The names carry the paper, as in :mod:`carousel.tasks.longlag` (``adding-1997`` is the 1997
definition); :func:`make_pathological` also takes them without the ``-martens2011`` suffix.

A run counts as solved when at most 1% of held-out sequences fail the per-sequence test
(:attr:`PathologicalTask.success_threshold`; carousel's threshold, stated because the papers
report curves rather than one rule).

Conventions (shape letters of STYLE.md, the same as :mod:`carousel.tasks.longlag`): a batch
(:class:`PathologicalBatch`) holds ``inputs`` ``(T, B, I)``, zero past each sequence's end;
``targets`` ``(B, O)`` / ``(B,)`` for ``readout == "last"`` and ``(T, B, O)`` / ``(T, B)`` for
``readout == "all"`` (float for regression and XOR, int64 class indices otherwise);
``lengths`` ``(B,)``; ``mask`` ``(T, B)``, True where an output is scored. A model produces
``(T, B, O)`` outputs; :meth:`PathologicalTask.rows` picks the scored rows ``(N, O)``, the
outputs a Hessian-free model function returns (:class:`carousel.optim.HessianFree`), and
:attr:`PathologicalTask.loss_name` names the matching loss.

Every generator is a pure function of its ``torch.Generator`` (or ``seed``): the same state
gives the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = [
    "PATHOLOGICAL_TASKS",
    "XOR",
    "Addition",
    "Memorisation",
    "Multiplication",
    "PathologicalBatch",
    "PathologicalTask",
    "RandomPermutation",
    "TemporalOrder",
    "TemporalOrder3",
    "generate",
    "make_pathological",
]


class PathologicalBatch(NamedTuple):
    """One batch of a pathological problem (the fields of
    :class:`carousel.tasks.longlag.LongLagBatch`).

    Attributes:
        inputs: ``(T, B, I)`` float, zero past each sequence's end.
        targets: ``(B, O)`` / ``(B,)`` for ``readout == "last"``; ``(T, B, O)`` / ``(T, B)``
            for ``readout == "all"``.
        lengths: ``(B,)`` int64.
        mask: ``(T, B)`` bool, True where an output is scored (for ``"last"`` tasks exactly
            at ``lengths - 1``).
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor
    mask: Tensor


def _randint(
    low: Tensor | int, high: Tensor | int, size: int, generator: torch.Generator | None
) -> Tensor:
    """Integers uniform in ``[low, high)`` (elementwise bounds), drawn on the CPU."""
    low_t = torch.as_tensor(low, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64)
    u = torch.rand(size, generator=generator, dtype=torch.float64)
    return (low_t + torch.floor(u * (high_t - low_t))).long()


def _gather_last(outputs: Tensor, lengths: Tensor) -> Tensor:
    idx = (lengths.to(outputs.device) - 1).view(1, -1, 1).expand(1, -1, outputs.shape[-1])
    return outputs.gather(0, idx).squeeze(0)  # (B, O)


@dataclass(frozen=True)
class PathologicalTask:
    """Base class: a seeded generator with its loss and success test.

    Attributes:
        name: the name in :data:`PATHOLOGICAL_TASKS`.
        source: the paper (and section) of the definition.
        kind: ``"regression"``, ``"classification"`` or ``"binary"``.
        readout: ``"last"`` (scored at each sequence's end) or ``"all"`` (scored where
            ``mask`` is True).
        loss_name: the matching loss (:data:`carousel.optim.MATCHING_LOSSES`).
        criterion: the per-sequence success test in words.
        success_threshold: largest fraction of failed sequences for a solved run.
    """

    T: int = 100

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    kind: ClassVar[str] = "regression"
    readout: ClassVar[str] = "last"
    loss_name: ClassVar[str] = "mse"
    criterion: ClassVar[str] = ""
    success_threshold: ClassVar[float] = 0.01
    min_T: ClassVar[int] = 10

    def __post_init__(self) -> None:
        check_positive_int(type(self).__name__, "T", self.T, minimum=self.min_T)

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def lag(self) -> int:
        """The time-lag parameter ``T``."""
        return self.T

    def sample(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> PathologicalBatch:
        """Draw a batch.

        Args:
            batch_size: ``B``.
            generator: the random stream (CPU); takes precedence over ``seed``.
            seed: seed of a fresh generator, if no ``generator`` is given; with neither,
                torch's global generator is used.
            device: where the returned tensors live.
            dtype: floating-point dtype of ``inputs`` (and float targets).

        Returns:
            A :class:`PathologicalBatch`.

        Raises:
            TypeError, ValueError: if ``batch_size`` is not a positive int.
        """
        check_positive_int(type(self).__name__, "batch_size", batch_size)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        inputs, targets, lengths, mask = self._sample(batch_size, generator)
        inputs = inputs.to(device=device, dtype=dtype)
        targets = targets.to(device=device, dtype=dtype if targets.is_floating_point() else None)
        return PathologicalBatch(inputs, targets, lengths.to(device), mask.to(device))

    def _sample(self, B: int, generator: torch.Generator | None) -> PathologicalBatch:
        raise NotImplementedError

    # ------------------------------------------------------------------ scoring
    def _check_outputs(self, outputs: Tensor, batch: PathologicalBatch) -> None:
        T, B = batch.mask.shape
        want = (T, B, self.output_size)
        if tuple(outputs.shape) != want:
            raise ValueError(
                f"{type(self).__name__}: expected outputs of shape (T, B, O) = {want}, got "
                f"{tuple(outputs.shape)}"
            )

    def scored(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        """``(B, O)`` outputs at each sequence's end for ``"last"`` tasks, else ``outputs``."""
        self._check_outputs(outputs, batch)
        if self.readout == "last":
            return _gather_last(outputs, batch.lengths)
        return outputs

    def rows(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        """The scored outputs as rows ``(N, O)``: ``(B, O)`` for ``"last"`` tasks, the
        ``mask``-selected steps for ``"all"`` tasks."""
        y = self.scored(outputs, batch)
        return y if self.readout == "last" else y[batch.mask.to(y.device)]

    def row_targets(self, batch: PathologicalBatch) -> Tensor:
        """The targets of :meth:`rows`."""
        t = batch.targets
        return t if self.readout == "last" else t[batch.mask]

    def loss(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        """The training loss: the matching loss :attr:`loss_name` averaged over the scored
        outputs (``F.mse_loss``, ``F.cross_entropy`` or
        ``F.binary_cross_entropy_with_logits``).

        Args:
            outputs: ``(T, B, O)`` raw outputs (logits for the cross-entropies).
            batch: the batch they answer.
        """
        y, t = self.rows(outputs, batch), self.row_targets(batch)
        if self.loss_name == "mse":
            return F.mse_loss(y, t)
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(y, t)
        return F.binary_cross_entropy_with_logits(y, t)

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        """The per-sequence success test (:attr:`criterion`): ``(B,)`` bool."""
        raise NotImplementedError

    def error_rate(self, outputs: Tensor, batch: PathologicalBatch) -> float:
        """Fraction of sequences failing :meth:`correct`."""
        return 1.0 - float(self.correct(outputs, batch).float().mean())

    def solved(self, outputs: Tensor, batch: PathologicalBatch) -> bool:
        """Whether at most :attr:`success_threshold` of the sequences fail."""
        return self.error_rate(outputs, batch) <= self.success_threshold


# ---------------------------------------------------------------------------------------------
# addition, multiplication, XOR: two marked operands
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Addition(PathologicalTask):
    r"""The addition problem (Hochreiter & Schmidhuber 1997, section 5.4, experiment 4), as
    Martens & Sutskever 2011 (section 4.1) scale it to a lag ``T``.

    Each step carries two inputs: a value drawn uniformly from ``[0, 1]`` and a marker. The
    length is drawn uniformly from ``[T, T + T/10]``. Two steps are marked (marker 1): the
    first uniformly among the first ``T/10`` steps, the second uniformly among steps
    ``[T/10, T/2)``, so the lag to the end is at least ``T/2``. The markers of the first and
    the last step are -1 unless marked (the 1997 convention). The only target, at the last
    step, is the sum of the two marked values, :math:`y = a + b \in [0, 2]`; a linear output
    trained on squared error. Success test: absolute error below 0.04 (the 1997 criterion).
    Predicting the mean scores a mean squared error of 1/6.

    Args:
        T: minimal sequence length (``T >= 10``).
    """

    name: ClassVar[str] = "addition-martens2011"
    source: ClassVar[str] = (
        "Martens & Sutskever 2011, ICML, sec. 4.1; Hochreiter & Schmidhuber 1997, exp. 4"
    )
    kind: ClassVar[str] = "regression"
    loss_name: ClassVar[str] = "mse"
    criterion: ClassVar[str] = "absolute error at the sequence end < 0.04"
    tolerance: ClassVar[float] = 0.04

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    def _values(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.rand(shape, generator=generator)

    def _combine(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def _sample(self, B: int, generator: torch.Generator | None) -> PathologicalBatch:
        T = self.T
        lengths = _randint(T, T + T // 10 + 1, B, generator)  # (B,)
        Tmax = int(lengths.max())
        cols = torch.arange(B)
        values = self._values((Tmax, B), generator)  # (T, B)
        p1 = _randint(0, math.ceil(T / 10), B, generator)  # among the first T/10 steps
        p2 = _randint(math.ceil(T / 10), math.ceil(T / 2), B, generator)  # in [T/10, T/2)
        markers = torch.zeros(Tmax, B)
        markers[0] = -1.0
        markers[lengths - 1, cols] = -1.0
        markers[p1, cols] = 1.0
        markers[p2, cols] = 1.0
        steps = torch.arange(Tmax).unsqueeze(1)  # (T, 1)
        valid = steps < lengths.unsqueeze(0)  # (T, B)
        inputs = torch.stack([values * valid, markers * valid], -1)  # (T, B, 2)
        target = self._combine(values[p1, cols], values[p2, cols]).unsqueeze(-1)  # (B, 1)
        mask = steps == (lengths - 1).unsqueeze(0)
        return PathologicalBatch(inputs, target, lengths, mask)

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        err = (self.scored(outputs, batch) - batch.targets).abs().squeeze(-1)
        return err < self.tolerance


@dataclass(frozen=True)
class Multiplication(Addition):
    r"""The multiplication problem (Hochreiter & Schmidhuber 1997, section 5.5, experiment 5)
    in Martens & Sutskever 2011's form: as :class:`Addition`, with target :math:`y = ab \in
    [0, 1]`. Success test: absolute error below 0.04.

    Args:
        T: minimal sequence length (``T >= 10``).
    """

    name: ClassVar[str] = "multiplication-martens2011"
    source: ClassVar[str] = (
        "Martens & Sutskever 2011, ICML, sec. 4.1; Hochreiter & Schmidhuber 1997, exp. 5"
    )

    def _combine(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


@dataclass(frozen=True)
class XOR(Addition):
    r"""The XOR problem of Martens & Sutskever 2011 (section 4.1): as :class:`Addition`, with
    values drawn uniformly from ``{0, 1}`` and target :math:`y = a \oplus b`; a logistic output
    trained on binary cross-entropy. Unlike addition it cannot be learned one operand at a time
    (the second bit alone says nothing about the target). Success test: the sign of the
    output's logit matches the target.

    Args:
        T: minimal sequence length (``T >= 10``).
    """

    name: ClassVar[str] = "xor-martens2011"
    source: ClassVar[str] = "Martens & Sutskever 2011, ICML, sec. 4.1"
    kind: ClassVar[str] = "binary"
    loss_name: ClassVar[str] = "binary_cross_entropy"
    criterion: ClassVar[str] = "sign of the logit at the sequence end matches the target bit"

    def _values(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator).float()

    def _combine(self, a: Tensor, b: Tensor) -> Tensor:
        return (a != b).float()

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        y = self.scored(outputs, batch).squeeze(-1)
        return (y > 0) == (batch.targets.squeeze(-1) > 0.5)


# ---------------------------------------------------------------------------------------------
# temporal order with 2 and 3 relevant symbols
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemporalOrder(PathologicalTask):
    r"""The temporal order problem (Hochreiter & Schmidhuber 1997, section 5.6, experiment 6a)
    scaled to a lag ``T`` as in Martens & Sutskever 2011 (section 4.1).

    Eight symbols, one-hot: distractors ``a, b, c, d`` (0-3), the relevant ``X, Y`` (4, 5), a
    start symbol ``E`` (6) and an end symbol ``B`` (7). The length is drawn uniformly from
    ``[T, T + T/10]``; the first step is ``E``, the last ``B``, every other step a random
    distractor, except at the relevant positions, which hold ``X`` or ``Y``: one uniformly in
    ``[0.1T, 0.2T]`` and one in ``[0.5T, 0.6T]`` (the 1997 windows ``[10, 20]`` and ``[50,
    60]`` at ``T = 100``). The class at the last step is the order of the relevant symbols:
    ``XX, XY, YX, YY`` (first symbol most significant); softmax with cross-entropy. Success
    test: the arg-max class is right.

    Args:
        T: minimal sequence length (``T >= 10``).
    """

    name: ClassVar[str] = "temporal-order-martens2011"
    source: ClassVar[str] = (
        "Martens & Sutskever 2011, ICML, sec. 4.1; Hochreiter & Schmidhuber 1997, exp. 6a"
    )
    kind: ClassVar[str] = "classification"
    loss_name: ClassVar[str] = "cross_entropy"
    criterion: ClassVar[str] = "arg-max class at the sequence end is right"
    windows: ClassVar[tuple[tuple[float, float], ...]] = ((0.1, 0.2), (0.5, 0.6))

    @property
    def input_size(self) -> int:
        return 8

    @property
    def output_size(self) -> int:
        return 2 ** len(self.windows)

    def _sample(self, B: int, generator: torch.Generator | None) -> PathologicalBatch:
        T = self.T
        lengths = _randint(T, T + T // 10 + 1, B, generator)  # (B,)
        Tmax = int(lengths.max())
        cols = torch.arange(B)
        symbols = torch.randint(0, 4, (Tmax, B), generator=generator)  # (T, B) distractors
        symbols[0] = 6  # E
        symbols[lengths - 1, cols] = 7  # B
        label = torch.zeros(B, dtype=torch.long)
        for lo, hi in self.windows:
            pos = _randint(round(lo * T), round(hi * T) + 1, B, generator)
            bit = torch.randint(0, 2, (B,), generator=generator)
            symbols[pos, cols] = 4 + bit
            label = label * 2 + bit
        steps = torch.arange(Tmax).unsqueeze(1)
        valid = steps < lengths.unsqueeze(0)  # (T, B)
        inputs = F.one_hot(symbols, 8).float() * valid.unsqueeze(-1)  # (T, B, 8)
        mask = steps == (lengths - 1).unsqueeze(0)
        return PathologicalBatch(inputs, label, lengths, mask)

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        return self.scored(outputs, batch).argmax(-1) == batch.targets


@dataclass(frozen=True)
class TemporalOrder3(TemporalOrder):
    r"""The 3-bit temporal order problem (Hochreiter & Schmidhuber 1997, experiment 6b) scaled
    to a lag ``T`` (Martens & Sutskever 2011, section 4.1): as :class:`TemporalOrder` with
    three relevant positions, in ``[0.1T, 0.2T]``, ``[0.33T, 0.43T]`` and ``[0.66T, 0.76T]``
    (the 1997 windows at ``T = 100``), and 8 classes ``XXX, ..., YYY``.

    Args:
        T: minimal sequence length (``T >= 10``).
    """

    name: ClassVar[str] = "temporal-order-3-martens2011"
    source: ClassVar[str] = (
        "Martens & Sutskever 2011, ICML, sec. 4.1; Hochreiter & Schmidhuber 1997, exp. 6b"
    )
    windows: ClassVar[tuple[tuple[float, float], ...]] = ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76))


# ---------------------------------------------------------------------------------------------
# random permutation and noiseless memorisation: a target at every step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomPermutation(PathologicalTask):
    r"""The random permutation problem of Martens & Sutskever 2011 (section 4.1; after
    Hochreiter & Schmidhuber 1997, experiment 2).

    ``T`` one-hot symbols from an alphabet of ``symbols`` (100 in the paper): the first is 0
    or 1, each of the others uniform in ``{2, ..., symbols - 1}``. The network predicts the
    next symbol at every step (softmax with cross-entropy at every step) and, at the last step,
    the first symbol. Only that last prediction is predictable from the past, so the success
    test reads only it: the arg-max at the last step is the first symbol.

    Args:
        T: sequence length (``T >= 10``).
        symbols: alphabet size (``>= 3``).
    """

    symbols: int = 100

    name: ClassVar[str] = "random-permutation-martens2011"
    source: ClassVar[str] = (
        "Martens & Sutskever 2011, ICML, sec. 4.1; Hochreiter & Schmidhuber 1997, exp. 2"
    )
    kind: ClassVar[str] = "classification"
    readout: ClassVar[str] = "all"
    loss_name: ClassVar[str] = "cross_entropy"
    criterion: ClassVar[str] = "arg-max at the last step is the first symbol"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(type(self).__name__, "symbols", self.symbols, minimum=3)

    @property
    def input_size(self) -> int:
        return self.symbols

    @property
    def output_size(self) -> int:
        return self.symbols

    def _sample(self, B: int, generator: torch.Generator | None) -> PathologicalBatch:
        T = self.T
        first = torch.randint(0, 2, (B,), generator=generator)
        rest = torch.randint(2, self.symbols, (T - 1, B), generator=generator)
        symbols = torch.cat([first.unsqueeze(0), rest])  # (T, B)
        targets = torch.cat([rest, first.unsqueeze(0)])  # next symbol; the first at the end
        inputs = F.one_hot(symbols, self.symbols).float()  # (T, B, S)
        lengths = torch.full((B,), T, dtype=torch.long)
        mask = torch.ones(T, B, dtype=torch.bool)
        return PathologicalBatch(inputs, targets, lengths, mask)

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        return self.scored(outputs, batch)[-1].argmax(-1) == batch.targets[-1]


@dataclass(frozen=True)
class Memorisation(PathologicalTask):
    r"""The noiseless memorisation problem of Martens & Sutskever 2011 (section 4.1).

    A pattern of ``pattern_length`` symbols from an alphabet of ``alphabet`` (the "5-bit"
    problem: 5 binary symbols; the "20-bit" problem: 10 symbols from 5 values, as in Sutskever
    et al. 2013) is shown one symbol per step, followed by ``T`` blank steps; then a *go*
    signal asks for the pattern, which the network must output over the last
    ``pattern_length`` steps. Length ``T + 2 * pattern_length``. Inputs one-hot over
    ``alphabet + 2`` (symbols, blank, go): the pattern at steps ``[0, K)``, blank at every
    later step except the go signal at step ``T + K``. Targets at every step, one-hot over
    ``alphabet + 1`` (symbols, blank): blank until step ``T + K``, then the pattern.
    Softmax with cross-entropy at every step. Success test: every step's arg-max is right.

    Args:
        T: the delay between the end of the pattern and the go signal (``T >= 10``).
        pattern_length: ``K``.
        alphabet: number of symbol values (``>= 2``).
    """

    pattern_length: int = 5
    alphabet: int = 2

    name: ClassVar[str] = "memorisation-martens2011"
    source: ClassVar[str] = "Martens & Sutskever 2011, ICML, sec. 4.1"
    kind: ClassVar[str] = "classification"
    readout: ClassVar[str] = "all"
    loss_name: ClassVar[str] = "cross_entropy"
    criterion: ClassVar[str] = "arg-max right at every step (the recalled pattern and blanks)"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(type(self).__name__, "pattern_length", self.pattern_length)
        check_positive_int(type(self).__name__, "alphabet", self.alphabet, minimum=2)

    @property
    def input_size(self) -> int:
        return self.alphabet + 2

    @property
    def output_size(self) -> int:
        return self.alphabet + 1

    def _sample(self, B: int, generator: torch.Generator | None) -> PathologicalBatch:
        T, K, A = self.T, self.pattern_length, self.alphabet
        L = T + 2 * K
        pattern = torch.randint(0, A, (K, B), generator=generator)  # (K, B)
        blank, go = A, A + 1
        symbols = torch.full((L, B), blank, dtype=torch.long)
        symbols[:K] = pattern
        symbols[T + K] = go
        targets = torch.full((L, B), A, dtype=torch.long)  # output blank = A
        targets[T + K :] = pattern
        inputs = F.one_hot(symbols, A + 2).float()  # (L, B, A+2)
        lengths = torch.full((B,), L, dtype=torch.long)
        mask = torch.ones(L, B, dtype=torch.bool)
        return PathologicalBatch(inputs, targets, lengths, mask)

    def correct(self, outputs: Tensor, batch: PathologicalBatch) -> Tensor:
        right = self.scored(outputs, batch).argmax(-1) == batch.targets  # (T, B)
        return (right | ~batch.mask).all(0)


#: name -> task class.
PATHOLOGICAL_TASKS: dict[str, type[PathologicalTask]] = {
    cls.name: cls
    for cls in (
        Addition,
        Multiplication,
        XOR,
        TemporalOrder,
        TemporalOrder3,
        RandomPermutation,
        Memorisation,
    )
}


def make_pathological(name: str, T: int, **options: int) -> PathologicalTask:
    """The task ``name`` of :data:`PATHOLOGICAL_TASKS` at lag ``T`` (the suffix
    ``-martens2011`` may be left out: ``"addition"``).

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PATHOLOGICAL_TASKS and f"{name}-martens2011" in PATHOLOGICAL_TASKS:
        name = f"{name}-martens2011"
    if name not in PATHOLOGICAL_TASKS:
        raise ValueError(
            f"make_pathological: unknown task {name!r}; expected one of "
            f"{sorted(PATHOLOGICAL_TASKS)}"
        )
    return PATHOLOGICAL_TASKS[name](T, **options)


def generate(
    name: str,
    T: int,
    batch_size: int,
    *,
    seed: int,
    device: torch.device | str | None = None,
    **options: int,
) -> PathologicalBatch:
    """A batch of the task ``name`` at lag ``T`` drawn from a fresh generator seeded with
    ``seed``: the pure form of :meth:`PathologicalTask.sample`.

    Example:
        >>> b = generate("addition", 20, 4, seed=0)
        >>> tuple(b.inputs.shape[1:]), tuple(b.targets.shape)
        ((4, 2), (4, 1))
    """
    return make_pathological(name, T, **options).sample(batch_size, seed=seed, device=device)
