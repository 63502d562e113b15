"""The classic long-time-lag problems, each in its paper's own definition.

Every task is a frozen dataclass whose :meth:`~LongLagTask.sample` draws a batch from an explicit
``torch.Generator`` (same generator state, same batch) and which knows its paper's per-sequence
success test (:meth:`~LongLagTask.correct`) and its stopping rule (:attr:`~LongLagTask.stop_rule`:
"the 2000 most recent training sequences were processed correctly", ...).

=========================  ===================================================================
name                       source
=========================  ===================================================================
``embedded-reber-1997``    Hochreiter & Schmidhuber 1997, experiment 1 (Cleeremans et al. 1989)
``adding-1997``            Hochreiter & Schmidhuber 1997, experiment 4
``multiplication-1997``    Hochreiter & Schmidhuber 1997, experiment 5
``temporal-order-1997``    Hochreiter & Schmidhuber 1997, experiment 6a (2 relevant symbols)
``temporal-order-3-1997``  Hochreiter & Schmidhuber 1997, experiment 6b (3 relevant symbols)
``temporal-order-pascanu2013``  Pascanu, Mikolov & Bengio 2013 (their released code)
``copy-arjovsky2016``      Arjovsky, Shah & Bengio 2016, the copying memory problem
``adding-modern``          the loose "modern" adding problem (Le et al. 2015), labelled as such
``bit-memorisation``       carousel's k-bit recall task for lecture 7a's HMM capacity argument
=========================  ===================================================================

The pathological problems of Martens & Sutskever 2011 (addition, multiplication, XOR, temporal
order, random permutation, noiseless memorisation) live in :mod:`carousel.tasks.pathological`.

Conventions (shape letters of STYLE.md): a batch holds ``inputs`` ``(T, B, I)``, zero past each
sequence's end; ``lengths`` ``(B,)``; ``mask`` ``(T, B)``, True where an output is scored. Tasks
scored at the sequence end (``readout == "last"``) have ``targets`` ``(B, O)`` (regression) or
``(B,)`` class indices; tasks scored at many steps (``readout == "all"``) have ``(T, B, O)`` or
``(T, B)``. Models produce ``outputs`` ``(T, B, O)`` for every step; a causal model's output at
``lengths - 1`` does not depend on the padding, so a batch of mixed lengths needs no packing.

Where the 1997 paper used sigmoid output units trained on squared error, carousel trains
classification tasks with softmax and cross-entropy and applies the paper's thresholds to the
softmax probabilities; this is stated on each class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = [
    "LONGLAG_TASKS",
    "AddingModern",
    "ArjovskyCopy",
    "BitMemorisation",
    "EmbeddedReber",
    "HochreiterAdding",
    "HochreiterMultiplication",
    "HochreiterTemporalOrder",
    "LongLagBatch",
    "LongLagTask",
    "PascanuTemporalOrder",
    "StopRule",
    "gather_last",
    "make_task",
]


class LongLagBatch(NamedTuple):
    """One batch of a long-lag task.

    Attributes:
        inputs: ``(T, B, I)`` float, zero past each sequence's end.
        targets: ``(B, O)`` / ``(B,)`` for ``readout == "last"``; ``(T, B, O)`` / ``(T, B)`` for
            ``readout == "all"`` (float for regression and multi-label, int64 class indices for
            classification).
        lengths: ``(B,)`` int64, each sequence's length.
        mask: ``(T, B)`` bool, True at the steps whose outputs are scored (for ``"last"`` tasks
            exactly ``lengths - 1``).
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor
    mask: Tensor


@dataclass(frozen=True)
class StopRule:
    """A paper's stopping rule, read on the stream of training sequences.

    Training stops (the task counts as solved) once at most ``max_wrong`` of the ``window`` most
    recent training sequences failed :meth:`LongLagTask.correct` and, if ``max_mean_error`` is
    set, their mean squared error (:meth:`LongLagTask.errors`) is below it.

    Attributes:
        window: number of most recent training sequences inspected.
        max_wrong: how many of them may fail the per-sequence test.
        max_mean_error: bound on their mean squared error, or ``None``.
    """

    window: int = 2000
    max_wrong: int = 0
    max_mean_error: float | None = None


def gather_last(outputs: Tensor, lengths: Tensor) -> Tensor:
    """The outputs at each sequence's last step.

    Args:
        outputs: ``(T, B, O)``.
        lengths: ``(B,)`` int64, each in ``[1, T]``.

    Returns:
        ``(B, O)``: ``outputs[lengths[b] - 1, b]`` for every ``b``.
    """
    idx = (lengths.to(outputs.device) - 1).view(1, -1, 1).expand(1, -1, outputs.shape[-1])
    return outputs.gather(0, idx).squeeze(0)  # (B, O)


def _uniform_int(
    low: Tensor | int, high: Tensor | int, size: int, generator: torch.Generator | None
) -> Tensor:
    """Integers drawn uniformly from ``[low, high]`` (both ends included), elementwise."""
    low_t = torch.as_tensor(low, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64)
    u = torch.rand(size, generator=generator, dtype=torch.float64)
    return (low_t + torch.floor(u * (high_t - low_t + 1))).long()


def _length_mask(lengths: Tensor, T: int) -> Tensor:
    return torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)


def _last_mask(lengths: Tensor, T: int) -> Tensor:
    return torch.arange(T).unsqueeze(1) == (lengths - 1).unsqueeze(0)  # (T, B)


