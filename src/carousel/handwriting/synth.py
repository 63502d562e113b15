"""Synthetic online handwriting: words written as pen trajectories from Hershey stroke fonts,
with per-writer style and per-letter distortions.

A *writer* (:class:`WriterStyle`) fixes slant, size, letter spacing, baseline drift, speed,
sampling rate, tremor and habits (how often letters are joined, strokes reordered or reversed,
i-dots and t-bars delayed to the end of the word). Every letter is then distorted on its own
(random affine map and a smooth elastic displacement field), so that a recogniser learns
letters rather than the few skeletons of the fonts. Online data augmentation by elastic
distortion follows Simard et al. 2003 ("Best practices for convolutional neural networks
applied to visual document analysis", section 2.1), applied here to each glyph's strokes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carousel.handwriting.fonts import glyph

__all__ = ["WriterStyle", "sample_writer", "write_word"]


@dataclass(frozen=True)
class WriterStyle:
    """How one writer writes. Lengths are in x-height units (the height of an 'x').

    Attributes:
        slant: shear ``x += slant * y`` (0 upright, 0.3 about 17 degrees to the right).
        size: the x-height in output units (e.g. pixels).
        aspect: horizontal stretch of the letters.
        letter_spacing: extra space added between letters (may be negative: tighter).
        baseline_amplitude: amplitude of the baseline's slow wave.
        baseline_period: its period along x.
        baseline_tilt: slope of the baseline.
        rotation: rotation of the whole word (radians).
        speed: pen speed (x-heights per second).
        sample_rate: points per second recorded by the device.
        tremor: standard deviation of the smoothed positional noise.
        join_prob: probability that the pen stays down from one letter to the next.
        reverse_prob: probability that a stroke of a multi-stroke letter is drawn backwards.
        reorder_prob: probability that a multi-stroke letter's strokes come in another order.
        delay_prob: probability that a small stroke (i-dot, t-bar) is written after the word.
        affine: size of the per-letter random affine distortion.
        elastic: amplitude of the per-letter elastic distortion.
    """

    slant: float = 0.0
    size: float = 40.0
    aspect: float = 1.0
    letter_spacing: float = 0.0
    baseline_amplitude: float = 0.0
    baseline_period: float = 6.0
    baseline_tilt: float = 0.0
    rotation: float = 0.0
    speed: float = 6.0
    sample_rate: float = 60.0
    tremor: float = 0.0
    join_prob: float = 0.0
    reverse_prob: float = 0.0
    reorder_prob: float = 0.0
    delay_prob: float = 0.0
    affine: float = 0.0
    elastic: float = 0.0


def sample_writer(rng: np.random.Generator, *, variation: float = 1.0) -> WriterStyle:
    """A random writer; ``variation`` scales every random departure from the plain style
    (0 gives the undistorted font)."""
    v = float(variation)
    return WriterStyle(
        slant=v * rng.normal(0.1, 0.2),
        size=float(40.0 * math.exp(v * rng.normal(0, 0.3))),
        aspect=float(math.exp(v * rng.normal(0, 0.15))),
        letter_spacing=v * rng.normal(0.0, 0.12),
        baseline_amplitude=v * abs(rng.normal(0, 0.12)),
        baseline_period=float(rng.uniform(3, 12)),
        baseline_tilt=v * rng.normal(0, 0.04),
        rotation=v * rng.normal(0, 0.05),
        speed=float(rng.uniform(3, 10)),
        sample_rate=float(rng.uniform(40, 200)),
        tremor=v * abs(rng.normal(0, 0.012)),
        join_prob=min(1.0, v * rng.uniform(0, 0.8)),
        reverse_prob=min(1.0, v * rng.uniform(0, 0.3)),
        reorder_prob=min(1.0, v * rng.uniform(0, 0.4)),
        delay_prob=min(1.0, v * rng.uniform(0, 0.7)),
        affine=v * rng.uniform(0.03, 0.12),
        elastic=v * rng.uniform(0.02, 0.08),
    )


def _distort_letter(
    strokes: list[np.ndarray], style: WriterStyle, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per-letter affine and elastic distortion (in x-height units, about the letter's centre)."""
    allp = np.concatenate(strokes)
    centre = np.array([allp[:, 0].mean(), 0.5])
    a = style.affine
    sx, sy = math.exp(rng.normal(0, a)), math.exp(rng.normal(0, a))
    shear, rot = rng.normal(0, a), rng.normal(0, a / 2)
    c, s = math.cos(rot), math.sin(rot)
    m = np.array([[c, -s], [s, c]]) @ np.array([[sx, shear], [0.0, sy]])
    shift = rng.normal(0, a / 2, size=2)
    # a smooth random displacement field: a few low-frequency plane waves
    k = rng.normal(0, 2.0, size=(3, 2))
    phase = rng.uniform(0, 2 * math.pi, size=(3, 2))
    amp = rng.normal(0, style.elastic, size=(3, 2))
    counts = [len(st) for st in strokes]
    p = (allp - centre) @ m.T + centre + shift
    proj = p @ k.T  # (n, 3)
    disp = np.stack([(amp[:, d] * np.sin(proj + phase[:, d])).sum(axis=1) for d in range(2)], 1)
    return np.split(p + disp, np.cumsum(counts)[:-1])


