"""Gauss-Newton products against the explicit J^T H J v in float64, matching losses, and the
diagonal estimate."""

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

import carousel
from carousel.optim import (
    MATCHING_LOSSES,
    GaussNewton,
    loss_hessian_vector_product,
    matching_loss,
    model_function,
    sample_loss_hessian_factor,
)

D = torch.float64
T, B, I, H = 5, 3, 2, 4


class Net(nn.Module):
    """A recurrent layer and a linear readout; outputs at every step or at the last one."""

    def __init__(self, layer: nn.Module, out: int, last: bool) -> None:
        super().__init__()
        self.rnn = layer
        self.out = nn.Linear(layer.hidden_size, out, dtype=D)
        self.last = last

    def forward(self, x):
        h, _ = self.rnn(x)
        z = self.out(h)  # (T, B, O)
        return z[-1] if self.last else z


def _targets(loss, z, gen):
    if loss == "cross_entropy":
        return torch.randint(0, z.shape[-1], z.shape[:-1], generator=gen)
    if loss == "mse":
        return torch.randn(z.shape, generator=gen, dtype=D)
    return torch.rand(z.shape, generator=gen, dtype=D)


def _explicit(model, x, loss, mu_lambda, weight_decay):
    """G = J^T H J + (w_S / N) J_S^T J_S + w_d I, from dense Jacobians and Hessians."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            out[n] = v[i : i + k].view(s)
            i += k
        return out

    def z_of(v):
        return functional_call(model, unflat(v), (x,))

    def h_of(v):
        return functional_call(model.rnn, {n[4:]: t for n, t in unflat(v).items()
                                           if n.startswith("rnn.")}, (x,))[0]  # fmt: skip

    z0 = z_of(theta).detach()
    J = jacobian(lambda v: z_of(v).reshape(-1), theta)  # (N*O, P)
    y = _targets(loss, z0, torch.Generator().manual_seed(3))
    HL = hessian(lambda z: matching_loss(loss, z.view_as(z0), y), z0.reshape(-1))  # independent
    G = J.T @ HL @ J
    if mu_lambda:
        Js = jacobian(lambda v: h_of(v).reshape(-1), theta)
        N = z0.numel() // z0.shape[-1]
        G = G + mu_lambda / N * Js.T @ Js
    return G + weight_decay * torch.eye(len(theta), dtype=D)


LAYERS = {
    "rnn": lambda: carousel.RNN(I, H, dtype=D, impl="reference"),
    "lstm": lambda: carousel.LSTM(I, H, dtype=D, impl="reference"),
    "gru": lambda: carousel.GRU(I, H, dtype=D, impl="reference"),
}


@pytest.mark.parametrize("loss", MATCHING_LOSSES)
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("last", [True, False])
def test_gauss_newton_product_equals_explicit(loss, layer, last):
    model = Net(LAYERS[layer](), 3, last)
    x = torch.randn(T, B, I, dtype=D)
    structural = 0.3 if layer == "rnn" else 0.0
    fn = model_function(model, (x,), {}, [model.rnn] if structural else [])
    gn = GaussNewton(fn, dict(model.named_parameters()), loss=loss, damping=0.7,
                     structural_weight=structural, weight_decay=0.05)  # fmt: skip
    G = _explicit(model, x, loss, structural, 0.05)
    for _ in range(2):
        v = torch.randn(gn.numel, dtype=D)
        torch.testing.assert_close(gn.gauss_newton_product(v), G @ v, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(gn(v), G @ v + 0.7 * v, rtol=1e-9, atol=1e-11)
    # the undamped quadratic form leaves out the structural term
    v = torch.randn(gn.numel, dtype=D)
    G0 = _explicit(model, x, loss, 0.0, 0.05)
    assert gn.quadratic_form(v) == pytest.approx(float(v @ G0 @ v), rel=1e-9)


@pytest.mark.parametrize("loss", MATCHING_LOSSES)
def test_loss_hessian_product_matches_autograd_hessian(loss):
    z = torch.randn(4, 3, dtype=D)
    y = _targets(loss, z, torch.Generator().manual_seed(0))
    Hz = hessian(lambda t: matching_loss(loss, t.view_as(z), y), z.reshape(-1))
    u = torch.randn_like(z)
    got = loss_hessian_vector_product(loss, z, u)
    torch.testing.assert_close(got.reshape(-1), Hz @ u.reshape(-1))


@pytest.mark.parametrize("loss", MATCHING_LOSSES)
def test_hessian_factor_has_the_right_second_moment(loss):
    z = torch.randn(1, 3, dtype=D).expand(20000, 3).contiguous()
    e = sample_loss_hessian_factor(loss, z, torch.Generator().manual_seed(0))
    second = e.T @ e / z.shape[0]  # (3, 3) ~ N * H per row
    exact = loss_hessian_vector_product(loss, z[:1], torch.eye(3, dtype=D)) * (
        1 if loss == "cross_entropy" else 3
    )  # N*H for one row: cross-entropy normalises by rows, the others by elements
    torch.testing.assert_close(second, exact.T, atol=0.03, rtol=0.05)


def test_matching_loss_equals_torch_losses():
    z = torch.randn(2, 5, 3, dtype=D)
    idx = torch.randint(0, 3, (2, 5))
    assert matching_loss("cross_entropy", z, idx) == pytest.approx(
        float(nn.functional.cross_entropy(z.reshape(-1, 3), idx.reshape(-1)))
    )
    probs = torch.softmax(torch.randn(2, 5, 3, dtype=D), -1)
    assert matching_loss("cross_entropy", z, probs) == pytest.approx(
        float(nn.functional.cross_entropy(z.reshape(-1, 3), probs.reshape(-1, 3)))
    )
    y = torch.rand(2, 5, 3, dtype=D)
    assert matching_loss("mse", z, y) == pytest.approx(float(nn.functional.mse_loss(z, y)))
    assert matching_loss("binary_cross_entropy", z, y) == pytest.approx(
        float(nn.functional.binary_cross_entropy_with_logits(z, y))
    )


def test_diagonal_estimate_is_unbiased():
    model = Net(LAYERS["rnn"](), 3, last=False)
    x = torch.randn(T, B, I, dtype=D)
    fn = model_function(model, (x,), {}, [model.rnn])
    gn = GaussNewton(fn, dict(model.named_parameters()), loss="cross_entropy",
                     structural_weight=0.2, weight_decay=0.01)  # fmt: skip
    exact = torch.diagonal(_explicit(model, x, "cross_entropy", 0.2, 0.01))
    est = gn.diagonal_estimate(torch.Generator().manual_seed(0), samples=3000)
    assert bool((est >= 0).all())
    rel = float((est - exact).norm() / exact.norm())
    assert rel < 0.1, rel


def test_structural_modules_capture_every_call_and_errors():
    model = Net(LAYERS["rnn"](), 2, last=True)
    x = torch.randn(T, B, I, dtype=D)
    params = dict(model.named_parameters())
    out, hidden = model_function(model, (x,), {}, [model.rnn])(params)
    assert out.shape == (B, 2) and len(hidden) == 1 and hidden[0].shape == (T, B, H)
    # a module that is never called
    unused = nn.Linear(2, 2)
    model.extra = unused
    with pytest.raises(ValueError, match="none of the structural_modules ran"):
        model_function(model, (x,), {}, [unused])(params)
    # outputs that do not fit the loss
    fn = model_function(model, (x,), {}, [])
    with pytest.raises(ValueError, match="at least 2 classes"):
        GaussNewton(lambda p: (fn(p)[0][:, :1], ()), params, loss="cross_entropy")
    with pytest.raises(ValueError, match="at least 2 dims"):
        GaussNewton(lambda p: (fn(p)[0][:, 0], ()), params, loss="mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        GaussNewton(fn, params, loss="hinge")
