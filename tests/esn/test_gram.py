"""The compiled AVX-512 Gram kernel (``_kernel.gram``: ``S += X^T X`` on and below the diagonal)
against torch, and the readout's use of it.

Run as a script, this file is the speed probe quoted in ``_kernel.gram``'s docstring::

    .venv/bin/python tests/esn/test_gram.py --features 1002 5002 --rows 1024 --threads 1 2
"""

import argparse
import time

import pytest
import torch

from carousel.esn import RidgeReadout, _kernel
from carousel.esn import readout as readout_mod

needs_kernel = pytest.mark.skipif(
    not _kernel.gram_available(), reason="no compiled kernel with AVX-512 here"
)


def _tril_close(s, ref):
    scale = float(ref.abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(s.tril(), ref.tril(), rtol=1e-12, atol=1e-13 * max(scale, 1.0))


@needs_kernel
@pytest.mark.parametrize("F", [1, 7, 33, 100, 1002, 1022])
@pytest.mark.parametrize("n", [1, 5, 1024])
def test_lower_triangle_equals_torch_and_threads_agree(F, n):
    g = torch.Generator().manual_seed(F * 7 + n)
    x = torch.randn(n, F, generator=g, dtype=torch.float64)
    s0 = torch.randn(F, F, generator=g, dtype=torch.float64)
    ref = s0 + x.T @ x
    one = s0.clone()
    assert _kernel.gram(one, x, threads=1)
    _tril_close(one, ref)
    two = s0.clone()
    assert _kernel.gram(two, x, threads=2)
    # each tile is summed by one thread in the same order: the thread count changes nothing
    assert torch.equal(two.tril(), one.tril())


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_subtract(threads):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(96, 301, generator=g, dtype=torch.float64)
    s0 = torch.randn(301, 301, generator=g, dtype=torch.float64)
    s = s0.clone()
    assert _kernel.gram(s, x, threads=threads, subtract=True)
    _tril_close(s, s0 - x.T @ x)


@pytest.mark.parametrize("n", [1, 40, 300, 777, 1000])
def test_blocked_cholesky_equals_lapack(n):
    """``cholesky_lower_``: blocks of 96 (and a short last one) above 256 features, LAPACK
    below; the upper triangle is not read; ``None`` for a matrix that is not positive
    definite; float32 goes to LAPACK whole."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n + 50, n, generator=g, dtype=torch.float64)
    a = x.T @ x / (n + 50) + 1e-3 * torch.eye(n, dtype=torch.float64)
    work = a.tril() + torch.triu(torch.full_like(a, float("nan")), 1)  # upper: not read
    factor = readout_mod.cholesky_lower_(work)
    ref = torch.linalg.cholesky(a)
    torch.testing.assert_close(factor.tril(), ref, rtol=1e-12, atol=1e-13)
    bad = a.clone()
    bad[n // 2, n // 2] = -1.0
    assert readout_mod.cholesky_lower_(bad) is None
    f32 = readout_mod.cholesky_lower_(a.float())
    torch.testing.assert_close(f32.tril(), ref.float(), rtol=1e-4, atol=1e-5)


def test_wide_ridge_solve_equals_lstsq():
    """A readout of 400 features (the blocked factorisation) against least squares; and with
    a duplicated feature and no ridge (not positive definite), the fallback."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(900, 400, generator=g, dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 2, generator=g, dtype=torch.float64) + 0.1
    r = RidgeReadout(400, 2, ridge=1e-2)
    r.accumulate(x, y)
    r.solve()
    xc, yc = x - x.mean(0), y - y.mean(0)
    a = torch.cat([xc, 0.1 * torch.eye(400, dtype=torch.float64)])
    b = torch.cat([yc, torch.zeros(400, 2, dtype=torch.float64)])
    torch.testing.assert_close(r.weight, torch.linalg.lstsq(a, b).solution.T, rtol=1e-8, atol=1e-10)
    x[:, 1] = x[:, 0]
    y = x[:, :3] @ torch.randn(3, 2, generator=g, dtype=torch.float64) + 0.1
    r = RidgeReadout(400, 2, ridge=0.0)
    r.accumulate(x, y)
    r.solve()
    torch.testing.assert_close(r(x), y, rtol=1e-6, atol=1e-6)


@needs_kernel
def test_strided_operands():
    g = torch.Generator().manual_seed(1)
    big = torch.randn(300, 140, generator=g, dtype=torch.float64)
    for x in (big[:, :70], big[:, ::2], big[:70].T, big[5:6, :70]):  # gapped rows / columns
        s = torch.zeros(80, 90, dtype=torch.float64)
        view = s[3:73, 10:80]  # rows not contiguous with each other
        assert _kernel.gram(view, x, threads=2)
        _tril_close(view, x.T @ x)
        outside = s.clone()
        outside[3:73, 10:80] = 0
        assert not outside.any()


@needs_kernel
def test_declines_what_it_cannot_run():
    x = torch.randn(10, 8, dtype=torch.float64)
    s = torch.zeros(8, 8, dtype=torch.float64)
    assert not _kernel.gram(s.float(), x.float())
    assert not _kernel.gram(torch.zeros(8, 8, dtype=torch.float64).T, x)  # columns gapped
    assert not _kernel.gram(torch.zeros(9, 9, dtype=torch.float64), x)
    assert not s.any()
    assert _kernel.gram(s, x[:0]) and not s.any()


def test_readout_uses_the_kernel_only_for_float64(monkeypatch):
    calls = []
    real = _kernel.gram
    monkeypatch.setattr(_kernel, "gram", lambda *a: calls.append(a[0].dtype) or real(*a))
    x = torch.randn(200, 70, dtype=torch.float64)
    y = torch.randn(200, 2, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        r = RidgeReadout(70, 2, accumulate_dtype=dtype)
        r.accumulate(x, y)
        r.accumulate(x[:2], y[:2])  # small: torch's addmm, no call
        r.solve()
        ref = (x.T @ x).to(dtype) + (x[:2].T @ x[:2]).to(dtype)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(r.xx, ref, rtol=tol, atol=tol * 300)
    assert calls == [torch.float64, torch.float32]


def test_fit_unchanged_without_the_kernel(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(900, 300, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(900, 3, generator=g, dtype=torch.float64)

    def fit():
        r = RidgeReadout(300, 3, ridge=1e-3)
        for start in range(0, 900, 256):
            r.accumulate(x[start : start + 256], y[start : start + 256])
        r.solve()
        return r

    fast = fit()
    monkeypatch.setattr(_kernel, "gram_available", lambda: False)
    slow = fit()
    torch.testing.assert_close(fast.xx, slow.xx, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(fast.weight, slow.weight, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fast.bias, slow.bias, rtol=1e-9, atol=1e-11)


def _probe() -> None:
    p = argparse.ArgumentParser(description="GFLOP/s of the Gram sums (lower triangle)")
    p.add_argument("--features", type=int, nargs="+", default=[1002])
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()

    def best(f, reps):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    for threads in args.threads:
        torch.set_num_threads(threads)
        for F in args.features:
            x = torch.randn(args.rows, F, dtype=torch.float64)
            s = torch.zeros(F, F, dtype=torch.float64)
            tri = args.rows * F * (F + 1)  # flops of the lower triangle, diagonal included
            reps = args.repeats if F < 3000 else 2
            runs = {
                "kernel": lambda s, x, k: _kernel.gram(s, x, k),
                "torch bands": lambda s, x, k: readout_mod._add_gram_torch(s, x),
                "torch addmm": lambda s, x, k: s.addmm_(x.T, x),
            }
            times = {
                name: best(lambda f=f, s=s, x=x, k=threads: f(s, x, k), reps)
                for name, f in runs.items()
            }
            for name, t in times.items():
                print(
                    f"threads {threads} features {F} rows {args.rows} {name}: {t * 1e3:.2f} ms, "
                    f"{tri / t / 1e9:.1f} GFLOP/s (lower-triangle flops)"
                )


if __name__ == "__main__":
    _probe()
