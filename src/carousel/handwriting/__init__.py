"""Online handwriting: synthetic pen trajectories from Hershey stroke fonts, the JSON pen
format for real recordings, and normalisation into network inputs.

The recogniser's training and use live in :mod:`carousel.handwriting.recognizer`, the lecture
7e analysis in :mod:`carousel.handwriting.demo`, and the task in
:mod:`carousel.tasks.handwriting`. The fonts come from the optional ``hershey-fonts`` package
(``pip install 'carousel-rnn[handwriting]'``), imported only when a glyph is first drawn.
"""

from carousel.handwriting.fonts import EXTRA_FACES, LATIN_FACES, Glyph, glyph
from carousel.handwriting.pen import (
    FEATURES,
    PenSample,
    parse_pen_json,
    pen_features,
    read_pen_json,
    validate_strokes,
    write_pen_json,
)
from carousel.handwriting.synth import WriterStyle, sample_writer, write_word

__all__ = [
    "EXTRA_FACES",
    "FEATURES",
    "LATIN_FACES",
    "Glyph",
    "PenSample",
    "WriterStyle",
    "glyph",
    "parse_pen_json",
    "pen_features",
    "read_pen_json",
    "sample_writer",
    "validate_strokes",
    "write_pen_json",
    "write_word",
]
