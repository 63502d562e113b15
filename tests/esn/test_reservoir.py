"""The reservoir recurrence against a naive step-by-step oracle (float64), seeds, devices,
errors."""

import warnings

import pytest
import torch

from carousel.esn import Reservoir, _kernel, random_stream


def naive(res, inputs, h, feedback=None, noise=None):
    """x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1} + W_fb y_{t-1} + b + nu_t)."""
    W = res.weight_hh.to_dense() if res.sparse else res.weight_hh
    out = []
    for t in range(inputs.shape[0] if inputs is not None else feedback.shape[0]):
        pre = h @ W.T + res.bias
        if inputs is not None:
            pre = pre + inputs[t] @ res.weight_ih.T
        if feedback is not None:
            pre = pre + feedback[t] @ res.weight_fb.T
        if noise is not None:
            pre = pre + noise[t]
        h = (1 - res.leak_rate) * h + res.leak_rate * torch.tanh(pre)
        out.append(h)
    return torch.stack(out)


def needs_compiler(impl):
    if impl == "compiled" and _kernel.load() is None:
        pytest.skip("no C compiler")


@pytest.mark.parametrize("impl", ["torch", "compiled", "auto"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("leak_rate", [1.0, 0.3])
@pytest.mark.parametrize("batch", [None, 3])
def test_matches_naive_loop(sparse, leak_rate, batch, impl):
    needs_compiler(impl)
    res = Reservoir(2, 40, leak_rate=leak_rate, bias_scaling=0.5, sparse=sparse, impl=impl, seed=1)
    shape = (25, 2) if batch is None else (25, batch, 2)
    u = torch.randn(shape, dtype=torch.float64)
    h0 = torch.randn((*shape[1:-1], 40), dtype=torch.float64) * 0.1
    states, last = res(u, h0)
    ref = naive(res, u, h0)
    torch.testing.assert_close(states, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, ref[-1])


@pytest.mark.parametrize("impl", ["torch", "compiled"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("in_place", [False, True])
def test_drive_and_recur_write_into_given_buffers(impl, sparse, batch, in_place):
    """``out=``: the drive and the states into the first H columns of a wider buffer (how the
    ridge fit lays its features out), the other columns untouched; the states over the drive
    itself (in place) or into a second such buffer."""
    needs_compiler(impl)
    res = Reservoir(2, 40, leak_rate=0.3, bias_scaling=0.5, sparse=sparse, impl=impl, seed=1)
    u = torch.randn(25, batch, 2, dtype=torch.float64)
    h0 = torch.randn(batch, 40, dtype=torch.float64) * 0.1
    wide = torch.full((25, batch, 43), 7.0, dtype=torch.float64)
    drive = res.drive(u, out=wide[..., :40])
    assert drive.data_ptr() == wide.data_ptr()
    torch.testing.assert_close(drive, res.drive(u), rtol=0, atol=0)
    other = torch.full((25, batch, 41), 5.0, dtype=torch.float64)
    out = drive if in_place else other[..., 1:]
    states = res.recur(drive, h0, out=out)
    assert states.data_ptr() == out.data_ptr()
    torch.testing.assert_close(states, naive(res, u, h0), rtol=1e-12, atol=1e-12)
    assert bool((wide[..., 40:] == 7.0).all()) and bool((other[..., :1] == 5.0).all())
    if not in_place:
        torch.testing.assert_close(drive, res.drive(u), rtol=0, atol=0)  # left as it was


def test_drive_and_recur_out_errors():
    res = Reservoir(2, 10)
    u = torch.randn(5, 1, 2, dtype=torch.float64)
    drive, h0 = res.drive(u), torch.zeros(1, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"expected out of shape \(5, 1, 10\), got \(5, 1, 9\)"):
        res.recur(drive, h0, out=torch.empty(5, 1, 9, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"out is torch.float32 on cpu but the reservoir is"):
        res.recur(drive, h0, out=torch.empty(5, 1, 10))
    with pytest.raises(ValueError, match=r"out must have contiguous, evenly spaced rows of 10"):
        res.recur(drive, h0, out=torch.empty(5, 1, 20, dtype=torch.float64)[..., ::2])
    with pytest.raises(ValueError, match=r"a view of shape \(15, 10\)\), got strides"):
        batch_major = torch.empty(3, 5, 10, dtype=torch.float64).transpose(0, 1)
        res.drive(torch.randn(5, 3, 2, dtype=torch.float64), out=batch_major)
    with pytest.raises(TypeError, match=r"out must be a torch.Tensor, got list"):
        res.drive(u, out=[])
    with pytest.raises(ValueError, match=r"expected inputs with 2 features, got None"):
        res.drive(None, steps=5)


@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_float32_matches_torch(sparse):
    needs_compiler("compiled")
    kw = {"leak_rate": 0.5, "sparse": sparse, "connectivity": 0.2, "dtype": torch.float32}
    ref = Reservoir(1, 64, seed=3, impl="torch", **kw)
    fast = Reservoir(1, 64, seed=3, impl="compiled", **kw)
    u = torch.randn(100, 1)
    torch.testing.assert_close(fast(u)[0], ref(u)[0], rtol=1e-5, atol=1e-5)


def test_auto_takes_the_compiled_loop_for_one_sequence(monkeypatch):
    needs_compiler("compiled")
    calls = []
    real = _kernel.recur
    monkeypatch.setattr(_kernel, "recur", lambda *a: calls.append(a[4]) or real(*a))  # threads
    u = torch.randn(30, 1, dtype=torch.float64)
    Reservoir(1, 50, seed=0)(u)  # one sequence: compiled, one thread (a small step)
    Reservoir(1, 600, seed=0, connectivity=0.1)(u)  # 36,000 nonzeros: torch's thread count
    assert calls == [1, torch.get_num_threads()]
    calls.clear()
    Reservoir(1, 50, seed=0)(torch.randn(30, 3, 1, dtype=torch.float64))  # a batch: torch
    assert not calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_threads_give_identical_states(dtype, sparse):
    needs_compiler("compiled")
    res = Reservoir(1, 300, seed=2, sparse=sparse, connectivity=0.1, leak_rate=0.3, dtype=dtype)
    drive = torch.randn(40, 300, dtype=dtype)
    h0 = torch.randn(300, dtype=dtype) * 0.1
    one = _kernel.recur(res.weight_hh, drive, h0, 0.3, threads=1)
    for threads in (2, 3, 7):
        assert torch.equal(_kernel.recur(res.weight_hh, drive, h0, 0.3, threads=threads), one)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_prefetch_gives_identical_states(dtype, threads):
    """Software prefetch (for matrices beyond the last-level cache) changes no result: rows
    long enough for the prefetching blocks, prefetches past the matrix's end included."""
    needs_compiler("compiled")
    res = Reservoir(1, 400, seed=4, connectivity=0.2, sparse=True, leak_rate=0.3, dtype=dtype)
    drive = torch.randn(30, 400, dtype=dtype)
    h0 = torch.randn(400, dtype=dtype) * 0.1
    W = res.weight_hh
    off = _kernel.recur(W, drive, h0, 0.3, threads=threads, prefetch=False)
    on = _kernel.recur(W, drive, h0, 0.3, threads=threads, prefetch=True)
    assert torch.equal(on, off)
    h, ref = h0, []
    for d in drive:  # the oracle on the drive: h = (1 - a) h + a tanh(d + W h)
        h = 0.7 * h + 0.3 * torch.tanh(d + W.to_dense() @ h)
        ref.append(h)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(on, torch.stack(ref), rtol=tol, atol=tol)


def test_prefetch_by_matrix_size(monkeypatch):
    assert _kernel.last_level_cache_bytes() > 0
    monkeypatch.setattr(_kernel, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert _kernel.wants_prefetch(25_000_000)  # 5000 units, float64 values, 16-bit indices
    assert not _kernel.wants_prefetch(16_000_000)  # 4000 units: in the cache from step to step
    assert not _kernel.wants_prefetch(1_000_000)


@pytest.mark.parametrize("units", [300, 40_000, 70_000])
def test_compiled_csr_column_indices_of_every_width(units):
    # 16-bit column indices up to 2^16 units (40,000 is beyond int16: read as uint16), 32-bit
    # above: a few nonzeros per row, the last columns included
    needs_compiler("compiled")
    g = torch.Generator().manual_seed(units)
    last = torch.full((units, 1), units - 1)
    cols = torch.cat([torch.randint(0, units, (units, 2), generator=g), last], 1).reshape(-1)
    vals = torch.randn(3 * units, generator=g, dtype=torch.float64) * 0.5
    crow = torch.arange(0, 3 * units + 1, 3, dtype=torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
        W = torch.sparse_csr_tensor(crow, cols.to(torch.int32), vals, (units, units))
    drive = torch.randn(4, units, generator=g, dtype=torch.float64)
    h = torch.randn(units, generator=g, dtype=torch.float64)
    out = _kernel.recur(W, drive, h, 0.3, threads=1)
    for t in range(4):
        h = 0.7 * h + 0.3 * torch.tanh(drive[t] + (vals * h[cols]).reshape(units, 3).sum(1))
        torch.testing.assert_close(out[t], h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("units", [82, 70_000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_csr_rows_of_every_length(dtype, units):
    # rows of 0..40 nonzeros in the first 82 rows (the rest empty): the AVX-512 rows' blocks of
    # 16 and 8 and the single products after them at every remainder, with 16-bit column
    # indices (82 units; taken 4 from one 64-bit load) and 32-bit ones (70,000 units)
    needs_compiler("compiled")
    g = torch.Generator().manual_seed(5)
    counts = torch.zeros(units, dtype=torch.int64)
    counts[:82] = torch.arange(82) % 41
    cols = torch.cat([torch.randperm(units, generator=g)[:n].sort().values for n in counts[:82]])
    vals = torch.randn(len(cols), generator=g, dtype=dtype) * 0.3
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32)
    rows = torch.repeat_interleave(torch.arange(units), counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
        W = torch.sparse_csr_tensor(crow, cols.to(torch.int32), vals, (units, units))
    drive = torch.randn(5, units, generator=g, dtype=dtype)
    h = torch.randn(units, generator=g, dtype=dtype)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for threads in (1, 2):
        out = _kernel.recur(W, drive, h, 0.3, threads=threads)
        ref = h
        for t in range(5):
            wh = torch.zeros(units, dtype=dtype).index_add_(0, rows, vals * ref[cols])
            ref = 0.7 * ref + 0.3 * torch.tanh(drive[t] + wh)
            torch.testing.assert_close(out[t], ref, **tol)


def test_feedback_noise_and_no_input():
    res = Reservoir(0, 30, feedback_size=2, noise=0.01, bias_scaling=0.3, seed=4)
    fb = torch.randn(20, 4, 2, dtype=torch.float64)
    states, _ = res(None, feedback=fb, noise_generator=random_stream(9, "noise"))
    nu = torch.randn(20, 4, 30, generator=random_stream(9, "noise"), dtype=torch.float64) * 0.01
    torch.testing.assert_close(states, naive(res, None, res.initial_state(4), fb, nu))
    quiet, _ = res(None, feedback=fb)  # no generator, no noise
    torch.testing.assert_close(quiet, naive(res, None, res.initial_state(4), fb))


def test_same_seed_same_reservoir_and_streams_are_separate():
    a = Reservoir(3, 50, seed=7)
    b = Reservoir(3, 50, seed=7)
    for name, buf in a.named_buffers():
        assert torch.equal(buf, dict(b.named_buffers())[name])
    c = Reservoir(3, 50, seed=8)
    assert not torch.equal(a.weight_hh, c.weight_hh)
    # Changing the recurrent connectivity leaves the input weights unchanged (named streams).
    d = Reservoir(3, 50, seed=7, connectivity=0.3)
    assert torch.equal(a.weight_ih, d.weight_ih)
    assert not torch.equal(a.weight_hh, d.weight_hh)
    # float32 and float64 reservoirs of one seed agree to rounding.
    e = Reservoir(3, 50, seed=7, dtype=torch.float32)
    torch.testing.assert_close(e.weight_hh.double(), a.weight_hh, rtol=1e-6, atol=1e-7)


def test_weights_are_buffers_and_move_with_the_module():
    res = Reservoir(2, 20, feedback_size=1)
    assert list(res.parameters()) == []
    assert {"weight_hh", "weight_ih", "bias", "weight_fb"} <= set(dict(res.named_buffers()))
    res32 = res.to(torch.float32)
    out, _ = res32(torch.randn(5, 2), feedback=torch.randn(5, 1))
    assert out.dtype == torch.float32


@pytest.mark.gpu
def test_cuda_matches_cpu():
    res = Reservoir(2, 300, connectivity=0.05, seed=3)
    u = torch.randn(50, 2, 2, dtype=torch.float64)
    cpu, _ = res(u)
    gpu, _ = res.to("cuda")(u.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"leak_rate": 0.0}, ValueError, "leak_rate must be in \\(0, 1\\]"),
        ({"leak_rate": 1.5}, ValueError, "leak_rate must be in \\[0, 1\\]"),
        ({"spectral_radius": -1.0}, ValueError, "spectral_radius must be a finite float >= 0"),
        ({"connectivity": 0.0}, ValueError, "connectivity and input_connectivity must be > 0"),
        ({"noise": "x"}, TypeError, "noise must be a float"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"impl": "cuda"}, ValueError, "impl must be one of"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Reservoir(1, 10, **kwargs)


def test_forward_errors():
    res = Reservoir(2, 10)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(T, B, 2\)"):
        res(torch.randn(5, 3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"convert it with \.to"):
        res(torch.randn(5, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"expected state of shape \(3, 10\)"):
        res(torch.randn(5, 3, 2, dtype=torch.float64), torch.zeros(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected inputs with 2 features, got None"):
        res(None)
    fb = Reservoir(1, 10, feedback_size=1)
    with pytest.raises(ValueError, match=r"feedback .*sequence is required"):
        fb(torch.randn(5, 1, dtype=torch.float64))
