"""Hand-written BPTT (carousel.bptt) against the reference autograd loop, in float64.

For every built-in cell configuration: outputs, final states, per-step states, gates, and the
gradients of every parameter, of the input and of the initial state, with random upstream
gradients on the output, the final state and every per-step state; with and without a mask;
directly through ``run_sequence`` and through the layers; ``gradcheck`` on every
``autograd.Function``. Both ways of computing ``tanh`` (``torch.tanh`` and the sigmoid
identity, chosen by size) are exercised.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import carousel
import carousel.bptt._common as bptt_common
from carousel import bptt
from carousel.bptt import GRUFunction, LSTMFunction, LSTMSpec, RNNFunction
from carousel.functional import LSTMVariant
from carousel.layers.sequence import run_reference

D = torch.float64
T, B, I, H = 5, 3, 4, 6
LENGTHS = torch.tensor([5, 2, 4])


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation, which costs
    milliseconds per matrix product on a loaded machine. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _lstm(**kw):
    return lambda: carousel.LSTMCell(I, H, dtype=D, **kw)


CELLS = {
    "rnn_tanh": lambda: carousel.RNNCell(I, H, dtype=D),
    "rnn_relu": lambda: carousel.RNNCell(I, H, nonlinearity="relu", dtype=D),
    "rnn_no_bias": lambda: carousel.RNNCell(I, H, bias=False, dtype=D),
    "gru": lambda: carousel.GRUCell(I, H, dtype=D),
    "gru_cho": lambda: carousel.GRUCell(I, H, reset_after=False, dtype=D),
    "gru_no_bias": lambda: carousel.GRUCell(I, H, bias=False, dtype=D),
    "gru_cho_no_bias": lambda: carousel.GRUCell(I, H, bias=False, reset_after=False, dtype=D),
    **{f"lstm_{name}": _lstm(variant=name) for name in carousel.LSTM_VARIANTS},
    "lstm_proj": _lstm(proj_size=3),
    "lstm_no_bias": _lstm(bias=False),
    "lstm_P+LN": _lstm(peephole=True, layer_norm=True),
    "lstm_P+LN+FGR+proj": _lstm(
        peephole=True, layer_norm=True, full_gate_recurrence=True, proj_size=2
    ),
    "lstm_NIG+NFG": _lstm(variant="NIG", forget_gate=False),
    "lstm_all_off": _lstm(
        input_gate=False,
        forget_gate=False,
        output_gate=False,
        input_activation=False,
        output_activation=False,
    ),
    "lstm_CIFG+NOG+LN": _lstm(variant="CIFG", output_gate=False, layer_norm=True),
    "lstm_NOAF+LN": _lstm(output_activation=False, layer_norm=True),
    "lstm_NOG+proj": _lstm(output_gate=False, proj_size=4),
    "lstm_NIAF+NOAF+proj": _lstm(input_activation=False, output_activation=False, proj_size=2),
    "lstm_FGR+NOG": _lstm(variant="FGR", output_gate=False),
    "lstm_FGR+CIFG+NOAF": _lstm(variant="FGR", coupled=True, output_activation=False),
    "lstm_NP+FGR": _lstm(full_gate_recurrence=True),
    "lstm_NIG+LN+proj": _lstm(input_gate=False, layer_norm=True, proj_size=5),
}


def _randomize(module: torch.nn.Module) -> None:
    """Random weights everywhere (layer-norm gains away from 1, biases away from 0)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "ln_" in name and "weight" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.6, 0.6)


