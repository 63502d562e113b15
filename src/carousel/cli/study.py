"""``carousel study``: reproduce the lectures' claims as grids of runs with a table and a plot.

``carousel study long-lag`` runs models x tasks x T x seeds on the long-time-lag problems
(:mod:`carousel.study.runner`); ``carousel study capacity`` runs lecture 7a's HMM memory
demonstration (:mod:`carousel.study.capacity`); ``carousel study binary-addition`` trains
lecture 7c's adder and reads its automaton out (:mod:`carousel.study.binary_addition`).
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import os
import sys

from carousel.cli._common import one_line_errors

__all__ = ["register"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _override(text: str) -> tuple[str, str, object]:
    key, sep, value = text.partition("=")
    model, dot, fieldname = key.partition(".")
    if not sep or not dot or not model or not fieldname:
        raise argparse.ArgumentTypeError(f"expected MODEL.FIELD=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return model, fieldname, parsed


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="reproduce the lectures' claims: grids of runs, tables and plots",
        description="Grids of training runs that turn the lectures' claims into numbers.",
    )
    sub = p.add_subparsers(dest="study", metavar="STUDY", required=True)

    ll = sub.add_parser(
        "long-lag",
        help="which models solve the long-time-lag problems at which T",
        description=(
            "Run a grid (model x task x T x seed) of the long-time-lag problems, each run "
            "until its paper's stopping rule holds or its budget is spent; write a Markdown "
            "and JSON table and a plot of success rate against T. Interrupted studies resume: "
            "run the same command again."
        ),
    )
    ll.add_argument(
        "--preset",
        default="default",
        help="named grid to start from (default, quick); the flags below override "
        "its fields (default: %(default)s)",
    )
    ll.add_argument("--models", type=_csv, help="comma-separated models (see --list)")
    ll.add_argument("--tasks", type=_csv, help="comma-separated tasks (see --list)")
    ll.add_argument("--T", dest="lags", type=_ints, help="comma-separated values of T")
    ll.add_argument("--seeds", type=int, help="seeds per (model, task, T)")
    ll.add_argument("--max-sequences", type=int, help="training-sequence budget of each run")
    ll.add_argument(
        "--cell-seconds", type=float, help="time budget of each run in seconds (default: none)"
    )
    ll.add_argument(
        "--time-budget",
        type=float,
        default=math.inf,
        help="time budget of the whole study in seconds; unfinished cells run "
        "next time (default: none)",
    )
    ll.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel processes, one thread each (default: number of CPUs)",
    )
    ll.add_argument("--test-size", type=int, help="fresh test sequences per run (default 2560)")
    ll.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="MODEL.FIELD=VALUE",
        help="override a model's setting, e.g. lstm.hidden_size=16 (repeatable)",
    )
    ll.add_argument(
        "--out", default=None, help="output folder (default: runs/study-long-lag-PRESET)"
    )
    ll.add_argument(
        "--list", action="store_true", help="list the models, tasks and presets and exit"
    )
    ll.set_defaults(func=_long_lag)

    cap = sub.add_parser(
        "capacity",
        help="lecture 7a: an HMM with N states remembers at most log2(N) bits; an RNN more",
        description=(
            "Fit hidden Markov models (hmmlearn) with N states and a small RNN on k-bit "
            "recall, and report the bits each remembers (k minus the recall log-loss) "
            "against the bound log2(N). Needs the [baselines] extra."
        ),
    )
    cap.add_argument(
        "--bits",
        type=_ints,
        default=(1, 2, 3, 4, 5),
        help="values of k, bits to remember (default: 1,2,3,4,5)",
    )
    cap.add_argument(
        "--states", type=_ints, default=(2, 4, 8, 16), help="HMM state counts N (default: 2,4,8,16)"
    )
    cap.add_argument(
        "--rnn-units", type=int, default=8, help="hidden units of the RNN (default: %(default)s)"
    )
    cap.add_argument(
        "--train-sequences",
        type=int,
        default=1000,
        help="training sequences for the HMMs (default: %(default)s)",
    )
    cap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    cap.add_argument(
        "--out", default="runs/study-capacity", help="output folder (default: %(default)s)"
    )
    cap.set_defaults(func=one_line_errors("carousel study capacity")(_capacity))

    ba = sub.add_parser(
        "binary-addition",
        help="lecture 7c: a 3-unit RNN learns binary addition; its automaton is read out",
        description=(
            "Train tanh RNNs on 8-bit binary addition with the training engine (one run per "
            "seed; finished runs are reused), test them on 64-bit numbers, and read the "
            "finite-state automaton out of the best one (k-means over hidden states, "
            "transition table, minimisation), drawn as a diagram."
        ),
    )
    ba.add_argument("--seeds", type=int, default=10, help="runs (default: %(default)s)")
    ba.add_argument(
        "--hidden-size", type=int, default=3, help="hidden units (default: %(default)s)"
    )
    ba.add_argument(
        "--delay", type=int, default=0,
        help="output delay of the task; 0 is the lecture's network in carousel's timing, and "
        "the automaton is read only then (default: %(default)s)",
    )  # fmt: skip
    ba.add_argument(
        "--steps", type=int, default=3000, help="updates per run (default: %(default)s)"
    )
    ba.add_argument(
        "--batch-size", type=int, default=128, help="additions per update (default: %(default)s)"
    )
    ba.add_argument(
        "--out", default="runs/study-binary-addition", help="output folder (default: %(default)s)"
    )
    ba.set_defaults(func=one_line_errors("carousel study binary-addition")(_binary_addition))


def _long_lag(args: argparse.Namespace) -> int:
    from carousel.study.models import MODELS
    from carousel.study.runner import PRESETS, StudyConfig, run_study
    from carousel.study.tasks import study_task_names, task_source

    if args.list:
        print("models:")
        for name, spec in MODELS.items():
            print(f"  {name:20s} {spec.description}")
        print("tasks:")
        for name in study_task_names():
            print(f"  {name:28s} {task_source(name)}")
        print("presets:", ", ".join(PRESETS))
        return 0
    if args.preset not in PRESETS:
        print(
            f"carousel study long-lag: unknown preset {args.preset!r}; expected one of "
            f"{list(PRESETS)}",
            file=sys.stderr,
        )
        return 2
    fields = dict(PRESETS[args.preset])
    for name in ("models", "tasks", "lags", "seeds", "max_sequences", "cell_seconds", "test_size"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    overrides: dict[str, dict] = {}
    for model, key, value in args.overrides:
        overrides.setdefault(model, {})[key] = value
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    try:
        config = StudyConfig(
            **fields, time_budget=args.time_budget, workers=workers, overrides=overrides
        )
    except (ValueError, TypeError) as exc:
        print(f"carousel study long-lag: {exc}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", f"study-long-lag-{args.preset}")
    logging.basicConfig(level=logging.WARNING)
    total = len(config.cells())

    def progress(rec: dict) -> None:
        c = rec["cell"]
        if rec["status"] == "interrupted":
            return
        print(
            f"  {c['model']:>14s} {c['task']:>24s} T={c['T']!s:>4s} seed {c['seed']}: "
            f"{rec['status']:>8s} after {rec['sequences']:,} sequences, "
            f"{rec['seconds']:.0f} s, test {rec['test_wrong']}/{rec['test_size']} wrong",
            flush=True,
        )

    print(f"carousel study long-lag: {total} runs ({config.workers} workers) -> {out}")
    records = run_study(config, out, on_result=progress)
    with open(os.path.join(out, "results.md")) as fh:
        print(fh.read())
    missing = total - len(records)
    if missing:
        print(
            f"{missing} runs not finished within the time budget; run the same command "
            "again to resume."
        )
    print(f"wrote {out}/results.md, results.json, success_vs_T.png")
    return 0


def _capacity(args: argparse.Namespace) -> int:
    from carousel.study.capacity import capacity_study

    logging.basicConfig(level=logging.WARNING)
    result = capacity_study(
        bits=args.bits,
        states=args.states,
        rnn_units=args.rnn_units,
        train_sequences=args.train_sequences,
        seed=args.seed,
        out_dir=args.out,
    )
    print(result.markdown)
    print(f"wrote {args.out}/capacity.md, capacity.json, capacity.png")
    return 0


def _binary_addition(args: argparse.Namespace) -> int:
    from carousel.study.binary_addition import binary_addition_study

    logging.basicConfig(level=logging.WARNING)
    study = binary_addition_study(
        seeds=args.seeds,
        hidden_size=args.hidden_size,
        delay=args.delay,
        steps=args.steps,
        batch_size=args.batch_size,
        out_dir=args.out,
    )
    print(study.markdown)
    extra = ", automaton.png" if study.automaton is not None else ""
    print(f"wrote {args.out}/binary_addition.md, binary_addition.json{extra}")
    return 0
