"""Compiled kernels (carousel.kernels, impl="compiled") against the pure-PyTorch BPTT and the
reference loop.

In float64: outputs, final states, per-step states, gates and the gradients of every
parameter, of the input and of the initial state, with random upstream gradients on all of
them, with and without a mask, for every covered cell (RNN tanh/ReLU, both GRUs, every LSTM
variant, layer norm (LN), full gate recurrence (FGR) and the projection (``proj_size``) among
them, alone and combined with the other switches); through the layers with two layers,
both directions and lengths; ``gradcheck`` on each Function. In float32 against the
pure-PyTorch path at a larger size. The fallback (``CAROUSEL_NO_COMPILE=1``, a failed build)
is tested without the build. The compiled tests skip when the extension cannot be built (no
compiler or ninja); the build happens once per torch installation (cached) and in this process
only.
"""

from __future__ import annotations

import logging

import pytest
import torch

import carousel
from carousel import bptt, kernels
from carousel.layers.sequence import run_reference

D = torch.float64
T, B, I, H = 5, 3, 4, 6


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def built():
    if not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels._state['error']!r}")


def _lstm(**kw):
    return lambda: carousel.LSTMCell(I, H, dtype=D, **kw)


CELLS = {
    "rnn_tanh": lambda: carousel.RNNCell(I, H, dtype=D),
    "rnn_relu": lambda: carousel.RNNCell(I, H, nonlinearity="relu", dtype=D),
    "rnn_no_bias": lambda: carousel.RNNCell(I, H, bias=False, dtype=D),
    "gru": lambda: carousel.GRUCell(I, H, dtype=D),
    "gru_no_bias": lambda: carousel.GRUCell(I, H, bias=False, dtype=D),
    "gru_cho": lambda: carousel.GRUCell(I, H, reset_after=False, dtype=D),
    "gru_cho_no_bias": lambda: carousel.GRUCell(I, H, bias=False, reset_after=False, dtype=D),
    **{f"lstm_{name}": _lstm(variant=name) for name in carousel.LSTM_VARIANTS},
    "lstm_no_bias": _lstm(bias=False),
    "lstm_NIG+NFG": _lstm(variant="NIG", forget_gate=False),
    "lstm_P+CIFG+NOAF": _lstm(peephole=True, coupled=True, output_activation=False),
    "lstm_P+NOG": _lstm(peephole=True, output_gate=False),
    "lstm_LN+P": _lstm(layer_norm=True, peephole=True),
    "lstm_LN+P+CIFG+NOAF": _lstm(
        layer_norm=True, peephole=True, coupled=True, output_activation=False
    ),
    "lstm_LN+NOG+NIAF+no_bias": _lstm(
        layer_norm=True, output_gate=False, input_activation=False, bias=False
    ),
    "lstm_LN+NIG+NFG": _lstm(layer_norm=True, input_gate=False, forget_gate=False),
    "lstm_FGR+NP": _lstm(full_gate_recurrence=True),
    "lstm_FGR+P+CIFG": _lstm(full_gate_recurrence=True, peephole=True, coupled=True),
    "lstm_FGR+P+NIG+NOAF": _lstm(
        full_gate_recurrence=True, peephole=True, input_gate=False, output_activation=False
    ),
    "lstm_FGR+NOG": _lstm(full_gate_recurrence=True, peephole=True, output_gate=False),
    "lstm_FGR+LN": _lstm(full_gate_recurrence=True, layer_norm=True, peephole=True),
    "lstm_proj": _lstm(proj_size=3),
    "lstm_P+proj": _lstm(peephole=True, proj_size=2),
    "lstm_P+CIFG+proj+no_bias": _lstm(peephole=True, coupled=True, proj_size=4, bias=False),
    "lstm_NOG+NOAF+proj": _lstm(output_gate=False, output_activation=False, proj_size=3),
    "lstm_NIG+NIAF+proj": _lstm(input_gate=False, input_activation=False, proj_size=1),
    "lstm_LN+P+proj": _lstm(layer_norm=True, peephole=True, proj_size=3),
    "lstm_LN+CIFG+proj": _lstm(layer_norm=True, coupled=True, proj_size=5),
    "lstm_FGR+proj": _lstm(full_gate_recurrence=True, proj_size=3),
    "lstm_FGR+LN+P+proj": _lstm(
        full_gate_recurrence=True, layer_norm=True, peephole=True, proj_size=2
    ),
    "lstm_all_off": _lstm(
        input_gate=False,
        forget_gate=False,
        output_gate=False,
        input_activation=False,
        output_activation=False,
    ),
}