def _fields(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def _random_state(cell, batch):
    ref = cell.initial_state(batch, dtype=D)
    fields = []
    for name, t in zip(getattr(ref, "_fields", ("h",)), _fields(ref)):
        # FGR's gate field holds sigmoid activations
        r = torch.rand_like(t) if name == "gates" else torch.randn_like(t)
        fields.append(r.requires_grad_())
    return fields[0] if isinstance(ref, torch.Tensor) else type(ref)(*fields)


def _mask(kind: str):
    if kind == "none":
        return None
    if kind == "lengths":
        return torch.arange(T).unsqueeze(1) < LENGTHS
    return torch.rand(T, B) < 0.6  # any pattern: frozen wherever False


@pytest.fixture(params=["torch_tanh", "sigmoid_tanh"])
def tanh_path(request, monkeypatch):
    """Run a test with tanh from torch.tanh, and again from the sigmoid identity."""
    if request.param == "sigmoid_tanh":
        monkeypatch.setattr(bptt_common, "_SIGMOID_TANH_MIN_NUMEL", 0)
    else:
        monkeypatch.setattr(bptt_common, "_SIGMOID_TANH_MIN_NUMEL", 1 << 60)
    return request.param


def _compare_run_sequence(cell, mask_kind, params=None):
    _randomize(cell)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    s0 = _random_state(cell, B)
    mask = _mask(mask_kind)
    kw = {"return_states": True, "return_gates": True}
    ref = run_reference(cell, params, x, s0, mask, **kw)
    got = bptt.run_sequence(cell, params, x, s0, mask, **kw)
    torch.testing.assert_close(got.output, ref.output)
    for a, b in zip(_fields(got.state), _fields(ref.state), strict=True):
        torch.testing.assert_close(a, b)
    assert type(got.states) is type(ref.states)
    for a, b in zip(_fields(got.states), _fields(ref.states), strict=True):
        torch.testing.assert_close(a, b)
    assert list(got.gates) == list(ref.gates)
    for name in ref.gates:
        torch.testing.assert_close(got.gates[name], ref.gates[name], msg=name)
        assert not got.gates[name].requires_grad  # traces, documented as not differentiable
    # random upstream gradients on the output, the final state and every per-step state
    g_out = torch.randn_like(ref.output)
    g_state = [torch.randn_like(t) for t in _fields(ref.state)]
    g_states = [torch.randn_like(t) for t in _fields(ref.states)]
    weights = list(params.values()) if params is not None else list(cell.parameters())
    inputs = [x, *_fields(s0), *weights]

    def grads(res):
        loss = (res.output * g_out).sum()
        loss = loss + sum((s * g).sum() for s, g in zip(_fields(res.state), g_state))
        loss = loss + sum((s * g).sum() for s, g in zip(_fields(res.states), g_states))
        return torch.autograd.grad(loss, inputs)

    names = ["x", *(f"state0.{k}" for k in range(len(_fields(s0))))]
    names += list(params) if params is not None else [n for n, _ in cell.named_parameters()]
    for name, a, b in zip(names, grads(got), grads(ref), strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("mask_kind", ["none", "random"])
@pytest.mark.parametrize("config", list(CELLS))
def test_run_sequence_matches_reference(config, mask_kind, tanh_path):
    _compare_run_sequence(CELLS[config](), mask_kind)


@pytest.mark.parametrize("block_steps", [1, 2])
@pytest.mark.parametrize("config", [c for c in CELLS if c.startswith("lstm")])
def test_lstm_backward_in_blocks_of_steps(config, block_steps, monkeypatch):
    """The LSTM backward pass computes its local derivatives for blocks of steps; blocks of
    one and two steps (the last one short: T = 5) give the same results as the reference."""
    from carousel.bptt import lstm as bptt_lstm

    monkeypatch.setattr(bptt_lstm, "_DERIVATIVE_BLOCK_BYTES", block_steps * B * 4 * H * D.itemsize)
    _compare_run_sequence(CELLS[config](), "random")


def test_run_sequence_with_params_dict():
    """Layers pass the weights by name (the cell holds none); results are the same."""
    cell = carousel.LSTMCell(I, H, variant="FGR", dtype=D)
    _randomize(cell)
    params = {n: p.detach().clone().requires_grad_() for n, p in cell.named_parameters()}
    _compare_run_sequence(cell, "lengths", params=params)


def test_sweep_is_complete():
    """Every named variant is in the sweep above."""
    names = {k.removeprefix("lstm_") for k in CELLS if k.startswith("lstm_")}
    assert set(carousel.LSTM_VARIANTS) <= names


def _all_variants():
    switches = [f.name for f in dataclasses.fields(LSTMVariant)]
    for values in itertools.product([False, True], repeat=len(switches)):
        kw = dict(zip(switches, values))
        if kw["coupled"] and not (kw["input_gate"] and kw["forget_gate"]):
            continue  # contradictory (LSTMVariant rejects it)
        if kw["full_gate_recurrence"] and not (
            kw["input_gate"] or kw["forget_gate"] or kw["output_gate"]
        ):
            continue  # FGR without a sigmoid gate: nothing recurs (lstm_step cannot run it)
        yield LSTMVariant(**kw)


@pytest.mark.slow
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("variant", list(_all_variants()), ids=lambda v: v.acronym)
def test_every_switch_combination(variant, proj_size, monkeypatch):
    for mask_kind in ("none", "lengths"):
        for threshold in (0, 1 << 60):
            monkeypatch.setattr(bptt_common, "_SIGMOID_TANH_MIN_NUMEL", threshold)
            cell = carousel.LSTMCell(I, H, variant=variant, proj_size=proj_size, dtype=D)
            _compare_run_sequence(cell, mask_kind)


# ------------------------------------------------------------------ gradcheck
GT, GB, GI, GH = 3, 2, 2, 3  # tiny sizes for gradcheck


def _gc_mask(masked):
    return torch.tensor([[True, True], [True, False], [False, False]]) if masked else None


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_rnn(relu, masked, tanh_path):
    x = torch.randn(GT, GB, GI, dtype=D, requires_grad=True)
    h0 = torch.randn(GB, GH, dtype=D, requires_grad=True)
    w = [torch.randn(GH, GI, dtype=D), torch.randn(GH, GH, dtype=D) * 0.5]
    b = [torch.randn(GH, dtype=D), torch.randn(GH, dtype=D)]
    args = [t.requires_grad_() for t in (*w, *b)]
    mask = _gc_mask(masked)

    def fn(x, h0, w_ih, w_hh, b_ih, b_hh):
        return RNNFunction.apply(x, h0, mask, w_ih, w_hh, b_ih, b_hh, relu)

    assert torch.autograd.gradcheck(fn, (x, h0, *args))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck_gru(reset_after, masked, tanh_path):
    x = torch.randn(GT, GB, GI, dtype=D, requires_grad=True)
    h0 = torch.randn(GB, GH, dtype=D, requires_grad=True)
    args = [
        torch.randn(3 * GH, GI, dtype=D),
        torch.randn(3 * GH, GH, dtype=D),
        torch.randn(3 * GH, dtype=D),
        torch.randn(3 * GH, dtype=D),
    ]
    args = [t.requires_grad_() for t in args]
    mask = _gc_mask(masked)

    def fn(x, h0, w_ih, w_hh, b_ih, b_hh):
        return GRUFunction.apply(x, h0, mask, w_ih, w_hh, b_ih, b_hh, reset_after)[0]

    assert torch.autograd.gradcheck(fn, (x, h0, *args))


GRADCHECK_LSTM = {
    **{name: carousel.LSTM_VARIANTS[name] for name in carousel.LSTM_VARIANTS},
    "P+LN+FGR": LSTMVariant(peephole=True, layer_norm=True, full_gate_recurrence=True),
    "CIFG+NOG+NOAF": LSTMVariant(
        peephole=True, coupled=True, output_gate=False, output_activation=False
    ),
}


@pytest.mark.parametrize(("proj", "masked"), [(False, False), (True, True)])
@pytest.mark.parametrize("name", list(GRADCHECK_LSTM))
def test_gradcheck_lstm(name, proj, masked, tanh_path):
    variant = GRADCHECK_LSTM[name]
    cell = carousel.LSTMCell(GI, GH, variant=variant, proj_size=2 if proj else 0, dtype=D)
    _randomize(cell)
    spec = LSTMSpec(variant, proj=proj, ln_eps=cell.ln_eps)
    x = torch.randn(GT, GB, GI, dtype=D, requires_grad=True)
    s0 = _fields(_random_state(cell, GB))
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf",
             "weight_co", "weight_gg", "ln_ih_weight", "ln_hh_weight", "ln_c_weight",
             "ln_c_bias", "weight_hr")  # fmt: skip
    given = [n for n in names if hasattr(cell, n) and getattr(cell, n) is not None]
    weights = [getattr(cell, n).detach().clone().requires_grad_() for n in given]
    fgr = variant.full_gate_recurrence
    mask = _gc_mask(masked)

    def fn(x, *rest):
        state, ws = rest[: len(s0)], dict(zip(given, rest[len(s0) :]))
        out = LSTMFunction.apply(
            spec, x, state[0], state[1], state[2] if fgr else None, mask,
            *(ws.get(n) for n in names),
        )  # fmt: skip
        return out[:-1]  # the gates are not differentiable

    assert torch.autograd.gradcheck(fn, (x, *s0, *weights), fast_mode=True)


@pytest.mark.slow
def test_gradcheck_lstm_full_mode():
    """One exhaustive (non-fast) gradcheck of the most involved configuration."""
    variant = LSTMVariant(peephole=True, layer_norm=True, full_gate_recurrence=True)
    cell = carousel.LSTMCell(GI, GH, variant=variant, proj_size=2, dtype=D)
    _randomize(cell)
    spec = LSTMSpec(variant, proj=True, ln_eps=cell.ln_eps)
    x = torch.randn(GT, GB, GI, dtype=D, requires_grad=True)
    s0 = _fields(_random_state(cell, GB))
    names = [n for n, _ in cell.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    order = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf",
             "weight_co", "weight_gg", "ln_ih_weight", "ln_hh_weight", "ln_c_weight",
             "ln_c_bias", "weight_hr")  # fmt: skip
    mask = _gc_mask(True)

    def fn(x, h0, c0, g0, *ws):
        by_name = dict(zip(names, ws))
        return LSTMFunction.apply(spec, x, h0, c0, g0, mask, *(by_name.get(n) for n in order))[:-1]

    assert torch.autograd.gradcheck(fn, (x, *s0, *weights))


# ------------------------------------------------------------------ through the layers
LAYERS = {
    "LSTM": lambda **kw: carousel.LSTM(I, H, **kw),
    "LSTM_vanilla": lambda **kw: carousel.LSTM(I, H, variant="vanilla", **kw),
    "LSTM_FGR": lambda **kw: carousel.LSTM(I, H, variant="FGR", **kw),
    "LSTM_LN": lambda **kw: carousel.LSTM(I, H, variant="LN", **kw),
    "LSTM_CIFG_proj": lambda **kw: carousel.LSTM(I, H, variant="CIFG", proj_size=3, **kw),
    "GRU": lambda **kw: carousel.GRU(I, H, **kw),
    "GRU_cho": lambda **kw: carousel.GRU(I, H, reset_after=False, **kw),
    "RNN": lambda **kw: carousel.RNN(I, H, **kw),
    "RNN_relu": lambda **kw: carousel.RNN(I, H, nonlinearity="relu", **kw),
}


@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_bptt_matches_reference(layer, use_lengths):
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True, "dtype": D}
    ref = LAYERS[layer](impl="reference", learn_initial_state=True, **kw)
    _randomize(ref)
    ours = LAYERS[layer](impl="bptt", learn_initial_state=True, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I, dtype=D, requires_grad=True)
    lengths = LENGTHS if use_lengths else None
    a = ours(x, lengths=lengths, return_states=True, return_gates=True)
    b = ref(x, lengths=lengths, return_states=True, return_gates=True)
    torch.testing.assert_close(a.output, b.output)
    for u, v in zip(_fields(a.state), _fields(b.state), strict=True):
        torch.testing.assert_close(u, v)
    for u, v in zip(_fields(a.states), _fields(b.states), strict=True):
        torch.testing.assert_close(u, v)
    assert a.gates.keys() == b.gates.keys()
    for k in b.gates:
        torch.testing.assert_close(a.gates[k], b.gates[k])
    g_out = torch.randn_like(b.output)
    g_state = [torch.randn_like(t) for t in _fields(b.state)]
    g_states = [torch.randn_like(t) for t in _fields(b.states)]

    def grads(model, res):
        loss = (res.output * g_out).sum()
        loss = loss + sum((s * g).sum() for s, g in zip(_fields(res.state), g_state))
        loss = loss + sum((s * g).sum() for s, g in zip(_fields(res.states), g_states))
        return torch.autograd.grad(loss, [x, *model.parameters()])

    names = ["x", *(n for n, _ in ours.named_parameters())]
    for name, u, v in zip(names, grads(ours, a), grads(ref, b), strict=True):
        torch.testing.assert_close(u, v, msg=lambda m, name=name: f"grad of {name}: {m}")


