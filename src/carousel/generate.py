"""Text generation from a recurrent language model: sampled, greedy or beam search, one step of
the network per new token.

Prime the model with text, then draw each next token from its output distribution and feed it
back (Sutskever, Martens & Hinton 2011; Graves 2013, section 3; Hinton's lecture 7 and the RNN
recitation). The state is carried from step to step (:class:`~carousel.models.charlm.Stepper`),
so a token costs one step, never a rerun of the prefix.

``carousel.generate`` (the package attribute) is :func:`generate`; import the other functions
from this module (``from carousel.generate import beam_search``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_positive_int

__all__ = [
    "BeamHypothesis",
    "Generation",
    "LanguageModel",
    "beam_search",
    "generate",
    "load_language_model",
    "sample_tokens",
]


class Generation(NamedTuple):
    """The result of :func:`generate`.

    Attributes:
        text: the generated continuation (the prime not included).
        tokens: its token ids.
        log_prob: natural-log probability of ``tokens`` under the model given the prime (with
            sampling, under the temperature/top-k-adjusted distribution it was drawn from).
    """

    text: str
    tokens: list[int]
    log_prob: float


class BeamHypothesis(NamedTuple):
    """One hypothesis of :func:`beam_search`.

    Attributes:
        tokens: the token ids after the prime.
        log_prob: their natural-log probability under the model, given the prime.
    """

    tokens: list[int]
    log_prob: float


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"generate: temperature must be a float, got {temperature!r}")
    if not temperature >= 0.0 or math.isinf(temperature):
        raise ValueError(
            f"generate: temperature must be >= 0 (0 is greedy) and finite, got {temperature}"
        )
    if top_k is not None:
        check_positive_int("generate", "top_k", top_k)


def _prime_ids(model: Any, prime: Tensor) -> Tensor:
    if not isinstance(prime, Tensor) or prime.dtype != torch.long:
        raise TypeError("generate: prime must be an int64 tensor of token ids")
    if prime.dim() == 1:
        prime = prime.unsqueeze(1)
    if prime.dim() != 2 or prime.shape[0] < 1:
        raise ValueError(
            f"generate: expected prime ids of shape (P,) or (P, B) with P >= 1, got "
            f"{tuple(prime.shape)}"
        )
    return prime.to(model.decoder.weight.device)


def _adjust(logits: Tensor, temperature: float, top_k: int | None, banned: Sequence[int]) -> Tensor:
    """Log-probabilities of the distribution to draw from: banned ids removed, top-k kept,
    temperature applied."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if banned:
        logits = logits.clone()
        logits[:, list(banned)] = -math.inf
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if temperature > 0 and temperature != 1:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def sample_tokens(
    model: Any,
    prime: Tensor,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    banned: Sequence[int] = (),
    on_step: Callable[[Tensor], None] | None = None,
    fast: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``length`` tokens for each of ``B`` rows, one network step per token.

    The prime is fed in one call of the recurrent layer; then every step samples a token per row
    from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens
    (``temperature=0``: the most likely token, greedy decoding) and feeds it back.

    Args:
        model: a :class:`~carousel.models.charlm.CharLM` (anything with ``stepper``).
        prime: ``(P,)`` or ``(P, B)`` token ids to start from (``B`` rows; ``(P,)`` is one row).
        length: tokens to generate per row.
        temperature: ``> 0`` sharpens (< 1) or flattens (> 1) the distribution; ``0`` is greedy.
        top_k: draw only among the ``top_k`` most likely tokens (``None``: all).
        generator: the random source (seed it for reproducible samples).
        banned: ids never generated (e.g. the unknown token).
        on_step: called with the ``(B,)`` new tokens after every step (for streaming).
        fast: the stepper's fused path (``None``: where it applies; ``False``: call the layer
            per step, for comparison; see :class:`~carousel.models.charlm.Stepper`).

    Returns:
        ``(tokens, log_probs)``: ``(length, B)`` ids and ``(B,)`` natural-log probabilities of
        each row under the distribution sampled from.

    Raises:
        ValueError: if ``temperature < 0``, ``top_k < 1``, ``length < 1`` or the prime is empty.
    """
    _check_sampling(temperature, top_k)
    check_positive_int("sample_tokens", "length", length)
    prime = _prime_ids(model, prime)
    B = prime.shape[1]
    stepper = model.stepper(B, fast=fast)
    logits = stepper.feed(prime) if prime.shape[0] > 1 else stepper.step(prime[0])
    out = torch.empty(length, B, dtype=torch.long, device=prime.device)
    total = torch.zeros(B, device=prime.device)
    for t in range(length):
        logp = _adjust(logits, temperature, top_k, banned)  # (B, V)
        if temperature == 0:
            tok = logp.argmax(-1)
        else:
            tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)  # (B,)
        total += logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        out[t] = tok
        if on_step is not None:
            on_step(tok)
        if t + 1 < length:
            logits = stepper.step(tok)
    return out, total


@torch.inference_mode()
def beam_search(
    model: Any,
    prime: Tensor,
    length: int,
    beam_width: int = 8,
    *,
    banned: Sequence[int] = (),
    on_commit: Callable[[list[int]], None] | None = None,
) -> list[BeamHypothesis]:
    """The ``beam_width`` most probable continuations of ``length`` tokens found by beam search
    (char-rnn samples only; this keeps the ``beam_width`` best prefixes at every step).

    Every step extends each beam by every token, scores the extensions by their total log
    probability and keeps the best ``beam_width``; the beams run as the rows of one batch, and
    the recurrent states of the survivors are gathered from their parents' rows. With
    ``beam_width=1`` this is greedy decoding. Beam search maximises probability, so on open-ended
    text it tends to loop on frequent phrases; sampling gives livelier text.

    Args:
        model: a :class:`~carousel.models.charlm.CharLM`.
        prime: ``(P,)`` token ids.
        length: tokens to generate.
        beam_width: beams kept per step.
        banned: ids never generated.
        on_commit: called with tokens as soon as every beam agrees on them (they can no longer
            change), for streaming.

    Returns:
        Up to ``beam_width`` :class:`BeamHypothesis`, most probable first.

    Raises:
        ValueError: if ``length`` or ``beam_width`` is below 1, or ``prime`` is not ``(P,)``.
    """
    check_positive_int("beam_search", "length", length)
    check_positive_int("beam_search", "beam_width", beam_width)
    if prime.dim() != 1:
        raise ValueError(f"beam_search: expected prime ids of shape (P,), got {tuple(prime.shape)}")
    prime = _prime_ids(model, prime)
    stepper = model.stepper(1)
    logits = stepper.feed(prime) if prime.shape[0] > 1 else stepper.step(prime[0])
    V = logits.shape[-1]
    scores = torch.zeros(1, device=prime.device, dtype=torch.float64)  # (K,)
    history = torch.empty(0, 1, dtype=torch.long, device=prime.device)  # (t, K)
    committed = 0
    for t in range(length):
        logp = _adjust(logits, 1.0, None, banned).double()  # (K, V)
        total = (scores.unsqueeze(1) + logp).view(-1)  # (K*V,)
        k = min(beam_width, int(torch.isfinite(total).sum()))
        scores, flat = torch.topk(total, k)
        parents, tokens = flat // V, flat % V
        history = torch.cat([history[:, parents], tokens.unsqueeze(0)])  # (t+1, k)
        if on_commit is not None:
            agree = (history == history[:, :1]).all(dim=1)  # (t+1,)
            n = committed
            while n < agree.numel() and bool(agree[n]):
                n += 1
            if n > committed:
                on_commit(history[committed:n, 0].tolist())
                committed = n
        if t + 1 < length:
            stepper.select(parents)
            logits = stepper.step(tokens)
    if on_commit is not None and committed < length:
        on_commit(history[committed:, 0].tolist())
    return [BeamHypothesis(history[:, j].tolist(), float(scores[j])) for j in range(len(scores))]


class LanguageModel(NamedTuple):
    """A trained language model loaded from a checkpoint.

    Attributes:
        model: the :class:`~carousel.models.charlm.CharLM`, in eval mode.
        vocab: its :class:`~carousel.text.vocab.Vocabulary`.
        task: the :class:`~carousel.tasks.charlm.CharLMTask` it was trained on (its text is
            read only when asked for, e.g. ``task.text("valid")``).
    """

    model: Any
    vocab: Any
    task: Any


def load_language_model(path: str | os.PathLike, *, device: str = "auto") -> LanguageModel:
    """The language model, vocabulary and task of a ``charlm`` checkpoint.

    Args:
        path: a checkpoint directory, a run directory or its ``last`` link.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns:
        :class:`LanguageModel` ``(model, vocab, task)``.

    Raises:
        ValueError: if the checkpoint holds another task's model.
        carousel.train.CheckpointError: for a missing, damaged or foreign checkpoint.
    """
    from carousel.models.charlm import CharLM
    from carousel.train import load_trained

    model, task, config, _ = load_trained(path, device=device)
    vocab = getattr(task, "vocab", None)
    if not isinstance(model, CharLM) or vocab is None:
        raise ValueError(
            f"{path}: a checkpoint of task {config.task!r}; generating text needs a language "
            "model (carousel train charlm ...)"
        )
    return LanguageModel(model, vocab, task)


def generate(
    model: Any,
    vocab: Any = None,
    prime: str = "",
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    beam_width: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    allow_unknown: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Generate text from a trained language model.

    Args:
        model: a :class:`~carousel.models.charlm.CharLM` (put in eval mode for the call), or
            the path of a ``charlm`` checkpoint (:func:`load_language_model`).
        vocab: the model's :class:`~carousel.text.vocab.Vocabulary` (default with a checkpoint:
            its own).
        prime: text to start from; empty starts after a newline (or the vocabulary's last
            token if it has no newline). Unseen characters follow the vocabulary's policy.
        length: tokens (characters, or words for a word model) to generate.
        temperature: sampling temperature; ``0`` is greedy decoding.
        top_k: sample only among the ``top_k`` most likely tokens.
        beam_width: if set, beam search with this many beams instead of sampling
            (``temperature`` and ``top_k`` are then unused).
        seed: seeds a fresh generator (same seed, same text); ignored if ``generator`` given.
        generator: the random source.
        allow_unknown: allow the unknown token in the output (default: never generated).
        on_text: called with the text of each new token as it is produced (streaming; with
            beam search, as soon as all beams agree on it).

    Returns:
        :class:`Generation` ``(text, tokens, log_prob)``.

    Raises:
        ValueError: on invalid options, a missing vocabulary or a prime that encodes to no
            token.

    Example:
        >>> import torch
        >>> from carousel.models.charlm import CharLM
        >>> from carousel.text.vocab import Vocabulary
        >>> vocab = Vocabulary.build("hello world")
        >>> lm = CharLM(len(vocab), 16, 1)
        >>> g = generate(lm, vocab, prime="he", length=5, seed=0)
        >>> len(g.tokens), len(g.text)
        (5, 5)
    """
    _check_sampling(temperature, top_k)
    check_positive_int("generate", "length", length)
    if isinstance(model, (str, os.PathLike)):
        model, own_vocab, _ = load_language_model(model)
        vocab = own_vocab if vocab is None else vocab
    if vocab is None:
        raise ValueError("generate: vocab is required with a model (it maps ids to text)")
    if not isinstance(prime, str):
        raise TypeError(f"generate: prime must be a str, got {type(prime).__name__}")
    if generator is None:
        generator = torch.Generator(device=model.decoder.weight.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    if prime:
        ids = vocab.encode(prime, name="prime")
        if ids.numel() == 0:
            raise ValueError(
                f"generate: the prime {prime!r} has no token in the vocabulary (policy "
                f"{vocab.unknown!r}); use other text"
            )
    else:
        start = "\n" if "\n" in vocab else vocab.tokens[-1]
        ids = torch.tensor([vocab.id(start)])
    banned = [] if allow_unknown or vocab.unknown_id is None or len(vocab) == 1 else [0]
    was_training = model.training
    model.eval()
    try:
        if beam_width is not None:
            emit = None if on_text is None else (lambda toks: on_text(vocab.decode(toks)))
            best = beam_search(model, ids, length, beam_width, banned=banned, on_commit=emit)[0]
            return Generation(vocab.decode(best.tokens), best.tokens, best.log_prob)
        emit_step = None if on_text is None else (lambda tok: on_text(vocab.decode(tok)))
        tokens, logp = sample_tokens(
            model,
            ids,
            length,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            banned=banned,
            on_step=emit_step,
        )
    finally:
        model.train(was_training)
    toks = tokens[:, 0].tolist()
    return Generation(vocab.decode(toks), toks, float(logp[0]))
