"""Baselines of lecture 7a: the delay-tap net, and the HMM and LDS from hmmlearn and pykalman
checked against the libraries' own likelihoods and filters."""

import math

import numpy as np
import pytest
import torch

from carousel.baselines import DelayTapNet, delay_taps
from carousel.tasks.longlag import BitMemorisation


def test_delay_taps_layout():
    x = torch.arange(8.0).view(4, 1, 2)  # x_t = [2t, 2t + 1]
    taps = delay_taps(x, 3)
    assert taps.shape == (4, 1, 6)
    assert taps[0, 0].tolist() == [0, 1, 0, 0, 0, 0]
    assert taps[3, 0].tolist() == [6, 7, 4, 5, 2, 3]  # newest first


def test_delay_tap_net_is_memoryless_beyond_its_window():
    net = DelayTapNet(2, 3, window=4, hidden_size=8)
    x = torch.randn(10, 5, 2)
    y = net(x)
    assert y.shape == (10, 5, 3)
    x2 = x.clone()
    x2[:5] = torch.randn(5, 5, 2)  # change everything older than 4 steps before t = 9
    y2 = net(x2)
    assert torch.allclose(y[8:], y2[8:])
    assert not torch.allclose(y[5], y2[5])


def test_delay_tap_net_errors():
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        DelayTapNet(2, 1, window=0)
    net = DelayTapNet(2, 1, window=3)
    with pytest.raises(ValueError, match=r"expected input of shape \(T, B, 2\), got \(4, 1, 3\)"):
        net(torch.zeros(4, 1, 3))


@pytest.fixture
def memorisation_tokens():
    return BitMemorisation(num_bits=2, T=1).tokens(200, torch.Generator().manual_seed(0))


def test_hmm_forward_pass_matches_hmmlearn(memorisation_tokens):
    pytest.importorskip("hmmlearn")
    from carousel.baselines import HMMBaseline

    hmm = HMMBaseline(3, 3, restarts=1, n_iter=20).fit(memorisation_tokens)
    tokens = memorisation_tokens[:, :6]
    ours = hmm.log_likelihood(tokens)
    ref = [hmm.model.score(tokens[:, b].numpy().reshape(-1, 1)) for b in range(6)]
    assert torch.allclose(ours, torch.tensor(ref, dtype=torch.float64), atol=1e-9)
    p = hmm.predictive(tokens)
    assert torch.allclose(p.sum(-1), torch.ones(5, 6, dtype=torch.float64))


def test_hmm_errors(memorisation_tokens):
    pytest.importorskip("hmmlearn")
    from carousel.baselines import HMMBaseline

    hmm = HMMBaseline(2, 3)
    with pytest.raises(RuntimeError, match="call fit"):
        hmm.predictive(memorisation_tokens)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 2\], got values in \[0, 5\]"):
        hmm.fit(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match=r"expected tokens as an int tensor of shape \(T, B\)"):
        hmm.fit(torch.zeros(3, 2))


def test_lds_filter_matches_pykalman(memorisation_tokens):
    pytest.importorskip("pykalman")
    from carousel.baselines import LDSBaseline

    obs = torch.randn(6, 40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lds = LDSBaseline(3, n_iter=2).fit(obs)
    mean, cov = lds.predictive(obs[:, :3])
    kf = lds.model
    for b in range(3):
        fm, fP = kf.filter(obs[:, b].numpy())
        A, off = kf.transition_matrices, kf.transition_offsets
        C, d = kf.observation_matrices, kf.observation_offsets
        z = [kf.initial_state_mean] + [A @ fm[t - 1] + off for t in range(1, 6)]
        P = [kf.initial_state_covariance] + [
            A @ fP[t - 1] @ A.T + kf.transition_covariance for t in range(1, 6)
        ]
        want_mean = np.stack([C @ zt + d for zt in z])
        want_cov = np.stack([C @ Pt @ C.T + kf.observation_covariance for Pt in P])
        np.testing.assert_allclose(mean[:, b].numpy(), want_mean, atol=1e-9)
        np.testing.assert_allclose(cov.numpy(), want_cov, atol=1e-9)


def test_hmm_capacity_at_most_log2_states_while_an_rnn_recalls():
    """Lecture 7a at tiny size: 2 bits to recall; a 2-state HMM keeps at most 1 bit (it is a
    theorem, checked here on a fitted model), a 4-unit tanh RNN keeps both."""
    pytest.importorskip("hmmlearn")
    from carousel.study.capacity import capacity_study

    res = capacity_study(
        bits=(2,), states=(2,), rnn_units=4, lds_size=None, train_sequences=300,
        test_sequences=500, restarts=2, rnn_max_sequences=40_000,
    )  # fmt: skip
    hmm = next(r for r in res.rows if r.model == "hmm")
    rnn = next(r for r in res.rows if r.model == "rnn")
    assert hmm.remembered <= math.log2(2) + 0.02
    assert hmm.recall_accuracy < 0.6
    assert rnn.remembered > 1.5 and rnn.recall_accuracy == 1.0
    assert "HMM, 2 states" in res.markdown


def test_unused_hmm_state_is_repaired_without_changing_likelihoods():
    pytest.importorskip("hmmlearn")
    from hmmlearn.hmm import CategoricalHMM

    from carousel.baselines.hidden_state import _repair_unused_states

    m = CategoricalHMM(n_components=3, n_features=2)
    m.startprob_ = np.array([1.0, 0.0, 0.0])
    m.transmat_ = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    m.emissionprob_ = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 0.0]])
    X = np.array([[0], [1], [1], [0]])
    with pytest.raises(ValueError, match="must sum to 1"):
        m.score(X)
    _repair_unused_states(m)
    ref = np.log(0.9) + np.log(0.5 * 0.1 + 0.5 * 0.8)  # forward pass by hand, first 2 steps
    assert m.score(X[:2]) == pytest.approx(ref)
