"""Leave-one-face-out sweep of the handwriting recogniser: for each Latin Hershey face, train
on the other eleven within a budget, then read new words in the held-out face (a new "writer").

Usage (docs/results.md, section "Handwriting"):

    .venv/bin/python benchmarks/handwriting_lofo.py --out runs/hw-lofo --minutes 2.5 --clock cpu

Each face's run goes to ``OUT/<face>``; a face whose run finished is not trained again, so an
interrupted sweep resumes (``--faces`` picks a subset). The checkpoint kept is the one with
the best CER on new words in the *training* faces (the held-out face never chooses it). Then
every held-out face is read (``--eval-size`` samples of new words, a seed apart from the one
used during training) greedily and with the prefix beam search fused with the English
character 6-gram (weight 0.5, fixed a priori), and a Markdown table with the mean is printed
and written to ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path

import torch
from handwriting_eval import evaluation_data, rates  # the benchmarks folder is on sys.path

from carousel.handwriting import LATIN_FACES
from carousel.handwriting.recognizer import (
    RecognizerTrainConfig,
    english_char_lm,
    load_recognizer,
    train_recognizer,
)
from carousel.tasks.handwriting import HandwritingConfig


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="sweep folder (one run folder per face)")
    p.add_argument("--minutes", type=float, default=2.5, help="training budget per face")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help="what minutes count")
    p.add_argument("--faces", nargs="*", default=list(LATIN_FACES), help="faces to hold out")
    p.add_argument("--eval-size", type=int, default=500, help="samples per held-out face")
    p.add_argument("--seed", type=int, default=0, help="seed of model and data")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    unknown = sorted(set(a.faces) - set(LATIN_FACES))
    if unknown:
        p.error(f"--faces: unknown faces {unknown}; expected some of {list(LATIN_FACES)}")
    out = Path(a.out)
    for face in a.faces:
        run = out / face
        if (run / "done.json").is_file():
            continue
        data = HandwritingConfig(held_out_faces=(face,), eval_size=200)
        cfg = RecognizerTrainConfig(data=data, minutes=a.minutes, clock=a.clock, seed=a.seed)
        m = train_recognizer(cfg, run, eval_sets=("new_words", f"face:{face}"))
        (run / "done.json").write_text(json.dumps(m, indent=1))
    lm = english_char_lm(order=6)
    rows = []
    for face in a.faces:
        model, meta = load_recognizer(out / face / "best")
        data = evaluation_data(meta, a.eval_size)
        r = rates(model, data.eval_set(f"face:{face}"), lm)
        rows.append((face, meta["metrics"], r))
    lines = [
        f"Leave-one-face-out, {a.minutes} {a.clock} minutes of training per face, "
        f"{a.eval_size} new words per held-out face.",
        "",
        "| held-out face | steps | CER greedy | WER greedy | CER beam+English 6-gram "
        "| WER beam+English 6-gram |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for face, m, r in rows:
        lines.append(
            f"| `{face}` | {m.get('step')} | {r['cer']:.2%} | {r['wer']:.2%} | "
            f"{r['lm_cer']:.2%} | {r['lm_wer']:.2%} |"
        )
    n = len(rows)
    mean = {k: sum(r[k] for _, _, r in rows) / n for k in ("cer", "wer", "lm_cer", "lm_wer")}
    lines.append(
        f"| **mean of {n}** | | {mean['cer']:.2%} | {mean['wer']:.2%} | "
        f"{mean['lm_cer']:.2%} | {mean['lm_wer']:.2%} |"
    )
    lines += ["", f"machine: {platform.machine()}, torch {torch.__version__}"]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
