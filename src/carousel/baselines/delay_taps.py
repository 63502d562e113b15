"""The memoryless model of lecture 7a: a feed-forward net on a fixed window of delay taps."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._checks import check_floating, check_positive_int, check_shape

__all__ = ["DelayTapNet", "delay_taps"]


def delay_taps(x: Tensor, window: int) -> Tensor:
    r"""The last ``window`` inputs at every step, zero before the sequence start.

    Args:
        x: ``(T, B, I)``.
        window: number of taps ``W`` (the current input and ``W - 1`` delayed ones).

    Returns:
        ``(T, B, W*I)``: at step ``t`` the concatenation ``[x_t, x_{t-1}, ..., x_{t-W+1}]``.

    Example:
        >>> import torch
        >>> x = torch.arange(3.0).view(3, 1, 1)
        >>> delay_taps(x, 2)[:, 0].tolist()
        [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]]
    """
    T, B, I = x.shape
    padded = F.pad(x, (0, 0, 0, 0, window - 1, 0))  # (T + W - 1, B, I)
    taps = padded.unfold(0, window, 1)  # (T, B, I, W), oldest tap first
    return taps.flip(-1).transpose(-1, -2).reshape(T, B, window * I)


class DelayTapNet(nn.Module):
    r"""A feed-forward net that sees only the last ``window`` inputs (lecture 7a's memoryless
    model, "autoregressive models with delay taps" generalised by a hidden layer).

    .. math::

        y_t = W_2 \tanh(W_1 [x_t, x_{t-1}, \dots, x_{t-W+1}] + b_1) + b_2

    It cannot use anything older than ``window - 1`` steps, so on a long-lag task it fails as
    soon as the relevant inputs lie further back: the point of lecture 7a.

    Args:
        input_size: ``I``.
        output_size: ``O``.
        window: number of delay taps ``W``.
        hidden_size: width of the hidden layer.
        num_layers: number of hidden layers.
        device, dtype: where and in what type to create the weights.

    Shape:
        - input ``(T, B, I)``; output ``(T, B, O)``.

    Example:
        >>> import torch
        >>> net = DelayTapNet(2, 1, window=5, hidden_size=16)
        >>> tuple(net(torch.randn(7, 3, 2)).shape)
        (7, 3, 1)
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        window: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = "DelayTapNet"
        self.input_size = check_positive_int(owner, "input_size", input_size)
        self.output_size = check_positive_int(owner, "output_size", output_size)
        self.window = check_positive_int(owner, "window", window)
        self.hidden_size = check_positive_int(owner, "hidden_size", hidden_size)
        check_positive_int(owner, "num_layers", num_layers)
        layers: list[nn.Module] = []
        width = window * input_size
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size, device=device, dtype=dtype), nn.Tanh()]
            width = hidden_size
        layers.append(nn.Linear(width, output_size, device=device, dtype=dtype))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs at every step from the last ``window`` inputs.

        Args:
            x: ``(T, B, I)``.

        Returns:
            ``(T, B, O)``.

        Raises:
            ValueError: if ``x`` is not ``(T, B, input_size)``.
        """
        check_shape("DelayTapNet", "input", x, (None, None, self.input_size), ("T", "B"))
        first = cast(nn.Linear, self.net[0])  # __init__ puts a Linear first
        check_floating("DelayTapNet", "input", x, first.weight.dtype)
        return self.net(delay_taps(x, self.window))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.output_size}, window={self.window}"