@dataclass(frozen=True)
class LongLagTask:
    """Base class: a seeded generator with its paper's success test.

    Subclasses set the class attributes and implement :meth:`_sample`.

    Attributes:
        name: registry name.
        summary: one line: what the model must do.
        source: the paper (and section) the definition follows.
        kind: ``"regression"``, ``"classification"`` or ``"multilabel"``.
        readout: ``"last"`` (scored at each sequence's end) or ``"all"`` (scored where
            ``mask`` is True).
        criterion: the per-sequence success test in words.
        paper_results: the paper's reported numbers, for the results table.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    kind: ClassVar[str] = "regression"
    readout: ClassVar[str] = "last"
    criterion: ClassVar[str] = ""
    paper_results: ClassVar[str] = ""

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def stop_rule(self) -> StopRule:
        return StopRule()

    @property
    def lag(self) -> int | None:
        """The time-lag parameter ``T`` of the task (``None`` where it has none)."""
        return getattr(self, "T", None)

    def sample(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> LongLagBatch:
        """Draw a batch.

        Args:
            batch_size: number of sequences ``B``.
            generator: the random stream (drawn on the CPU); ``None`` uses torch's global one.
            device: where the returned tensors live.

        Returns:
            A :class:`LongLagBatch`.

        Raises:
            TypeError, ValueError: if ``batch_size`` is not a positive int.
        """
        check_positive_int(type(self).__name__, "batch_size", batch_size)
        batch = self._sample(batch_size, generator)
        if device is not None:
            batch = LongLagBatch(*(t.to(device) for t in batch))
        return batch

    def _sample(self, batch_size: int, generator: torch.Generator | None) -> LongLagBatch:
        raise NotImplementedError

    # --- scoring -----------------------------------------------------------------------------

    def scored(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """The outputs that are scored: ``(B, O)`` for ``"last"`` tasks, ``(T, B, O)`` else."""
        if outputs.dim() != 3 or outputs.shape[-1] != self.output_size:
            raise ValueError(
                f"{type(self).__name__}: expected outputs of shape (T, B, {self.output_size}), "
                f"got {tuple(outputs.shape)}"
            )
        if self.readout == "last":
            return gather_last(outputs, batch.lengths)
        return outputs

    def rows(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """The scored outputs as rows: ``(B, O)`` for ``"last"`` tasks, the ``mask``-selected
        steps ``(N, O)`` for ``"all"`` tasks (what :meth:`loss` averages over)."""
        y = self.scored(outputs, batch)
        return y if self.readout == "last" else y[batch.mask]

    def loss(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """The training loss: squared error (regression), cross-entropy (classification) or
        binary cross-entropy on logits (multi-label), averaged over scored outputs.

        Args:
            outputs: ``(T, B, O)`` raw model outputs (logits for classification tasks).
            batch: the batch the outputs answer.

        Returns:
            A scalar tensor.
        """
        y = self.rows(outputs, batch)
        t = batch.targets if self.readout == "last" else batch.targets[batch.mask]
        if self.kind == "regression":
            return F.mse_loss(y, t)
        if self.kind == "classification":
            return F.cross_entropy(y, t)
        return F.binary_cross_entropy_with_logits(y, t)

    def probabilities(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """Scored outputs as the paper's output-unit values: the regression outputs themselves,
        softmax probabilities (classification), sigmoid activations (multi-label)."""
        y = self.scored(outputs, batch)
        if self.kind == "classification":
            return y.softmax(-1)
        if self.kind == "multilabel":
            return y.sigmoid()
        return y

    def _dense_targets(self, batch: LongLagBatch) -> Tensor:
        t = batch.targets
        if self.kind == "classification":
            return F.one_hot(t, self.output_size).to(batch.inputs.dtype)
        return t

    def errors(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """Per-sequence squared error of the output-unit values, summed over units (and over
        scored steps): the "training error" of the 1997 stopping rules.

        Returns:
            ``(B,)`` float.
        """
        p = self.probabilities(outputs, batch)
        sq = (p - self._dense_targets(batch)).pow(2).sum(-1)
        if self.readout == "all":
            sq = (sq * batch.mask).sum(0)
        return sq

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """The paper's per-sequence success test (see :attr:`criterion`).

        Args:
            outputs: ``(T, B, O)`` raw model outputs.
            batch: the batch they answer.

        Returns:
            ``(B,)`` bool.
        """
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Hochreiter & Schmidhuber 1997, experiments 4 and 5: adding and multiplication
# ---------------------------------------------------------------------------------------------


def _check_T(owner: str, T: int, minimum: int) -> int:
    return check_positive_int(owner, "T", T, minimum=minimum)


@dataclass(frozen=True)
class HochreiterAdding(LongLagTask):
    r"""The adding problem as Hochreiter & Schmidhuber 1997 define it (section 5.4, experiment
    4).

    Each element is a pair: a value drawn uniformly from ``[-1, 1]`` and a marker. The length is
    an integer drawn uniformly from ``[T, T + T/10]``. Exactly two pairs are marked (marker
    1.0): one of the first ten pairs (value :math:`X_1`), then one of the first ``T/2 - 1``
    still unmarked pairs (:math:`X_2`). All other markers are 0, except those of the first and
    the final pair, which are -1. A marked first pair has its value set to 0. The only target
    comes at the sequence end:

    .. math:: y = 0.5 + \frac{X_1 + X_2}{4} \in [0, 1].

    Success test: absolute error at the sequence end below 0.04. Stopping rule: average
    training error below 0.01 and the 2000 most recent training sequences processed correctly.
    The paper's LSTM (2 memory cell blocks of size 2, 93 weights) needed 74,000 training
    sequences at T=100 (1 wrong out of 2560 test sequences), 209,000 at T=500 and 853,000 at
    T=1000 (Table 7).

    Args:
        T: minimal sequence length (``T >= 12``: the first ten pairs precede the final one).
    """

    T: int = 100

    name: ClassVar[str] = "adding-1997"
    summary: ClassVar[str] = (
        "output 0.5 + (X1 + X2) / 4 for the two marked values of T to 1.1 T (value, marker) pairs"
    )
    source: ClassVar[str] = "Hochreiter & Schmidhuber 1997, Neural Computation 9(8), exp. 4"
    kind: ClassVar[str] = "regression"
    criterion: ClassVar[str] = "absolute error at the sequence end < 0.04"
    paper_results: ClassVar[str] = (
        "LSTM: T=100 74,000 sequences (1/2560 test wrong); T=500 209,000; T=1000 853,000"
    )
    low: ClassVar[float] = -1.0
    first_marked_value: ClassVar[float] = 0.0
    tolerance: ClassVar[float] = 0.04

    def __post_init__(self) -> None:
        _check_T(type(self).__name__, self.T, 12)

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=0, max_mean_error=0.01)

    def _values(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return self.low + (1.0 - self.low) * torch.rand(shape, generator=generator)

    def _combine(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 0.5 + (x1 + x2) / 4.0

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        T = self.T
        lengths = _uniform_int(T, T + T // 10, B, generator)  # (B,)
        Tmax = int(lengths.max())
        values = self._values((Tmax, B), generator)  # (T, B)
        markers = torch.zeros(Tmax, B)
        markers[0] = -1.0
        markers[lengths - 1, torch.arange(B)] = -1.0
        p1 = _uniform_int(0, 9, B, generator)  # one of the first ten pairs
        # one of the first T/2 - 1 still unmarked pairs: skip p1
        r = _uniform_int(0, T // 2 - 2, B, generator)
        p2 = r + (r >= p1).long()
        cols = torch.arange(B)
        markers[p1, cols] = 1.0
        markers[p2, cols] = 1.0
        values[0] = torch.where(markers[0] == 1.0, self.first_marked_value, values[0])
        valid = _length_mask(lengths, Tmax)
        values = values * valid
        inputs = torch.stack([values, markers], -1)  # (T, B, 2)
        target = self._combine(values[p1, cols], values[p2, cols]).unsqueeze(-1)  # (B, 1)
        return LongLagBatch(inputs, target, lengths, _last_mask(lengths, Tmax))

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        err = (self.scored(outputs, batch) - batch.targets).abs().squeeze(-1)
        return err < self.tolerance


@dataclass(frozen=True)
class HochreiterMultiplication(HochreiterAdding):
    r"""The multiplication problem of Hochreiter & Schmidhuber 1997 (section 5.5, experiment 5).

    As :class:`HochreiterAdding`, except that values are drawn uniformly from ``[0, 1]``, the
    target is :math:`X_1 X_2`, and a marked first pair has its value set to 1.0. Success test:
    absolute error below 0.04. Stopping rule: no more than ``nseq`` of the 2000 most recent
    training sequences have an absolute error above 0.04. The paper ran ``nseq = 140`` (482,000
    training sequences, 139 of 2560 test sequences wrong) and ``nseq = 13`` (1,273,000
    sequences, 14 wrong) at T=100 (Table 8).

    Args:
        T: minimal sequence length (``T >= 12``).
        nseq: the stopping rule's allowance of wrong sequences among the last 2000.
    """

    nseq: int = 140

    name: ClassVar[str] = "multiplication-1997"
    summary: ClassVar[str] = (
        "output X1 * X2 for the two marked values among T to 1.1 T (value, marker) pairs"
    )
    source: ClassVar[str] = "Hochreiter & Schmidhuber 1997, Neural Computation 9(8), exp. 5"
    criterion: ClassVar[str] = "absolute error at the sequence end < 0.04"
    paper_results: ClassVar[str] = (
        "LSTM, T=100: nseq=140 482,000 sequences (139/2560 test wrong); nseq=13 1,273,000 (14/2560)"
    )
    low: ClassVar[float] = 0.0
    first_marked_value: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(type(self).__name__, "nseq", self.nseq, minimum=0)

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=self.nseq)

    def _combine(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 * x2


@dataclass(frozen=True)
class AddingModern(LongLagTask):
    r"""The loose "modern" adding problem (not the 1997 definition; labelled as such).

    As used by Le, Jaitly & Hinton 2015 and Arjovsky et al. 2016: fixed length ``T``, values
    uniform in ``[0, 1]``, exactly two markers, one in each half of the sequence, target the
    sum of the two marked values (in ``[0, 2]``). Predicting the constant 1 scores a mean
    squared error of about 0.167. carousel's success test: absolute error below 0.1; stopping
    rule: mean squared error over the last 2000 training sequences below 0.01 with at most 20
    of them wrong (1%).

    Args:
        T: sequence length (``T >= 2``).
    """

    T: int = 100

    name: ClassVar[str] = "adding-modern"
    summary: ClassVar[str] = (
        "output the sum of the two marked values of T (value, marker) pairs (loose modern form)"
    )
    source: ClassVar[str] = "Le, Jaitly & Hinton 2015 (loose modern variant, not the 1997 task)"
    kind: ClassVar[str] = "regression"
    criterion: ClassVar[str] = "absolute error < 0.1 (carousel's threshold)"
    paper_results: ClassVar[str] = "baseline MSE 0.167 (predict 1)"

    def __post_init__(self) -> None:
        _check_T(type(self).__name__, self.T, 2)

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=20, max_mean_error=0.01)

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        T, half = self.T, self.T // 2
        values = torch.rand(T, B, generator=generator)
        p1 = _uniform_int(0, half - 1, B, generator)
        p2 = _uniform_int(half, T - 1, B, generator)
        cols = torch.arange(B)
        markers = torch.zeros(T, B)
        markers[p1, cols] = 1.0
        markers[p2, cols] = 1.0
        target = (values[p1, cols] + values[p2, cols]).unsqueeze(-1)
        lengths = torch.full((B,), T, dtype=torch.long)
        inputs = torch.stack([values, markers], -1)
        return LongLagBatch(inputs, target, lengths, _last_mask(lengths, T))

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        return (self.scored(outputs, batch) - batch.targets).abs().squeeze(-1) < 0.1


# ---------------------------------------------------------------------------------------------
# Hochreiter & Schmidhuber 1997, experiment 6: temporal order
# ---------------------------------------------------------------------------------------------

#: The eight input symbols of experiment 6, in input-channel order.
TEMPORAL_ORDER_SYMBOLS = ("E", "B", "a", "b", "c", "d", "X", "Y")


@dataclass(frozen=True)
class HochreiterTemporalOrder(LongLagTask):
    """Temporal order, Hochreiter & Schmidhuber 1997 (section 5.6, experiments 6a and 6b).

    Symbols are one-hot over ``E, B, a, b, c, d, X, Y`` (8 inputs). A sequence starts with
    ``E``, ends with the trigger ``B``, and otherwise holds random symbols from ``{a, b, c, d}``
    except at ``num_relevant`` positions, which hold ``X`` or ``Y``. The class (4 or 8, one
    output each) is the order of the ``X``/``Y`` symbols read as a binary number with ``X = 0``
    (6a: ``XX -> Q, XY -> R, YX -> S, YY -> U``). The length is drawn from ``[T, T + T/10]``;
    with positions counted from 1 as in the paper, 6a draws ``t1`` from ``[T/10, 2T/10]`` and
    ``t2`` from ``[5T/10, 6T/10]``; 6b draws ``t1, t2, t3`` from ``[10, 20], [33, 43], [66, 76]``
    scaled by ``T/100``. At ``T = 100`` these are the paper's numbers (length 100 to 110).

    Success test: every output unit within 0.3 of its target at the sequence end (carousel
    trains softmax outputs with cross-entropy and applies the test to the probabilities; the
    paper used sigmoid units with squared error). Stopping rule: average training error below
    0.1 and the 2000 most recent training sequences classified correctly. The paper's LSTM
    needed 31,390 training sequences for 6a (1 of 2560 test sequences wrong) and 571,100 for
    6b (2 wrong) (Table 9).

    Args:
        T: minimal sequence length (``T >= 20``).
        num_relevant: 2 (experiment 6a) or 3 (experiment 6b).
    """

    T: int = 100
    num_relevant: int = 2

    source: ClassVar[str] = "Hochreiter & Schmidhuber 1997, Neural Computation 9(8), exp. 6a/6b"
    summary: ClassVar[str] = (
        "classify T to 1.1 T symbols by the order of the 2 (or 3) relevant X/Y symbols"
    )
    kind: ClassVar[str] = "classification"
    criterion: ClassVar[str] = "every output within 0.3 of its target at the sequence end"
    paper_results: ClassVar[str] = (
        "LSTM, T=100: 6a 31,390 sequences (1/2560 test wrong); 6b 571,100 (2/2560)"
    )
    tolerance: ClassVar[float] = 0.3

    @property
    def name(self) -> str:  # type: ignore[override]  # per instance: 6a and 6b share this class
        return "temporal-order-1997" if self.num_relevant == 2 else "temporal-order-3-1997"

    def __post_init__(self) -> None:
        _check_T(type(self).__name__, self.T, 20)
        if self.num_relevant not in (2, 3):
            raise ValueError(
                f"{type(self).__name__}: num_relevant must be 2 (exp. 6a) or 3 (exp. 6b), "
                f"got {self.num_relevant!r}"
            )

    @property
    def input_size(self) -> int:
        return len(TEMPORAL_ORDER_SYMBOLS)

    @property
    def output_size(self) -> int:
        return 2**self.num_relevant

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=0, max_mean_error=0.1)

    def windows(self) -> list[tuple[int, int]]:
        """The 1-based position ranges ``[low, high]`` of the relevant symbols."""
        T = self.T
        ranges = [(10, 20), (50, 60)] if self.num_relevant == 2 else [(10, 20), (33, 43), (66, 76)]
        return [(max(2, round(lo * T / 100)), round(hi * T / 100)) for lo, hi in ranges]

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        T = self.T
        lengths = _uniform_int(T, T + T // 10, B, generator)
        Tmax = int(lengths.max())
        sym = _uniform_int(2, 5, Tmax * B, generator).view(Tmax, B)  # a, b, c, d
        sym[0] = 0  # E
        cols = torch.arange(B)
        sym[lengths - 1, cols] = 1  # trigger B
        label = torch.zeros(B, dtype=torch.long)
        for lo, hi in self.windows():
            pos = _uniform_int(lo, hi, B, generator) - 1  # 1-based -> index
            bit = _uniform_int(0, 1, B, generator)  # X = 0, Y = 1
            sym[pos, cols] = 6 + bit
            label = 2 * label + bit
        valid = _length_mask(lengths, Tmax)
        inputs = F.one_hot(sym, self.input_size).float() * valid.unsqueeze(-1)
        return LongLagBatch(inputs, label, lengths, _last_mask(lengths, Tmax))

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        p = self.probabilities(outputs, batch)
        return ((p - self._dense_targets(batch)).abs() < self.tolerance).all(-1)


@dataclass(frozen=True)
class PascanuTemporalOrder(LongLagTask):
    """Temporal order as Pascanu, Mikolov & Bengio 2013 ran it (``tempOrder.py`` of their
    released code, itself after Hochreiter & Schmidhuber 1997 and Martens & Sutskever 2011).

    Six one-hot inputs ``A, B, c, d, e, f``; every sequence has length exactly ``T``. One
    relevant symbol (``A`` or ``B``) sits at a position drawn from ``[T/10, 2T/10)`` and a
    second from ``[5T/10, 6T/10)`` (0-based, ``int(0.1 T)`` steps each); all other steps hold a
    random distractor from ``{c, d, e, f}``. The target at the last step is one of 4 classes,
    ``v0 + 2 v1`` with ``A = 0, B = 1`` (``v0`` the first symbol). Trained with softmax and
    cross-entropy as in the paper.

    Success test: the arg-max class is right. The paper counts a run as successful below 1%
    error on 10,000 held-out sequences; the stopping rule here reads it on the 2000 most recent
    training sequences (at most 20 wrong).

    Args:
        T: sequence length (``T >= 10``).
    """

    T: int = 100

    name: ClassVar[str] = "temporal-order-pascanu2013"
    summary: ClassVar[str] = (
        "classify T symbols by the order of the two relevant ones (A/B; 4 classes)"
    )
    source: ClassVar[str] = "Pascanu, Mikolov & Bengio 2013 (ICML), released tempOrder.py"
    kind: ClassVar[str] = "classification"
    criterion: ClassVar[str] = "arg-max class right (success: < 1% wrong)"
    paper_results: ClassVar[str] = (
        "tanh RNN, 50 units, SGD + clipping + their regulariser: solved up to T=200 (Fig. 7)"
    )

    def __post_init__(self) -> None:
        _check_T(type(self).__name__, self.T, 10)

    @property
    def input_size(self) -> int:
        return 6

    @property
    def output_size(self) -> int:
        return 4

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=20)

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        T, w = self.T, int(self.T * 0.1)
        cols = torch.arange(B)
        p0 = _uniform_int(0, w - 1, B, generator) + w
        v0 = _uniform_int(0, 1, B, generator)
        p1 = _uniform_int(0, w - 1, B, generator) + int(T * 0.5)
        v1 = _uniform_int(0, 1, B, generator)
        sym = _uniform_int(2, 5, T * B, generator).view(T, B)
        sym[p0, cols] = v0
        sym[p1, cols] = v1
        lengths = torch.full((B,), T, dtype=torch.long)
        inputs = F.one_hot(sym, 6).float()
        return LongLagBatch(inputs, v0 + 2 * v1, lengths, _last_mask(lengths, T))

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        return self.scored(outputs, batch).argmax(-1) == batch.targets


# ---------------------------------------------------------------------------------------------
# Hochreiter & Schmidhuber 1997, experiment 1: the embedded Reber grammar
# ---------------------------------------------------------------------------------------------

#: Symbols of the Reber grammar in input/output channel order.
REBER_SYMBOLS = ("B", "T", "P", "S", "X", "V", "E")

# The Reber automaton (Cleeremans, Servan-Schreiber & McClelland 1989): state -> the two
# (symbol, next state) transitions, each taken with probability 1/2; state 5 emits E and stops.
_REBER = {
    0: (("T", 1), ("P", 2)),
    1: (("S", 1), ("X", 3)),
    2: (("T", 2), ("V", 4)),
    3: (("X", 2), ("S", 5)),
    4: (("P", 3), ("V", 5)),
}


def _reber_string(generator: torch.Generator | None) -> tuple[list[str], list[frozenset[str]]]:
    """One Reber string ``B ... E`` and, after each symbol but the final ``E``, the set of
    legal next symbols."""
    string, nexts = ["B"], [frozenset("TP")]
    state = 0
    while state != 5:
        choice = int(torch.randint(0, 2, (1,), generator=generator))
        sym, state = _REBER[state][choice]
        string.append(sym)
        nexts.append(frozenset(s for s, _ in _REBER[state]) if state != 5 else frozenset("E"))
    string.append("E")
    return string, nexts


@dataclass(frozen=True)
class EmbeddedReber(LongLagTask):
    """The embedded Reber grammar, Hochreiter & Schmidhuber 1997 (section 5.1, experiment 1).

    A string is ``B``, then ``T`` or ``P``, then a Reber string (Cleeremans et al. 1989's
    automaton, each branch with probability 1/2), then the same ``T`` or ``P`` again, then
    ``E``. Symbols are one-hot over ``B, T, P, S, X, V, E`` (7 inputs, 7 outputs). At every
    step but the last the network predicts the set of legal next symbols (multi-label
    targets); the only long-lag prediction is the second-to-last symbol, which must repeat the
    second one.

    Success test (the paper's): at every scored step, the output units of the legal next
    symbols are the most active ones (the top-``k`` outputs, ``k`` the number of legal
    symbols, are exactly the legal set). The paper trains on 256 strings and tests on 256
    others and counts a trial successful when all strings of both sets are predicted
    correctly; carousel draws fresh strings, so its stopping rule asks for the 256 most recent
    training strings to be correct. Trained here with sigmoid outputs and binary cross-entropy
    (the paper: squared error).

    ``T`` does not apply: string lengths follow the grammar (9 symbols and up).
    """

    name: ClassVar[str] = "embedded-reber-1997"
    summary: ClassVar[str] = (
        "predict the legal next symbols of embedded Reber strings (the long lag: the 2nd symbol)"
    )
    source: ClassVar[str] = "Hochreiter & Schmidhuber 1997, Neural Computation 9(8), exp. 1"
    kind: ClassVar[str] = "multilabel"
    readout: ClassVar[str] = "all"
    criterion: ClassVar[str] = "at every step the legal next symbols are the most active outputs"
    paper_results: ClassVar[str] = (
        "LSTM solved it in most trials within about 10^4 training strings (Table 2)"
    )

    @property
    def input_size(self) -> int:
        return len(REBER_SYMBOLS)

    @property
    def output_size(self) -> int:
        return len(REBER_SYMBOLS)

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=256, max_wrong=0)

    @staticmethod
    def string(generator: torch.Generator | None = None) -> tuple[str, list[frozenset[str]]]:
        """One embedded Reber string and its legal-next-symbol sets (one per symbol but the
        last).

        Returns:
            ``(string, nexts)``: e.g. ``("BTBTXSETE", [...])``.
        """
        outer = "T" if int(torch.randint(0, 2, (1,), generator=generator)) == 0 else "P"
        inner, inner_next = _reber_string(generator)
        s = ["B", outer, *inner, outer, "E"]
        nexts = [frozenset("TP"), frozenset("B"), *inner_next, frozenset(outer), frozenset("E")]
        return "".join(s), nexts

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        strings = [self.string(generator) for _ in range(B)]
        lengths = torch.tensor([len(s) for s, _ in strings], dtype=torch.long)
        Tmax = int(lengths.max())
        index = {s: k for k, s in enumerate(REBER_SYMBOLS)}
        inputs = torch.zeros(Tmax, B, len(REBER_SYMBOLS))
        targets = torch.zeros(Tmax, B, len(REBER_SYMBOLS))
        mask = torch.zeros(Tmax, B, dtype=torch.bool)
        for b, (s, nexts) in enumerate(strings):
            for t, ch in enumerate(s):
                inputs[t, b, index[ch]] = 1.0
            for t, legal in enumerate(nexts):
                for ch in legal:
                    targets[t, b, index[ch]] = 1.0
                mask[t, b] = True
        return LongLagBatch(inputs, targets, lengths, mask)

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        y = self.scored(outputs, batch)  # (T, B, O)
        k = batch.targets.sum(-1, keepdim=True).long().clamp(min=1)  # (T, B, 1)
        rank = y.argsort(-1, descending=True).argsort(-1)  # rank of each unit, 0 = most active
        top = rank < k  # (T, B, O): the k most active units
        ok = (top == batch.targets.bool()).all(-1) | ~batch.mask  # (T, B)
        return ok.all(0)


# ---------------------------------------------------------------------------------------------
# The copy task (Arjovsky, Shah & Bengio 2016) and carousel's bit memorisation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArjovskyCopy(LongLagTask):
    r"""The copying memory problem of Arjovsky, Shah & Bengio 2016 (section 4.1), after
    Hochreiter & Schmidhuber 1997.

    Inputs are one-hot over 10 symbols: 0 blank, 1 to 8 data, 9 delimiter. A sequence is 10 data
    symbols drawn uniformly from 1 to 8, ``T - 1`` blanks, the delimiter, then 10 blanks
    (length ``T + 20``). The target is blank for the first ``T + 10`` steps and then the 10
    data symbols (9 output classes: blank and the 8 data symbols); cross-entropy is scored at
    every step. The memoryless baseline (blanks, then uniform guesses) scores
    :math:`10 \log 8 / (T + 20)` nats per step.

    Success test (carousel's; the paper reports loss curves): all 10 copied symbols right.
    Stopping rule: at most 1% of the 2000 most recent training sequences wrong.

    Args:
        T: the delay (``T >= 1``).
        num_symbols: data alphabet size (8 in the paper).
        length: how many symbols to copy (10 in the paper).
    """

    T: int = 100
    num_symbols: int = 8
    length: int = 10

    name: ClassVar[str] = "copy-arjovsky2016"
    summary: ClassVar[str] = "reproduce 10 symbols after T blank steps"
    source: ClassVar[str] = "Arjovsky, Shah & Bengio 2016 (ICML), copying memory problem"
    kind: ClassVar[str] = "classification"
    readout: ClassVar[str] = "all"
    criterion: ClassVar[str] = "all copied symbols right (carousel's test)"
    paper_results: ClassVar[str] = "baseline 10 log 8 / (T + 20) nats per step"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_T(owner, self.T, 1)
        check_positive_int(owner, "num_symbols", self.num_symbols)
        check_positive_int(owner, "length", self.length)

    @property
    def input_size(self) -> int:
        return self.num_symbols + 2

    @property
    def output_size(self) -> int:
        return self.num_symbols + 1

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(window=2000, max_wrong=20)

    @property
    def baseline_loss(self) -> float:
        """Cross-entropy per step of the memoryless strategy, in nats."""
        return self.length * math.log(self.num_symbols) / (self.T + 2 * self.length)

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        n, T = self.length, self.T
        total = T + 2 * n
        data = _uniform_int(1, self.num_symbols, n * B, generator).view(n, B)
        sym = torch.zeros(total, B, dtype=torch.long)
        sym[:n] = data
        sym[T + n - 1] = self.num_symbols + 1  # delimiter
        targets = torch.zeros(total, B, dtype=torch.long)
        targets[T + n :] = data
        lengths = torch.full((B,), total, dtype=torch.long)
        mask = torch.ones(total, B, dtype=torch.bool)
        inputs = F.one_hot(sym, self.input_size).float()
        return LongLagBatch(inputs, targets, lengths, mask)

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        pred = self.scored(outputs, batch).argmax(-1)[-self.length :]  # (n, B)
        return (pred == batch.targets[-self.length :]).all(0)


@dataclass(frozen=True)
class BitMemorisation(LongLagTask):
    """k-bit recall, carousel's memorisation task for lecture 7a's capacity argument.

    A token sequence over ``{0, 1, blank}``: ``num_bits`` random bits, ``T`` blanks, then the
    same bits again. The model reads token ``t`` and predicts token ``t + 1`` (inputs one-hot
    over the 3 tokens, 3 output classes); only the predictions of the repeated bits are scored
    (``mask``). The full token sequence of sequence ``b`` is
    ``inputs[:, b].argmax(-1)`` followed by ``targets[-1, b]``, which is what a hidden Markov
    model is fitted to (:mod:`carousel.baselines`).

    An HMM with N states carries at most log2(N) bits from the first half to the second, so its
    recall log-loss is at least ``num_bits - log2(N)`` bits per sequence; an RNN of a few units
    recalls them all.

    Success test: all recalled bits right (arg-max). Stopping rule: the 2000 most recent
    training sequences right.

    Args:
        num_bits: bits to remember (``k``).
        T: blanks between the bits and their recall (``T >= 0``).
    """

    num_bits: int = 4
    T: int = 1

    name: ClassVar[str] = "bit-memorisation"
    summary: ClassVar[str] = "recall k random bits after T blanks"
    source: ClassVar[str] = "carousel (after Hinton's lecture 7a: HMM memory is log2 N bits)"
    kind: ClassVar[str] = "classification"
    readout: ClassVar[str] = "all"
    criterion: ClassVar[str] = "all recalled bits right"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_bits", self.num_bits)
        check_positive_int(owner, "T", self.T, minimum=0)

    @property
    def input_size(self) -> int:
        return 3

    @property
    def output_size(self) -> int:
        return 3

    def tokens(self, B: int, generator: torch.Generator | None = None) -> Tensor:
        """``(2 k + T, B)`` int64 token sequences (0, 1 bits; 2 blank)."""
        bits = _uniform_int(0, 1, self.num_bits * B, generator).view(self.num_bits, B)
        blanks = torch.full((self.T, B), 2, dtype=torch.long)
        return torch.cat([bits, blanks, bits])

    def _sample(self, B: int, generator: torch.Generator | None) -> LongLagBatch:
        tok = self.tokens(B, generator)
        total = tok.shape[0] - 1
        inputs = F.one_hot(tok[:-1], 3).float()
        targets = tok[1:]
        mask = torch.zeros(total, B, dtype=torch.bool)
        mask[-self.num_bits :] = True
        lengths = torch.full((B,), total, dtype=torch.long)
        return LongLagBatch(inputs, targets, lengths, mask)

    def correct(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        k = self.num_bits
        pred = self.scored(outputs, batch)[-k:].argmax(-1)
        return (pred == batch.targets[-k:]).all(0)

    def recall_bits(self, outputs: Tensor, batch: LongLagBatch) -> Tensor:
        """Per-sequence log-loss of the recalled bits in bits (``-log2 q(bits | prefix)``).

        The model's probability of each recalled bit is its softmax over all 3 output classes
        (mass on "blank" counts as lost, exactly as in an HMM's predictive distribution over
        the 3 tokens), one factor per recalled bit given the true earlier ones.

        Returns:
            ``(B,)`` float.
        """
        k = self.num_bits
        logits = self.scored(outputs, batch)[-k:]  # (k, B, 3)
        logp = logits.log_softmax(-1).gather(-1, batch.targets[-k:].unsqueeze(-1)).squeeze(-1)
        return -logp.sum(0) / math.log(2)


#: Registry of the long-lag tasks by name: name -> (class, keyword arguments).
LONGLAG_TASKS: dict[str, tuple[type[LongLagTask], dict]] = {
    "embedded-reber-1997": (EmbeddedReber, {}),
    "adding-1997": (HochreiterAdding, {}),
    "multiplication-1997": (HochreiterMultiplication, {}),
    "temporal-order-1997": (HochreiterTemporalOrder, {"num_relevant": 2}),
    "temporal-order-3-1997": (HochreiterTemporalOrder, {"num_relevant": 3}),
    "temporal-order-pascanu2013": (PascanuTemporalOrder, {}),
    "copy-arjovsky2016": (ArjovskyCopy, {}),
    "adding-modern": (AddingModern, {}),
    "bit-memorisation": (BitMemorisation, {}),
}


def make_task(name: str, **kwargs: Any) -> LongLagTask:
    """Build a long-lag task by registry name.

    Args:
        name: a key of :data:`LONGLAG_TASKS`.
        **kwargs: the task's parameters (``T=...``); ``T=None`` is dropped for tasks without a
            lag (the embedded Reber grammar).

    Returns:
        The task.

    Raises:
        ValueError: if ``name`` is unknown.
        TypeError: if a parameter does not apply to the task.

    Example:
        >>> task = make_task("adding-1997", T=100)
        >>> batch = task.sample(4, generator=torch.Generator().manual_seed(0))
        >>> batch.inputs.shape[1:], batch.targets.shape
        (torch.Size([4, 2]), torch.Size([4, 1]))
    """
    if name not in LONGLAG_TASKS:
        raise ValueError(f"make_task: unknown task {name!r}; expected one of {list(LONGLAG_TASKS)}")
    cls, fixed = LONGLAG_TASKS[name]
    if cls is EmbeddedReber and kwargs.get("T", None) is None:
        kwargs.pop("T", None)
    try:
        return cls(**fixed, **kwargs)
    except TypeError as exc:
        raise TypeError(f"make_task: {name!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The training engine's registry: `carousel tasks` lists these, `carousel train adding-1997`
# trains one (the study, `carousel study long-lag`, runs them with the papers' stopping rules)
# ---------------------------------------------------------------------------------------------

from carousel._config import Checks  # noqa: E402
from carousel.models import ModelConfig, ModelOutput, SequenceModel  # noqa: E402
from carousel.tasks.base import Batch, Task  # noqa: E402
from carousel.tasks.pathological import (  # noqa: E402
    PATHOLOGICAL_TASKS,
    PathologicalBatch,
    PathologicalTask,
    make_pathological,
)
from carousel.tasks.registry import register_task  # noqa: E402


@dataclass(frozen=True)
class LongLagConfig:
    """Options of a long-lag task in the engine (the ``[data]`` table)."""

    # the time-lag parameter T of the task (ignored by embedded-reber-1997, which has none)
    T: int = 100
    # fresh sequences in the held-out "test" split (the 1997 paper tests on 2560)
    test_size: int = 2560

    def __post_init__(self) -> None:
        c = Checks("data")
        c.positive_int("T", self.T)
        c.positive_int("test_size", self.test_size)
        c.done()


_EVAL_CHUNK = 512


#: the loss of carousel.optim whose curvature matches each kind of task's loss
_MATCHING = {
    "regression": "mse",
    "classification": "cross_entropy",
    "multilabel": "binary_cross_entropy",
}


class LongLagEngineTask(Task):
    """A :class:`LongLagTask` as a task of the training engine: a
    :class:`~carousel.models.SequenceModel` with a per-step linear read-out, the task's loss,
    and as metrics ``accuracy`` (fraction of sequences passing the paper's success test) and
    ``error`` (1 - accuracy). The defaults are a plain LSTM; the study's tuned settings
    (gate biases, :mod:`carousel.study.models`) reach the papers' criteria more reliably, e.g.
    ``--set model.init.forget_bias=5``.
    """

    Config = LongLagConfig
    defaults: ClassVar[dict] = {
        "model": {"cell": "lstm", "hidden_size": 8},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"steps": 3000, "batch_size": 32, "eval_every": 500, "clip_norm": 1.0},
    }
    eval_splits = ("test",)
    primary_metric = "accuracy"
    longlag_name: ClassVar[str] = ""

    config: LongLagConfig

    def __init__(self, config: LongLagConfig | None = None) -> None:
        super().__init__(config)
        self.task: LongLagTask | PathologicalTask
        if self.longlag_name in PATHOLOGICAL_TASKS:
            self.task = make_pathological(self.longlag_name, self.config.T)
            return
        cls, _ = LONGLAG_TASKS[self.longlag_name]
        T = None if cls is EmbeddedReber else self.config.T
        self.task = make_task(self.longlag_name, T=T)

    def make_model(
        self,
        config: ModelConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SequenceModel:
        t = self.task
        return SequenceModel(
            t.input_size, t.output_size, config, readout="per-step", generator=generator,
            device=device, dtype=dtype,
        )  # fmt: skip

    def _to_batch(self, b: LongLagBatch | PathologicalBatch) -> Batch:
        per_step = self.task.readout == "all"
        return Batch(
            b.inputs, b.targets, mask=b.mask if per_step else None, lengths=b.lengths,
            per_step=per_step,
        )  # fmt: skip

    def _from_batch(self, batch: Batch) -> LongLagBatch:
        lengths = batch.lengths
        if lengths is None:
            raise ValueError(
                f"{type(self).__name__}: the batch has no lengths; expected one of this task's "
                "batch() or eval_batches()"
            )
        mask = batch.mask if batch.mask is not None else _last_mask(lengths.cpu(), batch.num_steps)
        return LongLagBatch(batch.inputs, batch.targets, lengths, mask.to(lengths.device))

    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        return self._to_batch(self.task.sample(batch_size, generator=generator))

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterator[Batch]:
        n = self.config.test_size
        for i in range(0, n, _EVAL_CHUNK):
            yield self._to_batch(self.task.sample(min(_EVAL_CHUNK, n - i), generator=generator))

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        t, b = self.task, self._from_batch(batch)
        if isinstance(t, PathologicalTask):
            return t.loss(output.output, PathologicalBatch(*b))
        return t.loss(output.output, b)

    @property
    def curvature_loss(self) -> str:  # type: ignore[override]  # per instance: by the task's kind
        """``"mse"``, ``"cross_entropy"`` or ``"binary_cross_entropy"`` by the task's kind."""
        return getattr(self.task, "loss_name", None) or _MATCHING[self.task.kind]

    def curvature_outputs(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The scored outputs :meth:`loss` averages over (see :meth:`Task.curvature_outputs`)."""
        t, b = self.task, self._from_batch(batch)
        if isinstance(t, PathologicalTask):
            return t.rows(output.output, PathologicalBatch(*b))
        return t.rows(output.output, b)

    @torch.no_grad()
    def metrics(self, output: ModelOutput, batch: Batch) -> dict[str, float]:
        t, b = self.task, self._from_batch(batch)
        if isinstance(t, PathologicalTask):
            correct = t.correct(output.output, PathologicalBatch(*b))
        else:
            correct = t.correct(output.output, b)
        ok = correct.float().mean().item()
        return {"accuracy": ok, "error": 1.0 - ok}


def _register_engine_tasks() -> None:
    for name, (cls, _) in LONGLAG_TASKS.items():
        if name == "bit-memorisation":
            continue  # a baseline study's task, not a training target
        engine_cls = type(
            "LongLag_" + name.replace("-", "_"), (LongLagEngineTask,),
            {"longlag_name": name, "__module__": __name__,
             "__doc__": f"``{name}`` in the training engine ({cls.source})."},
        )  # fmt: skip
        register_task(
            name,
            summary=cls.summary,
            source=cls.source,
            success=f"{cls.criterion}; `carousel study long-lag` applies the paper's stopping rule",
        )(engine_cls)


def _register_pathological_tasks() -> None:
    for name, cls in PATHOLOGICAL_TASKS.items():
        engine_cls = type(
            "Pathological_" + name.replace("-", "_"), (LongLagEngineTask,),
            {"longlag_name": name, "__module__": __name__,
             "__doc__": f"``{name}`` in the training engine ({cls.source})."},
        )  # fmt: skip
        paragraph = " ".join((cls.__doc__ or name).strip().split("\n\n")[0].split())
        first = paragraph.split(". ")[0].rstrip(".")
        register_task(
            name,
            summary=f"{first}; data.T sets the lag",
            source=cls.source,
            success=f"{cls.criterion}; solved when at most {cls.success_threshold:.0%} fail",
        )(engine_cls)


_register_engine_tasks()
_register_pathological_tasks()
