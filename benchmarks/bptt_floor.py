"""Lower bounds for the speed bars of the `"bptt"` path: what separate PyTorch operations allow.

The foundation issue asks every LSTM variant on the `"bptt"` path (a hand-written forward and
backward pass through time, one PyTorch operation after another) for at least 2x the
reference autograd loop and 0.6x ``torch.nn.LSTM`` at (B=32, T=100, I=64, H=128), and at
least 0.6x ``torch.nn.LSTM`` at (32, 100, 128, 512). This script measures two lower bounds
next to ``torch.nn.LSTM``, in one process:

1. **The skeleton** (the first shape, or ``--shape``). A training step of the standard cell
   made of only the operations no such pass can do without:

   - forward, per step: one product ``a_t += h_{t-1} W_hh^T`` (on the library and with the
     packed weight that carousel's path takes, :func:`carousel.bptt._products.acc_fn`) and
     five elementwise operations (one ``sigmoid`` over every gate, ``c_t`` in two, ``h_t`` in
     two);
   - backward, per step: one product ``delta h_{t-1} += delta a_t W_hh`` and four elementwise
     operations (the gradients of the output gate, of ``c_t``, of the other three gates, and
     of ``c_{t-1}``);
   - over all steps: the input projection, the two weight gradients and the bias gradient,
     each one call.

   It leaves out, so the bound is generous: the local derivatives that the backward loop
   multiplies by (stand-ins made once, outside the timing), ``g``'s tanh and the exact
   ``tanh(c_t)``, the gate order's permutation, the state gradients' set-up, and every check.
   Its numbers are not a gradient; its operations have the sizes of one, in the same order.
   Rows beside it: carousel's ``"bptt"`` path and the reference loop for the same cell.

2. **FGR's arithmetic** (second shape). The multiply-adds of a training step of
   ``torch.nn.LSTM`` and of FGR (``W_gg``, ``3H x 3H``, adds ``9 H^2`` per token in the forward
   pass, in the state gradient and in the weight gradient), the rate FGR would need for 0.6x
   ``torch.nn.LSTM``'s measured time, and the fastest rate of one large float32 product here
   (MKL's ``mm`` and oneDNN, FGR's own ``(T B) x 3H`` by ``3H x 3H``).

Usage::

    python benchmarks/bptt_floor.py               # all cores, 9 rounds (about a minute)
    python benchmarks/bptt_floor.py --threads 1
    python benchmarks/bptt_floor.py --shape 32,100,128,512   # part 1 at the second shape
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import carousel
from carousel._malloc import keep_freed_memory
from carousel.bptt import _products as products

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import interleaved_medians, train_step  # the benchmarks folder is on sys.path

FIRST = (32, 100, 64, 128)  # (B, T, I, H)
SECOND = (32, 100, 128, 512)


class Skeleton:
    """The fewest PyTorch operations of an LSTM training step (module docstring, part 1)."""

    def __init__(
        self, B: int, T: int, I: int, H: int, gen: torch.Generator, variant: str = "NP"
    ) -> None:
        G = 4 * H
        self.shape = (B, T, I, H)
        self.variant = variant

        def uniform(*size: int) -> torch.Tensor:  # torch.nn.LSTM's initialisation
            return (2 * torch.rand(*size, generator=gen) - 1) / H**0.5

        self.w_ih, self.w_hh, self.bias = uniform(G, I), uniform(G, H), uniform(G)
        self.w_gg = uniform(3 * H, 3 * H)  # FGR
        self.ln_gamma, self.ln_c = torch.ones(G), (torch.ones(H), torch.zeros(H))  # LN
        # stand-ins for the backward's local derivatives, in the real factors' ranges
        self.k_o = torch.rand(T, B, H, generator=gen) / 4  # tanh(c) o (1 - o)
        self.q = torch.rand(T, B, H, generator=gen)  # o (1 - tanh^2 c)
        self.k_rest = torch.rand(T, B, 3, H, generator=gen) / 4  # g i (1 - i), ...
        self.f = torch.rand(T, B, H, generator=gen)  # f_t
        self.dsig = torch.rand(T, B, 3 * H, generator=gen) / 4  # FGR: s (1 - s)

    def step(self, x: torch.Tensor) -> None:
        B, T, I, H = self.shape
        was_enabled = gc.isenabled()
        gc.disable()  # as carousel's passes do (carousel.bptt._common.gc_paused)
        try:
            self._step(x, B, T, I, H)
        finally:
            if was_enabled:
                gc.enable()

    def _step(self, x: torch.Tensor, B: int, T: int, I: int, H: int) -> None:
        G = 4 * H
        ln, fgr = self.variant == "LN", self.variant == "FGR"
        mul, sigmoid, native_ln = torch.mul, torch.sigmoid, torch.native_layer_norm
        ln_backward = torch.ops.aten.native_layer_norm_backward
        gamma, (gamma_c, beta_c) = self.ln_gamma, self.ln_c
        # forward: gates in the order [o, i, f, g], every one through one sigmoid
        gates = products.linear(x.reshape(T * B, I), self.w_ih, self.bias).view(T, B, G)
        cs, acts, hs = (x.new_empty(T, B, H) for _ in range(3))
        zs = x.new_empty(T, B, G)  # LN: W_hh h_{t-1} before its layer norm
        a_s, z_s, sig_s = gates.unbind(0), zs.unbind(0), gates[..., : 3 * H].unbind(0)
        o_s, i_s, f_s, g_s = (gates[..., k * H : (k + 1) * H].unbind(0) for k in range(4))
        c_s, act_s, h_s = cs.unbind(0), acts.unbind(0), hs.unbind(0)
        acc, into = products.acc_fn(self.w_hh, B), products.into_fn(self.w_hh, B)
        gg_acc = products.acc_fn(self.w_gg, B)
        stats_z, stats_c = [], []
        h, c, s = x.new_zeros(B, H), x.new_zeros(B, H), x.new_zeros(B, 3 * H)
        for t in range(T):
            a = a_s[t]  # (B, 4H)
            if ln:  # a_t += LN(h_{t-1} W_hh^T)
                zn, mu, rs = native_ln(into(z_s[t], h), [G], gamma, None, 1e-5)
                a.add_(zn)
                stats_z.append((mu, rs))
            else:
                acc(a, h)  # a_t += h_{t-1} W_hh^T
            if fgr:
                gg_acc(sig_s[t], s)  # + s_{t-1} W_gg^T on the sigmoid gates
            a.sigmoid_()
            c = mul(f_s[t], c, out=c_s[t]).addcmul_(i_s[t], g_s[t])  # c_t = f c + i g
            cn = c
            if ln:
                cn, mu, rs = native_ln(c, [H], gamma_c, beta_c, 1e-5)
                stats_c.append((mu, rs))
            h = mul(o_s[t], sigmoid(cn, out=act_s[t]), out=h_s[t])  # h_t = o act(c_t)
            s = sig_s[t]
        # backward of hs.sum()
        dA = torch.empty_like(gates)
        dH, dC = x.new_ones(T + 1, B, H), x.new_zeros(T + 1, B, H)
        dS = x.new_zeros(T + 1, B, 3 * H)
        dcn = torch.empty_like(cs)
        dA_s, dAo_s, dAsig_s = dA.unbind(0), dA[..., :H].unbind(0), dA[..., : 3 * H].unbind(0)
        dArest_s = dA[..., H:].unflatten(-1, (3, H)).unbind(0)
        dH_s, dC_s, dc3_s = dH.unbind(0), dC.unbind(0), dC.unsqueeze(2).unbind(0)
        dS_s, dcn_s = dS.unbind(0), dcn.unbind(0)
        ko_s, q_s, kr_s, f_s, dsig_s = (
            u.unbind(0) for u in (self.k_o, self.q, self.k_rest, self.f, self.dsig)
        )
        acc_t, gg_acc_t = products.acc_fn(self.w_hh.t(), B), products.acc_fn(self.w_gg.t(), B)
        for t in range(T - 1, -1, -1):
            dh, dc = dH_s[t + 1], dC_s[t + 1]
            mul(dh, ko_s[t], out=dAo_s[t])  # delta o-hat
            if ln:  # delta c_t through LN(c_t)
                d = mul(dh, q_s[t], out=dcn_s[t])
                mu, rs = stats_c[t]
                dc.add_(
                    ln_backward(d, c_s[t], [H], mu, rs, gamma_c, beta_c, (True, False, False))[0]
                )
            else:
                dc.addcmul_(dh, q_s[t])  # delta c_t
            mul(dc3_s[t + 1], kr_s[t], out=dArest_s[t])  # delta i-hat, f-hat, g-hat
            dC_s[t].addcmul_(dc, f_s[t])  # delta c_{t-1}
            if fgr:
                dAsig_s[t].addcmul_(dS_s[t + 1], dsig_s[t])  # + delta s_t s (1 - s)
            if ln:  # delta h_{t-1} += LN'(delta a_t) W_hh
                mu, rs = stats_z[t]
                dz = ln_backward(dA_s[t], z_s[t], [G], mu, rs, gamma, None, (True, False, False))
                acc_t(dH_s[t], dz[0])
            else:
                acc_t(dH_s[t], dA_s[t])  # delta h_{t-1} += delta a_t W_hh
            if fgr:
                gg_acc_t(dS_s[t], dAsig_s[t])  # delta s_{t-1} += delta a^sigma_t W_gg
        dA2 = dA.view(T * B, G)
        products.mm(dA2.t(), x.reshape(T * B, I))  # grad W_ih
        products.mm(dA2[B:].t(), hs[:-1].reshape(-1, H))  # grad W_hh
        dA2.sum(0)  # grad bias
        if fgr:  # grad W_gg
            products.mm(dA2[B:, : 3 * H].t(), gates[:-1, :, : 3 * H].reshape(-1, 3 * H))


def best_rate(m: int, k: int, n: int, repeats: int = 5) -> tuple[float, str]:
    """The faster library's float32 GFLOP/s for an ``(m, k) x (k, n)`` product (best of
    ``repeats``), and its name."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    runs: dict[str, Callable[[], torch.Tensor]] = {"mm": lambda: a.mm(w.t())}
    if products.enabled(a):
        runs["oneDNN"] = lambda: products._dnn(a, w)
    best: tuple[float, str] = (0.0, "")
    for name, run in runs.items():
        run()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = max(best, (2 * m * k * n / (time.perf_counter() - t0) / 1e9, name))
    return best