def _randomize(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "ln_" in name and "weight" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.6, 0.6)


def _fields(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def _random_state(cell, batch, dtype):
    ref = cell.initial_state(batch, dtype=dtype)
    fields = [
        (torch.rand_like(t) if n == "gates" else torch.randn_like(t)).requires_grad_()
        for n, t in zip(getattr(ref, "_fields", ("h",)), _fields(ref))
    ]
    return fields[0] if isinstance(ref, torch.Tensor) else type(ref)(*fields)


def _mask(kind, steps=T, batch=B):
    if kind == "none":
        return None
    return torch.rand(steps, batch) < 0.6  # any pattern: frozen wherever False


def _run_all(cell, runners, mask_kind, steps=T, batch=B, dtype=D, size=I):
    """Results and gradients of each runner on the same inputs and upstream gradients."""
    _randomize(cell)
    x = torch.randn(steps, batch, size, dtype=dtype, requires_grad=True)
    s0 = _random_state(cell, batch, dtype)
    mask = _mask(mask_kind, steps, batch)
    kw = {"return_states": True, "return_gates": True}
    inputs = [x, *_fields(s0), *cell.parameters()]
    out, ups = [], None
    for run in runners:
        res = run(cell, None, x, s0, mask, **kw)
        if ups is None:
            ups = [torch.randn_like(t) for t in (res.output, *_fields(res.state))]
            ups += [torch.randn_like(t) for t in _fields(res.states)]
        tensors = [res.output, *_fields(res.state), *_fields(res.states)]
        loss = sum((t * u).sum() for t, u in zip(tensors, ups, strict=True))
        out.append((res, torch.autograd.grad(loss, inputs)))
    names = ["x", *(f"state0.{k}" for k in range(len(_fields(s0))))]
    return out, names + [n for n, _ in cell.named_parameters()]


def _assert_same(a, b, names, **tol):
    (ra, ga), (rb, gb) = a, b
    torch.testing.assert_close(ra.output, rb.output, **tol)
    for u, v in zip(_fields(ra.state), _fields(rb.state), strict=True):
        torch.testing.assert_close(u, v, **tol)
    assert type(ra.states) is type(rb.states)
    for u, v in zip(_fields(ra.states), _fields(rb.states), strict=True):
        torch.testing.assert_close(u, v, **tol)
    assert list(ra.gates) == list(rb.gates)
    for k in rb.gates:
        torch.testing.assert_close(ra.gates[k], rb.gates[k], msg=k, **tol)
    for name, u, v in zip(names, ga, gb, strict=True):
        if tol:  # float32: sums over many steps; absolute tolerance relative to the scale
            tol = {"rtol": tol["rtol"], "atol": tol["atol"] * max(1.0, v.abs().max().item())}
        torch.testing.assert_close(u, v, msg=lambda m, name=name: f"grad of {name}: {m}", **tol)


@pytest.mark.parametrize("mask_kind", ["none", "random"])
@pytest.mark.parametrize("config", list(CELLS))
def test_matches_bptt_and_reference_float64(config, mask_kind, built):
    cell = CELLS[config]()
    assert kernels.supports(cell)
    runs, names = _run_all(
        cell, [kernels.run_sequence, bptt.run_sequence, run_reference], mask_kind
    )
    _assert_same(runs[0], runs[1], names)
    _assert_same(runs[0], runs[2], names)


@pytest.mark.parametrize(
    "config",
    [
        "rnn_tanh", "gru", "lstm_NP", "lstm_PNIGNOAF", "lstm_LN", "lstm_FGR", "lstm_FGR+LN",
        "lstm_proj", "lstm_LN+P+proj",
    ],
)  # fmt: skip
def test_matches_bptt_float32(config, built):
    make = {
        "rnn_tanh": lambda: carousel.RNNCell(16, 40),
        "gru": lambda: carousel.GRUCell(16, 40),
        "lstm_NP": lambda: carousel.LSTMCell(16, 40),
        "lstm_PNIGNOAF": lambda: carousel.LSTMCell(
            16, 40, peephole=True, input_gate=False, output_activation=False
        ),
        "lstm_LN": lambda: carousel.LSTMCell(16, 40, variant="LN"),
        "lstm_FGR": lambda: carousel.LSTMCell(16, 40, variant="FGR"),
        "lstm_FGR+LN": lambda: carousel.LSTMCell(16, 40, variant="FGR", layer_norm=True),
        "lstm_proj": lambda: carousel.LSTMCell(16, 40, proj_size=20),
        "lstm_LN+P+proj": lambda: carousel.LSTMCell(
            16, 40, variant="LN", peephole=True, proj_size=12
        ),
    }[config]
    _assert_float32_kernel_matches_bptt(make(), steps=30, batch=8)


def _assert_float32_kernel_matches_bptt(cell, *, steps: int, batch: int) -> None:
    """The compiled kernel and the bptt path agree in float32 (inputs of size 16)."""
    runs, names = _run_all(
        cell,
        [kernels.run_sequence, bptt.run_sequence],
        "random",
        steps=steps,
        batch=batch,
        dtype=torch.float32,
        size=16,
    )
    _assert_same(runs[0], runs[1], names, rtol=1e-3, atol=1e-3)


def test_uncovered_fall_back_to_bptt(built):
    """Other devices and dtypes than the CPU's float32/float64 run "bptt" (here a float16
    sequence; the device check needs no other device)."""
    cell = carousel.LSTMCell(I, H, proj_size=3)
    assert kernels.supports(cell) and not kernels.supports(cell, "meta")
    cell = cell.to(torch.bfloat16)
    _randomize(cell)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    s0 = cell.initial_state(B, dtype=torch.bfloat16)
    mask = _mask("random")
    a = kernels.run_sequence(cell, None, x, s0, mask)
    b = bptt.run_sequence(cell, None, x, s0, mask)
    assert a.output.shape == (T, B, 3)
    torch.testing.assert_close(a.output, b.output, rtol=0, atol=0)


LAYERS = {
    "LSTM": lambda **kw: carousel.LSTM(I, H, **kw),
    "LSTM_vanilla": lambda **kw: carousel.LSTM(I, H, variant="vanilla", **kw),
    "LSTM_CIFG": lambda **kw: carousel.LSTM(I, H, variant="CIFG", **kw),
    "LSTM_LN": lambda **kw: carousel.LSTM(I, H, variant="LN", **kw),
    "LSTM_FGR": lambda **kw: carousel.LSTM(I, H, variant="FGR", **kw),
    "LSTM_proj": lambda **kw: carousel.LSTM(I, H, proj_size=3, **kw),
    "LSTM_P+CIFG+LN_proj": lambda **kw: carousel.LSTM(
        I, H, variant="CIFG", peephole=True, layer_norm=True, proj_size=2, **kw
    ),
    "GRU": lambda **kw: carousel.GRU(I, H, **kw),
    "GRU_cho": lambda **kw: carousel.GRU(I, H, reset_after=False, **kw),
    "RNN_relu": lambda **kw: carousel.RNN(I, H, nonlinearity="relu", **kw),
}


@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_compiled_matches_reference(layer, use_lengths, built):
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True, "dtype": D}
    ref = LAYERS[layer](impl="reference", learn_initial_state=True, **kw)
    _randomize(ref)
    ours = LAYERS[layer](impl="compiled", learn_initial_state=True, **kw)
    ours.load_state_dict(ref.state_dict())
    assert ours.resolve_impl() == "compiled"
    x = torch.randn(B, T, I, dtype=D, requires_grad=True)
    lengths = torch.tensor([5, 2, 4]) if use_lengths else None
    a = ours(x, lengths=lengths, return_states=True, return_gates=True)
    b = ref(x, lengths=lengths, return_states=True, return_gates=True)
    torch.testing.assert_close(a.output, b.output)
    for u, v in zip(
        [*_fields(a.state), *_fields(a.states)], [*_fields(b.state), *_fields(b.states)]
    ):
        torch.testing.assert_close(u, v)
    for k in b.gates:
        torch.testing.assert_close(a.gates[k], b.gates[k])
    g = torch.randn_like(b.output)
    ga = torch.autograd.grad((a.output * g).sum(), [x, *ours.parameters()])
    gb = torch.autograd.grad((b.output * g).sum(), [x, *ref.parameters()])
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v)


