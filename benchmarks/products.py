"""Matrix products of the BPTT passes: torch's ``mm`` (MKL on the CPU) against oneDNN.

For each of the issue-2 layer shapes, every product the hand-written LSTM passes make, in both
libraries, one process, interleaved, median of the rounds: the per-step products (``B x H`` by
``H x 4H`` forward, ``B x 4H`` by ``4H x H`` backward) and the all-step ones (input projection,
input gradient, weight gradients), plus a sweep of small per-step sizes that locates the
crossovers behind ``carousel.bptt._products.MIN_MACS`` and ``packed_threshold()`` (the last
column: the library ``acc_fn`` takes at that size). Prints microseconds and the ratio ``mm /
oneDNN`` (above 1: oneDNN faster); for the per-step products also oneDNN with the weight packed
once into its own layout (``_products.acc_fn``), which a time loop can do, and its ratio.

    python benchmarks/products.py --threads 1
    python benchmarks/products.py            # torch's default threads
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from carousel.bptt._products import _dnn, packed_threshold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import interleaved_medians, machine

SHAPES = [(32, 100, 64, 128), (32, 100, 128, 512), (8, 200, 16, 32)]


def _packed(w, rows):
    """The packed weight itself (no fallback to the plain one, unlike ``_products._packed``:
    the column must time what it says)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)


def _time(cases: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median microseconds per call (:func:`layers.interleaved_medians`)."""
    return {k: t * 1e6 for k, t in interleaved_medians(cases, rounds, reps).items()}


def products(B: int, T: int, I: int, H: int) -> dict[str, tuple]:
    """name -> (mm callable, oneDNN callable, multiply-adds[, oneDNN with a packed weight])."""
    G, N = 4 * H, T * B
    g = torch.Generator().manual_seed(0)
    h, a = torch.randn(B, H, generator=g), torch.randn(B, G, generator=g)
    w_hh, w_ih = torch.randn(G, H, generator=g), torch.randn(G, I, generator=g)
    w_hh_t = w_hh.t().contiguous()
    p_hh, p_hh_t = _packed(w_hh, B), _packed(w_hh_t, B)
    x, dA, hs = (torch.randn(N, k, generator=g) for k in (I, G, H))
    return {
        "step forward  h W_hh^T": (
            lambda: h.mm(w_hh.t()),
            lambda: _dnn(h, w_hh),
            B * H * G,
            lambda: _dnn(h, p_hh),
        ),
        "step backward dA W_hh": (
            lambda: a.mm(w_hh),
            lambda: _dnn(a, w_hh_t),
            B * G * H,
            lambda: _dnn(a, p_hh_t),
        ),
        "input projection": (lambda: x.mm(w_ih.t()), lambda: _dnn(x, w_ih), N * I * G),
        "input gradient": (lambda: dA.mm(w_ih), lambda: _dnn(dA, w_ih.t()), N * G * I),
        "dW_ih = dA^T x": (lambda: dA.t().mm(x), lambda: _dnn(x.t(), dA.t()).t(), N * G * I),
        "dW_hh = dA^T h": (lambda: dA.t().mm(hs), lambda: _dnn(hs.t(), dA.t()).t(), N * G * H),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if not torch.backends.mkldnn.is_available():
        print("this torch has no oneDNN")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/products.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"machine: {machine(torch.device('cpu'))}")
    print(f"float32, median of {args.rounds} interleaved rounds; ratio = mm time / oneDNN time\n")
    for B, T, I, H in SHAPES:
        print(f"## B={B} T={T} I={I} H={H}\n")
        print("| product | M-adds | mm (us) | oneDNN (us) | ratio | packed (us) | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, (f_mm, f_dnn, macs, *f_pk) in products(B, T, I, H).items():
            reps = max(1, int(2e7 // macs))
            cases = {"mm": f_mm, "dnn": f_dnn} | ({"pk": f_pk[0]} if f_pk else {})
            t = _time(cases, args.rounds, reps)
            pk = f" {t['pk']:.1f} | {t['mm'] / t['pk']:.2f}x |" if f_pk else " | |"
            print(f"| {name} | {macs / 1e6:.1f} | {t['mm']:.1f} | {t['dnn']:.1f} | "
                  f"{t['mm'] / t['dnn']:.2f}x |{pk}")  # fmt: skip
        print()
    least = packed_threshold()
    print("## per-step sizes (out += x W^T, x: M x K, W: N x K)\n")
    print(
        f"`_products.acc_fn` takes oneDNN (packed) from {least / 1e6:.2f} M multiply-adds on "
        f"{torch.get_num_threads()} thread(s) (`packed_threshold()`, the `acc_fn` column).\n"
    )
    print("| M | K | N | M-adds | mm (us) | oneDNN (us) | ratio | packed (us) | ratio | acc_fn |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    squares = ((32, 128), (128, 512), (256, 1024), (512, 2048))
    sizes = [(M, K, N) for M in (8, 32) for K, N in squares]
    sizes += [(32, 128, 256), (32, 256, 128), (32, 128, 384), (32, 384, 128)]  # 1.05 M, 1.57 M
    for M, K, N in sizes:
        x, w, out = torch.randn(M, K), torch.randn(N, K), torch.zeros(M, N)
        wp = _packed(w, M)
        t = _time(
            {
                "mm": lambda x=x, w=w, out=out: out.addmm_(x, w.t()),
                "dnn": lambda x=x, w=w, out=out: out.add_(_dnn(x, w)),
                "pk": lambda x=x, wp=wp, out=out: out.add_(_dnn(x, wp)),
            },
            args.rounds,
            max(1, int(2e7 // (M * K * N))),
        )
        lib = "oneDNN" if M * K * N >= least else "mm"
        print(f"| {M} | {K} | {N} | {M * K * N / 1e6:.2f} | {t['mm']:.1f} | "
              f"{t['dnn']:.1f} | {t['mm'] / t['dnn']:.2f}x | {t['pk']:.1f} | "
              f"{t['mm'] / t['pk']:.2f}x | {lib} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
