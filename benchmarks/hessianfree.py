"""carousel's HessianFree against the ``hessianfree`` package (NumPy) on its own adding demo.

The ``hessianfree`` package (Rasmussen, PyPI ``hessianfree`` 0.4.0) ships an adding-problem demo
(``hessianfree.demos.adding``) that forces a GPU. This script runs that demo's network and
optimizer settings on the CPU, and carousel's optimizer on the *same* network (same
architecture, the package's own initial weights copied over) and the same minibatches, one
update of each in turn, each on one thread:

- problem: the demo's adding problem, T=50, 1,024 sequences per update, values uniform in
  [0, 1], one mark among the first T/10 steps and one in [T/10, T/2), target the sum at the
  last step;
- network: 2 inputs -> 32 ReLU -> 64 continuous-time ReLU units (tau=20, recurrent, bias on
  the first step) -> 1 ReLU output, squared error at the last step;
- ``hessianfree``: ``HessianFree(CG_iter=60, init_damping=20)``, structural damping 1e-4 on the
  recurrent layer, Gauss-Newton products on the whole 1,024-sequence minibatch, no
  preconditioner (the package has none);
- carousel: ``HessianFree(loss="mse", damping=40, structural_damping=1e-4, max_cg_iter=60,
  cg_tol=5e-6)``: the package's settings (the same damping, since carousel's ``mse`` is twice
  the package's 1/2-squared error; its CG stopping constant 5e-6 in place of Martens' 5e-4),
  with curvature on 256 of the 1,024 sequences and the Gauss-Newton diagonal preconditioner.

Both report the package's loss convention, 1/2 (output - target)^2 averaged over sequences.

Environment (``hessianfree`` is not a dependency of carousel)::

    python3 -m venv /work/benchenv-hf
    /work/benchenv-hf/bin/pip install -c constraints.txt torch==2.13.0 hessianfree numpy \\
        matplotlib   # hessianfree imports matplotlib
    /work/benchenv-hf/bin/pip install --no-deps -e .
    /work/benchenv-hf/bin/python benchmarks/hessianfree.py --updates 30

Prints a Markdown table with the command and the machine.
"""

from __future__ import annotations

import os
import sys

# this file shares its name with the package it benchmarks: keep its folder off the import path
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread each, before NumPy and torch load BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import carousel  # noqa: E402
from carousel.optim import HessianFree  # noqa: E402


