"""Training throughput of the recurrent layers: every implementation path against torch.nn.

One process; for each shape, every implementation is timed once per round and the rounds are
repeated (interleaved, so a burst of load on a shared machine hits all of them alike); the
table gives the median over rounds. One measurement is a forward pass plus the backward pass
of ``output.sum()`` with respect to every parameter (a training step without the optimizer),
float32, on the CPU unless ``--device`` says otherwise. Throughput is ``B * T`` tokens per
second.

Rows:
    - ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: the baselines (oneDNN for LSTM on CPU; a generic
      loop of cell kernels for GRU, RNN and the LSTM with ``proj_size``, family ``LSTMP``);
    - ``<family> auto``: carousel's default path (the fused kernel for the standard LSTM on
      CPU; on CPU the hand-written BPTT, or its compiled twin where one is built, for GRU, RNN
      and the projected LSTM);
    - ``<family> bptt`` / ``<family> reference``: the hand-written BPTT and the plain autograd
      loop, for torch.nn's cell and every LSTM variant of ``carousel.LSTM_VARIANTS``.
    - ``<family> compiled``: the C++ kernels of ``carousel.kernels`` (the same as ``bptt``
      where no kernel covers the configuration or none could be built); issue 5's bars are
      checked by ``benchmarks/kernels.py``.

Columns: ``vs torch.nn`` is the throughput ratio to the family's torch.nn layer (the standard
LSTM for every LSTM variant); ``vs reference`` the ratio to the reference loop of the same
configuration. The bars of the foundation issue are checked at the end.

Usage::

    python benchmarks/layers.py            # the three shapes of the issue (several minutes)
    python benchmarks/layers.py --quick    # tiny shapes, two rounds: a smoke run

Allocator: by default the benchmark raises glibc's mmap and trim thresholds first
(:func:`carousel._malloc.keep_freed_memory`, what ``carousel train`` does), for every row
alike. Under glibc's own thresholds a training step's large buffers are handed back to the
system and faulted in again at the next step, depending on the allocation history of the
process, so every path's time (``torch.nn.LSTM``'s too) swings by up to 2.7x between runs;
``--malloc default`` measures that setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import carousel
from carousel._malloc import keep_freed_memory

SHAPES = [  # (B, T, I, H)
    (32, 100, 64, 128),
    (32, 100, 128, 512),
    (8, 200, 16, 32),
]
QUICK_SHAPES = [(4, 12, 8, 16), (2, 20, 4, 8)]


@dataclass
class Case:
    """One row: a layer and how to compare it."""

    name: str
    family: str  # LSTM, GRU or RNN: the torch.nn baseline
    config: str  # configuration key shared by the paths of one model ("NP", "FGR", ...)
    impl: str  # torch, auto, bptt or reference
    model: torch.nn.Module


def make_cases(I: int, H: int, families: list[str], variants: list[str], device, dtype):
    """Every row for one shape, with identical weights across the paths of a configuration."""
    kw = {"device": device, "dtype": dtype}
    cases: list[Case] = []

    def add(family, config, impls, build, ref_module=None):
        first = None
        if ref_module is not None:
            base = "torch.nn.LSTM proj" if family == "LSTMP" else f"torch.nn.{family}"
            cases.append(Case(base, family, config, "torch", ref_module))
            first = ref_module
        for impl in impls:
            m = build(impl)
            if first is None:
                first = m
            else:
                m.load_state_dict(first.state_dict())
            label = (
                family if config in ("NP", "tanh", "reset_after", "proj") else f"{family} {config}"
            )
            cases.append(Case(f"{label} {impl}", family, config, impl, m))

    if "LSTM" in families:
        for v in variants:
            if v == "NP":
                add("LSTM", "NP", ["auto", "compiled", "bptt", "reference"],
                    lambda impl: carousel.LSTM(I, H, impl=impl, **kw),
                    torch.nn.LSTM(I, H, **kw))  # fmt: skip
            else:
                add("LSTM", v, ["compiled", "bptt", "reference"],
                    lambda impl, v=v: carousel.LSTM(I, H, variant=v, impl=impl, **kw))  # fmt: skip
    if "LSTMP" in families:  # projection: torch.nn.LSTM has no oneDNN kernel for it on CPU
        P = max(1, H // 2)
        add("LSTMP", "proj", ["auto", "bptt", "reference"],
            lambda impl: carousel.LSTM(I, H, proj_size=P, impl=impl, **kw),
            torch.nn.LSTM(I, H, proj_size=P, **kw))  # fmt: skip
    if "GRU" in families:
        add("GRU", "reset_after", ["auto", "compiled", "bptt", "reference"],
            lambda impl: carousel.GRU(I, H, impl=impl, **kw), torch.nn.GRU(I, H, **kw))  # fmt: skip
        add("GRU", "Cho", ["compiled", "bptt", "reference"],
            lambda impl: carousel.GRU(I, H, reset_after=False, impl=impl, **kw))  # fmt: skip
    if "RNN" in families:
        add("RNN", "tanh", ["auto", "compiled", "bptt", "reference"],
            lambda impl: carousel.RNN(I, H, impl=impl, **kw), torch.nn.RNN(I, H, **kw))  # fmt: skip
        add("RNN", "relu", ["compiled", "bptt", "reference"],
            lambda impl: carousel.RNN(I, H, nonlinearity="relu", impl=impl, **kw))  # fmt: skip
    return cases


def train_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        out = model(x)[0]
        out.sum().backward()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    cases: dict[str, Callable[[], object]], rounds: int, reps: int = 1
) -> dict[str, float]:
    """Median wall seconds per call of each case: one untimed call each, then ``rounds``
    rounds that time ``reps`` calls of every case in turn (a burst of load falls on all)."""
    for f in cases.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(
    cases: list[Case], x: torch.Tensor, rounds: int, warmup: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median seconds per training step of each case, interleaved over ``rounds``."""
    steps = {c.name: train_step(c.model, x) for c in cases}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            sync(x.device)
            t0 = clock()
            steps[c.name]()
            sync(x.device)
            times[c.name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = " load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    dev = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    return (
        f"{cpu}; nproc {os.cpu_count()}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; device {dev};{load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and two rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--families",
        default="LSTM,LSTMP,GRU,RNN",
        help="comma-separated subset of LSTM, LSTMP (LSTM with proj_size=H/2), GRU, RNN",
    )
    parser.add_argument(
        "--variants",
        default=",".join(carousel.LSTM_VARIANTS),
        help="comma-separated LSTM variants (names of carousel.LSTM_VARIANTS)",
    )
    parser.add_argument(
        "--shapes", default=None, help="shapes as B,T,I,H;B,T,I,H (default: the issue's three)"
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--malloc",
        choices=("keep", "default"),
        default="keep",
        help="keep (default): glibc keeps freed memory for the next step, as `carousel train` "
        "sets it (carousel._malloc.keep_freed_memory), for every row alike; default: glibc's "
        "own thresholds, under which every path's time swings with the allocator's history "
        "(page faults: torch.nn.LSTM took 71-191 ms at the second shape)",
    )
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which a shared "
        "machine's load does not inflate (use with --threads 1: with more threads it counts "
        "their spin-waits)",
    )
    args = parser.parse_args(argv)
    kept = args.malloc == "keep" and keep_freed_memory()
    # torch.nn.LSTM(proj_size=...) warns on CPU that oneDNN cannot run it; that is the point
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32
    rounds = args.rounds or (2 if args.quick else 7)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    families = [f.strip().upper() for f in args.families.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    if "NP" not in variants:
        variants.insert(0, "NP")
    print(
        "command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    )
    print("machine: " + machine(device))
    print(f"allocator: {'glibc keeps freed memory' if kept else 'glibc defaults'}")
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    print(
        f"float32, forward + backward of output.sum(), median of {rounds} interleaved rounds, "
        f"{args.timer} time"
    )
    failures: list[str] = []
    checked = 0
    for B, T, I, H in shapes:
        # the bars of the foundation issue hold at its shapes only
        issue_shape = SHAPES.index((B, T, I, H)) if (B, T, I, H) in SHAPES else None
        checked += issue_shape is not None
        gen = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)
        cases = make_cases(I, H, families, variants, device, dtype)
        x = torch.randn(T, B, I, generator=gen).to(device=device, dtype=dtype)
        med = measure(cases, x, rounds, args.warmup, clock)
        tok = {name: B * T / t for name, t in med.items()}
        base = {c.family: tok[c.name] for c in cases if c.impl == "torch"}
        ref = {(c.family, c.config): tok[c.name] for c in cases if c.impl == "reference"}
        print()
        print(f"## B={B} T={T} I={I} H={H}")
        print()
        print("| layer | ms / step | tokens/s | vs torch.nn | vs reference |")
        print("|---|---:|---:|---:|---:|")
        for c in cases:
            vs_torch = tok[c.name] / base[c.family] if c.family in base else float("nan")
            r = ref.get((c.family, c.config))
            vs_ref = tok[c.name] / r if r else float("nan")
            print(
                f"| {c.name} | {med[c.name] * 1e3:.2f} | {tok[c.name]:,.0f} | "
                f"{vs_torch:.2f}x | {vs_ref:.2f}x |"
            )
            if issue_shape is None:
                continue
            std = c.config in ("NP", "tanh", "reset_after")
            if c.impl == "auto" and std and c.family == "LSTM" and vs_torch < 0.95:
                failures.append(f"{c.name} at {(B, T, I, H)}: {vs_torch:.2f}x torch.nn < 0.95x")
            if c.impl == "auto" and std and c.family in ("GRU", "RNN") and vs_torch < 1.1:
                failures.append(f"{c.name} at {(B, T, I, H)}: {vs_torch:.2f}x torch.nn < 1.1x")
            if c.family == "LSTM" and c.impl == "bptt":
                if vs_ref < 2.0:
                    failures.append(f"{c.name} at {(B, T, I, H)}: {vs_ref:.2f}x reference < 2x")
                if issue_shape < 2 and vs_torch < 0.6:
                    failures.append(f"{c.name} at {(B, T, I, H)}: {vs_torch:.2f}x torch.nn < 0.6x")
    print()
    if not checked:
        print("bars: not checked (none of the issue's shapes)")
    elif failures:
        print("bars missed:")
        for f in failures:
            print("  - " + f)
    else:
        print("bars: all met (of the rows and issue shapes above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
