"""The ``handwriting`` task: synthetic online handwriting (pen trajectories of words) for a CTC
recogniser, with splits by word and by face (leave-one-face-out).

Every sample is drawn afresh from a seeded generator: a word, a face, a random writer
(:func:`~carousel.handwriting.synth.sample_writer`) and per-letter distortions, then
normalised by :func:`~carousel.handwriting.pen.pen_features`. Words are split once into
training words and *new* words (never seen in training); faces into training faces and
held-out faces.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from carousel.ctc import Alphabet, character_error_rate, ctc_loss, greedy_decode, word_error_rate
from carousel.handwriting.fonts import LATIN_FACES
from carousel.handwriting.pen import FEATURES, pen_features
from carousel.handwriting.synth import sample_writer, write_word
from carousel.models import ModelOutput
from carousel.models.ctc_recognizer import CTCRecognizer, RecognizerModelConfig
from carousel.tasks.base import Batch, Task
from carousel.tasks.registry import register_task

__all__ = [
    "ALPHABET",
    "HandwritingBatch",
    "HandwritingConfig",
    "HandwritingData",
    "HandwritingTask",
    "Sample",
    "collate",
    "leave_one_face_out",
    "load_words",
]

#: Lowercase Latin letters; label 0 is the CTC blank.
ALPHABET = Alphabet(string.ascii_lowercase)


@functools.lru_cache(maxsize=1)
def load_words() -> tuple[str, ...]:
    """The built-in word list (about 1,800 English words of 3-10 letters)."""
    text = resources.files("carousel.handwriting").joinpath("words.txt").read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(w for w in lines if w and not w.startswith("#"))


@dataclass(frozen=True)
class HandwritingConfig:
    """What the handwriting task generates."""

    # faces to train on (Hershey names; default: every Latin face not held out)
    faces: tuple[str, ...] = ()
    # faces never seen in training, evaluated as new writers (leave-one-face-out: one face)
    held_out_faces: tuple[str, ...] = ()
    # every `test_word_every`-th word of the sorted list is a new word, never trained on
    test_word_every: int = 5
    # scale of the writer and glyph variation (0: the plain fonts)
    variation: float = 1.0
    # resampling distance of the normalised trajectory (x-height units)
    spacing: float = 0.2
    # seed of the word split is fixed; this seeds the evaluation sets
    eval_seed: int = 1234
    # samples per evaluation set
    eval_size: int = 300

    def __post_init__(self) -> None:
        for f in (*self.faces, *self.held_out_faces):
            if not isinstance(f, str):
                raise TypeError(f"HandwritingConfig: faces must be names, got {f!r}")
        overlap = set(self.faces) & set(self.held_out_faces)
        if overlap:
            raise ValueError(
                f"HandwritingConfig: faces {sorted(overlap)} are both trained and held out"
            )
        if self.test_word_every < 2:
            raise ValueError(
                f"HandwritingConfig: test_word_every must be >= 2, got {self.test_word_every}"
            )
        if not 0 < self.spacing < 1:
            raise ValueError(f"HandwritingConfig: spacing must be in (0, 1), got {self.spacing}")

    @property
    def train_faces(self) -> tuple[str, ...]:
        return self.faces or tuple(f for f in LATIN_FACES if f not in self.held_out_faces)


def leave_one_face_out(**options: Any) -> list[HandwritingConfig]:
    """One configuration per Latin face, holding that face out and training on the others
    (the leave-one-face-out measure of generalisation to a new writer).

    Args:
        **options: other :class:`HandwritingConfig` fields, the same for every run.

    Example:
        >>> [c.held_out_faces for c in leave_one_face_out()][:2]
        [('cursive',), ('scripts',)]
    """
    return [HandwritingConfig(held_out_faces=(face,), **options) for face in LATIN_FACES]


class Sample(NamedTuple):
    """One generated sample: ``features`` ``(N, 4)``, its ``text``, ``face`` and raw
    ``strokes`` (list of ``(n, 3)`` arrays ``x, y, t``)."""

    features: np.ndarray
    text: str
    face: str
    strokes: list


class HandwritingBatch(NamedTuple):
    """A padded batch.

    Attributes:
        inputs: ``(T, B, 4)`` features, zero past each sequence's end.
        lengths: ``(B,)`` input steps per sequence.
        targets: ``(B, S)`` label ids (0-padded).
        target_lengths: ``(B,)``.
        texts: the transcripts.
    """

    inputs: Tensor
    lengths: Tensor
    targets: Tensor
    target_lengths: Tensor
    texts: list[str]


def collate(samples: list[Sample], *, device: torch.device | str | None = None) -> HandwritingBatch:
    """Pad samples into a time-major batch."""
    T = max(len(s.features) for s in samples)
    S = max(len(s.text) for s in samples)
    x = np.zeros((T, len(samples), len(FEATURES)), dtype=np.float32)
    y = np.zeros((len(samples), S), dtype=np.int64)
    for b, s in enumerate(samples):
        x[: len(s.features), b] = s.features
        y[b, : len(s.text)] = ALPHABET.encode(s.text)
    return HandwritingBatch(
        torch.from_numpy(x).to(device),
        torch.tensor([len(s.features) for s in samples], device=device),
        torch.from_numpy(y).to(device),
        torch.tensor([len(s.text) for s in samples], device=device),
        [s.text for s in samples],
    )


@dataclass
class HandwritingData:
    """Seeded generator of handwriting samples and batches for a :class:`HandwritingConfig`.

    Example:
        >>> data = HandwritingData(HandwritingConfig(held_out_faces=("timesi",)))
        >>> s = data.sample(np.random.default_rng(0))
        >>> s.features.shape[1], s.face != "timesi", s.text in data.train_words
        (4, True, True)
    """

    config: HandwritingConfig = field(default_factory=HandwritingConfig)

    def __post_init__(self) -> None:
        words = load_words()
        k = self.config.test_word_every
        self.test_words = tuple(w for i, w in enumerate(words) if i % k == k - 1)
        self.train_words = tuple(w for i, w in enumerate(words) if i % k != k - 1)
        by_len: dict[int, list[str]] = {}
        for w in self.train_words:
            by_len.setdefault(len(w), []).append(w)
        self.train_words_by_length = {n: tuple(ws) for n, ws in sorted(by_len.items())}

    def sample(
        self,
        rng: np.random.Generator,
        *,
        faces: tuple[str, ...] | None = None,
        words: tuple[str, ...] | None = None,
    ) -> Sample:
        """One sample: a random word of ``words`` (default training words) in a random face
        of ``faces`` (default training faces) by a random writer."""
        faces = faces or self.config.train_faces
        words = words or self.train_words
        word = words[int(rng.integers(len(words)))]
        face = faces[int(rng.integers(len(faces)))]
        style = sample_writer(rng, variation=self.config.variation)
        strokes = write_word(word, face, style, rng)
        return Sample(pen_features(strokes, spacing=self.config.spacing), word, face, strokes)

    def batches(
        self,
        rng: np.random.Generator,
        batch_size: int,
        *,
        pool: int = 8,
        device: torch.device | str | None = None,
    ) -> Iterator[HandwritingBatch]:
        """Endless batches grouped by length: ``pool`` batches' worth of samples are drawn,
        sorted by length, cut into batches and yielded in random order (less padding, so
        less wasted computation)."""
        while True:
            samples = [self.sample(rng) for _ in range(batch_size * pool)]
            samples.sort(key=lambda s: len(s.features))
            chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
            for i in rng.permutation(len(chunks)):
                yield collate(chunks[int(i)], device=device)

    def eval_set(self, name: str) -> list[Sample]:
        """A fixed evaluation set: ``"new_words"`` (new words, training faces) or
        ``"face:NAME"`` (new words in a held-out or any named face)."""
        rng = np.random.default_rng([self.config.eval_seed, sum(map(ord, name))])
        if name == "new_words":
            faces = self.config.train_faces
        elif name.startswith("face:"):
            faces = (name[5:],)
        else:
            raise ValueError(f"HandwritingData: unknown evaluation set {name!r}")
        return [
            self.sample(rng, faces=faces, words=self.test_words)
            for _ in range(self.config.eval_size)
        ]


def _to_batch(samples: list[Sample]) -> Batch:
    b = collate(samples)
    return Batch(
        inputs=b.inputs,
        targets=b.targets,
        lengths=b.lengths,
        extras={"target_lengths": b.target_lengths},
        per_step=False,
    )


@register_task(
    "handwriting",
    summary="read synthetic online handwriting (pen x, y, pen-up) of English words with "
    "CTC; new words, and new faces held out",
    source="Hinton's lecture 7e; Graves et al. 2009 (online handwriting with BiLSTM + CTC)",
    success="CER <= 1% on new words in the training faces, mean CER <= 25% over held-out "
    "faces (leave-one-face-out)",
)
class HandwritingTask(Task):
    """The handwriting task for the training engine (see the module docstring).

    Batches are grouped by length by drawing all words of a batch with the same number of
    letters; the splits are ``new_words`` (words never trained on, training faces) and, when
    faces are held out, ``held_out_faces`` (new words in the held-out faces).
    """

    Config = HandwritingConfig
    ModelConfig = RecognizerModelConfig
    # chosen by equal-CPU-budget comparisons (docs/results.md, "Handwriting"): stride 6 and
    # batches of 16 give the most learning per CPU second; the learning rate is halved once,
    # at 60% of the steps; 12,000 steps should take about 15-20 CPU minutes on one thread (an
    # estimate, not a measured run: ~31 ms a step and ~48 ms to generate its 16 words here)
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "model": {
            "cell": "lstm",
            "hidden_size": 128,
            "num_layers": 2,
            "bidirectional": True,
            "stride": 6,
        },
        "optim": {
            "name": "adam",
            "lr": 2e-3,
            "schedule": "step",
            "decay_steps": 7200,
            "gamma": 0.5,
        },
        "train": {
            "steps": 12000,
            "batch_size": 16,
            "eval_every": 1000,
            "checkpoint_every": 1000,
            "clip_norm": 1.0,
            "threads": 1,
        },
    }
    eval_splits: tuple[str, ...] = ("new_words", "held_out_faces")
    primary_metric = "cer"

    config: HandwritingConfig

    def __init__(self, config: HandwritingConfig | None = None) -> None:
        super().__init__(config)
        self.data = HandwritingData(self.config)
        if not self.config.held_out_faces:
            self.eval_splits = ("new_words",)
        self._eval_cache: dict[str, list[Batch]] = {}

    def make_model(
        self,
        config: RecognizerModelConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CTCRecognizer:
        """A :class:`~carousel.models.ctc_recognizer.CTCRecognizer` over the 4 pen features
        and the 26 letters plus the blank."""
        if not isinstance(config, RecognizerModelConfig):
            config = RecognizerModelConfig(
                **{k: getattr(config, k) for k in config.__dataclass_fields__}
            )
        return CTCRecognizer(
            len(FEATURES), len(ALPHABET), config, stride=config.stride,
            frontend_size=config.frontend_size, generator=generator, device=device, dtype=dtype,
        )  # fmt: skip

    def describe_split(self, split: str) -> str:
        if split == "new_words":
            return f"new words in the {len(self.config.train_faces)} training faces"
        return f"new words in held-out faces {', '.join(self.config.held_out_faces)}"

    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if split != "train":
            return _to_batch([self._eval_samples(split)[int(i)] for i in
                              rng.integers(0, self.config.eval_size, batch_size)])  # fmt: skip
        lengths = list(self.data.train_words_by_length)
        n = lengths[int(rng.integers(len(lengths)))]
        words = self.data.train_words_by_length[n]
        return _to_batch([self.data.sample(rng, words=words) for _ in range(batch_size)])

    def _eval_samples(self, split: str) -> list[Sample]:
        if split == "new_words":
            return self.data.eval_set("new_words")
        if split == "held_out_faces" and self.config.held_out_faces:
            out = []
            for face in self.config.held_out_faces:
                out += self.data.eval_set(f"face:{face}")
            return out
        raise ValueError(
            f"handwriting: unknown split {split!r}; expected one of {list(self.eval_splits)}"
        )

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterator[Batch]:
        if split not in self._eval_cache:
            samples = sorted(self._eval_samples(split), key=lambda s: len(s.features))
            self._eval_cache[split] = [
                _to_batch(samples[i : i + 64]) for i in range(0, len(samples), 64)
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
        """Greedy-decoded character and word error rates of the batch."""
        hyps = greedy_decode(output.output.detach(), output.lengths)
        tl = batch.extras["target_lengths"].tolist()
        refs = [ALPHABET.decode(batch.targets[b, : tl[b]].tolist()) for b in range(len(tl))]
        texts = [ALPHABET.decode(h.tokens) for h in hyps]
        return {"cer": character_error_rate(refs, texts), "wer": word_error_rate(refs, texts)}
