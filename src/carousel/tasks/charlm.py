"""Character-level (or word-level) language modelling on any text: predict the next token.

Hinton's lecture 7 and the RNN recitation: train a recurrent network to predict the next
character, then prime it with text and sample from its output distribution
(:func:`carousel.generate.generate`). The data is any UTF-8 text file, several files or a
folder (``data.text``), or the built-in corpus: the source code of standard-library modules of
the running Python (:func:`carousel.text.default_corpus`), which needs no download.

The end of the text (``data.valid_fraction``) is held out (:func:`carousel.text.split_texts`);
the vocabulary is built from the training part only, with an explicit policy for tokens it
lacks (``data.unknown``). Training reads the training text as ``B`` parallel streams in chunks
of ``train.tbptt_k1`` tokens with the network's state carried from chunk to chunk (truncated
BPTT, char-rnn style; :class:`carousel.text.StreamBatches`). Evaluation reads the validation
text the same way, carrying the state through it, and reports bits per token, bits per
character and perplexity.

The checkpoint keeps the vocabulary (:meth:`CharLM.state_dict`), so generating from a trained
model never needs the training text again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel._config import Checks
from carousel.models import ModelOutput
from carousel.models.charlm import CharLM, CharLMModelConfig
from carousel.tasks.base import Batch, Task
from carousel.tasks.registry import register_task
from carousel.text.batching import StreamBatches
from carousel.text.corpus import (
    CorpusError,
    CorpusSplit,
    default_corpus,
    load_texts,
    split_texts,
)
from carousel.text.vocab import UNITS, UNKNOWN_POLICIES, Vocabulary, tokenize

__all__ = ["CharLMConfig", "CharLMTask", "NGramResult", "ngram_baseline"]

logger = logging.getLogger(__name__)

#: ``data.max_vocab`` when it is left at 0: no limit for characters, 10000 for words.
DEFAULT_WORD_VOCAB = 10000


@dataclass(frozen=True)
class CharLMConfig:
    """Options of the ``charlm`` task (the ``[data]`` table)."""

    # text files or folders to train on (empty: the built-in corpus, standard-library source)
    text: tuple[str, ...] = ()
    # glob pattern of the files read inside folders
    pattern: str = "**/*"
    # encoding of the text files
    encoding: str = "utf-8"
    # what a token is: char, or word (a word or punctuation mark with its leading space)
    unit: str = "char"
    # the share of the text held out for validation (its end)
    valid_fraction: float = 0.1
    # tokens not in the vocabulary: token (map to <unk>), skip (drop) or error
    unknown: str = "token"
    # largest vocabulary, the unknown token included (0: no limit for char, 10000 for word)
    max_vocab: int = 0
    # tokens seen fewer times than this in training are left out of the vocabulary
    min_count: int = 1
    # tokens per training sequence when not streaming (train.tbptt_k1 unset: full BPTT
    # through random windows of this length)
    seq_len: int = 100
    # parallel streams over the validation text (its state is carried through each)
    eval_batch_size: int = 16
    # tokens per evaluation chunk
    eval_chunk_len: int = 500

    def __post_init__(self) -> None:
        c = Checks("data")
        if isinstance(self.text, str):  # a single path given as a string
            object.__setattr__(self, "text", (self.text,))
        if not isinstance(self.text, tuple) or not all(isinstance(t, str) for t in self.text):
            c.fail("text", f"must be a list of paths, got {self.text!r}")
        c.string("pattern", self.pattern)
        c.string("encoding", self.encoding)
        c.choice("unit", self.unit, UNITS)
        c.number("valid_fraction", self.valid_fraction, minimum=0.0, exclusive_minimum=True,
                 maximum=0.9)  # fmt: skip
        c.choice("unknown", self.unknown, UNKNOWN_POLICIES)
        c.positive_int("max_vocab", self.max_vocab, minimum=0)
        if self.max_vocab == 1 and self.unknown == "token":
            c.fail("max_vocab", "must be 0 (no limit) or >= 2 (the unknown token and one more)")
        c.positive_int("min_count", self.min_count)
        c.positive_int("seq_len", self.seq_len)
        c.positive_int("eval_batch_size", self.eval_batch_size)
        c.positive_int("eval_chunk_len", self.eval_chunk_len)
        c.done()

    @property
    def vocab_limit(self) -> int | None:
        """The effective vocabulary limit (``None``: none)."""
        if self.max_vocab:
            return self.max_vocab
        return DEFAULT_WORD_VOCAB if self.unit == "word" else None


@register_task(
    "charlm",
    summary="predict the next character (or word) of a text; generate text from the model",
    source="Hinton, lecture 7 and the RNN recitation; Sutskever et al. 2011; Karpathy's char-rnn",
    success=(
        "validation bits per character below the best Kneser-Ney n-gram's on the same split "
        "(carousel.text.KneserNeyLM; docs/results.md)"
    ),
)
class CharLMTask(Task):
    """Next-token prediction on a text (see the module docstring).

    Data (``Config``: :class:`CharLMConfig`): ``train`` and ``valid`` token streams; the
    vocabulary (:attr:`vocab`) comes from the training text, or from a checkpoint
    (:meth:`load_state_dict`), in which case the text is read only if batches are asked for.
    """

    Config: ClassVar[type] = CharLMConfig
    ModelConfig: ClassVar[type] = CharLMModelConfig
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "model": {
            "cell": "lstm",
            "hidden_size": 128,
            "num_layers": 2,
            "embedding_size": 64,
            "dropout": 0.25,
            "init": {"forget_bias": 1.0},
        },
        "optim": {"name": "adam", "lr": 3e-3, "schedule": "cosine", "min_lr": 1e-4},
        "train": {
            "steps": 6000,
            "batch_size": 64,
            "tbptt_k1": 100,
            "clip_norm": 1.0,
            "eval_every": 500,
            "checkpoint_every": 500,
            "threads": 1,
        },
    }
    eval_splits = ("valid",)
    primary_metric = "bits_per_char"

    config: CharLMConfig

    def __init__(self, config: CharLMConfig | None = None) -> None:
        super().__init__(config)
        self._vocab: Vocabulary | None = None
        self._split: CorpusSplit | None = None
        self._ids: dict[str, Tensor] = {}
        self._token_chars: Tensor | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ data
    def _load_split(self) -> CorpusSplit:
        if self._split is None:
            cfg = self.config
            if cfg.text:
                sources = load_texts(list(cfg.text), encoding=cfg.encoding, pattern=cfg.pattern)
            else:
                sources = default_corpus()
            self._split = split_texts(sources, valid_fraction=cfg.valid_fraction)
            if self._fingerprint is not None and self._fingerprint != self._split.fingerprint:
                logger.warning(
                    "charlm: the text differs from the one this model was trained on "
                    "(fingerprint %s, trained on %s)",
                    self._split.fingerprint,
                    self._fingerprint,
                )
            self._fingerprint = self._split.fingerprint
        return self._split

    def text(self, split: str) -> str:
        """The text of ``"train"`` or ``"valid"`` (read from the files on first use)."""
        if split not in ("train", "valid"):
            raise ValueError(f"charlm: unknown split {split!r}; expected 'train' or 'valid'")
        sp = self._load_split()
        return sp.train if split == "train" else sp.valid

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary: from the checkpoint, or built from the training text."""
        if self._vocab is None:
            cfg = self.config
            self._vocab = Vocabulary.build(
                self._load_split().train,
                unit=cfg.unit,
                unknown=cfg.unknown,
                max_size=cfg.vocab_limit,
                min_count=cfg.min_count,
            )
            logger.info("charlm: vocabulary of %d %ss", len(self._vocab), cfg.unit)
        return self._vocab

    def ids(self, split: str) -> Tensor:
        """The token ids of ``"train"`` or ``"valid"``, ``(N,)`` int64."""
        if split not in ("train", "valid"):
            raise ValueError(f"charlm: unknown split {split!r}; expected 'train' or 'valid'")
        if split not in self._ids:
            ids = self.vocab.encode(self.text(split), name=f"the {split} text")
            if ids.numel() < 2:
                raise CorpusError(
                    f"charlm: the {split} text has {ids.numel()} token(s); expected at least 2"
                )
            self._ids[split] = ids
        return self._ids[split]

    def token_chars(self) -> Tensor:
        """``(V,)`` characters per token id, to turn bits per token into bits per character.
        The unknown token counts as the mean length of the training tokens it stands for."""
        if self._token_chars is None:
            v = self.vocab
            lengths = [float(len(t)) for t in v.tokens]
            if v.unknown_id is not None:
                unk = 1.0
                if v.unit == "word" and self._split is not None:
                    oov = [t for t in tokenize(self._split.train, "word") if t not in v]
                    unk = sum(len(t) for t in oov) / len(oov) if oov else 1.0
                lengths[v.unknown_id] = unk
            self._token_chars = torch.tensor(lengths, dtype=torch.float64)
        return self._token_chars

    def state_dict(self) -> dict[str, Any]:
        """The vocabulary and the fingerprint of the text trained on."""
        return {
            "vocab": self.vocab.to_dict(),
            "fingerprint": self._fingerprint,
            "token_chars": self.token_chars().tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the vocabulary of a checkpoint (the text is then not needed to use it)."""
        if "vocab" in state:
            self._vocab = Vocabulary.from_dict(state["vocab"])
            self._ids.clear()
        if state.get("token_chars") is not None:
            self._token_chars = torch.tensor(state["token_chars"], dtype=torch.float64)
        self._fingerprint = state.get("fingerprint", self._fingerprint)

    def batch(self, split: str, batch_size: int, *, generator: torch.Generator) -> Batch:
        """Random windows of ``data.seq_len`` tokens (for full BPTT without a stream)."""
        ids = self.ids(split)
        T = min(self.config.seq_len, ids.numel() - 1)
        starts = torch.randint(0, ids.numel() - T, (batch_size,), generator=generator)
        idx = starts.unsqueeze(0) + torch.arange(T).unsqueeze(1)  # (T, B)
        return Batch(ids[idx], ids[idx + 1])

    def stream(
        self,
        split: str,
        batch_size: int,
        chunk_len: int,
        *,
        generator: torch.Generator,
        start: int = 0,
    ) -> Iterator[Batch]:
        """``batch_size`` contiguous rows of the text, ``chunk_len`` tokens per chunk, epoch
        after epoch (:class:`~carousel.text.StreamBatches`); chunk ``k + 1`` continues chunk
        ``k`` in every row. At the start of a new epoch each row starts over (the carried
        state then comes from the row's end; one chunk per epoch sees this). ``generator`` is
        unused: the layout is fixed."""
        batches = StreamBatches(self.ids(split), batch_size, chunk_len)
        n = len(batches)
        k = start
        while True:
            b = batches[k % n]
            yield Batch(b.inputs, b.targets)
            k += 1

    def eval_batches(self, split: str, *, generator: torch.Generator) -> Iterator[Batch]:
        """The validation text as ``data.eval_batch_size`` streams in chunks (fewer for a short
        text: each stream is at least ``data.eval_chunk_len`` tokens long, as each starts
        without context)."""
        cfg = self.config
        ids = self.ids(split)
        rows = max(1, min(cfg.eval_batch_size, (ids.numel() - 1) // cfg.eval_chunk_len))
        for b in StreamBatches(ids, rows, cfg.eval_chunk_len):
            yield Batch(b.inputs, b.targets)

    # ------------------------------------------------------------------ model and objective
    def make_model(
        self,
        config: CharLMModelConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """A :class:`~carousel.models.charlm.CharLM` over :attr:`vocab`."""
        return CharLM.from_config(
            config, len(self.vocab), generator=generator, device=device, dtype=dtype
        )

    def forward(self, model: nn.Module, batch: Batch, state: Any = None) -> ModelOutput:
        out = model(batch.inputs, state)
        return ModelOutput(out.logits, out.state)

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        """Cross-entropy of the next token in nats, the mean over every position."""
        logits = output.output  # (T, B, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))

    @torch.no_grad()
    def _totals(self, output: ModelOutput, batch: Batch) -> tuple[float, int, float]:
        logits = output.output
        nats = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch.targets.reshape(-1),
            reduction="sum",
        )
        chars = self.token_chars().to(batch.targets.device)[batch.targets].sum()
        return float(nats), batch.targets.numel(), float(chars)

    def metrics(self, output: ModelOutput, batch: Batch) -> dict[str, float]:
        """``bits_per_token``, ``bits_per_char`` (equal for characters) and ``perplexity``
        (per token) of one batch. For words, ``bits_per_char`` divides by the characters of
        the predicted words, an unknown word counting as the mean length of the words it
        stands for: the cost of spelling out unseen words is not in it, so compare word
        models with word models."""
        nats, tokens, chars = self._totals(output, batch)
        return _summary(nats, tokens, chars)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: str,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, float]:
        """Bits per token and character, perplexity and loss over the whole split, the state
        carried through each evaluation stream (every scored token counts once)."""
        if split not in self.eval_splits:
            raise ValueError(f"charlm: unknown split {split!r}; expected one of ['valid']")
        was_training = model.training
        model.eval()
        nats = chars = 0.0
        tokens = 0
        state = None
        try:
            for batch in self.eval_batches(split, generator=generator):
                batch = batch.to(device)
                out = self.forward(model, batch, state)
                state = out.state
                n, t, c = self._totals(out, batch)
                nats, tokens, chars = nats + n, tokens + t, chars + c
        finally:
            model.train(was_training)
        return _summary(nats, tokens, chars)

    def describe_split(self, split: str) -> str:
        if split == "valid":
            return f"the last {self.config.valid_fraction:.0%} of the text, never trained on"
        return split

    def describe(self) -> str:
        cfg = self.config
        where = ", ".join(cfg.text) if cfg.text else "the built-in corpus (stdlib source)"
        return f"charlm({cfg.unit}s of {where}, valid_fraction={cfg.valid_fraction})"


class NGramResult(NamedTuple):
    """Validation scores of the Kneser-Ney baselines of orders ``1..max_order``.

    Attributes:
        bits_per_char: ``{order: bits per character}``.
        bits_per_token: ``{order: bits per token}`` (equal for characters).
        best_order: the order with the fewest bits per character.
        train_tokens: tokens in the training text.
        valid_tokens: tokens scored (the validation text but its first token).
        seconds: time to count and score.
    """

    bits_per_char: dict[int, float]
    bits_per_token: dict[int, float]
    best_order: int
    train_tokens: int
    valid_tokens: int
    seconds: float


def ngram_baseline(task: CharLMTask, max_order: int = 24) -> NGramResult:
    """The memoryless baseline on a ``charlm`` task's own split and vocabulary: interpolated
    modified Kneser-Ney models (:class:`~carousel.text.KneserNeyLM`) of every order up to
    ``max_order``, trained on the training text and scored on the validation text.

    Args:
        task: the task (its data options choose the text, unit and split).
        max_order: the highest order.

    Returns:
        :class:`NGramResult`.
    """
    import time

    from carousel.text.ngram import KneserNeyLM

    t0 = time.perf_counter()
    train_ids, valid_ids = task.ids("train"), task.ids("valid")
    lm = KneserNeyLM(train_ids, len(task.vocab), max_order)
    per_token = lm.evaluate(valid_ids)
    targets = valid_ids[1:]
    chars = float(task.token_chars()[targets].sum())
    per_char = {n: b * targets.numel() / chars for n, b in per_token.items()}
    best = min(per_char, key=lambda n: per_char[n])
    return NGramResult(
        per_char,
        per_token,
        best,
        train_ids.numel(),
        targets.numel(),
        time.perf_counter() - t0,
    )


def _summary(nats: float, tokens: int, chars: float) -> dict[str, float]:
    per_token = nats / max(tokens, 1)
    return {
        "loss": per_token,
        "bits_per_token": per_token / math.log(2),
        "bits_per_char": nats / max(chars, 1e-12) / math.log(2),
        "perplexity": math.exp(min(per_token, 700.0)),
    }
