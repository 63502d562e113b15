"""A synthetic speech corpus made with the espeak-ng synthesiser (run as a subprocess).

Every utterance is a function of ``(seed, split, index)`` alone: its text, accent (an
espeak-ng English voice), voice variant (``+m3``, ``+f2``, ``+klatt``, ...), speaking rate,
pitch and gap between words are drawn from a generator seeded by those three
numbers, espeak-ng speaks it, and the waveform is resampled to 16 kHz, padded with silence,
scaled by a random gain and mixed with noise (white or brown) at a random signal-to-noise
ratio, then turned into normalised log-mel features (:func:`~carousel.speech.features.log_mel`).
Utterances are generated in shards of :data:`SHARD_SIZE`, each cached as one ``.npz`` file in
a folder named after a hash of the settings, so a corpus is generated once, in parallel
processes (:func:`prepare_corpus`), and read back by every later run.

espeak-ng applies a voice variant only when written as ``LANGUAGE+VARIANT`` with the voice's
language name (``en-us+m3``); other spellings silently ignore the variant.

Optionally (``CorpusSpec.flite``) a share of the training utterances is spoken by a second
synthesiser, CMU Flite (Debian package ``flite``; voices :data:`FLITE_VOICES`, written
``flite:NAME``): concatenative and statistical voices made from recordings of four speakers,
acoustically unlike espeak-ng's formant synthesis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from carousel.speech.audio import read_wav
from carousel.speech.features import FeatureConfig, log_mel
from carousel.speech.l2 import L2_LANGUAGES, SUBSTITUTES, l2_phonemes
from carousel.speech.l2 import REPLACED as L2_REPLACED
from carousel.speech.pronunciation import PROCESSES, Accent, draw_accent, perturb, phonemes

__all__ = [
    "ACCENTS",
    "DIGIT_WORDS",
    "FLITE_VOICES",
    "SHARD_SIZE",
    "VARIANTS",
    "CorpusSpec",
    "EspeakNotFoundError",
    "Utterance",
    "default_cache_dir",
    "espeak_binary",
    "flite_binary",
    "load_shard",
    "prepare_corpus",
    "synthesize",
    "utterance_plan",
]

log = logging.getLogger(__name__)

#: Utterances per cached shard.
SHARD_SIZE = 64

#: English accents of espeak-ng (voice names) usable with variants.
ACCENTS = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
    "en-gb-scotland",
    "en-029",
)

#: espeak-ng voice variants (``espeak-ng-data/voices/!v``) used by the corpus. The names are
#: file names and case-sensitive: ``en+alex`` is silently the default voice, ``en+Alex`` is Alex.
VARIANTS = (
    *(f"m{i}" for i in range(1, 9)),
    *(f"f{i}" for i in range(1, 6)),
    "klatt", "klatt2", "klatt3", "klatt4",
    "adam", "Alex", "Andy", "Annie", "aunty", "belinda", "benjamin", "boris", "caleb",
    "david", "ed", "edward", "grandma", "grandpa", "iven", "iven2", "john", "linda", "max",
    "michel", "norbert", "paul", "pedro", "quincy", "rob", "robert", "steph", "steph2",
    "travis", "victor", "zac",
)  # fmt: skip

#: CMU Flite's built-in English voices (``flite -lv``) and the mean pitch (Hz) each is given
#: for the middle of the corpus' pitch range: kal16 (US male, diphones), awb (Scottish male),
#: rms (US male), slt (US female; the last three statistical parametric voices).
FLITE_VOICES = {"kal16": 105.0, "awb": 110.0, "rms": 105.0, "slt": 170.0}

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_INSTALL = (
    "espeak-ng is needed to synthesise the speech corpus but was not found on PATH; install "
    "it with `apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS) or "
    "`dnf install espeak-ng`, or train on your own WAV files with a manifest "
    "(data.train_manifest)"
)


class EspeakNotFoundError(RuntimeError):
    """espeak-ng (or Flite, when asked for) is not installed (the message says how to install
    it)."""


def flite_binary() -> str:
    """The path of the ``flite`` program.

    Raises:
        EspeakNotFoundError: when it is not installed.
    """
    path = shutil.which("flite")
    if path is None:
        raise EspeakNotFoundError(
            "CMU Flite is needed for a corpus with data.flite > 0 but was not found on PATH; "
            "install it with `apt-get install flite` (Debian/Ubuntu) or `brew install flite`, "
            "or set data.flite = 0"
        )
    return path


def espeak_binary() -> str:
    """The path of the espeak-ng program.

    Raises:
        EspeakNotFoundError: when it is not installed.
    """
    path = shutil.which("espeak-ng") or shutil.which("espeak")
    if path is None:
        raise EspeakNotFoundError(_INSTALL)
    return path


def default_cache_dir() -> Path:
    """``$CAROUSEL_CACHE/speech``, or ``~/.cache/carousel/speech``."""
    root = os.environ.get("CAROUSEL_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "carousel"
    return base / "speech"


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that decides a generated corpus (its cache folder is a hash of this).

    Attributes:
        kind: ``"digits"`` (strings of spoken digits, transcribed as ``"0".."9"``) or
            ``"words"`` (phrases over ``vocabulary``, transcribed in lowercase letters and
            spaces).
        vocabulary: the words of ``"words"`` phrases.
        min_len, max_len: digits or words per utterance.
        seed: the corpus seed.
        accents, variants: the voices drawn from for each split, as
            ``{split: (names, ...)}`` mappings given as sorted tuples of pairs.
        sizes: utterances per split, ``((split, n), ...)``, rounded up to whole shards of
            :data:`SHARD_SIZE`.
        noise: scale of the added noise and gain changes (0: clean, unit gain).
        features: the log-mel settings.
        pronunciation: the share of *training* utterances spoken with a random
            pseudo-accent (:func:`carousel.speech.pronunciation.draw_accent`: espeak-ng's
            phonemes rewritten by phonological processes of English accents); 0 (the default)
            speaks every utterance as the voice does.
        pronunciation_processes: the processes pseudo-accents are drawn from (names of
            :data:`carousel.speech.pronunciation.PROCESSES`; empty: all of them).
        l2: the share of *training* utterances spoken as second-language English
            (:mod:`carousel.speech.l2`: the English phonemes, some vowels replaced by a
            learner's nearest native ones, spoken by another language's voice); 0 (the
            default): none.
        l2_languages: the espeak-ng languages drawn from (empty: all of
            :data:`~carousel.speech.l2.L2_LANGUAGES`).
        flite: the share of *training* utterances spoken by CMU Flite (a voice of
            :data:`FLITE_VOICES`) instead of espeak-ng; 0 (the default): none.
    """

    kind: str
    vocabulary: tuple[str, ...]
    min_len: int
    max_len: int
    seed: int
    accents: tuple[tuple[str, tuple[str, ...]], ...]
    variants: tuple[tuple[str, tuple[str, ...]], ...]
    sizes: tuple[tuple[str, int], ...]
    noise: float = 1.0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    pronunciation: float = 0.0
    pronunciation_processes: tuple[str, ...] = ()
    flite: float = 0.0
    l2: float = 0.0
    l2_languages: tuple[str, ...] = ()

    def size(self, split: str) -> int:
        """Utterances of ``split``: its size rounded up to whole shards."""
        return self.num_shards(split) * SHARD_SIZE

    def num_shards(self, split: str) -> int:
        return -(-dict(self.sizes)[split] // SHARD_SIZE)

    def digest(self) -> str:
        """A hash of everything but the sizes (utterance ``i`` does not depend on them, so a
        larger corpus reuses the shards of a smaller one)."""
        d = asdict(self)
        del d["sizes"]
        if self.pronunciation == 0:  # the corpora made before pseudo-accents keep their hash
            del d["pronunciation"], d["pronunciation_processes"]
        else:  # the processes' rewrites themselves, so editing one makes a new corpus
            names = self.pronunciation_processes or [p.name for p in PROCESSES]
            d["pronunciation_processes"] = [asdict(p) for p in PROCESSES if p.name in names]
        if self.l2 == 0:
            del d["l2"], d["l2_languages"]
        else:  # the substitutes too, so editing them makes a new corpus
            d["l2_languages"] = list(self.l2_languages or L2_LANGUAGES)
            d["l2_substitutes"] = SUBSTITUTES
            d["l2_replaced"] = sorted(L2_REPLACED)
        if self.flite == 0:
            del d["flite"]
        else:
            d["flite_voices"] = FLITE_VOICES
        text = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(("carousel-speech-v2" + text).encode()).hexdigest()[:16]


class Utterance(NamedTuple):
    """One planned utterance: the ``text`` (transcript), what espeak-ng is asked to say
    (``spoken``), the ``voice`` (``ACCENT+VARIANT``), ``rate`` (words per minute), ``pitch``
    (0-99), word ``gap`` (10 ms units), the post-processing: leading and
    trailing silence (s), ``gain`` and noise (``snr_db``, ``noise_kind``), and the
    pseudo-``accent`` its phonemes are rewritten with (``None``: as the voice says them), or
    the language ``l2`` whose voice speaks the English voice's phonemes, each vowel kept
    with probability ``l2_keep`` (:func:`carousel.speech.l2.l2_phonemes`)."""

    text: str
    spoken: str
    voice: str
    rate: int
    pitch: int
    gap: int
    lead: float
    trail: float
    gain: float
    snr_db: float
    noise_kind: str
    accent: Accent | None = None
    l2: str | None = None
    l2_keep: float = 1.0


_SPLIT_IDS = {"train": 0, "voices": 1, "unseen_variants": 2, "held_out_accent": 3}


def _split_id(split: str) -> int:
    return _SPLIT_IDS.get(split, sum(map(ord, split)) + 100)


def utterance_plan(spec: CorpusSpec, split: str, index: int) -> Utterance:
    """The parameters of utterance ``index`` of ``split`` (a pure function of its arguments).

    Raises:
        ValueError: a split the spec does not have.
    """
    accents, variants = dict(spec.accents), dict(spec.variants)
    if split not in accents:
        raise ValueError(
            f"utterance_plan: unknown split {split!r}; expected one of {list(accents)}"
        )
    rng = np.random.default_rng([spec.seed, _split_id(split), index])
    n = int(rng.integers(spec.min_len, spec.max_len + 1))
    if spec.kind == "digits":
        ids = rng.integers(0, 10, n)
        text = "".join(str(int(i)) for i in ids)
        spoken = " ".join(DIGIT_WORDS[int(i)] for i in ids)
    else:
        words = [spec.vocabulary[int(i)] for i in rng.integers(0, len(spec.vocabulary), n)]
        text = spoken = " ".join(words)
    acc, var = accents[split], variants[split]
    voice = f"{acc[int(rng.integers(len(acc)))]}+{var[int(rng.integers(len(var)))]}"
    s = spec.noise
    utt = Utterance(
        text=text,
        spoken=spoken,
        voice=voice,
        rate=int(rng.integers(120, 221)),
        pitch=int(rng.integers(20, 81)),
        gap=int(rng.integers(0, 16)),
        lead=float(rng.uniform(0.02, 0.3)),
        trail=float(rng.uniform(0.02, 0.3)),
        gain=float(10 ** (rng.uniform(-20, 0) * s / 20)),
        snr_db=float(rng.uniform(15, 40)) if s > 0 else float("inf"),
        noise_kind=("white", "brown")[int(rng.integers(2))],
    )
    # drawn last, so that the utterances of corpora without pseudo-accents stay the same
    if split == "train" and spec.pronunciation > 0 and rng.random() < spec.pronunciation:
        processes = spec.pronunciation_processes or None
        utt = utt._replace(accent=draw_accent(rng, processes=processes))
    if split == "train" and spec.l2 > 0 and rng.random() < spec.l2:
        languages = spec.l2_languages or L2_LANGUAGES
        language = languages[int(rng.integers(len(languages)))]
        utt = utt._replace(accent=None, l2=language, l2_keep=float(rng.uniform(0.3, 1.0)))
    if split == "train" and spec.flite > 0 and rng.random() < spec.flite:
        names = sorted(FLITE_VOICES)
        voice = f"flite:{names[int(rng.integers(len(names)))]}"
        utt = utt._replace(voice=voice, accent=None, l2=None, l2_keep=1.0)
    return utt


def synthesize(utt: Utterance, sample_rate: int = 16000, *, seed: int = 0) -> np.ndarray:
    """Speak a planned utterance with espeak-ng (Flite for ``flite:`` voices) and
    post-process it (silence, gain, noise).

    Args:
        utt: from :func:`utterance_plan`.
        sample_rate: output rate (Hz).
        seed: seeds the noise.

    Returns:
        float32 ``(N,)`` audio at ``sample_rate``.

    Raises:
        EspeakNotFoundError: espeak-ng (or Flite) is not installed.
        RuntimeError: the synthesiser failed (its message is included).
    """
    if utt.voice.startswith("flite:"):
        audio = _flite(utt, sample_rate)
    else:
        audio = _espeak(utt, sample_rate, seed)
    rng = np.random.default_rng([seed, len(utt.spoken), utt.rate, utt.pitch])
    x = np.concatenate(
        [np.zeros(int(utt.lead * sample_rate)), audio, np.zeros(int(utt.trail * sample_rate))]
    )
    x = x / (np.abs(x).max() + 1e-9) * 0.9 * utt.gain
    if np.isfinite(utt.snr_db):
        noise = rng.standard_normal(len(x))
        if utt.noise_kind == "brown":
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(401) / 401, mode="same")  # no drift
        p_sig = float(np.mean(audio**2)) * (0.9 * utt.gain / (np.abs(audio).max() + 1e-9)) ** 2
        noise *= np.sqrt(p_sig / 10 ** (utt.snr_db / 10) / (np.mean(noise**2) + 1e-12))
        x = x + noise
    return np.clip(x, -1, 1).astype(np.float32)


