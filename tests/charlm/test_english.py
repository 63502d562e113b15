"""English word counts from the standard library's prose (carousel.text.english)."""

import pytest

from carousel.text.english import english_word_counts


def test_common_words_are_counted_and_filters_hold():
    words = english_word_counts()
    assert len(words) > 5000
    for w in ("water", "people", "number", "return", "file"):
        assert words[w] >= 2
    assert all(w.isalpha() and w.islower() and w.isascii() for w in words)
    long = english_word_counts(min_count=10, min_length=6, max_length=8)
    assert long and all(6 <= len(w) <= 8 and c >= 10 for w, c in long.items())
    assert set(long) <= set(words)


def test_same_call_same_result():
    assert english_word_counts(min_count=50) == english_word_counts(min_count=50)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_count": 0}, "min_count"),
        ({"min_length": 0}, "min_length"),
        ({"min_length": 5, "max_length": 3}, "min_length must be <= max_length"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        english_word_counts(**kwargs)
