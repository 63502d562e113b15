"""Profile one training step of the handwriting recogniser: where the CPU time goes (data,
collate, forward, CTC, backward, clipping, optimizer) and how many steps one CPU second buys,
with the core run packed (torch's generic path) or padded (oneDNN; the default).

Usage (the table in docs/results.md, section "Handwriting"):

    .venv/bin/python benchmarks/handwriting_step.py

One torch thread; CPU seconds of this process (time.process_time), so a busy machine
inflates the numbers less than it would wall-clock times.
"""

from __future__ import annotations

import argparse
import platform
import time
from unittest import mock

import numpy as np
import torch

from carousel.ctc import ctc_loss
from carousel.handwriting.recognizer import RecognizerTrainConfig, _model_from, _worker_samples
from carousel.models.ctc_recognizer import CTCRecognizer
from carousel.tasks.handwriting import HandwritingConfig, collate

PHASES = ("collate", "forward", "ctc", "backward", "clip", "optimizer")


def profile(cfg: RecognizerTrainConfig, samples, *, packed: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    model = _model_from(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    ordered = sorted(samples, key=lambda s: len(s.features))
    B = cfg.batch_size
    batches = [ordered[i : i + B] for i in range(0, len(ordered) - B + 1, B)]
    acc = dict.fromkeys(PHASES, 0.0)
    steps = 0
    clock = time.process_time
    patch = mock.patch.object(CTCRecognizer, "_padded_core_applies", return_value=not packed)
    with patch:
        for rep in range(repeats + 1):
            for chunk in batches:
                t0 = clock()
                b = collate(chunk)
                t1 = clock()
                res = model(b.inputs, lengths=b.lengths)
                t2 = clock()
                loss = ctc_loss(res.output, b.targets, res.lengths, b.target_lengths,
                                zero_infinity=True, check_normalized=False)  # fmt: skip
                t3 = clock()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t4 = clock()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                t5 = clock()
                opt.step()
                t6 = clock()
                if rep:  # the first pass warms up
                    steps += 1
                    for k, dt in zip(
                        PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
                    ):
                        acc[k] += dt
    return {k: v / steps for k, v in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=256, help="samples profiled per setting")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over them")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = HandwritingConfig(held_out_faces=("cursive", "futural", "timesi"))
    t = time.process_time()
    samples = _worker_samples((data, a.samples, [0, 0]))[0]
    per_sample = (time.process_time() - t) / a.samples
    mean_points = np.mean([len(s.features) for s in samples])
    print(f"data: {per_sample * 1e3:.2f} ms CPU per sample ({mean_points:.0f} points on average)")
    print()
    print("| stride | batch | core | " + " | ".join(PHASES) + " | ms/step | steps/CPU s "
          "| samples/CPU s | data ms/batch |")  # fmt: skip
    print("|---" * (len(PHASES) + 7) + "|")
    settings = [(4, 32, True), (4, 32, False), (6, 16, True), (6, 16, False)]
    for stride, batch, packed in settings:
        cfg = RecognizerTrainConfig(data=data, stride=stride, batch_size=batch)
        r = profile(cfg, samples, packed=packed, repeats=a.repeats)
        step = sum(r.values())
        cells = " | ".join(f"{r[k] * 1e3:.1f}" for k in PHASES)
        print(f"| {stride} | {batch} | {'packed' if packed else 'padded'} | {cells} | "
              f"{step * 1e3:.1f} | {1 / step:.1f} | {batch / step:.0f} | "
              f"{per_sample * batch * 1e3:.0f} |")  # fmt: skip
    print()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread, "
          f"torch {torch.__version__}, CPU seconds of this process")  # fmt: skip


if __name__ == "__main__":
    main()
