"""``carousel cells CKPT``: which memory cells of a language model track quotes, brackets,
line position or word starts, and a page that colours a text by their activations."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _cell(text: str) -> tuple[int, int]:
    layer, sep, unit = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(layer), int(unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:UNIT (e.g. 1:37), got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    from carousel.text.interpret import FEATURES

    p = subparsers.add_parser(
        "cells",
        help="find the memory cells of a language model that track features of the text",
        description=(
            "Read a text with a trained language model, rank its memory cells by the "
            "correlation of their activation with simple features of the text (inside quotes "
            "or brackets, position in the line, start of a word, ...), print the best and "
            "write a self-contained HTML page colouring the text by them (Karpathy et al. "
            "2016's interpretable cells)."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a charlm checkpoint (e.g. runs/charlm/last)")
    p.add_argument(
        "--text",
        default=None,
        help="text file to read (default: the start of the model's validation text)",
    )
    p.add_argument("--encoding", default="utf-8", help="encoding of --text (default utf-8)")
    p.add_argument(
        "--feature",
        action="append",
        choices=[*FEATURES, "all"],
        default=None,
        help="feature to rank cells by (repeatable; 'all' for every one; default quotes); "
        "the page shows cells of the first",
    )
    p.add_argument("--top", type=int, default=5, help="cells listed per feature (default 5)")
    p.add_argument(
        "--cell",
        type=_cell,
        action="append",
        default=[],
        metavar="LAYER:UNIT",
        help="draw this cell instead of the best ones (repeatable)",
    )
    p.add_argument(
        "--state",
        choices=["c", "h"],
        default="c",
        help="c: memory cells (LSTM); h: hidden outputs (the only choice for GRU/RNN)",
    )
    p.add_argument("--max-chars", type=int, default=5000, help="read at most this many characters")
    p.add_argument("--html", default=None, metavar="FILE", help="write the HTML page here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel.generate import load_language_model
    from carousel.text.corpus import read_text_file
    from carousel.text.interpret import FEATURES, cell_report

    try:
        model, vocab, task = load_language_model(args.checkpoint, device=args.device)
        if args.text is not None:
            text = read_text_file(args.text, encoding=args.encoding)
        else:
            text = task.text("valid")
        text = text[: args.max_chars]
        features = args.feature or ["quotes"]
        if "all" in features:
            features = list(FEATURES)
        report = cell_report(
            model,
            vocab,
            text,
            features=features,
            top=args.top,
            cells=args.cell,
            state=args.state,
            title=f"carousel cells: {args.checkpoint}",
        )
    except (OSError, ValueError) as e:
        print(f"carousel cells: {e}", file=sys.stderr)
        return 2
    for name, ranked in report.rankings.items():
        print(f"{name}: cells ranked by |correlation| over {len(text)} characters")
        print("  layer  cell  correlation")
        for c in ranked:
            print(f"  {c.layer:5d}  {c.unit:4d}  {c.correlation:+.3f}")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(report.html)
        shown = ", ".join(f"{layer}:{unit}" for layer, unit in report.shown)
        print(f"wrote {args.html} (cells {shown})")
    return 0
