"""``carousel transcribe CKPT FILE.wav ...``: transcribe WAV files with a trained speech
recogniser, printing each transcript with the time of every character."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe WAV files with a trained speech recogniser (speech, speech-words)",
        description=(
            "Load a checkpoint of `carousel train speech` or `carousel train speech-words` and "
            "print the transcript of each 16-bit PCM WAV file (any sample rate) with the time "
            "in seconds at which each character was recognised. With --evaluate, print the "
            "error rates of greedy and beam-search decoding on the task's held-out splits."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="e.g. runs/speech/last")
    p.add_argument("files", nargs="*", metavar="FILE.wav", help="16-bit PCM WAV files")
    p.add_argument(
        "--beam",
        type=int,
        default=1,
        help="beam width: 1 (default) decodes greedily; more runs prefix beam search with a "
        "character n-gram LM of the task's training transcripts",
    )
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of the character LM")
    p.add_argument(
        "--length-bonus", type=float, default=1.0, help="bonus per character in beam search"
    )
    p.add_argument("--lm-order", type=int, default=6, help="order of the character n-gram LM")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="instead of files, print greedy and beam (width --beam, default 16) + LM error "
        "rates on the task's held-out splits",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carousel.train import CheckpointError, ConfigError

    try:
        if args.evaluate:
            return _evaluate(args)
        if not args.files:
            print("carousel transcribe: give WAV files (or --evaluate)", file=sys.stderr)
            return 2
        return _transcribe(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"carousel transcribe: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from carousel.speech.recognize import evaluate_decoders

    beam = args.beam if args.beam > 1 else 16
    res = evaluate_decoders(
        args.checkpoint, beam_width=beam, lm_weight=args.lm_weight,
        length_bonus=args.length_bonus, lm_order=args.lm_order,
    )  # fmt: skip
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{'split':<16} {'utts':>5} {'greedy CER':>10} {'greedy WER':>10} "
          f"{'beam+LM CER':>11} {'beam+LM WER':>11}")  # fmt: skip
    for split, m in res.items():
        print(
            f"{split:<16} {int(m['utterances']):>5} {100 * m['greedy_cer']:>9.2f}% "
            f"{100 * m['greedy_wer']:>9.2f}% {100 * m['beam_cer']:>10.2f}% "
            f"{100 * m['beam_wer']:>10.2f}%"
        )
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from carousel.speech.features import FeatureConfig
    from carousel.speech.recognize import task_char_lm, transcribe
    from carousel.tasks.speech import SpeechTask
    from carousel.train.loop import load_trained

    model, task, _, _ = load_trained(args.checkpoint, device="cpu")
    if not isinstance(task, SpeechTask):
        print(
            f"carousel transcribe: {args.checkpoint} is a {task.name!r} checkpoint, not a "
            "speech task (speech, speech-words)",
            file=sys.stderr,
        )
        return 2
    scorer = task_char_lm(task, order=args.lm_order) if args.beam > 1 else None
    results = transcribe(
        model, task.alphabet, args.files, features=FeatureConfig(n_mels=task.config.n_mels),
        beam_width=args.beam, scorer=scorer, lm_weight=args.lm_weight,
    )  # fmt: skip
    if args.json:
        doc = [
            {"file": f, "text": r.text, "times": list(r.times)}
            for f, r in zip(args.files, results, strict=True)
        ]
        print(json.dumps(doc, indent=1))
        return 0
    for f, r in zip(args.files, results, strict=True):
        print(f"{f}: {r.text}")
        print("  " + " ".join(f"{c!r}@{t:.2f}s" for c, t in r.timings()))
    return 0
