"""Jacobian spectra and Lyapunov exponents (carousel.analysis.dynamics): known answers and an
explicit-Jacobian oracle."""

import math

import pytest
import torch

import carousel
from carousel.analysis import jacobian_spectrum, lyapunov_exponents, record, regime
from carousel.functional import LSTMState

D = torch.float64


@pytest.mark.parametrize("w", [0.5, 1.5])
def test_scalar_linear_map_exponent_is_log_w(linear_cell, w):
    layer = carousel.Recurrent(linear_cell(torch.tensor([[w]], dtype=D)))
    x = torch.randn(50, 2, 1, dtype=D)
    lyap = lyapunov_exponents(layer, x, discard=0)
    torch.testing.assert_close(lyap.exponents["l0"], torch.full((2, 1), math.log(w), dtype=D))
    torch.testing.assert_close(lyap.local["l0"], torch.full((50, 2, 1), math.log(w), dtype=D))
    assert (lyap.largest() < 0) == (w < 1)
    assert lyap.regime() == ("ordered" if w < 1 else "chaotic")
    spec = jacobian_spectrum(layer, x)
    torch.testing.assert_close(spec.sigma_max["l0"], torch.full((50, 1), w, dtype=D))


def test_linear_map_full_spectrum_by_qr_method(linear_cell):
    q = torch.linalg.qr(torch.randn(3, 3, dtype=D))[0]
    W = q @ torch.diag(torch.tensor([2.0, -0.5, 1.25], dtype=D)) @ q.T
    layer = carousel.Recurrent(linear_cell(W))
    x = torch.randn(400, 1, 1, dtype=D)
    lyap = lyapunov_exponents(layer, x, k=3, discard=40)
    want = torch.tensor([[math.log(2.0), math.log(1.25), math.log(0.5)]], dtype=D)
    torch.testing.assert_close(lyap.exponents["l0"], want, atol=2e-2, rtol=0)
    spec = jacobian_spectrum(layer, x, spectrum_steps=[0, -1])
    torch.testing.assert_close(spec.spectra["l0"], torch.tensor([[2.0, 1.25, 0.5]] * 2, dtype=D))
    assert spec.steps["l0"].tolist() == [0, 399]


def test_tanh_rnn_contracting_and_chaotic():
    torch.manual_seed(0)
    H = 64
    q = torch.linalg.qr(torch.randn(H, H))[0]
    small, big = carousel.RNN(1, H), carousel.RNN(1, H)
    with torch.no_grad():
        small.weight_hh_l0.copy_(0.5 * q)
        big.weight_hh_l0.copy_(3.0 * q)
    x = torch.randn(300, 1, 1)
    assert lyapunov_exponents(small, x).largest() < -0.3
    assert lyapunov_exponents(big, x).largest() > 0.05  # random tanh net, gain 3: chaos
    # at the fixed point h = 0 (no input, no bias) the Jacobian is W = 3Q: every exponent log 3
    with torch.no_grad():
        big.bias_ih_l0.zero_()
        big.bias_hh_l0.zero_()
    lyap = lyapunov_exponents(big, torch.zeros(50, 1, 1), k=4, discard=0)
    torch.testing.assert_close(lyap.exponents["l0"], torch.full((1, 4), math.log(3.0)))


