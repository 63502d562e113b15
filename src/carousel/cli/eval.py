"""``carousel eval CKPT``: evaluate a checkpoint on its task's held-out splits."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on its task's held-out splits",
        description=(
            "Load a checkpoint written by `carousel train` (a step-NNNNNN directory, a run "
            "directory or its `last` link) and print its metrics on the task's held-out splits, "
            "the same data as the evaluation during training."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="e.g. runs/binary-addition/last")
    p.add_argument(
        "--split",
        dest="splits",
        action="append",
        metavar="SPLIT",
        help="evaluate only this split (repeatable; default: all of the task's)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel.cli._common import format_metrics
    from carousel.train import CheckpointError, ConfigError
    from carousel.train.loop import evaluate_trained, load_trained

    try:
        model, task, config, ckpt = load_trained(args.checkpoint, device=args.device)
        results = evaluate_trained(model, task, config, args.splits)
    except (CheckpointError, ConfigError, ValueError) as e:
        print(f"carousel eval: {e}", file=sys.stderr)
        return 2
    if args.json:
        doc = {"checkpoint": str(ckpt.path), "step": ckpt.step, "evaluation": results}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{ckpt.path} ({config.task}, step {ckpt.step})")
    width = max(len(s) for s in results)
    for split, metrics in results.items():
        print(
            f"  {split:<{width}}  {format_metrics(metrics, task.primary_metric)}"
            f"   [{task.describe_split(split)}]"
        )
    return 0
