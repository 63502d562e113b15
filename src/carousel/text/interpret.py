"""What the memory cells of a language model learned: per-character activations, simple text
features to compare them with, a ranking of cells by how well they track a feature, and
self-contained HTML that colours a text by a cell's activation.

Karpathy, Johnson & Fei-Fei 2016 ("Visualizing and understanding recurrent networks") found
LSTM cells that track quotes, brackets, line length and indentation in char-rnn models; the LSTM
primer's "practical intuition" section shows the same. This module makes finding such cells a
command: rank every cell by the absolute Pearson correlation between its activation after each
character and a feature of the text at that character (for a 0/1 feature this is the
point-biserial correlation), then look at the best ones.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from carousel._checks import check_choice, check_positive_int

__all__ = [
    "FEATURES",
    "CellActivations",
    "CellReport",
    "CellScore",
    "cell_activations",
    "cell_report",
    "rank_cells",
    "render_html",
    "text_features",
]


def _string_states(text: str) -> list[str]:
    """The string each character leaves the reader in: a double or single quote, a triple of
    either (a docstring), or ``""`` outside. An opening quote is inside, a closing quote (the
    last of a closing triple) outside. A one-line string ends at its closing quote or, unclosed,
    at the end of the line (so a stray quote does not leak); a triple-quoted one at its closing
    triple; a backslash escapes the next character; an apostrophe after a letter or digit
    (``don't``) opens nothing."""
    out: list[str] = []
    state, i, n = "", 0, len(text)
    prev = " "
    while i < n:
        ch = text[i]
        if not state:
            if ch in "\"'" and not (ch == "'" and (prev.isalnum() or prev == "_")):
                if text[i : i + 3] == ch * 3:
                    out.extend([ch * 3] * 3)
                    state, prev, i = ch * 3, ch, i + 3
                    continue
                state = ch
            out.append(state)
        elif len(state) == 3:
            if text[i : i + 3] == state:
                out.extend([state, state, ""])
                state, prev, i = "", ch, i + 3
                continue
            out.append(state)
            if ch == "\\" and i + 1 < n:
                out.append(state)
                i += 1
        else:
            if ch == "\\" and i + 1 < n and text[i + 1] != "\n":
                out.extend([state, state])
                i += 1
            elif ch == state or ch == "\n":
                state = ""
                out.append("")
            else:
                out.append(state)
        prev = text[i]
        i += 1
    return out


def _inside_quotes(text: str) -> list[float]:
    return [float(st[:1] == '"') for st in _string_states(text)]


def _inside_single_quotes(text: str) -> list[float]:
    return [float(st[:1] == "'") for st in _string_states(text)]


def _inside_strings(text: str) -> list[float]:
    return [float(bool(st)) for st in _string_states(text)]


_OPEN, _CLOSE = "([{", ")]}"


def _bracket_depth(text: str) -> list[float]:
    out, depth = [], 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        out.append(float(depth))
    return out


def _inside_brackets(text: str) -> list[float]:
    return [float(d > 0) for d in _bracket_depth(text)]


def _line_position(text: str) -> list[float]:
    out, col = [], 0
    for ch in text:
        col = 0 if ch == "\n" else col + 1
        out.append(float(col))
    return out


def _word_start(text: str) -> list[float]:
    out, prev = [], " "
    for ch in text:
        out.append(float(ch.isalnum() and not (prev.isalnum() or prev == "_")))
        prev = ch
    return out


def _indent(text: str) -> list[float]:
    out, indent, leading = [], 0, True
    for ch in text:
        if ch == "\n":
            indent, leading = 0, True
        elif leading and ch == " ":
            indent += 1
        elif leading:
            leading = False
        out.append(float(indent))
    return out


#: Features of a text, one value per character (the value after reading it):
#: ``quotes`` inside a double-quoted string (``"..."`` or a ``"""`` docstring), ``single-quotes``
#: inside a single-quoted one, ``strings`` inside either (see :func:`_string_states`: one-line
#: strings end at the end of the line, apostrophes open nothing),
#: ``brackets`` inside any ``()[]{}``, ``bracket-depth`` their nesting depth,
#: ``line-position`` characters since the last newline, ``word-start`` the first character of a
#: word, ``indent`` the leading spaces of the current line.
FEATURES: dict[str, Callable[[str], list[float]]] = {
    "quotes": _inside_quotes,
    "single-quotes": _inside_single_quotes,
    "strings": _inside_strings,
    "brackets": _inside_brackets,
    "bracket-depth": _bracket_depth,
    "line-position": _line_position,
    "word-start": _word_start,
    "indent": _indent,
}


def text_features(text: str, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Feature values of ``text``, one per character.

    Args:
        text: the text.
        names: features from :data:`FEATURES` (``None``: all).

    Returns:
        ``{name: (N,) float64 tensor}`` with ``N = len(text)``.

    Raises:
        ValueError: for an unknown feature name.

    Example:
        >>> text_features('a("b")', ["quotes", "brackets"])["quotes"].tolist()
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    """
    names = list(FEATURES) if names is None else list(names)
    for n in names:
        check_choice("text_features", "feature", n, tuple(FEATURES))
    return {n: torch.tensor(FEATURES[n](text), dtype=torch.float64) for n in names}


class CellActivations(NamedTuple):
    """Activations of every cell after each token of a text.

    Attributes:
        values: ``(N, L, H)`` the chosen state (``c`` or ``h``) after each token.
        tokens: the ``N`` token strings (their concatenation is the text, except tokens dropped
            by a ``"skip"`` vocabulary).
        ends: ``(N,)`` index in the text of each token's last character.
    """

    values: Tensor
    tokens: list[str]
    ends: Tensor


@torch.no_grad()
def cell_activations(
    model: Any, vocab: Any, text: str, *, state: str = "c", chunk_len: int = 2000
) -> CellActivations:
    """Run ``model`` over ``text`` and record its state after every token.

    Args:
        model: a :class:`~carousel.models.charlm.CharLM` (any object whose ``forward(tokens,
            state, return_states=True)`` returns ``states`` with fields ``(L, T, B, H)``).
        vocab: its vocabulary; tokens it does not know are fed as the unknown token, or skipped
            (not fed, not scored) when it has none.
        text: the text to read.
        state: ``"c"`` (the LSTM memory cells) or ``"h"`` (the hidden outputs; the only state
            of a GRU or RNN).
        chunk_len: tokens per call of the network (the state is carried between calls).

    Returns:
        :class:`CellActivations`.

    Raises:
        ValueError: if ``text`` has no known token, or ``state="c"`` for a model without memory
            cells.
    """
    check_choice("cell_activations", "state", state, ("c", "h"))
    check_positive_int("cell_activations", "chunk_len", chunk_len)
    from carousel.text.vocab import tokenize

    toks, ids, ends, pos = [], [], [], 0
    for t in tokenize(text, vocab.unit):
        pos += len(t)
        i = vocab.lookup(t)
        if i is None:
            continue
        toks.append(t)
        ids.append(i)
        ends.append(pos - 1)
    if not ids:
        raise ValueError("cell_activations: the text has no token the vocabulary knows")
    device = next(model.parameters()).device
    ids_t = torch.tensor(ids, device=device)
    was_training = model.training
    model.eval()
    chunks, carry = [], None
    try:
        for start in range(0, len(ids), chunk_len):
            out = model(ids_t[start : start + chunk_len, None], carry, return_states=True)
            carry = out.state
            st = out.states
            if isinstance(st, Tensor):
                if state == "c":
                    raise ValueError(
                        "cell_activations: this model has no memory cells (a GRU or RNN); "
                        "use state='h'"
                    )
                values = st
            else:
                values = getattr(st, state)
            chunks.append(values[:, :, 0].permute(1, 0, 2).cpu())  # (T, L, H)
    finally:
        model.train(was_training)
    return CellActivations(torch.cat(chunks), toks, torch.tensor(ends))


class CellScore(NamedTuple):
    """How well one cell tracks a feature.

    Attributes:
        layer: the cell's layer (0 is the lowest).
        unit: its index within the layer.
        correlation: Pearson correlation of its activation with the feature, in ``[-1, 1]``.
    """

    layer: int
    unit: int
    correlation: float


def rank_cells(values: Tensor, feature: Tensor, top: int | None = None) -> list[CellScore]:
    """Rank cells by the absolute correlation of their activations with a feature.

    Args:
        values: ``(N, L, H)`` activations (:attr:`CellActivations.values`).
        feature: ``(N,)`` the feature at the same positions.
        top: keep the best ``top`` (``None``: all).

    Returns:
        :class:`CellScore` list, best first (a cell that never changes scores 0).

    Raises:
        ValueError: if the shapes disagree or the feature is constant (nothing to track).
    """
    if values.dim() != 3 or feature.shape != (values.shape[0],):
        raise ValueError(
            f"rank_cells: expected values (N, L, H) and feature (N,), got "
            f"{tuple(values.shape)} and {tuple(feature.shape)}"
        )
    if top is not None:
        check_positive_int("rank_cells", "top", top)
    f = feature.double()
    f = f - f.mean()
    if float(f.norm()) == 0.0:
        raise ValueError(
            "rank_cells: the feature is constant over this text (e.g. no quotes at all); "
            "choose a text where it varies"
        )
    N, L, H = values.shape
    v = values.reshape(N, L * H).double()
    v = v - v.mean(0)
    denom = v.norm(dim=0) * f.norm()
    r = torch.where(denom > 0, (v * f[:, None]).sum(0) / denom.clamp_min(1e-300), 0.0)
    order = torch.argsort(r.abs(), descending=True)
    if top is not None:
        order = order[:top]
    return [CellScore(int(k) // H, int(k) % H, float(r[k])) for k in order]


_LEVELS = 20


def _colour(v: float) -> str:
    # v in [-1, 1]: blue (negative) - white - red (positive), as in Karpathy et al.'s figures
    v = max(-1.0, min(1.0, v))
    if v >= 0:
        g = round(255 * (1 - v))
        return f"rgb(255,{g},{g})"
    g = round(255 * (1 + v))
    return f"rgb({g},{g},255)"


def render_html(
    text: str,
    rows: Sequence[tuple[str, Tensor]],
    ends: Tensor,
    *,
    title: str = "carousel: cell activations",
    notes: str = "",
) -> str:
    """A self-contained HTML page showing ``text`` once per row, each token's background
    coloured by a value in ``[-1, 1]`` (blue negative, white zero, red positive; the value shows
    on hover).

    Args:
        text: the text the tokens came from.
        rows: ``(heading, values)`` pairs, ``values`` of shape ``(N,)`` in ``[-1, 1]``
            (e.g. ``tanh`` of a memory cell), one per token.
        ends: ``(N,)`` index of each token's last character in ``text``.
        title: the page title.
        notes: a paragraph under the title (plain text).

    Returns:
        The HTML document (no scripts, no external resources).
    """
    ends_l = ends.tolist()
    starts = [0, *[e + 1 for e in ends_l[:-1]]]
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "pre{font-family:monospace;font-size:13px;line-height:1.35;white-space:pre-wrap;"
        "border:1px solid #ccc;padding:.6em}span{border-radius:2px}"
        ".legend span{display:inline-block;width:2.2em;text-align:center;font-size:11px}"
        # one class per colour level (41 levels from -1 to 1) keeps long pages small
        + "".join(
            f".c{k}{{background:{_colour((k - _LEVELS) / _LEVELS)}}}"
            for k in range(2 * _LEVELS + 1)
        )
        + "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    legend = "".join(
        f"<span style='background:{_colour(x)}'>{x:+.1f}</span>" for x in (-1, -0.5, 0, 0.5, 1)
    )
    parts.append(f"<p class='legend'>activation: {legend}</p>")
    for heading, values in rows:
        vals = values.tolist()
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>")
        for s, e, v in zip(starts, ends_l, vals):
            piece = html.escape(text[s : e + 1])
            if math.isnan(v):
                parts.append(piece)
            else:
                k = round((max(-1.0, min(1.0, v)) + 1.0) * _LEVELS)
                parts.append(f"<span class=c{k} title={v:+.2f}>{piece}</span>")
        parts.append("</pre>")
    parts.append("</body></html>\n")
    return "".join(parts)


class CellReport(NamedTuple):
    """What :func:`cell_report` returns.

    Attributes:
        rankings: ``{feature: cells ranked by |correlation|, best first}``.
        shown: the cells drawn in the HTML, ``(layer, unit)``.
        html: the self-contained HTML page.
    """

    rankings: dict[str, list[CellScore]]
    shown: list[tuple[int, int]]
    html: str


def cell_report(
    model: Any,
    vocab: Any,
    text: str,
    *,
    features: Sequence[str] = ("quotes",),
    top: int = 5,
    cells: Sequence[tuple[int, int]] = (),
    state: str = "c",
    title: str = "carousel cells",
) -> CellReport:
    """Rank a model's cells against text features and draw the best (or chosen) cells.

    Args:
        model: a :class:`~carousel.models.charlm.CharLM`.
        vocab: its vocabulary.
        text: the text to read (features are computed on it).
        features: names from :data:`FEATURES`.
        top: cells ranked per feature, and drawn for the first feature when ``cells`` is
            empty.
        cells: ``(layer, unit)`` pairs to draw instead of the best ones.
        state: ``"c"`` (memory cells, drawn as ``tanh(c)``) or ``"h"``.
        title: the page title.

    Returns:
        :class:`CellReport`.

    Raises:
        ValueError: for unknown features, a cell outside the model, or a feature constant
            over the text.
    """
    check_positive_int("cell_report", "top", top)
    acts = cell_activations(model, vocab, text, state=state)
    _, L, H = acts.values.shape
    for layer, unit in cells:
        if not (0 <= layer < L and 0 <= unit < H):
            raise ValueError(
                f"cell_report: cell ({layer}, {unit}) is outside the model's {L} layers of "
                f"{H} cells"
            )
    values = text_features(text, features)
    rankings = {name: rank_cells(acts.values, values[name][acts.ends], top) for name in features}
    shown = list(cells) or [(c.layer, c.unit) for c in rankings[features[0]]]
    ranked_r = {
        (c.layer, c.unit): c.correlation
        for c in rank_cells(acts.values, values[features[0]][acts.ends])
    }
    rows = []
    for layer, unit in shown:
        v = acts.values[:, layer, unit]
        v = torch.tanh(v) if state == "c" else v
        r = ranked_r[(layer, unit)]
        rows.append((f"layer {layer}, cell {unit}: r = {r:+.2f} with {features[0]}", v))
    notes = (
        f"Background: {'tanh(c)' if state == 'c' else 'h'} of each cell after reading each "
        f"{vocab.unit}; r is its Pearson correlation with the feature over this text."
    )
    return CellReport(rankings, shown, render_html(text, rows, acts.ends, title=title, notes=notes))
