"""Kneser-Ney n-gram baseline: normalisation, hand-computed values, a naive oracle."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from carousel.text.ngram import KneserNeyLM


def naive_kn(train: list[int], V: int, N: int, fixed: float | None):
    """Interpolated modified Kneser-Ney written from Chen & Goodman 1998 with dicts, as an
    oracle for the vectorised implementation."""
    raw = {k: Counter() for k in range(1, N + 1)}
    for k in range(1, N + 1):
        for i in range(k - 1, len(train)):
            raw[k][tuple(train[i - k + 1 : i + 1])] += 1
    cont = {k: Counter() for k in range(1, N)}
    for k in range(1, N):
        for g in raw[k + 1]:
            cont[k][g[1:]] += 1

    def discounts(counts):
        if fixed is not None:
            return [0.0, fixed, fixed, fixed]
        n = [sum(1 for v in counts.values() if v == j) for j in (1, 2, 3, 4)]
        if min(n) > 0:
            y = n[0] / (n[0] + 2 * n[1])
            d = [0.0, 1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
        else:
            y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.5
            y = y or 0.5
            d = [0.0, y, y, y]
        return [min(max(x, 0.0), float(j)) for j, x in enumerate(d)]

    def prob(k, h, w, top):
        if k == 0:
            return 1.0 / V
        lower = prob(k - 1, h[1:], w, False)
        counts = raw[k] if top else cont[k]
        d = discounts(counts)
        group = {g: v for g, v in counts.items() if g[:-1] == h}
        total = sum(group.values())
        if total == 0:
            return lower
        c = counts.get((*h, w), 0)
        gamma = sum(d[min(v, 3)] for v in group.values()) / total
        return max(c - d[min(c, 3)], 0) / total + gamma * lower

    def dist(context):
        n = min(N, len(context) + 1)
        h = tuple(context[len(context) - (n - 1) :]) if n > 1 else ()
        return [prob(n, h, w, True) for w in range(V)]

    return dist


def test_hand_computed_bigram_values():
    # "abab" with a third, unseen token and D = 0.5 (worked out in the test's comments):
    # continuation unigrams: P1(a) = P1(b) = 0.5/2 + 0.5/3, P1(c) = 0.5/3
    # P2(b|a) = (2 - 0.5)/2 + (0.5/2) P1(b)
    lm = KneserNeyLM([0, 1, 0, 1], vocab_size=3, order=2, discount=0.5)
    p1 = [0.25 + 0.5 / 3, 0.25 + 0.5 / 3, 0.5 / 3]
    expect_a = [0.25 * p1[0], 0.75 + 0.25 * p1[1], 0.25 * p1[2]]
    expect_b = [0.5 + 0.5 * p1[0], 0.5 * p1[1], 0.5 * p1[2]]
    torch.testing.assert_close(lm.distribution([0]), torch.tensor(expect_a, dtype=torch.float64))
    torch.testing.assert_close(lm.distribution([1]), torch.tensor(expect_b, dtype=torch.float64))
    # with no context the top order is 1, with raw counts: a and b seen twice each in 4 tokens
    raw1 = [1.5 / 4 + 0.25 / 3, 1.5 / 4 + 0.25 / 3, 0.25 / 3]
    torch.testing.assert_close(lm.distribution([]), torch.tensor(raw1, dtype=torch.float64))
    bits = lm.evaluate([0, 1, 0])
    assert bits[2] == pytest.approx(-(math.log2(expect_a[1]) + math.log2(expect_b[0])) / 2)


@pytest.mark.parametrize("fixed", [None, 0.75])
def test_matches_naive_oracle_and_normalises(fixed):
    g = np.random.default_rng(0)
    V, N = 5, 4
    # a skewed random corpus so counts of 1, 2, 3, 4+ all occur
    train = g.choice(V - 1, size=400, p=[0.5, 0.25, 0.15, 0.1]).tolist()
    lm = KneserNeyLM(train, vocab_size=V, order=N, discount=fixed)
    oracle = naive_kn(train, V, N, fixed)
    contexts = [()] + [c for L in (1, 2, 3) for c in itertools.product(range(V), repeat=L)]
    for ctx in contexts[:: 3 if fixed is None else 7]:
        p = lm.distribution(list(ctx))
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12), ctx
        assert bool((p > 0).all())
        torch.testing.assert_close(p, torch.tensor(oracle(list(ctx)), dtype=torch.float64))


def test_evaluate_equals_distribution_lookup_for_every_order():
    g = np.random.default_rng(1)
    V = 6
    train = g.integers(0, V - 1, size=300).tolist()
    valid = g.integers(0, V, size=40).tolist()  # includes the unseen token V-1
    lm = KneserNeyLM(train, vocab_size=V, order=3)
    bits = lm.evaluate(valid)
    assert set(bits) == {1, 2, 3}
    for n in (1, 2, 3):
        sub = KneserNeyLM(train, vocab_size=V, order=n)
        logs = [
            math.log2(float(sub.distribution(valid[max(0, i - n + 1) : i])[valid[i]]))
            for i in range(1, len(valid))
        ]
        assert bits[n] == pytest.approx(-sum(logs) / len(logs), rel=1e-12)


def test_order_higher_than_corpus_is_fine():
    lm = KneserNeyLM([0, 1, 2], vocab_size=3, order=6)
    assert float(lm.distribution([0, 1, 2, 0, 1]).sum()) == pytest.approx(1.0)
    assert set(lm.evaluate([0, 1, 2, 0])) == set(range(1, 7))


def test_errors():
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=3\)"):
        KneserNeyLM([0, 3], vocab_size=3, order=2)
    with pytest.raises(ValueError, match="ids is empty"):
        KneserNeyLM([], vocab_size=3, order=2)
    with pytest.raises(ValueError, match="order must be >= 1"):
        KneserNeyLM([0, 1], vocab_size=3, order=0)
    with pytest.raises(ValueError, match=r"discount must be in \[0, 1\]"):
        KneserNeyLM([0, 1], vocab_size=3, order=2, discount=1.5)
    with pytest.raises(TypeError, match="integer token ids"):
        KneserNeyLM([0.5, 1.0], vocab_size=3, order=2)
    lm = KneserNeyLM([0, 1], vocab_size=3, order=2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        lm.evaluate([0])
