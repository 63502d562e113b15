"""``carousel analyze CKPT``: gradients through time, Jacobians and Lyapunov exponents, traces and
saliency of a trained model, as PNG files and one self-contained HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from carousel.analysis.report import WHAT

    p = subparsers.add_parser(
        "analyze",
        help="analyse a checkpoint: gradients, Jacobians, traces, saliency -> PNGs + HTML",
        description=(
            "Load a checkpoint written by `carousel train` and analyse its model on a batch of "
            "the task's held-out data (with the task's loss) or on inputs from a file (with "
            "the outputs at the last step as loss). Writes one PNG per picture and "
            "report.html, which embeds them (a single file to share)."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="e.g. runs/binary-addition/last")
    p.add_argument(
        "--input",
        default=None,
        metavar="FILE",
        help="inputs from a .npy, .pt or .safetensors file: (T, B, I) features, (T, I) one "
        "sequence, or (T, B) / (T,) token ids (default: a batch of the task's held-out split)",
    )
    p.add_argument(
        "--split", default=None, help="held-out split to take the batch from (default: first)"
    )
    p.add_argument(
        "--batch-size", type=int, default=4, help="sequences taken from the split (default: 4)"
    )
    p.add_argument(
        "--what",
        default=",".join(WHAT),
        help=f"comma-separated analyses out of {','.join(WHAT)} (default: all)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: <run directory>/analysis/<checkpoint name>)",
    )
    p.add_argument(
        "--sequence", type=int, default=0, help="sequence shown in traces and saliency (0)"
    )
    p.add_argument(
        "--lyapunov-k", type=int, default=1, help="number of Lyapunov exponents (default: 1)"
    )
    p.add_argument(
        "--spectrum-steps",
        type=int,
        default=3,
        help="steps at which the full Jacobian spectrum is computed (default: 3)",
    )
    p.add_argument(
        "--hdf5",
        type=Path,
        default=None,
        metavar="FILE",
        help="also export every step's states and gates to this HDF5 file (LSTMVis layout; "
        "needs h5py: pip install 'carousel-rnn[analysis]')",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out batch (default: 0)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's)"
    )
    p.add_argument("--json", action="store_true", help="print the key numbers as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from carousel.analysis.checkpoint import analyze_checkpoint

    try:
        from carousel.train import CheckpointError, ConfigError, resolve_checkpoint
    except ImportError as e:  # pragma: no cover - the training engine ships with carousel
        print(f"carousel analyze: the training engine is unavailable: {e}", file=sys.stderr)
        return 2
    if args.threads < 0:
        print(f"carousel analyze: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        out = args.out
        if out is None:
            ckpt_dir = resolve_checkpoint(args.checkpoint)
            out = ckpt_dir.parent / "analysis" / ckpt_dir.name
        report = analyze_checkpoint(
            args.checkpoint,
            out,
            input_file=args.input,
            split=args.split,
            batch_size=args.batch_size,
            what=args.what,
            device=args.device,
            seed=args.seed,
            batch_index=args.sequence,
            lyapunov_k=args.lyapunov_k,
            spectrum_steps=args.spectrum_steps,
            hdf5=args.hdf5,
        )
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"carousel analyze: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"report": str(report.html), **report.numbers}, indent=1))
        return 0
    nums = report.numbers
    if "gradients" in nums:
        g = nums["gradients"]
        for key in sorted(k for k in g if k.endswith("/log10_ratio")):
            track = key.strip("/").rsplit("/", 1)[0]
            print(f"gradients  {track:24s} log10(|dL/ds_first| / |dL/ds_last|) = {g[key]:+.2f}")
    if "jacobians" in nums:
        j = nums["jacobians"]
        print(f"jacobians  largest Lyapunov exponent {j['largest_lyapunov']:+.4f}/step: "
              f"{j['regime']}")  # fmt: skip
        for track, v in j.items():
            if isinstance(v, dict):
                print(f"           {track:24s} mean sigma_1 {v['sigma_max_mean']:.4f}, "
                      f"max {v['sigma_max_max']:.4f}")  # fmt: skip
    if "saliency" in nums:
        s = nums["saliency"]
        print(f"saliency   output {s['target']}: most salient input step {s['most_salient_step']}")
    for name, path in report.images.items():
        print(f"figure     {name}: {path}")
    if "hdf5" in nums:
        print(f"states     {nums['hdf5']}")
    print(f"report     {report.html}")
    return 0
