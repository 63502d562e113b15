"""Evaluate a trained handwriting recogniser: CER/WER per evaluation set, greedy and with the
prefix beam search fused with a character language model: by default a 6-gram of English words
from the prose of Python's standard library (`carousel.handwriting.recognizer.english_char_lm`),
or (`--lm train-words`) a 4-gram of the task's *training* words.

Usage:

    .venv/bin/python benchmarks/handwriting_eval.py runs/handwriting-lofo/best \\
        --faces cursive futural timesi

Prints a markdown table (one row per set): the new words in the training faces, then each
named face. Neither model is fitted to the evaluation words (the English one knows them only
as English words the standard library's documentation uses); the weight (0.5) and the orders
are fixed a priori.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from carousel.ctc import (
    NGramCharScorer,
    character_error_rate,
    greedy_decode,
    prefix_beam_search,
    word_error_rate,
)
from carousel.handwriting.recognizer import english_char_lm, load_recognizer
from carousel.tasks.handwriting import ALPHABET, HandwritingConfig, HandwritingData, collate


@torch.no_grad()
def rates(model, samples, scorer=None, beam_width=8, lm_weight=0.5):
    refs, greedy, beam = [], [], []
    for i in range(0, len(samples), 32):
        batch = collate(samples[i : i + 32])
        out = model(batch.inputs, lengths=batch.lengths)
        refs += batch.texts
        greedy += [ALPHABET.decode(h.tokens) for h in greedy_decode(out.output, out.lengths)]
        if scorer is not None:
            for b, n in enumerate(out.lengths.tolist()):
                h = prefix_beam_search(out.output[:n, b], beam_width=beam_width, scorer=scorer,
                                       lm_weight=lm_weight)[0]  # fmt: skip
                beam.append(ALPHABET.decode(h.tokens))
    r = {"cer": character_error_rate(refs, greedy), "wer": word_error_rate(refs, greedy)}
    if scorer is not None:
        r["lm_cer"], r["lm_wer"] = character_error_rate(refs, beam), word_error_rate(refs, beam)
    return r


def evaluation_data(meta: dict, eval_size: int) -> HandwritingData:
    """The data of a checkpoint's training run, with evaluation sets drawn from the next seed
    (fresh samples, never seen during training or its checkpoint selection)."""
    cfg = meta["config"]["data"]
    return HandwritingData(
        HandwritingConfig(
            faces=tuple(cfg["faces"]), held_out_faces=tuple(cfg["held_out_faces"]),
            test_word_every=cfg["test_word_every"], variation=cfg["variation"],
            spacing=cfg["spacing"], eval_seed=cfg["eval_seed"] + 1, eval_size=eval_size,
        )
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="a folder written by train_recognizer (last or best)")
    p.add_argument("--faces", nargs="*", default=[], help="faces to evaluate one by one")
    p.add_argument("--eval-size", type=int, default=300, help="samples per set")
    p.add_argument("--no-lm", action="store_true", help="greedy decoding only")
    p.add_argument(
        "--lm", choices=("english", "train-words"), default="english",
        help="character LM of the beam search: English words of the standard library's prose "
        "(6-gram, default) or the task's training words (4-gram)",
    )  # fmt: skip
    p.add_argument("--timing", action="store_true", help="print seconds per set")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, meta = load_recognizer(a.checkpoint)
    data = evaluation_data(meta, a.eval_size)
    scorer = None
    if not a.no_lm and a.lm == "train-words":
        scorer = NGramCharScorer(len(ALPHABET), order=4).fit(
            ALPHABET.encode(w) for w in data.train_words
        )
    elif not a.no_lm:
        scorer = english_char_lm(order=6)
    lm_name = "English 6-gram" if a.lm == "english" else "4-gram"
    m = meta["metrics"]
    print(f"checkpoint {a.checkpoint}: step {m.get('step')}, {m.get('minutes')} training minutes")
    print(f"| set | samples | CER greedy | WER greedy | CER beam+{lm_name} | WER beam+{lm_name} |")
    print("|---|---|---|---|---|---|")
    sets = [("new words, training faces", "new_words")] + [
        (f"held-out face `{f}`", f"face:{f}") for f in a.faces
    ]
    for label, name in sets:
        t = time.time()
        r = rates(model, data.eval_set(name), scorer)
        lm = f"{r['lm_cer']:.2%} | {r['lm_wer']:.2%}" if scorer else "- | -"
        row = f"| {label} | {a.eval_size} | {r['cer']:.2%} | {r['wer']:.2%} | {lm} |"
        print(row, f" ({time.time() - t:.0f} s)" if a.timing else "")
    print(f"machine: {platform.machine()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
