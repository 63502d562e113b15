"""Types shared by carousel's modules (for type checkers only; nothing here runs)."""

from __future__ import annotations

from typing import TypedDict

import torch


class FactoryKwargs(TypedDict):
    """The ``device`` and ``dtype`` keywords of torch's tensor factories and module
    constructors, collected once and passed on as ``**kw``."""

    device: torch.device | str | None
    dtype: torch.dtype | None
