"""Mackey-Glass, NARMA and Lorenz generators: definitions, accuracy, seeding, errors."""

import math

import pytest
import torch

from carousel.tasks.timeseries import lorenz, mackey_glass, narma


def test_mackey_glass_matches_closed_form_on_first_delay():
    # With a constant history x0, x(t - tau) = x0 on [0, tau], so the equation is linear:
    # x(t) = c/gamma + (x0 - c/gamma) exp(-gamma t), c = beta x0 / (1 + x0^n).
    x0, beta, gamma = 1.2, 0.2, 0.1
    x = mackey_glass(18, x0=x0)[:, 0]
    c = beta * x0 / (1 + x0**10)
    t = torch.arange(18, dtype=torch.float64)
    exact = c / gamma + (x0 - c / gamma) * torch.exp(-gamma * t)
    torch.testing.assert_close(x, exact, atol=1e-10, rtol=0)


def test_mackey_glass_is_fourth_order_accurate():
    a = mackey_glass(300, dt=0.1)
    b = mackey_glass(300, dt=0.05)
    c = mackey_glass(300, dt=0.025)
    e1, e2 = (a - b).abs().max().item(), (b - c).abs().max().item()
    assert e1 < 1e-7
    assert 10 < e1 / e2 < 22  # halving the step divides the error by about 2^4


def test_mackey_glass_statistics_and_fixed_point():
    x = mackey_glass(3000, discard=500)[:, 0]
    # tau = 17 attractor: mean about 0.93, std about 0.23, values inside (0.2, 1.4).
    assert 0.88 < x.mean().item() < 0.97
    assert 0.20 < x.std().item() < 0.26
    assert 0.2 < x.min().item() and x.max().item() < 1.4
    # Small delays: the solution settles on the fixed point x* = 1 (1 + x*^10 = beta / gamma).
    y = mackey_glass(400, tau=2.0)[:, 0]
    assert abs(y[-1].item() - 1.0) < 1e-6


def test_mackey_glass_seed_changes_history_reproducibly():
    a, b = mackey_glass(100, seed=1), mackey_glass(100, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, mackey_glass(100, seed=2))
    assert mackey_glass(10, dtype=torch.float32).dtype == torch.float32


def test_mackey_glass_sampling_and_discard():
    fine = mackey_glass(40, sample_every=0.5)
    coarse = mackey_glass(20, sample_every=1.0)
    torch.testing.assert_close(fine[::2], coarse, atol=1e-12, rtol=0)
    torch.testing.assert_close(mackey_glass(10, discard=5), mackey_glass(15)[5:])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 17.05}, "whole multiple of dt"),
        ({"sample_every": 0.25}, "whole multiple of dt"),
        ({"dt": 0.0}, "dt must be > 0"),
        ({"tau": -1.0}, "tau must be > 0"),
    ],
)
def test_mackey_glass_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mackey_glass(10, **kwargs)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        mackey_glass(0)


def test_narma10_follows_its_definition():
    u, y = narma(300, seed=3, discard=0)
    u, y = u[:, 0].tolist(), y[:, 0].tolist()
    assert all(0 <= v <= 0.5 for v in u)
    prev = [0.0] * 301  # prev[t] = y(t); y[t] in the result is y(t + 1)
    for t in range(300):
        prev[t + 1] = y[t]
    for t in range(9, 300):
        window = sum(prev[t - i] for i in range(10))
        expected = 0.3 * prev[t] + 0.05 * prev[t] * window + 1.5 * u[t - 9] * u[t] + 0.1
        assert math.isclose(prev[t + 1], expected, rel_tol=1e-12)
    a, b = narma(50, seed=1), narma(50, seed=1)
    assert torch.equal(a.u, b.u) and torch.equal(a.y, b.y)
    with pytest.raises(ValueError, match="order must be >= 1"):
        narma(10, order=0)


def test_lorenz_attractor_statistics_and_accuracy():
    x = lorenz(4000, discard=1000)
    assert x.shape == (4000, 3)
    assert 20 < x[:, 2].mean().item() < 27  # mean z about 23.5 on the attractor
    assert abs(x[:, 0].mean().item()) < 3
    a = lorenz(100, dt=0.01, sample_every=0.02)
    b = lorenz(100, dt=0.005, sample_every=0.02)
    c = lorenz(100, dt=0.0025, sample_every=0.02)
    e1, e2 = (a - b).abs().max().item(), (b - c).abs().max().item()
    assert e1 < 1e-2
    assert 10 < e1 / e2 < 22  # RK4: fourth order
    with pytest.raises(ValueError, match="initial must have 3 values"):
        lorenz(10, initial=(1.0, 2.0))
