"""Second-language (L2) English: English phonemes spoken with another language's phoneme table.

An accent a recogniser never heard differs from the ones it knows less in *which* phonemes
it uses than in *how* it says them: espeak-ng's Caribbean voice (``en-029``) writes most words
with the same phoneme mnemonics as the other English voices, but its phoneme table (``en-wi``)
gives them vowel targets of its own. Every English voice of espeak-ng shares one family of
tables, so the corpus holds no other set of vowel targets; espeak-ng's tables for other
languages do. This module makes *L2 English*: the English phonemes of a text
(``espeak-ng -x --sep``), each replaced by the nearest phoneme a speaker of another language
has in their own inventory, the way learners substitute (Spanish speakers have no /V/ or
/3:/ and say /a/ and /er/; French ones have no /h/ and no /T/; ...), spoken by that
language's voice with ``[[...]]`` input, so that every phoneme gets that language's target.

:data:`SUBSTITUTES` lists, for each English phoneme, substitutes in order of preference (the
phoneme itself first: a language that has it keeps it); :func:`substitutions` takes, for one
language, the first substitute its phoneme table reads back intact (espeak-ng drops the rest
of a word at a phoneme its table lacks). :func:`l2_phonemes` rewrites a text.
"""

from __future__ import annotations

import functools

import numpy as np

from carousel.speech.pronunciation import espeak_phonemes

__all__ = ["L2_LANGUAGES", "REPLACED", "SUBSTITUTES", "l2_phonemes", "substitutions"]

#: espeak-ng languages whose speakers' English the corpus imitates: Germanic, Romance,
#: Slavic, Indo-Aryan and Turkic vowel systems.
L2_LANGUAGES = ("de", "nl", "sv", "es", "pt-br", "it", "fr-fr", "ro", "pl", "ru", "hi", "tr")

#: English phoneme (espeak-ng mnemonic, as the English voices write it) -> substitutes in
#: order of preference, each a space-separated sequence of mnemonics of the target table
#: ("" drops the phoneme). Every English phoneme of the vocabulary in every English voice
#: is a key.
SUBSTITUTES: dict[str, tuple[str, ...]] = {
    # consonants most languages share
    **{c: (c,) for c in ("p", "b", "t", "d", "k", "g", "f", "s", "m", "n", "l")},
    "v": ("v", "b", "f"),
    "z": ("z", "s"),
    "r": ("r", "R", "r/"),
    "r-": ("r", "R", ""),  # the r-colouring of US vowels: learners say a written r
    "w": ("w", "u", "v"),
    "j": ("j", "i"),
    "h": ("h", "x", "h#", ""),
    "T": ("T", "t", "s", "f"),
    "D": ("D", "d", "z"),
    "t[": ("t[", "t"),
    "t#": ("t", "d"),  # the US flap
    "t2": ("t",),
    "N": ("N", "n g", "n"),
    "S": ("S", "s"),
    "tS": ("tS", "t S", "ts", "S"),
    "dZ": ("dZ", "d Z", "dz", "Z", "j"),
    "w#": ("w", "u", "v"),
    # vowels
    "i:": ("i:", "i"),
    "i": ("i", "i:"),
    "I": ("I", "i"),
    "I2": ("I", "i", "e"),
    "I#": ("I", "i", "e"),
    "IR": ("I r", "i r"),
    "E": ("E", "e"),
    "a": ("a", "E", "A"),
    "aa": ("a:", "A:", "a"),
    "A:": ("A:", "a:", "a"),
    "A@": ("A:", "a: r", "a r"),
    "0": ("0", "O", "o"),
    "O2": ("O", "o"),
    "O:": ("O:", "o:", "O", "o"),
    "O@": ("O:", "o: r", "o r"),
    "o@": ("O:", "o: r", "o r"),
    "V": ("V", "a", "@", "o"),
    "VR": ("V r", "a r"),
    "U": ("U", "u"),
    "u:": ("u:", "u"),
    "U@": ("U@", "u: r", "u r"),
    "@": ("@", "e", "a"),
    "@-": ("@", "e", ""),
    "@2": ("@", "e", "a"),
    "@5": ("@", "u"),
    "@L": ("@L", "@ l", "e l", "l"),
    "3": ("3", "@ r", "e r", "e"),
    "3:": ("3:", "@: r", "@ r", "e r", "e"),
    "a#": ("a#", "@", "a"),
    "eI": ("eI", "ej", "e j", "e:", "e"),
    "aI": ("aI", "aj", "a j", "a i"),
    "aI2": ("aI", "aj", "a j", "a i"),
    "aI@": ("aI@", "aI @", "a j e", "a i e"),
    "aI3": ("aI@", "aI @", "a j e r", "a i e r"),
    "OI": ("OI", "Oj", "O j", "o j", "o i"),
    "oU": ("oU", "o:", "o u", "o"),
    "aU": ("aU", "aw", "a w", "a u"),
    "e@": ("e@", "E: r", "E r", "e r"),
    "i@": ("i@", "i @", "i e", "i e r"),
    "i@3": ("i@3", "i@", "i @ r", "i e r"),
}

#: The English phonemes an L2 speaker replaces even where the table has them, each with
#: probability ``1 - keep`` (:func:`l2_phonemes`): the vowels, and the dental fricatives /T/
#: and /D/, which few languages have (said as [t] [s] [f], [d] [z] by learners of English).
REPLACED: frozenset[str] = frozenset(
    [k for k in SUBSTITUTES if k[0] in "aeiouAEIOUV03@"] + ["T", "D"]
)

