"""Conjugate gradient: solves SPD systems, preconditioned and warm-started; Martens' stopping
rule; stored iterates; breakdown on indefinite matrices; argument errors."""

import math

import pytest
import torch

from carousel.optim import conjugate_gradient

D = torch.float64


def _spd(n, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    eig = torch.logspace(0, math.log10(cond), n, dtype=D)
    return Q @ torch.diag(eig) @ Q.T


def _phi(A, b, x):
    return float(0.5 * x @ A @ x - b @ x)


@pytest.mark.parametrize("precondition", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_solves_spd_system(precondition, warm):
    n = 30
    A = _spd(n, 1e3)
    b = torch.randn(n, dtype=D)
    x0 = torch.randn(n, dtype=D) if warm else None
    M = torch.diagonal(A).clone() if precondition else None
    res = conjugate_gradient(lambda v: A @ v, b, x0, preconditioner=M, max_iter=200, tol=1e-14)
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    assert res.objective.shape == (res.iterations,)
    assert res.objective[-1].item() == pytest.approx(_phi(A, b, res.x), rel=1e-9)
    assert res.iterates[-1][0] == res.iterations and res.iterates[-1][1] is res.x


def test_preconditioner_cuts_iterations_on_badly_scaled_diagonal():
    n = 60
    scale = torch.logspace(0, 4, n, dtype=D)
    A = torch.diag(scale) + 0.01 * _spd(n, 10.0)
    b = torch.randn(n, dtype=D)
    plain = conjugate_gradient(lambda v: A @ v, b, max_iter=500, tol=1e-10)
    pre = conjugate_gradient(
        lambda v: A @ v, b, preconditioner=torch.diagonal(A).clone(), max_iter=500, tol=1e-10
    )
    assert pre.iterations < plain.iterations / 2


def test_objective_decreases_and_iterates_are_the_cg_path():
    n = 40
    A = _spd(n, 1e4, seed=1)
    b = torch.randn(n, dtype=D)
    res = conjugate_gradient(lambda v: A @ v, b, max_iter=25, tol=1e-14)
    assert res.stop == "max_iter" and res.iterations == 25
    assert bool((res.objective.diff() <= 1e-12).all())  # CG decreases phi monotonically
    steps = [i for i, _ in res.iterates]
    want = sorted({math.ceil(1.3**j) for j in range(1, 13) if math.ceil(1.3**j) <= 25} | {1, 25})
    assert steps == want
    for i, x in res.iterates[:-1]:  # each stored x is the i-th iterate of a run of i steps
        short = conjugate_gradient(lambda v: A @ v, b, max_iter=i, tol=1e-14)
        torch.testing.assert_close(x, short.x)


def test_martens_relative_progress_rule():
    n = 200
    A = _spd(n, 1e6, seed=2)
    b = torch.randn(n, dtype=D)
    res = conjugate_gradient(lambda v: A @ v, b, max_iter=500, tol=5e-4)
    assert res.stop == "progress"
    i = res.iterations
    k = max(10, math.ceil(0.1 * i))
    phi = res.objective
    assert i > k and phi[-1] < 0
    assert (phi[-1] - phi[-1 - k]) / phi[-1] < k * 5e-4
    # one iteration earlier the rule did not yet hold
    k1 = max(10, math.ceil(0.1 * (i - 1)))
    assert not ((phi[-2] - phi[-2 - k1]) / phi[-2] < k1 * 5e-4)
    # min_iter postpones it
    later = conjugate_gradient(lambda v: A @ v, b, max_iter=500, tol=5e-4, min_iter=i + 5)
    assert later.iterations >= i + 5


def test_indefinite_matrix_stops_with_negative_curvature():
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=D))
    res = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 1.0], dtype=D), max_iter=10)
    assert res.stop == "negative_curvature"


def test_zero_right_hand_side_converges_at_once():
    res = conjugate_gradient(lambda v: 2 * v, torch.zeros(3, dtype=D))
    assert res.stop == "converged" and res.iterations == 0
    assert bool((res.x == 0).all())


def test_argument_errors():
    b = torch.ones(3)

    def mv(v):
        return v

    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        conjugate_gradient(mv, b, max_iter=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        conjugate_gradient(mv, b, tol=0.0)
    with pytest.raises(ValueError, match="store_factor must be > 1"):
        conjugate_gradient(mv, b, store_factor=1.0)
    with pytest.raises(ValueError, match="b must be a flat vector"):
        conjugate_gradient(mv, torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"x0 must have the shape of b \(3,\), got \(4,\)"):
        conjugate_gradient(mv, b, torch.ones(4))
    with pytest.raises(ValueError, match="preconditioner must have the shape of b"):
        conjugate_gradient(mv, b, preconditioner=torch.ones(2))
