"""Character language models for shallow fusion in the CTC prefix beam search.

A scorer is any object with the three methods of :class:`CharScorer`; it works in CTC label
ids (the blank is never scored). :class:`NGramCharScorer` is a Witten-Bell smoothed character
n-gram model; :class:`RecurrentLMScorer` adapts any next-character model that can be stepped
(a carousel character LM, a torch module, ...).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["CharScorer", "NGramCharScorer", "RecurrentLMScorer"]


@runtime_checkable
class CharScorer(Protocol):
    """The interface of a character language model used by
    :func:`~carousel.ctc.prefix_beam_search`.

    States are opaque to the search; they must be hashable or at least reusable (the search
    never mutates them). ``end_log_prob`` is optional: when a scorer has it, finished
    hypotheses get ``log P(end | prefix)`` added.
    """

    def initial_state(self) -> Any:
        """The state before any character."""

    def next_log_probs(self, state: Any) -> Sequence[float]:
        """``log P(c | prefix)`` for every CTC label id ``c`` (length ``C``; entry ``blank``
        is ignored)."""

    def advance(self, state: Any, token: int) -> Any:
        """The state after appending label ``token``."""


class NGramCharScorer:
    r"""Character n-gram model with interpolated Witten-Bell smoothing (Witten & Bell 1991;
    Chen & Goodman 1999, section 2.6), over CTC label ids with begin and end markers.

    .. math::

        P(w \mid h) = \frac{c(h, w) + N_{1+}(h\,\cdot)\, P(w \mid h')}{c(h) + N_{1+}(h\,\cdot)}

    where :math:`h'` drops the oldest character of the history :math:`h`, :math:`N_{1+}(h\cdot)`
    is the number of distinct characters seen after :math:`h`, and the recursion ends in the
    uniform distribution over the labels and the end marker.

    Args:
        num_classes: ``C``, the CTC classes (blank included).
        order: ``n`` (1 = unigram).
        blank: the blank's id (never predicted).

    Example:
        >>> lm = NGramCharScorer(4, order=2).fit([[1, 2, 3], [1, 2]])
        >>> s = lm.advance(lm.initial_state(), 1)
        >>> round(math.exp(lm.next_log_probs(s)[2]), 3)
        0.758
    """

    def __init__(self, num_classes: int, order: int = 3, *, blank: int = 0) -> None:
        self.num_classes = check_positive_int(
            "NGramCharScorer", "num_classes", num_classes, minimum=2
        )
        self.order = check_positive_int("NGramCharScorer", "order", order)
        if not 0 <= blank < num_classes:
            raise ValueError(
                f"NGramCharScorer: blank must be in [0, {num_classes - 1}], got {blank}"
            )
        self.blank = blank
        self.end = num_classes  # the end marker's id
        self.begin = -1
        # counts[h][w] for histories h of every length 0..order-1
        self._counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._cache: dict[tuple[int, ...], list[float]] = {}

    def fit(
        self, sequences: Iterable[Sequence[int]], weights: Iterable[int] | None = None
    ) -> NGramCharScorer:
        """Count n-grams of label-id sequences (adds to earlier counts); returns ``self``.

        Args:
            sequences: label-id sequences (no blanks).
            weights: how many times each sequence counts (positive integers, one per
                sequence); ``None`` counts each once. A weight of ``k`` gives the same model as
                ``k`` copies of the sequence, without counting them ``k`` times.

        Raises:
            ValueError: a label that is the blank or outside ``[0, C)``, or a weight that is
                not a positive integer.
        """
        n = self.order
        pairs: Iterable[tuple[Sequence[int], int]]
        if weights is None:
            pairs = ((seq, 1) for seq in sequences)
        else:
            pairs = zip(sequences, weights, strict=True)
        for index, (seq, weight) in enumerate(pairs):
            if isinstance(weight, bool) or int(weight) != weight or weight < 1:
                raise ValueError(
                    f"NGramCharScorer.fit: weights must be positive integers, got {weight!r} "
                    f"for sequence {index}"
                )
            weight = int(weight)
            seq = [int(t) for t in seq]
            for pos, t in enumerate(seq):
                if t == self.blank or not 0 <= t < self.num_classes:
                    raise ValueError(
                        f"NGramCharScorer.fit: label {t} at position {pos} is the blank or "
                        f"outside [0, {self.num_classes - 1}]"
                    )
            padded = [self.begin] * (n - 1) + seq + [self.end]
            for i in range(n - 1, len(padded)):
                w = padded[i]
                for k in range(n):  # histories of length k
                    h = tuple(padded[i - k : i])
                    self._counts[h][w] += weight
        self._cache.clear()
        return self

    def _dist(self, h: tuple[int, ...]) -> list[float]:
        """Probabilities over ``0..C`` (index ``C`` = end) after history ``h``."""
        if h in self._cache:
            return self._cache[h]
        V = self.num_classes  # C - 1 labels + end marker = C outcomes
        if len(h) == 0:
            lower = [0.0 if w == self.blank else 1.0 / V for w in range(V + 1)]
        else:
            lower = self._dist(h[1:])
        counts = self._counts.get(h)
        if not counts:
            dist = lower
        else:
            total = sum(counts.values())
            types = len(counts)
            dist = [(counts.get(w, 0) + types * lower[w]) / (total + types) for w in range(V + 1)]
        self._cache[h] = dist
        return dist

    def initial_state(self) -> tuple[int, ...]:
        return (self.begin,) * (self.order - 1)

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        if self.order == 1:
            return ()
        return (*state[1:], int(token))

    def next_log_probs(self, state: tuple[int, ...]) -> list[float]:
        d = self._dist(tuple(state))
        return [math.log(p) if p > 0 else -math.inf for p in d[: self.num_classes]]

    def end_log_prob(self, state: tuple[int, ...]) -> float:
        """``log P(end | state)``."""
        return math.log(self._dist(tuple(state))[self.end])

    def log_prob(self, sequence: Sequence[int], *, end: bool = True) -> float:
        """The log probability of a whole label sequence (with the end marker if ``end``)."""
        s, total = self.initial_state(), 0.0
        for t in sequence:
            total += self.next_log_probs(s)[int(t)]
            s = self.advance(s, int(t))
        return total + (self.end_log_prob(s) if end else 0.0)


class RecurrentLMScorer:
    """Adapts a steppable next-character model to :class:`CharScorer`.

    Args:
        step: ``step(token, state) -> (log_probs, state)``: feeds LM token ``token`` (``None``
            for the start) and returns ``log P(next | prefix)`` over the LM's vocabulary
            (``(V,)`` tensor or sequence) and the new state. Each call costs one step of the
            model, never a rerun of the prefix.
        label_to_lm: for each CTC label id ``0..C-1``, the LM vocabulary id of that character,
            or ``None`` (the blank, or a character the LM lacks: scored ``unknown_log_prob``).
        end_id: the LM's end-of-text id, if it has one (enables ``end_log_prob``).
        unknown_log_prob: the log probability of characters the LM lacks.

    Example:
        >>> import torch
        >>> step = lambda tok, st: (torch.log(torch.tensor([0.5, 0.25, 0.25])), st)
        >>> sc = RecurrentLMScorer(step, [None, 0, 2])
        >>> [round(float(x), 3) for x in sc.next_log_probs(sc.initial_state())[1:]]
        [-0.693, -1.386]
    """

    def __init__(
        self,
        step: Callable[[int | None, Any], tuple[Tensor | Sequence[float], Any]],
        label_to_lm: Sequence[int | None],
        *,
        end_id: int | None = None,
        unknown_log_prob: float = -20.0,
    ) -> None:
        if not callable(step):
            raise TypeError(f"RecurrentLMScorer: step must be callable, got {type(step).__name__}")
        self.step = step
        self.label_to_lm = list(label_to_lm)
        self.end_id = end_id
        self.unknown_log_prob = float(unknown_log_prob)
        if end_id is not None:
            self.end_log_prob = self._end_log_prob

    def _wrap(self, log_probs: Tensor | Sequence[float], model_state: Any) -> tuple[Any, ...]:
        lp = (
            log_probs.detach().float().reshape(-1).tolist()
            if isinstance(log_probs, Tensor)
            else list(log_probs)
        )
        mapped = [self.unknown_log_prob if i is None else float(lp[i]) for i in self.label_to_lm]
        end = float(lp[self.end_id]) if self.end_id is not None else None
        return (_Opaque(model_state), tuple(mapped), end)

    def initial_state(self) -> Any:
        return self._wrap(*self.step(None, None))

    def advance(self, state: Any, token: int) -> Any:
        lm_id = self.label_to_lm[int(token)]
        if lm_id is None:
            return state  # the LM cannot see this character; keep its context
        with torch.no_grad():
            return self._wrap(*self.step(lm_id, state[0].value))

    def next_log_probs(self, state: Any) -> Sequence[float]:
        return state[1]

    def _end_log_prob(self, state: Any) -> float:
        return state[2]


class _Opaque(Hashable):
    """Holds a model state (tensors) inside a hashable scorer state, hashed by identity."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other