def lstm_macs(B: int, T: int, I: int, H: int, fgr: bool) -> int:
    """Multiply-adds of a training step (forward, weight and state gradients; no input
    gradient, as in ``benchmarks/layers.py``)."""
    per_token = 4 * H * (I + H) * 2 + 4 * H * H
    if fgr:
        per_token += 3 * 9 * H * H  # W_gg s_{t-1}, its state and its weight gradient
    return B * T * per_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--variants",
        default="NP,LN,FGR",
        help="comma-separated skeletons among NP (the standard cell), LN and FGR",
    )
    parser.add_argument(
        "--shape",
        default=",".join(map(str, FIRST)),
        help="B,T,I,H of part 1 (default: the first shape, %(default)s); part 2 keeps its own",
    )
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in ("NP", "LN", "FGR"):
            parser.error(f"--variants: expected NP, LN or FGR, got {v!r}")
    try:
        shape = tuple(int(n) for n in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        parser.error(f"--shape: expected four positive integers B,T,I,H, got {args.shape!r}")
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    print("command: python " + " ".join(sys.argv))
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; float32, CPU")

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    B, T, I, H = shape
    x = torch.randn(T, B, I, generator=gen)
    steps = {"torch.nn.LSTM": train_step(torch.nn.LSTM(I, H), x)}
    for v in variants:
        skeleton = Skeleton(B, T, I, H, gen, v)
        steps[f"{v} skeleton"] = lambda skeleton=skeleton: skeleton.step(x)
        for impl in ("bptt", "reference"):
            steps[f"{v} carousel {impl}"] = train_step(carousel.LSTM(I, H, variant=v, impl=impl), x)
    med = interleaved_medians(steps, args.rounds)
    nn_s = med["torch.nn.LSTM"]
    print(f"\n## 1. The skeleton at {shape} (median of {args.rounds} rounds)\n")
    print("| row | ms / step | vs torch.nn | vs reference |")
    print("|---|---:|---:|---:|")
    for name, sec in med.items():
        ref_s = med.get(f"{name.split()[0]} carousel reference")
        vs_ref = "" if ref_s is None else f"{ref_s / sec:.2f}x"
        print(f"| {name} | {sec * 1e3:.2f} | {nn_s / sec:.2f}x | {vs_ref} |")
    print()
    for v in variants:
        floor, ref_s = med[f"{v} skeleton"], med[f"{v} carousel reference"]
        for what, limit in (("0.6x torch.nn.LSTM", nn_s / 0.6), ("2x its reference", ref_s / 2)):
            verdict = "below the floor" if limit < floor else "above the floor"
            print(f"- {v} at {what} needs <= {limit * 1e3:.2f} ms: {verdict} "
                  f"({floor * 1e3:.2f} ms)")  # fmt: skip

    B2, T2, I2, H2 = SECOND
    x2 = torch.randn(T2, B2, I2, generator=gen)
    nn2 = train_step(torch.nn.LSTM(I2, H2), x2)
    nn2_s = interleaved_medians({"nn": nn2}, max(3, args.rounds // 2))["nn"]
    if shape != FIRST:  # part 2 compares with torch.nn.LSTM at the first shape too
        x1 = torch.randn(FIRST[1], FIRST[0], FIRST[2], generator=gen)
        nn1 = train_step(torch.nn.LSTM(FIRST[2], FIRST[3]), x1)
        nn_s = interleaved_medians({"nn": nn1}, max(3, args.rounds // 2))["nn"]
    rate, lib = best_rate(T2 * B2, 3 * H2, 3 * H2)
    print(f"\n## 2. FGR's arithmetic ({SECOND}, and {FIRST} for comparison)\n")
    print(
        f"- the fastest large product here, ({T2 * B2} x {3 * H2}) by ({3 * H2} x {3 * H2}): "
        f"{rate:.0f} GFLOP/s ({lib})"
    )
    for shape, nn_time in ((SECOND, nn2_s), (FIRST, nn_s)):
        macs, fgr_macs = lstm_macs(*shape, fgr=False), lstm_macs(*shape, fgr=True)
        need = 2 * fgr_macs / (nn_time / 0.6) / 1e9
        print(
            f"- {shape}: torch.nn.LSTM {nn_time * 1e3:.2f} ms, {macs / 1e9:.2f} G "
            f"multiply-adds ({2 * macs / nn_time / 1e9:.0f} GFLOP/s); FGR {fgr_macs / 1e9:.2f} G, "
            f"at 0.6x torch.nn.LSTM it needs {need:.0f} GFLOP/s, {need / rate:.2f}x that product"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
