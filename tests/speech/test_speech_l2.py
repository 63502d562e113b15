"""Second-language English: English phonemes said by other languages' espeak-ng voices."""

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from carousel.speech import l2, synth
from carousel.speech.synth import utterance_plan

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


def test_corpus_l2_utterances_only_in_training_and_old_corpora_unchanged(monkeypatch):
    from carousel.tasks.speech import SpeechWordsConfig

    plain = SpeechWordsConfig(l2=0.0).corpus()
    mixed = SpeechWordsConfig(l2=0.5).corpus()
    assert mixed.digest() != plain.digest()
    # a corpus without L2 speech keeps the hash it had before the option existed
    assert dataclasses.replace(plain, l2=0.0, l2_languages=("es",)).digest() == plain.digest()
    # the substitutes are part of the hash: editing one makes a new corpus
    before = mixed.digest()
    monkeypatch.setattr(synth, "SUBSTITUTES", {**l2.SUBSTITUTES, "V": ("o",)})
    assert mixed.digest() != before
    assert plain.digest() == SpeechWordsConfig(l2=0.0).corpus().digest()
    monkeypatch.undo()
    monkeypatch.setattr(synth, "L2_REPLACED", l2.REPLACED - {"T"})
    assert mixed.digest() != before
    monkeypatch.undo()
    train = [utterance_plan(mixed, "train", i) for i in range(200)]
    # the same texts, voices and rates: L2 speech is drawn after everything else
    assert [u._replace(l2=None, l2_keep=1.0) for u in train] == [
        utterance_plan(plain, "train", i) for i in range(200)
    ]
    chosen = [u for u in train if u.l2 is not None]
    assert 70 <= len(chosen) <= 130
    assert {u.l2 for u in chosen} == set(l2.L2_LANGUAGES)
    assert all(0.3 <= u.l2_keep <= 1 for u in chosen)
    for split in ("voices", "unseen_variants", "held_out_accent"):
        assert all(utterance_plan(mixed, split, i).l2 is None for i in range(50))
    only = SpeechWordsConfig(l2=1.0, l2_languages=("es", "de")).corpus()
    assert {utterance_plan(only, "train", i).l2 for i in range(50)} == {"es", "de"}
    with pytest.raises(ValueError, match="l2 must be in"):
        SpeechWordsConfig(l2=1.5)
    with pytest.raises(ValueError, match="l2_languages: unknown language 'xx'"):
        SpeechWordsConfig(l2_languages=("xx",))


@needs_espeak
def test_every_english_phoneme_of_the_vocabulary_has_substitutes():
    from carousel.speech.vocabulary import WORDS

    text = " ".join((*WORDS, *synth.DIGIT_WORDS, "the", "to"))
    seen = set()
    for accent in synth.ACCENTS:
        seen |= set(l2._tokens(l2._run(synth.espeak_binary(), ["-v", accent, text])))
    assert seen <= set(l2.SUBSTITUTES), seen - set(l2.SUBSTITUTES)


@needs_espeak
@pytest.mark.parametrize("language", l2.L2_LANGUAGES)
def test_every_l2_word_is_said_whole(language):
    from carousel.speech.vocabulary import WORDS

    espeak = synth.espeak_binary()
    subs = l2.substitutions(language, espeak=espeak)
    assert set(subs) == set(l2.SUBSTITUTES) and all(subs.values())
    text = " ".join(WORDS[::3])
    for keep in (1.0, 0.0):
        said = l2.l2_phonemes(text, language, keep=keep, rng=np.random.default_rng(0))
        words = said.split()
        assert len(words) == len(text.split())
        # espeak-ng drops the rest of a word at a mnemonic its table lacks: each word followed
        # by a sentinel must come back with the sentinel
        assert all(l2._said(espeak, language, words)), language


@needs_espeak
def test_keep_replaces_only_vowels_and_th_the_table_has():
    # es has no /I/ or /V/: always replaced; /E/ and /T/ it has: replaced only when not kept
    assert l2.substitutions("es")["I"][0] == "i"
    text = "sit bed cup think"
    kept = l2.l2_phonemes(text, "es", voice="en", keep=1.0).split()
    changed = [
        l2.l2_phonemes(text, "es", voice="en", keep=0.0, rng=np.random.default_rng(i)).split()
        for i in range(20)
    ]
    assert kept[0] == "s'it" and all(c[0] == "s'it" for c in changed)
    assert "E" in kept[1] and all("e" in c[1] and "E" not in c[1] for c in changed)
    assert kept[2] == "k'ap" and all(c[2] == "k'ap" for c in changed)
    # /T/ as each of its other substitutes (t, s, f), drawn; other consonants kept
    assert kept[3].startswith("T") and {c[3][0] for c in changed} == {"t", "s", "f"}
    assert all(c[1].startswith("b") and c[3].endswith("k") for c in changed)
    assert l2.REPLACED >= {"T", "D", "I", "E", "V", "aI"} and not l2.REPLACED & {"b", "w", "h"}
    with pytest.raises(ValueError, match=r"keep must be in \[0, 1\], got 2"):
        l2.l2_phonemes("sit", "es", keep=2.0)


@needs_espeak
def test_an_l2_utterance_is_said_by_the_language_voice_reproducibly():
    spec = synth.CorpusSpec(
        kind="words",
        vocabulary=("three", "months", "north"),
        min_len=3,
        max_len=3,
        seed=0,
        accents=(("train", ("en-us",)),),
        variants=(("train", ("m3",)),),
        sizes=(("train", 64),),
        noise=0.0,
        l2=1.0,
    )
    u = utterance_plan(spec, "train", 0)
    assert u.l2 in l2.L2_LANGUAGES and u.voice == "en-us+m3"
    a = synth.synthesize(u, seed=1)
    np.testing.assert_array_equal(a, synth.synthesize(u, seed=1))
    plain = synth.synthesize(u._replace(l2=None), seed=1)
    assert len(plain) != len(a) or not np.allclose(plain, a)


def test_substitutions_name_a_table_without_any_substitute(monkeypatch):
    monkeypatch.setattr(l2, "SUBSTITUTES", {"V": ("V", "a")})
    monkeypatch.setattr(l2, "_said", lambda espeak, language, cands: [False] * len(cands))
    l2.substitutions.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"'zz' phoneme table has none of \['V', 'a'\]"):
            l2.substitutions("zz")
    finally:
        l2.substitutions.cache_clear()


def test_espeak_failure_is_reported(monkeypatch):
    def failing(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "no such voice")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="no such voice"):
        l2._run("espeak-ng", ["-v", "zz", "x"])
