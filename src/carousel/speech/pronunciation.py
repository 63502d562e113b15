"""Pronunciation perturbation: synthetic accents made by rewriting espeak-ng's phonemes.

espeak-ng's English voices differ from one another in a handful of ways, and a recogniser
trained on some of them meets, in a new accent, pronunciations it never heard (a Caribbean
voice saying "tree" for "three"). This module widens the training pronunciations the way
accents of English actually differ (J. C. Wells, *Accents of English*, 1982): each
:class:`Process` is one well-documented phonological process of some varieties of English
(TH-stopping, TH-fronting, H-dropping, final devoicing, ...), written as regular-expression
rewrites of espeak-ng's English phoneme mnemonics (``espeak-ng -x``) word by word.

:func:`draw_accent` draws a *pseudo-accent* (a few processes, each with one of its
realisations, and how consistently it applies); :func:`perturb` rewrites a phoneme string with
it; :func:`phonemes` asks espeak-ng for a voice's phonemes of a text. The corpus
(:mod:`carousel.speech.synth`) speaks the rewritten phonemes with ``[[...]]`` input.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PROCESSES",
    "Accent",
    "Process",
    "draw_accent",
    "espeak_phonemes",
    "perturb",
    "phonemes",
]


@dataclass(frozen=True)
class Process:
    """One phonological process: its ``name``, what it does (``about``) and its
    ``realisations``, each a tuple of ``(pattern, replacement)`` rewrites applied in order to
    one word's phoneme mnemonics (stress marks ``'`` and ``,`` included, trailing pause marks
    removed)."""

    name: str
    about: str
    realisations: tuple[tuple[tuple[str, str], ...], ...]


_ON = r"(^|[',])"  # the start of a word or of a stressed syllable
_LAX_I = r"(?<![aeOo@])I(?![@2#:])"  # the KIT vowel, not part of aI eI OI I@ I2 I#
_LAX_U = r"(?<![ao@])U(?![@:])"  # the FOOT vowel, not part of aU oU @U U@
_DRESS = r"E(?!@)"
_TRAP = r"(?<!a)a(?![IU#a:])"  # not part of aI aU a# aa a:

#: The processes pseudo-accents are made of. The realisations use only mnemonics that every
#: English phoneme table of espeak-ng has (``t[`` and ``d[`` are dental stops).
PROCESSES: tuple[Process, ...] = (
    Process(
        "th-stopping",
        "the dental fricatives as stops (Irish, Caribbean, Indian, West African, New York)",
        ((("T", "t"), ("D", "d")), (("T", "t["), ("D", "d["))),
    ),
    Process(
        "th-fronting",
        "the dental fricatives as labiodental (London, African American, Caribbean)",
        ((("T", "f"), ("D", "v")),),
    ),
    Process(
        "th-alveolar",
        "the dental fricatives as sibilants (many second-language Englishes)",
        ((("T", "s"), ("D", "z")),),
    ),
    Process(
        "g-dropping",
        "unstressed -ing with an alveolar nasal (most varieties, informally)",
        ((("(?<=[^',])IN$", "In"),),),
    ),
    Process(
        "h-dropping",
        "no /h/ before vowels (most of England, Wales, Caribbean)",
        (((_ON + "h", r"\1"),),),
    ),
    Process(
        "final-devoicing",
        "voiced obstruents voiceless at the end of a word (Germanic and Slavic learners)",
        ((("dZ$", "tS"), ("z$", "s"), ("v$", "f"), ("(?<![#])d$", "t"), ("g$", "k"), ("b$", "p")),),
    ),
    Process(
        "cluster-reduction",
        "a final /t/ or /d/ after a consonant dropped (African American, Caribbean, Indian)",
        ((("([nlsfkp])[td]$", r"\1"),),),
    ),
    Process(
        "full-vowels",
        "unreduced vowels in unstressed syllables (syllable-timed: Caribbean, Indian, West "
        "African, Singapore)",
        (
            (("3(?!:)(r-)?$", "a#"), ("@L", "El")),
            (("3(?!:)(r-)?$", "a#"), ("@L", "a#l")),
            (("(?<![eIOAUa])@(?=[nmlst])", "V"), ("@L", "El")),
        ),
    ),
    Process(
        "monophthongs",
        "FACE and GOAT as long monophthongs (Scottish, Irish, Welsh, Caribbean, Indian)",
        ((("eI", "e:"), ("oU", "o:"), ("@U", "o:")),),
    ),
    Process(
        "glide-weakening",
        "PRICE as a long monophthong (Southern US)",
        ((("aI(?![@3])", "a:"),),),
    ),
    Process(
        "tense-lax",
        "KIT and FOOT merged with FLEECE and GOOSE (many second-language Englishes)",
        (((_LAX_I, "i:"), (_LAX_U, "u:")),),
    ),
    Process(
        "foot-strut",
        "STRUT said like FOOT (Northern England)",
        ((("V", "U"),),),
    ),
    Process(
        "front-shift",
        "the short front vowels moved together: raised (New Zealand, South Africa) or lowered "
        "(Canada, California); each chain rewritten from its far end, so no vowel moves twice",
        (
            ((_LAX_I, "@"), (_DRESS, "I"), (_TRAP, "E")),
            ((_TRAP, "A:"), (_DRESS, "a"), (_LAX_I, "E")),
        ),
    ),
    Process(
        "back-vowels",
        "LOT and THOUGHT unrounded and merged (North America) or LOT rounded like THOUGHT",
        ((("0", "A:"), ("O:", "A:")), (("0", "O:"),)),
    ),
    Process(
        "strut-quality",
        "STRUT central, back or front (the vowel English accents differ in most)",
        ((("V", "@"),), (("V", "0"),), (("V", "a"),)),
    ),
    Process(
        "diphthong-shift",
        "PRICE, FACE and GOAT shifted along (London, Australia): PRICE towards CHOICE, FACE "
        "towards PRICE, GOAT towards MOUTH",
        ((("aI(?![@3])", "OI"), ("eI", "aI"), ("oU", "aU"), ("@U", "aU")),),
    ),
    Process(
        "w-v",
        "/w/ and /v/ exchanged or merged (Indian, German and Slavic learners)",
        (((_ON + "w", r"\1v"),), ((_ON + "v", r"\1w"),)),
    ),
)

_BY_NAME = {p.name: p for p in PROCESSES}
_PAUSE = re.compile(r"(_:?)*$")


@dataclass(frozen=True)
class Accent:
    """A pseudo-accent: ``(process name, realisation index)`` pairs and the probability
    (``strength``) with which each applies at each word it could change."""

    processes: tuple[tuple[str, int], ...]
    strength: float

    def __post_init__(self) -> None:
        for name, k in self.processes:
            if name not in _BY_NAME:
                raise ValueError(
                    f"Accent: unknown process {name!r}; expected one of {list(_BY_NAME)}"
                )
            n = len(_BY_NAME[name].realisations)
            if not 0 <= k < n:
                raise ValueError(f"Accent: process {name!r} has realisations 0..{n - 1}, got {k}")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"Accent: strength must be in [0, 1], got {self.strength}")


def draw_accent(
    rng: np.random.Generator,
    *,
    rate: float = 0.3,
    processes: tuple[str, ...] | None = None,
) -> Accent:
    """A random pseudo-accent: each process of ``processes`` (default all of
    :data:`PROCESSES`) is in it with probability ``rate``, with a random realisation, and the
    accent applies its processes at a word with a probability drawn from U(0.5, 1).

    Raises:
        ValueError: ``rate`` outside [0, 1] or an unknown process name.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"draw_accent: rate must be in [0, 1], got {rate}")
    names = PROCESSES if processes is None else tuple(_by_name(n) for n in processes)
    chosen = []
    for p in names:
        on = rng.random() < rate
        k = int(rng.integers(len(p.realisations)))  # drawn either way: a fixed number of draws
        if on:
            chosen.append((p.name, k))
    return Accent(tuple(chosen), float(rng.uniform(0.5, 1.0)))


