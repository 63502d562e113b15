"""Analysing a trained checkpoint (``carousel analyze CKPT``): load the model with the training
engine's :func:`carousel.train.load_trained`, take inputs from a file or from one of the task's
held-out splits, and run :func:`~carousel.analysis.report.analyze`.

``carousel.train`` is imported inside the functions, so that the training engine may itself use
:mod:`carousel.analysis` (e.g. to log gradient norms) without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from carousel.analysis.report import WHAT, AnalysisReport, analyze

__all__ = ["INPUT_SUFFIXES", "TaskModel", "analyze_checkpoint", "load_input_file"]

#: File types :func:`load_input_file` reads (none of them can run code when loaded).
INPUT_SUFFIXES = (".npy", ".pt", ".safetensors")


def load_input_file(path: str | Path) -> Tensor:
    """Read an input tensor from ``.npy`` (numpy, no pickles), ``.pt`` (``torch.save`` of a
    tensor or of a dict with key ``"inputs"``; loaded with ``weights_only=True``) or
    ``.safetensors`` (the tensor ``"inputs"``, or the only one).

    Returns:
        The tensor as stored: ``(T, B, I)`` features, ``(T, I)`` one sequence, or ``(T, B)`` /
        ``(T,)`` token ids.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for another suffix or content that is not one tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analyze: input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as e:
            raise ValueError(f"analyze: {path} is not a plain numpy array file: {e}") from None
    if suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for foreign or unsafe files
            raise ValueError(f"analyze: cannot read {path} as a tensor file: {e}") from None
        if isinstance(obj, dict) and "inputs" in obj:
            obj = obj["inputs"]
        if not isinstance(obj, Tensor):
            raise ValueError(
                f"analyze: {path} holds a {type(obj).__name__}; expected a tensor or a dict "
                "with key 'inputs'"
            )
        return obj
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "inputs" in tensors:
            return tensors["inputs"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ValueError(
            f"analyze: {path} holds tensors {sorted(tensors)}; name the input 'inputs'"
        )
    raise ValueError(
        f"analyze: input file must end in one of {list(INPUT_SUFFIXES)}, got {path.name}"
    )


class TaskModel(nn.Module):
    """A task's model run as the task runs it (:meth:`carousel.tasks.Task.forward`), as a
    module of the inputs alone, so every analysis sees exactly the trained computation.

    Args:
        model: the task's model.
        task: the task.
        batch: the batch whose inputs are analysed (its lengths and extras are used).
    """

    def __init__(self, model: nn.Module, task: Any, batch: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.batch = batch

    def forward(self, inputs: Tensor) -> Any:
        return self.task.forward(self.model, dataclasses.replace(self.batch, inputs=inputs))


def analyze_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    input_file: str | Path | None = None,
    split: str | None = None,
    batch_size: int = 4,
    what: Sequence[str] | str = WHAT,
    device: str = "auto",
    seed: int = 0,
    batch_index: int = 0,
    lyapunov_k: int = 1,
    spectrum_steps: int = 3,
    hdf5: str | Path | None = None,
) -> AnalysisReport:
    """Analyse a checkpoint of ``carousel train``: PNGs and ``report.html`` in ``out_dir``.

    Args:
        checkpoint: a checkpoint directory, a run directory or its ``last`` link.
        out_dir: where the report goes.
        input_file: inputs from a file (:func:`load_input_file`), analysed with the default
            loss (outputs at the last step); else a batch of the task's held-out ``split``,
            analysed with the task's own loss.
        split: the held-out split (default: the task's first); ignored with ``input_file``.
        batch_size: sequences taken from the split.
        what: the analyses (see :func:`~carousel.analysis.report.analyze`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        seed: seed of the split's batch.
        batch_index: the sequence shown in traces, saliency and Jacobian spectra.
        lyapunov_k, spectrum_steps: see :func:`~carousel.analysis.report.analyze`.
        hdf5: also export the per-step states to this HDF5 file (needs h5py).

    Returns:
        :class:`~carousel.analysis.report.AnalysisReport`.

    Raises:
        carousel.train.CheckpointError: a missing, damaged or foreign checkpoint.
        ValueError: a bad split, input file or option.
    """
    from carousel.train import load_trained

    model, task, config, ckpt = load_trained(checkpoint, device=device)
    p = next(model.parameters())
    loss_fn = None
    if input_file is not None:
        x = load_input_file(input_file)
        x = x.to(p.device, p.dtype) if x.is_floating_point() else x.to(p.device)
        if x.dim() == (2 if x.is_floating_point() else 1):
            x = x.unsqueeze(1)  # one sequence: (T, 1, ...)
        target, inputs = model, x
        source = f"input file {Path(input_file).name}, shape {tuple(x.shape)}, default loss"
    else:
        names = list(task.eval_splits)
        split = names[0] if split is None else split
        if split not in names:
            raise ValueError(
                f"analyze: task {task.name!r} has no split {split!r}; expected one of {names}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"analyze: batch_size must be a positive int, got {batch_size!r}")
        gen = torch.Generator().manual_seed(seed)
        batch = next(iter(task.eval_batches(split, generator=gen)))
        batch = batch.select(slice(0, batch_size)).to(p.device, p.dtype)
        target = TaskModel(model, task, batch)
        inputs = batch.inputs

        def loss_fn(out: Any) -> Tensor:
            return task.loss(out, batch)

        source = (
            f"{batch.batch_size} sequences of split {split!r} "
            f"({task.describe_split(split)}), T = {batch.num_steps}, the task's loss"
        )
    title = f"carousel analysis: {task.name}, step {ckpt.step}"
    description = f"checkpoint {ckpt.path}; {source}; model {config.model}"
    return analyze(
        target,
        inputs,
        out_dir,
        what=what,
        loss_fn=loss_fn,
        batch_index=batch_index,
        lyapunov_k=lyapunov_k,
        spectrum_steps=spectrum_steps,
        forward_kwargs={},
        title=title,
        description=description,
        hdf5=hdf5,
    )
