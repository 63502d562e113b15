"""A tanh RNN trained with Hessian-free optimisation on a pathological long-time-lag problem,
beside plain SGD on the same model.

Martens & Sutskever 2011 trained 100-unit tanh RNNs with HF and structural damping on the
pathological problems (:mod:`carousel.tasks.pathological`); plain gradient descent fails on
them once the lag grows. This script reproduces the claim at reduced size on a CPU:

1. HF (:class:`carousel.optim.HessianFree`, structural damping 0.03, curvature on a quarter of
   each gradient batch) trains the RNN until at most 1% of held-out sequences fail the
   problem's success test, or until its budget of CPU seconds runs out;
2. plain SGD (no momentum; gradient norm clipped at 1) trains the same model from the same
   initial weights, for each learning rate, for as many CPU seconds as HF used (at most
   ``--sgd-seconds``).

Budgets count the process's CPU time (one torch thread), which on an idle machine equals the
wall time; on a shared machine the wall time is longer and is reported beside it.

Example (the run recorded in docs/results.md)::

    python benchmarks/hf_longlag.py --task addition --T 50 --hidden 32

Prints a Markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch import Tensor, nn

import carousel
from carousel.optim import HessianFree
from carousel.tasks.pathological import PathologicalTask, make_pathological


class RNNModel(nn.Module):
    """A tanh RNN with a linear readout; ``forward(x, lengths, mask)`` returns the scored rows
    ``(N, O)`` (the outputs the loss sees)."""

    def __init__(self, task: PathologicalTask, hidden_size: int) -> None:
        super().__init__()
        self.task = task
        self.rnn = carousel.RNN(task.input_size, hidden_size, impl="reference")
        self.out = nn.Linear(hidden_size, task.output_size)

    def outputs(self, x: Tensor) -> Tensor:  # (T, B, I) -> (T, B, O)
        return self.out(self.rnn(x)[0])

    def forward(self, x: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        z = self.outputs(x)
        if self.task.readout == "last":
            idx = (lengths - 1).view(1, -1, 1).expand(1, -1, z.shape[-1])
            return z.gather(0, idx).squeeze(0)  # (B, O)
        return z[mask]  # (N, O)


def evaluate(model: RNNModel, task: PathologicalTask, test) -> tuple[float, float]:
    with torch.no_grad():
        z = model.outputs(test.inputs)
    return float(task.loss(z, test)), task.error_rate(z, test)


def train_hf(model, task, args, test, log) -> dict:
    opt = HessianFree(
        model.parameters(),
        model=model,
        loss=task.loss_name,
        damping=args.damping,
        structural_damping=args.structural_damping,
        seed=args.seed,
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    start, cpu0, step, history = time.perf_counter(), time.process_time(), 0, []
    solved_at = None
    while time.process_time() - cpu0 < args.max_seconds:
        b = task.sample(args.batch, generator=gen)
        targets = task.row_targets(b)
        c = args.curvature_batch

        def closure(b=b, targets=targets):
            opt.zero_grad()
            loss = task_loss(task, model(b.inputs, b.lengths, b.mask), targets)
            loss.backward()
            return loss

        opt.step(closure, curvature_inputs=(b.inputs[:, :c], b.lengths[:c], b.mask[:, :c]))
        step += 1
        d = opt.last_diagnostics
        if step % args.eval_every == 0:
            loss, err = evaluate(model, task, test)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            history.append(
                {
                    "step": step,
                    "seconds": elapsed,
                    "cpu_seconds": cpu,
                    "test_loss": loss,
                    "test_error": err,
                    "damping": d.next_damping,
                    "cg_iterations": d.cg_iterations,
                }
            )
            log(
                f"HF  step {step:4d} {elapsed:7.1f} s ({cpu:6.1f} CPU s)  test loss {loss:.4f}  "
                f"error {err:.3f}  "
                f"damping {d.next_damping:.3g}  CG {d.cg_iterations}"
            )
            if err <= task.success_threshold:
                solved_at = cpu
                break
    loss, err = evaluate(model, task, test)
    return {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "test_loss": loss,
        "test_error": err,
        "solved": err <= task.success_threshold,
        "solved_at_cpu_seconds": solved_at,
        "sequences": step * args.batch,
        "history": history,
    }


def task_loss(task: PathologicalTask, rows: Tensor, targets: Tensor) -> Tensor:
    return carousel.optim.matching_loss(task.loss_name, rows, targets)


def train_sgd(model, task, args, test, lr: float, seconds: float, log) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(args.seed + 2)
    start, cpu0, step, best = time.perf_counter(), time.process_time(), 0, (float("inf"), 1.0)
    history = []
    while time.process_time() - cpu0 < seconds:
        b = task.sample(args.sgd_batch, generator=gen)
        opt.zero_grad()
        loss = task_loss(task, model(b.inputs, b.lengths, b.mask), task.row_targets(b))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % (args.eval_every * 20) == 0:
            tl, err = evaluate(model, task, test)
            best = min(best, (tl, err))
            history.append(
                {
                    "step": step,
                    "seconds": time.perf_counter() - start,
                    "test_loss": tl,
                    "test_error": err,
                }
            )
            log(
                f"SGD lr {lr:g} step {step:6d} {time.perf_counter() - start:7.1f} s  "
                f"test loss {tl:.4f}  error {err:.3f}"
            )
    tl, err = evaluate(model, task, test)
    return {
        "lr": lr,
        "steps": step,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "test_loss": tl,
        "test_error": err,
        "best_test_loss": min(best[0], tl),
        "sequences": step * args.sgd_batch,
        "history": history,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task",
        default="addition",
        help="pathological problem (Martens & Sutskever 2011)",
    )
    parser.add_argument("--T", type=int, default=50, help="the problem's time lag T")
    parser.add_argument("--hidden", type=int, default=32, help="tanh units (paper: 100)")
    parser.add_argument("--batch", type=int, default=1024, help="HF gradient batch")
    parser.add_argument("--curvature-batch", type=int, default=256, help="HF curvature batch")
    parser.add_argument("--damping", type=float, default=1.0, help="initial Tikhonov damping")
    parser.add_argument("--structural-damping", type=float, default=0.03, help="mu")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="HF budget in CPU seconds")
    parser.add_argument(
        "--sgd-lrs", default="0.01,0.1", help="comma-separated SGD rates (empty: no SGD)"
    )
    parser.add_argument("--sgd-batch", type=int, default=32, help="SGD minibatch")
    parser.add_argument(
        "--sgd-seconds",
        type=float,
        default=300.0,
        help="most CPU seconds per SGD learning rate (else HF's)",
    )
    parser.add_argument(
        "--skip-hf", action="store_true", help="run SGD only, for --sgd-seconds CPU seconds"
    )
    parser.add_argument("--eval-every", type=int, default=5, help="HF steps between tests")
    parser.add_argument("--test", type=int, default=1000, help="held-out sequences")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    task = make_pathological(args.task, args.T)
    test = task.sample(args.test, seed=10_000 + args.seed)
    torch.manual_seed(args.seed)
    init = RNNModel(task, args.hidden).state_dict()

    hf = None
    sgd_seconds = args.sgd_seconds
    if not args.skip_hf:
        model = RNNModel(task, args.hidden)
        model.load_state_dict(init)
        hf = train_hf(model, task, args, test, log)
        sgd_seconds = min(args.sgd_seconds, hf["cpu_seconds"])
    sgd = []
    for lr in (float(v) for v in args.sgd_lrs.split(",") if v.strip()):
        model = RNNModel(task, args.hidden)
        model.load_state_dict(init)
        sgd.append(train_sgd(model, task, args, test, lr, sgd_seconds, log))

    result = {
        "command": "python benchmarks/hf_longlag.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (nproc), "
        f"{args.threads} torch threads, torch {torch.__version__}",
        "task": {
            "name": task.name,
            "T": args.T,
            "criterion": task.criterion,
            "source": task.source,
        },
        "settings": vars(args),
        "hf": hf,
        "sgd": sgd,
    }
    print(f"command: {result['command']}")
    print(f"machine: {result['machine']}")
    print()
    print(
        "| optimizer | steps | sequences | CPU s | wall s | test loss | test error rate | solved |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if hf is not None:
        print(
            f"| HF (mu={args.structural_damping}) | {hf['steps']} | {hf['sequences']} | "
            f"{hf['cpu_seconds']:.0f} | {hf['seconds']:.0f} | {hf['test_loss']:.4f} | "
            f"{hf['test_error']:.3f} | {'yes' if hf['solved'] else 'no'} |"
        )
    for r in sgd:
        print(
            f"| SGD lr={r['lr']:g} | {r['steps']} | {r['sequences']} | {r['cpu_seconds']:.0f} | "
            f"{r['seconds']:.0f} | {r['test_loss']:.4f} | {r['test_error']:.3f} | "
            f"{'yes' if r['test_error'] <= task.success_threshold else 'no'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
