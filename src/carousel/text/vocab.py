"""Vocabularies of characters or words, with an explicit policy for tokens never seen in
training."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from carousel._checks import check_choice, check_positive_int
from carousel.text.corpus import CorpusError

__all__ = ["UNITS", "UNKNOWN_POLICIES", "UNKNOWN_TOKEN", "Vocabulary", "tokenize"]

logger = logging.getLogger(__name__)

#: What one token is: a character or a word.
UNITS = ("char", "word")

#: What happens to a token that is not in the vocabulary when text is encoded:
#: ``"token"`` maps it to :data:`UNKNOWN_TOKEN` (id 0, reserved in the vocabulary), ``"skip"``
#: drops it from the encoded stream, ``"error"`` raises naming it and where it first occurs.
UNKNOWN_POLICIES = ("token", "skip", "error")

#: The reserved token for unseen characters or words (policy ``"token"``). It cannot collide
#: with a real token: no single character is five long, and the word tokenizer splits ``<`` and
#: ``>`` off as punctuation.
UNKNOWN_TOKEN = "<unk>"

# Words for --unit word: a word (letters, digits, underscore) or one punctuation character, each
# taking the single space before it, or one other whitespace character. Every character of the
# text falls into exactly one token, so "".join(tokenize(text)) == text (lossless).
_WORD_RE = re.compile(r" ?\w+| ?[^\w\s]|\s")


def tokenize(text: str, unit: str = "char") -> list[str]:
    """Split text into tokens; ``"".join(tokenize(text, unit)) == text`` for both units.

    Args:
        text: the text.
        unit: ``"char"`` (every character is a token) or ``"word"`` (a word or punctuation mark
            with the one space before it, or a single other whitespace character).

    Returns:
        The tokens.

    Example:
        >>> tokenize("Once upon a time,\\n  there", "word")
        ['Once', ' upon', ' a', ' time', ',', '\\n', ' ', ' there']
    """
    check_choice("tokenize", "unit", unit, UNITS)
    if unit == "char":
        return list(text)
    return _WORD_RE.findall(text)


class Vocabulary:
    """A bijection between tokens and integer ids.

    Ids are contiguous from 0. With ``unknown="token"`` id 0 is :data:`UNKNOWN_TOKEN`.
    Characters are ordered by code point; words by decreasing training frequency (ties by the
    token), so a vocabulary built twice from the same text is identical.

    Args:
        tokens: the known tokens (without the unknown token).
        unit: ``"char"`` or ``"word"``.
        unknown: the policy for unseen tokens, one of :data:`UNKNOWN_POLICIES`.

    Raises:
        ValueError: on a bad ``unit``/``unknown``, duplicate tokens or an empty vocabulary.

    Example:
        >>> v = Vocabulary.build("abracadabra")
        >>> v.tokens
        ('<unk>', 'a', 'b', 'c', 'd', 'r')
        >>> v.encode("cab!").tolist()
        [3, 1, 2, 0]
        >>> v.decode([3, 1, 2, 0])
        'cab\\ufffd'
    """

    def __init__(self, tokens: Sequence[str], *, unit: str = "char", unknown: str = "token"):
        self.unit = check_choice("Vocabulary", "unit", unit, UNITS)
        self.unknown = check_choice("Vocabulary", "unknown", unknown, UNKNOWN_POLICIES)
        tokens = list(tokens)
        if not tokens:
            raise ValueError("Vocabulary: expected at least one token, got none")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"Vocabulary: token {dup!r} appears more than once")
        if UNKNOWN_TOKEN in tokens:
            raise ValueError(f"Vocabulary: {UNKNOWN_TOKEN!r} is reserved; do not list it")
        if unit == "char" and any(len(t) != 1 for t in tokens):
            bad = next(t for t in tokens if len(t) != 1)
            raise ValueError(f"Vocabulary: unit='char' needs single characters, got {bad!r}")
        self.tokens: tuple[str, ...] = tuple(
            ([UNKNOWN_TOKEN] if unknown == "token" else []) + tokens
        )
        self._index = {t: i for i, t in enumerate(self.tokens)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        text: str,
        *,
        unit: str = "char",
        unknown: str = "token",
        max_size: int | None = None,
        min_count: int = 1,
    ) -> Vocabulary:
        """Build the vocabulary of a (training) text.

        Args:
            text: the training text.
            unit: ``"char"`` or ``"word"`` (see :func:`tokenize`).
            unknown: the policy for unseen tokens (:data:`UNKNOWN_POLICIES`).
            max_size: keep at most this many tokens, the most frequent, counting the unknown
                token (``None``: all). Tokens left out become unseen tokens.
            min_count: drop tokens seen fewer times than this.

        Returns:
            The vocabulary.

        Raises:
            ValueError: if ``text`` is empty, ``max_size`` leaves no room for a token, or the
                options are invalid.
        """
        check_positive_int("Vocabulary.build", "min_count", min_count)
        if max_size is not None:
            check_positive_int(
                "Vocabulary.build", "max_size", max_size, minimum=2 if unknown == "token" else 1
            )
        check_choice("Vocabulary.build", "unit", unit, UNITS)
        if not text:
            raise ValueError("Vocabulary.build: the text is empty; expected some training text")
        counts = Counter(tokenize(text, unit))
        kept = [t for t, n in counts.items() if n >= min_count]
        if unit == "char" and max_size is None:
            kept.sort()
        else:
            kept.sort(key=lambda t: (-counts[t], t))
            if max_size is not None:
                kept = kept[: max_size - (1 if unknown == "token" else 0)]
            if unit == "char":
                kept.sort()
        if not kept:
            raise ValueError(
                f"Vocabulary.build: no token occurs at least min_count={min_count} times"
            )
        return cls(kept, unit=unit, unknown=unknown)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (for checkpoints); :meth:`from_dict` inverts it."""
        known = list(self.tokens[1:] if self.unknown == "token" else self.tokens)
        return {"unit": self.unit, "unknown": self.unknown, "tokens": known}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_dict`'s output.

        Raises:
            ValueError: if ``data`` lacks a field or holds invalid values.
        """
        if not isinstance(data, dict) or not {"unit", "unknown", "tokens"} <= set(data):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"Vocabulary.from_dict: expected keys ['tokens', 'unit', 'unknown'], got {got}"
            )
        return cls(data["tokens"], unit=data["unit"], unknown=data["unknown"])

    # ------------------------------------------------------------------ use
    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.unit, self.unknown, self.tokens))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, unit={self.unit!r}, unknown={self.unknown!r})"

    @property
    def unknown_id(self) -> int | None:
        """The id of :data:`UNKNOWN_TOKEN`, or ``None`` when the policy is not ``"token"``."""
        return 0 if self.unknown == "token" else None

    def lookup(self, token: str) -> int | None:
        """The id of ``token``: its own, the unknown token's for an unseen token, or ``None``
        for an unseen token when the policy has no unknown token."""
        return self._index.get(token, self.unknown_id)

    def id(self, token: str) -> int:
        """The id of one token (unseen tokens follow the policy; ``"skip"`` raises)."""
        i = self._index.get(token)
        if i is None:
            if self.unknown == "token":
                return 0
            raise KeyError(f"Vocabulary: token {token!r} is not in the vocabulary")
        return i

    def encode(self, text: str | Iterable[str], *, name: str = "text") -> Tensor:
        """Token ids of a text (or of an already tokenized sequence).

        Args:
            text: a string (tokenized by :func:`tokenize`) or a sequence of tokens.
            name: what the text is, for messages (``"validation text"``, a file name).

        Returns:
            ``(N,)`` int64 ids.

        Raises:
            CorpusError: (a ``ValueError``) with ``unknown="error"``, if a token is not in the
                vocabulary (the message names it, its first position and how many unseen
                tokens there are).
        """
        toks = tokenize(text, self.unit) if isinstance(text, str) else list(text)
        index = self._index
        miss = -1
        ids = [index.get(t, miss) for t in toks]
        unseen = sum(1 for i in ids if i == miss)
        if unseen:
            first = ids.index(miss)
            if self.unknown == "error":
                raise CorpusError(
                    f"Vocabulary: {name} holds {unseen} {self.unit}(s) not in the vocabulary, "
                    f"the first {toks[first]!r} at token {first}; build the vocabulary with "
                    "unknown='token' (map them to <unk>) or unknown='skip' (drop them)"
                )
            logger.info(
                "%s: %d unseen %s(s) (first %r) %s",
                name,
                unseen,
                self.unit,
                toks[first],
                "mapped to <unk>" if self.unknown == "token" else "dropped",
            )
            if self.unknown == "token":
                ids = [0 if i == miss else i for i in ids]
            else:
                ids = [i for i in ids if i != miss]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Tensor | Iterable[int]) -> str:
        """The text of token ids. The unknown token decodes to U+FFFD (the replacement
        character) for characters and to ``"<unk>"`` for words.

        Raises:
            ValueError: if an id is outside ``[0, len(self))``.
        """
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        n = len(self.tokens)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"Vocabulary: id {i} out of range [0, {n})")
            if i == 0 and self.unknown == "token":
                out.append("\ufffd" if self.unit == "char" else " " + UNKNOWN_TOKEN)
            else:
                out.append(self.tokens[i])
        return "".join(out)