FAMILIES = {
    "LSTM": (carousel.LSTM, torch.nn.LSTM),
    "GRU": (carousel.GRU, torch.nn.GRU),
    "RNN": (carousel.RNN, torch.nn.RNN),
}


@pytest.mark.parametrize(
    ("family", "num_layers", "bidir", "batch_first", "use_lengths"),
    list(itertools.product(FAMILIES, [1, 2], [False, True], [False, True], [False, True])),
)
def test_layer_bptt_matches_torch_nn(family, num_layers, bidir, batch_first, use_lengths):
    """impl='bptt' equals torch.nn for every standard configuration (as impl='auto' does in
    tests/test_layers.py::test_matches_torch_nn)."""
    ours_cls, ref_cls = FAMILIES[family]
    kw = {"batch_first": batch_first, "bidirectional": bidir, "dtype": D}
    ref = ref_cls(I, H, num_layers, **kw)
    ours = ours_cls(I, H, num_layers, impl="bptt", **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=D, requires_grad=True)
    n = num_layers * (2 if bidir else 1)
    hx = torch.randn(n, B, H, dtype=D, requires_grad=True)
    if family == "LSTM":
        hx = (hx, torch.randn(n, B, H, dtype=D, requires_grad=True))
    if use_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, LENGTHS, batch_first=batch_first, enforce_sorted=False
        )
        out_r, st_r = ref(packed, hx)
        out_r, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out_r, batch_first=batch_first, total_length=T
        )
    else:
        out_r, st_r = ref(x, hx)
    out_o, st_o = ours(x, hx, lengths=LENGTHS if use_lengths else None)
    torch.testing.assert_close(out_o, out_r)
    for u, v in zip(_fields(st_o), _fields(st_r), strict=True):
        torch.testing.assert_close(u, v)
    g_out = torch.randn_like(out_r)
    g_st = [torch.randn_like(s) for s in _fields(st_r)]
    inputs = [x, *_fields(hx)]

    def grads(model, out, st):
        loss = (out * g_out).sum() + sum((s * g).sum() for s, g in zip(_fields(st), g_st))
        return torch.autograd.grad(loss, [*inputs, *model.parameters()])

    for u, v in zip(grads(ours, out_o, st_o), grads(ref, out_r, st_r), strict=True):
        torch.testing.assert_close(u, v)


