"""The BPTT functions' matrix products on oneDNN (carousel.bptt._products), in float32.

oneDNN is taken only for float32 CPU products of a few million multiply-adds on non-Intel
AVX-512 processors, so here it is forced (``CAROUSEL_ONEDNN_PRODUCTS=1``, no size threshold) to
run every product of every built-in cell through it on any machine whose torch has oneDNN; the
results must equal the reference autograd loop to float32 precision. (The float64 tests of
``tests/test_bptt.py`` never reach oneDNN.)
"""

from __future__ import annotations

import pytest
import torch

import carousel
from carousel import bptt
from carousel.bptt import _products
from carousel.layers.sequence import run_reference

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)

F = torch.float32
T, B, I, H = 5, 3, 4, 6


@pytest.fixture
def onednn(monkeypatch):
    """Every float32 CPU product through oneDNN."""
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "1")
    monkeypatch.setattr(_products, "MIN_MACS", 0)
    _products._available.cache_clear()
    yield
    _products._available.cache_clear()


def _close(a, b, msg=None):
    torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=msg)


def test_setting_and_dtype(onednn, monkeypatch):
    x = torch.randn(2, 2)
    assert _products.enabled(x)
    assert not _products.enabled(x.double())  # oneDNN has no float64 product
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "0")
    assert not _products.enabled(x)
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "1")
    assert _products.enabled(x)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not _products.enabled(x)


def test_products_equal_torch_mm(onednn):
    g = torch.Generator().manual_seed(0)
    x, w, bias = torch.randn(7, 5, generator=g), torch.randn(9, 5, generator=g), torch.randn(9)
    _close(_products.linear(x, w), x @ w.t())
    _close(_products.linear(x, w, bias), x @ w.t() + bias)
    d, s = torch.randn(40, 9, generator=g), torch.randn(40, 5, generator=g)
    _close(_products.mm(d.t(), s), d.t() @ s)  # a transposed: (s^T d)^T
    _close(_products.mm(x, w.t()), x @ w.t())
    out = torch.randn(9, 5, generator=g)
    _close(_products.mm_acc(out.clone(), d.t(), s), out + d.t() @ s)
    acc, into = _products.acc_fn(w, 7), _products.into_fn(w, 7, bias)
    y = torch.randn(7, 9, generator=g)
    _close(acc(y.clone(), x), y + x @ w.t())
    _close(into(torch.empty(7, 9), x), x @ w.t() + bias)
    into_nb = _products.into_fn(w, 7)
    _close(into_nb(torch.empty(7, 9), x), x @ w.t())


def test_time_loop_products_with_and_without_packing(onednn, monkeypatch):
    """acc_fn/into_fn pack the weight once into oneDNN's layout; a torch that cannot pack falls
    back to the plain weight. Inputs with other row counts and with gaps (FGR's s_t, a slice
    of the gate buffer) are accepted either way."""
    g = torch.Generator().manual_seed(1)
    w, bias = torch.randn(9, 5, generator=g), torch.randn(9, generator=g)
    wide = torch.randn(7, 8, generator=g)
    xs = (torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g), wide[:, 2:7])
    for packs in (True, False):
        if not packs:

            def cannot(*args):
                raise RuntimeError("no packing in this torch")

            monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", cannot)
        acc, into = _products.acc_fn(w, 7), _products.into_fn(w, 7, bias)
        for x in xs:
            y = torch.randn(x.shape[0], 9, generator=g)
            _close(acc(y.clone(), x), y + x @ w.t())
            _close(into(torch.empty(x.shape[0], 9), x), x @ w.t() + bias)


def test_gapped_operands_stay_on_torch_mm(onednn, monkeypatch):
    """A slice of a wider buffer (rows with gaps) runs on oneDNN's reference kernel, thousands
    of times slower: such products must not reach it."""

    def refuse(*args):
        raise AssertionError("oneDNN called with a gapped operand")

    monkeypatch.setattr(_products, "_dnn", refuse)
    wide = torch.randn(40, 12)
    d, s = wide[:, :9], torch.randn(40, 5)  # d: rows 12 apart, 9 used
    _close(_products.mm(d.t(), s), d.t() @ s)
    _close(_products.mm_acc(torch.zeros(9, 5), d.t(), s), d.t() @ s)
    _close(_products.linear(s, wide[:, :5]), s @ wide[:, :5].t())


def test_small_products_stay_on_torch_mm(monkeypatch):
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "1")
    _products._available.cache_clear()

    def refuse(*args):
        raise AssertionError("oneDNN called below MIN_MACS")

    monkeypatch.setattr(_products, "_dnn", refuse)
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    _close(_products.linear(x, w), x @ w.t())
    _close(_products.acc_fn(w, 4)(torch.zeros(4, 8), x), x @ w.t())
    _products._available.cache_clear()


