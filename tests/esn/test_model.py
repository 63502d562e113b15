"""EchoStateNetwork: training against explicit oracles, streaming, closed-loop generation,
learning on small seeded problems, the reservoirpy Mackey-Glass protocol, errors."""

import math

import numpy as np
import pytest
import torch

from carousel.esn import EchoStateNetwork, ESNState, nrmse
from carousel.esn.experiments import one_step_mackey_glass
from carousel.tasks.timeseries import mackey_glass


def sine(T, B=None, period=20.0, phase=0.0):
    t = torch.arange(T, dtype=torch.float64)
    if B is None:
        return torch.sin(2 * math.pi * t / period + phase)[:, None]
    phases = torch.linspace(0, 1, B, dtype=torch.float64)[None, :, None]
    return torch.sin(2 * math.pi * t[:, None, None] / period + phases + phase)


def test_ridge_fit_equals_lstsq_on_explicit_states():
    u = torch.randn(300, 2, 2, dtype=torch.float64)
    y = torch.randn(300, 2, 1, dtype=torch.float64)
    esn = EchoStateNetwork(30, ridge=1e-3, input_to_readout=True, bias_scaling=0.2, seed=1)
    esn.fit(u, y, washout=50)
    states, _ = esn.reservoir(u)
    x = torch.cat([states, u], -1)[50:].reshape(-1, 32)
    t = y[50:].reshape(-1, 1)
    xc, tc = x - x.mean(0), t - t.mean(0)
    a = torch.cat([xc, 1e-3**0.5 * torch.eye(32, dtype=torch.float64)])
    b = torch.cat([tc, torch.zeros(32, 1, dtype=torch.float64)])
    w = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(esn.readout.weight, w, rtol=1e-7, atol=1e-9)
    out = esn.predict(u)
    torch.testing.assert_close(out, torch.cat([states, u], -1) @ w.T + esn.readout.bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_fit_with_inputs_to_the_readout_equals_explicit_states(dtype):
    """One sequence (the compiled loop where it builds), whose states go straight into the
    features buffer beside the inputs, in chunks of 64 steps (the last one short); float32
    features are summed in float64 through a buffer of their own."""
    u = torch.randn(300, 1, 2, dtype=torch.float64)
    y = torch.randn(300, 1, 1, dtype=torch.float64)
    esn = EchoStateNetwork(
        80, ridge=1e-3, input_to_readout=True, seed=2, chunk_size=64, dtype=dtype
    )
    esn.fit(u.to(dtype), y.to(dtype), washout=70)
    states, last = esn.reservoir(u.to(dtype))
    x = torch.cat([states, u.to(dtype)], -1)[70:].reshape(-1, 82).double()
    t = y[70:].reshape(-1, 1).to(dtype).double()
    xc, tc = x - x.mean(0), t - t.mean(0)
    a = torch.cat([xc, 1e-3**0.5 * torch.eye(82, dtype=torch.float64)])
    b = torch.cat([tc, torch.zeros(82, 1, dtype=torch.float64)])
    w = torch.linalg.lstsq(a, b).solution.T
    tol = {"rtol": 1e-7, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(esn.readout.weight.double(), w, **tol)
    torch.testing.assert_close(esn.last_state.h, last, rtol=0, atol=0)


def test_streaming_equals_one_shot_fit():
    u = sine(400, B=2)
    y = torch.roll(u, -1, 0)
    whole = EchoStateNetwork(40, leak_rate=0.5, seed=3, chunk_size=1000).fit(u, y, washout=30)
    chunked = EchoStateNetwork(40, leak_rate=0.5, seed=3, chunk_size=64).fit(u, y, washout=30)
    torch.testing.assert_close(chunked.readout.weight, whole.readout.weight)
    stream = EchoStateNetwork(40, leak_rate=0.5, seed=3)
    state = stream.partial_fit(u[:150], y[:150], washout=30)
    state = stream.partial_fit(u[150:], y[150:], state=state)
    stream.solve()
    torch.testing.assert_close(stream.readout.weight, whole.readout.weight)
    torch.testing.assert_close(state.h, whole.last_state.h)


def manual_generate(esn, state, steps):
    """Oracle: closed loop written out with the raw weights."""
    res, ro = esn.reservoir, esn.readout
    W = res.weight_hh.to_dense() if res.sparse else res.weight_hh
    h, y = state
    outs = []
    for _ in range(steps):
        pre = W @ h + res.bias
        if res.input_size:
            pre = pre + res.weight_ih @ y
        if res.feedback_size:
            pre = pre + res.weight_fb @ y
        h = (1 - res.leak_rate) * h + res.leak_rate * torch.tanh(pre)
        y = ro.weight @ h + ro.bias
        outs.append(y)
    return torch.stack(outs)


@pytest.mark.parametrize("feedback", [False, True])
def test_generate_equals_manual_closed_loop(feedback):
    u = sine(300)
    esn = EchoStateNetwork(50, spectral_radius=0.8, leak_rate=0.7, feedback=feedback, seed=2)
    esn.fit(u[:-1], u[1:], washout=50)
    gen = esn.generate(30)
    torch.testing.assert_close(gen, manual_generate(esn, esn.last_state, 30))


def test_autoregressive_generation_learns_a_sine():
    u = sine(600)
    esn = EchoStateNetwork(100, spectral_radius=0.9, leak_rate=0.5, ridge=1e-8, seed=0)
    esn.fit(u[:499], u[1:500], washout=100)
    forecast = esn.generate(100)
    assert forecast.shape == (100, 1)
    assert nrmse(forecast, u[500:600]) < 1e-3


def test_feedback_only_generation_learns_a_sine():
    y = sine(700)
    esn = EchoStateNetwork(
        150, spectral_radius=0.9, feedback=True, bias_scaling=0.2, ridge=1e-9, noise=1e-6, seed=1
    )
    esn.fit(None, y[:500], washout=100)
    assert esn.input_size == 0
    forecast = esn.generate(100)  # continues after the last target y[499]
    assert nrmse(forecast, y[500:600]) < 1e-2
    # Warm up on true data from another point, then free-run: the state API.
    _, state = esn(None, teacher=y[:600])
    assert nrmse(esn.generate(50, state), y[600:650]) < 1e-2


def test_force_and_rls_readouts_learn():
    y = sine(1200)
    force = EchoStateNetwork(
        100,
        readout="force",
        feedback=True,
        spectral_radius=0.9,
        bias_scaling=0.2,
        rls_alpha=1e-2,
        seed=0,
    )
    force.fit(None, y[:1000], washout=100)
    assert nrmse(force.generate(100), y[1000:1100]) < 0.05
    rls = EchoStateNetwork(60, readout="rls", rls_alpha=1e-4, seed=0, leak_rate=0.5)
    rls.fit(y[:799], y[1:800], washout=100)
    assert nrmse(rls.predict(y[799:999], rls.last_state), y[800:1000]) < 1e-3


def test_batches_layouts_and_arrays():
    u = sine(120, B=3)
    y = torch.roll(u, -1, 0)
    esn = EchoStateNetwork(30, seed=0).fit(u, y, washout=10)
    out = esn.predict(u)
    assert out.shape == (120, 3, 1)
    bf = EchoStateNetwork(30, seed=0, batch_first=True).fit(
        u.transpose(0, 1).numpy(), y.transpose(0, 1).numpy(), washout=10
    )
    torch.testing.assert_close(bf.readout.weight, esn.readout.weight)
    torch.testing.assert_close(bf.predict(u.transpose(0, 1)), out.transpose(0, 1))
    assert bf.generate(5).shape == (3, 5, 1)
    # Each sequence of a batch equals its own unbatched run.
    single, state = esn(u[:, 1])
    torch.testing.assert_close(single, out[:, 1])
    assert isinstance(state, ESNState) and state.h.shape == (30,)
    assert isinstance(np.asarray(single), np.ndarray)


def test_float32_and_state_dict():
    u = sine(200)
    esn = EchoStateNetwork(40, seed=5, dtype=torch.float32).fit(u[:-1], u[1:], washout=20)
    assert esn.predict(u[:10]).dtype == torch.float32
    built = EchoStateNetwork(40, seed=5, dtype=torch.float32, input_size=1, output_size=1)
    built.load_state_dict(esn.state_dict())
    torch.testing.assert_close(built.predict(u[:50]), esn.predict(u[:50]))


@pytest.mark.parametrize(
    "options", [{}, {"readout": "rls"}, {"feedback": True, "input_to_readout": True}]
)
def test_a_fitted_state_dict_loads_into_an_unbuilt_network(options):
    """Saved with torch.save(esn.state_dict()), loaded into EchoStateNetwork(units, ...) made
    without the sizes: it is built from the saved weights' shapes (before: unexpected keys)."""
    u = sine(200)
    esn = EchoStateNetwork(40, seed=5, **options).fit(u[:-1], u[1:], washout=20)
    fresh = EchoStateNetwork(40, seed=9, **options)
    fresh.load_state_dict(esn.state_dict())
    torch.testing.assert_close(fresh.predict(u[:50]), esn.predict(u[:50]))
    with pytest.raises(RuntimeError, match=r"size mismatch for reservoir\.weight_hh"):
        EchoStateNetwork(41, **options).load_state_dict(esn.state_dict())


def test_reservoirpy_mackey_glass_protocol_r2():
    # reservoirpy's README protocol; the bar is R^2 >= 0.9999.
    result = one_step_mackey_glass()
    assert result.r2 >= 0.9999
    assert result.nrmse < 0.01


def test_compiled_impl_gives_the_same_fit():
    x = mackey_glass(800)
    kw = {"spectral_radius": 1.25, "leak_rate": 0.3, "ridge": 1e-5}
    ref = EchoStateNetwork(100, **kw).fit(x[:599], x[1:600], washout=100)
    fast = EchoStateNetwork(100, impl="compiled", **kw).fit(x[:599], x[1:600], washout=100)
    torch.testing.assert_close(fast.readout.weight, ref.readout.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        fast.predict(x[599:799], fast.last_state), ref.predict(x[599:799], ref.last_state)
    )


def test_mackey_glass_one_step_float32_is_close():
    x = mackey_glass(1000)
    esn = EchoStateNetwork(
        100, spectral_radius=1.25, leak_rate=0.3, ridge=1e-5, dtype=torch.float32
    )
    esn.fit(x[:799], x[1:800], washout=100)
    assert nrmse(esn.predict(x[799:999], esn.last_state), x[800:1000]) < 0.02


def test_errors():
    esn = EchoStateNetwork(10)
    u = torch.zeros(20, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="call fit\\(\\) first"):
        esn.generate(5)
    with pytest.raises(ValueError, match="washout=20 leaves no training steps"):
        esn.fit(u, u, washout=20)
    with pytest.raises(ValueError, match="add a feature dimension"):
        esn.fit(torch.zeros(20), torch.zeros(20))
    with pytest.raises(ValueError, match="must have the same time and batch sizes"):
        esn.fit(u, u[:10])
    with pytest.raises(ValueError, match="contains NaN or inf \\(first at step 3\\)"):
        bad = u.clone()
        bad[3] = float("nan")
        esn.fit(bad, u)
    esn = EchoStateNetwork(10).fit(torch.zeros(20, 2, dtype=torch.float64), u)
    with pytest.raises(ValueError, match="expected inputs with 2 features, got 1"):
        esn.predict(u)
    with pytest.raises(ValueError, match="pass inputs=\\(steps, B, I\\)"):
        esn.generate(3)
    with pytest.raises(ValueError, match="readout must be one of"):
        EchoStateNetwork(10, readout="lasso")
    with pytest.raises(ValueError, match="readout='force' needs feedback=True"):
        EchoStateNetwork(10, readout="force")
    with pytest.raises(ValueError, match="input_size=0 needs feedback=True"):
        EchoStateNetwork(10).fit(None, u)
    with pytest.raises(ValueError, match="leak_rate must be in"):
        EchoStateNetwork(10, leak_rate=2.0)
    with pytest.raises(ValueError, match="give both input_size and output_size"):
        EchoStateNetwork(10, input_size=1)
    with pytest.raises(ValueError, match="units must be >= 1"):
        EchoStateNetwork(0)


@pytest.mark.parametrize("readout", ["ridge", "rls"])
def test_a_list_of_sequences_of_any_lengths(readout):
    """reservoirpy's way of giving several sequences, a list of arrays (any lengths): each
    starts from the zero state, the readout learns from all of them. Of equal lengths, the
    same fit as the batch (T, B, F); of unequal lengths, the same as streaming each sequence
    from zeros into the ridge sums; predict returns a list."""
    u = sine(120, B=2)
    y = torch.roll(u, -1, 0)
    as_list = EchoStateNetwork(30, seed=0, readout=readout).fit(
        [u[:, 0].numpy(), u[:, 1]], [y[:, 0].numpy(), y[:, 1]], washout=10
    )
    batch = EchoStateNetwork(30, seed=0, readout=readout).fit(u, y, washout=10)
    if readout == "ridge":
        torch.testing.assert_close(as_list.readout.weight, batch.readout.weight)
    lengths = (120, 70)
    seqs_u = [u[:n, k] for k, n in enumerate(lengths)]
    seqs_y = [y[:n, k] for k, n in enumerate(lengths)]
    if readout == "ridge":
        fitted = EchoStateNetwork(30, seed=0).fit(seqs_u, seqs_y, washout=10)
        streamed = EchoStateNetwork(30, seed=0, input_size=1, output_size=1)
        for a, b in zip(seqs_u, seqs_y):
            streamed.partial_fit(a, b, washout=10)
        streamed.solve()
        torch.testing.assert_close(fitted.readout.weight, streamed.readout.weight)
        outs = fitted.predict(seqs_u)
        assert isinstance(outs, list) and [o.shape for o in outs] == [(120, 1), (70, 1)]
        for o, a in zip(outs, seqs_u):
            torch.testing.assert_close(o, fitted.predict(a))
    with pytest.raises(TypeError, match="inputs and targets must both be lists of sequences"):
        batch.fit(seqs_u, y[:, 0])
    with pytest.raises(ValueError, match=r"as many inputs as targets sequences \(1\), got 2"):
        batch.fit(seqs_u, seqs_y[:1])
    with pytest.raises(ValueError, match="state is for one sequence"):
        batch.predict(seqs_u, batch.last_state)


def test_mismatched_array_like_inputs_and_targets_raise_value_error():
    # inputs and targets may be any array-like; the size mismatch message read `.shape` from
    # them, so nested lists raised AttributeError instead of the ValueError
    esn = EchoStateNetwork(10)
    with pytest.raises(ValueError, match=r"same time and batch sizes, got \(3, 1\) and \(2, 1\)"):
        esn.fit([[0.1], [0.2], [0.3]], [[0.1], [0.2]])
    with pytest.raises(ValueError, match=r"got \(3, 1\) and \(2, 1\)"):
        esn.fit(np.zeros((3, 1)), np.zeros((2, 1)))


def test_a_failed_build_leaves_the_network_unbuilt():
    # rls_alpha is checked by the readout when the first fit builds the network: the error
    # must not leave a reservoir without a readout (the next fit raised AttributeError)
    esn = EchoStateNetwork(10, readout="rls", rls_alpha=-1.0)
    u = torch.zeros(20, 1, dtype=torch.float64)
    for _ in range(2):
        with pytest.raises(ValueError, match="alpha must be a float > 0"):
            esn.fit(u, u)
        assert not esn.is_built and esn.readout is None
