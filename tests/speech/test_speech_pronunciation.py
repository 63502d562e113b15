"""Pseudo-accents: phonological processes as rewrites of espeak-ng phonemes, in the corpus."""

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from carousel.speech import synth
from carousel.speech.pronunciation import PROCESSES, Accent, draw_accent, perturb, phonemes
from carousel.speech.synth import utterance_plan
from carousel.tasks import make_task

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)

# espeak-ng en-us phonemes of "the month through morning hand simple house voice better water"
US = "D@2 m'VnT Tru: m'O@nIN h'and s'Imp@L h'aUs v'OIs b'Et#3 w'O:t#3_:"


def rewrite(name, k=0, text=US):
    return perturb(text, Accent(((name, k),), 1.0), np.random.default_rng(0))


def test_each_process_rewrites_what_it_names_and_nothing_else():
    assert rewrite("th-stopping") == US.replace("T", "t").replace("D", "d")
    assert rewrite("th-stopping", 1).split()[:3] == ["d[@2", "m'Vnt[", "t[ru:"]
    assert rewrite("th-fronting").split()[:3] == ["v@2", "m'Vnf", "fru:"]
    assert rewrite("g-dropping").split()[3] == "m'O@nIn"
    assert rewrite("g-dropping", text="br'IN T'IN") == "br'IN T'IN"  # stressed: kept
    assert rewrite("h-dropping").split()[4:7] == ["'and", "s'Imp@L", "'aUs"]
    assert rewrite("final-devoicing").split()[4] == "h'ant"
    assert rewrite("cluster-reduction").split()[4] == "h'an"
    assert rewrite("full-vowels").split()[5:] == [
        "s'ImpEl",
        "h'aUs",
        "v'OIs",
        "b'Et#a#",
        "w'O:t#a#_:",
    ]
    assert rewrite("tense-lax").split()[3] == "m'O@ni:N"
    assert rewrite("tense-lax").split()[7] == "v'OIs"  # the diphthong OI is not KIT
    assert rewrite("w-v").split()[-1] == "v'O:t#3_:"  # the pause mark is kept
    # a chain shift moves each vowel once: KIT -> schwa, DRESS -> KIT, TRAP -> DRESS
    assert rewrite("front-shift", 0, "b'Id b'Ed b'ad b'aId") == "b'@d b'Id b'Ed b'aId"
    assert rewrite("diphthong-shift", 0, "b'aIt b'eIt b'oUt") == "b'OIt b'aIt b'aUt"
    assert rewrite("w-v", 1).split()[7] == "w'OIs"
    assert perturb(US, Accent((), 1.0), np.random.default_rng(0)) == US
    assert perturb(US, Accent((("th-stopping", 0),), 0.0), np.random.default_rng(0)) == US


def test_draw_accent_is_seeded_and_checks_its_arguments():
    a = [draw_accent(np.random.default_rng(i)) for i in range(200)]
    assert a == [draw_accent(np.random.default_rng(i)) for i in range(200)]
    counts = {p.name: sum(p.name in dict(x.processes) for x in a) for p in PROCESSES}
    assert all(30 <= c <= 95 for c in counts.values()), counts  # rate 0.3 of 200
    assert all(0.5 <= x.strength <= 1 for x in a)
    only = draw_accent(np.random.default_rng(0), rate=1.0, processes=("h-dropping", "w-v"))
    assert [n for n, _ in only.processes] == ["h-dropping", "w-v"]
    with pytest.raises(ValueError, match="rate must be in"):
        draw_accent(np.random.default_rng(0), rate=2)
    with pytest.raises(ValueError, match="unknown pronunciation process 'nope'"):
        draw_accent(np.random.default_rng(0), processes=("nope",))
    with pytest.raises(ValueError, match="unknown process"):
        Accent((("nope", 0),), 1.0)
    with pytest.raises(ValueError, match=r"realisations 0\.\.1, got 2"):
        Accent((("th-stopping", 2),), 1.0)
    with pytest.raises(ValueError, match="strength"):
        Accent((), 1.5)


def test_corpus_pseudo_accents_only_in_training_and_old_corpora_unchanged(monkeypatch):
    from carousel.tasks.speech import SpeechWordsConfig

    plain = SpeechWordsConfig(l2=0.0).corpus()
    mixed = SpeechWordsConfig(l2=0.0, pronunciation=0.5).corpus()
    assert mixed.digest() != plain.digest()
    # a corpus without pseudo-accents keeps the hash it had before they existed
    assert dataclasses.replace(plain, pronunciation=0.0).digest() == plain.digest()
    # the processes' rewrites are part of the hash: editing one makes a new corpus
    before, plain_before = mixed.digest(), plain.digest()
    edited = (dataclasses.replace(PROCESSES[0], realisations=((("T", "k"),),)), *PROCESSES[1:])
    monkeypatch.setattr(synth, "PROCESSES", edited)
    assert mixed.digest() != before and plain.digest() == plain_before
    monkeypatch.undo()
    train = [utterance_plan(mixed, "train", i) for i in range(200)]
    assert [u._replace(accent=None) for u in train] == [
        utterance_plan(plain, "train", i) for i in range(200)
    ]
    assert 70 <= sum(u.accent is not None for u in train) <= 130
    for split in ("voices", "unseen_variants", "held_out_accent"):
        assert all(utterance_plan(mixed, split, i).accent is None for i in range(50))
    only = SpeechWordsConfig(l2=0.0, pronunciation=1.0, pronunciation_processes=("w-v",))
    only = only.corpus()
    assert all(
        {n for n, _ in utterance_plan(only, "train", i).accent.processes} <= {"w-v"}
        for i in range(50)
    )
    with pytest.raises(ValueError, match="pronunciation must be in"):
        SpeechWordsConfig(pronunciation=1.5)
    with pytest.raises(ValueError, match="unknown process 'nope'"):
        SpeechWordsConfig(pronunciation_processes=("nope",))


@needs_espeak
@pytest.mark.parametrize("accent", synth.ACCENTS)
def test_every_rewrite_is_read_back_by_every_accent(accent):
    # espeak-ng drops what it cannot parse in [[...]] input, so a rewrite that uses a mnemonic
    # missing from an accent's phoneme table would not come back as it went in
    text = "the month through morning hand simple house voice better water doctor open right"
    said = phonemes(text, f"{accent}+m3")
    assert len(said.split()) == len(text.split())
    for p in PROCESSES:
        for k in range(len(p.realisations)):
            out = rewrite(p.name, k, said)
            cmd = [synth.espeak_binary(), "-q", "-x", "-v", f"{accent}+m3", f"[[{out}]]"]
            back = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            # (an accent's own phoneme rules may still change a mnemonic or two: rhotic
            # accents add their linking r-, Scottish reads d@ as dV; a dropped mnemonic cuts
            # off the rest of its word)
            got = back.split()
            assert len(got) == len(out.split()), (p.name, k, back)
            assert all(len(b) >= len(o) - 1 for b, o in zip(got, out.split())), (p.name, k, back)


@needs_espeak
def test_a_pseudo_accent_changes_the_sound_reproducibly():
    spec = make_task("speech-words").spec
    u = utterance_plan(spec, "train", 0)._replace(
        text="three months north", spoken="three months north", voice="en-us+m3"
    )
    u = u._replace(accent=Accent((("th-stopping", 0),), 1.0), snr_db=float("inf"))
    a = synth.synthesize(u, seed=1)
    np.testing.assert_array_equal(a, synth.synthesize(u, seed=1))
    plain = synth.synthesize(u._replace(accent=None), seed=1)
    assert len(plain) != len(a) or not np.allclose(plain, a)
