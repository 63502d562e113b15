"""``carousel generate CKPT``: text from a trained language model, streamed as it is produced."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a trained language model (carousel train charlm)",
        description=(
            "Prime a trained language model with text and generate from it, one network step "
            "per character (or word), printing each as it is produced. Sampling by default "
            "(--temperature, --top-k, --seed); --temperature 0 or --greedy for the most likely "
            "token at every step; --beam N for beam search."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="checkpoint directory, run directory or its 'last' link (e.g. runs/charlm/last)",
    )
    p.add_argument("--prime", default="", help="text to start from (default: a new line)")
    p.add_argument(
        "--length", type=int, default=500, help="characters (words for a word model) to generate"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="below 1 sharper and safer, above 1 wilder; 0 is greedy (default 1.0)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="sample only among the K most likely tokens"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text)")
    p.add_argument(
        "--greedy", action="store_true", help="always take the most likely token (temperature 0)"
    )
    p.add_argument(
        "--beam",
        type=int,
        default=None,
        metavar="N",
        help="beam search with N beams: the most probable continuation (printed as beams agree)",
    )
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="let the model produce the unknown token (shown as U+FFFD or <unk>)",
    )
    p.add_argument(
        "--no-echo", action="store_true", help="print only the generated text, not the prime"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel.generate import generate, load_language_model

    try:
        model, vocab, _ = load_language_model(args.checkpoint, device=args.device)
    except (OSError, ValueError) as e:
        print(f"carousel generate: {e}", file=sys.stderr)
        return 2
    out = sys.stdout

    def emit(text: str) -> None:
        out.write(text)
        out.flush()

    if not args.no_echo:
        emit(args.prime)
    try:
        generate(
            model,
            vocab,
            prime=args.prime,
            length=args.length,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k,
            beam_width=args.beam,
            seed=args.seed,
            allow_unknown=args.allow_unknown,
            on_text=emit,
        )
    except (TypeError, ValueError) as e:
        print(f"\ncarousel generate: {e}", file=sys.stderr)
        return 2
    emit("\n")
    return 0
