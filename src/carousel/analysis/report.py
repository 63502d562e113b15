"""One call that analyses a model on some inputs and writes PNG files and a self-contained HTML
report (images embedded as base64), as ``carousel analyze`` does."""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from carousel.analysis.dynamics import jacobian_spectrum, lyapunov_exponents
from carousel.analysis.gradients import LOSS_AT, flow_from_recording
from carousel.analysis.record import find_layers, record
from carousel.analysis.saliency import _Prepared, evaluation_mode, saliency_from_output

__all__ = ["WHAT", "AnalysisReport", "analyze", "render_html"]

logger = logging.getLogger(__name__)

#: The analyses :func:`analyze` can run, in report order.
WHAT = ("gradients", "jacobians", "traces", "saliency")


@dataclass
class AnalysisReport:
    """What :func:`analyze` produced.

    Attributes:
        html: the HTML report.
        images: name -> PNG path, in report order.
        numbers: key numbers per analysis (plain floats and lists, JSON-ready).
        seconds: wall-clock seconds per analysis (plots included).
        results: the raw results per analysis (``GradientFlow``, ...), for further use.
    """

    html: Path
    images: dict[str, Path]
    numbers: dict[str, Any]
    seconds: dict[str, float]
    results: dict[str, Any] = field(repr=False, default_factory=dict)


def _check_what(what: Sequence[str] | str) -> list[str]:
    if isinstance(what, str):
        what = [w.strip() for w in what.split(",") if w.strip()]
    bad = [w for w in what if w not in WHAT]
    if bad or not what:
        raise ValueError(f"analyze: what must be a non-empty subset of {list(WHAT)}, got {what}")
    return [w for w in WHAT if w in what]


def _f(x: float) -> str:
    return f"{x:.4g}"


