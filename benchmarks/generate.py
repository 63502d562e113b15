"""Generation speed: characters per second of sampling from a 2x512 LSTM language model.

Every row generates ``N`` characters per sequence for ``B`` sequences, one network step per
character, sampling each from the softmax with ``torch.multinomial`` (temperature 1), in
``torch.inference_mode``, float32, on the CPU unless ``--device`` says otherwise:

- ``torch.nn.LSTM step by step``: ``nn.Embedding`` -> ``nn.LSTM`` called on one time step with
  the carried ``(h, c)`` -> ``nn.Linear`` -> sample; what one writes with torch.nn.
- ``carousel.generate``: :func:`carousel.generate.sample_tokens` on a
  :class:`~carousel.models.charlm.CharLM` holding the same weights (its fused step: the
  embedding folded into the first layer's input weights, one matrix product per layer).
- ``carousel, layer per step``: the same with ``fast=False``: the ``carousel.LSTM`` layer called
  on one time step (what every variant and cell type uses).

The implementations are timed in interleaved rounds (a burst of load on a shared machine hits
all alike) and the table gives the median over rounds and the best round (the least disturbed
by other jobs); ``chars/s = B * N / seconds``. The
``vs torch`` column is the ratio to the torch.nn row of the same batch size. On a shared
machine, ``--threads 1 --timer cpu`` times the process's CPU time instead of the wall clock, so
other jobs' load does not decide the ranking. The three produce
the same samples from the same seed (checked before timing).

Usage::

    python benchmarks/generate.py              # batch 1 and 64, 5 rounds
    python benchmarks/generate.py --quick      # a smoke run with a small model
    python benchmarks/generate.py --threads 1 --timer cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from carousel._malloc import keep_freed_memory
from carousel.generate import sample_tokens
from carousel.models.charlm import CharLM


def torch_generate(emb, lstm, head, prime, length, generator):
    """The torch.nn baseline: one ``nn.LSTM`` call per character, state carried."""
    B = prime.shape[0]
    out = torch.empty(length, B, dtype=torch.long)
    state = None
    x = prime
    for t in range(length):
        y, state = lstm(emb(x).unsqueeze(0), state)  # (1, B, H)
        probs = torch.softmax(head(y[0]), dim=-1)  # (B, V)
        x = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out[t] = x
    return out


def carousel_generate(model, prime, length, generator, fast):
    """carousel: :func:`sample_tokens` with the fused step (``fast=True``) or the layer."""
    return sample_tokens(model, prime.unsqueeze(0), length, generator=generator, fast=fast)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=100, help="vocabulary size V")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size H per layer")
    parser.add_argument("--layers", type=int, default=2, help="stacked LSTM layers")
    parser.add_argument("--embedding", type=int, default=64, help="embedding size")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes B")
    parser.add_argument("--length", type=int, default=200, help="characters per sequence N")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: the process's CPU time (time.process_time), for a "
        "shared machine (use with --threads 1 on the CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="small model, 2 rounds (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.length, args.rounds, args.batch = 32, 20, 2, [1, 4]
    if args.threads:
        torch.set_num_threads(args.threads)
    # the same allocator settings as `carousel train` for every row: without them, whether
    # torch.nn.LSTM's per-call workspace is mmapped afresh each step (page faults) depends on
    # what ran before in the process, which moved its batch-64 row by 30%
    keep_freed_memory()
    dev = torch.device(args.device)
    if args.timer == "cpu" and dev.type != "cpu":
        parser.error("--timer cpu measures the CPU; use the wall timer with --device cuda")
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    V, H, L, E = args.vocab, args.hidden, args.layers, args.embedding
    torch.manual_seed(0)
    model = CharLM(V, H, L, embedding_size=E, device=dev).eval()
    emb = nn.Embedding(V, E, device=dev)
    lstm = nn.LSTM(E, H, L, device=dev)
    head = nn.Linear(H, V, device=dev)
    with torch.no_grad():  # identical weights
        emb.weight.copy_(model.embedding.weight)
        lstm.load_state_dict(model.rnn.state_dict())
        head.load_state_dict(model.decoder.state_dict())
    for m in (emb, lstm, head):
        m.eval()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    impls = {
        "torch.nn.LSTM step by step": lambda p, n, g: torch_generate(emb, lstm, head, p, n, g),
        "carousel.generate": lambda p, n, g: carousel_generate(model, p, n, g, True),
        "carousel, layer per step": lambda p, n, g: carousel_generate(model, p, n, g, False),
    }
    results: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for B in args.batch:
            prime = torch.randint(0, V, (B,), device=dev)
            # same seed, same samples: the three compute the same distribution
            outs = [f(prime, 8, torch.Generator(device=dev).manual_seed(1)) for f in impls.values()]
            if not all(torch.equal(outs[0], o) for o in outs[1:]):
                print(f"warning: implementations disagree at B={B}", file=sys.stderr)
            for f in impls.values():  # warm-up
                f(prime, 4, torch.Generator(device=dev).manual_seed(0))
            for _ in range(args.rounds):
                for name, f in impls.items():
                    g = torch.Generator(device=dev).manual_seed(0)
                    sync()
                    t0 = clock()
                    f(prime, args.length, g)
                    sync()
                    results.setdefault((name, B), []).append(clock() - t0)

    print("Generation speed: characters per second, median of", args.rounds, "rounds")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.machine()}, nproc={os.cpu_count()}, torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, device={dev}, timer={args.timer}, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"model: {L}x{H} LSTM, embedding {E}, vocabulary {V}; N={args.length} characters\n")
    print(
        "| implementation | batch | chars/s (median) | vs torch | chars/s (best round) | vs torch |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    ok = True
    for B in args.batch:
        cells = []
        for stat in (statistics.median, min):
            base = args.length * B / stat(results[("torch.nn.LSTM step by step", B)])
            cells.append({n: args.length * B / stat(results[(n, B)]) / base for n in impls})
            cells[-1]["base"] = base
        for name in impls:
            row = [f"{c[name] * c['base']:,.0f} | {c[name]:.2f}x" for c in cells]
            print(f"| {name} | {B} | {' | '.join(row)} |")
            if name == "carousel.generate" and cells[0][name] < 1.0:
                ok = False
    print("\nbar (carousel.generate at least as fast as torch.nn.LSTM step by step, medians):",
          "met" if ok else "NOT met")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
