"""Training, saving, loading and running the handwriting recogniser (BiLSTM + CTC).

This is the task's own small training loop (seed, data, model, optimizer, loop, evaluate,
checkpoint), used by ``carousel train handwriting`` until the generic engine drives it, and by
the leave-one-face-out benchmark.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from carousel._checks import check_positive_int
from carousel.ctc import (
    CharScorer,
    CTCHypothesis,
    NGramCharScorer,
    character_error_rate,
    ctc_loss,
    greedy_decode,
    prefix_beam_search,
    word_error_rate,
)
from carousel.handwriting.pen import pen_features
from carousel.models.config import ModelConfig
from carousel.models.ctc_recognizer import CTCRecognizer
from carousel.tasks.handwriting import (
    ALPHABET,
    HandwritingConfig,
    HandwritingData,
    Sample,
    collate,
)

__all__ = [
    "Recognition",
    "RecognizerTrainConfig",
    "best_reading",
    "english_char_lm",
    "evaluate_recognizer",
    "load_recognizer",
    "recognize",
    "save_recognizer",
    "train_recognizer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecognizerTrainConfig:
    """Training of the handwriting recogniser."""

    # the data (faces, held-out faces, variation)
    data: HandwritingConfig = field(default_factory=HandwritingConfig)
    # units per LSTM layer and direction
    hidden_size: int = 128
    # stacked bidirectional LSTM layers
    num_layers: int = 2
    # input points joined into one frame by the front end
    stride: int = 6
    # units of the front end
    frontend_size: int = 64
    # sequences per batch
    batch_size: int = 16
    # batches' worth of samples sorted by length and cut into batches (less padding)
    length_pool: int = 32
    # pools each generated sample is trained in (2: half the data generation per step, each
    # sample seen twice with other neighbours; keeps the data process within one core)
    reuse: int = 2
    # Adam's (peak) learning rate
    learning_rate: float = 2e-3
    # learning-rate schedule over the budget (time, or max_steps if sooner): "cosine" (warm-up,
    # then a half cosine down to final_lr * learning_rate) or "step" (halved at 60% and 85%)
    schedule: str = "step"
    # fraction of the budget spent warming the learning rate up linearly (cosine schedule)
    warmup: float = 0.02
    # the cosine schedule's last learning rate, as a fraction of learning_rate
    final_lr: float = 0.02
    # gradient clipping by norm
    clip_norm: float = 1.0
    # training time budget in minutes
    minutes: float = 20.0
    # what `minutes` counts: "wall" (elapsed time) or "cpu" (CPU time of the training process,
    # which runs one thread; the data worker is the second core). "cpu" measures the budget
    # of a dedicated machine fairly on a shared, busy one.
    clock: str = "wall"
    # upper bound on optimizer steps (0: none)
    max_steps: int = 0
    # evaluate and checkpoint every this many steps
    eval_every: int = 250
    # seed of the model initialisation and the training data
    seed: int = 0
    # torch threads for the model (one more process generates data)
    threads: int = 1
    # processes generating training data (0: in the training process)
    data_workers: int = 1


_SCHEDULES = ("cosine", "step")


def _lr_factor(config: RecognizerTrainConfig, frac: float) -> float:
    """The learning rate's multiplier at ``frac`` (0..1) of the budget."""
    if config.schedule == "step":
        return (0.5 if frac > 0.6 else 1.0) * (0.5 if frac > 0.85 else 1.0)
    if frac < config.warmup:
        return max(frac / config.warmup, 0.01)
    rest = min((frac - config.warmup) / max(1.0 - config.warmup, 1e-9), 1.0)
    return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * rest))


def _model_from(config: RecognizerTrainConfig) -> CTCRecognizer:
    core = ModelConfig(
        hidden_size=config.hidden_size, num_layers=config.num_layers, bidirectional=True
    )
    return CTCRecognizer(
        4, len(ALPHABET), core, stride=config.stride, frontend_size=config.frontend_size
    )


def _to_jsonable(config: RecognizerTrainConfig) -> dict[str, Any]:
    return asdict(config)


def _from_jsonable(d: dict[str, Any]) -> RecognizerTrainConfig:
    # JSON has lists where the config has tuples
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in d.get("data", {}).items()
    }
    data = HandwritingConfig(**fields)
    return RecognizerTrainConfig(**{**d, "data": data})


