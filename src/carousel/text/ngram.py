r"""Interpolated modified Kneser-Ney n-gram language models: the memoryless baseline that a
recurrent language model has to beat.

The model of order :math:`n` predicts token :math:`w` from the :math:`n-1` tokens :math:`h`
before it (Chen & Goodman 1998, "An empirical study of smoothing techniques for language
modeling", section 3.6, equations 17 and 19):

.. math::

    P_k(w \mid h) = \frac{\max(c_k(hw) - D_k(c_k(hw)), 0)}{\sum_v c_k(hv)}
        + \gamma_k(h)\, P_{k-1}(w \mid h'), \qquad
    \gamma_k(h) = \frac{D_{k,1} N_1(h\bullet) + D_{k,2} N_2(h\bullet)
        + D_{k,3+} N_{3+}(h\bullet)}{\sum_v c_k(hv)}

where :math:`h'` drops the first token of :math:`h`, :math:`N_j(h\bullet)` counts the tokens
seen exactly :math:`j` times (:math:`3+`: at least three times) after :math:`h`, and
:math:`P_0(w) = 1/V` is uniform over the vocabulary. A context never seen (empty sum) takes
:math:`P_{k-1}` unchanged. The counts :math:`c_k` are raw counts at the highest order and
*continuation counts* :math:`N_{1+}(\bullet hw)` (the number of distinct tokens seen before
:math:`hw`) at every lower order, the Kneser-Ney idea (Kneser & Ney 1995). The three discounts
per order and count type come from the counts of counts :math:`n_1..n_4` (Chen & Goodman's
equation 26):

.. math::

    Y = \frac{n_1}{n_1 + 2 n_2}, \quad D_1 = 1 - 2Y\frac{n_2}{n_1}, \quad
    D_2 = 2 - 3Y\frac{n_3}{n_2}, \quad D_{3+} = 3 - 4Y\frac{n_4}{n_3}.

Where a count of counts is zero (tiny corpora) the single Kneser-Ney discount :math:`Y` (or
0.5) is used for all three; each :math:`D_j` is clipped to :math:`[0, j]`, which keeps every
distribution normalised: :math:`\sum_w P_n(w \mid h) = 1` for every context.

Counting is vectorised with numpy: the k-grams are numbered by sorting keys
``id(prefix) * V + token``, so building and scoring a 10-gram model of a million characters
takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["KneserNeyLM", "bits_to_perplexity"]


@dataclass
class _Level:
    """Statistics of one order ``k`` and one count type (raw or continuation)."""

    counts: np.ndarray  # (n_k,) c_k of each distinct k-gram
    context_total: np.ndarray  # (n_{k-1},) sum_v c_k(hv) per context
    context_gamma_num: np.ndarray  # (n_{k-1},) D1 N1 + D2 N2 + D3 N3+ per context
    discounts: np.ndarray  # (4,) D(0)=0, D1, D2, D3+

    def discount(self, c: np.ndarray) -> np.ndarray:
        return self.discounts[np.minimum(c, 3)]


def _discounts(counts: np.ndarray, fixed: float | None) -> np.ndarray:
    if fixed is not None:
        d = np.array([0.0, fixed, fixed, fixed])
    else:
        n = [int(np.count_nonzero(counts == j)) for j in (1, 2, 3, 4)]
        if min(n) > 0:
            y = n[0] / (n[0] + 2 * n[1])
            d = np.array(
                [0.0, 1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
            )
        else:
            y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] > 0 else 0.5
            y = y if y > 0 else 0.5
            d = np.array([0.0, y, y, y])
    return np.clip(d, 0.0, np.array([0.0, 1.0, 2.0, 3.0]))


class KneserNeyLM:
    """An interpolated modified Kneser-Ney n-gram model over token ids.

    One model of order ``order`` also holds every lower order: :meth:`evaluate` scores orders
    ``1..order`` in one pass.

    Args:
        ids: ``(N,)`` training token ids in ``[0, vocab_size)``.
        vocab_size: ``V``; probability mass is spread over all ``V`` ids, seen or not.
        order: the highest order ``n`` (context of ``n - 1`` tokens).
        discount: a fixed discount for every order and count (``None``: Chen & Goodman's
            estimates from the counts of counts, see the module docstring).

    Raises:
        ValueError: if ``ids`` is empty or holds ids outside ``[0, vocab_size)``, or the sizes
            are invalid.

    Example:
        >>> lm = KneserNeyLM(torch.tensor([0, 1, 0, 1, 0, 2]), vocab_size=3, order=2)
        >>> p = lm.distribution([0])
        >>> round(float(p.sum()), 6), int(p.argmax())
        (1.0, 1)
    """

    def __init__(
        self,
        ids: Tensor | np.ndarray | Sequence[int],
        vocab_size: int,
        order: int,
        *,
        discount: float | None = None,
    ) -> None:
        self.vocab_size = V = check_positive_int("KneserNeyLM", "vocab_size", vocab_size)
        self.order = check_positive_int("KneserNeyLM", "order", order)
        if discount is not None and not 0.0 <= float(discount) <= 1.0:
            raise ValueError(f"KneserNeyLM: discount must be in [0, 1] or None, got {discount}")
        tok = _as_ids(ids, V, "ids")
        if tok.size == 0:
            raise ValueError("KneserNeyLM: ids is empty; expected training tokens")
        N = tok.size
        # keys[k-1]: sorted distinct keys of the k-grams; gid: each position's k-gram number
        self._keys: list[np.ndarray] = []
        gids: list[np.ndarray] = []  # gid[i] for positions i >= k-1, else -1
        raw: list[np.ndarray] = []
        firsts: list[np.ndarray] = []
        for k in range(1, order + 1):
            gid = np.full(N, -1, dtype=np.int64)
            if k == 1:
                key = tok.copy()
            else:
                key = gids[k - 2][k - 2 : N - 1] * V + tok[k - 1 :]
            if key.size == 0:
                break  # the corpus is shorter than the order
            ukeys, first, inverse, counts = np.unique(
                key, return_index=True, return_inverse=True, return_counts=True
            )
            gid[k - 1 :] = inverse
            self._keys.append(ukeys)
            gids.append(gid)
            raw.append(counts.astype(np.int64))
            firsts.append(first + (k - 1))  # a position where each distinct k-gram ends
        self._levels_raw: list[_Level] = []
        self._levels_cont: list[_Level] = []
        for k in range(1, len(self._keys) + 1):
            n_ctx = 1 if k == 1 else self._keys[k - 2].size
            ctx = self._keys[k - 1] // V if k > 1 else np.zeros(self._keys[0].size, np.int64)
            # continuation counts of k-grams: distinct (k+1)-grams whose suffix is the k-gram
            if k < len(self._keys):
                suffix = gids[k - 1][firsts[k]]  # the k-gram ending where each (k+1)-gram ends
                cont = np.bincount(suffix, minlength=self._keys[k - 1].size).astype(np.int64)
            else:
                cont = np.zeros_like(raw[k - 1])  # no higher order seen: never used as lower
            for counts, out in ((raw[k - 1], self._levels_raw), (cont, self._levels_cont)):
                d = _discounts(counts[counts > 0], discount)
                total = np.bincount(ctx, weights=counts, minlength=n_ctx)
                num = np.bincount(ctx, weights=d[np.minimum(counts, 3)], minlength=n_ctx)
                out.append(_Level(counts, total, num, d))

    # ------------------------------------------------------------------ internals
    def _level(self, k: int, top: bool) -> _Level:
        return (self._levels_raw if top else self._levels_cont)[k - 1]

    def _lookup(self, k: int, keys: np.ndarray) -> np.ndarray:
        """Numbers of the k-grams with these keys, -1 where unseen."""
        table = self._keys[k - 1]
        pos = np.searchsorted(table, keys)
        pos = np.minimum(pos, table.size - 1)
        return np.where(table[pos] == keys, pos, -1)

    def _interpolate(
        self, k: int, top: bool, ctx: np.ndarray, gid: np.ndarray, lower: np.ndarray
    ) -> np.ndarray:
        """``P_k`` from ``P_{k-1}`` (``lower``) for contexts ``ctx`` and k-grams ``gid``
        (arrays of equal shape; -1 means unseen)."""
        lv = self._level(k, top)
        seen_ctx = ctx >= 0
        c_idx = np.where(seen_ctx, ctx, 0)
        total = np.where(seen_ctx, lv.context_total[c_idx], 0.0)
        c = np.where(gid >= 0, lv.counts[np.where(gid >= 0, gid, 0)], 0)
        has = total > 0
        safe = np.where(has, total, 1.0)
        p = np.maximum(c - lv.discount(c), 0.0) / safe + lv.context_gamma_num[c_idx] / safe * lower
        return np.where(has, p, lower)

    # ------------------------------------------------------------------ API
    def distribution(self, context: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """``P(w | context)`` for every token ``w``: the model of order
        ``min(order, len(context) + 1)`` over the last ``order - 1`` context tokens.

        Args:
            context: the preceding token ids (any length, possibly empty).

        Returns:
            ``(V,)`` float64 probabilities summing to 1.
        """
        V = self.vocab_size
        ctx_ids = _as_ids(context, V, "context")
        n = min(self.order, len(self._keys), ctx_ids.size + 1)
        h = ctx_ids[ctx_ids.size - (n - 1) :] if n > 1 else ctx_ids[:0]
        # numbers of the suffixes of h: ctx_num[j] = number of the last j tokens of h
        ctx_num = [0]  # the empty context
        for j in range(1, n):
            suffix = h[h.size - j :]
            num = 0
            for t, tok in enumerate(suffix):
                num = self._lookup(t + 1, np.array([num * V + tok]))[0] if num >= 0 else -1
                if num < 0:
                    break
            ctx_num.append(int(num))
        w = np.arange(V)
        p = np.full(V, 1.0 / V)
        for k in range(1, n + 1):
            c = ctx_num[k - 1]
            keys = (c * V + w) if k > 1 else w
            gid = self._lookup(k, keys) if c >= 0 else np.full(V, -1)
            p = self._interpolate(k, k == n, np.full(V, c), gid, p)
        return torch.from_numpy(p)

    def evaluate(self, ids: Tensor | np.ndarray | Sequence[int]) -> dict[int, float]:
        """Bits per token on a held-out stream, for every order ``1..order``.

        Token ``i`` is predicted from the tokens before it in ``ids`` (at most ``n - 1``); the
        first token has no context and is not scored (as a recurrent model reading the stream
        scores its targets ``ids[1:]``).

        Args:
            ids: ``(M,)`` token ids, ``M >= 2``.

        Returns:
            ``{n: bits per token of the order-n model}``.

        Raises:
            ValueError: if ``ids`` is shorter than 2 or holds ids outside the vocabulary.
        """
        V = self.vocab_size
        tok = _as_ids(ids, V, "ids")
        M = tok.size
        if M < 2:
            raise ValueError(f"KneserNeyLM.evaluate: expected at least 2 tokens, got {M}")
        K = len(self._keys)
        # vgid[k-1][i]: number of the k-gram ending at i (-1: unseen or i < k-1)
        vgid: list[np.ndarray] = []
        for k in range(1, K + 1):
            g = np.full(M, -1, dtype=np.int64)
            if k == 1:
                g = self._lookup(1, tok)
            elif M >= k:
                p_ = vgid[k - 2][k - 2 : M - 1]
                keys = np.where(p_ >= 0, p_, 0) * V + tok[k - 1 :]
                g[k - 1 :] = np.where(p_ >= 0, self._lookup(k, keys), -1)
            vgid.append(g)
        pos = np.arange(M)
        lower = np.full(M, 1.0 / V)
        out: dict[int, float] = {}
        final = {}
        for k in range(1, K + 1):
            if k == 1:
                ctx = np.zeros(M, np.int64)
            else:
                ctx = np.full(M, -1, np.int64)
                ctx[1:] = vgid[k - 2][:-1]
            final[k] = self._interpolate(k, True, ctx, vgid[k - 1], lower)
            lower = self._interpolate(k, False, ctx, vgid[k - 1], lower)
        for n in range(1, self.order + 1):
            top = np.minimum(pos, min(n, K) - 1) + 1  # the order each position can use
            table = np.stack([final[k] for k in range(1, min(n, K) + 1)])  # (n, M)
            p = np.take_along_axis(table, (top - 1)[None], axis=0)[0]
            out[n] = float(-np.log2(p[1:]).mean())
        return out

    def bits_per_token(self, ids: Tensor | np.ndarray | Sequence[int]) -> float:
        """Bits per token of the full-order model on ``ids`` (see :meth:`evaluate`)."""
        return self.evaluate(ids)[self.order]

    def __repr__(self) -> str:
        sizes = [k.size for k in self._keys]
        return f"KneserNeyLM(order={self.order}, vocab_size={self.vocab_size}, ngrams={sizes})"


def _as_ids(ids: Tensor | np.ndarray | Sequence[int], V: int, name: str) -> np.ndarray:
    if isinstance(ids, Tensor):
        arr = ids.detach().cpu().numpy()
    else:
        arr = np.asarray(ids)
    arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"KneserNeyLM: {name} must hold integer token ids, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= V):
        raise ValueError(
            f"KneserNeyLM: {name} must lie in [0, vocab_size={V}), got values from "
            f"{int(arr.min())} to {int(arr.max())}"
        )
    return arr


def bits_to_perplexity(bits: float) -> float:
    """Perplexity ``2 ** bits`` of a model with ``bits`` bits per token."""
    return math.pow(2.0, bits)
