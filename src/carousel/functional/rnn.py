"""One time step of the Elman RNN (tanh or ReLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NONLINEARITIES", "rnn_step"]

NONLINEARITIES = ("tanh", "relu")


def rnn_step(
    x: Tensor,
    h_prev: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""One Elman RNN step (Elman 1990), as torch.nn.RNN.

    .. math::

        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
        \qquad \phi \in \{\tanh, \mathrm{ReLU}\}

    Args:
        x: input ``(B, I)``.
        h_prev: ``(B, H)``.
        weight_ih: ``(H, I)``; weight_hh: ``(H, H)``; biases ``(H,)`` or ``None``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``h_t`` of shape ``(B, H)``.
    """
    a = F.linear(x, weight_ih, bias_ih) + F.linear(h_prev, weight_hh, bias_hh)
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