def _failed(program: str, cmd: list[str], res: subprocess.CompletedProcess) -> RuntimeError:
    return RuntimeError(
        f"{program} failed (exit {res.returncode}) for {' '.join(cmd)!r}: "
        f"{res.stderr.decode(errors='replace').strip()}"
    )


def _espeak(utt: Utterance, sample_rate: int, seed: int) -> np.ndarray:
    espeak = espeak_binary()
    spoken, voice = utt.spoken, utt.voice
    if utt.accent is not None and utt.accent.processes:
        said = phonemes(spoken, utt.voice, espeak=espeak)
        rng = np.random.default_rng([seed, len(spoken), utt.rate, utt.pitch, 1])
        spoken = f"[[{perturb(said, utt.accent, rng)}]]"
    elif utt.l2 is not None:  # the English voice's phonemes, said by the language's voice
        english, _, variant = utt.voice.partition("+")
        rng = np.random.default_rng([seed, len(spoken), utt.rate, utt.pitch, 2])
        said = l2_phonemes(spoken, utt.l2, voice=english, keep=utt.l2_keep, rng=rng, espeak=espeak)
        spoken, voice = f"[[{said}]]", f"{utt.l2}+{variant}" if variant else utt.l2
    cmd = [espeak, "-v", voice, "-s", str(utt.rate), "-p", str(utt.pitch)]
    cmd += ["-g", str(utt.gap), "--stdout", spoken]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0 or not res.stdout:
        raise _failed("espeak-ng", cmd, res)
    return read_wav(res.stdout, sample_rate=sample_rate)[0]