def test_auto_prefers_compiled(built):
    assert carousel.GRU(I, H).resolve_impl() == "compiled"
    assert carousel.RNN(I, H).resolve_impl() == "compiled"
    assert carousel.LSTM(I, H, variant="CIFG").resolve_impl() == "compiled"
    assert carousel.LSTM(I, H).resolve_impl() == "fused"  # oneDNN for the standard LSTM
    assert carousel.LSTM(I, H).resolve_impl(return_states=True) == "compiled"
    assert carousel.GRU(I, H, reset_after=False).resolve_impl() == "compiled"
    assert carousel.LSTM(I, H, variant="LN").resolve_impl() == "compiled"
    assert carousel.LSTM(I, H, variant="FGR").resolve_impl() == "compiled"
    # torch.nn.LSTM(proj_size=...) has no oneDNN kernel on the CPU: the compiled kernel
    assert carousel.LSTM(I, H, proj_size=3).resolve_impl() == "compiled"
    assert carousel.LSTM(I, H, variant="LN", proj_size=3).resolve_impl() == "compiled"


@pytest.mark.parametrize("use_lengths", [False, True])
def test_projected_lstm_matches_torch(use_lengths, built):
    """The standard projected LSTM, compiled, equals torch.nn.LSTM(proj_size=...) after
    load_state_dict: outputs, final states and every gradient (W_hr's included)."""
    kw = {"num_layers": 2, "bidirectional": True, "proj_size": 3, "dtype": D}
    ref = torch.nn.LSTM(I, H, **kw)
    _randomize(ref)
    ours = carousel.LSTM(I, H, impl="compiled", **kw)
    ours.load_state_dict(ref.state_dict())
    assert ours.resolve_impl() == "compiled"
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(4, B, 3, dtype=D, requires_grad=True)
    c0 = torch.randn(4, B, H, dtype=D, requires_grad=True)
    lengths = torch.tensor([5, 2, 4]) if use_lengths else None
    if lengths is None:
        o2, (h2, c2) = ref(x, (h0, c0))
    else:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        po, (h2, c2) = ref(packed, (h0, c0))
        o2 = pad_packed_sequence(po, total_length=T)[0]
    o1, (h1, c1) = ours(x, (h0, c0), lengths=lengths)
    for u, v in [(o1, o2), (h1, h2), (c1, c2)]:
        torch.testing.assert_close(u, v)
    ups = [torch.randn_like(t) for t in (o2, h2, c2)]
    inputs = [x, h0, c0]
    ga = torch.autograd.grad(
        sum((t * u).sum() for t, u in zip((o1, h1, c1), ups)), inputs + list(ours.parameters())
    )
    gb = torch.autograd.grad(
        sum((t * u).sum() for t, u in zip((o2, h2, c2), ups)), inputs + list(ref.parameters())
    )
    names = ["x", "h0", "c0", *ours.state_dict()]
    for name, u, v in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(u, v, msg=lambda m, name=name: f"grad of {name}: {m}")


