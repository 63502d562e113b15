"""``carousel serve handwriting CKPT``: the handwriting demo in the browser."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from carousel.models.ctc_recognizer import CTCRecognizer

DEMOS = ("handwriting",)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a demo page on 127.0.0.1 (handwriting: write with the mouse, see it read)",
        description="Serve a demo page. handwriting: write a word with the mouse or a pen; the "
        "recognised text and the four rows of lecture 7e (when each character is output, "
        "memory cells, the writing, the gradient of the most active character w.r.t. the "
        "pen's x and y) come back as you write; what you wrote can be saved as carousel-pen JSON.",
    )
    p.add_argument("demo", choices=DEMOS, help="which demo")
    p.add_argument(
        "checkpoint",
        help="a trained recogniser: a run directory of `carousel train handwriting` (or its "
        "`last`/step-N checkpoint), or a folder written by carousel.handwriting.save_recognizer",
    )
    p.add_argument(
        "--lm",
        choices=("english", "none"),
        default="english",
        help="english (default): read with the prefix beam search and the English character "
        "6-gram of carousel.handwriting.recognizer.english_char_lm (built in about 2 s at start; "
        "0.44%% CER on new words against 1.74%% greedy, docs/results.md); "
        "none: greedy, the network's own reading",
    )
    p.add_argument("--beam", type=int, default=8, help="beam width with --lm english (default 8)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--picture",
        metavar="PNG",
        help="instead of serving, draw the lecture 7e picture of a synthetic word to this PNG",
    )
    p.add_argument("--word", default="handwriting", help="the word drawn with --picture")
    p.add_argument("--face", default="cursive", help="the Hershey face used with --picture")
    p.add_argument("--seed", type=int, default=0, help="the writer's seed with --picture")
    p.set_defaults(func=run)


def load_any_recognizer(path: str) -> tuple[CTCRecognizer, dict[str, Any]]:
    """A recogniser from an engine checkpoint or a ``save_recognizer`` folder: ``(model, meta)``."""
    from carousel.handwriting.recognizer import load_recognizer

    p = Path(path)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return load_recognizer(p)
    from carousel.train import load_trained

    model, task, config, ckpt = load_trained(p, device="cpu")
    if task.name != "handwriting":
        raise ValueError(f"{path}: a checkpoint of task {task.name!r}, not of 'handwriting'")
    import dataclasses

    # the handwriting task's make_model builds a CTCRecognizer (load_trained types it nn.Module)
    recognizer = cast("CTCRecognizer", model)
    return recognizer, {"config": {"data": dataclasses.asdict(config.data)}, "step": ckpt.step}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model, meta = load_any_recognizer(args.checkpoint)
    except (OSError, ValueError) as err:
        print(f"carousel serve: {err}", file=sys.stderr)
        return 2
    if args.picture:
        import numpy as np

        from carousel.handwriting.demo import lecture_7e_figure
        from carousel.handwriting.synth import sample_writer, write_word

        rng = np.random.default_rng(args.seed)
        strokes = write_word(args.word, args.face, sample_writer(rng, variation=0.5), rng)
        spacing = float(meta.get("config", {}).get("data", {}).get("spacing", 0.2))
        a = lecture_7e_figure(model, strokes, args.picture, spacing=spacing,
                              title=f"{args.word!r} in {args.face}")  # fmt: skip
        print(f"recognised {a['text']!r}; picture written to {args.picture}")
        return 0
    from carousel.web import HandwritingApp, make_server

    decode = {}
    if args.lm == "english":
        if args.beam < 1:
            print(f"carousel serve: --beam must be >= 1, got {args.beam}", file=sys.stderr)
            return 2
        from carousel.handwriting.recognizer import english_char_lm

        decode = {"beam_width": args.beam, "scorer": english_char_lm(), "lm_weight": 0.5}
    server = make_server(HandwritingApp(model, meta, **decode), args.host, args.port)
    host, port = server.server_address[:2]
    assert isinstance(host, str)  # getsockname() of an AF_INET(6) socket; typeshed allows bytes
    print(f"handwriting demo: open http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