def _by_name(name: str) -> Process:
    if name not in _BY_NAME:
        raise ValueError(
            f"unknown pronunciation process {name!r}; expected one of {list(_BY_NAME)}"
        )
    return _BY_NAME[name]


def perturb(phoneme_text: str, accent: Accent, rng: np.random.Generator) -> str:
    """Rewrite espeak-ng phoneme mnemonics (words separated by spaces) with ``accent``: at
    each word, each process of the accent applies with probability ``accent.strength``."""
    rewrites = [_BY_NAME[name].realisations[k] for name, k in accent.processes]
    words = []
    for word in phoneme_text.split():
        pause = _PAUSE.search(word)
        assert pause is not None  # (_:?)*$ matches every string, if only emptily at its end
        core, tail = word[: pause.start()], word[pause.start() :]
        for rules in rewrites:
            if rng.random() < accent.strength:
                for pattern, repl in rules:
                    core = re.sub(pattern, repl, core)
        words.append(core + tail)
    return " ".join(words)


def espeak_phonemes(args: list[str], *, espeak: str = "espeak-ng", stdin: str | None = None) -> str:
    """The output of ``espeak-ng -q -x ARGS`` (phoneme mnemonics; ``stdin`` as its input).

    Raises:
        RuntimeError: espeak-ng failed (its message is included).
    """
    cmd = [espeak, "-q", "-x", *args]
    res = subprocess.run(cmd, capture_output=True, check=False, text=True, input=stdin)
    if res.returncode != 0:
        raise RuntimeError(f"espeak-ng failed (exit {res.returncode}) for {cmd!r}: {res.stderr}")
    return res.stdout


def phonemes(text: str, voice: str, *, espeak: str = "espeak-ng") -> str:
    """espeak-ng's phoneme mnemonics of ``text`` in ``voice`` (``espeak-ng -q -x``).

    Raises:
        RuntimeError: espeak-ng failed (its message is included).
    """
    return " ".join(espeak_phonemes(["-v", voice, text], espeak=espeak).split())
