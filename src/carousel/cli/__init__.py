"""The ``carousel`` command line: argument parsing only; the work is done by library calls."""

from __future__ import annotations

import argparse
import sys

import carousel

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carousel", description="Recurrent neural networks: train, understand, use."
    )
    parser.add_argument("--version", action="version", version=f"carousel {carousel.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
