"""How long a full analysis takes: a 2-layer LSTM with H=256 on one 1,000-step sequence.

The bar (issue 4): ``carousel.analysis.analyze`` with every analysis (gradients through time,
Jacobian spectra and Lyapunov exponent, traces, saliency), PNGs and the HTML report included,
under 10 seconds on 2 CPU cores.

Each thread setting runs in a fresh child process (``torch.set_num_threads``); every run repeats
``--repeat`` times after one warm-up, and the table shows the best wall time, its CPU time (user +
system of the process, all threads) and the split per analysis. The load average is printed
too: on a shared machine the wall time grows with the load while the CPU time does not.

Run::

    .venv/bin/python benchmarks/analysis.py                 # threads 1 and 2, Markdown table
    .venv/bin/python benchmarks/analysis.py --threads 2 --length 500 --hidden-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def child(args: argparse.Namespace) -> dict:
    import torch

    import carousel
    from carousel.analysis import analyze

    torch.set_num_threads(args.threads[0])
    torch.manual_seed(0)
    lstm = carousel.LSTM(args.input_size, args.hidden_size, num_layers=args.layers)
    x = torch.randn(args.length, args.batch_size, args.input_size)
    best = None
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeat + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            rep = analyze(lstm, x, d)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if i and (best is None or wall < best["wall"]):
                best = {"wall": wall, "cpu": cpu, "parts": rep.seconds}
        best["html_kib"] = os.path.getsize(rep.html) / 1024
    best["lyapunov"] = rep.numbers["jacobians"]["largest_lyapunov"]
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    p.add_argument("--length", type=int, default=1000, help="T (default 1000)")
    p.add_argument("--hidden-size", type=int, default=256, help="H (default 256)")
    p.add_argument("--layers", type=int, default=2, help="LSTM layers (default 2)")
    p.add_argument("--input-size", type=int, default=32, help="I (default 32)")
    p.add_argument("--batch-size", type=int, default=1, help="B (default 1)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs after a warm-up")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    rows = []
    for n in args.threads:
        cmd = [sys.executable, __file__, "--child", "--threads", str(n)]
        for k in ("length", "hidden_size", "layers", "input_size", "batch_size", "repeat"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        load0 = os.getloadavg()[0]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append((n, load0, os.getloadavg()[0], json.loads(out.strip().splitlines()[-1])))
    print(
        f"`python benchmarks/analysis.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f" on {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(
        f"\nanalyze(): {args.layers}-layer LSTM, H={args.hidden_size}, I={args.input_size}, "
        f"T={args.length}, B={args.batch_size}; all four analyses, PNGs and HTML; best of "
        f"{args.repeat} after a warm-up\n"
    )
    parts = ["record", "gradients", "jacobians", "traces", "saliency"]
    print("| threads | load avg | wall s | CPU s | " + " | ".join(parts) + " | wall < 10 s |")
    print("|---:|---:|---:|---:|" + "---:|" * len(parts) + ":---:|")
    for n, l0, l1, r in rows:
        cells = " | ".join(f"{r['parts'].get(k, 0):.2f}" for k in parts)
        ok = "yes" if r["wall"] < 10 else "no"
        print(f"| {n} | {l0:.1f}-{l1:.1f} | {r['wall']:.2f} | {r['cpu']:.2f} | {cells} | {ok} |")
    print(f"\nlargest Lyapunov exponent {rows[-1][3]['lyapunov']:+.4f}/step; "
          f"report {rows[-1][3]['html_kib']:.0f} KiB")  # fmt: skip


if __name__ == "__main__":
    main()
