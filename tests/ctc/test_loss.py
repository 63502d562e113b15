import itertools
import math

import pytest
import torch

from carousel.ctc import CTCLoss, check_ctc_inputs, ctc_loss, ctc_loss_reference, min_ctc_length


def brute_force_nll(log_probs, target, blank=0):
    """-log p(l|x) by enumerating every path (Graves et al. 2006, eq. 3)."""
    T, C = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(C), repeat=T):
        collapsed = [k for k, _ in itertools.groupby(path) if k != blank]
        if collapsed == list(target):
            s = sum(float(log_probs[t, k]) for t, k in enumerate(path))
            total = (
                max(total, s) + math.log1p(math.exp(-abs(total - s))) if total > -math.inf else s
            )
    return -total


@pytest.mark.parametrize("target", [[1], [1, 2], [2, 2], [1, 2, 1], []])
def test_reference_matches_path_enumeration(target):
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(5, 3, generator=g, dtype=torch.float64).log_softmax(-1)
    ref = ctc_loss_reference(lp, target)
    assert ref.nll == pytest.approx(brute_force_nll(lp, target), rel=1e-12)


def test_reference_alpha_beta_consistency():
    # sum_s alpha_t(s) beta_t(s) / y_t(l'_s) = p(l|x) at every t (Graves et al. 2006, eq. 14)
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(7, 4, generator=g, dtype=torch.float64).log_softmax(-1)
    target = [1, 3, 3]
    ref = ctc_loss_reference(lp, target)
    ext = [0, 1, 0, 3, 0, 3, 0]
    for t in range(7):
        v = torch.logsumexp(ref.log_alpha[t] + ref.log_beta[t] - lp[t, ext], 0)
        assert float(v) == pytest.approx(-ref.nll, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_loss_and_gradient_match_reference_float64(seed):
    g = torch.Generator().manual_seed(seed)
    T, B, C = 12, 4, 6
    logits = torch.randn(T, B, C, generator=g, dtype=torch.float64, requires_grad=True)
    targets = [[1, 2, 3], [4, 4], [5], [2, 3, 3, 2, 1]]
    input_lengths = [12, 9, 3, 10]
    padded = torch.zeros(B, 5, dtype=torch.long)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = torch.tensor(t)
    loss = ctc_loss(
        logits.log_softmax(-1), padded, input_lengths, [len(t) for t in targets], reduction="none"
    )
    upstream = torch.rand(B, generator=g, dtype=torch.float64)
    (loss * upstream).sum().backward()
    for b, t in enumerate(targets):
        n = input_lengths[b]
        ref = ctc_loss_reference(logits[:n, b].log_softmax(-1), t)
        assert float(loss[b].detach()) == pytest.approx(ref.nll, rel=1e-10)
        torch.testing.assert_close(logits.grad[:n, b], upstream[b] * ref.grad_logits)
        assert torch.all(logits.grad[n:, b] == 0)


def test_concatenated_targets_equal_padded_and_module():
    lp = torch.randn(8, 2, 5, dtype=torch.float64).log_softmax(-1)
    a = ctc_loss(lp, torch.tensor([[1, 2, 0], [3, 3, 4]]), [8, 7], [2, 3], reduction="sum")
    b = ctc_loss(lp, torch.tensor([1, 2, 3, 3, 4]), [8, 7], [2, 3], reduction="sum")
    c = CTCLoss(reduction="sum")(lp, torch.tensor([1, 2, 3, 3, 4]), [8, 7], [2, 3])
    assert float(a) == pytest.approx(float(b)) and float(b) == pytest.approx(float(c))


def test_gradcheck():
    logits = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(x):
        return ctc_loss(x.log_softmax(-1), torch.tensor([[1, 2], [3, 0]]), [6, 4], [2, 1])

    assert torch.autograd.gradcheck(f, (logits,))


def test_min_ctc_length():
    assert min_ctc_length([]) == 0
    assert min_ctc_length([1, 1]) == 3
    assert min_ctc_length([1, 2, 2, 2]) == 6


def test_infeasible_target_is_an_error_naming_the_sequence():
    lp = torch.randn(4, 2, 3).log_softmax(-1)
    targets = torch.tensor([[1, 2], [1, 1]])
    with pytest.raises(
        ValueError, match=r"sequence 1 .* needs at least 3 frames.*input_lengths\[1\]=2"
    ):
        ctc_loss(lp, targets, [4, 2], [2, 2])
    # torch's behaviour when asked for
    loss = ctc_loss(lp, targets, [4, 2], [2, 2], zero_infinity=True, reduction="none")
    assert loss[1] == 0 and torch.isfinite(loss).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(log_probs=torch.randn(4, 3)), ValueError, r"log_probs of shape \(T, B, C\)"),
        (dict(log_probs=torch.randn(4, 2, 3, 1)), ValueError, r"log_probs of shape \(T, B, C\)"),
        (dict(log_probs=torch.randn(4, 2, 1)), ValueError, r"C >= 2"),
        (dict(log_probs=torch.zeros(4, 2, 3, dtype=torch.long)), TypeError, "floating-point"),
        (dict(targets=torch.tensor([[1.0, 2.0], [1.0, 2.0]])), TypeError, "integer class ids"),
        (
            dict(targets=torch.tensor([[1, 0], [1, 2]]), target_lengths=[2, 2]),
            ValueError,
            r"label 0 at position 1, which is the blank",
        ),
        (dict(targets=torch.tensor([[1, 7], [1, 2]])), ValueError, r"outside \[0, 2\]"),
        (dict(input_lengths=[5, 4]), ValueError, r"input_lengths must be in \[1, T=4\], got 5"),
        (dict(input_lengths=[4]), ValueError, r"input_lengths of shape \(2,\)"),
        (dict(input_lengths=[4.0, 4.0]), TypeError, "input_lengths must hold integers"),
        (dict(target_lengths=[3, 1]), ValueError, r"target_lengths\[0\]=3 exceeds .* S=2"),
        (dict(target_lengths=[-1, 1]), ValueError, "target_lengths must be >= 0"),
        (dict(targets=torch.tensor([1, 2])), ValueError, r"sum\(target_lengths\)=3"),
        (dict(targets=torch.ones(2, 2, 2, dtype=torch.long)), ValueError, r"targets of shape"),
        (dict(blank=3), ValueError, r"blank must be an int in \[0, 2\]"),
        (dict(log_probs=torch.full((4, 2, 3), math.nan)), ValueError, "contain NaN"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(log_probs=[[0.0]]), TypeError, "log_probs must be a torch.Tensor"),
    ],
)
def test_documented_errors(kwargs, exc, match):
    args = dict(
        log_probs=torch.randn(4, 2, 3).log_softmax(-1),
        targets=torch.tensor([[1, 2], [2, 0]]),
        input_lengths=[4, 4],
        target_lengths=[2, 1],
    )
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ctc_loss(**args)


def test_unnormalised_log_probs_warn():
    with pytest.warns(UserWarning, match="apply log_softmax"):
        ctc_loss(torch.randn(4, 1, 3), torch.tensor([[1]]), [4], [1])


def test_check_returns_long_lengths():
    il, tl = check_ctc_inputs(torch.zeros(3, 1, 2), torch.tensor([[1]]), [3], (1,))
    assert il.dtype == tl.dtype == torch.long
