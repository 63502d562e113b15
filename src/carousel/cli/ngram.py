"""``carousel ngram``: the Kneser-Ney n-gram baseline of the charlm task, order by order."""

from __future__ import annotations

import argparse
import json
import math
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ngram",
        help="Kneser-Ney n-gram baselines for a language model's text (validation bits/char)",
        description=(
            "Count interpolated modified Kneser-Ney n-gram models of every order up to "
            "--max-order on the training part of a text and score them on its validation part: "
            "the same split and vocabulary as `carousel train charlm` with the same options, "
            "so the numbers compare directly with the recurrent model's bits per character."
        ),
    )
    p.add_argument(
        "--text",
        metavar="PATH",
        action="append",
        default=[],
        help="text file or folder (repeatable; default: the built-in corpus)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a data option of the charlm task, e.g. --set data.unit=word (repeatable)",
    )
    p.add_argument(
        "--unit",
        choices=("char", "word"),
        default=None,
        help="count characters or words; the same as --set data.unit=UNIT",
    )
    p.add_argument("--max-order", type=int, default=24, help="highest order (default 24)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel.tasks import make_task
    from carousel.tasks.charlm import CharLMTask, ngram_baseline
    from carousel.train import ConfigError, load_config

    overrides = list(args.overrides)
    if args.text:
        overrides.insert(0, "data.text=" + json.dumps(args.text))
    if args.unit:
        overrides.insert(0, f"data.unit={args.unit}")
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        print(f"carousel ngram: only data.* options apply, got {bad}", file=sys.stderr)
        return 2
    try:
        config = load_config("charlm", overrides=overrides)
        task = make_task("charlm", config.data)
        assert isinstance(task, CharLMTask)  # the registry's "charlm"
        result = ngram_baseline(task, args.max_order)
    except (ConfigError, OSError, ValueError) as e:
        print(f"carousel ngram: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result._asdict(), indent=1))
        return 0
    print(
        f"Kneser-Ney n-grams on {task.describe()}: {result.train_tokens} training "
        f"{task.vocab.unit}s, {result.valid_tokens} scored, vocabulary {len(task.vocab)} "
        f"({result.seconds:.1f} s)"
    )
    print("| order | bits/char | bits/token | perplexity |")
    print("|---:|---:|---:|---:|")
    for n, bpc in result.bits_per_char.items():
        bpt = result.bits_per_token[n]
        mark = " (best)" if n == result.best_order else ""
        print(f"| {n}{mark} | {bpc:.4f} | {bpt:.4f} | {math.pow(2, bpt):.3f} |")
    return 0
