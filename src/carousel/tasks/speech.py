"""The ``speech`` and ``speech-words`` tasks: CTC speech recognition from log-mel features of
utterances synthesised by espeak-ng (:mod:`carousel.speech.synth`), or of the user's own WAV
files listed in a manifest (:mod:`carousel.speech.audio`).

``speech`` reads strings of spoken digits (labels ``0``-``9``); ``speech-words`` reads short
phrases over a vocabulary of a few hundred English words as characters (letters and space).
Evaluation splits: ``voices`` (new utterances by the training voices), ``unseen_variants``
(voice variants never trained on, training accents) and ``held_out_accent`` (an accent never
trained on, training variants); with ``eval_manifest`` set, ``manifest`` (the user's files).
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from carousel.ctc import Alphabet, character_error_rate, ctc_loss, greedy_decode, word_error_rate
from carousel.models import ModelOutput
from carousel.models.ctc_recognizer import CTCRecognizer, RecognizerModelConfig
from carousel.speech.features import FeatureConfig, augment
from carousel.speech.l2 import L2_LANGUAGES
from carousel.speech.pronunciation import PROCESSES
from carousel.speech.synth import ACCENTS, SHARD_SIZE, VARIANTS, CorpusSpec, load_shard
from carousel.tasks.base import Batch, Task
from carousel.tasks.registry import register_task

__all__ = ["SpeechConfig", "SpeechTask", "SpeechWordsConfig", "SpeechWordsTask", "collate"]

#: Variants held out by default (never heard in training). Each has training variants close
#: to it (formant scales, pitch range, synthesiser); the most extreme voice, ``zac`` (a child:
#: formants at 145%, pitch 240-390 Hz, beyond every other variant), is trained on, because
#: holding it out tests extrapolation, not generalisation to a new voice (docs/speech.md).
HELD_OUT_VARIANTS = ("m7", "f4", "klatt3", "Andy", "belinda", "john", "steph2", "rob")


@dataclass(frozen=True)
class SpeechConfig:
    """What the speech task reads (the ``[data]`` table)."""

    # digits: strings of spoken digits; words: phrases over `vocabulary_size` English words
    kind: str = "digits"
    # digits (or words) per utterance
    min_len: int = 3
    max_len: int = 7
    # words of carousel.speech.vocabulary.WORDS (487) used by the words task
    vocabulary_size: int = 300
    # utterances generated for training and for each evaluation split (rounded up to shards
    # of 64; a larger corpus reuses the cached shards of a smaller one)
    train_size: int = 4096
    eval_size: int = 256
    # accents (espeak-ng voices) never trained on, evaluated as `held_out_accent`
    held_out_accents: tuple[str, ...] = ("en-029",)
    # voice variants never trained on, evaluated as `unseen_variants`
    held_out_variants: tuple[str, ...] = HELD_OUT_VARIANTS
    # scale of additive noise and gain changes (0: clean audio)
    noise: float = 1.0
    # seed of the generated corpus (fixed per corpus; the run's seed orders the batches)
    corpus_seed: int = 0
    # mel bands of the features
    n_mels: int = 40
    # share of training utterances spoken with a random pseudo-accent: espeak-ng's phonemes
    # rewritten by phonological processes of English accents (TH-stopping, H-dropping, final
    # devoicing, ...; carousel.speech.pronunciation); 0: as the voices say them
    pronunciation: float = 0.0
    # the processes pseudo-accents are drawn from (empty: all of PROCESSES)
    pronunciation_processes: tuple[str, ...] = ()
    # share of training utterances spoken by CMU Flite (apt-get install flite; voices kal16,
    # awb, rms, slt) instead of espeak-ng; 0: none
    flite: float = 0.0
    # share of training utterances spoken as second-language English: the English phonemes,
    # some vowels replaced by a learner's nearest native ones, spoken by the voice of another
    # language (carousel.speech.l2); 0: none
    l2: float = 0.0
    # the languages (espeak-ng voices) of l2 utterances (empty: all of L2_LANGUAGES)
    l2_languages: tuple[str, ...] = ()
    # training-batch augmentation (carousel.speech.features.augment; 0 turns each off):
    # largest relative frequency warp of the mel axis (vocal tract length perturbation)
    warp: float = 0.0
    # largest relative stretch of the bands below a random knot in the lower half (the first
    # formant moved against the others: vowel qualities shift, as between accents)
    formant_warp: float = 0.0
    # largest relative tempo change (the frame axis resampled)
    tempo: float = 0.0
    # SpecAugment: two masks of up to freq_mask mel bands and two of up to time_mask frames
    freq_mask: int = 0
    time_mask: int = 0
    # cache root for generated corpora ("" = $CAROUSEL_CACHE/speech or ~/.cache/carousel/speech)
    cache_dir: str = ""
    # your own data: manifests of 16-bit PCM WAV files ("path<TAB>transcript" lines); when
    # train_manifest is set, it replaces the synthetic corpus
    train_manifest: str = ""
    eval_manifest: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("digits", "words"):
            raise ValueError(f"SpeechConfig: kind must be 'digits' or 'words', got {self.kind!r}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"SpeechConfig: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        for name in ("vocabulary_size", "train_size", "eval_size", "n_mels"):
            if getattr(self, name) < 1:
                raise ValueError(f"SpeechConfig: {name} must be >= 1, got {getattr(self, name)}")
        for a in self.held_out_accents:
            if a not in ACCENTS:
                raise ValueError(
                    f"SpeechConfig: held_out_accents: unknown accent {a!r}; expected some of "
                    f"{list(ACCENTS)}"
                )
        for v in self.held_out_variants:
            if v not in VARIANTS:
                raise ValueError(
                    f"SpeechConfig: held_out_variants: unknown variant {v!r}; expected some of "
                    f"{list(VARIANTS)}"
                )
        if len(self.held_out_accents) >= len(ACCENTS) or len(self.held_out_variants) >= len(
            VARIANTS
        ):
            raise ValueError("SpeechConfig: at least one accent and variant must be trained on")
        if self.noise < 0:
            raise ValueError(f"SpeechConfig: noise must be >= 0, got {self.noise}")
        for name in ("pronunciation", "flite", "l2"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"SpeechConfig: {name} must be in [0, 1], got {getattr(self, name)}"
                )
        known = [p.name for p in PROCESSES]
        for name in self.pronunciation_processes:
            if name not in known:
                raise ValueError(
                    f"SpeechConfig: pronunciation_processes: unknown process {name!r}; "
                    f"expected some of {known}"
                )
        for name in self.l2_languages:
            if name not in L2_LANGUAGES:
                raise ValueError(
                    f"SpeechConfig: l2_languages: unknown language {name!r}; expected some of "
                    f"{list(L2_LANGUAGES)}"
                )
        for name in ("warp", "tempo", "formant_warp"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(
                    f"SpeechConfig: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        for name in ("freq_mask", "time_mask"):
            if getattr(self, name) < 0:
                raise ValueError(f"SpeechConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.freq_mask >= self.n_mels:
            raise ValueError(
                f"SpeechConfig: freq_mask must be < n_mels ({self.n_mels}), got {self.freq_mask}"
            )

    @property
    def alphabet(self) -> Alphabet:
        """``0``-``9`` for digits; space and ``a``-``z`` for words."""
        return Alphabet("0123456789" if self.kind == "digits" else " " + string.ascii_lowercase)

    def vocabulary(self) -> tuple[str, ...]:
        """The words of the words task: ``vocabulary_size`` words drawn with a fixed seed from
        :data:`carousel.speech.vocabulary.WORDS` (empty for digits)."""
        if self.kind == "digits":
            return ()
        from carousel.speech.vocabulary import WORDS

        if self.vocabulary_size > len(WORDS):
            raise ValueError(
                f"SpeechConfig: vocabulary_size must be <= {len(WORDS)}, got {self.vocabulary_size}"
            )
        idx = np.random.default_rng(12345).choice(len(WORDS), self.vocabulary_size, replace=False)
        return tuple(sorted(WORDS[int(i)] for i in idx))

    def corpus(self) -> CorpusSpec:
        """The synthetic corpus of this config."""
        train_acc = tuple(a for a in ACCENTS if a not in self.held_out_accents)
        train_var = tuple(v for v in VARIANTS if v not in self.held_out_variants)
        return CorpusSpec(
            kind=self.kind,
            vocabulary=self.vocabulary(),
            min_len=self.min_len,
            max_len=self.max_len,
            seed=self.corpus_seed,
            accents=(
                ("train", train_acc),
                ("voices", train_acc),
                ("unseen_variants", train_acc),
                ("held_out_accent", tuple(self.held_out_accents)),
            ),
            variants=(
                ("train", train_var),
                ("voices", train_var),
                ("unseen_variants", tuple(self.held_out_variants) or train_var),
                ("held_out_accent", train_var),
            ),
            sizes=(
                ("train", self.train_size),
                ("voices", self.eval_size),
                ("unseen_variants", self.eval_size),
                ("held_out_accent", self.eval_size),
            ),
            noise=self.noise,
            features=FeatureConfig(n_mels=self.n_mels),
            pronunciation=self.pronunciation,
            pronunciation_processes=tuple(self.pronunciation_processes),
            flite=self.flite,
            l2=self.l2,
            l2_languages=tuple(self.l2_languages),
        )


@dataclass(frozen=True)
class SpeechWordsConfig(SpeechConfig):
    """The ``[data]`` table of ``speech-words``: :class:`SpeechConfig` reading word phrases."""

    kind: str = "words"
    min_len: int = 2
    max_len: int = 4
    # more utterances, and three in ten of them second-language English: what brings the
    # held-out accent under 10% WER (docs/results.md, "Second-language English")
    train_size: int = 16384
    l2: float = 0.3


def collate(features: list[np.ndarray], texts: list[str], alphabet: Alphabet) -> Batch:
    """A time-major padded batch: inputs ``(T, B, n_mels)``, lengths ``(B,)``, targets
    ``(B, S)`` label ids (0-padded) and ``extras["target_lengths"]``."""
    T = max(len(f) for f in features)
    S = max(len(t) for t in texts)
    x = np.zeros((T, len(features), features[0].shape[1]), dtype=np.float32)
    y = np.zeros((len(features), S), dtype=np.int64)
    for b, (f, t) in enumerate(zip(features, texts, strict=True)):
        x[: len(f), b] = f
        y[b, : len(t)] = alphabet.encode(t)
    return Batch(
        inputs=torch.from_numpy(x),
        targets=torch.from_numpy(y),
        lengths=torch.tensor([len(f) for f in features]),
        extras={"target_lengths": torch.tensor([len(t) for t in texts])},
        per_step=False,
    )


@register_task(
    "speech",
    summary="recognise spoken digit strings (log-mel features of espeak-ng speech, many "
    "voices, noise) with a BiLSTM and CTC; unseen voice variants and accent held out",
    source="Hinton's RNN recitation, slides 34-36 (speech recognition with CTC); Graves et "
    "al. 2006 (CTC), Graves, Mohamed & Hinton 2013 (deep BiLSTM speech recognition)",
    success="digit error <= 0.3% on training voices, <= 0.5% on unseen variants, <= 2% on "
    "a held-out accent",
)
class SpeechTask(Task):
    """Speech recognition with CTC (see the module docstring).

    The corpus is generated on first use (one shard of :data:`SHARD_SIZE` utterances at a
    time, cached; ``python -m carousel.speech prepare`` generates it all in parallel first).
    A training batch is a run of utterances of similar length from one random shard.
    """

    Config = SpeechConfig
    ModelConfig = RecognizerModelConfig
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "model": {
            "cell": "lstm",
            "hidden_size": 128,
            "num_layers": 2,
            "bidirectional": True,
            "stride": 4,
            "frontend_size": 128,
        },
        "data": {"warp": 0.1, "tempo": 0.1, "freq_mask": 8, "time_mask": 10},
        "optim": {"name": "adam", "lr": 2e-3, "schedule": "cosine", "min_lr": 1e-4},
        "train": {
            "steps": 4000,
            "batch_size": 32,
            "eval_every": 250,
            "checkpoint_every": 250,
            "clip_norm": 1.0,
            "threads": 1,
        },
    }
    eval_splits: tuple[str, ...] = ("voices", "unseen_variants", "held_out_accent")
    primary_metric = "cer"

    config: SpeechConfig

    def __init__(self, config: SpeechConfig | None = None) -> None:
        super().__init__(config)
        self.alphabet = self.config.alphabet
        self._spec: CorpusSpec | None = None
        self._shards: dict[tuple[str, int], tuple[list[np.ndarray], list[str]]] = {}
        self._manifest: dict[str, tuple[list[np.ndarray], list[str]]] = {}
        self._eval_cache: dict[str, list[Batch]] = {}
        if self.config.eval_manifest:
            self.eval_splits = ("manifest",)
        elif self.config.train_manifest:
            self.eval_splits = ()

    @property
    def spec(self) -> CorpusSpec:
        if self._spec is None:
            self._spec = self.config.corpus()
        return self._spec

    def make_model(
        self,
        config: RecognizerModelConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CTCRecognizer:
        """A :class:`~carousel.models.ctc_recognizer.CTCRecognizer` over ``n_mels`` features
        and the task's alphabet plus the blank."""
        if not isinstance(config, RecognizerModelConfig):
            config = RecognizerModelConfig(
                **{k: getattr(config, k) for k in config.__dataclass_fields__}
            )
        return CTCRecognizer(
            self.config.n_mels, len(self.alphabet), config, stride=config.stride,
            frontend_size=config.frontend_size, generator=generator, device=device, dtype=dtype,
        )  # fmt: skip

    def describe_split(self, split: str) -> str:
        variants = ", ".join(self.config.held_out_variants)
        accents = ", ".join(self.config.held_out_accents)
        return {
            "voices": "new utterances, training accents and variants",
            "unseen_variants": f"voice variants never trained on ({variants})",
            "held_out_accent": f"accents never trained on ({accents})",
            "manifest": f"the files of {self.config.eval_manifest}",
        }.get(split, split)

    def _shard(self, split: str, k: int) -> tuple[list[np.ndarray], list[str]]:
        key = (split, k)
        if key not in self._shards:
            feats, texts, _ = load_shard(
                self.spec, split, k, cache_dir=self.config.cache_dir or None
            )
            order = np.argsort([len(f) for f in feats], kind="stable")
            self._shards[key] = ([feats[i] for i in order], [texts[i] for i in order])
        return self._shards[key]

    def _load_manifest(self, which: str) -> tuple[list[np.ndarray], list[str]]:
        if which not in self._manifest:
            from carousel.speech.recognize import manifest_features

            path = getattr(self.config, which)
            feats, texts = manifest_features(path, FeatureConfig(n_mels=self.config.n_mels))
            for t in texts:
                self.alphabet.encode(t)  # a clear error for characters outside the alphabet
            order = np.argsort([len(f) for f in feats], kind="stable")
            self._manifest[which] = ([feats[i] for i in order], [texts[i] for i in order])
        return self._manifest[which]

    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if self.config.train_manifest and split == "train":
            feats, texts = self._load_manifest("train_manifest")
        elif split == "manifest":
            feats, texts = self._load_manifest("eval_manifest")
        else:
            feats, texts = self._shard(split, int(rng.integers(self.spec.num_shards(split))))
        n = len(feats)
        if batch_size >= n:
            idx = np.sort(rng.integers(0, n, batch_size))
        else:
            start = int(rng.integers(0, n - batch_size + 1))
            idx = np.arange(start, start + batch_size)
        chosen = [feats[i] for i in idx]
        c = self.config
        if split == "train" and (c.warp or c.tempo or c.freq_mask or c.time_mask or c.formant_warp):
            chosen = [
                augment(
                    f, rng, warp=c.warp, tempo=c.tempo, freq_mask=c.freq_mask,
                    time_mask=c.time_mask, formant_warp=c.formant_warp,
                )
                for f in chosen
            ]  # fmt: skip
        return collate(chosen, [texts[i] for i in idx], self.alphabet)

    def eval_samples(self, split: str) -> tuple[list[np.ndarray], list[str]]:
        """Every utterance of an evaluation split, shortest first."""
        if split not in self.eval_splits:
            raise ValueError(
                f"{self.name}: unknown split {split!r}; expected one of {list(self.eval_splits)}"
            )
        if split == "manifest":
            return self._load_manifest("eval_manifest")
        feats: list[np.ndarray] = []
        texts: list[str] = []
        for k in range(self.spec.num_shards(split)):
            f, t = self._shard(split, k)
            feats += f
            texts += t
        order = np.argsort([len(f) for f in feats], kind="stable")
        return [feats[i] for i in order], [texts[i] for i in order]

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterator[Batch]:
        if split not in self._eval_cache:
            feats, texts = self.eval_samples(split)
            self._eval_cache[split] = [
                collate(feats[i : i + SHARD_SIZE], texts[i : i + SHARD_SIZE], self.alphabet)
                for i in range(0, len(feats), SHARD_SIZE)
            ]
        return iter(self._eval_cache[split])

    def loss(self, output: ModelOutput, batch: Batch) -> torch.Tensor:
        """CTC loss (mean over the batch of each sequence's loss per target label)."""
        if output.lengths is None:
            raise ValueError(
                f"{self.name}: the model's output has no lengths (frames per sequence); "
                "expected the output of a CTCRecognizer"
            )
        return ctc_loss(
            output.output,
            batch.targets,
            output.lengths,
            batch.extras["target_lengths"],
            zero_infinity=True,
            check_normalized=False,
        )

    def metrics(self, output: ModelOutput, batch: Batch) -> dict[str, float]:
        """Greedy-decoded character (digit) and word error rates of the batch."""
        hyps = greedy_decode(output.output.detach(), output.lengths)
        tl = batch.extras["target_lengths"].tolist()
        refs = [self.alphabet.decode(batch.targets[b, : tl[b]].tolist()) for b in range(len(tl))]
        texts = [self.alphabet.decode(h.tokens) for h in hyps]
        return {"cer": character_error_rate(refs, texts), "wer": word_error_rate(refs, texts)}


@register_task(
    "speech-words",
    summary="recognise short spoken phrases over a few hundred English words as characters "
    "(espeak-ng speech, CTC, greedy or beam search with a character LM)",
    source="Hinton's RNN recitation, slides 34-36; Graves et al. 2006 (CTC); Hannun et al. "
    "2014 (prefix beam search with a language model)",
    success="word error rate <= 10% on held-out voice variants and accent (beam search with "
    "a character LM)",
)
class SpeechWordsTask(SpeechTask):
    """:class:`SpeechTask` over word phrases (``kind = "words"``), read as characters."""

    Config = SpeechWordsConfig
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        **SpeechTask.defaults,
        "model": {**SpeechTask.defaults["model"], "stride": 3, "hidden_size": 256},
        "train": {**SpeechTask.defaults["train"], "steps": 7000, "threads": 2},
    }
    # runs made before data.l2 existed (31b3187) had no second-language speakers; its
    # default became 0.3 later (44f10a4)
    predating: ClassVar[Mapping[str, Mapping[str, Any]]] = {"data": {"l2": 0.0}}
    primary_metric = "wer"