def test_float32_default_paths_match_reference():
    """At a size where the sigmoid identity is used for tanh, float32 results agree with the
    reference to float32 precision."""
    for layer in (
        carousel.LSTM(8, 256, variant="vanilla", impl="bptt"),
        carousel.GRU(8, 256, impl="bptt"),
        carousel.RNN(8, 256, impl="bptt"),
    ):
        ref = type(layer)(8, 256, impl="reference", **(
            {"variant": "vanilla"} if isinstance(layer, carousel.LSTM) else {}
        ))  # fmt: skip
        ref.load_state_dict(layer.state_dict())
        x = torch.randn(6, 8, 8)
        assert bptt_common.sigmoid_tanh(8 * 256, x.device)
        a, b = layer(x)[0], ref(x)[0]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        ga = torch.autograd.grad(a.pow(2).sum(), list(layer.parameters()))
        gb = torch.autograd.grad(b.pow(2).sum(), list(ref.parameters()))
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_frozen_weights_only_input_gradient():
    """Gradients flow to the input alone when the weights are frozen (the skipped branches
    of the backward pass)."""
    ours = carousel.LSTM(I, H, variant="vanilla", impl="bptt", dtype=D)
    ref = carousel.LSTM(I, H, variant="vanilla", impl="reference", dtype=D)
    ref.load_state_dict(ours.state_dict())
    for p in (*ours.parameters(), *ref.parameters()):
        p.requires_grad_(False)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    (ga,) = torch.autograd.grad(ours(x)[0].sum(), x)
    (gb,) = torch.autograd.grad(ref(x)[0].sum(), x)
    torch.testing.assert_close(ga, gb)


