"""Text features, per-token cell activations, cell ranking and the HTML rendering."""

from __future__ import annotations

import pytest
import torch

from carousel.models.charlm import CharLM
from carousel.text.interpret import (
    FEATURES,
    cell_activations,
    rank_cells,
    render_html,
    text_features,
)
from carousel.text.vocab import Vocabulary


def test_features_by_hand():
    text = 'x = f("a(b)", y)\n  z'
    f = text_features(text)
    assert set(f) == set(FEATURES)
    assert "".join(str(int(v)) for v in f["quotes"].tolist()) == "00000011111000000000"
    assert f["bracket-depth"].tolist()[5:16] == [1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 0]
    assert f["brackets"].tolist()[4:6] == [0, 1]
    assert f["line-position"].tolist()[-4:] == [0, 1, 2, 3]
    assert f["word-start"].tolist()[:5] == [1, 0, 0, 0, 1]
    assert f["indent"].tolist()[-3:] == [1, 2, 2]
    # a triple quote opens a docstring that spans lines; its last closing quote is outside
    doc = text_features('"""a\nb""" x', ["quotes", "strings"])
    assert "".join(str(int(v)) for v in doc["quotes"].tolist()) == "11111111000"
    # apostrophes open nothing, escapes stay inside, an unclosed quote ends with its line
    g = text_features("don't 'a\\'b' c\n\"x\ny", ["single-quotes", "quotes"])
    assert "".join(str(int(v)) for v in g["single-quotes"].tolist()) == "0000001111100000000"
    assert "".join(str(int(v)) for v in g["quotes"].tolist()) == "0000000000000001100"
    with pytest.raises(ValueError, match="feature must be one of"):
        text_features("abc", ["vowels"])


def test_rank_cells_finds_a_planted_cell():
    g = torch.Generator().manual_seed(0)
    feature = (torch.rand(500, generator=g) > 0.5).double()
    values = torch.randn(500, 2, 6, generator=g, dtype=torch.float64)
    values[:, 1, 4] = -3 * feature + 0.1 * values[:, 1, 4]  # tracks it (negatively)
    values[:, 0, 2] = 0.0  # constant: correlation 0, not NaN
    ranked = rank_cells(values, feature, top=3)
    assert (ranked[0].layer, ranked[0].unit) == (1, 4)
    assert ranked[0].correlation < -0.99
    assert len(ranked) == 3
    every = rank_cells(values, feature)
    assert len(every) == 12 and all(c.correlation == c.correlation for c in every)
    with pytest.raises(ValueError, match="feature is constant"):
        rank_cells(values, torch.zeros(500))
    with pytest.raises(ValueError, match=r"expected values \(N, L, H\) and feature \(N,\)"):
        rank_cells(values, feature[:10])


def test_activations_align_with_characters_and_words():
    text = 'print("hi")\n'
    vocab = Vocabulary.build(text)
    lm = CharLM(len(vocab), 5, 2, embedding_size=3)
    acts = cell_activations(lm, vocab, text)
    assert acts.values.shape == (len(text), 2, 5)
    assert "".join(acts.tokens) == text
    assert acts.ends.tolist() == list(range(len(text)))
    # equal to the model's own states
    out = lm.eval()(vocab.encode(text)[:, None], return_states=True)
    torch.testing.assert_close(acts.values, out.states.c[:, :, 0].permute(1, 0, 2))
    chunked = cell_activations(lm, vocab, text, chunk_len=4, state="h")
    torch.testing.assert_close(chunked.values, out.states.h[:, :, 0].permute(1, 0, 2))
    words = Vocabulary.build("the cat sat", unit="word")
    wl = CharLM(len(words), 4, 1, embedding_size=2, cell="gru")
    wa = cell_activations(wl, words, "the cat sat", state="h")
    assert wa.tokens == ["the", " cat", " sat"] and wa.ends.tolist() == [2, 6, 10]
    with pytest.raises(ValueError, match="no memory cells"):
        cell_activations(wl, words, "the cat", state="c")


def test_html_is_self_contained_and_escaped():
    text = "<a & b>\n"
    ends = torch.arange(len(text))
    values = torch.linspace(-1, 1, len(text))
    page = render_html(text, [("layer 0, cell 3", values)], ends, notes="r = 0.9")
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "&lt;" in page and "&amp;" in page and "<a &" not in page
    assert "<script" not in page and "http" not in page
    assert "rgb(0,0,255)" in page and "rgb(255,0,0)" in page  # the two ends of the scale
