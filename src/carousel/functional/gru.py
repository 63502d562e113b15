"""One time step of the GRU: torch.nn's formulation and Cho et al. 2014's original."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gru_step"]


def gru_step(
    x: Tensor,
    h_prev: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    reset_after: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""One GRU step (gate rows ``r, z, n`` as in torch.nn).

    .. math::

        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
               \quad\text{(reset\_after=True, torch.nn, cuDNN)} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
               \quad\text{(reset\_after=False, Cho et al. 2014, eq. 8)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Args:
        x: input ``(B, I)``.
        h_prev: ``(B, H)``.
        weight_ih: ``(3H, I)``; weight_hh: ``(3H, H)``; biases ``(3H,)`` or ``None``.
        reset_after: where the reset gate acts (see above).

    Returns:
        ``(h_t, gates)`` with ``gates = {"r", "z", "n"}``, each ``(B, H)``.
    """
    H = h_prev.shape[-1]
    gx = F.linear(x, weight_ih, bias_ih)
    x_r, x_z, x_n = gx.split(H, dim=-1)
    if reset_after:
        gh = F.linear(h_prev, weight_hh, bias_hh)
        h_r, h_z, h_n = gh.split(H, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        w_rz, w_n = weight_hh.split([2 * H, H], dim=0)
        b_rz, b_n = (None, None) if bias_hh is None else bias_hh.split([2 * H, H])
        h_r, h_z = F.linear(h_prev, w_rz, b_rz).split(H, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + F.linear(r * h_prev, w_n, b_n))
    if n.dtype != h_prev.dtype:  # under autocast the products are in its lower precision:
        n, z = n.to(h_prev.dtype), z.to(h_prev.dtype)  # the state keeps its own, as the LSTM's
    h = torch.lerp(n, h_prev, z)  # (1 - z) * n + z * h_prev, one op (cheap under torch.func)
    return h, {"r": r, "z": z, "n": n}