GT, GB, GI, GH = 3, 2, 2, 3


LSTM_GRADCHECK = {
    "lstm_NP": {},
    "lstm_vanilla": {"variant": "vanilla"},
    "lstm_CIFG": {"variant": "CIFG"},
    "lstm_LN": {"variant": "LN", "peephole": True},
    "lstm_FGR": {"variant": "FGR"},
    "lstm_FGR+LN+CIFG": {"variant": "FGR", "layer_norm": True, "coupled": True},
    "lstm_proj": {"proj_size": 2},
    "lstm_LN+P+proj": {"variant": "LN", "peephole": True, "proj_size": 2},
    "lstm_FGR+CIFG+proj": {"variant": "FGR", "coupled": True, "proj_size": 1},
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("family", ["rnn", "gru", "gru_cho", *LSTM_GRADCHECK])
def test_gradcheck(family, masked, built):
    mask = torch.tensor([[True, True], [True, False], [False, False]]) if masked else None
    x = torch.randn(GT, GB, GI, dtype=D, requires_grad=True)
    h0 = torch.randn(GB, GH, dtype=D, requires_grad=True)
    if family in ("rnn", "gru", "gru_cho"):
        n = 1 if family == "rnn" else 3
        ws = [
            torch.randn(s, dtype=D, requires_grad=True)
            for s in [(n * GH, GI), (n * GH, GH), (n * GH,), (n * GH,)]
        ]
        if family == "rnn":
            fn = lambda *a: kernels.RNNKernelFunction.apply(*a[:2], mask, *a[2:], False)  # noqa: E731
        else:
            f = kernels.GRUKernelFunction if family == "gru" else kernels.GRUChoKernelFunction
            fn = lambda *a: f.apply(*a[:2], mask, *a[2:])[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, h0, *ws))
        return
    cell = carousel.LSTMCell(GI, GH, dtype=D, **LSTM_GRADCHECK[family])
    _randomize(cell)
    offsets, flags = kernels._lstm_layout(cell)
    fgr = cell.variant.full_gate_recurrence
    state = _random_state(cell, GB, D)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    order = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf"]
    order += ["weight_co", "weight_gg", "ln_ih_weight", "ln_hh_weight", "ln_c_weight"]
    order += ["ln_c_bias", "weight_hr"]

    def fn(x, h0, c0, s0, *ps):
        by_name = dict(zip(names, ps))
        args = [by_name.get(n) for n in order]
        out = kernels.LSTMKernelFunction.apply(
            x, h0, c0, s0, mask, *args, offsets, flags, cell.ln_eps
        )
        return out[:3] if fgr else out[:2]

    s0 = state[2] if fgr else None
    assert torch.autograd.gradcheck(fn, (x, state[0], state[1], s0, *params))


