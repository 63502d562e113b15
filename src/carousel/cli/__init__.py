"""The ``carousel`` command line: argument parsing only; the work is done by library calls.

Each command lives in its own module under ``carousel.cli`` with a function
``register(subparsers)`` that adds its sub-parser and sets ``func`` (called with the parsed
arguments, returning an exit code). Modules are imported lazily by :func:`build_parser` from
:data:`COMMAND_MODULES`, so ``carousel --help`` stays fast and optional dependencies load only
for the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import carousel

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules that contribute commands, in the order ``carousel --help`` lists them.
COMMAND_MODULES: list[str] = [
    "train",
    "eval",
    "tasks",
    "study",
    "generate",
    "cells",
    "ngram",
    "explain",
    "analyze",
    "esn",
    "serve",
    "transcribe",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carousel", description="Recurrent neural networks: train, understand, use."
    )
    parser.add_argument("--version", action="version", version=f"carousel {carousel.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"carousel.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
