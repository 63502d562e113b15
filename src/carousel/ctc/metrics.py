"""Edit distance, character error rate and word error rate."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["character_error_rate", "edit_distance", "word_error_rate"]


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions turning
    ``hypothesis`` into ``reference`` (Levenshtein 1966), by the O(len*len) dynamic programme.

    Example:
        >>> edit_distance("kitten", "sitting")
        3
    """
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def _check_pairs(name: str, references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError(f"{name}: references and hypotheses must be sequences of strings")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{name}: got {len(references)} references but {len(hypotheses)} hypotheses"
        )


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER: total character edit distance over total reference characters.

    Raises:
        ValueError: different numbers of references and hypotheses, or no reference character.

    Example:
        >>> character_error_rate(["hello", "world"], ["hallo", "world"])
        0.1
    """
    _check_pairs("character_error_rate", references, hypotheses)
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("character_error_rate: the references hold no characters")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: word-level edit distance (words split on whitespace) over reference words.

    Raises:
        ValueError: different numbers of references and hypotheses, or no reference word.

    Example:
        >>> word_error_rate(["the cat sat"], ["the cat sad"])
        0.3333333333333333
    """
    _check_pairs("word_error_rate", references, hypotheses)
    refs = [r.split() for r in references]
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("word_error_rate: the references hold no words")
    return sum(edit_distance(r, h.split()) for r, h in zip(refs, hypotheses)) / total
