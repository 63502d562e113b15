"""GRU cell: torch.nn's formulation and Cho et al. 2014's original."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carousel._checks import check_positive_int
from carousel.cells.base import RecurrentCell
from carousel.functional.gru import gru_step

if TYPE_CHECKING:
    from carousel._types import FactoryKwargs

__all__ = ["GRUCell"]


class GRUCell(RecurrentCell):
    r"""Gated recurrent unit (Cho et al. 2014), parameters as ``torch.nn.GRUCell``.

    .. math::

        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    With ``reset_after=False`` the reset gate acts before the recurrent matrix, as in Cho et
    al.'s paper (eq. 8): ``n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)``.
    torch.nn and cuDNN use ``reset_after=True`` (the name is Keras').

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        bias: whether to use ``bias_ih`` and ``bias_hh``.
        reset_after: see above.

    Shape:
        - x: ``(B, I)``; state: ``(B, H)``; output: ``(B, H)``. Gates ``r, z, n``.
    """

    gate_names = ("r", "z", "n")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("GRUCell", "input_size", input_size)
        self.hidden_size = check_positive_int("GRUCell", "hidden_size", hidden_size)
        self.bias = bool(bias)
        self.reset_after = bool(reset_after)
        kw: FactoryKwargs = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size, **kw))
            self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def step_with_params(
        self, params: dict, x: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, dict]:
        h, gates = gru_step(
            x,
            state,
            params["weight_ih"],
            params["weight_hh"],
            params.get("bias_ih"),
            params.get("bias_hh"),
            reset_after=self.reset_after,
        )
        return h, h, gates

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, reset_after={self.reset_after}"
