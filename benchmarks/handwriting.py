"""Train the handwriting recogniser (BiLSTM + CTC) and report CER/WER on new words in the
training faces and on held-out faces.

Usage (one run; see docs/results.md, section "Handwriting"):

    .venv/bin/python benchmarks/handwriting.py --out runs/hw-budget \\
        --held-out cursive futural timesi --minutes 20 --clock cpu --eval-every 2000 --eval-size 200

``--clock cpu`` counts the training process's CPU time (one thread; a second process makes the
data, and ``data_cpu_minutes`` in metrics.jsonl says what it cost), which is what 20 minutes on
2 dedicated cores give while the data costs less than the training, measured fairly on a busy
machine. The defaults are the library's (``RecognizerTrainConfig``).
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
    d = RecognizerTrainConfig()
    p.add_argument(
        "--hidden-size", type=int, default=d.hidden_size, help="LSTM units per direction"
    )
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="bidirectional layers")
    p.add_argument("--stride", type=int, default=d.stride, help="input points per frame")
    p.add_argument("--frontend-size", type=int, default=d.frontend_size, help="front-end units")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per batch")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="peak Adam lr")
    p.add_argument("--schedule", choices=["cosine", "step"], default=d.schedule,
                   help="learning-rate schedule over the budget")  # fmt: skip
    p.add_argument("--variation", type=float, default=HandwritingConfig().variation,
                   help="scale of the writer and glyph distortions")  # fmt: skip
    p.add_argument("--reuse", type=int, default=d.reuse,
                   help="pools each fresh sample is in (2: half the data cost)")  # fmt: skip
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads of the model")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations")
    p.add_argument("--eval-size", type=int, default=200, help="samples per evaluation set")
    p.add_argument("--seed", type=int, default=0, help="seed of model and data")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = HandwritingConfig(
        held_out_faces=tuple(a.held_out), eval_size=a.eval_size, variation=a.variation
    )
    cfg = RecognizerTrainConfig(
        data=data, minutes=a.minutes, clock=a.clock, hidden_size=a.hidden_size,
        num_layers=a.num_layers, stride=a.stride, frontend_size=a.frontend_size,
        batch_size=a.batch_size, learning_rate=a.learning_rate, schedule=a.schedule,
        reuse=a.reuse, threads=a.threads, eval_every=a.eval_every, seed=a.seed,
    )  # fmt: skip
    sets = ("new_words", *(f"face:{f}" for f in a.held_out))
    m = train_recognizer(cfg, a.out, eval_sets=sets)
    print(json.dumps(m, indent=1))
    print(f"machine: {platform.machine()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
