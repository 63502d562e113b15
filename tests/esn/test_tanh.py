"""The compiled loop's float64 tanh (AVX-512 builds): accuracy against Python's math.tanh,
special values, and the polynomial's coefficients recomputed from their stated fit."""

import math
import re

import numpy as np
import pytest
import torch

from carousel.esn import _kernel


def vector_tanh():
    lib = _kernel.load(quiet=True)
    if lib is None or not hasattr(lib, "esn_tanh_f64"):
        pytest.skip("no compiled AVX-512 float64 tanh here")

    def f(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        y = np.empty_like(x)
        lib.esn_tanh_f64(x.size, x.ctypes.data, y.ctypes.data)
        return y

    return f


def ulps(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(y - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(np.float64).tiny))


def test_within_two_ulp_of_math_tanh():
    f = vector_tanh()
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0, s, 20_000) for s in (1e-8, 1e-3, 0.1, 0.5, 1.0, 3.0, 10.0)]
        + [rng.uniform(-25, 25, 20_000), rng.uniform(0.62, 0.63, 10_000)]
        + [rng.uniform(-0.63, -0.62, 10_000), rng.uniform(18, 23, 5_000)]
        + [np.nextafter(0.625, [0.0, 1.0]), [1e-310, -1e-310, 5e-324, 22.0, 19.06, 700.0, 1e308]]
    )
    y = f(x)
    ref = np.array([math.tanh(v) for v in x])
    assert ulps(y, ref).max() <= 2.0
    # every length of the masked tail, against the same function on whole vectors
    for n in range(1, 17):
        np.testing.assert_array_equal(f(x[:n]), y[:n])


def test_special_values():
    f = vector_tanh()
    y = f(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-300, -1e-300]))
    assert y[0] == 0.0 and math.copysign(1.0, y[0]) == 1.0
    assert y[1] == 0.0 and math.copysign(1.0, y[1]) == -1.0  # tanh(-0) = -0
    assert y[2] == 1.0 and y[3] == -1.0
    assert np.isnan(y[4]) and np.isnan(y[5])
    assert y[6] == 1e-300 and y[7] == -1e-300


def test_the_loop_with_it_matches_torch():
    """The float64 loop's states agree with torch.tanh's step to float64 rounding."""
    vector_tanh()
    from carousel.esn import Reservoir

    res = Reservoir(1, 64, seed=1, connectivity=0.2, sparse=True, leak_rate=0.5)
    drive = torch.randn(20, 64, dtype=torch.float64) * 3
    h0 = torch.zeros(64, dtype=torch.float64)
    out = _kernel.recur(res.weight_hh, drive, h0, 0.5)
    h, ref = h0, []
    for d in drive:
        h = 0.5 * h + 0.5 * torch.tanh(d + res.weight_hh.to_dense() @ h)
        ref.append(h)
    torch.testing.assert_close(out, torch.stack(ref), rtol=1e-13, atol=1e-14)


def test_coefficients_are_the_stated_fit():
    """TANH_Q: least squares for (tanh(x)/x - 1)/z, z = x^2, on 300 Chebyshev nodes of z in
    [0, 0.625^2], weighted for relative error, at 50 digits (as the C source says)."""
    mp = pytest.importorskip("mpmath")
    block = re.search(r"TANH_Q\[11\] = \{(.*?)\};", _kernel._SOURCE, re.S).group(1)
    stated = [float(v) for v in block.replace("\n", " ").split(",") if v.strip()]
    with mp.workdps(50):
        Z = mp.mpf("0.625") ** 2

        def f(z):
            x = mp.sqrt(z)
            return (mp.tanh(x) / x - 1) / z

        m, n = 300, 11
        nodes = [Z * (1 - mp.cos(mp.pi * (k + mp.mpf(1) / 2) / m)) / 2 for k in range(m)]
        A, b = mp.matrix(m, n), mp.matrix(m, 1)
        for i, z in enumerate(nodes):
            fz = f(z)
            for j in range(n):
                A[i, j] = z**j / fz
            b[i] = 1
        coef = mp.qr_solve(A, b)[0]
        assert stated == [float(coef[j]) for j in range(n)]
