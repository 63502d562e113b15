"""Shared pieces of the analysis tests: a linear cell with known gradients and dynamics."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny sequential ops, which one intra-op thread runs fastest (and
    without stalls on a busy machine); the previous setting is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LinearCell(nn.Module):
    """``h_t = W h_{t-1} + U x_t``: a linear RNN following carousel's cell contract."""

    def __init__(self, weight: torch.Tensor, input_size: int = 1) -> None:
        super().__init__()
        H = weight.shape[0]
        self.input_size, self.hidden_size = input_size, H
        self.weight = nn.Parameter(weight.clone())
        self.weight_in = nn.Parameter(torch.ones(H, input_size, dtype=weight.dtype))

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden_size, device=device,
                           dtype=dtype or self.weight.dtype)  # fmt: skip

    def forward(self, x, h):
        h = h @ self.weight.T + x @ self.weight_in.T
        return h, h


@pytest.fixture
def linear_cell():
    return LinearCell
