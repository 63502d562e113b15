"""Reading text corpora: files, folders, the built-in default corpus, and the train/validation
split.

Every error names the file it is about and says what was expected (STYLE.md section 4).
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from carousel._checks import check_positive_int

__all__ = [
    "DEFAULT_CORPUS_MODULES",
    "CorpusError",
    "CorpusSplit",
    "TextSource",
    "corpus_fingerprint",
    "default_corpus",
    "load_texts",
    "read_text_file",
    "split_texts",
]

logger = logging.getLogger(__name__)

#: The default corpus: the source code of these pure-Python standard-library modules, read from
#: the running interpreter's own ``Lib/`` folder (about 1.07 million characters on CPython
#: 3.11), largest first, so the held-out last tenth (:func:`split_texts`) spans the smallest
#: five modules. Every module here is a single ``.py`` file in every CPython from 3.10 on. Why
#: source code: it ships with every Python installation (no download, no licence question: the
#: PSF licence covers it and it is only read, never redistributed), it mixes English prose
#: (docstrings, comments) with code, and it has the long-range structure a recurrent network can
#: use and an n-gram cannot: indentation depth, open brackets, open string quotes. It is also
#: the classic char-rnn demonstration (Karpathy 2015 trained on the Linux source), and it lets
#: ``carousel cells`` find quote- and bracket-tracking cells.
DEFAULT_CORPUS_MODULES: tuple[str, ...] = (
    "inspect",
    "typing",
    "argparse",
    "difflib",
    "enum",
    "threading",
    "dataclasses",
    "shutil",
    "configparser",
    "statistics",
    "traceback",
    "functools",
    "random",
    "fractions",
    "contextlib",
    "tokenize",
    "calendar",
    "pprint",
    "heapq",
    "textwrap",
)


class CorpusError(ValueError):
    """Text that cannot be used as a corpus: a binary, undecodable or empty file, a folder
    without text, too little text for the split, or (with the ``"error"`` policy) a token the
    vocabulary lacks. The message names the file (or the text) and what was expected."""


# How many bytes are inspected for NUL bytes (the sign of a binary file), as git and grep do.
_BINARY_SNIFF = 8192


@dataclass(frozen=True)
class TextSource:
    """One document of a corpus.

    Attributes:
        name: where it came from (a file path, or ``stdlib:<module>`` for the default corpus).
        text: its contents, decoded, with newlines normalised to ``"\\n"``.
    """

    name: str
    text: str


def read_text_file(path: str | Path, *, encoding: str = "utf-8", allow_empty: bool = False) -> str:
    """Read one text file, refusing binary files, undecodable bytes and empty files.

    A UTF-8 byte-order mark is dropped and ``\\r\\n``/``\\r`` line ends become ``\\n``.

    Args:
        path: the file.
        encoding: its encoding (any name :func:`codecs.lookup` knows).
        allow_empty: return ``""`` for an empty file instead of raising.

    Returns:
        The decoded text.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        IsADirectoryError: if ``path`` is a folder (use :func:`load_texts`).
        CorpusError: (a ``ValueError``) if the file looks binary (a NUL byte in its first
            8 KiB), is not valid in ``encoding`` (the message gives the byte offset and
            suggests ``encoding``), or is empty (unless ``allow_empty``).
        LookupError: if ``encoding`` is unknown.
    """
    p = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise LookupError(
            f"text file {str(p)!r}: unknown encoding {encoding!r}; expected a codec name such "
            "as 'utf-8' or 'latin-1'"
        ) from None
    if not p.exists():
        raise FileNotFoundError(f"text file {str(p)!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(
            f"text file {str(p)!r} is a folder; pass it as a corpus folder (load_texts) instead"
        )
    data = p.read_bytes()
    nul = data.find(b"\x00", 0, _BINARY_SNIFF)
    if nul >= 0 and not encoding.lower().replace("-", "").replace("_", "").startswith(
        ("utf16", "utf32")
    ):
        raise CorpusError(
            f"text file {str(p)!r} looks binary (NUL byte at offset {nul}); expected a text file"
        )
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise CorpusError(
            f"text file {str(p)!r} is not valid {encoding}: byte 0x{bad} at offset {e.start} "
            f"({e.reason}); if the file uses another encoding, pass it (Python: "
            "encoding='latin-1'; CLI: --set data.encoding=latin-1, or --encoding latin-1 for "
            "carousel cells)"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text and not allow_empty:
        raise CorpusError(f"text file {str(p)!r} is empty; expected some text")
    return text


def _folder_files(folder: Path, pattern: str) -> list[Path]:
    files = []
    for f in sorted(folder.glob(pattern)):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and folders (.git, .DS_Store, ...)
        if f.is_file():
            files.append(f)
    return files


def load_texts(
    paths: str | Path | Sequence[str | Path],
    *,
    encoding: str = "utf-8",
    pattern: str = "**/*",
) -> list[TextSource]:
    """Read a corpus from files and folders.

    A folder contributes every file below it that matches ``pattern`` (sorted, hidden files and
    folders skipped). Empty files inside a folder are skipped (with a log message); an empty file
    named explicitly is an error.

    Args:
        paths: a file, a folder, or a sequence of them.
        encoding: the encoding of every file.
        pattern: glob pattern for files inside folders (``"**/*.txt"`` for text files only).

    Returns:
        One :class:`TextSource` per file, in the order given (folders sorted by path).

    Raises:
        ValueError: if no paths are given.
        CorpusError: (a ``ValueError``) if a folder holds no non-empty file, or a file is
            binary, undecodable or empty (see :func:`read_text_file`).
        FileNotFoundError: if a path does not exist.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("load_texts: expected at least one file or folder, got none")
    sources: list[TextSource] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = 0
            for f in _folder_files(p, pattern):
                text = read_text_file(f, encoding=encoding, allow_empty=True)
                if not text:
                    logger.info("skipping empty file %s", f)
                    continue
                sources.append(TextSource(str(f), text))
                found += 1
            if not found:
                raise CorpusError(
                    f"text folder {str(p)!r} holds no non-empty file matching {pattern!r}"
                )
        else:
            sources.append(TextSource(str(p), read_text_file(p, encoding=encoding)))
    return sources