def test_only_final_state_used():
    """No gradient reaches the output buffer, only the final state: still right."""
    ours = carousel.GRU(I, H, impl="bptt", dtype=D)
    ref = carousel.GRU(I, H, impl="reference", dtype=D)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    ga = torch.autograd.grad(ours(x).state.sum(), list(ours.parameters()))
    gb = torch.autograd.grad(ref(x).state.sum(), list(ref.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


# ------------------------------------------------------------------ dispatch and errors
def test_supports_and_auto_selection():
    assert all(bptt.supports(make()) for make in CELLS.values())

    class Custom(carousel.LSTMCell):
        def step_with_params(self, params, x, state):  # different math
            return super().step_with_params(params, x * 2, state)

    class Harmless(carousel.GRUCell):
        pass

    assert not bptt.supports(Custom(I, H))
    assert bptt.supports(Harmless(I, H))
    assert not bptt.supports(torch.nn.Linear(2, 3))
    # auto: torch's kernel for the standard LSTM; the hand-written BPTT (or its compiled
    # twin where one is built) for every other built-in configuration on the CPU, where it is
    # faster than torch.nn.GRU/RNN and torch.nn.LSTM with proj_size (docs/performance.md)
    handwritten = {"bptt", "compiled"}
    assert carousel.LSTM(I, H).resolve_impl() == "fused"
    assert carousel.LSTM(I, H).resolve_impl(return_gates=True) in handwritten
    assert carousel.LSTM(I, H, proj_size=3).resolve_impl() in handwritten
    assert carousel.LSTM(I, H, variant="FGR").resolve_impl() in handwritten
    assert carousel.GRU(I, H).resolve_impl() in handwritten
    assert carousel.GRU(I, H, reset_after=False).resolve_impl() in handwritten
    assert carousel.RNN(I, H).resolve_impl() in handwritten
    assert carousel.LSTM(I, H, proj_size=3).resolve_impl(device="cuda") == "fused"
    assert carousel.GRU(I, H).resolve_impl(device="cuda") == "fused"
    assert carousel.Recurrent(Custom(I, H)).resolve_impl() == "reference"
    # one step without gradients (generation) on the CPU: the compiled kernel where built
    from carousel import kernels

    one_step = "compiled" if kernels.available() else "fused"
    with torch.no_grad():
        assert carousel.LSTM(I, H).resolve_impl(steps=1) == one_step
        assert carousel.LSTM(I, H).resolve_impl(steps=2) == "fused"
    assert carousel.LSTM(I, H).resolve_impl(steps=1) == "fused"
    # variable lengths on the CPU: torch would run a packed sequence off oneDNN
    assert carousel.LSTM(I, H).resolve_impl(lengths=True) in handwritten
    assert carousel.LSTM(I, H).resolve_impl(lengths=True, device="cuda") == "fused"


def test_step_by_step_generation_equals_torch_nn():
    ref = torch.nn.LSTM(I, H, 2)
    ours = carousel.LSTM(I, H, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    sr = so = None
    with torch.no_grad():
        for t in range(T):
            yr, sr = ref(x[t : t + 1], sr)
            yo, so = ours(x[t : t + 1], so)
            torch.testing.assert_close(yo, yr)
    torch.testing.assert_close(so.c, sr[1])


def test_errors():
    with pytest.raises(TypeError, match="cell must be a built-in RNNCell, GRUCell or LSTMCell"):
        bptt.run_sequence(torch.nn.Linear(2, 3), None, torch.zeros(2, 1, 2), None, None)

    class Custom(carousel.RNNCell):
        def step_with_gates(self, x, state):
            return super().step_with_gates(x, state)

    with pytest.raises(ValueError, match="impl='bptt' has no hand-written backward for Custom"):
        carousel.Recurrent(Custom(I, H), impl="bptt")(torch.randn(T, B, I))


def test_double_backward_recomputes_with_the_reference_loop():
    """A second derivative through run_sequence (create_graph=True) is the reference loop's;
    gradgradcheck holds. A Function applied without ``recompute`` is differentiable once, and
    says so."""
    cell = CELLS["gru"]()
    _randomize(cell)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(B, H, dtype=D, requires_grad=True)
    mask = _mask("lengths")
    w = list(cell.parameters())

    def penalty(run, x, h0, *w):
        params = dict(zip(cell.param_names(), w))
        out = run(cell, params, x, h0, mask).output
        g = torch.autograd.grad(out.pow(2).sum(), [x, h0, *w], create_graph=True)
        return sum(t.pow(2).sum() for t in g)

    got = torch.autograd.grad(penalty(bptt.run_sequence, x, h0, *w), [x, h0, *w])
    ref = torch.autograd.grad(penalty(run_reference, x, h0, *w), [x, h0, *w])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    small = [t.detach()[:2].requires_grad_() for t in (x,)]  # gradgradcheck: a short sequence
    m2 = mask[:2]

    def fn(x, h0):
        return bptt.run_sequence(cell, None, x, h0, m2).output

    assert torch.autograd.gradgradcheck(fn, (small[0], h0))
    (g,) = torch.autograd.grad(
        GRUFunction.apply(x, h0, None, *w, True)[0].pow(2).sum(), x, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["lstm_vanilla", "lstm_P+LN+FGR+proj", "gru", "rnn_tanh"])
def test_cuda_matches_reference(config):
    cell = CELLS[config]().cuda()
    _randomize(cell)
    x = torch.randn(T, B, I, dtype=D, device="cuda", requires_grad=True)
    s0 = cell.initial_state(B)
    mask = _mask("lengths").cuda()
    a = bptt.run_sequence(cell, None, x, s0, mask, return_states=True)
    b = run_reference(cell, None, x, s0, mask, return_states=True)
    torch.testing.assert_close(a.output, b.output)
    ga = torch.autograd.grad(a.output.sum(), [x, *cell.parameters()])
    gb = torch.autograd.grad(b.output.sum(), [x, *cell.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


@pytest.mark.slow
def test_benchmark_quick_runs():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "layers.py"
    res = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert "| LSTM FGR bptt |" in res.stdout
    assert "| torch.nn.GRU |" in res.stdout
    assert "machine:" in res.stdout


def test_gc_paused_restores_the_collector():
    import gc

    from carousel.bptt._common import gc_paused

    seen = []

    @gc_paused
    def probe(fail=False):
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("boom")
        return 7

    assert gc.isenabled()
    assert probe() == 7 and seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError, match="boom"):
        probe(fail=True)
    assert gc.isenabled()
    gc.disable()  # a caller that switched it off keeps it off
    try:
        probe()
        assert not gc.isenabled()
    finally:
        gc.enable()
    # the BPTT passes run paused and give the collector back
    lstm = carousel.LSTM(3, 4, impl="bptt")
    lstm(torch.randn(5, 2, 3))[0].sum().backward()
    assert gc.isenabled()
