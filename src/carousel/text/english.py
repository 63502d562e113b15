"""English words with their frequencies, read from the prose of Python's own standard library.

A recogniser of handwriting or speech reads *words*; a character language model of English
words helps its beam search spell them (Graves et al. 2009 fused a dictionary and a language
model of the LOB corpus). No word list or text corpus can be downloaded here, but every Python
installation carries some hundred thousand words of English prose: the comments and
docstrings of its standard library. :func:`english_word_counts` collects them once,
deterministically for a given Python version.

What it is and is not: the words are the English of technical documentation (``file``,
``return``, ``value`` are frequent; everyday words such as ``water`` or ``people`` are rarer,
and some, such as ``house``, are missing), mixed with a few identifiers written in prose
(``lineno``). Words must occur at least ``min_count`` times, which drops most one-off
identifiers. Nothing is filtered by any task's
word list: a test word is in it only because it is an English word the documentation uses.
"""

from __future__ import annotations

import functools
import re
import sysconfig
from collections import Counter
from pathlib import Path

from carousel._checks import check_positive_int

__all__ = ["english_word_counts"]

_WORD = re.compile(r"[A-Za-z]+")
#: Folders of the standard library left out: test suites (generated and foreign-language
#: strings) and third-party packages.
_SKIP_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})
#: Prose in Python source: comments, and triple-quoted strings (docstrings).
_PROSE = re.compile(r"#[^\n]*|\"{3}[\s\S]*?\"{3}|'{3}[\s\S]*?'{3}")


@functools.lru_cache(maxsize=1)
def _stdlib_prose_counts() -> tuple[tuple[str, int], ...]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    counts: Counter[str] = Counter()
    for path in sorted(lib.rglob("*.py")):
        if _SKIP_PARTS.intersection(path.relative_to(lib).parts):
            continue
        try:
            source = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable: skipped
        for block in _PROSE.findall(source):
            for w in _WORD.findall(block):
                # prose words are lowercase or capitalised; camelCase and ALLCAPS are code
                if w.islower() or w.istitle():
                    counts[w.lower()] += 1
    return tuple(sorted(counts.items()))


def english_word_counts(
    *, min_count: int = 2, min_length: int = 1, max_length: int = 20
) -> dict[str, int]:
    """Lowercase English words (letters ``a``-``z`` only) and how often the comments and
    docstrings (triple-quoted strings) of this Python's standard library use them.

    The first call reads the standard library's ``.py`` files (about a second); later calls
    reuse the result.

    Args:
        min_count: keep words used at least this often.
        min_length, max_length: keep words of this many letters.

    Returns:
        ``{word: count}``, sorted by word.

    Raises:
        ValueError: a non-positive ``min_count``, ``min_length`` or ``max_length``, or
            ``min_length > max_length``.

    Example:
        >>> words = english_word_counts(min_count=5)
        >>> "water" in words and "lineno" in words and len(words) > 4000
        True
    """
    check_positive_int("english_word_counts", "min_count", min_count)
    check_positive_int("english_word_counts", "min_length", min_length)
    check_positive_int("english_word_counts", "max_length", max_length)
    if min_length > max_length:
        raise ValueError(
            f"english_word_counts: min_length must be <= max_length, got {min_length} > "
            f"{max_length}"
        )
    return {
        w: c
        for w, c in _stdlib_prose_counts()
        if c >= min_count and min_length <= len(w) <= max_length
    }
