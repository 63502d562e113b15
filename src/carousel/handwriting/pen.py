"""Pen data: the JSON file format for recordings, and the normalisation that turns strokes
into network inputs.

JSON pen format (``"format": "carousel-pen"``, version 1)::

    {
      "format": "carousel-pen",
      "version": 1,
      "y_axis": "down",                 # "down" (screen/canvas coordinates) or "up"
      "samples": [
        {
          "text": "hello",              # the transcript ("" or absent if unknown)
          "strokes": [                  # pen-down strokes in writing order
            [[x, y, t], [x, y, t], ...],   # t (milliseconds) is optional: [x, y] also works
            ...
          ],
          "meta": {"writer": "anna"}    # optional, free-form
        }
      ]
    }

Units are arbitrary (pixels, millimetres): :func:`pen_features` normalises position and size.
A file with one sample may also hold that sample's keys at the top level (``text``,
``strokes``), as the browser demo saves it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FEATURES",
    "PenSample",
    "parse_pen_json",
    "pen_features",
    "read_pen_json",
    "validate_strokes",
    "write_pen_json",
]

#: The feature columns of :func:`pen_features`.
FEATURES: tuple[str, ...] = ("dx", "dy", "y", "pen_up")
FORMAT = "carousel-pen"


@dataclass
class PenSample:
    """One written sample.

    Attributes:
        strokes: pen-down strokes, each a float array ``(n, 2)`` or ``(n, 3)`` of
            ``(x, y[, t])`` with the y axis pointing **up**.
        text: the transcript (``""`` if unknown).
        meta: free-form metadata (writer, face, ...).
    """

    strokes: list[np.ndarray]
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def validate_strokes(
    strokes: Any,
    *,
    owner: str = "pen data",
    max_points: int | None = None,
    max_strokes: int | None = None,
) -> list[np.ndarray]:
    """Check a JSON-like list of strokes and convert it to float arrays ``(n, 2|3)``.

    Args:
        strokes: a list of strokes, each a list of ``[x, y]`` or ``[x, y, t]`` numbers.
        owner: the name used in error messages.
        max_points: the largest total number of points accepted.
        max_strokes: the largest number of strokes accepted.

    Raises:
        ValueError: not a list of lists of 2 or 3 finite numbers, an empty stroke, or too many
            points or strokes.
    """
    if not isinstance(strokes, list):
        raise ValueError(
            f"{owner}: 'strokes' must be a list of strokes, got {type(strokes).__name__}"
        )
    if max_strokes is not None and len(strokes) > max_strokes:
        raise ValueError(f"{owner}: at most {max_strokes} strokes accepted, got {len(strokes)}")
    out, total = [], 0
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or not stroke:
            raise ValueError(f"{owner}: stroke {i} must be a non-empty list of [x, y] points")
        total += len(stroke)
        if max_points is not None and total > max_points:
            raise ValueError(f"{owner}: at most {max_points} points accepted in all, got more")
        width = None
        for j, p in enumerate(stroke):
            ok = (
                isinstance(p, list)
                and len(p) in (2, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
                and all(math.isfinite(v) for v in p)
            )
            if not ok:
                raise ValueError(
                    f"{owner}: point {j} of stroke {i} must be [x, y] or [x, y, t] with finite "
                    f"numbers, got {str(p)[:60]}"
                )
            if width is None:
                width = len(p)
            elif len(p) != width:
                raise ValueError(f"{owner}: stroke {i} mixes [x, y] and [x, y, t] points")
        out.append(np.asarray(stroke, dtype=np.float64))
    return out


def _sample_from_dict(d: Any, y_axis: str, where: str) -> PenSample:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a sample must be a JSON object, got {type(d).__name__}")
    strokes = validate_strokes(d.get("strokes"), owner=where)
    if y_axis == "down":
        for s in strokes:
            s[:, 1] = -s[:, 1]
    text = d.get("text", "") or ""
    if not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    meta = d.get("meta", {}) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
    return PenSample(strokes, text, dict(meta))


def parse_pen_json(data: Any, *, source: str = "pen JSON") -> list[PenSample]:
    """Samples from an already-parsed JSON document (see the module docstring).

    Raises:
        ValueError: a wrong format name or version, a bad ``y_axis``, or bad samples (named by
            index).
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a JSON object at the top level, got {type(data).__name__}"
        )
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ValueError(f"{source}: 'format' must be {FORMAT!r}, got {fmt!r}")
    version = data.get("version", 1)
    if version != 1:
        raise ValueError(
            f"{source}: unsupported version {version!r}; this carousel reads version 1"
        )
    y_axis = data.get("y_axis", "down")
    if y_axis not in ("up", "down"):
        raise ValueError(f"{source}: 'y_axis' must be 'up' or 'down', got {y_axis!r}")
    if "samples" in data:
        samples = data["samples"]
        if not isinstance(samples, list):
            raise ValueError(f"{source}: 'samples' must be a list")
        return [
            _sample_from_dict(s, y_axis, f"{source}: sample {i}") for i, s in enumerate(samples)
        ]
    if "strokes" in data:
        return [_sample_from_dict(data, y_axis, source)]
    raise ValueError(f"{source}: expected a 'samples' list or a 'strokes' list")


