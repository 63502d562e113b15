"""Using a trained speech recogniser: transcribe WAV files with character timings, and
evaluate greedy and beam-search (character-LM) decoding on a task's splits."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from carousel.ctc import (
    Alphabet,
    CTCHypothesis,
    NGramCharScorer,
    beam_search_decode,
    character_error_rate,
    greedy_decode,
    word_error_rate,
)
from carousel.speech.audio import read_manifest, read_wav
from carousel.speech.features import FeatureConfig, log_mel

if TYPE_CHECKING:
    from carousel.tasks.speech import SpeechTask

__all__ = [
    "Transcript",
    "char_lm",
    "evaluate_decoders",
    "manifest_features",
    "task_char_lm",
    "transcribe",
    "wav_features",
]


def wav_features(path: str | os.PathLike, config: FeatureConfig | None = None) -> np.ndarray:
    """Normalised log-mel features ``(T, n_mels)`` of a 16-bit PCM WAV file (resampled)."""
    config = config or FeatureConfig()
    audio, _ = read_wav(path, sample_rate=config.sample_rate)
    return log_mel(audio, config)


def manifest_features(
    path: str | os.PathLike, config: FeatureConfig | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Features and transcripts of every file of a manifest
    (:func:`~carousel.speech.audio.read_manifest`)."""
    entries = read_manifest(path)
    return [wav_features(e.path, config) for e in entries], [e.text for e in entries]


@dataclass(frozen=True)
class Transcript:
    """A recognised utterance: its ``text``, and for each character its ``times`` (seconds
    from the start: the middle of the output frame where CTC emitted it)."""

    text: str
    times: tuple[float, ...]
    score: float

    def timings(self) -> list[tuple[str, float]]:
        """``[(character, seconds), ...]``."""
        return list(zip(self.text, self.times, strict=True))


def char_lm(texts: Sequence[str], alphabet: Alphabet, order: int = 5) -> NGramCharScorer:
    """A Witten-Bell character n-gram language model of ``texts`` for beam search."""
    return NGramCharScorer(len(alphabet), order=order).fit([alphabet.encode(t) for t in texts])


def task_char_lm(task: SpeechTask, *, order: int = 6, texts: int = 20000) -> NGramCharScorer:
    """The character LM of a speech task: fitted to ``texts`` transcripts of its training
    split (planned, not synthesised, so this is fast), or to the training manifest's."""
    from carousel.speech.synth import utterance_plan

    if task.config.train_manifest:
        lines = [e.text for e in read_manifest(task.config.train_manifest, check_files=False)]
    else:
        spec = task.config.corpus()
        lines = [utterance_plan(spec, "train", i).text for i in range(texts)]
    return char_lm(lines, task.alphabet, order=order)


def _decode(
    model: nn.Module,
    feats: list[np.ndarray],
    *,
    beam_width: int = 1,
    scorer: NGramCharScorer | None = None,
    lm_weight: float = 0.5,
    length_bonus: float = 0.0,
    batch_size: int = 64,
) -> list[CTCHypothesis]:
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            chunk = feats[i : i + batch_size]
            T = max(len(f) for f in chunk)
            x = np.zeros((T, len(chunk), chunk[0].shape[1]), dtype=np.float32)
            for b, f in enumerate(chunk):
                x[: len(f), b] = f
            lengths = torch.tensor([len(f) for f in chunk], device=device)
            res = model(torch.from_numpy(x).to(device), lengths=lengths)
            if beam_width <= 1 and scorer is None:
                out += greedy_decode(res.output, res.lengths)
            else:
                out += [
                    h[0]
                    for h in beam_search_decode(
                        res.output,
                        res.lengths,
                        beam_width=beam_width,
                        scorer=scorer,
                        lm_weight=lm_weight,
                        length_bonus=length_bonus,
                    )
                ]
    return out


def transcribe(
    model: nn.Module,
    alphabet: Alphabet,
    paths: Sequence[str | os.PathLike],
    *,
    features: FeatureConfig | None = None,
    stride: int | None = None,
    beam_width: int = 1,
    scorer: NGramCharScorer | None = None,
    lm_weight: float = 0.5,
) -> list[Transcript]:
    """Transcribe WAV files with a CTC recogniser.

    Args:
        model: a :class:`~carousel.models.ctc_recognizer.CTCRecognizer` over log-mel features.
        alphabet: its labels.
        paths: 16-bit PCM WAV files (any rate).
        features: the feature settings it was trained with.
        stride: input frames per output frame (default ``model.stride``).
        beam_width: 1 for greedy decoding, more for prefix beam search.
        scorer: a character LM for beam search.
        lm_weight: the LM's weight.

    Returns:
        One :class:`Transcript` per file.
    """
    features = features or FeatureConfig()
    out_stride: int = stride if stride else getattr(model, "stride", 1)
    feats = [wav_features(p, features) for p in paths]
    hyps = _decode(model, feats, beam_width=beam_width, scorer=scorer, lm_weight=lm_weight)
    hop = features.hop_length / features.sample_rate
    return [
        Transcript(
            alphabet.decode(h.tokens),
            tuple(round((t + 0.5) * out_stride * hop, 3) for t in h.timesteps),
            float(h.score),
        )
        for h in hyps
    ]


def evaluate_decoders(
    path: str | os.PathLike,
    splits: Sequence[str] | None = None,
    *,
    beam_width: int = 16,
    lm_weight: float = 0.5,
    length_bonus: float = 1.0,
    lm_order: int = 6,
    lm_texts: int = 20000,
) -> dict[str, dict[str, float]]:
    """Corpus-level error rates of a speech checkpoint with greedy decoding and with prefix
    beam search plus a character n-gram LM fitted to ``lm_texts`` training transcripts.

    Args:
        path: a checkpoint, run directory or ``last`` link of ``speech`` or ``speech-words``.
        splits: evaluation splits (default all of the task's).
        beam_width, lm_weight, length_bonus: of the beam search.
        lm_order: the n-gram order.
        lm_texts: training transcripts planned (not synthesised) to fit the LM.

    Returns:
        ``{split: {"greedy_cer", "greedy_wer", "beam_cer", "beam_wer", "utterances"}}``.
    """
    from carousel.tasks.speech import SpeechTask
    from carousel.train import load_trained

    model, task, _, _ = load_trained(Path(path), device="cpu")
    if not isinstance(task, SpeechTask):
        raise ValueError(
            f"evaluate_decoders: {os.fspath(path)!r} holds a {task.name!r} model; expected a "
            "speech or speech-words checkpoint"
        )
    scorer = task_char_lm(task, order=lm_order, texts=lm_texts)
    out = {}
    for split in splits or task.eval_splits:
        feats, refs = task.eval_samples(split)
        greedy = [task.alphabet.decode(h.tokens) for h in _decode(model, feats)]
        beam = [
            task.alphabet.decode(h.tokens)
            for h in _decode(
                model,
                feats,
                beam_width=beam_width,
                scorer=scorer,
                lm_weight=lm_weight,
                length_bonus=length_bonus,
            )
        ]
        out[split] = {
            "greedy_cer": character_error_rate(refs, greedy),
            "greedy_wer": word_error_rate(refs, greedy),
            "beam_cer": character_error_rate(refs, beam),
            "beam_wer": word_error_rate(refs, beam),
            "utterances": float(len(refs)),
        }
    return out
