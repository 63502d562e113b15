"""Validation helpers for the frozen dataclass configs (models, tasks, training).

Each config validates itself in ``__post_init__`` with a :class:`Checks` object, which collects
every problem before raising one :class:`ConfigError`, so a user sees all mistakes at once::

    def __post_init__(self):
        c = Checks("model")
        c.positive_int("hidden_size", self.hidden_size)
        c.choice("cell", self.cell, ("rnn", "lstm", "gru"))
        c.done()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["Checks", "ConfigError"]


class ConfigError(ValueError):
    """One or more invalid configuration values; ``errors`` lists every message."""

    def __init__(self, errors: Sequence[str], where: str = "config") -> None:
        self.errors = list(errors)
        n = len(self.errors)
        head = f"{where}: {n} error{'s' if n != 1 else ''}"
        super().__init__(head + ":\n  - " + "\n  - ".join(self.errors))


class Checks:
    """Collects validation errors of one config section.

    Args:
        section: the section's name, used as the prefix of each message
            (``"model.hidden_size must be >= 1, got 0"``).
    """

    def __init__(self, section: str) -> None:
        self.section = section
        self.errors: list[str] = []

    def _name(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def fail(self, name: str, message: str) -> None:
        """Record ``"<section>.<name> <message>"``."""
        self.errors.append(f"{self._name(name)} {message}")

    def require(self, ok: bool, name: str, message: str) -> bool:
        if not ok:
            self.fail(name, message)
        return ok

    def is_int(self, name: str, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an int, got {type(value).__name__} ({value!r})")
            return False
        return True

    def positive_int(self, name: str, value: object, minimum: int = 1) -> None:
        # is_int checked value's type (a TypeGuard would narrow name, its first argument)
        if self.is_int(name, value) and value < minimum:  # type: ignore[operator]
            self.fail(name, f"must be >= {minimum}, got {value}")

    def optional_int(self, name: str, value: object, minimum: int = 1) -> None:
        if value is not None:
            self.positive_int(name, value, minimum)

    def number(
        self,
        name: str,
        value: object,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        finite: bool = True,
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be a number, got {type(value).__name__} ({value!r})")
            return
        v = float(value)
        if finite and not math.isfinite(v):
            self.fail(name, f"must be finite, got {value}")
            return
        if minimum is not None:
            if exclusive_minimum and not v > minimum:
                self.fail(name, f"must be > {minimum}, got {value}")
            elif not exclusive_minimum and not v >= minimum:
                self.fail(name, f"must be >= {minimum}, got {value}")
        if maximum is not None and not v <= maximum:
            self.fail(name, f"must be <= {maximum}, got {value}")

    def optional_number(
        self,
        name: str,
        value: object,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        finite: bool = True,
    ) -> None:
        if value is not None:
            self.number(
                name,
                value,
                minimum=minimum,
                maximum=maximum,
                exclusive_minimum=exclusive_minimum,
                finite=finite,
            )

    def boolean(self, name: str, value: object) -> None:
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {value!r}")

    def string(self, name: str, value: object) -> bool:
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {type(value).__name__} ({value!r})")
            return False
        return True

    def choice(self, name: str, value: object, choices: Sequence[str]) -> None:
        if value not in choices:
            self.fail(name, f"must be one of {list(choices)}, got {value!r}")

    def done(self) -> None:
        """Raise :class:`ConfigError` with every recorded error, if any."""
        if self.errors:
            raise ConfigError(self.errors, self.section or "config")