def default_corpus(modules: Iterable[str] = DEFAULT_CORPUS_MODULES) -> list[TextSource]:
    """The built-in corpus: the source code of standard-library modules of this Python.

    The files are read from the interpreter's own standard library folder
    (``sysconfig.get_paths()["stdlib"]``), so nothing is downloaded or imported. See
    :data:`DEFAULT_CORPUS_MODULES` for the choice. The text differs slightly between Python
    versions; :func:`corpus_fingerprint` identifies it in results.

    Args:
        modules: module names, each a single ``<name>.py`` file in the standard library.

    Returns:
        One :class:`TextSource` per module, named ``stdlib:<module>``.

    Raises:
        FileNotFoundError: if this installation lacks a module's source file (some embedded or
            stripped distributions ship only bytecode); pass your own text instead.
    """
    lib = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for name in modules:
        f = lib / f"{name}.py"
        if not f.is_file():
            raise FileNotFoundError(
                f"default corpus: this Python installation has no source file for the standard "
                f"library module {name!r} (looked for {str(f)!r}); pass your own text "
                "(CLI: --text FILE)"
            )
        sources.append(TextSource(f"stdlib:{name}", read_text_file(f, encoding="utf-8")))
    return sources


def corpus_fingerprint(sources: Sequence[TextSource]) -> str:
    """A short SHA-256 of a corpus's texts, to record which text a result was measured on."""
    h = hashlib.sha256()
    for s in sources:
        h.update(s.text.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CorpusSplit:
    """A corpus divided into a training and a validation text.

    Attributes:
        train: the training text.
        valid: the validation text.
        names: the documents it came from.
        fingerprint: :func:`corpus_fingerprint` of the documents.
    """

    train: str
    valid: str
    names: tuple[str, ...]
    fingerprint: str


def _with_newline(s: str) -> str:
    return s if not s or s.endswith("\n") else s + "\n"


def split_texts(
    sources: Sequence[TextSource], *, valid_fraction: float = 0.1, min_valid_chars: int = 1
) -> CorpusSplit:
    """Hold out the end of the corpus for validation, as char-rnn does.

    The documents are concatenated in order (each ending with a newline) and the last
    ``valid_fraction`` of the characters, moved forward to the next line start so no line is
    cut, becomes the validation text. With several documents the held-out part is whole
    documents at the end (plus the end of one), so validation measures how well a model
    generalises to text it has not seen, rather than how well it recalls strings seen earlier
    in the same document (which would flatter a long-context n-gram model).

    Args:
        sources: the documents, in order.
        valid_fraction: the share of characters held out, in ``(0, 1)``.
        min_valid_chars: fewer validation characters than this is an error.

    Returns:
        A :class:`CorpusSplit`.

    Raises:
        ValueError: if ``valid_fraction`` is outside ``(0, 1)`` or there are no documents.
        CorpusError: (a ``ValueError``) if either part is too short (the message names the
            corpus size and suggests a larger fraction or more text).
        TypeError: if ``valid_fraction`` is not a number.
    """
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)):
        raise TypeError(f"split_texts: valid_fraction must be a float, got {valid_fraction!r}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"split_texts: valid_fraction must be in (0, 1), got {valid_fraction}")
    check_positive_int("split_texts", "min_valid_chars", min_valid_chars)
    if not sources:
        raise ValueError("split_texts: expected at least one document, got none")
    text = "".join(_with_newline(s.text) for s in sources)
    cut = round(len(text) * (1.0 - valid_fraction))
    nl = text.find("\n", cut)
    if 0 <= nl < len(text) - 1:
        cut = nl + 1  # the validation part starts at a line start
    train, valid = text[:cut], text[cut:]
    if len(valid) < min_valid_chars or len(train) < 2:
        raise CorpusError(
            f"split_texts: the corpus ({len(text)} characters in {len(sources)} document(s)) "
            f"is too short for a split with valid_fraction={valid_fraction}: {len(train)} "
            f"training and {len(valid)} validation characters; use more text or a larger "
            "valid_fraction"
        )
    return CorpusSplit(train, valid, tuple(s.name for s in sources), corpus_fingerprint(sources))
