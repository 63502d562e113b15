"""Speech recognition data: 16-bit PCM WAV reading and resampling, manifests of the user's
recordings, log-mel features, and a synthetic corpus spoken by espeak-ng (see
``docs/results.md``, section Speech, and the ``speech`` and ``speech-words`` tasks).

``librosa`` (the ``[speech]`` extra) provides the mel filters; espeak-ng (a system package)
synthesises the corpus, optionally with pseudo-accents (:mod:`carousel.speech.pronunciation`),
second-language English (:mod:`carousel.speech.l2`) and CMU Flite as a second synthesiser.
"""

from carousel.speech.audio import (
    ManifestEntry,
    ManifestError,
    read_manifest,
    read_wav,
    resample,
    write_manifest,
    write_wav,
)
from carousel.speech.features import FeatureConfig, augment, log_mel
from carousel.speech.l2 import L2_LANGUAGES, l2_phonemes
from carousel.speech.pronunciation import PROCESSES, Accent, Process, draw_accent, perturb
from carousel.speech.synth import (
    CorpusSpec,
    EspeakNotFoundError,
    Utterance,
    espeak_binary,
    flite_binary,
    load_shard,
    prepare_corpus,
    synthesize,
    utterance_plan,
)

__all__ = [
    "L2_LANGUAGES",
    "PROCESSES",
    "Accent",
    "CorpusSpec",
    "EspeakNotFoundError",
    "FeatureConfig",
    "ManifestEntry",
    "ManifestError",
    "Process",
    "Utterance",
    "augment",
    "draw_accent",
    "espeak_binary",
    "flite_binary",
    "l2_phonemes",
    "load_shard",
    "log_mel",
    "perturb",
    "prepare_corpus",
    "read_manifest",
    "read_wav",
    "resample",
    "synthesize",
    "utterance_plan",
    "write_manifest",
    "write_wav",
]
