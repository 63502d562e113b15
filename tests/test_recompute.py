"""carousel._recompute: a once-written backward made twice-differentiable by recomputation."""

import pytest
import torch

from carousel._recompute import keep_for_recompute, twice_differentiable

D = torch.float64


def _cube(x, w):
    return ((x * w) ** 3,)  # the reference: plain autograd


class Cube(torch.autograd.Function):
    """(x w)^3 with a hand-written backward that is not itself differentiable."""

    @staticmethod
    def forward(ctx, x, w, recompute=None):
        keep_for_recompute(ctx, recompute, x, w)
        ctx.save_for_backward(x, w)
        return (x * w) ** 3

    @staticmethod
    @twice_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        d = 3 * (x * w) ** 2 * g
        return d * w, (d * x).sum().reshape(w.shape)


def test_second_derivatives_equal_autograds_and_gradgradcheck_holds():
    x = torch.randn(5, dtype=D, requires_grad=True)
    w = torch.randn(1, dtype=D, requires_grad=True)

    def penalty(f):
        (gx,) = torch.autograd.grad(f(x, w).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, w])

    got = penalty(lambda x, w: Cube.apply(x, w, _cube))
    ref = penalty(lambda x, w: _cube(x, w)[0])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradgradcheck(lambda x, w: Cube.apply(x, w, _cube), (x, w))


def test_first_derivatives_run_the_hand_written_backward():
    calls = []

    def counting(x, w):
        calls.append(1)
        return _cube(x, w)

    x = torch.randn(5, dtype=D, requires_grad=True)
    Cube.apply(x, torch.ones(1, dtype=D), counting).sum().backward()
    assert calls == []  # no recomputation for a first derivative
    torch.testing.assert_close(x.grad, 3 * x.detach() ** 2)


def test_without_recompute_it_is_once_differentiable():
    x = torch.randn(5, dtype=D, requires_grad=True)
    y = Cube.apply(x, torch.ones(1, dtype=D))
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_an_input_changed_in_place_is_an_error():
    x = torch.randn(5, dtype=D, requires_grad=True)
    w = torch.randn(1, dtype=D)
    y = Cube.apply(x * 1, w, _cube)
    with torch.no_grad():
        w.mul_(2)  # after the forward pass, before the double backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