def _flite(utt: Utterance, sample_rate: int) -> np.ndarray:
    """Flite's reading: the rate as a duration stretch against espeak-ng's 170 words per
    minute, the pitch (0-99) as 0.8-1.2 times the voice's mean pitch; no word gaps."""
    voice = utt.voice.split(":", 1)[1]
    if voice not in FLITE_VOICES:
        raise ValueError(f"unknown Flite voice {voice!r}; expected one of {list(FLITE_VOICES)}")
    f0 = FLITE_VOICES[voice] * (0.8 + 0.4 * utt.pitch / 99)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "utt.wav")
        cmd = [flite_binary(), "-voice", voice, "--setf", f"duration_stretch={170 / utt.rate:.4f}"]
        cmd += ["--setf", f"int_f0_target_mean={f0:.1f}", "-t", utt.spoken, "-o", out]
        res = subprocess.run(cmd, capture_output=True, check=False)
        if res.returncode != 0 or not os.path.exists(out):
            raise _failed("flite", cmd, res)
        return read_wav(out, sample_rate=sample_rate)[0]


def _shard_path(spec: CorpusSpec, cache_dir: Path, split: str, shard: int) -> Path:
    return cache_dir / spec.digest() / f"{split}-{shard:04d}.npz"


def _make_shard(args: tuple[CorpusSpec, str, int, str]) -> str:
    spec, split, shard, cache = args
    path = _shard_path(spec, Path(cache), split, shard)
    if path.exists():
        return str(path)
    start = shard * SHARD_SIZE
    stop = start + SHARD_SIZE
    feats, texts, voices = [], [], []
    for i in range(start, stop):
        utt = utterance_plan(spec, split, i)
        audio = synthesize(utt, spec.features.sample_rate, seed=spec.seed * 1_000_003 + i)
        feats.append(log_mel(audio, spec.features).astype(np.float16))
        texts.append(utt.text)
        voices.append(utt.voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    np.savez(
        tmp,
        features=np.concatenate(feats),
        lengths=np.array([len(f) for f in feats]),
        texts=np.array(texts),
        voices=np.array(voices),
    )
    os.replace(tmp, path)
    return str(path)


def load_shard(
    spec: CorpusSpec, split: str, shard: int, *, cache_dir: str | os.PathLike | None = None
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The features, transcripts and voices of one shard, generated first if not cached.

    Returns:
        ``(features, texts, voices)``: lists of float32 ``(T_i, n_mels)`` arrays, strings.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if not 0 <= shard < spec.num_shards(split):
        raise ValueError(
            f"load_shard: shard must be in [0, {spec.num_shards(split) - 1}] for split "
            f"{split!r}, got {shard}"
        )
    path = Path(_make_shard((spec, split, shard, str(cache))))
    with np.load(path) as z:
        offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
        f = z["features"].astype(np.float32)
        feats = [f[offsets[i] : offsets[i + 1]] for i in range(len(z["lengths"]))]
        return feats, [str(t) for t in z["texts"]], [str(v) for v in z["voices"]]


def prepare_corpus(
    spec: CorpusSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    processes: int | None = None,
) -> Path:
    """Generate every missing shard of ``spec``, in ``processes`` worker processes.

    Args:
        spec: the corpus.
        cache_dir: the cache root (default :func:`default_cache_dir`).
        splits: which splits (default all).
        processes: worker processes (default ``os.cpu_count()``; 1 runs in this process).

    Returns:
        The corpus folder.

    Raises:
        EspeakNotFoundError: espeak-ng is not installed.
    """
    espeak_binary()
    if spec.flite > 0:
        flite_binary()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    # evaluation splits first: a partly generated corpus can already be evaluated
    splits = list(splits) if splits is not None else [s for s, _ in spec.sizes][::-1]
    jobs = [
        (spec, s, k, str(cache))
        for s in splits
        for k in range(spec.num_shards(s))
        if not _shard_path(spec, cache, s, k).exists()
    ]
    processes = processes or os.cpu_count() or 1
    log.info("speech corpus %s: %d shards to generate", spec.digest(), len(jobs))
    if processes == 1 or len(jobs) <= 1:
        for job in jobs:
            _make_shard(job)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(processes) as pool:
            for _ in pool.imap_unordered(_make_shard, jobs):
                pass
    return cache / spec.digest()