_MARKS = "',%="  # stress marks, kept as they are
_IGNORED = (";",)  # espeak-ng's word-final markers in -x output


def _run(espeak: str, args: list[str], stdin: str | None = None) -> str:
    """``espeak-ng -q -x --sep=| ARGS``: phoneme mnemonics with ``|`` between phonemes."""
    return espeak_phonemes(["--sep=|", *args], espeak=espeak, stdin=stdin)


def _is_phoneme(token: str) -> bool:
    """Whether a token of ``-x --sep=|`` output, stress marks stripped, is a phoneme (not
    empty, a pause or a word-final marker)."""
    return bool(token) and token not in _IGNORED and not token.startswith("_")


def _tokens(phoneme_text: str) -> list[str]:
    """The phonemes of ``-x --sep=|`` output, without stress marks, pauses and word-final
    markers."""
    tokens = (t.lstrip(_MARKS) for t in phoneme_text.replace("|", " ").split())
    return [t for t in tokens if _is_phoneme(t)]


def _said(espeak: str, language: str, candidates: list[str]) -> list[bool]:
    """Whether ``language``'s table says each of ``candidates`` (mnemonics) and what follows
    it: at a mnemonic it lacks, espeak-ng drops the rest of the word, here the sentinel
    ``ma``. (The table's own allophones may replace what it reads: Spanish /b/ between
    vowels as [B].) One espeak-ng run reads them all, a line each."""
    lines = [f"[[{c}ma]]" for c in candidates]
    out = _run(espeak, ["-v", language], stdin="\n".join(lines) + "\n").split("\n")
    if len(out) < len(lines) or any(out[len(lines) :]):  # not a line each: one run each
        out = [_run(espeak, ["-v", language, line]) for line in lines]
    said = []
    for line in out[: len(lines)]:
        back = _tokens(line)
        said.append(len(back) >= 3 and back[-2] == "m")
    return said


@functools.cache
def substitutions(language: str, *, espeak: str = "espeak-ng") -> dict[str, tuple[str, ...]]:
    """For each English phoneme of :data:`SUBSTITUTES`, the substitutes that the phoneme
    table of ``language`` says (:func:`_said`), in order and written without spaces.

    Raises:
        ValueError: an English phoneme none of whose substitutes the table has.
        RuntimeError: espeak-ng failed (its message is included).
    """
    flat = sorted({c.replace(" ", "") for cands in SUBSTITUTES.values() for c in cands} - {""})
    known = dict(zip(flat, _said(espeak, language, flat), strict=True))
    known[""] = True
    out = {}
    for english, candidates in SUBSTITUTES.items():
        said = tuple(dict.fromkeys(c.replace(" ", "") for c in candidates))
        said = tuple(c for c in said if known[c])
        if not said:
            raise ValueError(
                f"substitutions: espeak-ng's {language!r} phoneme table has none of "
                f"{list(candidates)} for the English phoneme {english!r}"
            )
        out[english] = said
    return out


def l2_phonemes(
    text: str,
    language: str,
    *,
    voice: str = "en",
    keep: float = 1.0,
    rng: np.random.Generator | None = None,
    espeak: str = "espeak-ng",
) -> str:
    """The phonemes of ``text`` as English voice ``voice`` says them, each replaced by a
    substitute in ``language`` (:func:`substitutions`), stress marks kept; for espeak-ng's
    ``[[...]]`` input in a ``language`` voice.

    A phoneme of :data:`REPLACED` (the vowels, /T/, /D/) that the table has is kept with
    probability ``keep`` and otherwise replaced by one of its other substitutes, drawn from
    ``rng`` (a learner's nearer native sound: /I/ as /i/, /eI/ as /ej/, /T/ as /t/, /s/ or
    /f/); other phonemes the table has are kept; a phoneme the table lacks always takes its
    first substitute. (espeak-ng's tables inherit many phonemes from common base tables, so that
    a table has a phoneme does not say that the language has it.)

    Raises:
        ValueError: an English phoneme :data:`SUBSTITUTES` does not list, ``language`` has
            no substitute for it, or ``keep`` outside [0, 1].
        RuntimeError: espeak-ng failed.
    """
    if not 0 <= keep <= 1:
        raise ValueError(f"l2_phonemes: keep must be in [0, 1], got {keep}")
    rng = rng if rng is not None else np.random.default_rng(0)
    subs = substitutions(language, espeak=espeak)
    words = []
    for word in _run(espeak, ["-v", voice, text]).split():
        out = []
        for token in word.split("|"):
            core = token.lstrip(_MARKS)
            if not _is_phoneme(core):
                continue
            if core not in subs:
                raise ValueError(
                    f"l2_phonemes: the English phoneme {core!r} (in {word!r}, voice {voice!r}) "
                    f"has no entry in SUBSTITUTES"
                )
            said = subs[core]
            k = 0
            if core in REPLACED and said[0] == core and len(said) > 1 and rng.random() >= keep:
                k = 1 + int(rng.integers(len(said) - 1))
            out.append(token[: len(token) - len(core)] + said[k])
        if out:
            words.append("".join(out))
    return " ".join(words)
