"""What the training engine needs from a task: :class:`Batch` and :class:`Task`.

A task bundles seeded data, a model, a loss and metrics. The engine (:func:`carousel.train.train`)
never looks inside: it asks the task for batches (or stream chunks), runs the model through
:meth:`Task.forward`, backpropagates :meth:`Task.loss`, logs :meth:`Task.metrics` and calls
:meth:`Task.evaluate` on the task's held-out splits. A new task is a subclass registered with
:func:`carousel.tasks.register_task`; the loop needs no edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from carousel.models import ModelConfig, ModelOutput

__all__ = ["Batch", "NoOptions", "Task"]


@dataclass(frozen=True)
class Batch:
    """A batch of sequences, time-major (shape letters of STYLE.md).

    Attributes:
        inputs: ``(T, B, I)`` features, or ``(T, B)`` token ids.
        targets: ``(T, B, ...)`` per-step targets (``per_step=True``), or ``(B, ...)``
            per-sequence targets.
        mask: ``(T, B)`` bool, True where a per-step target is scored; ``None`` scores all.
        lengths: ``(B,)`` sequence lengths, or ``None`` if all have length ``T``.
        extras: more per-sequence tensors ``(B, ...)`` a task needs (e.g. target lengths).
        per_step: whether ``targets`` (and ``mask``) are time-major.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor | None = None
    lengths: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    per_step: bool = True

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.inputs.shape[1])

    @property
    def num_steps(self) -> int:
        """``T``."""
        return int(self.inputs.shape[0])

    @property
    def tokens(self) -> int:
        """Number of input steps in the batch (the sum of lengths), for tokens/s."""
        if self.lengths is not None:
            return int(self.lengths.sum())
        return self.num_steps * self.batch_size

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for every tensor in the batch."""
        for name in ("inputs", "targets", "mask", "lengths"):
            t = getattr(self, name)
            if t is not None:
                yield name, t
        for name, t in self.extras.items():
            yield f"extras[{name!r}]", t

    def _map(
        self, time_major: Callable[[Tensor], Tensor], per_sequence: Callable[[Tensor], Tensor]
    ) -> Batch:
        tm = time_major
        return dataclasses.replace(
            self,
            inputs=tm(self.inputs),
            targets=tm(self.targets) if self.per_step else per_sequence(self.targets),
            mask=None if self.mask is None else tm(self.mask),
            lengths=None if self.lengths is None else per_sequence(self.lengths),
            extras={k: per_sequence(v) for k, v in self.extras.items()},
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Batch:
        """Move every tensor to ``device``; floating-point ``inputs`` and ``targets`` also to
        ``dtype`` (integer tensors keep theirs)."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self._map(move, move)

    def select(self, index: slice | Tensor) -> Batch:
        """The sub-batch of the sequences at ``index`` (along ``B``)."""
        return self._map(lambda t: t[:, index], lambda t: t[index])

    def shard(self, rank: int, world_size: int) -> Batch:
        """This process's contiguous slice of the batch in data-parallel training.

        Raises:
            ValueError: if ``B`` is not a multiple of ``world_size``.
        """
        B = self.batch_size
        if B % world_size:
            raise ValueError(
                f"Batch.shard: batch size {B} is not divisible by the {world_size} processes; "
                f"choose train.batch_size as a multiple of {world_size}"
            )
        n = B // world_size
        return self.select(slice(rank * n, (rank + 1) * n))

    def time_slice(self, start: int, stop: int) -> Batch:
        """Steps ``start:stop`` of a per-step batch without lengths (a chunk of a stream).

        Raises:
            ValueError: for per-sequence targets or a batch with lengths.
        """
        if not self.per_step or self.lengths is not None:
            raise ValueError(
                "Batch.time_slice: needs per-step targets and no lengths (a stream chunk)"
            )
        return self._map(lambda t: t[start:stop], lambda t: t)

    @staticmethod
    def cat_time(first: Batch, second: Batch) -> Batch:
        """Concatenate two consecutive chunks of a stream along time."""
        return dataclasses.replace(
            second,
            inputs=torch.cat([first.inputs, second.inputs]),
            targets=torch.cat([first.targets, second.targets]),
            mask=None
            if first.mask is None and second.mask is None
            else torch.cat([_mask(first), _mask(second)]),
        )


