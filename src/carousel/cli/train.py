"""``carousel train TASK``: train a registered task, resuming its last checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a task (see `carousel tasks`), resuming from its last checkpoint",
        description=(
            "Train a registered task with its built-in defaults, a TOML config file and "
            "--set overrides. Checkpoints, metrics (metrics.jsonl, train.csv, eval.csv), the "
            "config (config.toml) and a loss plot (loss.png) go to the run directory "
            "(runs/TASK unless log.dir is set). Running the same command again resumes from "
            "the last checkpoint. Under torchrun it trains data-parallel: "
            "`torchrun --nproc-per-node 2 -m carousel train TASK`."
        ),
    )
    p.add_argument("task", metavar="TASK", help="the task's name, e.g. binary-addition")
    p.add_argument(
        "--config", metavar="FILE", help="a TOML config file (tables data, model, optim, ...)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="override config values, e.g. --set model.hidden_size=128 optim.lr=0.01 (repeatable)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from step 0, deleting the run directory's checkpoints and metrics",
    )
    p.add_argument(
        "--text",
        metavar="PATH",
        action="append",
        default=[],
        help="text file or folder for text tasks such as charlm (repeatable); the same as "
        "--set data.text=[PATH,...]",
    )
    p.add_argument(
        "--unit",
        choices=("char", "word"),
        default=None,
        help="for charlm: model characters or words; the same as --set data.unit=UNIT",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument(
        "--json", action="store_true", help="print the final evaluation as JSON on stdout"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel._malloc import keep_freed_memory
    from carousel.cli._common import format_metrics, setup_logging
    from carousel.text.corpus import CorpusError
    from carousel.train import (
        CheckpointError,
        ConfigError,
        NonFiniteError,
        load_config,
        train,
    )

    setup_logging(args.quiet)
    keep_freed_memory()  # a step stops page-faulting its buffers in (carousel._malloc)
    overrides = list(args.overrides)
    if args.text:
        overrides.insert(0, "data.text=" + json.dumps(args.text))
    if args.unit:
        overrides.insert(0, f"data.unit={args.unit}")
    if args.quiet:
        overrides.append("log.progress=off")
    try:
        config = load_config(args.task, args.config, overrides)
        result = train(config, restart=args.restart)
    except (ConfigError, CheckpointError, CorpusError, FileNotFoundError, IsADirectoryError) as e:
        print(f"carousel train: {e}", file=sys.stderr)  # bad config, checkpoint or data file
        return 2
    except NonFiniteError as e:
        print(f"carousel train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "carousel train: interrupted; run the same command again to resume from the last "
            "checkpoint",
            file=sys.stderr,
        )
        return 130
    if result.rank != 0:
        return 0
    from carousel.tasks import make_task

    task = make_task(config.task, config.data)
    if args.json:
        print(
            json.dumps(
                {
                    "step": result.step,
                    "evaluation": result.evaluation,
                    "checkpoint": str(result.checkpoint),
                },
                indent=1,
            )
        )
        return 0
    loss = result.train_metrics.get("loss")
    last = f" (last training loss {loss:.4g})" if isinstance(loss, float) else ""
    print(f"{config.task}: {result.step} steps in {result.seconds:.1f} s{last}")
    width = max(len(s) for s in result.evaluation) if result.evaluation else 0
    for split, metrics in result.evaluation.items():
        print(
            f"  {split:<{width}}  {format_metrics(metrics, task.primary_metric)}"
            f"   [{task.describe_split(split)}]"
        )
    if result.skipped_steps:
        print(f"  {result.skipped_steps} updates skipped (NaN/inf)")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}  (carousel eval {result.run_dir / 'last'})")
    if result.plot is not None:
        print(f"loss curve: {result.plot}")
    return 0