def save_recognizer(
    path: str | os.PathLike,
    model: CTCRecognizer,
    config: RecognizerTrainConfig,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint folder: ``model.safetensors`` (weights) and ``config.json`` (config,
    alphabet, metrics); no pickle, written to a temporary folder and renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    meta = {
        "kind": "carousel-handwriting-recognizer",
        "version": 1,
        "config": _to_jsonable(config),
        "alphabet": "".join(ALPHABET.symbols),
        "metrics": metrics or {},
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        os.replace(path, old)
        os.replace(tmp, path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, path)


def load_recognizer(
    path: str | os.PathLike, *, device: torch.device | str | None = None
) -> tuple[CTCRecognizer, dict]:
    """Load a checkpoint folder written by :func:`save_recognizer`.

    Returns:
        ``(model, meta)``: the model in eval mode and the checkpoint's metadata.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a damaged or foreign checkpoint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg, weights = path / "config.json", path / "model.safetensors"
    if not cfg.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{path}: not a handwriting checkpoint (expected config.json and model.safetensors)"
        )
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg}: damaged checkpoint metadata ({err})") from err
    if not isinstance(meta, dict) or meta.get("kind") != "carousel-handwriting-recognizer":
        raise ValueError(f"{cfg}: not a carousel handwriting recogniser checkpoint")
    if meta.get("alphabet") != "".join(ALPHABET.symbols):
        raise ValueError(f"{cfg}: alphabet {meta.get('alphabet')!r} differs from this carousel's")
    config = _from_jsonable(meta["config"])
    model = _model_from(config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights}: damaged weights ({err})") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not fit the model in config.json ({err})") from err
    return model.to(device).eval(), meta


class Recognition(NamedTuple):
    """What :func:`recognize` returns.

    Attributes:
        text: the recognised text.
        hypothesis: the best :class:`~carousel.ctc.CTCHypothesis` (tokens, score, timesteps).
        features: ``(N, 4)`` the normalised input (see :func:`~carousel.handwriting.pen_features`).
        log_probs: ``(T', C)`` per-frame log probabilities.
    """

    text: str
    hypothesis: CTCHypothesis
    features: np.ndarray
    log_probs: torch.Tensor


def english_char_lm(*, order: int = 6, min_count: int = 2, max_repeat: int = 20) -> NGramCharScorer:
    """A character n-gram model of English words for the beam search over handwriting.

    Fitted to the words of :func:`carousel.text.english.english_word_counts` (the prose of
    Python's standard library; about 8,000 words used at least twice), each word one sequence
    between begin and end markers, weighted ``min(count, max_repeat)`` so that frequent
    words weigh more without drowning the rest. It never sees any task's word list.

    Args:
        order: the n-gram order.
        min_count: keep words used at least this often.
        max_repeat: the most times one word is counted.

    Returns:
        A :class:`~carousel.ctc.NGramCharScorer` over the handwriting alphabet.

    Example:
        >>> lm = english_char_lm(order=3)
        >>> lm.log_prob(ALPHABET.encode("water")) > lm.log_prob(ALPHABET.encode("wqtxr"))
        True
    """
    from carousel.text.english import english_word_counts

    check_positive_int("english_char_lm", "max_repeat", max_repeat)
    words = english_word_counts(min_count=min_count, max_length=24)
    lm = NGramCharScorer(len(ALPHABET), order=order)
    return lm.fit(
        [ALPHABET.encode(w) for w in words], weights=[min(c, max_repeat) for c in words.values()]
    )


@torch.no_grad()
def recognize(
    model: CTCRecognizer,
    strokes: list[np.ndarray],
    *,
    beam_width: int = 0,
    scorer: CharScorer | None = None,
    lm_weight: float = 0.5,
    spacing: float = 0.2,
) -> Recognition:
    """Read handwriting: strokes (y up) -> text.

    Args:
        model: a trained recogniser.
        strokes: pen-down strokes, arrays ``(n, 2|3)``.
        beam_width: 0 for greedy decoding, else the prefix beam search's width.
        scorer, lm_weight: optional character LM fusion (see
            :func:`carousel.ctc.prefix_beam_search`).
        spacing: the resampling distance the model was trained with.
    """
    feats = pen_features(strokes, spacing=spacing)
    x = torch.from_numpy(feats).unsqueeze(1).to(next(model.parameters()).device)
    lp = model(x).output[:, 0]  # (T', C)
    hyp = best_reading(lp, beam_width=beam_width, scorer=scorer, lm_weight=lm_weight)
    return Recognition(ALPHABET.decode(hyp.tokens), hyp, feats, lp)


def best_reading(
    log_probs: torch.Tensor,
    *,
    beam_width: int = 0,
    scorer: CharScorer | None = None,
    lm_weight: float = 0.5,
) -> CTCHypothesis:
    """The best hypothesis of one sequence's ``(T', C)`` log probabilities: greedy with
    ``beam_width=0``, else the prefix beam search's first, with the optional character LM
    ``scorer`` fused at ``lm_weight`` (:func:`carousel.ctc.prefix_beam_search`)."""
    if beam_width:
        return prefix_beam_search(
            log_probs, beam_width=beam_width, scorer=scorer, lm_weight=lm_weight
        )[0]
    return greedy_decode(log_probs.unsqueeze(1))[0]


@torch.no_grad()
def evaluate_recognizer(
    model: CTCRecognizer, samples: list[Sample], *, batch_size: int = 64
) -> dict[str, float]:
    """Greedy-decoded character and word error rates on ``samples``."""
    was = model.training
    model.eval()
    refs, hyps = [], []
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].features))
    for i in range(0, len(order), batch_size):
        batch = collate([samples[j] for j in order[i : i + batch_size]],
                        device=next(model.parameters()).device)  # fmt: skip
        out = model(batch.inputs, lengths=batch.lengths)
        decoded: list[CTCHypothesis] = greedy_decode(out.output, out.lengths)
        refs += batch.texts
        hyps += [ALPHABET.decode(h.tokens) for h in decoded]
    model.train(was)
    return {"cer": character_error_rate(refs, hyps), "wer": word_error_rate(refs, hyps)}


@functools.lru_cache(maxsize=4)
def _data_for(config: HandwritingConfig) -> HandwritingData:
    return HandwritingData(config)


def _worker_samples(
    args: tuple[HandwritingConfig, int, list[int]],
) -> tuple[list[Sample], int, float]:
    """``n`` fresh samples (without their raw strokes, which training does not read), with
    the process id and its CPU seconds so far (the data's cost is reported beside the
    budget)."""
    config, n, seed = args
    data = _data_for(config)
    rng = np.random.default_rng(seed)
    samples = [data.sample(rng)._replace(strokes=[]) for _ in range(n)]
    return samples, os.getpid(), time.process_time()


def _lots(
    config: RecognizerTrainConfig,
) -> Generator[tuple[list[Sample], int, float], None, None]:
    """Lots of fresh samples from :func:`_worker_samples`, made ``data_workers`` processes
    ahead of the training (at most one lot waiting per worker), or in this process."""
    n = config.batch_size * config.length_pool
    seeds = ((config.data, n, [config.seed, k]) for k in range(10**9))
    if config.data_workers == 0:
        yield from map(_worker_samples, seeds)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(config.data_workers) as workers:
        ahead = deque(
            workers.apply_async(_worker_samples, (next(seeds),))
            for _ in range(2 * config.data_workers)
        )
        while True:
            lot = ahead.popleft().get()
            ahead.append(workers.apply_async(_worker_samples, (next(seeds),)))
            yield lot


def _batch_stream(
    config: RecognizerTrainConfig, data_cpu: dict[int, float]
) -> Generator[list[Sample], None, None]:
    """Length-grouped training batches: each pool (the last ``reuse`` lots of ``length_pool``
    batches' worth of fresh samples) is sorted by length, cut into batches and shuffled;
    ``data_cpu`` collects each data worker's CPU seconds."""
    B = config.batch_size
    rng = np.random.default_rng([config.seed, 10**9])
    recent: list[list[Sample]] = []
    lots = _lots(config)
    try:
        for samples, pid, cpu in lots:
            data_cpu[pid] = cpu
            recent.append(samples)
            del recent[: -config.reuse]
            pool = sorted((s for lot in recent for s in lot), key=lambda s: len(s.features))
            chunks = [pool[i : i + B] for i in range(0, len(pool), B)]
            yield from (chunks[int(i)] for i in rng.permutation(len(chunks)))
    finally:
        lots.close()


_CLOCKS = ("wall", "cpu")


def train_recognizer(
    config: RecognizerTrainConfig,
    out_dir: str | os.PathLike,
    *,
    eval_sets: tuple[str, ...] = ("new_words",),
) -> dict[str, Any]:
    """Train a recogniser within ``config.minutes``; checkpoint to ``out_dir/last`` at each
    evaluation and ``out_dir/best`` at the best CER on the first evaluation set, and log
    metrics to ``out_dir/metrics.jsonl``.

    Returns:
        The final metrics (``step``, ``minutes``, and ``cer``/``wer`` per evaluation set).
    """
    if config.clock not in _CLOCKS:
        raise ValueError(
            f"train_recognizer: clock must be one of {list(_CLOCKS)}, got {config.clock!r}"
        )
    if config.schedule not in _SCHEDULES:
        raise ValueError(
            f"train_recognizer: schedule must be one of {list(_SCHEDULES)}, got {config.schedule!r}"
        )
    for name in ("batch_size", "length_pool", "reuse"):
        if getattr(config, name) < 1:
            raise ValueError(f"train_recognizer: {name} must be >= 1, got {getattr(config, name)}")
    if not (0 <= config.warmup < 1 and 0 <= config.final_lr <= 1):
        raise ValueError(
            "train_recognizer: warmup must be in [0, 1) and final_lr in [0, 1], got "
            f"{config.warmup} and {config.final_lr}"
        )
    torch.set_num_threads(config.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    data = HandwritingData(config.data)
    evals = {name: data.eval_set(name) for name in eval_sets}
    model = _model_from(config)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    budget = config.minutes * 60
    clock = time.process_time if config.clock == "cpu" else time.monotonic
    start = clock()
    wall_start = time.monotonic()
    last_eval = -1
    step, best, metrics = 0, math.inf, {}
    logf = (out / "metrics.jsonl").open("a", encoding="utf-8")
    running: list[float] = []
    nonfinite = 0
    data_cpu: dict[int, float] = {}

    def evaluate_and_save() -> dict[str, Any]:
        nonlocal best, last_eval
        last_eval = step
        m = {
            "step": step,
            "minutes": round((clock() - start) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall_start) / 60, 2),
            "loss": float(np.mean(running)) if running else None,
            "skipped": nonfinite,
            "lr": opt.param_groups[0]["lr"],
            "data_cpu_minutes": round(sum(data_cpu.values()) / 60, 2),
        }
        for name, samples in evals.items():
            r = evaluate_recognizer(model, samples)
            m[f"{name}/cer"], m[f"{name}/wer"] = r["cer"], r["wer"]
        logf.write(json.dumps(m) + "\n")
        logf.flush()
        log.info("%s", m)
        save_recognizer(out / "last", model, config, m)
        key = f"{eval_sets[0]}/cer"
        if m[key] <= best:
            best = m[key]
            save_recognizer(out / "best", model, config, m)
        return m

    stream = _batch_stream(config, data_cpu)
    try:
        for chunk in stream:
            elapsed = clock() - start
            if elapsed >= budget or (config.max_steps and step >= config.max_steps):
                break
            frac = elapsed / budget
            if config.max_steps:
                frac = max(frac, step / config.max_steps)
            lr = config.learning_rate * _lr_factor(config, frac)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = collate(chunk)
            res = model(batch.inputs, lengths=batch.lengths)
            loss = ctc_loss(res.output, batch.targets, res.lengths, batch.target_lengths,
                            zero_infinity=True, check_normalized=False)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            if not torch.isfinite(loss) or not torch.isfinite(norm):
                nonfinite += 1
                continue
            opt.step()
            running.append(float(loss.detach()))
            running = running[-100:]
            step += 1
            if step % config.eval_every == 0:
                metrics = evaluate_and_save()
    finally:
        stream.close()
    if last_eval != step:
        metrics = evaluate_and_save()
    logf.close()
    return metrics
