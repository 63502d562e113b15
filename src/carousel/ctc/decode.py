"""CTC decoders: greedy best path and prefix beam search with character-LM fusion.

Both return :class:`CTCHypothesis` tuples carrying, for each recognised character, the frame
at which it was first emitted, so a caller can say *when* each character was recognised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from carousel._checks import check_positive_int, shape_str
from carousel.ctc.scorers import CharScorer

__all__ = ["CTCHypothesis", "beam_search_decode", "greedy_decode", "prefix_beam_search"]

_NEG_INF = -math.inf


class CTCHypothesis(NamedTuple):
    """One decoded sequence.

    Attributes:
        tokens: the label ids (blanks and repeats removed).
        score: the log score used for ranking: for :func:`greedy_decode` the log probability
            of the best path; for :func:`prefix_beam_search` the log probability of the
            labelling summed over its alignments in the beam, plus ``lm_weight`` times the
            language model's log probability and ``length_bonus`` per character.
        timesteps: for each token, the frame where it was first emitted.
    """

    tokens: tuple[int, ...]
    score: float
    timesteps: tuple[int, ...]


def _check_log_probs(
    owner: str, log_probs: Tensor, lengths: Tensor | Sequence[int] | None, batched: bool
) -> tuple[Tensor, list[int]]:
    if not isinstance(log_probs, Tensor) or not log_probs.is_floating_point():
        raise TypeError(f"{owner}: log_probs must be a floating-point tensor")
    want = 3 if batched else 2
    if log_probs.dim() != want:
        exp = "(T, B, C)" if batched else "(T, C)"
        raise ValueError(
            f"{owner}: expected log_probs of shape {exp}, got {shape_str(tuple(log_probs.shape))}"
        )
    T = log_probs.shape[0]
    B = log_probs.shape[1] if batched else 1
    if lengths is None:
        lens = [T] * B
    else:
        lens = [int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        if len(lens) != B:
            raise ValueError(f"{owner}: expected {B} lengths, got {len(lens)}")
        for b, v in enumerate(lens):
            if not 0 <= v <= T:
                raise ValueError(
                    f"{owner}: lengths must be in [0, T={T}], got {v} for sequence {b}"
                )
    return log_probs.detach(), lens


def greedy_decode(
    log_probs: Tensor, lengths: Tensor | Sequence[int] | None = None, *, blank: int = 0
) -> list[CTCHypothesis]:
    """Best-path decoding (Graves et al. 2006, section 3.2, eq. 4): the most probable class
    at each frame, then repeats merged and blanks removed.

    Args:
        log_probs: per-frame log probabilities (or any scores; only the argmax and, for the
            score, the values matter).
        lengths: ``(B,)`` valid frames per sequence (default: all ``T``).
        blank: the blank's id.

    Returns:
        One :class:`CTCHypothesis` per sequence; ``timesteps`` are the first frames of each
        emitted run.

    Raises:
        ValueError: for a shape, a length or a ``blank`` out of range.

    Shape:
        - log_probs ``(T, B, C)``; lengths ``(B,)``.

    Example:
        >>> import torch
        >>> lp = torch.log(torch.tensor([[[.1, .9, 0]], [[.1, .8, .1]], [[.9, .1, 0]],
        ...                              [[.1, .8, .1]]]) + 1e-9)
        >>> greedy_decode(lp)[0].tokens, greedy_decode(lp)[0].timesteps
        ((1, 1), (0, 3))
    """
    lp, lens = _check_log_probs("greedy_decode", log_probs, lengths, batched=True)
    C = lp.shape[-1]
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < C:
        raise ValueError(f"greedy_decode: blank must be an int in [0, {C - 1}], got {blank!r}")
    best, arg = lp.max(dim=-1)  # (T, B)
    arg_rows, best = arg.t().cpu().tolist(), best.t().double().cpu()
    out = []
    for b, n in enumerate(lens):
        tokens, steps, prev = [], [], blank
        for t in range(n):
            k = arg_rows[b][t]
            if k != blank and k != prev:
                tokens.append(k)
                steps.append(t)
            prev = k
        out.append(CTCHypothesis(tuple(tokens), float(best[b, :n].sum()), tuple(steps)))
    return out


def _lse(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


@dataclass
class _Beam:
    p_blank: float = _NEG_INF  # log P(prefix, path ends in blank) over frames so far
    p_label: float = _NEG_INF  # log P(prefix, path ends in its last label)
    timesteps: tuple[int, ...] = ()
    best_contrib: float = _NEG_INF  # the largest single contribution (keeps timesteps)
    lm_state: Any = None
    lm_score: float = 0.0  # summed log P_LM of the prefix's characters

    @property
    def total(self) -> float:
        return _lse(self.p_blank, self.p_label)


def prefix_beam_search(
    log_probs: Tensor,
    *,
    beam_width: int = 16,
    blank: int = 0,
    scorer: CharScorer | None = None,
    lm_weight: float = 0.5,
    length_bonus: float = 0.0,
    prune_log_prob: float = math.log(1e-4),
    num_hypotheses: int | None = None,
) -> list[CTCHypothesis]:
    r"""CTC prefix beam search (Graves et al. 2006 section 3.2; Hannun et al. 2014, "First-pass
    large vocabulary continuous speech recognition using bi-directional recurrent DNNs",
    algorithm 1) with optional shallow fusion of a character language model.

    Each prefix :math:`\ell` keeps :math:`p_b(\ell)` and :math:`p_{nb}(\ell)`, the probability
    of all paths over frames ``0..t`` that collapse to :math:`\ell` and end in a blank or in
    its last label. At each frame a prefix is kept (blank, or its last label repeated) or
    extended by a label :math:`c`, from :math:`p_b + p_{nb}`, or only from :math:`p_b` when
    :math:`c` repeats its last label (CTC needs a blank between repeats). Prefixes are ranked
    by

    .. math::

        \log\big(p_b(\ell) + p_{nb}(\ell)\big) + \lambda \log P_{LM}(\ell) + \beta |\ell|

    with :math:`\lambda` = ``lm_weight`` and :math:`\beta` = ``length_bonus``; the LM term is
    a function of the prefix only, so the CTC sums stay exact. When the scorer has
    ``end_log_prob``, finished hypotheses add :math:`\lambda \log P_{LM}(\text{end}|\ell)`.

    Args:
        log_probs: log-softmax outputs of one sequence.
        beam_width: prefixes kept after each frame.
        blank: the blank's id.
        scorer: a :class:`~carousel.ctc.scorers.CharScorer` (e.g.
            :class:`~carousel.ctc.scorers.NGramCharScorer`), or ``None`` for no LM.
        lm_weight: :math:`\lambda`.
        length_bonus: :math:`\beta` (offsets the LM's preference for short outputs).
        prune_log_prob: labels below this log probability at a frame are not tried (the
            frame's best label always is).
        num_hypotheses: how many to return (default ``beam_width``).

    Returns:
        Hypotheses, best first; ``timesteps`` hold the frame where each character of the
        best-scoring path into the prefix was emitted.

    Shape:
        - log_probs ``(T, C)``.

    Example:
        >>> import torch
        >>> lp = torch.log(torch.tensor([[.4, .6], [.4, .6]]))
        >>> h = prefix_beam_search(lp, beam_width=4)[0]  # 'a' (.36+.24+.24) beats '' (.16)
        >>> h.tokens, round(math.exp(h.score), 2), h.timesteps
        ((1,), 0.84, (0,))
    """
    lp, _ = _check_log_probs("prefix_beam_search", log_probs, None, batched=False)
    check_positive_int("prefix_beam_search", "beam_width", beam_width)
    T, C = lp.shape
    if not 0 <= blank < C:
        raise ValueError(f"prefix_beam_search: blank must be in [0, {C - 1}], got {blank}")
    if scorer is not None and not isinstance(scorer, CharScorer):
        raise TypeError(
            "prefix_beam_search: scorer must have initial_state(), next_log_probs(state) and "
            f"advance(state, token), got {type(scorer).__name__}"
        )
    frames = lp.double().cpu()
    lm_cache: dict[tuple[int, ...], Sequence[float]] = {}

    def lm_next(scorer: CharScorer, prefix: tuple[int, ...], beam: _Beam) -> Sequence[float]:
        got = lm_cache.get(prefix)
        if got is None:
            got = scorer.next_log_probs(beam.lm_state)
            lm_cache[prefix] = got
        return got

    def rank(prefix: tuple[int, ...], beam: _Beam) -> float:
        return beam.total + lm_weight * beam.lm_score + length_bonus * len(prefix)

    root = _Beam(p_blank=0.0)
    if scorer is not None:
        root.lm_state = scorer.initial_state()
    beams: dict[tuple[int, ...], _Beam] = {(): root}
    for t in range(T):
        frame = frames[t]
        best_label = int(frame.argmax())
        cand = (frame >= prune_log_prob).nonzero().flatten().tolist()
        if best_label not in cand:
            cand.append(best_label)
        row = frame.tolist()
        nxt: dict[tuple[int, ...], _Beam] = {}

        def add(
            prefix: tuple[int, ...],
            parent: _Beam,
            c: int | None,
            ends_blank: bool,
            value: float,
            nxt: dict = nxt,
            t: int = t,
        ) -> None:
            b = nxt.get(prefix)
            if b is None:
                b = _Beam(lm_state=parent.lm_state, lm_score=parent.lm_score)
                if c is not None and scorer is not None:
                    b.lm_score = parent.lm_score + lm_next(scorer, prefix[:-1], parent)[c]
                    b.lm_state = scorer.advance(parent.lm_state, c)
                nxt[prefix] = b
            if ends_blank:
                b.p_blank = _lse(b.p_blank, value)
            else:
                b.p_label = _lse(b.p_label, value)
            if value > b.best_contrib:  # timesteps follow the strongest contribution
                b.best_contrib = value
                b.timesteps = parent.timesteps if c is None else (*parent.timesteps, t)

        for prefix, beam in beams.items():
            p_tot = beam.total
            last = prefix[-1] if prefix else None
            for c in cand:
                p = row[c]
                if c == blank:
                    add(prefix, beam, None, True, p_tot + p)
                elif c == last:
                    # the last label again: merged into the same prefix without a blank, or a
                    # new copy of it after a blank (CTC needs the blank between repeats)
                    if beam.p_label > _NEG_INF:
                        add(prefix, beam, None, False, beam.p_label + p)
                    if beam.p_blank > _NEG_INF:
                        add((*prefix, c), beam, c, False, beam.p_blank + p)
                else:
                    add((*prefix, c), beam, c, False, p_tot + p)
        ranked = sorted(nxt.items(), key=lambda kv: rank(*kv), reverse=True)
        beams = dict(ranked[:beam_width])
    end = getattr(scorer, "end_log_prob", None) if scorer is not None else None
    hyps = []
    for prefix, beam in beams.items():
        score = rank(prefix, beam)
        if end is not None:
            score += lm_weight * end(beam.lm_state)
        hyps.append(CTCHypothesis(prefix, score, beam.timesteps))
    hyps.sort(key=lambda h: h.score, reverse=True)
    return hyps[: num_hypotheses or beam_width]


def beam_search_decode(
    log_probs: Tensor, lengths: Tensor | Sequence[int] | None = None, **kwargs: Any
) -> list[list[CTCHypothesis]]:
    """:func:`prefix_beam_search` over a batch.

    Args:
        log_probs: ``(T, B, C)`` log-softmax outputs.
        lengths: ``(B,)`` valid frames per sequence (default: all ``T``).
        **kwargs: passed to :func:`prefix_beam_search`.

    Returns:
        For each sequence, its hypotheses best first.
    """
    lp, lens = _check_log_probs("beam_search_decode", log_probs, lengths, batched=True)
    return [prefix_beam_search(lp[:n, b], **kwargs) for b, n in enumerate(lens)]
