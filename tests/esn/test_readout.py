"""Ridge readout against a direct least-squares oracle (float64); incremental sums; RLS."""

import pytest
import torch

from carousel.esn import RidgeReadout, RLSReadout


def data(n=200, f=12, o=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(o, f, generator=g, dtype=torch.float64)
    y = x @ w.T + 0.3 + 0.01 * torch.randn(n, o, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 10.0])
def test_ridge_equals_direct_lstsq(ridge):
    x, y = data()
    r = RidgeReadout(12, 3, ridge=ridge)
    r.accumulate(x, y)
    r.solve()
    # Oracle: unpenalised bias = centred least squares on [Xc; sqrt(ridge) I].
    xc, yc = x - x.mean(0), y - y.mean(0)
    a = torch.cat([xc, ridge**0.5 * torch.eye(12, dtype=torch.float64)])
    b = torch.cat([yc, torch.zeros(12, 3, dtype=torch.float64)])
    w = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(r.weight, w, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(r.bias, y.mean(0) - x.mean(0) @ w.T, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(r(x), x @ w.T + r.bias)


def test_incremental_equals_one_shot():
    x, y = data(300)
    one = RidgeReadout(12, 3, ridge=1e-2)
    one.accumulate(x, y)
    one.solve()
    inc = RidgeReadout(12, 3, ridge=1e-2)
    for chunk in range(0, 300, 70):
        inc.accumulate(x[chunk : chunk + 70], y[chunk : chunk + 70])
    inc.solve()
    torch.testing.assert_close(inc.weight, one.weight)
    torch.testing.assert_close(inc.bias, one.bias)
    # solve(ridge=...) reuses the sums
    inc.solve(ridge=5.0)
    assert not torch.allclose(inc.weight, one.weight)


def test_blocked_symmetric_sums_equal_the_full_product():
    # F = 600 >= 2 x 256 features: large chunks fill the bands on and below the
    # diagonal, small chunks the whole matrix; the solve mirrors, so both mix freely
    x, y = data(700, f=600, o=2, seed=3)
    r = RidgeReadout(600, 2, ridge=1e-1)
    r.accumulate(x[:300], y[:300])
    r.accumulate(x[300:310], y[300:310])
    r.accumulate(x[310:], y[310:])
    r.solve()
    torch.testing.assert_close(r.xx, x.T @ x, rtol=1e-12, atol=1e-9)
    one = RidgeReadout(600, 2, ridge=1e-1)
    one.xx.copy_(x.T @ x)
    one.xy.copy_(x.T @ y)
    one.x_sum.copy_(x.sum(0))
    one.y_sum.copy_(y.sum(0))
    one.count.fill_(700)
    one.solve()
    torch.testing.assert_close(r.weight, one.weight, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(r.bias, one.bias, rtol=1e-9, atol=1e-10)


def test_rls_equals_ridge_with_penalised_bias():
    x, y = data(150, f=6, o=2)
    alpha = 0.5
    rls = RLSReadout(6, 2, alpha=alpha)
    prior = rls.update(x, y)
    assert prior.shape == (150, 2)
    z = torch.cat([x, torch.ones(150, 1, dtype=torch.float64)], 1)
    w = torch.linalg.solve(z.T @ z + alpha * torch.eye(7, dtype=torch.float64), z.T @ y).T
    torch.testing.assert_close(rls.weight, w[:, :6], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(rls.bias, w[:, 6], rtol=1e-8, atol=1e-9)
    rls.reset()
    assert rls.weight_aug.abs().sum() == 0


def test_rls_converges_online():
    x, y = data(400, f=5, o=1, seed=3)
    rls = RLSReadout(5, 1, alpha=1e-3, forgetting=0.999)
    prior = rls.update(x, y)
    early = (prior[:20] - y[:20]).abs().mean()
    late = (prior[-100:] - y[-100:]).abs().mean()
    assert late < 0.05 < early


def test_nan_and_inf_are_refused_before_the_sums_change():
    r = RidgeReadout(4, 2)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    r.accumulate(x, y)
    before = [t.clone() for t in (r.xx, r.xy, r.x_sum, r.y_sum, r.count)]
    bad_x = x.clone()
    bad_x[2, 1] = float("nan")
    both_infs = x.clone()
    both_infs[0, 3], both_infs[4, 3] = float("inf"), float("-inf")  # a column sum of NaN
    bad_y = y.clone()
    bad_y[5, 0] = float("-inf")
    for fx, fy in ((bad_x, y), (both_infs, y), (x, bad_y)):
        with pytest.raises(ValueError, match="NaN or inf"):
            r.accumulate(fx, fy)
    for t, b in zip((r.xx, r.xy, r.x_sum, r.y_sum, r.count), before):
        assert torch.equal(t, b)
    # finite values whose column sum overflows are data, not NaN: accepted as before
    huge = torch.full((2, 4), 1e308, dtype=torch.float64)
    r.accumulate(huge, torch.zeros(2, 2, dtype=torch.float64))
    assert torch.isinf(r.x_sum).all()


def test_errors():
    r = RidgeReadout(4, 2)
    with pytest.raises(ValueError, match="no data accumulated"):
        r.solve()
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 4\)"):
        r.accumulate(torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        r.accumulate(torch.zeros(3, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        r.accumulate(torch.full((3, 4), float("nan")), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="ridge must be a finite float >= 0"):
        RidgeReadout(4, 2, ridge=-1.0)
    with pytest.raises(RuntimeError, match=r"torch\.distributed is not initialised"):
        r.all_reduce()
    with pytest.raises(ValueError, match="alpha must be a float > 0"):
        RLSReadout(4, 2, alpha=0.0)
    with pytest.raises(ValueError, match=r"forgetting must be in \(0, 1\]"):
        RLSReadout(4, 2, forgetting=1.5)
