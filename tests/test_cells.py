"""Cells: parity with torch.nn cells, variant reductions, errors."""

import dataclasses

import pytest
import torch

import carousel
from carousel.functional import LSTM_VARIANTS, LSTMVariant

D = torch.float64


def test_lstm_cell_matches_torch():
    ref = torch.nn.LSTMCell(3, 5, dtype=D)
    cell = carousel.LSTMCell(3, 5, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(4, 3, dtype=D), torch.randn(4, 5, dtype=D), torch.randn(4, 5, dtype=D)
    y, (h1, c1) = cell(x, carousel.LSTMState(h, c))
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(y, h2)


def test_gru_cell_matches_torch():
    ref = torch.nn.GRUCell(3, 5, dtype=D)
    cell = carousel.GRUCell(3, 5, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(4, 3, dtype=D), torch.randn(4, 5, dtype=D)
    torch.testing.assert_close(cell(x, h)[0], ref(x, h))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_matches_torch(nonlinearity):
    ref = torch.nn.RNNCell(3, 5, nonlinearity=nonlinearity, dtype=D)
    cell = carousel.RNNCell(3, 5, nonlinearity=nonlinearity, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(4, 3, dtype=D), torch.randn(4, 5, dtype=D)
    torch.testing.assert_close(cell(x, h)[0], ref(x, h))


def test_gru_original_formulation():
    cell = carousel.GRUCell(3, 5, reset_after=False, dtype=D)
    x, h = torch.randn(4, 3, dtype=D), torch.randn(4, 5, dtype=D)
    W, U, b, bh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    gx = x @ W.T + b
    r = torch.sigmoid(gx[:, :5] + h @ U[:5].T + bh[:5])
    z = torch.sigmoid(gx[:, 5:10] + h @ U[5:10].T + bh[5:10])
    n = torch.tanh(gx[:, 10:] + (r * h) @ U[10:].T + bh[10:])
    torch.testing.assert_close(cell(x, h)[0], (1 - z) * n + z * h)


def _copy_shared(src, dst):
    """Copy the weights a variant shares with the standard cell (rows of present gates)."""
    H = src.hidden_size
    rows = dict(zip(src.gate_names, range(4)))
    idx = torch.cat([torch.arange(rows[g] * H, rows[g] * H + H) for g in dst.gate_names])
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(dst, n).copy_(getattr(src, n)[idx])


@pytest.mark.parametrize("name", ["vanilla", "FGR"])
def test_zero_extra_weights_reduce_to_standard(name):
    std = carousel.LSTMCell(3, 5, dtype=D)
    var = carousel.LSTMCell(3, 5, variant=name, dtype=D)
    _copy_shared(std, var)
    with torch.no_grad():
        for n, p in var.named_parameters():
            if n.startswith("weight_c") or n == "weight_gg":
                p.zero_()
    x = torch.randn(4, 3, dtype=D)
    s = std.initial_state(4)
    s = carousel.LSTMState(torch.randn_like(s.h), torch.randn_like(s.c))
    sv = s if name != "FGR" else carousel.LSTMGateState(s.h, s.c, torch.rand(4, 15, dtype=D))
    torch.testing.assert_close(var(x, sv)[0], std(x, s)[0])


def test_layer_norm_matches_formula():
    cell = carousel.LSTMCell(3, 4, layer_norm=True, dtype=D)
    with torch.no_grad():
        for p in (cell.ln_ih_weight, cell.ln_hh_weight, cell.ln_c_weight, cell.ln_c_bias):
            p.uniform_(0.5, 1.5)
    x, h, c = torch.randn(2, 3, dtype=D), torch.randn(2, 4, dtype=D), torch.randn(2, 4, dtype=D)

    def ln(v, g, b=0.0):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-5) * g + b

    a = ln(x @ cell.weight_ih.T, cell.ln_ih_weight) + ln(h @ cell.weight_hh.T, cell.ln_hh_weight)
    a = a + cell.bias_ih + cell.bias_hh
    i, f, g, o = a.split(4, -1)
    c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h1 = torch.sigmoid(o) * torch.tanh(ln(c1, cell.ln_c_weight, cell.ln_c_bias))
    y, (h2, c2) = cell(x, carousel.LSTMState(h, c))
    torch.testing.assert_close(c2, c1)
    torch.testing.assert_close(h2, h1)


def test_variant_gate_rows():
    assert carousel.LSTMCell(2, 3, variant="NIG").weight_ih.shape == (9, 2)
    assert carousel.LSTMCell(2, 3, variant="CIFG").gate_names == ("i", "g", "o")
    assert carousel.LSTMCell(2, 3, variant="NFG").gate_names == ("i", "g", "o")
    assert carousel.LSTMCell(2, 3, variant="NOG").gate_names == ("i", "f", "g")
    assert carousel.LSTMCell(2, 3, variant="FGR").weight_gg.shape == (9, 9)
    assert set(dict(carousel.LSTMCell(2, 3, peephole=True).named_parameters())) >= {
        "weight_ci",
        "weight_cf",
        "weight_co",
    }


@pytest.mark.parametrize("name", sorted(LSTM_VARIANTS))
def test_every_variant_runs_and_differentiates(name):
    cell = carousel.LSTMCell(3, 4, variant=name, dtype=D)
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    s = cell.initial_state(2)
    y, s = cell(x, s)
    y, s = cell(x, s)
    y.sum().backward()
    for n, p in cell.named_parameters():
        assert p.grad is not None, n


def test_nfg_is_1997_cell():
    cell = carousel.LSTMCell(2, 3, variant=LSTMVariant(forget_gate=False), dtype=D)
    x, h, c = torch.randn(1, 2, dtype=D), torch.zeros(1, 3, dtype=D), torch.randn(1, 3, dtype=D)
    a = x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh
    i, g, o = a.split(3, -1)
    c1 = c + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(cell(x, carousel.LSTMState(h, c))[1].c, c1)


def test_cifg_couples_gates():
    cell = carousel.LSTMCell(2, 3, variant="CIFG", dtype=D)
    _, _, gates = cell.step_with_gates(torch.randn(1, 2, dtype=D), cell.initial_state(1))
    torch.testing.assert_close(gates["f"], 1 - gates["i"])


def test_variant_errors():
    with pytest.raises(ValueError, match="variant must be one of"):
        carousel.LSTMCell(2, 3, variant="nope")
    with pytest.raises(ValueError, match="needs the input gate"):
        carousel.LSTMCell(2, 3, coupled=True, input_gate=False)
    with pytest.raises(ValueError, match=r"FGR.*all off"):
        LSTMVariant(
            full_gate_recurrence=True, input_gate=False, forget_gate=False, output_gate=False
        )
    with pytest.raises(ValueError, match="proj_size must be smaller"):
        carousel.LSTMCell(2, 3, proj_size=3)
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        carousel.LSTMCell(2, 3.0)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        carousel.RNNCell(2, 3, nonlinearity="sigmoid")


def test_functional_lstm_step_names_missing_weights():
    """The functional step, called directly, says which weights or state a variant lacks."""
    from carousel.functional import LSTMGateState, LSTMState, lstm_step

    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    state = LSTMState(h, h)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    with pytest.raises(TypeError, match="layer_norm variant needs ln="):
        lstm_step(x, state, w_ih, w_hh, variant=LSTMVariant(layer_norm=True))
    fgr = LSTMVariant(full_gate_recurrence=True)
    with pytest.raises(TypeError, match="full_gate_recurrence variant needs weight_gg"):
        lstm_step(x, LSTMGateState(h, h, torch.zeros(2, 12)), w_ih, w_hh, variant=fgr)
    with pytest.raises(TypeError, match=r"needs state=LSTMGateState.*got LSTMState"):
        lstm_step(x, state, w_ih, w_hh, variant=fgr, weight_gg=torch.randn(12, 12))


def test_cell_input_errors():
    cell = carousel.LSTMCell(3, 5)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 3\) .*, got \(4, 2\)"):
        cell(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"expected x of shape \(3\) \(unbatched\) or \(B, 3\)"):
        cell(torch.randn(2))
    with pytest.raises(TypeError, match="x must be a Tensor, got list"):
        cell([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="dtype"):
        cell(torch.randn(4, 3, dtype=D))
    with pytest.raises(ValueError, match=r"state.c of shape \(4, 5\)"):
        cell(torch.randn(4, 3), carousel.LSTMState(torch.zeros(4, 5), torch.zeros(4, 6)))
    with pytest.raises(TypeError, match=r"state.h has dtype torch.float64 but the parameters"):
        cell(torch.randn(4, 3), carousel.LSTMState(torch.zeros(4, 5, dtype=D), torch.zeros(4, 5)))
    with pytest.raises(TypeError, match=r"state has dtype torch.float64"):
        carousel.GRUCell(3, 5)(torch.randn(4, 3), torch.zeros(4, 5, dtype=D))
    with pytest.raises(ValueError, match=r"expected state.h of shape \(5\), got \(1, 5\)"):
        cell(torch.randn(3), carousel.LSTMState(torch.zeros(1, 5), torch.zeros(1, 5)))


@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_unbatched_cells_match_torch_nn(family):
    """One sequence without a batch dimension, as torch.nn's cells take it: x (I,), state
    fields (H,), output (H,)."""
    ours = getattr(carousel, f"{family}Cell")(3, 5, dtype=D)
    ref = getattr(torch.nn, f"{family}Cell")(3, 5, dtype=D)
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(3, dtype=D), torch.randn(5, dtype=D)
    if family == "LSTM":
        c = torch.randn(5, dtype=D)
        y, (h1, c1) = ours(x, (h, c))
        h2, c2 = ref(x, (h, c))
        torch.testing.assert_close(c1, c2)
    else:
        y, h1 = ours(x, h)
        h2 = ref(x, h)
    assert y.shape == h1.shape == (5,)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(ours(x)[0], ref(x)[0] if family == "LSTM" else ref(x))


def test_acronyms():
    assert LSTMVariant().acronym == "NP"
    assert dataclasses.replace(LSTMVariant(), coupled=True).acronym == "CIFG"


@pytest.mark.parametrize(
    ("make", "state_dtype"),
    [
        (lambda: carousel.GRUCell(3, 5), torch.float32),
        (lambda: carousel.GRUCell(3, 5, reset_after=False), torch.float32),
        (lambda: carousel.LSTMCell(3, 5, variant="vanilla"), torch.float32),
        (lambda: carousel.RNNCell(3, 5), torch.bfloat16),
    ],
)
def test_cells_run_under_autocast(make, state_dtype):
    """Under torch.autocast the products run in its lower precision, for several steps; the
    state's dtype is torch.nn's cells' on the CPU: GRU and LSTM keep the parameters' (the
    update mixes in the old state), an Elman cell's is the autocast dtype."""
    cell = make()
    state = cell.initial_state(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            _, state = cell(torch.randn(4, 3), state)
    fields = (state,) if isinstance(state, torch.Tensor) else tuple(state)
    assert fields[-1].dtype == state_dtype
