"""Read a finite-state automaton out of a trained recurrent network.

The method of Giles et al. 1992 and Omlin & Giles 1996 ("Extraction of rules from discrete-time
recurrent neural networks"): run the network on many inputs, cluster its hidden states
(k-means here), take each cluster as a state, build the transition table from consecutive
states (the most frequent successor of each state under each input symbol), label each state
with the network's most frequent output there (a Moore machine), drop what the start state
cannot reach, and minimise (Moore's partition refinement). Lecture 7c's claim is that an RNN
trained on binary addition ends up implementing the 4-state carry automaton; the extraction
checks it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Automaton", "extract_automaton", "kmeans", "plot_automaton"]


def kmeans(
    points: Tensor, k: int, *, iters: int = 100, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007).

    Args:
        points: ``(N, D)``.
        k: number of clusters (at most ``N``).
        iters: maximum Lloyd iterations.
        generator: source of randomness for the seeding.

    Returns:
        ``(centroids, labels)``: ``(k, D)`` and ``(N,)`` int64.

    Raises:
        ValueError: if ``k`` is not in ``[1, N]``.
    """
    N = points.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans: k must be in [1, {N}] (the number of points), got {k}")
    x = points.double()
    first = int(torch.randint(0, N, (1,), generator=generator))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:
            idx = int(torch.randint(0, N, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centroids.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(1))
    c = torch.stack(centroids)
    labels = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        for j in range(k):
            members = labels == j
            if members.any():
                c[j] = x[members].mean(0)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return c.to(points.dtype), labels


@dataclass
class Automaton:
    """A deterministic Moore machine.

    Attributes:
        transitions: ``(S, A)`` int64: the next state from state ``s`` on symbol ``a``
            (``-1`` where the data never showed that move).
        outputs: ``(S,)`` int64: the output emitted in each state.
        start: the start state.
        symbols: names of the ``A`` input symbols.
        counts: ``(S, A)`` how often each transition was observed (for the diagram).
    """

    transitions: Tensor
    outputs: Tensor
    start: int
    symbols: tuple[str, ...]
    counts: Tensor | None = None

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def run(self, symbols: Tensor) -> Tensor:
        """Outputs after each symbol.

        Args:
            symbols: ``(T, B)`` int64 symbol indices.

        Returns:
            ``(T, B)`` outputs (``-1`` once a run takes a move never observed).
        """
        T, B = symbols.shape
        state = torch.full((B,), self.start, dtype=torch.long)
        out = torch.empty(T, B, dtype=torch.long)
        dead = torch.zeros(B, dtype=torch.bool)
        for t in range(T):
            nxt = self.transitions[state.clamp(min=0), symbols[t]]
            dead |= (state < 0) | (nxt < 0)
            state = torch.where(dead, -1, nxt)
            out[t] = torch.where(dead, -1, self.outputs[state.clamp(min=0)])
        return out

    def reachable(self) -> Automaton:
        """The automaton restricted to the states the start state reaches."""
        seen, frontier = {self.start}, [self.start]
        while frontier:
            s = frontier.pop()
            for nxt in self.transitions[s].tolist():
                if nxt >= 0 and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        keep = sorted(seen)
        return self._relabel([keep.index(s) if s in seen else -1 for s in range(self.num_states)])

    def minimise(self) -> Automaton:
        """The minimal equivalent Moore machine (reachable states, then Moore's partition
        refinement: split blocks by output, then by the blocks their successors fall in,
        until stable). An unobserved move (``-1``) counts as a distinct successor."""
        a = self.reachable()
        block = a.outputs.clone()
        while True:
            succ = torch.where(a.transitions >= 0, block[a.transitions.clamp(min=0)], -1)
            signature = [(int(block[s]), *succ[s].tolist()) for s in range(a.num_states)]
            ids: dict[tuple, int] = {}
            new = torch.tensor([ids.setdefault(sig, len(ids)) for sig in signature])
            if len(ids) == len(set(block.tolist())):
                break
            block = new
        # canonical numbering: order of discovery from the start state (breadth first)
        order, seen = [], set()
        queue = [int(block[a.start])]
        rep = {int(block[s]): s for s in reversed(range(a.num_states))}
        while queue:
            b = queue.pop(0)
            if b in seen:
                continue
            seen.add(b)
            order.append(b)
            for nxt in a.transitions[rep[b]].tolist():
                if nxt >= 0:
                    queue.append(int(block[nxt]))
        mapping = [order.index(int(block[s])) for s in range(a.num_states)]
        return a._relabel(mapping)

    def _relabel(self, mapping: Sequence[int]) -> Automaton:
        """Merge/renumber states: old state ``s`` becomes ``mapping[s]`` (``-1``: dropped)."""
        n = max(mapping) + 1
        A = self.transitions.shape[1]
        trans = torch.full((n, A), -1, dtype=torch.long)
        outs = torch.zeros(n, dtype=torch.long)
        counts = torch.zeros(n, A, dtype=torch.long)
        for s, m in enumerate(mapping):
            if m < 0:
                continue
            outs[m] = self.outputs[s]
            if self.counts is not None:
                counts[m] += self.counts[s]
            for x in range(A):
                t = int(self.transitions[s, x])
                if t >= 0 and mapping[t] >= 0:
                    trans[m, x] = mapping[t]
        return Automaton(trans, outs, mapping[self.start], self.symbols, counts)

    def equivalent(self, other: Automaton) -> bool:
        """Whether both machines emit the same outputs on every input sequence (their
        minimal forms are equal up to renumbering; both are canonically numbered)."""
        a, b = self.minimise(), other.minimise()
        return (
            a.num_states == b.num_states
            and torch.equal(a.transitions, b.transitions)
            and torch.equal(a.outputs, b.outputs)
        )

    def table(self, output_names: Sequence[str] | None = None) -> str:
        """The transition table in Markdown."""
        names = output_names or [str(o) for o in range(int(self.outputs.max()) + 1)]
        head = "| state | output | " + " | ".join(f"on {s}" for s in self.symbols) + " |"
        lines = [head, "|---|---|" + "---|" * len(self.symbols)]
        for s in range(self.num_states):
            mark = " (start)" if s == self.start else ""
            nxt = [("-" if int(t) < 0 else f"S{int(t)}") for t in self.transitions[s]]
            lines.append(
                f"| S{s}{mark} | {names[int(self.outputs[s])]} | " + " | ".join(nxt) + " |"
            )
        return "\n".join(lines) + "\n"


def extract_automaton(
    states: Tensor,
    initial: Tensor,
    symbols: Tensor,
    outputs: Tensor,
    *,
    num_symbols: int,
    num_clusters: int,
    symbol_names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> Automaton:
    """Cluster a network's hidden states into a Moore machine and minimise it.

    Args:
        states: ``(T, B, H)`` hidden state after each step.
        initial: ``(H,)`` or ``(B, H)`` the state before the first step.
        symbols: ``(T, B)`` int64 input symbol at each step.
        outputs: ``(T, B)`` int64 the network's (discretised) output at each step.
        num_symbols: size of the input alphabet ``A``.
        num_clusters: k of k-means (over-cluster: minimisation merges equivalent clusters).
        symbol_names: names of the symbols (default ``"0"``, ``"1"``, ...).
        generator: seeds k-means.

    Returns:
        The minimised :class:`Automaton`.

    Raises:
        ValueError: on inconsistent shapes.
    """
    T, B, H = states.shape
    if symbols.shape != (T, B) or outputs.shape != (T, B):
        raise ValueError(
            f"extract_automaton: expected symbols and outputs of shape (T, B) = {(T, B)}, got "
            f"{tuple(symbols.shape)} and {tuple(outputs.shape)}"
        )
    h0 = initial.reshape(-1, H).expand(B, H) if initial.dim() == 1 else initial
    everything = torch.cat([h0.unsqueeze(0), states]).detach()  # (T + 1, B, H)
    flat = everything.reshape(-1, H)
    k = min(num_clusters, flat.shape[0])
    _, labels = kmeans(flat, k, generator=generator)
    labels = labels.view(T + 1, B)
    # states never visited by any step stay empty; the start is the cluster of h0 (majority)
    start = int(torch.bincount(labels[0], minlength=k).argmax())
    counts = torch.zeros(k, num_symbols, k, dtype=torch.long)
    prev, nxt, sym = labels[:-1].flatten(), labels[1:].flatten(), symbols.flatten()
    counts.index_put_((prev, sym, nxt), torch.ones_like(prev), accumulate=True)
    total = counts.sum(-1)  # (k, A)
    trans = torch.where(total > 0, counts.argmax(-1), -1)
    n_out = int(outputs.max()) + 1
    out_counts = torch.zeros(k, n_out, dtype=torch.long)
    out_counts.index_put_(
        (labels[1:].flatten(), outputs.flatten()), torch.ones(T * B, dtype=torch.long),
        accumulate=True,
    )  # fmt: skip
    out_of_state = out_counts.argmax(-1)
    # the start cluster may never be a *successor*; its output is then that of nothing: 0
    names = tuple(symbol_names) if symbol_names is not None else tuple(map(str, range(num_symbols)))
    raw = Automaton(trans, out_of_state, start, names, total)
    return raw.minimise()


def plot_automaton(
    automaton: Automaton,
    path: str | os.PathLike,
    *,
    state_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Draw the automaton as a state diagram (matplotlib; states on a circle, one arrow per
    pair of states labelled with the symbols that take it).

    Args:
        automaton: the machine.
        path: the PNG to write.
        state_names: a label per state (default ``S0 / output``).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyArrowPatch

    n = automaton.num_states
    angle = [math.pi / 2 - 2 * math.pi * s / n for s in range(n)]
    pos = [(2.2 * math.cos(a), 2.2 * math.sin(a)) for a in angle]
    labels = state_names or [f"S{s}\nout {int(automaton.outputs[s])}" for s in range(n)]
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    r = 0.55
    edges: dict[tuple[int, int], list[str]] = {}
    for s in range(n):
        for x, t in enumerate(automaton.transitions[s].tolist()):
            if t >= 0:
                edges.setdefault((s, t), []).append(automaton.symbols[x])
    for (s, t), syms in edges.items():
        text = ",".join(syms)
        (x0, y0), (x1, y1) = pos[s], pos[t]
        if s == t:  # self loop outside the circle of states
            ux, uy = x0 / math.hypot(x0, y0), y0 / math.hypot(x0, y0)
            cx, cy = x0 + ux * (r + 0.28), y0 + uy * (r + 0.28)
            ax.add_patch(Circle((cx, cy), 0.3, fill=False, lw=1.2, color="0.25"))
            ax.text(cx + ux * 0.45, cy + uy * 0.45, text, ha="center", va="center", fontsize=9)
            continue
        arrow = FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14, lw=1.2, color="0.25",
            connectionstyle="arc3,rad=0.18", shrinkA=r * 72 / 1.2, shrinkB=r * 72 / 1.2,
        )  # fmt: skip
        ax.add_patch(arrow)
        # matplotlib's arc3 bends towards mid + rad * (dy, -dx); label the curve's midpoint
        dx, dy = x1 - x0, y1 - y0
        lx, ly = (x0 + x1) / 2 + 0.09 * dy, (y0 + y1) / 2 - 0.09 * dx
        box = dict(boxstyle="round,pad=0.15", fc="white", ec="none")
        ax.text(lx, ly, text, ha="center", va="center", fontsize=9, bbox=box)
    for s in range(n):
        ax.add_patch(
            Circle(pos[s], r, fc="#dbe9f6", ec="black", lw=2 if s == automaton.start else 1)
        )
        ax.text(*pos[s], labels[s], ha="center", va="center", fontsize=9)
    ax.set_xlim(-3.6, 3.6)
    ax.set_ylim(-3.6, 3.6)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
