r"""The lectures' claims about gradients through time, as functions that return numbers and
draw one picture each (``carousel explain``).

- :func:`vanishing_gradients`: the same task and sequence length for a tanh RNN whose recurrent
  matrix is scaled below and above 1, a GRU and an LSTM; the norm of the error derivative
  against the distance in time (Hinton, lecture 7d; Bengio et al. 1994; Pascanu et al. 2013).
- :func:`memory_cell`: lecture 7e's memory cell, a linear unit with self-weight 1 whose keep
  (forget) gate holds a value for hundreds of steps while the write gate keeps distractors out,
  and the error flowing back through it unchanged (Hochreiter & Schmidhuber 1997's constant
  error carousel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from carousel.analysis.dynamics import lyapunov_exponents
from carousel.analysis.gradients import gradient_norms_through_time
from carousel.analysis.record import record
from carousel.analysis.saliency import saliency

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from carousel.layers import GRU, LSTM

__all__ = [
    "GATE_INITS",
    "MemoryCellDemo",
    "VanishingDemo",
    "memory_cell",
    "plot_memory_cell",
    "plot_vanishing",
    "vanishing_gradients",
]

#: Gate initialisations for the GRU and LSTM of :func:`vanishing_gradients`.
GATE_INITS = ("default", "chrono", "both")


def _orthogonal(n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A random orthogonal matrix (QR of a Gaussian, signs fixed: Haar distributed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def _chrono(layer: GRU | LSTM, family: str, t_max: int, generator: torch.Generator) -> None:
    r"""Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp
    time?", Sec. 4): the keep-gate bias :math:`b \sim \log U(1, T_{max} - 1)`, so the units'
    memory time scales spread up to :math:`T_{max}`. LSTM: forget bias ``b``, input bias
    ``-b``; GRU (torch.nn's ``h = (1 - z) n + z h_{t-1}``, ``z`` keeps): update bias ``b``."""
    H = layer.hidden_size
    b = torch.empty(H, dtype=torch.float64).uniform_(1.0, max(t_max - 1.0, 1.0 + 1e-6),
                                                     generator=generator).log()  # fmt: skip
    with torch.no_grad():
        bih, bhh = layer.get_parameter("bias_ih_l0"), layer.get_parameter("bias_hh_l0")
        b = b.to(bih)
        if family == "lstm":  # rows i, f, g, o
            bih[H : 2 * H] = b
            bhh[H : 2 * H] = 0
            bih[:H] = -b
            bhh[:H] = 0
        else:  # GRU rows r, z, n
            bih[H : 2 * H] = b
            bhh[H : 2 * H] = 0


@dataclass
class VanishingDemo:
    """What :func:`vanishing_gradients` returns.

    Attributes:
        curves: model label -> ``(T,)``: entry ``k`` is the error derivative's norm ``k`` steps
            before the loss relative to its norm at the loss's step,
            ``||dL/ds_{T-1-k}|| / ||dL/ds_{T-1}||`` (``s = h``; ``(h, c)`` for the LSTM),
            geometric mean over the sequences.
        lyapunov: model label -> the largest Lyapunov exponent (nats per step).
        length: ``T``.
        loss: model label -> the loss.
    """

    curves: dict[str, Tensor]
    lyapunov: dict[str, float]
    length: int
    loss: dict[str, float]

    def at(self, k: int) -> dict[str, float]:
        """The ratio at distance ``k`` for every model."""
        return {m: float(c[k]) for m, c in self.curves.items()}

    def per_step(self) -> dict[str, float]:
        """The average factor per step back, ``ratio(T-1) ** (1 / (T-1))``."""
        out = {}
        for m, c in self.curves.items():
            last = float(c[-1])
            out[m] = last ** (1.0 / (len(c) - 1)) if last > 0 else 0.0
        return out

    def table(self, distances: Sequence[int] | None = None) -> str:
        """A text table: the ratio at a few distances, the per-step factor and the Lyapunov
        exponent of each model."""
        T = self.length
        ks = [k for k in (distances or (1, 10, 50, 100, T - 1)) if 0 <= k < T]
        ks = sorted(set(ks))
        head = f"{'model':34s}" + "".join(f"{'k=' + str(k):>11s}" for k in ks)
        head += f"{'per step':>10s}{'lambda_1':>10s}"
        lines = [head, "-" * len(head)]
        per = self.per_step()
        for m, c in self.curves.items():
            row = f"{m:34s}" + "".join(f"{float(c[k]):11.2e}" for k in ks)
            row += f"{per[m]:10.4f}{self.lyapunov[m]:10.4f}"
            lines.append(row)
        return "\n".join(lines)


def vanishing_gradients(
    length: int = 200,
    *,
    hidden_size: int = 32,
    batch_size: int = 16,
    scales: Sequence[float] = (0.9, 1.5),
    gate_init: str = "both",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> VanishingDemo:
    r"""The error derivative against distance in time for a tanh RNN with its recurrent matrix
    scaled below and above 1, a GRU and an LSTM, on the same task and inputs.

    Task (the same for every model): a sequence of ``length`` steps of one Gaussian input each;
    at the last step a linear readout of the hidden state must output the first input
    (a long-time-lag recall). The loss is the squared error at the last step, measured at
    initialisation, in float64 so that tiny norms do not underflow.

    Models (``hidden_size`` units each, torch.nn's default initialisation unless said):

    - ``tanh RNN, W_hh = s*Q``: the recurrent matrix is a random orthogonal ``Q`` times each
      scale ``s`` in ``scales``, so all its singular values equal ``s``. Backpropagation
      multiplies the error by :math:`W^\top \mathrm{diag}(1 - h_t^2)` per step: it vanishes
      for ``s < 1`` and grows for ``s`` enough above 1 (lecture 7d).
    - ``GRU`` and ``LSTM``: with ``gate_init="default"`` torch.nn's initialisation (gates near
      0.5, so errors halve about every step), with ``"chrono"`` chrono initialisation
      (Tallec & Ollivier 2018: keep-gate biases :math:`\log U(1, T-1)`), which opens the
      keep gates as the task's length demands; ``"both"`` shows both. For the LSTM the norm is
      over the whole state ``(h, c)``: the memory cell ``c`` carries the error back
      (:math:`\partial c_t/\partial c_{t-1} = f_t`, the constant error carousel).

    Args:
        length: ``T``.
        hidden_size: ``H``.
        batch_size: number of sequences (the curves are geometric means over them).
        scales: the scales of the RNN's recurrent matrix.
        gate_init: ``"default"``, ``"chrono"`` or ``"both"``.
        seed: seed of inputs and weights.
        device: where to run.

    Returns:
        :class:`VanishingDemo`.

    Raises:
        ValueError: for a bad ``length``, ``gate_init`` or scale.
    """
    owner = "vanishing_gradients"
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"{owner}: length must be an int >= 2, got {length!r}")
    if gate_init not in GATE_INITS:
        raise ValueError(f"{owner}: gate_init must be one of {list(GATE_INITS)}, got {gate_init!r}")
    for s in scales:
        if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise ValueError(f"{owner}: scales must be positive numbers, got {list(scales)}")
    from carousel.layers import GRU, LSTM, RNN

    dtype = torch.float64
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(length, batch_size, 1, generator=gen, dtype=dtype).to(device)
    target = x[0]  # (B, 1): recall the first input at the last step
    H = hidden_size
    models: dict[str, tuple[nn.Module, tuple[str, ...]]] = {}

    def seeded(k: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1000 + k)

    with torch.random.fork_rng(devices=[]):
        for i, s in enumerate(scales):
            torch.manual_seed(seed + i)
            rnn = RNN(1, H, dtype=dtype)
            with torch.no_grad():
                rnn.get_parameter("weight_hh_l0").copy_(s * _orthogonal(H, seeded(1), dtype))
            models[f"tanh RNN, W_hh = {s:g} x orthogonal"] = (rnn, ("h",))
        inits = ("default", "chrono") if gate_init == "both" else (gate_init,)
        for init in inits:
            for family, cls in (("gru", GRU), ("lstm", LSTM)):
                torch.manual_seed(seed + 100)
                gated = cls(1, H, dtype=dtype)
                if init == "chrono":
                    _chrono(gated, family, length, seeded(2))
                gated_fields = ("h", "c") if family == "lstm" else ("h",)
                label = family.upper() + (" (chrono gate init)" if init == "chrono" else
                                          " (torch.nn init)")  # fmt: skip
                models[label] = (gated, gated_fields)
        torch.manual_seed(seed + 200)
        head = nn.Linear(H, 1, dtype=dtype)
    curves, lyap, losses = {}, {}, {}
    for label, (layer, fields) in models.items():
        layer.to(device)
        head.to(device)

        def loss_fn(out: tuple[Tensor, Any], head: nn.Linear = head) -> Tensor:
            return ((head(out[0][-1]) - target) ** 2).mean()

        flow = gradient_norms_through_time(layer, x, loss_fn)
        norms = torch.stack([flow.norms["l0"][f] for f in fields]).pow(2).sum(0).sqrt()  # (T, B)
        ratio = norms / norms[-1:].clamp_min(torch.finfo(dtype).tiny)
        # geometric mean over sequences; exact zeros (underflow) stay zero
        logr = ratio.clamp_min(torch.finfo(dtype).tiny).log().mean(1)
        curve = torch.where((ratio > 0).all(1), logr.exp(), torch.zeros_like(logr))
        curves[label] = curve.flip(0).cpu()  # index k = distance from the last step
        lyap[label] = lyapunov_exponents(layer, x).largest()
        losses[label] = flow.loss
    return VanishingDemo(curves=curves, lyapunov=lyap, length=length, loss=losses)


def plot_vanishing(demo: VanishingDemo, path: str | Path | None = None) -> Figure:
    """All curves of :func:`vanishing_gradients` on one log-scaled figure.

    Returns:
        The matplotlib figure.
    """
    from carousel.analysis.plots import plot_norm_vs_distance

    styles = {}
    colors = {"GRU": "tab:green", "LSTM": "tab:red"}
    rnn_colors = iter(["tab:blue", "tab:purple", "tab:cyan", "tab:olive", "tab:brown"])
    curves = {}
    for m, c in demo.curves.items():
        label = f"{m}  (λ₁ = {demo.lyapunov[m]:+.3f})"
        curves[label] = c.clone().masked_fill(c <= 0, math.nan)
        if m.startswith("tanh"):
            styles[label] = {"color": next(rnn_colors, None)}
        else:
            fam = m.split()[0]
            styles[label] = {"color": colors.get(fam), "ls": "-" if "chrono" in m else "--"}
    return plot_norm_vs_distance(
        curves,
        title=f"Error derivative against distance in time (T = {demo.length}, same task)",
        ylabel=r"$\|\partial L/\partial s_{T-k}\|\,/\,\|\partial L/\partial s_T\|$",
        styles=styles,
        path=path,
    )


@dataclass
class MemoryCellDemo:
    """What :func:`memory_cell` returns.

    Attributes:
        inputs: ``(T, 4)``: value, write, keep, read signal at each step.
        cell: ``(T,)`` the memory cell ``c_t``.
        output: ``(T,)`` the read-out ``h_t = o_t c_t``.
        gates: ``"write"``, ``"keep"``, ``"read"`` -> ``(T,)`` gate activations.
        stored: the value written at step 0.
        read_step, forget_step: where the read gate opens and where the keep gate closes.
        read_value: ``h`` at ``read_step``.
        error_flow: ``(T,)`` ``|dL/dc_t|`` for ``L = h_{read_step}``.
        gradient_to_value: ``dL/d value_0``.
        saliency: ``(T,)`` ``|dL/dx_t|`` over the four inputs of each step.
        after_forget: ``h`` at the last step, read after the keep gate closed.
    """

    inputs: Tensor
    cell: Tensor
    output: Tensor
    gates: dict[str, Tensor]
    stored: float
    read_step: int
    forget_step: int
    read_value: float
    error_flow: Tensor
    gradient_to_value: float
    saliency: Tensor
    after_forget: float

    def report(self) -> str:
        """The numbers as text."""
        keep = self.gates["keep"][1 : self.forget_step]
        write = self.gates["write"][1 : self.read_step]
        lines = [
            "memory cell of lecture 7e: a linear unit c_t = f_t * c_{t-1} + i_t * x_t (self-weight"
            " 1 scaled by the keep gate f), write gate i, read gate o, output h_t = o_t * c_t",
            f"stored {self.stored:.4f} at step 0 (write gate {float(self.gates['write'][0]):.3f})",
            f"keep gate on for steps 1-{self.forget_step - 1} (min {float(keep.min()):.10f}); "
            f"{self.read_step - 1} random distractor inputs kept out by the write gate "
            f"(max {float(write.max()):.1e})",
            f"read at step {self.read_step}: {self.read_value:.6f} "
            f"(error {abs(self.read_value - self.stored):.1e})",
            f"dL/d(stored value) for L = read-out at step {self.read_step}: "
            f"{self.gradient_to_value:.6f} (the error went back {self.read_step} steps unchanged;"
            f" |dL/dc_t| min {float(self.error_flow[: self.read_step + 1].min()):.6f} "
            f"max {float(self.error_flow[: self.read_step + 1].max()):.6f} over steps "
            f"0-{self.read_step})",
            f"saliency: the most salient input step is {int(self.saliency.argmax())} "
            f"(sum over the distractor steps {float(self.saliency[1 : self.read_step].sum()):.1e})",
            f"keep gate off at step {self.forget_step}: read at step {len(self.cell) - 1}: "
            f"{self.after_forget:.1e} (forgotten)",
        ]
        return "\n".join(lines)


def memory_cell(
    steps: int = 500,
    *,
    read_step: int | None = None,
    forget_step: int | None = None,
    value: float = 0.7,
    gate_gain: float = 20.0,
    seed: int = 0,
) -> MemoryCellDemo:
    r"""Lecture 7e's memory cell holding a value for hundreds of steps.

    The cell is a one-unit :class:`~carousel.cells.LSTMCell` with no input or output squashing
    (Greff et al.'s NIAF and NOAF switches), so that

    .. math::

        c_t = f_t\, c_{t-1} + i_t\, v_t, \qquad h_t = o_t\, c_t,

    a linear unit whose self-connection of weight 1 is gated by the keep gate :math:`f_t`
    (Hochreiter & Schmidhuber 1997; the forget gate of Gers et al. 2000), with write gate
    :math:`i_t` and read gate :math:`o_t`. The weights are set by hand: each gate is
    :math:`\sigma(a (2 s_t - 1))` of its own input signal :math:`s_t \in \{0, 1\}` with gain
    ``a = gate_gain``, and the candidate is the value input :math:`v_t`.

    The input writes ``value`` at step 0, keeps it while random distractor values arrive with
    the write gate closed, opens the read gate at ``read_step``, closes the keep gate at
    ``forget_step`` and reads again at the last step. The error of the read-out flows back
    through :math:`\partial c_t/\partial c_{t-1} = f_t \approx 1`: the constant error carousel.

    Args:
        steps: ``T``.
        read_step: default ``int(0.8 * T)``.
        forget_step: default halfway between ``read_step`` and ``T``.
        value: the stored value.
        gate_gain: ``a``.
        seed: seed of the distractors.

    Returns:
        :class:`MemoryCellDemo`.

    Raises:
        ValueError: if the steps are out of order.
    """
    from carousel.cells import LSTMCell
    from carousel.layers import Recurrent

    T = steps
    read = int(0.8 * T) if read_step is None else read_step
    forget = (read + T) // 2 if forget_step is None else forget_step
    if not (isinstance(T, int) and 0 < read < forget < T - 1):
        raise ValueError(
            f"memory_cell: need 0 < read_step < forget_step < steps - 1, got read_step={read}, "
            f"forget_step={forget}, steps={T}"
        )
    dtype = torch.float64
    a = float(gate_gain)
    cell = LSTMCell(4, 1, input_activation=False, output_activation=False, dtype=dtype)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_hh.zero_()
        # gate rows i, f, g, o; input columns value, write, keep, read
        cell.weight_ih[0, 1] = 2 * a  # write gate i
        cell.weight_ih[1, 2] = 2 * a  # keep gate f
        cell.weight_ih[2, 0] = 1.0  # candidate: the value itself (NIAF: no squashing)
        cell.weight_ih[3, 3] = 2 * a  # read gate o
        cell.bias_ih.copy_(torch.tensor([-a, -a, 0.0, -a], dtype=dtype))
    layer = Recurrent(cell)
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(T, 1, 4, dtype=dtype)
    x[:, 0, 0] = torch.randn(T, generator=gen, dtype=dtype)  # distractor values
    x[0, 0, 0] = value
    x[0, 0, 1] = 1.0  # write at step 0
    x[1:forget, 0, 2] = 1.0  # keep while holding
    x[read, 0, 3] = 1.0  # read
    x[T - 1, 0, 3] = 1.0  # read again after forgetting
    rec = record(layer, x, grad=False).layers["l0"]
    c = rec.states["c"][:, 0, 0]
    h = rec.states["h"][:, 0, 0]
    gates = {
        "write": rec.gates["i"][:, 0, 0],
        "keep": rec.gates["f"][:, 0, 0],
        "read": rec.gates["o"][:, 0, 0],
    }

    def loss_fn(out: tuple[Tensor, Any]) -> Tensor:
        return out[0][read].sum()

    flow = gradient_norms_through_time(layer, x, loss_fn)
    xs = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(layer(xs)[0][read].sum(), xs)
    sal = saliency(layer, x, step=read, target=0)
    return MemoryCellDemo(
        inputs=x[:, 0],
        cell=c,
        output=h,
        gates=gates,
        stored=value,
        read_step=read,
        forget_step=forget,
        read_value=float(h[read]),
        error_flow=flow.norms["l0"]["c"][:, 0],
        gradient_to_value=float(gx[0, 0, 0]),
        saliency=sal.scores[:, 0],
        after_forget=float(h[T - 1]),
    )


def plot_memory_cell(demo: MemoryCellDemo, path: str | Path | None = None) -> Figure:
    """Three panels: the gates and the value input; the cell and its read-out; the error
    flowing back from the read-out.

    Returns:
        The matplotlib figure.
    """
    from carousel.analysis.plots import figure, save

    fig = figure(8, 7)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.07, top=0.95, hspace=0.3)
    a1, a2, a3 = fig.subplots(3, 1, sharex=True)
    t = range(len(demo.cell))
    v = demo.inputs[:, 0].numpy()
    a1.plot(t, v, ".", ms=2, color="0.6", label="value input (distractors)")
    a1.plot(t, demo.gates["write"].numpy(), color="tab:green", label="write gate i")
    a1.plot(t, demo.gates["keep"].numpy(), color="tab:blue", label="keep gate f")
    a1.plot(t, demo.gates["read"].numpy(), color="tab:red", label="read gate o")
    a1.set_title("Lecture 7e: a memory cell holding a value while its keep gate is on")
    a1.legend(fontsize=7, loc="lower left", ncol=2)
    a1.set_ylim(-3, 3)
    a2.plot(t, demo.cell.numpy(), color="tab:purple", label="memory cell c_t")
    a2.plot(t, demo.output.numpy(), color="tab:orange", lw=2, label="read-out h_t = o_t c_t")
    a2.axhline(demo.stored, color="0.7", ls=":", lw=1)
    a2.annotate(f"read {demo.read_value:.4f}", (demo.read_step, demo.read_value),
                xytext=(-110, -25), textcoords="offset points", fontsize=8,
                arrowprops={"arrowstyle": "->"})  # fmt: skip
    a2.legend(fontsize=7, loc="center left")
    a2.set_ylabel("value")
    a3.plot(t, demo.error_flow.numpy(), color="tab:red")
    a3.set_ylabel(r"$|\partial L/\partial c_t|$")
    a3.set_xlabel("time step t")
    a3.set_title(f"error of the read-out at step {demo.read_step}, flowing back unchanged",
                 fontsize=10)  # fmt: skip
    save(fig, path)
    return fig
