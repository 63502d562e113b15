"""Lecture 7a's point about hidden Markov models, measured: an HMM with N states carries at most
log2(N) bits about the past, so it fails at recalling k random bits once k > log2(N), while an
RNN with a few units recalls them.

Every model reads the same token sequences of :class:`~carousel.tasks.longlag.BitMemorisation`
(k random bits, a blank, the same bits again) and is scored by its log-loss on the recalled
bits given everything before them, ``L = E[-log2 q(bits | prefix)]``. The bits it remembers are
``k - L``: k for perfect recall, 0 for guessing. For the HMM, ``k - L <= log2 N`` is a theorem
(:mod:`carousel.baselines.hidden_state`); the table shows the fitted models against it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from carousel._checks import check_positive_int
from carousel.baselines.hidden_state import HMMBaseline, LDSBaseline
from carousel.study.models import get_model_spec
from carousel.study.train import train_until_solved
from carousel.tasks.longlag import BitMemorisation, LongLagBatch

__all__ = ["CapacityResult", "CapacityRow", "capacity_study", "hmm_recall", "lds_recall"]


@dataclass
class CapacityRow:
    """One model on one value of k.

    Attributes:
        model: ``"hmm"``, ``"lds"`` or ``"rnn"``.
        size: states (HMM), state dimension (LDS) or hidden units (RNN).
        bits: k, the bits to remember.
        remembered: ``k - L`` (see the module docstring), in bits.
        bound: ``log2 N`` for the HMM, else ``None``.
        recall_accuracy: fraction of test sequences whose bits are all predicted right (the
            most probable bit at each recall step, given the true earlier ones).
    """

    model: str
    size: int
    bits: int
    remembered: float
    bound: float | None
    recall_accuracy: float


@dataclass
class CapacityResult:
    rows: list[CapacityRow]
    markdown: str


def hmm_recall(hmm: HMMBaseline, tokens: torch.Tensor, k: int) -> tuple[float, float]:
    """Bits remembered (``k - L``) and full-recall accuracy of a fitted HMM.

    Args:
        hmm: a fitted :class:`HMMBaseline` over the 3 tokens.
        tokens: ``(2k + T, B)`` test sequences.
        k: bits to recall (the last ``k`` tokens).

    Returns:
        ``(remembered, recall_accuracy)``.
    """
    p = hmm.predictive(tokens)[-k:]  # (k, B, 3)
    truth = tokens[-k:]  # (k, B)
    logq = p.gather(-1, truth.unsqueeze(-1)).squeeze(-1).log2()  # (k, B)
    loss = -logq.sum(0).mean().item()
    right = (p[..., :2].argmax(-1) == truth).all(0).double().mean().item()
    return k - loss, right


def lds_recall(lds: LDSBaseline, tokens: torch.Tensor, k: int) -> tuple[float, float]:
    """As :func:`hmm_recall` for a linear dynamical system fitted to the tokens coded as real
    numbers (bit 0 -> -1, bit 1 -> +1, blank -> 0): the recall distribution over the two bit
    values is the Gaussian predictive density at -1 and +1, renormalised."""
    obs = _lds_coding(tokens)
    mean, cov = lds.predictive(obs)
    mu = mean[-k:, :, 0]  # (k, B)
    var = cov[-k:, 0, 0].unsqueeze(-1)  # (k, 1)
    sign = obs[-k:, :, 0]  # the true value, -1 or +1
    # q(+1) / q(-1) = exp(2 mu / var) for a Gaussian with mean mu and variance var
    logq = -torch.nn.functional.softplus(-2.0 * sign * mu / var) / math.log(2)
    loss = -logq.sum(0).mean().item()
    right = ((mu > 0) == (sign > 0)).all(0).double().mean().item()
    return k - loss, right


def _lds_coding(tokens: torch.Tensor) -> torch.Tensor:
    x = torch.where(tokens == 2, 0.0, 2.0 * tokens.double() - 1.0)
    return x.unsqueeze(-1)  # (T, B, 1)


def rnn_recall(model: nn.Module, task: BitMemorisation, batch: LongLagBatch) -> tuple[float, float]:
    """As :func:`hmm_recall` for a trained network on a batch of the task."""
    with torch.no_grad():
        out = model(batch.inputs)
    loss = task.recall_bits(out, batch).mean().item()
    right = task.correct(out, batch).double().mean().item()
    return task.num_bits - loss, right


def capacity_study(
    *,
    bits: Sequence[int] = (1, 2, 3, 4, 5),
    states: Sequence[int] = (2, 4, 8, 16),
    rnn_units: int = 8,
    lds_size: int | None = 8,
    T: int = 1,
    train_sequences: int = 1000,
    test_sequences: int = 1000,
    restarts: int = 3,
    rnn_max_sequences: int = 200_000,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> CapacityResult:
    """Bits remembered by HMMs with N states, an LDS and a tanh RNN, for each k.

    Args:
        bits: values of k.
        states: HMM state counts N.
        rnn_units: hidden units of the tanh RNN (Adam; trained until 2000 successive training
            sequences are recalled perfectly, or ``rnn_max_sequences``).
        lds_size: state dimension of the linear dynamical system (``None``: no LDS).
        T: blanks between the bits and their recall.
        train_sequences: sequences the HMMs and the LDS are fitted to.
        test_sequences: fresh sequences every model is scored on.
        restarts: EM restarts per HMM.
        rnn_max_sequences: training budget of the RNN.
        seed: seeds data, EM initialisations and the RNN.
        out_dir: if given, write ``capacity.json``, ``capacity.md`` and ``capacity.png`` there.

    Returns:
        A :class:`CapacityResult`.

    Raises:
        ValueError, TypeError: for no ``bits`` or ``states``, or a count out of range.
    """
    for name, values in (("bits", bits), ("states", states)):
        if len(values) == 0:
            raise ValueError(f"capacity_study: {name} must not be empty")
        for v in values:
            check_positive_int("capacity_study", name, v)
    for name, value in (
        ("rnn_units", rnn_units), ("train_sequences", train_sequences),
        ("test_sequences", test_sequences), ("restarts", restarts),
        ("rnn_max_sequences", rnn_max_sequences),
    ):  # fmt: skip
        check_positive_int("capacity_study", name, value)
    rows: list[CapacityRow] = []
    spec = get_model_spec("rnn-adam", hidden_size=rnn_units, lr=1e-2)
    for k in bits:
        task = BitMemorisation(num_bits=k, T=T)
        g = torch.Generator().manual_seed(seed * 7919 + k)
        train = task.tokens(train_sequences, g)
        test_gen = torch.Generator().manual_seed(seed * 7919 + 1000 + k)
        test_batch = task.sample(test_sequences, generator=test_gen)
        test = torch.cat([test_batch.inputs.argmax(-1), test_batch.targets[-1:]])
        for N in states:
            hmm = HMMBaseline(N, 3, restarts=restarts, seed=seed).fit(train)
            rem, acc = hmm_recall(hmm, test, k)
            rows.append(CapacityRow("hmm", N, k, rem, math.log2(N), acc))
        if lds_size is not None:
            lds = LDSBaseline(lds_size, seed=seed).fit(_lds_coding(train))
            rem, acc = lds_recall(lds, test, k)
            rows.append(CapacityRow("lds", lds_size, k, rem, None, acc))
        net = spec.build(task.input_size, task.output_size, seed=seed)
        train_until_solved(
            spec, task, seed=seed, max_sequences=rnn_max_sequences, test_size=1, model=net
        )
        rem, acc = rnn_recall(net, task, test_batch)
        rows.append(CapacityRow("rnn", rnn_units, k, rem, None, acc))
    result = CapacityResult(rows, _markdown(rows, T, train_sequences, test_sequences))
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def _markdown(rows: list[CapacityRow], T: int, n_train: int, n_test: int) -> str:
    bits = sorted({r.bits for r in rows})
    models = []
    for r in rows:
        if (r.model, r.size) not in models:
            models.append((r.model, r.size))
    names = {"hmm": "HMM, {} states", "lds": "LDS, {}-dim state", "rnn": "tanh RNN, {} units"}
    head = "| model | bound | " + " | ".join(f"k={k}" for k in bits) + " |"
    lines = [
        "Bits remembered, k - E[-log2 q(recalled bits | prefix)], on "
        f"{n_test} test sequences (k bits, {T} blank(s), the k bits again); in brackets the "
        "fraction of sequences recalled perfectly.",
        "",
        head,
        "|---|---:|" + "---:|" * len(bits),
    ]
    for model, size in models:
        cells = []
        bound = "-"
        for k in bits:
            match = [r for r in rows if r.model == model and r.size == size and r.bits == k]
            if match:
                r = match[0]
                cells.append(f"{r.remembered:.2f} ({r.recall_accuracy:.2f})")
                if r.bound is not None:
                    bound = f"{r.bound:.0f} bits"
            else:
                cells.append("-")
        lines.append(f"| {names[model].format(size)} | {bound} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"HMMs (hmmlearn CategoricalHMM, EM, best of the restarts) and the LDS (pykalman, EM) "
        f"are fitted to {n_train} sequences; the RNN is trained with Adam on fresh ones."
    )
    return "\n".join(lines) + "\n"


def _write(result: CapacityResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_text(json.dumps([asdict(r) for r in result.rows], indent=1))
    (out / "capacity.md").write_text(result.markdown)
    try:
        _plot(result.rows, out / "capacity.png")
    except ImportError:  # pragma: no cover - matplotlib is in the dev extra
        pass


def _plot(rows: list[CapacityRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = sorted({r.bits for r in rows})
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot(bits, bits, color="0.6", linestyle=":", label="perfect recall (k bits)")
    groups: dict[tuple[str, int], list[CapacityRow]] = {}
    for r in rows:
        groups.setdefault((r.model, r.size), []).append(r)
    for (model, size), rs in groups.items():
        rs.sort(key=lambda r: r.bits)
        label = {"hmm": f"HMM {size} states", "lds": f"LDS {size}-dim", "rnn": f"RNN {size} units"}
        line = ax.plot([r.bits for r in rs], [r.remembered for r in rs], marker="o",
                       label=label[model])[0]  # fmt: skip
        if model == "hmm":
            ax.axhline(math.log2(size), color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("k, bits to remember")
    ax.set_ylabel("bits remembered")
    ax.set_title("HMM memory is at most log2(N) bits (dashed)")
    ax.set_xticks(bits)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