def adding_data(n: int, T: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """The demo's adding problem: inputs ``(N, T, 2)``, targets ``(N, T, 1)`` (NaN but the
    last step)."""
    vals = rng.uniform(0, 1, size=(n, T, 1)).astype(np.float32)
    mask = np.zeros((n, T, 1), dtype=np.float32)
    for m in mask:
        m[rng.randint(T // 10)] = 1
        m[rng.randint(T // 10, T // 2)] = 1
    inputs = np.concatenate((vals, mask), axis=-1)
    targets = np.full((n, T, 1), np.nan, dtype=np.float32)
    targets[:, -1] = np.sum(vals * mask, axis=1)
    return inputs, targets


class ContinuousReLU(nn.Module):
    r"""The demo's recurrent layer: a leaky integrator of its input, read through a ReLU.

    .. math::

        s_t = (1 - c) s_{t-1} + c (W_{ih} x_t + b_{ih} + r_t), \quad h_t = \max(s_t, 0),
        \quad r_t = W_{hh} h_{t-1} \ (t > 0), \quad r_0 = b_{0}

    with :math:`c = 1/\tau` (``hessianfree.nonlinearities.Continuous``; the recurrent bias acts
    on the first step only, as in ``hessianfree.RNNet``).
    """

    def __init__(self, input_size: int, hidden_size: int, tau: float) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.zeros(hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.zeros(hidden_size))
        self.weight_hh = nn.Parameter(torch.zeros(hidden_size, hidden_size))
        self.bias_first = nn.Parameter(torch.zeros(hidden_size))
        self.coeff = 1.0 / tau

    def forward(self, x: Tensor) -> Tensor:  # (T, B, I) -> (T, B, H)
        # Written with operations that have native forward-mode derivatives between tensors
        # of the same torch.func level (lerp, addmm, relu): in torch 2.13 a product or sum
        # with a Python scalar or a constant tensor under ``jvp`` runs a Python reference
        # implementation, about 100x slower than the kernel.
        a = F.linear(x, self.weight_ih, self.bias_ih)  # (T, B, H)
        h, out = None, []
        for t, a_t in enumerate(a.unbind(0)):
            if t == 0:
                s = (a_t + self.bias_first) * self.coeff  # s_0 = c (a_0 + b_0) from s_{-1} = 0
            else:  # s_t = (1 - c) s_{t-1} + c (a_t + W_hh h_{t-1})
                s = torch.lerp(s, torch.addmm(a_t, h, self.weight_hh.t()), self.coeff)
            h = torch.relu(s)  # (B, H)
            out.append(h)
        return torch.stack(out)


class DemoNet(nn.Module):
    """2 -> 32 ReLU -> 64 continuous ReLU (recurrent) -> 1 ReLU, read at the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(2, 32)
        self.rec = ContinuousReLU(32, 64, tau=20.0)
        self.out = nn.Linear(64, 1)

    def forward(self, x: Tensor) -> Tensor:  # (T, B, 2) -> (B, 1)
        h = self.rec(torch.relu(self.inp(x)))
        return torch.relu(self.out(h[-1]))

    @torch.no_grad()
    def load_hessianfree(self, net) -> None:
        """Copy the weights of a ``hessianfree.RNNet`` of the demo's shape."""

        def wb(conn):
            W, b = net.get_weights(net.W, conn)
            return torch.from_numpy(np.array(W).T.copy()), torch.from_numpy(np.array(b).copy())

        self.inp.weight[:], self.inp.bias[:] = wb((0, 1))
        self.rec.weight_ih[:], self.rec.bias_ih[:] = wb((1, 2))
        self.rec.weight_hh[:], self.rec.bias_first[:] = wb((2, 2))
        self.out.weight[:], self.out.bias[:] = wb((2, 3))


def build_hessianfree(seed: int):
    import hessianfree as hf

    optimizer = hf.opt.HessianFree(CG_iter=60, init_damping=20)
    net = hf.RNNet(
        shape=[2, 32, 64, 1],
        layers=[
            hf.nl.Linear(),
            hf.nl.ReLU(),
            hf.nl.Continuous(hf.nl.ReLU(), tau=20),
            hf.nl.ReLU(),
        ],
        W_init_params={"coeff": 0.25},
        loss_type=[
            hf.loss_funcs.SquaredError(),
            hf.loss_funcs.StructuralDamping(1e-4, layers=[2], optimizer=optimizer),
        ],
        rec_layers=[2],
        use_GPU=False,
        debug=False,
        rng=np.random.RandomState(seed),
    )
    W, _ = net.get_weights(net.W, (2, 2))
    W *= 1.0 / np.max(np.abs(np.linalg.eigvals(W)))  # the demo's spectral radius 1
    net.optimizer = optimizer
    return net, optimizer


def half_sq_error(pred: np.ndarray, target: np.ndarray) -> float:
    return float(0.5 * np.mean((pred - target) ** 2))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=50, help="sequence length")
    parser.add_argument("--batch", type=int, default=1024, help="sequences per update")
    parser.add_argument(
        "--curvature-batch",
        type=int,
        default=256,
        help="carousel's curvature batch (the package uses the whole batch)",
    )
    parser.add_argument("--updates", type=int, default=30, help="updates of each optimizer")
    parser.add_argument("--test", type=int, default=2000, help="held-out sequences")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    rng = np.random.RandomState(args.seed + 1)
    train_x, train_y = adding_data(args.batch * args.updates, args.T, rng)
    test_x, test_y = adding_data(args.test, args.T, rng)

    net, hf_opt = build_hessianfree(args.seed)
    model = DemoNet()
    model.load_hessianfree(net)
    opt = HessianFree(
        model.parameters(),
        model=model,
        loss="mse",
        damping=40.0,
        structural_damping=1e-4,
        structural_modules=[model.rec],
        max_cg_iter=60,
        cg_tol=5e-6,
        seed=args.seed,
    )
    tx = torch.from_numpy(test_x).transpose(0, 1).contiguous()  # (T, B, 2)
    with torch.no_grad():
        start_gap = float(
            (model(tx)[:, 0] - torch.from_numpy(net.forward(test_x, net.W)[-1][:, -1, 0]))
            .abs()
            .max()
        )

    rows = {"hessianfree": [], "carousel": []}
    for u in range(args.updates):
        sl = slice(u * args.batch, (u + 1) * args.batch)
        # hessianfree: the body of RNNet.run_epochs for one minibatch
        t0 = time.perf_counter()
        net.cache_minibatch(train_x, train_y, np.arange(sl.start, sl.stop))
        net.W += hf_opt.compute_update(False)
        dt = time.perf_counter() - t0
        rows["hessianfree"].append(
            {
                "seconds": dt,
                "cg": int(hf_opt.plots["CG iterations"][-1]),
                "loss": float(net.error()),
            }
        )
        # carousel on the same minibatch
        x = torch.from_numpy(train_x[sl]).transpose(0, 1).contiguous()  # (T, B, 2)
        y = torch.from_numpy(train_y[sl, -1])  # (B, 1)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        t0 = time.perf_counter()
        opt.step(closure, curvature_inputs=x[:, : args.curvature_batch])
        dt = time.perf_counter() - t0
        d = opt.last_diagnostics
        rows["carousel"].append({"seconds": dt, "cg": d.cg_iterations, "loss": d.new_loss / 2})
        print(
            f"update {u + 1:3d}: hessianfree {rows['hessianfree'][-1]['seconds']:6.2f} s "
            f"loss {rows['hessianfree'][-1]['loss']:.5f} CG {rows['hessianfree'][-1]['cg']:3d} | "
            f"carousel {dt:6.2f} s loss {d.new_loss / 2:.5f} CG {d.cg_iterations:3d}",
            file=sys.stderr,
            flush=True,
        )

    with torch.no_grad():
        pred_c = model(tx).numpy()[:, 0]
    pred_h = net.forward(test_x, net.W)[-1][:, -1, 0]
    target = test_y[:, -1, 0]
    result = {
        "command": "python benchmarks/hessianfree.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (nproc), one thread each",
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "carousel": carousel.__version__,
        },
        "initial_output_gap": start_gap,
        "settings": vars(args),
    }
    for name, pred in (("hessianfree", pred_h), ("carousel", pred_c)):
        secs = [r["seconds"] for r in rows[name]]
        result[name] = {
            "mean_seconds_per_update": statistics.mean(secs),
            "median_seconds_per_update": statistics.median(secs),
            "total_seconds": sum(secs),
            "mean_cg_iterations": statistics.mean(r["cg"] for r in rows[name]),
            "last_train_loss": rows[name][-1]["loss"],
            "test_loss": half_sq_error(pred, target),
            "test_correct": float(np.mean(np.abs(pred - target) < 0.04)),
            "per_update": rows[name],
        }
    h, c = result["hessianfree"], result["carousel"]
    result["speedup_per_update"] = h["mean_seconds_per_update"] / c["mean_seconds_per_update"]
    print(f"command: {result['command']}")
    print(f"machine: {result['machine']}; torch {torch.__version__}, numpy {np.__version__}")
    print()
    print(
        "| optimizer | s / update (mean) | s / update (median) | CG iters (mean) | "
        "test loss 1/2 MSE | test \\|err\\| < 0.04 |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("hessianfree", "carousel"):
        r = result[name]
        print(
            f"| {name} | {r['mean_seconds_per_update']:.2f} | "
            f"{r['median_seconds_per_update']:.2f} | {r['mean_cg_iterations']:.1f} | "
            f"{r['test_loss']:.5f} | {r['test_correct']:.3f} |"
        )
    print(
        f"\nspeed-up per update: {result['speedup_per_update']:.2f}x "
        f"after {args.updates} updates of {args.batch} sequences"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
