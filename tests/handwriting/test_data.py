import json

import numpy as np
import pytest
import torch

pytest.importorskip("HersheyFonts")

from carousel.handwriting.fonts import EXTRA_FACES, LATIN_FACES, glyph
from carousel.handwriting.pen import (
    PenSample,
    parse_pen_json,
    pen_features,
    read_pen_json,
    validate_strokes,
    write_pen_json,
)
from carousel.handwriting.synth import WriterStyle, sample_writer, write_word
from carousel.tasks.handwriting import (
    ALPHABET,
    HandwritingConfig,
    HandwritingData,
    collate,
    load_words,
)


@pytest.mark.parametrize("face", LATIN_FACES + EXTRA_FACES)
def test_every_face_has_every_letter(face):
    for ch in "abcdefghijklmnopqrstuvwxyz":
        g = glyph(face, ch)
        assert g.strokes and g.advance > 0
        ys = np.concatenate(g.strokes)[:, 1]
        assert -1.2 < ys.min() and ys.max() < 2.2  # x-height units, baseline 0


def test_glyph_geometry_is_in_x_height_units():
    x = np.concatenate(glyph("futural", "x").strokes)
    assert x[:, 1].min() == pytest.approx(0.0) and x[:, 1].max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown face 'nope'"):
        glyph("nope", "a")


def test_write_word_is_seeded_and_plain_style_follows_the_font():
    a = write_word(
        "pen", "scripts", sample_writer(np.random.default_rng(3)), np.random.default_rng(4)
    )
    b = write_word(
        "pen", "scripts", sample_writer(np.random.default_rng(3)), np.random.default_rng(4)
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    plain = write_word("l", "futural", WriterStyle(size=1.0), np.random.default_rng(0))
    pts = np.concatenate(plain)
    assert pts[:, 1].max() == pytest.approx(glyph("futural", "l").strokes[0][:, 1].max(), abs=1e-9)
    assert np.all(np.diff(pts[:, 2]) > 0)  # time increases


def test_glyph_level_distortions_change_letters_independently():
    rng = np.random.default_rng(0)
    style = WriterStyle(size=1.0, affine=0.1, elastic=0.05)
    w1 = np.concatenate(write_word("oo", "futural", style, rng))
    # the two 'o's get different distortions: their shapes differ beyond a shift
    o1, o2 = w1[w1[:, 0] < w1[:, 0].mean()], w1[w1[:, 0] >= w1[:, 0].mean()]
    assert (
        abs(np.ptp(o1[:, 0]) - np.ptp(o2[:, 0])) > 1e-3
        or abs(np.ptp(o1[:, 1]) - np.ptp(o2[:, 1])) > 1e-3
    )


def test_joined_vs_lifted_and_delayed_strokes():
    rng = np.random.default_rng(0)
    joined = write_word("mum", "cursive", WriterStyle(size=1.0, join_prob=1.0), rng)
    lifted = write_word("mum", "cursive", WriterStyle(size=1.0, join_prob=0.0), rng)
    assert len(joined) < len(lifted)
    # with delay_prob=1 the dot of the i comes last
    late = write_word("in", "futural", WriterStyle(size=1.0, delay_prob=1.0), rng)
    assert np.ptp(late[-1][:, 0]) < 0.45 and late[-1][:, 1].min() > 1.0


def test_pen_features_errors():
    """Strokes that are not (n, 2|3) finite numbers are named (before: an IndexError, or numpy's
    error from deep inside the resampling)."""
    with pytest.raises(ValueError, match="no strokes"):
        pen_features([np.zeros((0, 2))])
    with pytest.raises(ValueError, match=r"stroke 1 must be an array \(n, 2\) or \(n, 3\)"):
        pen_features([np.zeros((3, 2)), np.zeros(5)])
    with pytest.raises(ValueError, match="stroke 0 has NaN or infinite coordinates"):
        pen_features([np.array([[0.0, 0.0], [np.nan, 1.0]])])
    assert pen_features([[[0, 0], [1, 1], [2, 0]]]).shape[1] == 4  # nested lists do


def test_pen_features_normalise_scale_position_and_speed():
    rng = np.random.default_rng(0)
    strokes = write_word("hello", "rowmans", WriterStyle(size=1.0), rng)
    f1 = pen_features(strokes)
    big = [s * np.array([70.0, 70.0, 1.0]) + np.array([500.0, -30.0, 0.0]) for s in strokes]
    f2 = pen_features(big)
    np.testing.assert_allclose(f1, f2, atol=1e-4)
    # a finer sampling of the same trajectory gives (nearly) the same features
    dense = [np.repeat(s, 3, axis=0) for s in strokes]
    assert abs(len(pen_features(dense)) - len(f1)) <= 2
    assert f1.dtype == np.float32 and f1.shape[1] == 4
    ups = f1[:, 3]
    assert ups.sum() > 0 and set(np.unique(ups)) <= {0.0, 1.0}
    steps = np.linalg.norm(f1[1:, :2], axis=1)
    assert steps.max() <= 0.2 + 1e-5  # resampled at the spacing


def test_lift_without_travel_still_shows():
    s = [np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 1.0]])]
    f = pen_features(s, spacing=0.1)
    assert f[:, 3].sum() >= 1


