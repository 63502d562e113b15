"""Argument checks shared by the public API: each error names who, what was expected, and what
was got (STYLE.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_positive_int(owner: str, name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_probability(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value}")
    return float(value)


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_tensor(owner: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def shape_str(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_shape(
    owner: str,
    name: str,
    tensor: Tensor,
    expected: Sequence[int | None],
    labels: Sequence[str],
    note: str = "",
) -> None:
    """Check ``tensor.shape`` against ``expected`` (``None`` = any size).

    ``labels`` are the shape letters used in the message for ``None`` entries.
    """
    ok = tensor.dim() == len(expected) and all(
        e is None or e == s for e, s in zip(expected, tensor.shape)
    )
    if not ok:
        labels = list(labels) + ["?"] * (len(expected) - len(labels))
        want = [lab if e is None else e for e, lab in zip(expected, labels)]
        extra = f" {note}" if note else ""
        raise ValueError(
            f"{owner}: expected {name} of shape {shape_str(want)}{extra}, "
            f"got {shape_str(tuple(tensor.shape))}"
        )


def check_floating(owner: str, name: str, tensor: Tensor, dtype: torch.dtype | None = None) -> None:
    if not tensor.is_floating_point():
        raise TypeError(f"{owner}: {name} must be a floating-point tensor, got {tensor.dtype}")
    if dtype is not None and tensor.dtype != dtype:
        raise TypeError(
            f"{owner}: {name} has dtype {tensor.dtype} but the parameters are {dtype}; "
            f"convert one of them (e.g. {name}.to({dtype}))"
        )


def autocast_on(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (torch < 2.4 lacks the argument)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # pragma: no cover - old torch
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled()) if device_type == "cuda" else False
