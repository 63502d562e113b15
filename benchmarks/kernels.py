"""Speed of the compiled kernels (``impl="compiled"``, carousel.kernels) against torch.nn and
the pure-PyTorch BPTT (``impl="bptt"``): the bars of issue 5.

One process; for each shape every row is timed once per round, the rounds repeated
(interleaved, so a burst of load on a shared machine hits all rows alike), and the table gives
the median. Training: forward plus backward of ``output.sum()`` for every parameter, float32,
CPU; throughput ``B * T`` tokens per second. Inference: batch 1, forward only under
``torch.no_grad()``, one step per call carrying the state (as in generation).

Bars (issue 5): GRU and RNN (compiled) >= 2x torch.nn.GRU / torch.nn.RNN at
(32,100,64,128) and (8,200,16,32); every LSTM variant the kernel covers >= 0.8x torch.nn.LSTM
at (32,100,64,128) and (32,100,128,512), >= 0.5x at (8,200,16,32); batch-1 step-by-step
inference >= torch.nn.LSTM.

A variant written ``V+proj`` (``NP+proj``: the standard cell) is the projected LSTM with
``proj_size=H//2`` (Sak et al. 2014); its "vs torch.nn" column is against the standard
torch.nn.LSTM (the bar), and the column "vs torch.nn proj" against
``torch.nn.LSTM(proj_size=H//2)`` (a row of its own), which has no oneDNN kernel on the CPU.

With ``FGR`` among the variants a row "LSTM FGR products only" times the matrix products alone
that the compiled FGR kernel runs in one training step (the per-step products with W_hh and
W_gg, forward and backward, through the extension's own operators, and the products over all
steps), on random operands of the same shapes: its "vs" column against "LSTM FGR compiled" is
the share of the kernel's time spent in its products. FGR has (4H(I+H) + 9H^2) / (4H(I+H))
times the standard LSTM's multiply-adds (2.5x at I=H/2, 2.8x at I=H/4).

Usage::

    python benchmarks/kernels.py --threads 1 --timer cpu    # the issue's shapes
    python benchmarks/kernels.py --quick                     # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import carousel
from carousel import kernels

SHAPES = [(32, 100, 64, 128), (32, 100, 128, 512), (8, 200, 16, 32)]  # (B, T, I, H)
QUICK_SHAPES = [(4, 12, 8, 16)]
COVERED = ["NP", "vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "CIFG", "LN", "FGR", "NP+proj"]
PROJ = "+proj"


def _lstm(I: int, H: int, variant: str, **kw) -> carousel.LSTM:
    """``variant``, or with the suffix ``+proj`` that variant with ``proj_size=H//2``."""
    if variant.endswith(PROJ):
        return carousel.LSTM(I, H, variant=variant[: -len(PROJ)], proj_size=H // 2, **kw)
    return carousel.LSTM(I, H, variant=variant, **kw)


def _cases(I: int, H: int, variants: list[str]) -> dict[str, tuple[str, torch.nn.Module]]:
    """name -> (baseline family, module)."""
    rows: dict[str, tuple[str, torch.nn.Module]] = {
        "torch.nn.LSTM": ("LSTM", torch.nn.LSTM(I, H)),
        "torch.nn.GRU": ("GRU", torch.nn.GRU(I, H)),
        "torch.nn.RNN": ("RNN", torch.nn.RNN(I, H)),
    }
    if any(v.endswith(PROJ) for v in variants):
        rows["torch.nn.LSTM proj"] = ("LSTM", torch.nn.LSTM(I, H, proj_size=H // 2))
    for impl in ("compiled", "bptt"):
        rows[f"GRU {impl}"] = ("GRU", carousel.GRU(I, H, impl=impl))
        rows[f"RNN {impl}"] = ("RNN", carousel.RNN(I, H, impl=impl))
        for v in variants:
            rows[f"LSTM {v} {impl}"] = ("LSTM", _lstm(I, H, v, impl=impl))
    return rows


def _fgr_products(I: int, H: int, x: torch.Tensor):
    """The matrix products of one forward + backward pass of the compiled FGR kernel
    (peepholes, 4 gates, 3 sigmoid gates), on random operands of the same shapes."""
    ops = torch.ops.carousel_kernels
    T, B, _ = x.shape
    GH, SH = 4 * H, 3 * H
    w_ih, w_hh, w_gg = torch.randn(GH, I), torch.randn(GH, H) / H, torch.randn(SH, SH) / SH
    w_hh_t, w_gg_t = w_hh.t().contiguous(), w_gg.t().contiguous()  # as the forward packs them
    bias = torch.randn(GH)
    hs, ss = torch.randn(T, B, H), torch.rand(T, B, SH)
    dA, dAsig = torch.randn(T, B, GH), torch.randn(T, B, SH)
    x2 = x.reshape(T * B, I)

    def run() -> None:
        xw = kernels._mm(x2, w_ih.t(), bias).view(T, B, GH)
        dH, dS = torch.zeros(B, H), torch.zeros(B, SH)
        for t in range(1, T):  # forward: + W_hh h_{t-1}, W_gg s_{t-1}
            ops.matmul_acc(xw[t], hs[t - 1], w_hh_t)
            ops.matmul(ss[t - 1], w_gg_t, None)
        for t in range(T - 1, 0, -1):  # backward: delta h_{t-1}, delta s_{t-1}
            ops.matmul_acc(dH, dA[t], w_hh)
            ops.matmul_acc(dS, dAsig[t], w_gg)
        dA2 = dA.view(T * B, GH)
        kernels._mm(dA2, w_ih)  # delta x
        kernels._mm(dA2.t(), x2)  # grad W_ih
        kernels._grad_with_prev(dA, hs, hs[0])  # grad W_hh
        kernels._grad_with_prev(dAsig, ss, ss[0])  # grad W_gg

    return run


def _train_step(model: torch.nn.Module, x: torch.Tensor):
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        model(x)[0].sum().backward()

    return step


def _infer_steps(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            state = None
            for t in range(x.shape[0]):
                _, state = model(x[t : t + 1], state)

    return run


def _medians(fns: dict, rounds: int, clock) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape, two rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (robust to other load; use --threads 1)",
    )
    parser.add_argument("--variants", default=",".join(COVERED), help="LSTM variants")
    parser.add_argument("--inference-only", action="store_true", help="skip the training shapes")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = args.rounds or (2 if args.quick else 7)
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    shapes = QUICK_SHAPES if args.quick else SHAPES
    variants = [v.strip() for v in args.variants.split(",")]
    argv_s = argv if argv is not None else sys.argv[1:]
    print("command: python " + " ".join([sys.argv[0], *argv_s]))
    print(f"compiled kernels available: {kernels.available()}")
    print(
        f"torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"load average {' '.join(f'{v:.1f}' for v in __import__('os').getloadavg())}; "
        f"median of {rounds} interleaved rounds, {args.timer} time"
    )
    failures: list[str] = []
    for k, (B, T, I, H) in enumerate([] if args.inference_only else shapes):
        rows = _cases(I, H, variants)
        x = torch.randn(T, B, I)
        fns = {n: _train_step(m, x) for n, (_, m) in rows.items()}
        if "FGR" in variants and kernels.available():
            rows["LSTM FGR products only"] = ("LSTM", None)
            fns["LSTM FGR products only"] = _fgr_products(I, H, x)
        med = _medians(fns, rounds, clock)
        tok = {n: B * T / s for n, s in med.items()}
        proj = "torch.nn.LSTM proj" in rows
        print(f"\n## training B={B} T={T} I={I} H={H}" + (f" (proj P={H // 2})" if proj else ""))
        print()
        print(
            "| layer | tokens/s | vs torch.nn | vs bptt |" + (" vs torch.nn proj |" if proj else "")
        )
        print("|---|---:|---:|---:|" + ("---:|" if proj else ""))
        for n, (fam, _) in rows.items():
            vs = tok[n] / tok[f"torch.nn.{fam}"]
            twin = n.replace(" compiled", " bptt")
            vb = f"{tok[n] / tok[twin]:.2f}x" if n.endswith("compiled") else ""
            if n == "LSTM FGR products only":  # vs the kernel: its share in the products
                vb = f"{tok['LSTM FGR compiled'] / tok[n]:.2f}x of FGR compiled"
            vp = ""
            if proj and (PROJ + " " in n or n.endswith(" proj")):
                vp = f" {tok[n] / tok['torch.nn.LSTM proj']:.2f}x |"
            elif proj:
                vp = "  |"
            print(f"| {n} | {tok[n]:,.0f} | {vs:.2f}x | {vb} |{vp}")
            if not n.endswith("compiled") or args.quick:
                continue
            if fam in ("GRU", "RNN") and k != 1 and vs < 2.0:
                failures.append(f"{n} at {(B, T, I, H)}: {vs:.2f}x < 2x")
            bar = 0.5 if k == 2 else 0.8
            if fam == "LSTM" and vs < bar:
                failures.append(f"{n} at {(B, T, I, H)}: {vs:.2f}x < {bar}x")
    # batch-1 step-by-step inference
    I, H, T = (8, 16, 10) if args.quick else (64, 128, 100)
    x = torch.randn(T, 1, I)
    inf = {"torch.nn.LSTM": torch.nn.LSTM(I, H)}
    if any(v.endswith(PROJ) for v in variants):
        inf["torch.nn.LSTM proj"] = torch.nn.LSTM(I, H, proj_size=H // 2)
    for v in variants:
        inf[f"LSTM {v}"] = _lstm(I, H, v)
    inf["torch.nn.GRU"] = torch.nn.GRU(I, H)
    inf["GRU"] = carousel.GRU(I, H)
    med = _medians({n: _infer_steps(m, x) for n, m in inf.items()}, rounds, clock)
    print(f"\n## inference, batch 1, one step per call, I={I} H={H}, {T} steps\n")
    print("| layer (impl auto) | steps/s | vs torch.nn | vs torch.nn.LSTM |")
    print("|---|---:|---:|---:|")
    for n, s in med.items():
        base = med["torch.nn.GRU" if "GRU" in n else "torch.nn.LSTM"]
        lstm = med["torch.nn.LSTM"]
        print(f"| {n} | {T / s:,.0f} | {base / s:.2f}x | {lstm / s:.2f}x |")
        # the bar: every layer at least as fast as torch.nn.LSTM
        if not n.startswith("torch") and lstm / s < 1.0 and not args.quick:
            failures.append(f"inference {n}: {lstm / s:.2f}x torch.nn.LSTM < 1x")
    print()
    if args.quick:
        print("bars: not checked (--quick)")
    elif failures:
        print("bars missed:\n" + "\n".join("  - " + f for f in failures))
    else:
        print("bars: all met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
