"""Elman RNN cell (tanh or ReLU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carousel._checks import check_choice, check_positive_int
from carousel.cells.base import RecurrentCell
from carousel.functional.rnn import NONLINEARITIES, rnn_step

if TYPE_CHECKING:
    from carousel._types import FactoryKwargs

__all__ = ["RNNCell"]


class RNNCell(RecurrentCell):
    r"""Elman RNN cell (Elman 1990), parameters as ``torch.nn.RNNCell``.

    .. math::

        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        bias: whether to use ``bias_ih`` and ``bias_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"`` (IRNN, Le et al. 2015, with identity init).

    Shape:
        - x: ``(B, I)``; state: ``(B, H)``; output: ``(B, H)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("RNNCell", "input_size", input_size)
        self.hidden_size = check_positive_int("RNNCell", "hidden_size", hidden_size)
        self.nonlinearity = check_choice("RNNCell", "nonlinearity", nonlinearity, NONLINEARITIES)
        self.bias = bool(bias)
        kw: FactoryKwargs = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **kw))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def step_with_params(
        self, params: dict, x: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, dict]:
        h = rnn_step(
            x,
            state,
            params["weight_ih"],
            params["weight_hh"],
            params.get("bias_ih"),
            params.get("bias_hh"),
            nonlinearity=self.nonlinearity,
        )
        return h, h, {}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"
