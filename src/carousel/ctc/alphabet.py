"""The mapping between characters and CTC label ids, with the blank at id 0."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Alphabet"]


class Alphabet:
    """Characters <-> CTC label ids; id 0 is the blank, characters are ``1..C-1``.

    Args:
        symbols: the characters, in label order (no duplicates, no empty string).
        blank: how the blank is written when ids are shown with :meth:`render`.

    Example:
        >>> a = Alphabet("abc ")
        >>> a.encode("cab"), a.decode([3, 1, 2]), len(a)
        ([3, 1, 2], 'cab', 5)
    """

    def __init__(self, symbols: Iterable[str], *, blank: str = "_") -> None:
        symbols = list(symbols)
        if not symbols:
            raise ValueError("Alphabet: symbols must not be empty")
        for s in symbols:
            if not isinstance(s, str) or len(s) != 1:
                raise ValueError(f"Alphabet: each symbol must be one character, got {s!r}")
        if len(set(symbols)) != len(symbols):
            dup = sorted({s for s in symbols if symbols.count(s) > 1})
            raise ValueError(f"Alphabet: symbols must be unique, got duplicates {dup}")
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.blank_symbol = blank
        self.blank = 0
        self._ids = {s: i + 1 for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        """The number of classes ``C``, blank included."""
        return len(self.symbols) + 1

    def __contains__(self, char: object) -> bool:
        return char in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and other.symbols == self.symbols

    def __hash__(self) -> int:
        return hash(self.symbols)

    def __repr__(self) -> str:
        return f"Alphabet({''.join(self.symbols)!r})"

    def encode(self, text: str) -> list[int]:
        """Label ids of ``text``.

        Raises:
            ValueError: a character outside the alphabet (named, with its position).
        """
        out = []
        for pos, ch in enumerate(text):
            i = self._ids.get(ch)
            if i is None:
                raise ValueError(
                    f"Alphabet: character {ch!r} at position {pos} of {text!r} is not in the "
                    f"alphabet {''.join(self.symbols)!r}"
                )
            out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of label ids (blanks are skipped; no collapsing of repeats)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.blank:
                continue
            if not 0 < i < len(self):
                raise ValueError(f"Alphabet: label id must be in [0, {len(self) - 1}], got {i}")
            out.append(self.symbols[i - 1])
        return "".join(out)

    def render(self, ids: Sequence[int]) -> str:
        """Like :meth:`decode` but shows blanks as ``blank`` (for frame-by-frame output)."""
        return "".join(self.blank_symbol if int(i) == 0 else self.symbols[int(i) - 1] for i in ids)
