r"""Connectionist temporal classification loss (Graves et al. 2006) with input checks.

:func:`ctc_loss` computes what :func:`torch.nn.functional.ctc_loss` computes, the negative log
probability of each target sequence summed over all its CTC alignments,

.. math::

    -\ln p(\mathbf l \mid \mathbf x) = -\ln \sum_{\pi \in \mathcal B^{-1}(\mathbf l)}
        \prod_{t=1}^{T} y^t_{\pi_t} \qquad \text{(Graves et al. 2006, eqs. 2-3)}

where :math:`\mathcal B` removes repeated labels and then blanks. It first checks what torch does
not: shapes, dtypes, label ranges, lengths, and *feasibility*: a target of length ``L`` with
``R`` adjacent repeated labels needs at least ``L + R`` frames, because a blank must separate
each repeat (``"ll"`` in "hello" needs ``l _ l``). torch returns ``inf`` (or silently 0 with
``zero_infinity``) for such a target; here it is an error naming the sequence, unless
``zero_infinity=True`` asks for torch's behaviour.

:func:`ctc_loss_reference` is an independent float64 implementation of the paper's
forward-backward recursions in log space (eqs. 6-16), the oracle of the tests.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._checks import check_choice, check_tensor, shape_str

__all__ = [
    "CTCLoss",
    "CTCReference",
    "check_ctc_inputs",
    "ctc_loss",
    "ctc_loss_reference",
    "min_ctc_length",
]

_REDUCTIONS = ("none", "mean", "sum")


def min_ctc_length(target: Sequence[int]) -> int:
    """The fewest frames that can emit ``target`` under CTC: its length plus one blank for each
    adjacent repeated label.

    Example:
        >>> min_ctc_length([5, 3, 3, 3, 1])
        7
    """
    target = [int(t) for t in target]
    return len(target) + sum(a == b for a, b in itertools.pairwise(target))


def _as_lengths(owner: str, name: str, value: object, B: int, device: torch.device) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{owner}: {name} must be a 1-D integer tensor or a sequence of ints, "
                f"got {type(value).__name__}"
            ) from err
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{owner}: {name} must hold integers, got dtype {value.dtype}")
    if value.dim() != 1 or value.shape[0] != B:
        raise ValueError(
            f"{owner}: expected {name} of shape ({B},) (one per sequence of the batch), "
            f"got {shape_str(tuple(value.shape))}"
        )
    return value.to(device=device, dtype=torch.long)


def check_ctc_inputs(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    *,
    blank: int = 0,
    allow_infeasible: bool = False,
    owner: str = "ctc_loss",
) -> tuple[Tensor, Tensor]:
    """Validate CTC inputs; return ``input_lengths`` and ``target_lengths`` as long tensors.

    Args:
        log_probs: ``(T, B, C)`` log-softmax outputs (time-major).
        targets: ``(B, S)`` padded labels, or 1-D ``(sum(target_lengths),)`` concatenated.
        input_lengths: ``(B,)`` frames per sequence, each in ``[1, T]``.
        target_lengths: ``(B,)`` labels per sequence, each in ``[0, S]``.
        blank: the blank's class id, in ``[0, C)``.
        allow_infeasible: do not raise for targets longer than their inputs allow.
        owner: the name used in error messages.

    Returns:
        ``(input_lengths, target_lengths)`` as ``torch.long`` tensors on ``log_probs.device``.

    Raises:
        TypeError: non-tensor or wrong-dtype inputs.
        ValueError: wrong shapes, lengths out of range, labels out of range or equal to the
            blank, NaN in ``log_probs``, or an infeasible target (see :func:`min_ctc_length`).
    """
    check_tensor(owner, "log_probs", log_probs)
    check_tensor(owner, "targets", targets)
    if not log_probs.is_floating_point():
        raise TypeError(
            f"{owner}: log_probs must be a floating-point tensor, got {log_probs.dtype}"
        )
    if log_probs.dim() != 3:
        raise ValueError(
            f"{owner}: expected log_probs of shape (T, B, C) (time-major, C classes with the "
            f"blank), got {shape_str(tuple(log_probs.shape))}"
        )
    T, B, C = log_probs.shape
    if C < 2:
        raise ValueError(f"{owner}: log_probs needs C >= 2 classes (blank + labels), got C={C}")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < C:
        raise ValueError(f"{owner}: blank must be an int in [0, {C - 1}], got {blank!r}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"{owner}: targets must hold integer class ids, got dtype {targets.dtype}")
    device = log_probs.device
    input_lengths = _as_lengths(owner, "input_lengths", input_lengths, B, device)
    target_lengths = _as_lengths(owner, "target_lengths", target_lengths, B, device)
    bad = (input_lengths < 1) | (input_lengths > T)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{owner}: input_lengths must be in [1, T={T}], got {int(input_lengths[b])} for "
            f"sequence {b}"
        )
    if (target_lengths < 0).any():
        b = int((target_lengths < 0).nonzero()[0, 0])
        raise ValueError(f"{owner}: target_lengths must be >= 0, got {int(target_lengths[b])} "
                         f"for sequence {b}")  # fmt: skip
    if targets.dim() == 2:
        if targets.shape[0] != B:
            raise ValueError(
                f"{owner}: expected padded targets of shape ({B}, S), got "
                f"{shape_str(tuple(targets.shape))}"
            )
        S = targets.shape[1]
        if (target_lengths > S).any():
            b = int((target_lengths > S).nonzero()[0, 0])
            raise ValueError(
                f"{owner}: target_lengths[{b}]={int(target_lengths[b])} exceeds the padded "
                f"targets' width S={S}"
            )
        rows = [targets[b, : int(target_lengths[b])] for b in range(B)]
    elif targets.dim() == 1:
        total = int(target_lengths.sum())
        if targets.shape[0] != total:
            raise ValueError(
                f"{owner}: concatenated 1-D targets must have sum(target_lengths)={total} "
                f"labels, got {targets.shape[0]}"
            )
        rows = list(torch.split(targets, target_lengths.tolist()))
    else:
        raise ValueError(
            f"{owner}: expected targets of shape (B, S) or (sum(target_lengths),), got "
            f"{shape_str(tuple(targets.shape))}"
        )
    for b, row in enumerate(rows):
        row_list = row.tolist()
        for pos, lab in enumerate(row_list):
            if lab == blank or not 0 <= lab < C:
                what = "the blank" if lab == blank else f"outside [0, {C - 1}]"
                raise ValueError(
                    f"{owner}: targets of sequence {b} hold label {lab} at position {pos}, which "
                    f"is {what}; targets are label ids other than blank={blank}"
                )
        if not allow_infeasible:
            need = min_ctc_length(row_list)
            have = int(input_lengths[b])
            if need > have:
                repeats = need - len(row_list)
                raise ValueError(
                    f"{owner}: target of sequence {b} has {len(row_list)} labels and {repeats} "
                    f"adjacent repeats, so it needs at least {need} frames, but input_lengths[{b}]"
                    f"={have}; use longer inputs (less subsampling) or zero_infinity=True"
                )
    if torch.isnan(log_probs).any():
        raise ValueError(f"{owner}: log_probs contain NaN")
    return input_lengths, target_lengths


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    *,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    check_normalized: bool = True,
) -> Tensor:
    r"""CTC loss (Graves et al. 2006) over :func:`torch.nn.functional.ctc_loss`, with checks.

    Args:
        log_probs: log-softmax outputs over the ``C`` classes, blank included.
        targets: padded ``(B, S)`` or concatenated 1-D label ids (never the blank).
        input_lengths: ``(B,)`` valid frames per sequence.
        target_lengths: ``(B,)`` labels per sequence.
        blank: the blank's class id.
        reduction: ``"none"`` (one loss per sequence), ``"mean"`` (as torch: each loss divided
            by its target length, then averaged over the batch) or ``"sum"``.
        zero_infinity: accept infeasible targets and give them zero loss and gradient (torch's
            behaviour); by default they are an error.
        check_normalized: warn when ``log_probs`` are not normalised over ``C`` (the gradient
            torch computes assumes log-softmax outputs).

    Returns:
        The loss: a scalar, or ``(B,)`` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`check_ctc_inputs` says.

    Shape:
        - log_probs ``(T, B, C)``; targets ``(B, S)`` or ``(sum L,)``;
          input_lengths, target_lengths ``(B,)``; output ``()`` or ``(B,)``.

    Example:
        >>> import torch
        >>> lp = torch.randn(6, 2, 4).log_softmax(-1)
        >>> loss = ctc_loss(lp, torch.tensor([[1, 2], [3, 3]]), [6, 5], [2, 2])
        >>> ctc_loss(lp, torch.tensor([[1, 1, 1]]), [2], [3])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: ctc_loss: expected padded targets of shape (2, S), got (1, 3)
    """
    check_choice("ctc_loss", "reduction", reduction, _REDUCTIONS)
    input_lengths, target_lengths = check_ctc_inputs(
        log_probs, targets, input_lengths, target_lengths, blank=blank,
        allow_infeasible=zero_infinity,
    )  # fmt: skip
    if check_normalized and log_probs.numel():
        with torch.no_grad():
            dev = (log_probs.detach().float().logsumexp(-1)).abs().max().item()
        tol = 1e-2 if log_probs.dtype in (torch.float16, torch.bfloat16) else 1e-3
        if dev > tol:
            warnings.warn(
                f"ctc_loss: log_probs are not normalised over the classes (logsumexp differs "
                f"from 0 by up to {dev:.3g}); apply log_softmax(dim=-1) first",
                stacklevel=2,
            )
    return F.ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank=blank,
        reduction=reduction, zero_infinity=zero_infinity,
    )  # fmt: skip


class CTCLoss(nn.Module):
    """Module form of :func:`ctc_loss`.

    Args:
        blank, reduction, zero_infinity, check_normalized: as :func:`ctc_loss`.
    """

    def __init__(
        self,
        blank: int = 0,
        reduction: str = "mean",
        zero_infinity: bool = False,
        *,
        check_normalized: bool = True,
    ) -> None:
        super().__init__()
        self.blank = blank
        self.reduction = check_choice("CTCLoss", "reduction", reduction, _REDUCTIONS)
        self.zero_infinity = bool(zero_infinity)
        self.check_normalized = bool(check_normalized)

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor,
        input_lengths: Tensor | Sequence[int],
        target_lengths: Tensor | Sequence[int],
    ) -> Tensor:
        return ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank=self.blank,
            reduction=self.reduction, zero_infinity=self.zero_infinity,
            check_normalized=self.check_normalized,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}"


def _logsumexp(*xs: float) -> float:
    m = max(xs)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(x - m) for x in xs))


class CTCReference(NamedTuple):
    """What :func:`ctc_loss_reference` returns.

    Attributes:
        nll: the negative log probability of the target; ``inf`` for an infeasible target.
        grad_logits: ``(T, C)`` gradient of ``nll`` w.r.t. the softmax inputs (eq. 16).
        log_alpha: ``(T, 2L+1)`` log forward variables (eqs. 6-7).
        log_beta: ``(T, 2L+1)`` log backward variables (eqs. 10-11).
    """

    nll: float
    grad_logits: Tensor
    log_alpha: Tensor
    log_beta: Tensor


def ctc_loss_reference(log_probs: Tensor, target: Sequence[int], blank: int = 0) -> CTCReference:
    r"""The CTC forward-backward algorithm of Graves et al. 2006, section 4.1, in float64 and
    log space, written from the paper for one sequence (slow; for tests).

    With the target :math:`\mathbf l` extended to :math:`\mathbf l'` by blanks at the start, the
    end and between labels (length :math:`2|\mathbf l| + 1`), the forward variables are

    .. math::

        \alpha_1(1) = y^1_b,\quad \alpha_1(2) = y^1_{l_1},\quad \alpha_1(s) = 0\ (s > 2)
        \qquad \text{(eq. 6)}

        \alpha_t(s) = \bar\alpha_t(s)\, y^t_{l'_s} \text{ if } l'_s = b \text{ or }
        l'_{s-2} = l'_s, \text{ else } (\bar\alpha_t(s) + \alpha_{t-1}(s-2))\, y^t_{l'_s}
        \qquad \text{(eq. 7)}

    with :math:`\bar\alpha_t(s) = \alpha_{t-1}(s) + \alpha_{t-1}(s-1)`, and
    :math:`p(\mathbf l|\mathbf x) = \alpha_T(|\mathbf l'|) + \alpha_T(|\mathbf l'|-1)` (eq. 8).
    The backward variables mirror them (eqs. 10-11), and the gradient with respect to the
    unnormalised outputs :math:`u^t_k` (softmax inputs) is

    .. math::

        \frac{\partial(-\ln p)}{\partial u^t_k} = y^t_k - \frac{1}{y^t_k\, p(\mathbf l|\mathbf x)}
            \sum_{s \in lab(\mathbf l, k)} \alpha_t(s) \beta_t(s) \qquad \text{(eq. 16)}.

    Here :math:`\beta_t(s)` includes :math:`y^t_{l'_s}` as in the paper, so
    :math:`\alpha_t(s)\beta_t(s) / y^t_{l'_s}` is the probability of all paths through
    :math:`s` at :math:`t` (eq. 14). Everything is computed as logarithms (the paper's
    rescaling, section 4.1 end, is replaced by log-space sums).

    Args:
        log_probs: ``(T, C)`` log-softmax outputs of one sequence (converted to float64).
        target: the label ids (no blank).
        blank: the blank's id.

    Returns:
        :class:`CTCReference` with ``nll`` (float, ``inf`` if infeasible), ``grad_logits``
        ``(T, C)`` float64 (eq. 16; NaN if infeasible), ``log_alpha`` and ``log_beta``
        ``(T, 2L+1)``.
    """
    lp = log_probs.detach().to(dtype=torch.float64, device="cpu")
    T, C = lp.shape
    y = lp.tolist()
    ext = [blank]
    for lab in target:
        ext += [int(lab), blank]
    S = len(ext)
    ninf = -math.inf
    la = [[ninf] * S for _ in range(T)]
    lb = [[ninf] * S for _ in range(T)]
    la[0][0] = y[0][ext[0]]
    if S > 1:
        la[0][1] = y[0][ext[1]]
    for t in range(1, T):  # eq. 7
        for s in range(S):
            terms = [la[t - 1][s]]
            if s >= 1:
                terms.append(la[t - 1][s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(la[t - 1][s - 2])
            la[t][s] = _logsumexp(*terms) + y[t][ext[s]]
    lb[T - 1][S - 1] = y[T - 1][ext[S - 1]]  # eq. 10
    if S > 1:
        lb[T - 1][S - 2] = y[T - 1][ext[S - 2]]
    for t in range(T - 2, -1, -1):  # eq. 11
        for s in range(S):
            terms = [lb[t + 1][s]]
            if s + 1 < S:
                terms.append(lb[t + 1][s + 1])
            if s + 2 < S and ext[s] != blank and ext[s] != ext[s + 2]:
                terms.append(lb[t + 1][s + 2])
            lb[t][s] = _logsumexp(*terms) + y[t][ext[s]]
    logp = _logsumexp(la[T - 1][S - 1], la[T - 1][S - 2] if S > 1 else ninf)  # eq. 8
    grad = torch.full((T, C), math.nan, dtype=torch.float64)
    if logp > ninf:
        for t in range(T):  # eqs. 14-16
            acc = [ninf] * C
            for s in range(S):
                acc[ext[s]] = _logsumexp(acc[ext[s]], la[t][s] + lb[t][s] - y[t][ext[s]])
            for k in range(C):
                grad[t, k] = math.exp(y[t][k]) - math.exp(acc[k] - logp)
    return CTCReference(
        -logp,
        grad,
        torch.tensor(la, dtype=torch.float64),
        torch.tensor(lb, dtype=torch.float64),
    )
