"""Pascanu et al. 2013's vanishing-gradient regulariser against an explicit-Jacobian oracle."""

import pytest
import torch

from carousel.models import ModelConfig, ModelOutput, SequenceModel
from carousel.train import vanishing_gradient_penalty


def tiny(cell="rnn", **kw):
    torch.manual_seed(0)
    return SequenceModel(2, 1, ModelConfig(cell=cell, hidden_size=3, **kw), dtype=torch.float64)


def mse(target):
    return lambda out: ((out.output - target) ** 2).mean()


def test_omega_and_its_immediate_gradient_match_explicit_jacobians():
    model = tiny()
    T, B = 5, 2
    x = torch.randn(T, B, 2, dtype=torch.float64)
    y = torch.randn(T, B, 1, dtype=torch.float64)
    res = vanishing_gradient_penalty(model, x, mse(y))
    # oracle: unroll h_k = tanh(W_ih x_k + b + W_hh h_{k-1}), back-propagate with explicit J_k
    r = model.rnn
    W, U = r.weight_hh_l0, r.weight_ih_l0
    b = r.bias_ih_l0 + r.bias_hh_l0
    hs = [torch.zeros(B, 3, dtype=torch.float64)]
    for k in range(T):
        hs.append(torch.tanh(x[k] @ U.T + b + hs[-1] @ W.T))
    H = torch.stack(hs[1:]).detach().requires_grad_()
    direct = torch.autograd.grad(mse(y)(ModelOutput(model.head(H))), H)[0]  # dE/dh_k direct
    g = [None] * (T + 1)  # g[k] = dE/dh_k (total), k = 1..T
    J = [None] * (T + 1)  # J[k] = dh_k/dh_{k-1}, (B, H, H)
    for k in range(1, T + 1):
        J[k] = (1 - hs[k].detach() ** 2).unsqueeze(-1) * W.detach()
    g[T] = direct[T - 1]
    for k in range(T - 1, 0, -1):
        g[k] = direct[k - 1] + torch.einsum("bi,bij->bj", g[k + 1], J[k + 1])
    terms = []
    for k in range(1, T + 1):  # transitions h_{k-1} -> h_k
        u = torch.einsum("bi,bij->bj", g[k], J[k])
        terms.append((u.norm(dim=-1) / g[k].norm(dim=-1) - 1) ** 2)
    omega = torch.stack(terms).mean()
    torch.testing.assert_close(res.penalty, omega)
    torch.testing.assert_close(res.loss, mse(y)(model(x)))
    # dOmega/dW_hh with g and h_{k-1} held constant (Pascanu et al., eq. 10)
    terms = []
    for k in range(1, T + 1):
        pre = x[k - 1] @ U.T + b + hs[k - 1].detach() @ W.T
        Jk = (1 - torch.tanh(pre) ** 2).unsqueeze(-1) * W
        u = torch.einsum("bi,bij->bj", g[k].detach(), Jk)
        terms.append((u.norm(dim=-1) / g[k].detach().norm(dim=-1) - 1) ** 2)
    want = torch.autograd.grad(torch.stack(terms).mean(), W)[0]
    got = torch.autograd.grad(res.penalty, r.weight_hh_l0)[0]
    torch.testing.assert_close(got, want)


def test_loss_and_its_gradient_equal_the_plain_model():
    model = tiny("lstm", num_layers=2)
    x = torch.randn(6, 3, 2, dtype=torch.float64)
    y = torch.randn(6, 3, 1, dtype=torch.float64)
    res = vanishing_gradient_penalty(model, x, mse(y))
    params = list(model.parameters())
    got = torch.autograd.grad(res.loss, params)
    want = torch.autograd.grad(mse(y)(model(x)), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert res.penalty.item() > 0 and len(res.states) == 6
    assert res.states[-1].h.shape == (2, 3, 3)  # state after each step, fields (L, B, H)


def test_lengths_leave_padding_out():
    model = tiny("gru")
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    y = torch.zeros(5, 2, 1, dtype=torch.float64)
    lengths = torch.tensor([5, 2])
    res = vanishing_gradient_penalty(model, x, mse(y), lengths=lengths)
    short = vanishing_gradient_penalty(model, x[:2, 1:], mse(y[:2, 1:]))
    assert torch.isfinite(res.penalty) and torch.isfinite(short.penalty)
    torch.testing.assert_close(res.output.state[:, 1], short.output.state[:, 0])


def test_errors():
    with pytest.raises(ValueError, match="unidirectional"):
        vanishing_gradient_penalty(
            tiny(bidirectional=True), torch.randn(3, 1, 2, dtype=torch.float64), mse(0)
        )
    with pytest.raises(TypeError, match=r"needs a carousel\.models\.SequenceModel"):
        vanishing_gradient_penalty(torch.nn.Linear(2, 2), torch.randn(3, 1, 2), mse(0))