def read_pen_json(path: str | os.PathLike) -> list[PenSample]:
    """Read samples from a JSON pen file (module docstring). Strokes come back with y up.

    Raises:
        ValueError: the file is not valid JSON or not in the format (the message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON pen file ({err})") from err
    return parse_pen_json(data, source=str(path))


def write_pen_json(
    path: str | os.PathLike, samples: Sequence[PenSample], *, y_axis: str = "up"
) -> None:
    """Write samples as a JSON pen file (atomically: temp file, then rename).

    Args:
        path: the file to write.
        samples: the samples (strokes with y up, as :class:`PenSample` holds them).
        y_axis: the orientation to store ("up" keeps coordinates as they are).
    """
    if y_axis not in ("up", "down"):
        raise ValueError(f"write_pen_json: y_axis must be 'up' or 'down', got {y_axis!r}")
    sign = -1.0 if y_axis == "down" else 1.0
    out = []
    for s in samples:
        strokes = []
        for st in s.strokes:
            a = np.asarray(st, dtype=np.float64).copy()
            a[:, 1] *= sign
            strokes.append([[round(float(v), 4) for v in p] for p in a])
        out.append({"text": s.text, "strokes": strokes, "meta": s.meta})
    doc = {"format": FORMAT, "version": 1, "y_axis": y_axis, "samples": out}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def _weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, qs: Sequence[float]
) -> list[float]:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    c = np.cumsum(w)
    c = c / c[-1]
    return [float(np.interp(q / 100.0, c, v)) for q in qs]


def pen_features(strokes: Sequence[np.ndarray], *, spacing: float = 0.12) -> np.ndarray:
    """Normalise strokes and turn them into the network's input sequence.

    1. Size and position: the y axis is centred on the median of the ink and scaled by the
       spread between its 10th and 90th percentiles (about the x-height for lowercase
       writing), measured on ink resampled at equal arc length so slow or dense sampling does
       not bias it; x starts at 0 and shares y's scale.
    2. Resampling at equal arc length (``spacing`` in those units) removes the writer's speed
       and the device's sampling rate (Jaeger et al. 2001, "Online handwriting recognition:
       the NPen++ recognizer", section 3).
    3. The pen-up moves between strokes are added as straight lines sampled at the same
       spacing, flagged ``pen_up = 1``.

    Args:
        strokes: pen-down strokes, arrays ``(n, 2)`` or ``(n, 3)`` (``t`` is ignored), y up.
        spacing: the resampling distance in normalised units.

    Returns:
        float32 array ``(N, 4)``: ``dx, dy`` (the step from the previous point), ``y``
        (normalised height) and ``pen_up`` (1 on pen-up moves), see :data:`FEATURES`.

    Raises:
        ValueError: no strokes, no ink, or a stroke that is not ``(n, 2|3)`` finite numbers.
    """
    arrays = []
    for k, s in enumerate(strokes):
        a = np.asarray(s, dtype=np.float64)
        if a.size == 0:
            continue
        if a.ndim != 2 or a.shape[1] < 2:
            raise ValueError(
                f"pen_features: stroke {k} must be an array (n, 2) or (n, 3) of x, y[, t], "
                f"got shape {a.shape}"
            )
        if not np.isfinite(a[:, :2]).all():
            raise ValueError(f"pen_features: stroke {k} has NaN or infinite coordinates")
        arrays.append(a[:, :2])
    strokes = arrays
    if not strokes:
        raise ValueError("pen_features: no strokes")
    p = np.concatenate(strokes)  # (M, 2)
    ends = np.cumsum([len(st) for st in strokes])[:-1]  # first point of each later stroke
    up = np.zeros(len(p) - 1, dtype=bool)  # segment i joins point i to i+1
    up[ends - 1] = True
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    # size: ink (pen-down segments) weighted by length, so sampling density does not matter
    ink = ~up & (seg > 0)
    if ink.any():
        mid_y = (p[:-1, 1] + p[1:, 1])[ink] / 2
        lo, med, hi = _weighted_percentiles(mid_y, seg[ink], (10, 50, 90))
    else:
        lo = med = hi = float(np.median(p[:, 1]))
    extent = float(max(np.ptp(p[:, 0]), np.ptp(p[:, 1]), 1e-9))
    scale = float(hi - lo)
    if scale < extent / 20:  # a flat line or a dot: fall back on the extent
        scale = extent / 4 if extent > 1e-9 else 1.0
    p = np.stack([(p[:, 0] - p[:, 0].min()) / scale, (p[:, 1] - med) / scale], axis=1)
    seg = seg / scale
    # resample the whole path, pen-up moves included, at equal arc length; a lift without
    # travel counts as one step so that it still shows as a pen-up point
    eff = np.where(up, np.maximum(seg, 1.01 * spacing), seg)
    s = np.concatenate([[0.0], np.cumsum(eff)])
    total = s[-1]
    if total <= 0:
        return np.array([[0.0, 0.0, p[0, 1], 0.0]], dtype=np.float32)
    grid = np.append(np.arange(0.0, total, spacing), total)
    idx = np.clip(np.searchsorted(s, grid, side="right") - 1, 0, len(seg) - 1)
    frac = np.where(eff[idx] > 0, (grid - s[idx]) / np.where(eff[idx] > 0, eff[idx], 1), 0.0)
    frac = np.clip(frac, 0.0, 1.0)[:, None]
    q = p[idx] + frac * (p[idx + 1] - p[idx])
    pen_up = up[idx] & (frac[:, 0] > 0) & (frac[:, 0] < 1)
    d = np.diff(q, axis=0, prepend=q[:1])
    return np.stack([d[:, 0], d[:, 1], q[:, 1], pen_up], axis=1).astype(np.float32)