def render_html(title: str, sections: list[tuple[str, str, list[Path]]], meta: str = "") -> str:
    """A self-contained HTML page: each section a heading, an HTML body and PNGs embedded as
    base64 data URIs (the page needs no other file)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}th{background:#f4f4f4}code{background:#f4f4f4}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{meta}</p>" if meta else "",
    ]
    for heading, body, images in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(body)
        for p in images:
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            parts.append(
                f'<img alt="{html.escape(Path(p).name)}" src="data:image/png;base64,{data}">'
            )
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{th}</tr>{trs}</table>"


def analyze(
    model: nn.Module,
    inputs: Any,
    out_dir: str | Path,
    *,
    what: Sequence[str] | str = WHAT,
    loss_fn: Callable[[Any], Tensor] | None = None,
    loss_at: str | None = None,
    batch_index: int = 0,
    lyapunov_k: int = 1,
    spectrum_steps: int = 3,
    forward_kwargs: dict | None = None,
    lengths: Tensor | None = None,
    title: str = "carousel analysis",
    description: str = "",
    hdf5: str | Path | None = None,
) -> AnalysisReport:
    """Analyse ``model`` on ``inputs``: write one PNG per picture and ``report.html``.

    The model is analysed in evaluation mode (restored afterwards), with one forward pass on the
    reference path shared by all analyses (plus one backward pass each for gradients and
    saliency, and the re-runs of single steps the Jacobians need).

    - ``gradients``: :func:`~carousel.analysis.gradient_norms_through_time` (``loss_fn``, or
      the default loss at ``loss_at``).
    - ``jacobians``: :func:`~carousel.analysis.jacobian_spectrum` for sequence ``batch_index``
      and :func:`~carousel.analysis.lyapunov_exponents` (``lyapunov_k`` exponents, every
      sequence).
    - ``traces``: heatmaps of every track's states and gates for sequence ``batch_index``.
    - ``saliency``: :func:`~carousel.analysis.saliency` of the most active output.

    Args:
        model: a carousel layer or a module holding carousel layers.
        inputs: its input, a tensor or a tuple of positional arguments.
        out_dir: folder for ``report.html`` and the PNGs (created).
        what: the analyses, a subset of :data:`WHAT` (a list or a comma-separated string).
        loss_fn, loss_at: the loss of ``gradients``.
        batch_index: the sequence shown by traces, saliency and the Jacobian spectra.
        lyapunov_k: number of Lyapunov exponents.
        spectrum_steps: steps with full Jacobian spectra.
        forward_kwargs: keyword arguments for the model's forward.
        lengths: ``(B,)`` sequence lengths, if the model applies them itself (a
            ``forward_kwargs["lengths"]`` is used otherwise): saliency and the default loss then
            read each sequence's last step.
        title, description: shown at the top of the report.
        hdf5: also write the per-step states and gates to this HDF5 file
            (:func:`~carousel.analysis.export.export_hdf5`; needs h5py).

    Returns:
        :class:`AnalysisReport`.

    Raises:
        ValueError: for an unknown analysis name.
    """
    from carousel.analysis import plots

    chosen = _check_what(what)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    numbers: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}
    sections: list[tuple[str, str, list[Path]]] = []
    if loss_fn is not None and loss_at is not None:
        raise ValueError("analyze: give loss_at only with the default loss (loss_fn=None)")
    at = "last" if loss_at is None else loss_at
    if at not in LOSS_AT:
        raise ValueError(f"analyze: loss_at must be one of {list(LOSS_AT)}, got {at!r}")
    batch_first = find_layers(model)[0][1].batch_first
    if lengths is None:
        lengths = (forward_kwargs or {}).get("lengths")
    need_grad = "gradients" in chosen or "saliency" in chosen
    with evaluation_mode(model):
        t0 = time.perf_counter()
        prepared = _Prepared(model, inputs)
        try:
            rec = record(model, prepared.inputs, forward_kwargs=forward_kwargs, grad=need_grad)
        finally:
            prepared.close()
        seconds["record"] = time.perf_counter() - t0
        if "gradients" in chosen:
            t0 = time.perf_counter()
            flow = flow_from_recording(
                rec, loss_fn, loss_at=at, batch_first=batch_first,
                retain_graph="saliency" in chosen,
            )  # fmt: skip
            p = out / "gradients.png"
            plots.plot_gradient_flow(flow, path=p)
            images["gradients"] = p
            numbers["gradients"] = flow.summary(prefix="")
            rows = []
            for track in flow.tracks:
                for f in flow.norms[track]:
                    c = flow.curve(track, f)
                    rows.append([track, f, _f(float(c[0])), _f(float(c[-1]))])
            body = (
                f"<p>Norm of the loss's gradient with respect to each step's state (mean over "
                f"sequences); loss {_f(flow.loss)}.</p>"
                + _table(["track", "field", "first step", "last step"], rows)
            )
            sections.append(("Gradient flow through time", body, [p]))
            results["gradients"] = flow
            seconds["gradients"] = time.perf_counter() - t0
        if "jacobians" in chosen:
            t0 = time.perf_counter()
            spec = jacobian_spectrum(recording=rec, batch_index=batch_index,
                                     spectrum_steps=spectrum_steps)  # fmt: skip
            lyap = lyapunov_exponents(recording=rec, k=lyapunov_k)
            p = out / "jacobians.png"
            plots.plot_jacobian_spectrum(spec, lyap, path=p)
            images["jacobians"] = p
            rows = []
            nums: dict[str, object] = {}  # per track a dict; then two summary entries
            for track, s in spec.sigma_max.items():
                valid = s[:, 0][~torch.isnan(s[:, 0])]
                lam = lyap.exponents[track].mean(0)
                nums[track] = {
                    "sigma_max_mean": float(valid.mean()),
                    "sigma_max_max": float(valid.max()),
                    "lyapunov": [float(v) for v in lam],
                }
                rows.append([track, _f(float(valid.mean())), _f(float(valid.max())),
                             ", ".join(_f(float(v)) for v in lam)])  # fmt: skip
            nums["largest_lyapunov"] = lyap.largest()
            nums["regime"] = lyap.regime()
            numbers["jacobians"] = nums
            body = (
                "<p>Largest singular value of each step's Jacobian and the Lyapunov exponents "
                f"(nats per step). Largest exponent {_f(lyap.largest())}: "
                f"<b>{lyap.regime()}</b>.</p>"
                + _table(["track", "mean σ₁", "max σ₁", "Lyapunov exponents"], rows)
            )
            sections.append(("Jacobians and Lyapunov exponents", body, [p]))
            results["jacobians"] = (spec, lyap)
            seconds["jacobians"] = time.perf_counter() - t0
        if "traces" in chosen:
            t0 = time.perf_counter()
            paths = []
            for track, lay in rec.layers.items():
                p = out / f"traces_{track}.png"
                plots.plot_traces(lay, batch_index=batch_index, path=p)
                images[f"traces_{track}"] = p
                paths.append(p)
            numbers["traces"] = {
                t: {k: list(v.shape) for k, v in {**lay.states, **lay.gates}.items()}
                for t, lay in rec.layers.items()
            }
            body = (
                f"<p>States and gate activations of sequence {batch_index}, unit against time "
                "(gates in [0, 1]).</p>"
            )
            sections.append(("Traces", body, paths))
            results["traces"] = rec.layers
            seconds["traces"] = time.perf_counter() - t0
        if "saliency" in chosen:
            t0 = time.perf_counter()
            sal = saliency_from_output(
                rec.output, prepared.wrt(), batch_first=batch_first,
                unbatched=prepared.unbatched,
                lengths=lengths,
            )  # fmt: skip
            p = out / "saliency.png"
            plots.plot_saliency(sal, batch_index=batch_index, path=p)
            images["saliency"] = p
            s = sal.scores[:, batch_index]
            numbers["saliency"] = {
                "target": int(sal.target[batch_index]),
                "step": sal.step,
                "most_salient_step": int(s.argmax()),
                "scores": [float(v) for v in s],
            }
            body = (
                f"<p>Gradient of output {int(sal.target[batch_index])} (the most active) with "
                f"respect to each input step, sequence {batch_index}; most salient step: "
                f"{int(s.argmax())}.</p>"
            )
            sections.append(("Saliency", body, [p]))
            results["saliency"] = sal
            seconds["saliency"] = time.perf_counter() - t0
        if hdf5 is not None:
            from carousel.analysis.export import export_hdf5

            export_hdf5(rec, hdf5)
            numbers["hdf5"] = str(hdf5)
    meta = html.escape(description)
    page = render_html(title, sections, meta)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    logger.info("analysis report written to %s", path)
    return AnalysisReport(html=path, images=images, numbers=numbers, seconds=seconds,
                          results=results)  # fmt: skip
