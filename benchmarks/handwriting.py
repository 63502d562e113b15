"""Train the handwriting recogniser (BiLSTM + CTC) and report CER/WER on new words in the
training faces and on held-out faces.

Usage (one run; see docs/results.md, section "Handwriting"):

    .venv/bin/python benchmarks/handwriting.py --out runs/handwriting-lofo \\
        --held-out cursive futural timesi --minutes 20 --clock cpu

``--clock cpu`` counts the training process's CPU time (one thread; a second process makes the
data), which is what 20 minutes on 2 dedicated cores give, measured fairly on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform

import torch

from carousel.handwriting.recognizer import RecognizerTrainConfig, train_recognizer
from carousel.tasks.handwriting import HandwritingConfig


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--held-out", nargs="*", default=[], help="faces never trained on")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget in minutes")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="what minutes count")
    p.add_argument("--hidden-size", type=int, default=128, help="LSTM units per direction")
    p.add_argument("--stride", type=int, default=4, help="input points per frame")
    p.add_argument("--eval-every", type=int, default=200, help="steps between evaluations")
    p.add_argument("--eval-size", type=int, default=300, help="samples per evaluation set")
    p.add_argument("--seed", type=int, default=0, help="seed of model and data")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = HandwritingConfig(held_out_faces=tuple(a.held_out), eval_size=a.eval_size)
    cfg = RecognizerTrainConfig(
        data=data, minutes=a.minutes, clock=a.clock, hidden_size=a.hidden_size,
        stride=a.stride, eval_every=a.eval_every, seed=a.seed,
    )  # fmt: skip
    sets = ("new_words", *(f"face:{f}" for f in a.held_out))
    m = train_recognizer(cfg, a.out, eval_sets=sets)
    print(json.dumps(m, indent=1))
    print(f"machine: {platform.machine()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