def test_json_round_trip_and_y_axis(tmp_path):
    rng = np.random.default_rng(1)
    strokes = write_word("ink", "timesi", sample_writer(rng), rng)
    path = tmp_path / "w.json"
    write_pen_json(path, [PenSample(strokes, "ink", {"face": "timesi"})], y_axis="down")
    doc = json.loads(path.read_text())
    assert doc["format"] == "carousel-pen" and doc["y_axis"] == "down"
    (back,) = read_pen_json(path)
    assert back.text == "ink" and back.meta == {"face": "timesi"}
    for a, b in zip(strokes, back.strokes):
        np.testing.assert_allclose(a, b, atol=1e-3)
    # a single-sample document as the browser saves it
    (one,) = parse_pen_json({"text": "a", "strokes": [[[0, 0], [0, 10]]]})
    assert one.strokes[0][1, 1] == -10  # y down by default, stored y up


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "expected a JSON object"),
        ({"format": "svg", "strokes": []}, "'format' must be 'carousel-pen'"),
        ({"version": 2, "strokes": []}, "unsupported version 2"),
        ({"y_axis": "left", "strokes": []}, "'y_axis' must be 'up' or 'down'"),
        ({"foo": 1}, "expected a 'samples' list or a 'strokes' list"),
        ({"samples": {}}, "'samples' must be a list"),
        ({"samples": [3]}, "sample 0: a sample must be a JSON object"),
        ({"strokes": "x"}, "'strokes' must be a list of strokes"),
        ({"strokes": [[]]}, "stroke 0 must be a non-empty list"),
        ({"strokes": [[[0, "a"]]]}, r"point 0 of stroke 0 must be \[x, y\]"),
        ({"strokes": [[[0, float("nan")]]]}, "finite numbers"),
        ({"strokes": [[[0, 1], [0, 1, 2]]]}, "mixes"),
        ({"strokes": [[[0, 1]]], "text": 3}, "'text' must be a string"),
        ({"strokes": [[[0, 1]]], "meta": 3}, "'meta' must be an object"),
    ],
)
def test_bad_pen_json_is_named(doc, match):
    with pytest.raises(ValueError, match=match):
        parse_pen_json(doc)


def test_read_pen_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match=r"bad\.json: not a JSON pen file"):
        read_pen_json(bad)


def test_validate_strokes_bounds():
    with pytest.raises(ValueError, match="at most 3 points"):
        validate_strokes([[[0, 0]] * 4], max_points=3)
    with pytest.raises(ValueError, match="at most 1 strokes"):
        validate_strokes([[[0, 0]], [[1, 1]]], max_strokes=1)


def test_splits_and_batches():
    words = load_words()
    assert len(words) > 1500 and all(w.isalpha() for w in words)
    data = HandwritingData(HandwritingConfig(held_out_faces=("timesi",), eval_size=8))
    assert not set(data.train_words) & set(data.test_words)
    assert "timesi" not in data.config.train_faces
    rng = np.random.default_rng(0)
    batch = next(data.batches(rng, 4, pool=2))
    T, B, I = batch.inputs.shape
    assert (B, I) == (4, 4) and int(batch.lengths.max()) == T
    assert batch.targets.dtype == torch.long
    lens = sorted(batch.lengths.tolist())
    assert lens[-1] / lens[0] < 3  # grouped by length
    held = data.eval_set("face:timesi")
    assert all(s.face == "timesi" and s.text in data.test_words for s in held)
    assert [s.text for s in held] == [s.text for s in data.eval_set("face:timesi")]
    assert collate(held).texts == [s.text for s in held]
    with pytest.raises(ValueError, match="both trained and held out"):
        HandwritingConfig(faces=("timesi",), held_out_faces=("timesi",))
    with pytest.raises(ValueError, match="unknown evaluation set"):
        data.eval_set("nope")
    assert ALPHABET.encode("az") == [1, 26]
