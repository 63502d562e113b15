"""``python -m carousel.speech prepare TASK [--set data.KEY=VALUE ...] [--processes N]``:
generate a speech task's synthetic corpus into the cache in parallel processes (otherwise
training generates it shard by shard on first use)."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carousel.speech", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="generate a task's corpus into the cache")
    prep.add_argument("task", choices=["speech", "speech-words"], help="the task")
    prep.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, as for carousel train (data.* keys matter here)",
    )  # fmt: skip
    prep.add_argument(
        "--processes", type=int, default=None, help="worker processes (default: all cores)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from carousel.speech.synth import EspeakNotFoundError, prepare_corpus
    from carousel.tasks import make_task
    from carousel.tasks.speech import SpeechTask
    from carousel.train import load_config

    config = load_config(args.task, None, args.set)
    task = make_task(config.task, config.data)
    assert isinstance(task, SpeechTask)  # the choices of the task argument are speech tasks
    t0 = time.perf_counter()
    try:
        folder = prepare_corpus(
            task.spec, cache_dir=task.config.cache_dir or None, processes=args.processes
        )
    except EspeakNotFoundError as e:
        print(f"python -m carousel.speech: {e}", file=sys.stderr)
        return 1
    print(f"{folder}: ready in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