def test_packed_threshold_per_thread(monkeypatch):
    """A time loop's per-step products (packed weight) go to oneDNN from MIN_PACKED_MACS per
    thread, never later than the unpacked MIN_MACS; unpacked products keep MIN_MACS."""
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "1")
    _products._available.cache_clear()
    calls = []
    real = _products._dnn

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(_products, "_dnn", spy)
    monkeypatch.setattr(_products, "_half_width_avx512", lambda: False)
    threads = torch.get_num_threads()
    try:
        x, w = torch.randn(32, 128), torch.randn(384, 128)  # 1.57 million multiply-adds
        for n, expect in ((1, 1 << 20), (2, 1 << 21), (64, _products.MIN_MACS)):
            torch.set_num_threads(n)
            assert _products.packed_threshold() == expect
        torch.set_num_threads(1)
        _close(_products.acc_fn(w, 32)(torch.zeros(32, 384), x), x @ w.t())
        assert len(calls) == 1  # above one thread's threshold
        _close(_products.linear(x, w), x @ w.t())
        assert len(calls) == 1  # unpacked: below MIN_MACS
        torch.set_num_threads(2)
        _close(_products.into_fn(w, 32)(torch.empty(32, 384), x), x @ w.t())
        assert len(calls) == 1  # below two threads' threshold
    finally:
        torch.set_num_threads(threads)
        _products._available.cache_clear()


VARIANTS = carousel.LSTM_VARIANTS
CELLS = {
    "rnn_tanh": lambda: carousel.RNNCell(I, H),
    "rnn_relu": lambda: carousel.RNNCell(I, H, nonlinearity="relu"),
    "gru": lambda: carousel.GRUCell(I, H),
    "gru_cho": lambda: carousel.GRUCell(I, H, reset_after=False),
    **{f"lstm_{n}": (lambda n=n: carousel.LSTMCell(I, H, variant=n)) for n in VARIANTS},
    "lstm_proj": lambda: carousel.LSTMCell(I, H, proj_size=3),
    "lstm_P+LN+FGR+proj": lambda: carousel.LSTMCell(
        I, H, peephole=True, layer_norm=True, full_gate_recurrence=True, proj_size=2
    ),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("config", list(CELLS))
def test_bptt_on_onednn_matches_reference(config, masked, onednn):
    torch.manual_seed(0)
    cell = CELLS[config]()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.6, 0.6)
    x = torch.randn(T, B, I, dtype=F, requires_grad=True)
    s0 = cell.initial_state(B, dtype=F)
    fields = s0 if isinstance(s0, torch.Tensor) else tuple(s0)
    fields = (fields,) if isinstance(fields, torch.Tensor) else fields
    fields = tuple(torch.rand_like(t).requires_grad_() for t in fields)
    s0 = fields[0] if isinstance(s0, torch.Tensor) else type(s0)(*fields)
    mask = (torch.rand(T, B) < 0.6) if masked else None
    ref = run_reference(cell, None, x, s0, mask, return_states=True)
    got = bptt.run_sequence(cell, None, x, s0, mask, return_states=True)
    _close(got.output, ref.output)
    g = torch.randn_like(ref.output)
    inputs = [x, *fields, *cell.parameters()]
    names = ["x", *(f"state0.{k}" for k in range(len(fields)))]
    names += [n for n, _ in cell.named_parameters()]
    ga = torch.autograd.grad((got.output * g).sum(), inputs)
    gb = torch.autograd.grad((ref.output * g).sum(), inputs)
    for name, a, b in zip(names, ga, gb, strict=True):
        _close(a, b, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_layer_at_a_size_past_the_threshold(monkeypatch):
    """With the default threshold, a layer of 512 units takes oneDNN for its per-step and
    all-step products, and still equals the reference loop."""
    monkeypatch.setenv("CAROUSEL_ONEDNN_PRODUCTS", "1")
    _products._available.cache_clear()
    calls = []
    real = _products._dnn
    monkeypatch.setattr(_products, "_dnn", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(1)
    layer = carousel.LSTM(16, 512, impl="bptt")
    ref = carousel.LSTM(16, 512, impl="reference")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3, 32, 16)
    a, b = layer(x)[0], ref(x)[0]
    assert calls
    _close(a, b)
    ga = torch.autograd.grad(a.pow(2).sum(), list(layer.parameters()))
    gb = torch.autograd.grad(b.pow(2).sum(), list(ref.parameters()))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-5)
    _products._available.cache_clear()


def test_zen4_keeps_per_step_products_on_mm_below_min_macs(monkeypatch):
    """On Zen 4 (AVX-512 on 256-bit units) the per-step threshold is MIN_MACS at any thread
    count; the CPU is read from /proc/cpuinfo's vendor and family."""
    detect = _products._half_width_avx512.__wrapped__  # without its cache
    monkeypatch.setattr(_products, "_half_width_avx512", lambda: True)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert _products.packed_threshold() == _products.MIN_MACS
    finally:
        torch.set_num_threads(threads)
    fields = {"vendor_id": "AuthenticAMD", "cpu family": "25"}
    monkeypatch.setattr(_products, "_cpu_field", fields.get)
    assert detect()
    fields["cpu family"] = "26"  # Zen 5: full-width AVX-512
    assert not detect()