def _mask(b: Batch) -> Tensor:
    if b.mask is not None:
        return b.mask
    return torch.ones(b.num_steps, b.batch_size, dtype=torch.bool, device=b.inputs.device)


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none (an empty ``[data]`` table)."""


class Task:
    """Base class of the tasks in the registry.

    Subclasses set the class attributes and implement :meth:`make_model`, :meth:`batch` and
    :meth:`loss`; :meth:`metrics`, :meth:`eval_batches` (or :meth:`evaluate`) and
    :meth:`stream` as they need.

    Attributes:
        name: the registered name (set by :func:`~carousel.tasks.register_task`).
        Config: frozen dataclass of the task's options, the ``[data]`` table of a config file.
        ModelConfig: the model configuration class (``[model]`` table).
        defaults: task-specific defaults for the other tables, e.g.
            ``{"model": {"cell": "rnn"}, "optim": {"lr": 0.01}, "train": {"steps": 1000}}``;
            a config file and ``--set`` override them.
        predating: for config keys added to carousel after runs of this task were made, where
            the key's default does not keep those runs' behaviour, the value that does, e.g.
            ``{"data": {"l2": 0.0}}``. A checkpoint without such a key is read with this
            value (:func:`carousel.train.fill_added_keys`); keys not listed are added
            with a default that keeps the earlier behaviour.
        eval_splits: the held-out splits :meth:`evaluate` knows, the first being the one
            evaluated during training.
        primary_metric: the metric shown in the progress bar and summaries.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    ModelConfig: ClassVar[type] = ModelConfig
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    predating: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    eval_splits: tuple[str, ...] = ("valid",)  # not a ClassVar: an instance may narrow it
    primary_metric: ClassVar[str] = "accuracy"
    #: the matching loss of :mod:`carousel.optim` (``"cross_entropy"``, ``"mse"``,
    #: ``"binary_cross_entropy"``) that equals :meth:`loss` on :meth:`curvature_outputs`, for
    #: the Hessian-free optimizer; ``None``: the task's loss has none (e.g. CTC).
    curvature_loss: str | None = None

    def __init__(self, config: Any = None) -> None:
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__}: config must be a {self.Config.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config: Any = config  # an instance of the subclass's Config

    # -------------------------------------------------------------- model and objective
    def make_model(
        self,
        config: Any,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """Build the model for this task from a :attr:`ModelConfig`; ``generator`` seeds its
        initialisation. The model's ``forward`` returns a :class:`~carousel.models.ModelOutput`
        (or override :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement make_model")

    def forward(self, model: nn.Module, batch: Batch, state: Any = None) -> ModelOutput:
        """Run ``model`` on ``batch`` from ``state`` (``None``: the model's initial state)."""
        return model(batch.inputs, state, lengths=batch.lengths)

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The scalar training loss: a mean over the batch, so that data-parallel gradient
        averaging equals one process on the combined batch."""
        raise NotImplementedError(f"{type(self).__name__} does not implement loss")

    def curvature_outputs(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The outputs :meth:`loss` scores, ``(N, O)`` or ``(..., O)``, such that
        :meth:`loss` equals :func:`carousel.optim.matching_loss` of :attr:`curvature_loss` on
        them (a mean over their positions). The Hessian-free optimizer takes its Gauss-Newton
        products through them; the selection must depend on ``batch`` only through constants
        (masks, lengths), not on the outputs' values.

        Raises:
            NotImplementedError: if the task has no matching loss.
        """
        raise NotImplementedError(
            f"task {self.name or type(self).__name__!r} has no loss that matches a Gauss-Newton "
            "curvature (Task.curvature_loss), so the Hessian-free optimizer cannot train it"
        )

    def metrics(self, output: ModelOutput, batch: Batch) -> dict[str, float]:
        """Metrics of one batch, each a mean over the batch (weighted by ``B`` when
        aggregated)."""
        return {}

    # -------------------------------------------------------------- data
    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A random batch of ``split`` drawn from ``generator`` (the same generator state
        gives the same batch)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement batch")

    def stream(
        self,
        split: str,
        batch_size: int,
        chunk_len: int,
        *,
        generator: torch.Generator,
        start: int = 0,
    ) -> Iterator[Batch]:
        """Consecutive chunks ``(chunk_len, B, ...)`` of ``B`` parallel streams, for truncated
        BPTT with the state carried across chunks. A deterministic function of
        ``generator``'s state; ``start`` skips the first ``start`` chunks (for resuming)."""
        raise NotImplementedError(
            f"task {self.name!r} has no stream mode; truncated BPTT (train.tbptt_k1) needs a "
            "task that implements Task.stream"
        )

    @classmethod
    def supports_stream(cls) -> bool:
        return cls.stream is not Task.stream

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterable[Batch]:
        """The batches of a held-out split (a fixed, finite set for a given generator)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement eval_batches")

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: str,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, float]:
        """Metrics and loss on a held-out split, averaged over its batches (weighted by batch
        size). The model is put in eval mode and restored."""
        if split not in self.eval_splits:
            raise ValueError(
                f"{self.name or type(self).__name__}: unknown split {split!r}; "
                f"expected one of {list(self.eval_splits)}"
            )
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        count = 0
        try:
            for batch in self.eval_batches(split, generator=generator):
                batch = batch.to(device, dtype)
                out = self.forward(model, batch)
                values = {"loss": float(self.loss(out, batch)), **self.metrics(out, batch)}
                B = batch.batch_size
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + v * B
                count += B
        finally:
            model.train(was_training)
        return {k: v / max(count, 1) for k, v in totals.items()}

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON) the task derived from its inputs and needs again to use a trained
        model (e.g. a vocabulary built from a corpus); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def describe_split(self, split: str) -> str:
        """A few words on what a held-out split holds, for summaries (default: its name)."""
        return split

    def describe(self) -> str:
        """A one-line description of this task with its options (for logs)."""
        opts = ", ".join(
            f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)
        )
        return f"{self.name}({opts})"
