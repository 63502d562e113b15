"""``carousel explain TOPIC``: the lectures' claims about gradients through time as commands that
print numbers and save a picture."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]

TOPICS = {
    "vanishing": "tanh RNN (recurrent weights scaled below and above 1) vs GRU vs LSTM: the "
    "error derivative against distance in time, on one figure",
    "memory-cell": "lecture 7e: a linear unit with self-weight 1 and gates holds a value for "
    "hundreds of steps while its keep gate is on",
}


def _scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.9,1.5, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/explain"),
        help="folder for the PNG (default: runs/explain)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: these demonstrations are many tiny "
        "step-by-step computations, fastest on one thread; 0: torch's choice)",
    )
    p.set_defaults(func=run, topic=name)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="demonstrations of the lectures: vanishing gradients, the memory cell",
        description="Each topic prints its numbers and saves one figure. Topics: "
        + "; ".join(f"{k}: {v}" for k, v in TOPICS.items()),
    )
    p.set_defaults(func=_list_topics, topic=None)
    sub = p.add_subparsers(dest="topic", metavar="TOPIC")
    v = sub.add_parser("vanishing", help=TOPICS["vanishing"], description=TOPICS["vanishing"])
    v.add_argument("--length", type=int, default=200, help="sequence length T (default: 200)")
    v.add_argument("--hidden-size", type=int, default=32, help="hidden units H (default: 32)")
    v.add_argument(
        "--batch-size", type=int, default=16, help="sequences averaged over (default: 16)"
    )
    v.add_argument(
        "--scales",
        type=_scales,
        default=[0.9, 1.5],
        help="scales of the tanh RNN's orthogonal recurrent matrix (default: 0.9,1.5)",
    )
    v.add_argument(
        "--gate-init",
        choices=["default", "chrono", "both"],
        default="both",
        help="GRU/LSTM gate biases: torch.nn's default, chrono initialisation (Tallec & "
        "Ollivier 2018) or both (default: both)",
    )
    _common(v, "vanishing")
    m = sub.add_parser("memory-cell", help=TOPICS["memory-cell"], description=TOPICS["memory-cell"])
    m.add_argument("--steps", type=int, default=500, help="sequence length (default: 500)")
    m.add_argument(
        "--read-step", type=int, default=None, help="step where the read gate opens (0.8*steps)"
    )
    m.add_argument(
        "--forget-step",
        type=int,
        default=None,
        help="step where the keep gate closes (default: halfway from read step to the end)",
    )
    m.add_argument("--value", type=float, default=0.7, help="the stored value (default: 0.7)")
    _common(m, "memory-cell")


def _list_topics(args: argparse.Namespace) -> int:
    print("carousel explain TOPIC; topics:")
    for k, v in TOPICS.items():
        print(f"  {k:12s} {v}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from carousel.analysis import demos

    if args.threads < 0:
        print(f"carousel explain: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.topic == "vanishing":
            demo = demos.vanishing_gradients(
                args.length,
                hidden_size=args.hidden_size,
                batch_size=args.batch_size,
                scales=args.scales,
                gate_init=args.gate_init,
                seed=args.seed,
            )
            path = args.out / "vanishing.png"
            demos.plot_vanishing(demo, path)
            print(
                f"error derivative ||dL/ds_(T-1-k)|| / ||dL/ds_(T-1)|| at distance k, T = "
                f"{demo.length}, same task for every model (recall the first input at the "
                "last step), at initialisation; per step = the average factor per step back; "
                "lambda_1 = largest Lyapunov exponent (nats/step)"
            )
            print(demo.table())
        else:
            cell = demos.memory_cell(
                args.steps,
                read_step=args.read_step,
                forget_step=args.forget_step,
                value=args.value,
                seed=args.seed,
            )
            path = args.out / "memory_cell.png"
            demos.plot_memory_cell(cell, path)
            print(cell.report())
    except ValueError as e:
        print(f"carousel explain: {e}", file=sys.stderr)
        return 2
    print(f"figure: {path}")
    return 0
