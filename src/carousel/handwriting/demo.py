"""The demonstration of Hinton's lecture 7e (after Graves' handwriting-recognition video):
for one piece of writing, (1) when each character is recognised, (2) a subset of the
memory-cell states, (3) the writing, and (4) the gradient of the currently most active
character with respect to the pen's x and y coordinates."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from carousel.ctc import CharScorer
from carousel.handwriting.pen import pen_features
from carousel.handwriting.recognizer import best_reading
from carousel.models.ctc_recognizer import CTCRecognizer
from carousel.tasks.handwriting import ALPHABET

__all__ = ["analyse_writing", "lecture_7e_figure"]


def _features_from_positions(pos: torch.Tensor, pen_up: torch.Tensor) -> torch.Tensor:
    """The features of :func:`pen_features` as a differentiable function of positions."""
    d = torch.diff(pos, dim=0, prepend=pos[:1])
    return torch.stack([d[:, 0], d[:, 1], pos[:, 1], pen_up], dim=1)


def analyse_writing(
    model: CTCRecognizer,
    strokes: list[np.ndarray],
    *,
    num_cells: int = 16,
    spacing: float = 0.2,
    beam_width: int = 0,
    scorer: CharScorer | None = None,
    lm_weight: float = 0.5,
) -> dict[str, Any]:
    """Everything the four rows show, as plain lists (JSON-ready).

    Args:
        model: a trained recogniser.
        strokes: pen-down strokes, arrays ``(n, 2|3)`` with y up.
        num_cells: how many memory cells to show (the most active ones of the first layer,
            both directions).
        spacing: the resampling distance (as in training).
        beam_width: 0 reads greedily; else the prefix beam search's width, with the optional
            character LM ``scorer`` fused at ``lm_weight`` (see
            :func:`carousel.ctc.prefix_beam_search`). The characters shown, their frames and
            gradients are those of the reading chosen.

    Returns:
        A dict: ``text``; ``chars`` (per recognised character: ``char``, ``frame``, ``point``
        where it was emitted, ``prob``); ``frames`` ``T'``; ``stride``; ``char_probs``
        (per frame: the most probable non-blank character and its probability, and the
        blank's probability); ``cells`` ``(T', num_cells)``; ``points`` ``(N, 3)`` normalised
        ``x, y, pen_up``; ``gradients`` (per recognised character: ``dx``, ``dy`` of length
        ``N``, the gradient of its log probability at its frame w.r.t. each point's x and y).
    """
    feats = pen_features(strokes, spacing=spacing)
    pos = torch.from_numpy(np.cumsum(feats[:, :2], axis=0)).double()
    pos[:, 1] = torch.from_numpy(feats[:, 2]).double()  # y is stored directly
    pos[:, 0] -= pos[0, 0]
    up = torch.from_numpy(feats[:, 3]).double()
    param = next(model.parameters())
    was = model.training
    model.eval()
    pos_var = pos.to(param).detach().requires_grad_(True)
    x = _features_from_positions(pos_var, up.to(param))
    tr = model.trace(x)
    lp = tr.log_probs  # (T', C)
    hyp = best_reading(lp.detach(), beam_width=beam_width, scorer=scorer, lm_weight=lm_weight)
    probs = lp.detach().exp()
    chars, grads = [], []
    for k, (tok, t) in enumerate(zip(hyp.tokens, hyp.timesteps)):
        (g,) = torch.autograd.grad(lp[t, tok], pos_var, retain_graph=k < len(hyp.tokens) - 1)
        grads.append({"dx": g[:, 0].tolist(), "dy": g[:, 1].tolist()})
        chars.append({"char": ALPHABET.decode([tok]), "frame": int(t),
                      "point": int(min(t * model.stride, len(feats) - 1)),
                      "prob": float(probs[t, tok])})  # fmt: skip
    cells = tr.cells.detach()  # (T', L*D, H)
    D = 2 if model.config.bidirectional else 1
    first = cells[:, :D].reshape(cells.shape[0], -1)  # first layer, both directions
    pick = first.std(0).argsort(descending=True)[:num_cells].sort().values
    nb = probs.clone()
    nb[:, 0] = 0
    best_p, best_c = nb.max(dim=1)
    model.train(was)
    return {
        "text": ALPHABET.decode(hyp.tokens),
        "chars": chars,
        "frames": int(lp.shape[0]),
        "stride": int(model.stride),
        "char_probs": [
            {"char": ALPHABET.decode([int(c)]), "prob": float(p), "blank": float(b)}
            for c, p, b in zip(best_c, best_p, probs[:, 0])
        ],
        "cells": torch.tanh(first[:, pick]).tolist(),
        "points": torch.stack([pos[:, 0], pos[:, 1], up], 1).tolist(),
        "gradients": grads,
    }


def lecture_7e_figure(
    model: CTCRecognizer,
    strokes: list[np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "",
    spacing: float = 0.2,
) -> dict[str, Any]:
    """Draw the four rows of lecture 7e to ``path`` (PNG); returns :func:`analyse_writing`'s
    result. Needs matplotlib (``pip install 'carousel-rnn[plot]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = analyse_writing(model, strokes, spacing=spacing)
    pts = np.asarray(a["points"])
    T, stride = a["frames"], a["stride"]
    t_of_point = np.arange(len(pts)) / stride  # frame units
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1.4, 1.6, 1.2]})  # fmt: skip
    ax = axes[0]
    probs = np.array([c["prob"] for c in a["char_probs"]])
    ax.plot(np.arange(T), probs, color="0.75", lw=1)
    for c in a["chars"]:
        ax.text(c["frame"], 0.55, c["char"], ha="center", va="center", fontsize=15)
        ax.axvline(c["frame"], color="tab:red", lw=0.6, alpha=0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("characters\n(when output)")
    ax = axes[1]
    cells = np.asarray(a["cells"])
    ax.imshow(cells.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
              extent=(-0.5, T - 0.5, cells.shape[1], 0), interpolation="nearest")  # fmt: skip
    ax.set_ylabel(f"{cells.shape[1]} memory\ncells (tanh c)")
    ax = axes[2]
    down = pts[:, 2] < 0.5
    # the writing, laid out along time so it lines up with the rows above
    xs = t_of_point
    seg_start = 0
    for i in range(1, len(pts) + 1):
        if i == len(pts) or down[i] != down[seg_start]:
            if down[seg_start]:
                ax.plot(pts[seg_start:i, 0] / pts[:, 0].max() * (T - 1), pts[seg_start:i, 1],
                        "k-", lw=1.4)  # fmt: skip
            seg_start = i
    ax.set_ylabel("the writing")
    ax.set_aspect("auto")
    ax = axes[3]
    if a["gradients"]:
        best = int(np.argmax([c["prob"] for c in a["chars"]]))
        g = a["gradients"][best]
        ax.plot(xs, g["dx"], label=f"d log p('{a['chars'][best]['char']}') / dx", lw=1)
        ax.plot(xs, g["dy"], label="... / dy", lw=1)
        ax.axvline(a["chars"][best]["frame"], color="tab:red", lw=0.6)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("gradient of the\nmost active char")
    ax.set_xlabel("time (output frames)")
    fig.suptitle(title or f"recognised: {a['text']!r}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return a
