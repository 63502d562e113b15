"""Learning curves of the speech tasks against a CPU-time budget, with the error of every
evaluation split broken down by accent (and, for unseen variants, by variant).

Usage (see docs/results.md, section "Speech"):

    .venv/bin/python benchmarks/speech_curves.py --budget 200 --every 50 --breakdown \\
        --set data.warp=0 --set data.tempo=0 --set data.freq_mask=0 --set data.time_mask=0

``--set`` takes the overrides of ``carousel train``. The loop is the engine's in short (Adam,
the task's batches and loss, gradient-norm clipping) but runs for ``--budget`` seconds of this
process's CPU time (one torch thread) instead of a number of steps, so runs on a busy machine
compare fairly; a cosine schedule decays over the budget. Evaluation (greedy decoding, digit or
character error rate over each whole split) is not counted in the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from carousel.ctc import character_error_rate, greedy_decode
from carousel.speech.synth import load_shard
from carousel.tasks import make_task
from carousel.tasks.speech import collate
from carousel.train import load_config


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="speech", choices=["speech", "speech-words"], help="task")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--budget", type=float, default=200, help="training CPU seconds")
    p.add_argument("--every", type=float, default=50, help="evaluate every N CPU seconds")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--breakdown", action="store_true", help="error per accent / variant")
    p.add_argument("--save", default="", help="save the final model's state_dict here")
    a = p.parse_args()
    print("$ python " + " ".join(sys.argv), flush=True)
    print(f"# {platform.machine()}, torch {torch.__version__}, {a.threads} thread(s)", flush=True)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.task, None, a.set)
    task = make_task(cfg.task, cfg.data)
    torch.manual_seed(cfg.seed)
    model = task.make_model(cfg.model, generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    cache = task.config.cache_dir or None
    splits = {}
    for s in task.eval_splits:
        F, T, V = [], [], []
        for k in range(task.spec.num_shards(s)):
            f, t, v = load_shard(task.spec, s, k, cache_dir=cache)
            F, T, V = F + f, T + t, V + v
        order = np.argsort([len(f) for f in F], kind="stable")
        splits[s] = [[x[i] for i in order] for x in (F, T, V)]

    def evaluate():
        model.eval()
        res, parts = {}, {}
        with torch.no_grad():
            for s, (F, T, V) in splits.items():
                hyps = []
                for i in range(0, len(F), 64):
                    b = collate(F[i : i + 64], T[i : i + 64], task.alphabet)
                    out = model(b.inputs, lengths=b.lengths)
                    hyps += [
                        task.alphabet.decode(h.tokens)
                        for h in greedy_decode(out.output, out.lengths)
                    ]
                res[s] = character_error_rate(T, hyps)
                groups = defaultdict(lambda: ([], []))
                for t, h, v in zip(T, hyps, V, strict=True):
                    accent, variant = v.split("+")
                    groups[variant if s == "unseen_variants" else accent][0].append(t)
                    groups[variant if s == "unseen_variants" else accent][1].append(h)
                parts[s] = {k: round(100 * character_error_rate(*g), 1) for k, g in groups.items()}
        model.train()
        return res, parts

    spent, step, next_eval, losses = 0.0, 0, a.every, []
    while spent < a.budget:
        t0 = time.process_time()
        lr = cfg.optim.lr
        if cfg.optim.schedule == "cosine":
            lo = cfg.optim.min_lr
            lr = lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * min(spent / a.budget, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(cfg.seed * 100003 + step)
        batch = task.batch("train", cfg.train.batch_size, generator=g)
        out = model(batch.inputs, lengths=batch.lengths)
        loss = task.loss(out, batch)
        opt.zero_grad()
        loss.backward()
        if cfg.train.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        opt.step()
        step += 1
        losses.append(loss.item())
        spent += time.process_time() - t0
        if spent >= next_eval or spent >= a.budget:
            next_eval += a.every
            res, parts = evaluate()
            errs = " ".join(f"{k} {100 * v:.2f}%" for k, v in res.items())
            print(
                f"cpu {spent:6.0f}s step {step:5d} loss {np.mean(losses[-50:]):.4f} "
                f"lr {lr:.1e} {errs}",
                flush=True,
            )
            if a.breakdown:
                print("    " + json.dumps(parts), flush=True)
    if a.save:
        torch.save(model.state_dict(), a.save)


if __name__ == "__main__":
    main()