def _time_samples(
    strokes: list[np.ndarray], step: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sample each polyline at (jittered) equal time steps of a pen moving ``step`` per sample;
    all strokes in one vectorised pass."""
    counts = [len(st) for st in strokes]
    p = np.concatenate(strokes)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    starts = np.cumsum([0, *counts[:-1]])
    seg[starts[1:] - 1] = 0.0  # no arc length across strokes
    s = np.concatenate([[0.0], np.cumsum(seg)])
    grids = []
    for a, n in zip(starts, counts):
        s0, s1 = s[a], s[a + n - 1]
        k = max(int((s1 - s0) / step), 1) if s1 > s0 else 0
        g = np.linspace(s0, s1, k + 1)
        if k > 1:
            g[1:-1] += rng.uniform(-0.3, 0.3, size=k - 1) * ((s1 - s0) / k)
            g = np.sort(np.clip(g, s0, s1))
        grids.append(g)
    sizes = [len(g) for g in grids]
    g = np.concatenate(grids)
    # search within each stroke: offset by stroke index so equal arc values stay in order
    stroke_of = np.repeat(np.arange(len(strokes)), sizes)
    key_s = s + np.repeat(np.arange(len(strokes)), counts) * (s[-1] + 1.0)
    key_g = g + stroke_of * (s[-1] + 1.0)
    x = np.interp(key_g, key_s, p[:, 0])
    y = np.interp(key_g, key_s, p[:, 1])
    out = np.stack([x, y], axis=1)
    return np.split(out, np.cumsum(sizes)[:-1])


def write_word(
    word: str,
    face: str,
    style: WriterStyle,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Write ``word`` in ``face`` the way ``style``'s writer would.

    Args:
        word: the text (characters the face has; spaces advance the pen).
        face: a Hershey face name (see :data:`~carousel.handwriting.fonts.LATIN_FACES`).
        style: the writer.
        rng: the source of all randomness.

    Returns:
        Pen-down strokes in writing order, each a float64 array ``(n, 3)`` of ``(x, y, t)``
        with y up, in output units (``style.size`` per x-height) and t in milliseconds.

    Raises:
        ValueError: an unknown face or a character the face lacks.
    """
    letters: list[list[np.ndarray]] = []
    delayed: list[np.ndarray] = []
    pen_x = 0.0
    for ch in word:
        g = glyph(face, ch)
        if ch == " " or not g.strokes:
            pen_x += g.advance * style.aspect + style.letter_spacing
            letters.append([])
            continue
        letter_strokes = [st.copy() for st in g.strokes]
        if len(letter_strokes) > 1 and rng.random() < style.reorder_prob:
            letter_strokes = [letter_strokes[i] for i in rng.permutation(len(letter_strokes))]
        letter_strokes = [
            st[::-1].copy() if len(letter_strokes) > 1 and rng.random() < style.reverse_prob else st
            for st in letter_strokes
        ]
        if style.affine or style.elastic:
            letter_strokes = _distort_letter(letter_strokes, style, rng)
        placed = []
        for st in letter_strokes:
            p = st.copy()
            p[:, 0] = p[:, 0] * style.aspect + pen_x
            placed.append(p)
        # i-dots and t-bars: small strokes of a multi-stroke letter may come after the word
        keep = []
        for p in placed:
            small = max(np.ptp(p[:, 0]), np.ptp(p[:, 1])) < 0.45
            if len(placed) > 1 and small and rng.random() < style.delay_prob:
                delayed.append(p)
            else:
                keep.append(p)
        if not keep:  # never delay a whole letter
            keep.append(delayed.pop())
        letters.append(keep)
        pen_x += g.advance * style.aspect + style.letter_spacing
    # join letters: the pen stays down from one letter's last stroke into the next one's first
    strokes: list[np.ndarray] = []
    prev_joinable = False
    for strokes_of_letter in letters:
        if not strokes_of_letter:
            prev_joinable = False
            continue
        first, rest = strokes_of_letter[0], strokes_of_letter[1:]
        if prev_joinable and strokes and rng.random() < style.join_prob:
            strokes[-1] = np.concatenate([strokes[-1], first])
        else:
            strokes.append(first)
        strokes.extend(rest)
        prev_joinable = True
    strokes.extend(delayed)
    if not strokes:
        raise ValueError(f"write_word: {word!r} has no ink in face {face!r}")
    # writer-level geometry: slant, baseline drift, rotation, then size
    c, s = math.cos(style.rotation), math.sin(style.rotation)
    phase = rng.uniform(0, 2 * math.pi)
    step = style.speed / style.sample_rate  # x-heights per sample
    sampled = _time_samples(strokes, step, rng)
    sizes = [len(q) for q in sampled]
    q = np.concatenate(sampled)
    x, y = q[:, 0], q[:, 1]
    y = y + style.baseline_amplitude * np.sin(2 * math.pi * x / style.baseline_period + phase)
    y = y + style.baseline_tilt * x
    x = x + style.slant * y
    x, y = c * x - s * y, s * x + c * y
    if style.tremor > 0 and len(x) >= 3:
        noise = rng.normal(0, style.tremor, size=(len(x) + 2, 2))
        noise = (noise[:-2] + noise[1:-1] + noise[2:]) / 3  # smoothed: a slow wobble
        x, y = x + noise[:, 0], y + noise[:, 1]
    # time: sample_rate points per second, plus a pause in the air between strokes
    pauses = np.concatenate([[0.0], rng.uniform(50, 300, size=len(sizes) - 1)])
    t = 1000.0 * np.arange(len(x)) / style.sample_rate + np.repeat(np.cumsum(pauses), sizes)
    out = np.stack([x * style.size, y * style.size, t], axis=1)
    return np.split(out, np.cumsum(sizes)[:-1])
