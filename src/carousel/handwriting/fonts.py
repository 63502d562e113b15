"""Glyph skeletons from the Hershey stroke fonts (the ``hershey-fonts`` package, optional extra
``[handwriting]``), in x-height units with the y axis pointing up and the baseline at 0."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from HersheyFonts import HersheyFonts

__all__ = ["EXTRA_FACES", "LATIN_FACES", "Glyph", "glyph", "require_hershey"]

#: Latin faces used for training and leave-one-face-out evaluation: the plain (Futura, Roman,
#: Times), italic and script faces. Simplex faces draw each line once; duplex/complex/triplex
#: ones ("futuram", "rowmand", "rowmant", "timesrb", "timesib", "scriptc") draw thick lines as
#: two or three parallel strokes, which makes their trajectories longer and different in kind.
LATIN_FACES: tuple[str, ...] = (
    "cursive",
    "scripts",
    "scriptc",
    "futural",
    "futuram",
    "rowmans",
    "rowmand",
    "rowmant",
    "timesr",
    "timesrb",
    "timesi",
    "timesib",
)
#: Blackletter faces: Latin letters in shapes no modern hand writes; available for stress tests
#: but not part of the leave-one-face-out measure.
EXTRA_FACES: tuple[str, ...] = (
    "gothgbt",
    "gothgrt",
    "gothiceng",
    "gothicger",
    "gothicita",
    "gothitt",
)

_BASE_LINE = 9.0  # Hershey font units (y down): the baseline ...
_X_HEIGHT = 14.0  # ... and the height of 'x' (its top is at -5)


class Glyph(NamedTuple):
    """One letter's skeleton.

    Attributes:
        strokes: pen-down polylines, each a float64 array ``(n, 2)`` of ``(x, y)`` in x-height
            units, baseline at ``y = 0``, y up, the glyph's left edge at ``x = 0``.
        advance: the distance to the next letter's left edge (x-height units).
    """

    strokes: tuple[np.ndarray, ...]
    advance: float


def require_hershey() -> type[HersheyFonts]:
    """Import ``HersheyFonts``, or explain how to install it."""
    try:
        from HersheyFonts import HersheyFonts
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "carousel's synthetic handwriting needs the Hershey stroke fonts: "
            "pip install 'carousel-rnn[handwriting]' (or pip install hershey-fonts)"
        ) from err
    return HersheyFonts


@functools.lru_cache(maxsize=64)
def _font(face: str) -> HersheyFonts:
    HersheyFonts = require_hershey()
    font = HersheyFonts()
    if face not in font.default_font_names:
        raise ValueError(
            f"handwriting: unknown face {face!r}; Latin faces are {list(LATIN_FACES)}, "
            f"all faces {sorted(font.default_font_names)}"
        )
    font.load_default_font(face)
    return font


@functools.lru_cache(maxsize=8192)
def glyph(face: str, char: str) -> Glyph:
    """The skeleton of ``char`` in ``face``.

    Raises:
        ValueError: an unknown face, or a character the face lacks.
    """
    font = _font(face)
    found = list(font.glyphs_for_text(char))
    if len(char) != 1 or not found:
        raise ValueError(f"handwriting: face {face!r} has no glyph for {char!r}")
    g = found[0]
    strokes = []
    for stroke in g.strokes:
        pts = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        pts[:, 0] = (pts[:, 0] - g.left_offset) / _X_HEIGHT
        pts[:, 1] = (_BASE_LINE - pts[:, 1]) / _X_HEIGHT
        if len(pts):
            strokes.append(pts)
    return Glyph(tuple(strokes), g.char_width / _X_HEIGHT)
