"""Lecture 7c, measured: a tanh RNN with 3 hidden units learns binary addition on 8-bit numbers,
adds 64-bit ones, and the automaton read out of its hidden states is the 4-state carry
automaton.

Each seed is one run of the training engine (:func:`carousel.train.train`) on the
``binary-addition`` task; a finished run is not trained again (the engine resumes from the
run's checkpoint), so the study resumes after an interruption. The automaton is extracted
(:func:`carousel.study.fsa.extract_automaton`) from the run with the best accuracy on the long
numbers.

About the delay: in the lecture's network, input-to-hidden and hidden-to-output connections each
take one time step, so the sum bit of column ``t`` appears at the output at ``t + 2``. A
carousel layer applies its input and its read-out within the step (``h_t`` sees ``x_t``, ``y_t``
reads ``h_t``), so the same network here has delay 0 (``data.delay=0``, the default of this
study); its hidden state after column ``t`` must then hold the carry and the sum bit being
printed, the four states of the lecture's automaton. With the engine's default delay of 2 the
state must also buffer the two pending sum bits, a larger automaton.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from carousel._checks import check_positive_int
from carousel.study.fsa import Automaton, extract_automaton, plot_automaton

if TYPE_CHECKING:
    from carousel.models import SequenceModel

__all__ = [
    "AdditionRun",
    "AdditionStudy",
    "binary_addition_study",
    "carry_automaton",
    "extract_adder_automaton",
]

#: Input symbols: the column ``(a_t, b_t)`` as ``2 a + b``.
COLUMNS = ("00", "01", "10", "11")


def carry_automaton() -> tuple[Automaton, list[str]]:
    """Lecture 7c's automaton for binary addition, minimised, with a name per state.

    States are (carry, sum bit printed); the start state is "no carry, print 0".

    Returns:
        ``(automaton, state_names)``.
    """
    trans = torch.empty(4, 4, dtype=torch.long)
    outputs = torch.empty(4, dtype=torch.long)
    for carry in (0, 1):
        for bit in (0, 1):
            s = 2 * carry + bit
            outputs[s] = bit
            for x in range(4):
                total = (x >> 1) + (x & 1) + carry
                trans[s, x] = 2 * (total // 2) + total % 2
    raw = Automaton(trans, outputs, 0, COLUMNS)
    minimal = raw.minimise()
    # name the canonical states by simulating both from the start on every column sequence
    names = [""] * 4
    frontier = [(raw.start, minimal.start)]
    while frontier:
        r, m = frontier.pop()
        if names[m]:
            continue
        names[m] = f"{'carry' if r >= 2 else 'no carry'}\nprint {r & 1}"
        frontier += [(int(raw.transitions[r, x]), int(minimal.transitions[m, x])) for x in range(4)]
    return minimal, names


@dataclass
class AdditionRun:
    """One seed.

    Attributes:
        seed: the run's seed.
        steps: updates trained.
        steps_to_100: the first evaluation step with every held-out 8-bit addition right
            (``None`` if never).
        valid_accuracy: final fraction of held-out ``train_bits``-bit additions right.
        long_accuracy: final fraction of ``test_bits``-bit additions right.
        long_bit_accuracy: final fraction of their sum bits right.
        run_dir: the engine's run directory.
        automaton_states: states of the automaton read out of this run (delay 0 only).
        carry_automaton: whether that automaton is lecture 7c's (delay 0 only).
    """

    seed: int
    steps: int
    steps_to_100: int | None
    valid_accuracy: float
    long_accuracy: float
    long_bit_accuracy: float
    run_dir: str
    automaton_states: int | None = None
    carry_automaton: bool | None = None


@dataclass
class AdditionStudy:
    """The study's result.

    Attributes:
        runs: one per seed.
        automaton: the minimised automaton of the best run (``None`` unless ``delay == 0``).
        automaton_seed: which run it came from.
        matches_carry_automaton: whether it equals lecture 7c's 4-state automaton.
        automaton_long_accuracy: fraction of the long additions the automaton itself gets
            right (run as an adder on the same inputs).
        markdown: the report.
    """

    runs: list[AdditionRun]
    automaton: Automaton | None
    automaton_seed: int
    matches_carry_automaton: bool
    automaton_long_accuracy: float
    markdown: str


def _random_additions(B: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    from carousel.tasks.binary_addition import add_bits

    a = torch.randint(0, 2, (B, n), generator=generator)
    b = torch.randint(0, 2, (B, n), generator=generator)
    return a, b, add_bits(a, b)


def extract_adder_automaton(
    model: SequenceModel,
    *,
    bits: int = 16,
    sequences: int = 512,
    num_clusters: int = 16,
    seed: int = 0,
) -> Automaton:
    """The automaton of a trained binary-addition model with a one-layer RNN core (delay 0).

    Args:
        model: a :class:`~carousel.models.SequenceModel` (``model.rnn``, ``model.head``).
        bits: length of the random additions it is run on.
        sequences: how many.
        num_clusters: k of k-means (minimisation merges the surplus).
        seed: seeds the data and k-means.

    Returns:
        The minimised automaton over :data:`COLUMNS`, outputs the thresholded output unit.
    """
    g = torch.Generator().manual_seed(seed)
    a, b, _ = _random_additions(sequences, bits, g)
    x = torch.stack([a.T, b.T], -1).float()  # (T, B, 2)
    with torch.no_grad():
        states, _ = model.rnn(x)  # (T, B, H): a one-layer RNN's outputs are its states
        out = (model.head(states).squeeze(-1) > 0).long()  # (T, B)
        h0 = torch.zeros(states.shape[-1])
    symbols = (2 * a + b).T  # (T, B)
    return extract_automaton(
        states, h0, symbols, out, num_symbols=4, num_clusters=num_clusters,
        symbol_names=COLUMNS, generator=g,
    )  # fmt: skip


def _automaton_adds(automaton: Automaton, bits: int, sequences: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed + 1)
    a, b, s = _random_additions(sequences, bits, g)
    out = automaton.run((2 * a + b).T)  # (n, B)
    return float((out == s[:, :bits].T).all(0).double().mean())


def binary_addition_study(
    *,
    seeds: int = 10,
    hidden_size: int = 3,
    delay: int = 0,
    steps: int = 3000,
    batch_size: int = 128,
    out_dir: str | os.PathLike = "runs/study-binary-addition",
    overrides: tuple[str, ...] = (),
) -> AdditionStudy:
    """Train ``seeds`` tanh RNNs with ``hidden_size`` units on 8-bit binary addition (the
    engine's ``binary-addition`` task; Adam 0.01, pinned here so that changed engine defaults
    do not change the study), test them on 64-bit numbers, and read the automaton out of the
    best one.

    Args:
        seeds: runs with seeds ``0 .. seeds - 1``.
        hidden_size: hidden units.
        delay: the task's output delay (0: the lecture's network, see the module docstring).
        steps: updates per run.
        batch_size: additions per update.
        out_dir: runs go to ``out_dir/seed<k>``; the report to ``out_dir``.
        overrides: more ``key=value`` settings for the engine's config.

    Returns:
        An :class:`AdditionStudy`; ``binary_addition.md``, ``binary_addition.json`` and
        ``automaton.png`` are written to ``out_dir``.

    Raises:
        ValueError, TypeError: for a count out of range (``seeds``, ``steps``, ...) or a bad
            override.
    """
    from carousel.train import load_config, read_metrics, train

    for name, value, least in (
        ("seeds", seeds, 1), ("hidden_size", hidden_size, 1), ("delay", delay, 0),
        ("steps", steps, 1), ("batch_size", batch_size, 1),
    ):  # fmt: skip
        check_positive_int("binary_addition_study", name, value, minimum=least)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, models = [], {}
    for seed in range(seeds):
        cfg = load_config(
            "binary-addition",
            overrides=[
                f"seed={seed}", "model.cell=rnn", f"model.hidden_size={hidden_size}",
                "optim.name=adam", "optim.lr=0.01", f"train.batch_size={batch_size}",
                f"data.delay={delay}", f"train.steps={steps}", "train.eval_every=100",
                f"train.checkpoint_every={steps}", f"log.dir={out / f'seed{seed}'}",
                "log.progress=off", *overrides,
            ],
        )  # fmt: skip
        result = train(cfg)
        evals = [r for r in read_metrics(result.run_dir) if r.get("split") == "valid"]
        first = next((r["step"] for r in evals if r.get("accuracy") == 1.0), None)
        ev = result.evaluation
        runs.append(
            AdditionRun(
                seed=seed,
                steps=result.step,
                steps_to_100=first,
                valid_accuracy=ev["valid"]["accuracy"],
                long_accuracy=ev["long"]["accuracy"],
                long_bit_accuracy=ev["long"]["bit_accuracy"],
                run_dir=str(result.run_dir),
            )
        )
        # the binary-addition task's make_model builds a SequenceModel (train types it nn.Module)
        model = cast("SequenceModel", result.model)
        models[seed] = model
        if delay == 0:
            machine = extract_adder_automaton(model)
            runs[-1].automaton_states = machine.num_states
            runs[-1].carry_automaton = machine.equivalent(carry_automaton()[0])
    best = max(runs, key=lambda r: (r.long_accuracy, r.valid_accuracy, -r.seed))
    automaton, matches, adds = None, False, 0.0
    if delay == 0:  # the hidden state is then the lecture's Moore state (module docstring)
        automaton = extract_adder_automaton(models[best.seed])
        reference, names = carry_automaton()
        matches = automaton.equivalent(reference)
        adds = _automaton_adds(automaton, 64, 2048, seed=0)
        try:
            plot_automaton(
                automaton, out / "automaton.png", state_names=names if matches else None,
                title=f"automaton read out of the {hidden_size}-unit RNN (seed {best.seed})",
            )  # fmt: skip
        except ImportError:  # pragma: no cover - matplotlib is in the dev extra
            pass
    md = _markdown(runs, automaton, best.seed, matches, adds, hidden_size, delay, steps, batch_size)
    study = AdditionStudy(runs, automaton, best.seed, matches, adds, md)
    (out / "binary_addition.md").write_text(md)
    (out / "binary_addition.json").write_text(
        json.dumps(
            {
                "runs": [asdict(r) for r in runs],
                "automaton": None
                if automaton is None
                else {
                    "seed": best.seed,
                    "states": automaton.num_states,
                    "transitions": automaton.transitions.tolist(),
                    "outputs": automaton.outputs.tolist(),
                    "start": automaton.start,
                    "matches_carry_automaton": matches,
                    "adds_64_bit": adds,
                },
            },
            indent=1,
        )
    )
    return study


def _markdown(
    runs: list[AdditionRun],
    automaton: Automaton | None,
    seed: int,
    matches: bool,
    adds: float,
    hidden_size: int,
    delay: int,
    steps: int,
    batch: int,
) -> str:
    n = len(runs)
    reached = [r for r in runs if r.steps_to_100 is not None]
    perfect_long = [r for r in runs if r.long_accuracy == 1.0]
    lines = [
        f"{len(reached)} of {n} seeds reach 100% on held-out 8-bit additions within {steps} "
        f"updates of {batch} additions (tanh RNN, {hidden_size} hidden units, delay {delay}, "
        "Adam 0.01); "
        f"{len(perfect_long)} of {n} add every 64-bit test number right.",
        "",
        "| seed | updates to 100% (8-bit) | 8-bit additions right | 64-bit additions right "
        "| 64-bit sum bits right | automaton states |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        first = "-" if r.steps_to_100 is None else str(r.steps_to_100)
        fsa = "-" if r.automaton_states is None else str(r.automaton_states)
        if r.carry_automaton:
            fsa += " (carry automaton)"
        lines.append(
            f"| {r.seed} | {first} | {r.valid_accuracy:.4f} | {r.long_accuracy:.4f} | "
            f"{r.long_bit_accuracy:.5f} | {fsa} |"
        )
    if automaton is None:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Automaton read out of seed {seed} (k-means with 16 clusters over its hidden states "
        f"on 512 random 16-bit additions, transition table, Moore minimisation): "
        f"{automaton.num_states} states; "
        + ("equal to the carry automaton of lecture 7c" if matches else "NOT the carry automaton")
        + f"; run as an adder it gets {100 * adds:.1f}% of 2048 random 64-bit additions right.",
        "",
    ]
    names = ["print 0", "print 1"]
    lines.append(automaton.table(names))
    return "\n".join(lines)