def _explicit_jacobians(lstm, x):
    """Oracle: torch.autograd.functional.jacobian of one step of each layer, at the layer's
    recorded states."""
    res = lstm(x, return_states=True)
    H = lstm.hidden_size
    out = []
    inp = x
    for l in range(lstm.num_layers):
        W = [getattr(lstm, f"{p}_l{l}") for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c = res.states.h[l, :, 0], res.states.c[l, :, 0]  # (T, H)
        Js = []
        for t in range(x.shape[0]):
            hp = h[t - 1] if t else torch.zeros(H, dtype=D)
            cp = c[t - 1] if t else torch.zeros(H, dtype=D)

            def f(z, t=t, inp=inp, W=W):
                _, s, _ = carousel.functional.lstm.lstm_step(
                    inp[t, :1], LSTMState(z[None, :H], z[None, H:]), *W
                )
                return torch.cat([s.h, s.c], -1)[0]

            Js.append(torch.autograd.functional.jacobian(f, torch.cat([hp, cp])))
        out.append(torch.stack(Js))
        inp = res.output if l == lstm.num_layers - 1 else res.states.h[l]
    return out


def test_lstm_spectrum_matches_explicit_jacobians():
    lstm = carousel.LSTM(3, 5, num_layers=2, dtype=D)
    x = torch.randn(12, 2, 3, dtype=D)
    Js = _explicit_jacobians(lstm, x)
    spec = jacobian_spectrum(lstm, x, spectrum_steps=[0, 5, 11])
    for l, J in enumerate(Js):
        sv = torch.linalg.svdvals(J)  # (T, 2H)
        torch.testing.assert_close(spec.sigma_max[f"l{l}"][:, 0], sv[:, 0], rtol=1e-9, atol=0)
        torch.testing.assert_close(spec.spectra[f"l{l}"], sv[[0, 5, 11]])


def test_lengths_batch_index_and_shared_recording():
    lstm = carousel.LSTM(2, 4, bidirectional=True)
    x = torch.randn(10, 3, 2)
    kw = {"lengths": torch.tensor([10, 4, 7])}
    rec = record(lstm, x, forward_kwargs=kw, grad=False)
    spec = jacobian_spectrum(recording=rec, batch_index=None)
    s = spec.sigma_max["l0_reverse"]
    assert s.shape == (10, 3) and torch.isnan(s[4:, 1]).all() and not torch.isnan(s[:4, 1]).any()
    one = jacobian_spectrum(recording=rec, batch_index=1)
    torch.testing.assert_close(
        one.sigma_max["l0"][:, 0], spec.sigma_max["l0"][:, 1], equal_nan=True, rtol=1e-3, atol=0
    )
    assert one.steps["l0"].tolist() == [0, 2, 3]  # within the sequence's 4 steps
    lyap = lyapunov_exponents(recording=rec, k=2, discard=2)
    assert lyap.exponents["l0"].shape == (3, 2)
    assert (lyap.exponents["l0"][:, 0] >= lyap.exponents["l0"][:, 1]).all()
    assert (lyap.local["l0"][4:, 1] == 0).all()


def test_regime_and_errors(linear_cell):
    assert (
        regime(-0.5) == "ordered"
        and regime(0.5) == "chaotic"
        and regime(0.001) == ("edge of chaos")
    )
    layer = carousel.Recurrent(linear_cell(torch.eye(2, dtype=D)))
    x = torch.randn(5, 2, 1, dtype=D)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, S=2\]"):
        lyapunov_exponents(layer, x, k=3)
    with pytest.raises(ValueError, match="leaves no step"):
        lyapunov_exponents(layer, x, discard=5)
    with pytest.raises(ValueError, match=r"batch_index must be in \[0, 2\)"):
        jacobian_spectrum(layer, x, batch_index=2)
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        jacobian_spectrum(layer, x, iterations=0)
    with pytest.raises(ValueError, match="spectrum_steps entries must lie in"):
        jacobian_spectrum(layer, x, spectrum_steps=[9])
    with pytest.raises(ValueError, match="give model and inputs, or a recording"):
        jacobian_spectrum(layer)
    with pytest.raises(TypeError, match="recording must be a Recording"):
        lyapunov_exponents(recording={"l0": 1})


def test_lanczos_converges_with_default_iterations():
    torch.manual_seed(1)
    lstm = carousel.LSTM(4, 32, dtype=D)  # state size 64 > the 30 Lanczos steps
    x = torch.randn(20, 1, 4, dtype=D)
    (J,) = _explicit_jacobians(lstm, x)
    spec = jacobian_spectrum(lstm, x, spectrum_steps=0)
    assert spec.spectra["l0"].shape == (0, 64)
    sv = torch.linalg.svdvals(J)[:, 0]
    torch.testing.assert_close(spec.sigma_max["l0"][:, 0], sv, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        *[lambda v=v: carousel.LSTM(3, 4, variant=v) for v in carousel.LSTM_VARIANTS],
        lambda: carousel.LSTM(3, 5, proj_size=2),
        lambda: carousel.GRU(3, 4, reset_after=False),
        lambda: carousel.RNN(3, 4, nonlinearity="relu"),
    ],
    ids=[*carousel.LSTM_VARIANTS, "proj", "GRU-reset-before", "RNN-relu"],
)
def test_every_cell_variant_through_every_measure(make):
    from carousel.analysis import gradient_norms_through_time, saliency

    torch.manual_seed(0)
    layer = make()
    x = torch.randn(8, 2, 3)
    rec = record(layer, x, grad=False)
    lay = rec.layers["l0"]
    S = lay.state_size
    flow = gradient_norms_through_time(layer, x)
    assert set(flow.norms["l0"]) == set(lay.field_names)
    spec = jacobian_spectrum(recording=rec, spectrum_steps=2)
    assert spec.spectra["l0"].shape == (2, S) and torch.isfinite(spec.sigma_max["l0"]).all()
    # sigma_1 from Lanczos equals the top of the exact spectrum at the same steps
    torch.testing.assert_close(spec.sigma_max["l0"][[0, 7], 0], spec.spectra["l0"][:, 0],
                               rtol=1e-3, atol=1e-6)  # fmt: skip
    lyap = lyapunov_exponents(recording=rec, k=2, discard=1)
    assert lyap.exponents["l0"].shape == (2, 2) and torch.isfinite(lyap.exponents["l0"]).all()
    assert saliency(layer, x).scores.shape == (8, 2)
