"""Pictures of the measures in :mod:`carousel.analysis`.

matplotlib is imported only when a function here is called (``pip install
'carousel-rnn[plot]'``). Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas,
without pyplot, so nothing here touches the user's backend or global figure state; each function
returns its figure and, given ``path``, also saves it as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from carousel.analysis.dynamics import JacobianSpectrum, LyapunovExponents
from carousel.analysis.gradients import GradientFlow
from carousel.analysis.record import LayerRecord
from carousel.analysis.saliency import Saliency

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "figure",
    "plot_gradient_flow",
    "plot_jacobian_spectrum",
    "plot_norm_vs_distance",
    "plot_saliency",
    "plot_traces",
    "save",
]


def figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A new ``Figure`` on the Agg canvas (no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install 'carousel-rnn[plot]' (or pip install matplotlib)"
        ) from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path | None, dpi: int = 100) -> None:
    """Save ``fig`` as PNG at ``path`` (parent folders created); nothing if ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def plot_norm_vs_distance(
    curves: Mapping[str, Tensor],
    *,
    title: str = "gradient norm against distance in time",
    ylabel: str = r"$\|\partial L/\partial h_{T-k}\|$ / $\|\partial L/\partial h_T\|$",
    styles: Mapping[str, dict] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Several curves ``value[k]`` against the distance ``k`` on one log-scaled axis.

    Args:
        curves: label -> ``(K,)`` values at distances ``0..K-1``.
        title, ylabel: labels.
        styles: label -> extra ``Axes.plot`` keyword arguments (e.g. ``{"ls": "--"}``).
        path: save the PNG here.

    Returns:
        The figure.
    """
    fig = figure(7, 4.2)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for label, c in curves.items():
        v = _np(c)
        ax.semilogy(range(len(v)), v, label=label, **(styles or {}).get(label, {}))
    ax.axhline(1.0, color="0.6", lw=0.8, zorder=0)
    ax.set_xlabel("distance in time k (steps back from the loss)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
    return fig


def plot_gradient_flow(
    flow: GradientFlow,
    *,
    fields: Sequence[str] = ("h", "c"),
    title: str = "gradient flow through time",
    path: str | Path | None = None,
) -> Figure:
    """Mean ``||dL/ds_t||`` against ``t`` for every track (and the fields it has), log scale.

    Returns:
        The figure.
    """
    fig = figure(7, 4)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.91)
    ax = fig.add_subplot()
    for track in flow.tracks:
        for f in fields:
            if f not in flow.norms[track]:
                continue
            c = _np(flow.curve(track, f))
            c[c <= 0] = math.nan  # log scale
            ax.semilogy(c, label=f"{track} {f}", ls="-" if f == "h" else "--")
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"mean $\|\partial L/\partial s_t\|$")
    ax.set_title(f"{title} (loss {flow.loss:.4g})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
    return fig


def plot_jacobian_spectrum(
    spectrum: JacobianSpectrum,
    lyapunov: LyapunovExponents | None = None,
    *,
    path: str | Path | None = None,
) -> Figure:
    r"""Top: :math:`\sigma_1(\partial s_t/\partial s_{t-1})` along the sequence per track
    (with the Lyapunov exponent in the legend if given). Bottom: the full spectra at the chosen
    steps.

    Returns:
        The figure.
    """
    fig = figure(7, 6.5)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.08, top=0.95, hspace=0.35)
    top, bottom = fig.subplots(2, 1)
    for track, s in spectrum.sigma_max.items():
        label = track
        if lyapunov is not None and track in lyapunov.exponents:
            lam = float(lyapunov.exponents[track][:, 0].mean())
            label += rf" ($\lambda_1$={lam:.3g}/step)"
        top.semilogy(_np(s[:, 0]), label=label, lw=1)
    top.axhline(1.0, color="0.5", lw=0.8, ls=":")
    top.set_xlabel("time step t")
    top.set_ylabel(r"$\sigma_1(\partial s_t/\partial s_{t-1})$")
    top.set_title("largest singular value of the one-step Jacobian")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    for track, sp in spectrum.spectra.items():
        for row, t in zip(sp, spectrum.steps[track].tolist()):
            v = _np(row)
            v[v <= 0] = math.nan
            bottom.semilogy(range(1, len(v) + 1), v, lw=1, label=f"{track}, t={t}")
    bottom.axhline(1.0, color="0.5", lw=0.8, ls=":")
    bottom.set_xlabel("index i")
    bottom.set_ylabel(r"$\sigma_i$")
    bottom.set_title("singular values of the Jacobian at a few steps")
    bottom.grid(True, alpha=0.3)
    if any(len(v) for v in spectrum.spectra.values()):
        bottom.legend(fontsize=7, ncol=2)
    save(fig, path)
    return fig


def plot_traces(
    track: LayerRecord,
    *,
    batch_index: int = 0,
    max_units: int | None = 256,
    path: str | Path | None = None,
) -> Figure:
    """Heatmaps (unit against time) of one track's states and gates for one sequence.

    Args:
        track: a :class:`~carousel.analysis.record.LayerRecord`.
        batch_index: which sequence.
        max_units: show at most this many units per panel (the first ones).
        path: save the PNG here.

    Returns:
        The figure.
    """
    panels = [(f"state {k}", v) for k, v in track.states.items()]
    panels += [(f"gate {k}", v) for k, v in track.gates.items()]
    height = 1.0 + 1.6 * len(panels)
    fig = figure(8, height)
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.55 / height, top=1 - 0.4 / height,
                        hspace=0.25)  # fmt: skip
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (label, z) in zip(axes, panels):
        m = _np(z[:, batch_index].flatten(1)).T  # (units, T)
        if max_units is not None:
            m = m[:max_units]
        gate = label.startswith("gate") and m.size and m.min() >= 0 and m.max() <= 1
        if gate:
            kw = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}
        else:
            lim = float(abs(m).max()) if m.size else 1.0
            kw = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
        im = ax.imshow(m, aspect="auto", interpolation="nearest", origin="lower", **kw)
        ax.set_ylabel(f"{label}\nunit")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1].set_xlabel("time step t")
    axes[0].set_title(f"traces of {track.name} (sequence {batch_index})")
    save(fig, path)
    return fig


def plot_saliency(
    result: Saliency,
    *,
    batch_index: int = 0,
    labels: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Saliency of every input step for one sequence: a bar per step, and a heatmap of the
    gradient per input feature.

    Args:
        result: a :class:`~carousel.analysis.saliency.Saliency`.
        batch_index: which sequence.
        labels: a label per input step (e.g. the characters), shown on the time axis if short.
        path: save the PNG here.

    Returns:
        The figure.
    """
    s = _np(result.scores[:, batch_index])
    fig = figure(8, 4.5)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.92, hspace=0.12)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(range(len(s)), s, width=1.0, color="tab:red")
    at = "" if result.step is None else f" at output step {result.step}"
    top.set_title(
        f"saliency of output {int(result.target[batch_index])}{at} (sequence {batch_index})"
    )
    top.set_ylabel(r"$\|\partial y_c/\partial x_t\|$")
    g = result.gradients
    if g.dim() == 3:
        T = result.scores.shape[0]
        gt = g[:, batch_index] if g.shape[0] == T else g[batch_index]  # (T, I)
    else:
        gt = g
    m = _np(gt).T
    lim = float(abs(m).max()) if m.size else 1.0
    lim = lim if lim > 0 else 1.0
    bottom.imshow(m, aspect="auto", interpolation="nearest", origin="lower", cmap="RdBu_r",
                  vmin=-lim, vmax=lim)  # fmt: skip
    bottom.set_ylabel("input feature")
    bottom.set_xlabel("input step t")
    if labels is not None and len(labels) <= 80:
        bottom.set_xticks(range(len(labels)))
        bottom.set_xticklabels(list(labels), fontsize=7)
    save(fig, path)
    return fig
