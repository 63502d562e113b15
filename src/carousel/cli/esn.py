"""``carousel esn ...``: echo state network experiments on Mackey-Glass.

- ``carousel esn mackey-glass``: reservoirpy's documented one-step-ahead protocol (R^2).
- ``carousel esn jaeger-haas``: Jaeger & Haas 2004's 84-step free-running prediction (NRMSE84).
- ``carousel esn search --budget 300``: seeded hyperparameter search for the latter.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

from carousel.cli._common import one_line_errors

if TYPE_CHECKING:
    from carousel.esn.experiments import JaegerHaasParams

__all__ = ["register"]

_one_line = one_line_errors("carousel esn")  # bad arguments: one line, status 2


def _threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)


def _one_step(args: argparse.Namespace) -> int:
    from carousel.esn.experiments import one_step_mackey_glass

    _threads(args)
    r = one_step_mackey_glass(
        units=args.units,
        spectral_radius=args.spectral_radius,
        leak_rate=args.leak_rate,
        ridge=args.ridge,
        warmup=args.warmup,
        n_timesteps=args.timesteps,
        seed=args.seed,
    )
    print(
        f"Mackey-Glass one step ahead (reservoirpy protocol): units {args.units}, "
        f"R^2 {r.r2:.6f}, NRMSE {r.nrmse:.3e}, fit {r.fit_seconds:.3f} s, "
        f"predict {r.predict_seconds:.3f} s"
    )
    return 0


def _params(args: argparse.Namespace) -> JaegerHaasParams:
    from carousel.esn.experiments import JaegerHaasParams

    fields = {f.name for f in dataclasses.fields(JaegerHaasParams)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return dataclasses.replace(JaegerHaasParams(), **given)


def _jaeger_haas(args: argparse.Namespace) -> int:
    from carousel.esn.experiments import jaeger_haas_nrmse84

    _threads(args)
    if args.reservoirs < 1:
        raise ValueError(f"--reservoirs must be >= 1, got {args.reservoirs}")
    params = _params(args)
    scores = []
    for seed in range(args.seed, args.seed + args.reservoirs):
        score = jaeger_haas_nrmse84(params, seed=seed, trials=args.trials)
        scores.append(score)
        print(f"reservoir seed {seed}: NRMSE84 {score:.3e} (log10 {math.log10(score):.2f})")
    mean = sum(scores) / len(scores)
    print(f"{params}")
    print(
        f"Jaeger & Haas 84-step Mackey-Glass: mean NRMSE84 {mean:.3e} "
        f"(log10 {math.log10(mean):.2f}) over {len(scores)} reservoir(s) x {args.trials} "
        "test windows; paper: 10^-4.2"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from carousel.cli._common import setup_logging
    from carousel.esn.experiments import search_jaeger_haas

    _threads(args)
    if not args.budget >= 0:
        raise ValueError(f"--budget must be >= 0 seconds, got {args.budget}")
    setup_logging(args.quiet)
    r = search_jaeger_haas(budget_seconds=args.budget, seed=args.seed, units=args.units)
    print(f"evaluated {r.evaluated} configurations in {r.seconds:.0f} s")
    print(f"best: {r.best}")
    print(
        f"validation NRMSE84 {r.validation_nrmse84:.3e} "
        f"(log10 {math.log10(r.validation_nrmse84):.2f}); "
        f"test NRMSE84 {r.test_nrmse84:.3e} (log10 {math.log10(r.test_nrmse84):.2f}); "
        "paper: 10^-4.2"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "esn",
        help="echo state network experiments on Mackey-Glass (reservoirpy, Jaeger & Haas)",
        description="Echo state networks on the Mackey-Glass series: reservoirpy's one-step "
        "protocol, Jaeger & Haas 2004's 84-step free run, and a hyperparameter search.",
    )
    sub = p.add_subparsers(dest="esn_command", metavar="EXPERIMENT", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--seed", type=int, default=0, help="reservoir seed (default 0)")
        q.add_argument(
            "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
        )

    one = sub.add_parser(
        "mackey-glass",
        help="one-step-ahead prediction with reservoirpy's documented protocol (R^2)",
        description="mackey_glass(2000), X[:-1] -> X[1:], last 20%% for test, warmup 100.",
    )
    one.add_argument("--units", type=int, default=100, help="reservoir size (default 100)")
    one.add_argument("--spectral-radius", type=float, default=1.25, help="default 1.25")
    one.add_argument("--leak-rate", type=float, default=0.3, help="default 0.3")
    one.add_argument("--ridge", type=float, default=1e-5, help="default 1e-5")
    one.add_argument("--warmup", type=int, default=100, help="washout steps (default 100)")
    one.add_argument("--timesteps", type=int, default=2000, help="series length (default 2000)")
    common(one)
    one.set_defaults(func=_one_line(_one_step))

    jh = sub.add_parser(
        "jaeger-haas",
        help="84-step free-running prediction (NRMSE84), Jaeger & Haas 2004",
        description="Train with teacher forcing on 3000 steps (washout 1000), then free-run "
        "84 steps from many test windows; see carousel.esn.experiments.jaeger_haas_nrmse84. "
        "Hyperparameters default to the search's result (JaegerHaasParams).",
    )
    jh.add_argument("--trials", type=int, default=100, help="test windows (default 100)")
    jh.add_argument(
        "--reservoirs", type=int, default=1, help="reservoir seeds to average (default 1)"
    )
    for name, kind in [
        ("units", int),
        ("connectivity", float),
        ("spectral-radius", float),
        ("leak-rate", float),
        ("feedback-scaling", float),
        ("bias-scaling", float),
        ("noise", float),
        ("ridge", float),
    ]:
        jh.add_argument(
            f"--{name}", type=kind, default=None, help=f"override JaegerHaasParams.{name}"
        )
    common(jh)
    jh.set_defaults(func=_one_line(_jaeger_haas))

    se = sub.add_parser(
        "search",
        help="seeded hyperparameter search for the 84-step experiment within a time budget",
        description="Random + local search scored on validation windows; the best is scored "
        "once on the test windows.",
    )
    se.add_argument("--budget", type=float, default=300.0, help="seconds (default 300)")
    se.add_argument("--units", type=int, default=1000, help="reservoir size (default 1000)")
    se.add_argument("--quiet", action="store_true", help="no progress messages")
    common(se)
    se.set_defaults(func=_one_line(_search))
