"""Token streams batched for truncated backpropagation through time, char-rnn style.

A stream of ``N`` tokens is cut into ``B`` contiguous rows of equal length; batch ``k`` holds
columns ``[k*T, (k+1)*T)`` of every row. So row ``b`` of batch ``k+1`` continues row ``b`` of
batch ``k`` exactly, and the recurrent state at the end of one batch is the right initial state
for the next (detached: gradients stop at the batch boundary; Williams & Peng 1990's truncated
BPTT with ``k1 = k2 = T``). This is the layout of Karpathy's char-rnn and of the PyTorch
word-language-model example.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = ["StreamBatch", "StreamBatches", "stream_rows"]


class StreamBatch(NamedTuple):
    """One batch of a stream.

    Attributes:
        inputs: ``(T, B)`` token ids.
        targets: ``(T, B)`` the next token of each input.
        index: the batch's position in the epoch (0 is the first: start from a fresh state).
    """

    inputs: Tensor
    targets: Tensor
    # typeshed types tuple.index as a method; a NamedTuple field of that name is legal and is
    # what ``batch.index`` reads at runtime (a public name, kept)
    index: int  # type: ignore[assignment]


def stream_rows(ids: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Lay a token stream out as ``batch_size`` contiguous rows of inputs and targets.

    Row ``b`` holds inputs ``ids[b*L : (b+1)*L]`` and targets ``ids[b*L+1 : (b+1)*L+1]`` with
    ``L = (N - 1) // batch_size``; the last ``N - 1 - batch_size*L`` targets are dropped.

    Args:
        ids: ``(N,)`` token ids.
        batch_size: ``B``, the number of rows.

    Returns:
        ``(inputs, targets)``, each ``(B, L)``.

    Raises:
        ValueError: if the stream is too short for one token per row.

    Example:
        >>> x, y = stream_rows(torch.arange(11), 2)
        >>> x.tolist(), y.tolist()
        ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    """
    check_positive_int("stream_rows", "batch_size", batch_size)
    if ids.dim() != 1:
        raise ValueError(f"stream_rows: expected ids of shape (N,), got {tuple(ids.shape)}")
    L = (ids.numel() - 1) // batch_size
    if L < 1:
        raise ValueError(
            f"stream_rows: a stream of {ids.numel()} tokens is too short for batch_size="
            f"{batch_size} (needs at least {batch_size + 1}); use a smaller batch size or "
            "more text"
        )
    n = batch_size * L
    return ids[:n].view(batch_size, L), ids[1 : n + 1].view(batch_size, L)


class StreamBatches:
    """The batches of one epoch over a token stream for truncated BPTT.

    Args:
        ids: ``(N,)`` token ids.
        batch_size: ``B``, parallel rows of the stream.
        tbptt_len: ``T``, time steps per batch (the truncation length). The last batch of an
            epoch is shorter when ``T`` does not divide the row length.
        device: where the batches are placed.

    Shape:
        - each batch: inputs and targets ``(T, B)`` (time first, as the layers take them).

    Example:
        >>> batches = StreamBatches(torch.arange(11), batch_size=2, tbptt_len=3)
        >>> len(batches), [b.inputs.T.tolist() for b in batches]
        (2, [[[0, 1, 2], [5, 6, 7]], [[3, 4], [8, 9]]])
    """

    def __init__(
        self,
        ids: Tensor,
        batch_size: int,
        tbptt_len: int,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        check_positive_int("StreamBatches", "batch_size", batch_size)
        self.tbptt_len = check_positive_int("StreamBatches", "tbptt_len", tbptt_len)
        inputs, targets = stream_rows(ids, batch_size)
        # time-major once, so every batch is a contiguous slice
        self.inputs = inputs.t().contiguous().to(device)  # (L, B)
        self.targets = targets.t().contiguous().to(device)  # (L, B)
        self.batch_size = batch_size

    @property
    def row_length(self) -> int:
        """``L``: tokens per row."""
        return self.inputs.shape[0]

    @property
    def num_tokens(self) -> int:
        """Targets per epoch: ``B * L``."""
        return self.inputs.numel()

    def __len__(self) -> int:
        return -(-self.row_length // self.tbptt_len)

    def __getitem__(self, k: int) -> StreamBatch:
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"StreamBatches: batch {k} out of range [0, {n})")
        k %= n
        s = slice(k * self.tbptt_len, (k + 1) * self.tbptt_len)
        return StreamBatch(self.inputs[s], self.targets[s], k)

    def __iter__(self) -> Iterator[StreamBatch]:
        for k in range(len(self)):
            yield self[k]