# ------------------------------------------------------------------ fallback (no build needed)
def test_disabled_by_env_falls_back(monkeypatch):
    monkeypatch.setenv("CAROUSEL_NO_COMPILE", "1")
    assert not kernels.available()
    gru = carousel.GRU(I, H, impl="compiled", dtype=D)
    assert carousel.GRU(I, H).resolve_impl() == "bptt"
    ref = carousel.GRU(I, H, impl="bptt", dtype=D)
    ref.load_state_dict(gru.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    torch.testing.assert_close(gru(x)[0], ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["LN", "FGR", "proj"])
def test_disabled_by_env_falls_back_lstm(variant, monkeypatch):
    """LN, FGR and projected LSTMs (covered by the kernel) run "bptt" without it, gradients
    included."""
    monkeypatch.setenv("CAROUSEL_NO_COMPILE", "1")
    kw = {"proj_size": 3} if variant == "proj" else {"variant": variant}
    assert kernels.supports(carousel.LSTMCell(I, H, **kw))
    lstm = carousel.LSTM(I, H, impl="compiled", dtype=D, **kw)
    assert carousel.LSTM(I, H, **kw).resolve_impl() == "bptt"
    ref = carousel.LSTM(I, H, impl="bptt", dtype=D, **kw)
    ref.load_state_dict(lstm.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    a, b = lstm(x)[0], ref(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ga = torch.autograd.grad(a.sum(), list(lstm.parameters()))
    gb = torch.autograd.grad(b.sum(), list(ref.parameters()))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_failed_build_falls_back(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_ninja():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.delenv("CAROUSEL_NO_COMPILE", raising=False)
    monkeypatch.setattr(kernels, "_state", {"tried": False, "ok": False, "error": None})
    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", no_ninja)
    with caplog.at_level(logging.WARNING, logger="carousel.kernels"):
        assert not kernels.available()
        assert not kernels.available()  # tried once, logged once
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    rnn = carousel.RNN(I, H, impl="compiled", dtype=D)
    assert carousel.RNN(I, H).resolve_impl() == "bptt"
    ref = carousel.RNN(I, H, impl="bptt", dtype=D)
    ref.load_state_dict(rnn.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    torch.testing.assert_close(rnn(x)[0], ref(x)[0], rtol=0, atol=0)


def test_build_without_openmp_when_openmp_fails(monkeypatch, tmp_path, caplog):
    """Where torch uses OpenMP the kernels are built with it; a compiler without OpenMP gets
    a second, serial build instead of no kernels."""
    from torch.utils import cpp_extension

    flags_tried = []

    def fake_load(**kw):
        flags_tried.append(kw["extra_cflags"])
        if "-fopenmp" in kw["extra_cflags"]:
            raise RuntimeError("unrecognized command-line option '-fopenmp'")

    monkeypatch.delenv("CAROUSEL_NO_COMPILE", raising=False)
    monkeypatch.setenv("CAROUSEL_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_state", {"tried": False, "ok": False, "error": None})
    monkeypatch.setattr(kernels, "_openmp", lambda: True)
    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", lambda: None)
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    with caplog.at_level(logging.WARNING, logger="carousel.kernels"):
        # True where the real extension is already loaded in this process
        assert kernels.load() == hasattr(torch.ops.carousel_kernels, "lstm_forward")
    assert ["-fopenmp" in f for f in flags_tried] == [True, False]
    assert any("without" in r.getMessage() for r in caplog.records)
    assert kernels.cache_dir(flags_tried[0]) != kernels.cache_dir(flags_tried[1])


def test_cache_dir_keyed_by_torch_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("CAROUSEL_KERNEL_DIR", str(tmp_path))
    d = kernels.cache_dir()
    assert d.parent == tmp_path
    assert torch.__version__.replace("+", "_") in d.name
    # another environment's torch (its own header paths) builds in a directory of its own
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "venv2" / "torch" / "__init__.py"))
    other = kernels.cache_dir()
    assert other.parent == tmp_path and other != d


@pytest.mark.parametrize(
    "config",
    [
        "rnn_relu", "gru", "gru_cho", "lstm_vanilla", "lstm_CIFG", "lstm_LN", "lstm_FGR+LN",
        "lstm_proj", "lstm_FGR+LN+P+proj",
    ],
)  # fmt: skip
def test_inference_without_autograd(config, built):
    """Under no_grad the kernel runs without the autograd Function: same results."""
    cell = CELLS[config]()
    _randomize(cell)
    x = torch.randn(T, B, I, dtype=D)
    s0 = cell.initial_state(B, dtype=D)
    s0 = type(s0)(*(torch.randn_like(t) for t in s0)) if not torch.is_tensor(s0) else s0 + 1
    mask = _mask("random")
    with torch.no_grad():
        a = kernels.run_sequence(cell, None, x, s0, mask, return_states=True, return_gates=True)
    b = bptt.run_sequence(cell, None, x, s0, mask, return_states=True, return_gates=True)
    assert not a.output.requires_grad
    torch.testing.assert_close(a.output, b.output)
    for u, v in zip(_fields(a.states), _fields(b.states), strict=True):
        torch.testing.assert_close(u, v)
    for k in b.gates:
        torch.testing.assert_close(a.gates[k], b.gates[k])


def test_several_threads(built):
    """A large batch under two threads (blocks of rows, each its own loop): same results."""
    torch.set_num_threads(2)  # restored by _one_thread
    cell = carousel.LSTMCell(8, 16, peephole=True, dtype=D)
    runs, names = _run_all(
        cell, [kernels.run_sequence, bptt.run_sequence], "random", steps=4, batch=1100, size=8
    )
    _assert_same(runs[0], runs[1], names)


BT, BB, BI, BH = 8, 75, 8, 64  # 2 blocks of 37 and 38 rows with two threads (batch_chunks)


@pytest.mark.parametrize("mask_kind", ["none", "random"])
@pytest.mark.parametrize(
    "config",
    [
        "rnn_tanh", "rnn_relu", "gru", "gru_cho", "lstm_vanilla", "lstm_CIFG", "lstm_NOAF",
        "lstm_LN", "lstm_FGR", "lstm_proj",
    ],
)  # fmt: skip
def test_batch_split_over_two_threads(config, mask_kind, built):
    """With two threads and a large enough batch, each thread runs the whole time loop on its
    own block of rows, forward and backward: same results as "bptt" in float64."""
    torch.set_num_threads(2)  # restored by _one_thread
    cell = {
        "rnn_tanh": lambda: carousel.RNNCell(BI, BH, dtype=D),
        "rnn_relu": lambda: carousel.RNNCell(BI, BH, nonlinearity="relu", dtype=D),
        "gru": lambda: carousel.GRUCell(BI, BH, dtype=D),
        "gru_cho": lambda: carousel.GRUCell(BI, BH, reset_after=False, dtype=D),
        "lstm_vanilla": lambda: carousel.LSTMCell(BI, BH, variant="vanilla", dtype=D),
        "lstm_CIFG": lambda: carousel.LSTMCell(BI, BH, variant="CIFG", peephole=True, dtype=D),
        "lstm_NOAF": lambda: carousel.LSTMCell(BI, BH, variant="NOAF", dtype=D),
        "lstm_LN": lambda: carousel.LSTMCell(BI, BH, variant="LN", peephole=True, dtype=D),
        "lstm_FGR": lambda: carousel.LSTMCell(BI, BH, variant="FGR", dtype=D),
        "lstm_proj": lambda: carousel.LSTMCell(BI, BH, peephole=True, proj_size=32, dtype=D),
    }[config]()
    assert torch.ops.carousel_kernels.batch_chunks(BT, BB, BH, BH) == 2  # the smallest (RNN)
    runs, names = _run_all(
        cell, [kernels.run_sequence, bptt.run_sequence], mask_kind, BT, BB, D, BI
    )
    _assert_same(runs[0], runs[1], names)


def test_batch_split_layer_with_lengths(built):
    """A 2-layer bidirectional GRU and LSTM with lengths under two threads, batch split."""
    torch.set_num_threads(2)
    lengths = torch.randint(1, BT + 1, (BB,))
    for make in (carousel.GRU, lambda *a, **k: carousel.LSTM(*a, variant="NIG", **k)):
        kw = {"num_layers": 2, "bidirectional": True, "dtype": D}
        ref = make(BI, BH, impl="bptt", **kw)
        _randomize(ref)
        ours = make(BI, BH, impl="compiled", **kw)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(BT, BB, BI, dtype=D, requires_grad=True)
        a, b = ours(x, lengths=lengths), ref(x, lengths=lengths)
        torch.testing.assert_close(a.output, b.output)
        g = torch.randn_like(b.output)
        ga = torch.autograd.grad((a.output * g).sum(), [x, *ours.parameters()])
        gb = torch.autograd.grad((b.output * g).sum(), [x, *ref.parameters()])
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize(
    "family", ["lstm", "gru", "gru_cho", "rnn", "lstm_LN", "lstm_FGR", "lstm_proj"]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_float32_products(threads, family, built):
    """Float32 at a size where the per-step products take the small kernel (strided operands
    for Cho's GRU) and those over all steps oneDNN, in one thread and in the batch blocks of
    two: same results as "bptt". FGR at H=352: W_gg (1056 x 1056) is above the small kernel's
    size, its per-step products go to oneDNN."""
    torch.set_num_threads(threads)
    used = torch.ops.carousel_kernels.onednn_used
    assert not used(torch.empty(32, 256, dtype=D), torch.empty(256, 1024, dtype=D))
    if torch.backends.mkldnn.is_available():  # a block of 16 rows: (16, 256) @ (256, 1024)
        assert used(torch.empty(16, 256), torch.empty(256, 1024))
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False  # torch's switch turns it off
        try:
            assert not used(torch.empty(16, 256), torch.empty(256, 1024))
        finally:
            torch.backends.mkldnn.enabled = enabled
    cell = {
        "lstm": lambda: carousel.LSTMCell(16, 256, peephole=True),
        "gru": lambda: carousel.GRUCell(16, 256),
        "gru_cho": lambda: carousel.GRUCell(16, 256, reset_after=False),  # strided products
        "rnn": lambda: carousel.RNNCell(16, 256),
        "lstm_LN": lambda: carousel.LSTMCell(16, 256, variant="LN", peephole=True),
        "lstm_FGR": lambda: carousel.LSTMCell(16, 352, variant="FGR"),
        "lstm_proj": lambda: carousel.LSTMCell(16, 256, peephole=True, proj_size=128),
    }[family]()
    _assert_float32_kernel_matches_bptt(cell, steps=4, batch=32)


def test_small_products(built):
    """The register-tiled kernel of the per-step float32 products (where AVX-512 is compiled
    in; ATen's product elsewhere): tile remainders in rows and columns, strided operands."""
    small_mm = torch.ops.carousel_kernels.small_mm
    for m, k, n in [(1, 1, 1), (5, 3, 15), (6, 32, 17), (7, 128, 65), (13, 16, 100), (33, 64, 384)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        expected = (a.double() @ b.double()).float()
        torch.testing.assert_close(small_mm(a, b), expected, rtol=1e-5, atol=1e-5 * k**0.5)
    a = torch.randn(12, 40)[:, 3:35]  # rows with a stride
    b = torch.randn(32, 70)
    torch.testing.assert_close(small_mm(a, b), a @ b, rtol=1e-5, atol=1e-4)


def test_batch_chunks(built):
    """One block per thread, fewer where a block would be too small; one for batch 1."""
    chunks = torch.ops.carousel_kernels.batch_chunks
    torch.set_num_threads(2)
    assert chunks(100, 32, 512, 128) == 2
    assert chunks(1, 1, 512, 128) == 1  # batch-1 generation: one loop
    assert chunks(100, 7, 512, 128) == 1  # fewer than 4 rows a block
    assert chunks(1, 8, 16, 4) == 1  # too little work to fork
    torch.set_num_threads(1)
    assert chunks(100, 32, 512, 128) == 1


def test_stale_build_lock_is_removed(tmp_path, caplog):
    import os

    lock = tmp_path / "lock"
    lock.write_text("")
    kernels._clear_stale_lock(tmp_path)
    assert lock.exists()  # fresh: another process may be building
    old = lock.stat().st_mtime - 2 * kernels._STALE_LOCK_S
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="carousel.kernels"):
        kernels._clear_stale_lock(tmp_path)
    assert not lock.exists()
