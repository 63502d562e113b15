"""Speech recognition data: 16-bit PCM WAV reading and resampling, manifests of the user's
recordings, log-mel features, and a synthetic corpus spoken by espeak-ng (see
``docs/results.md``, section Speech, and the ``speech`` and ``speech-words`` tasks).

``librosa`` (the ``[speech]`` extra) provides the mel filters; espeak-ng (a system package)
synthesises the corpus.
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
from carousel.speech.features import FeatureConfig, log_mel
from carousel.speech.synth import (
    CorpusSpec,
    EspeakNotFoundError,
    Utterance,
    espeak_binary,
    load_shard,
    prepare_corpus,
    synthesize,
    utterance_plan,
)

__all__ = [
    "CorpusSpec",
    "EspeakNotFoundError",
    "FeatureConfig",
    "ManifestEntry",
    "ManifestError",
    "Utterance",
    "espeak_binary",
    "load_shard",
    "log_mel",
    "prepare_corpus",
    "read_manifest",
    "read_wav",
    "resample",
    "synthesize",
    "utterance_plan",
    "write_manifest",
    "write_wav",
]
