"""The espeak-ng corpus: plans, reproducible synthesis, shards, and the speech tasks."""

import dataclasses
import shutil

import numpy as np
import pytest

from carousel.speech import synth
from carousel.speech.synth import SHARD_SIZE, utterance_plan
from carousel.tasks import make_task

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


def test_plans_are_pure_functions_and_respect_held_out_voices():
    task = make_task("speech")
    spec = task.spec
    a = [utterance_plan(spec, "train", i) for i in range(50)]
    assert a == [utterance_plan(spec, "train", i) for i in range(50)]
    assert all(u.text.isdigit() and 3 <= len(u.text) <= 7 for u in a)
    assert all(u.voice.split("+")[0] != "en-029" for u in a)
    assert all(u.voice.split("+")[1] not in task.config.held_out_variants for u in a)
    held = [utterance_plan(spec, "held_out_accent", i) for i in range(20)]
    assert all(u.voice.startswith("en-029+") for u in held)
    unseen = [utterance_plan(spec, "unseen_variants", i) for i in range(20)]
    assert all(u.voice.split("+")[1] in task.config.held_out_variants for u in unseen)
    # the sizes do not change the utterances or the cache folder
    bigger = dataclasses.replace(spec, sizes=(("train", 10_000), *spec.sizes[1:]))
    assert bigger.digest() == spec.digest() and bigger.num_shards("train") == -(-10_000 // 64)
    words = make_task("speech-words")
    u = utterance_plan(words.spec, "train", 0)
    assert set(u.text) <= set(" abcdefghijklmnopqrstuvwxyz") and u.spoken == u.text
    assert all(w in words.spec.vocabulary for w in u.text.split())
    with pytest.raises(ValueError, match="unknown split"):
        utterance_plan(spec, "nope", 0)


def test_config_errors():
    from carousel.tasks.speech import SpeechConfig

    with pytest.raises(ValueError, match="kind must be"):
        SpeechConfig(kind="phones")
    with pytest.raises(ValueError, match="unknown accent 'en-xx'"):
        SpeechConfig(held_out_accents=("en-xx",))
    with pytest.raises(ValueError, match="unknown variant"):
        SpeechConfig(held_out_variants=("m99",))
    with pytest.raises(ValueError, match="min_len <= max_len"):
        SpeechConfig(min_len=5, max_len=2)
    with pytest.raises(ValueError, match=r"warp must be in \[0, 1\)"):
        SpeechConfig(warp=1.0)
    with pytest.raises(ValueError, match="freq_mask must be < n_mels"):
        SpeechConfig(freq_mask=40)


def test_missing_espeak_says_how_to_install(monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(synth.EspeakNotFoundError, match="apt-get install espeak-ng"):
        synth.espeak_binary()


@needs_espeak
def test_synthesis_is_reproducible_and_voices_differ():
    spec = make_task("speech").spec
    u = utterance_plan(spec, "train", 3)
    a = synth.synthesize(u, seed=1)
    np.testing.assert_array_equal(a, synth.synthesize(u, seed=1))
    assert a.dtype == np.float32 and np.abs(a).max() <= 1 and len(a) > 0.5 * 16000
    other = synth.synthesize(u._replace(voice="en+f2"), seed=1)
    assert len(other) != len(a) or not np.allclose(other, a)
    # a variant spelled as LANGUAGE+VARIANT changes the voice
    plain = synth.synthesize(u._replace(voice="en", snr_db=float("inf")), seed=1)
    varied = synth.synthesize(u._replace(voice="en+klatt", snr_db=float("inf")), seed=1)
    assert len(plain) != len(varied) or not np.allclose(plain, varied)


@needs_espeak
def test_every_variant_is_applied():
    # espeak-ng's variant names are case-sensitive file names; a wrong spelling (en+alex)
    # silently speaks the default voice
    import subprocess

    def wav(voice):
        cmd = [synth.espeak_binary(), "-v", voice, "--stdout", "one"]
        return subprocess.run(cmd, capture_output=True, check=True).stdout

    plain = wav("en")
    same = [v for v in synth.VARIANTS if wav(f"en+{v}") == plain]
    assert same == []


@needs_espeak
def test_a_shard_is_generated_once_and_cached(tmp_path, monkeypatch):
    pytest.importorskip("librosa")
    monkeypatch.setattr(synth, "SHARD_SIZE", 3)
    spec = dataclasses.replace(make_task("speech").spec, sizes=(("train", 3),))
    feats, texts, voices = synth.load_shard(spec, "train", 0, cache_dir=tmp_path)
    assert [len(t) for t in texts] == [len(utterance_plan(spec, "train", i).text) for i in range(3)]
    assert all(f.shape[1] == 40 and f.shape[0] > 50 for f in feats)
    (path,) = list(tmp_path.rglob("*.npz"))
    mtime = path.stat().st_mtime_ns
    again = synth.load_shard(spec, "train", 0, cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == mtime and again[1] == texts
    np.testing.assert_array_equal(again[0][0], feats[0])
    with pytest.raises(ValueError, match="shard must be in"):
        synth.load_shard(spec, "train", 5, cache_dir=tmp_path)
    assert SHARD_SIZE == 64


def test_training_batches_are_augmented_and_evaluation_batches_are_not(monkeypatch):
    import torch

    from carousel.tasks.speech import SpeechConfig

    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((100, 40)).astype(np.float32) for _ in range(SHARD_SIZE)]
    texts = ["123"] * SHARD_SIZE

    def batch(config, split):
        task = make_task("speech", config)
        monkeypatch.setattr(task, "_shard", lambda split, k: (feats, texts))
        return task.batch(split, 4, generator=torch.Generator().manual_seed(0)).inputs

    raw = batch(SpeechConfig(), "train")
    assert any(np.array_equal(raw[:, 0].numpy(), f) for f in feats)  # untouched
    aug = SpeechConfig(warp=0.1, tempo=0.1, freq_mask=8, time_mask=10)
    a = batch(aug, "train")
    assert not any(a.shape[0] == 100 and np.allclose(a[:, 0].numpy(), f) for f in feats)
    np.testing.assert_array_equal(a.numpy(), batch(aug, "train").numpy())  # seeded
    np.testing.assert_array_equal(batch(aug, "voices").numpy(), batch(SpeechConfig(), "voices"))


needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)"
)


def test_flite_voices_only_in_training_and_the_default_corpus_unchanged(monkeypatch):
    from carousel.tasks.speech import SpeechConfig, SpeechWordsConfig

    plain = SpeechWordsConfig().corpus()
    mixed = SpeechWordsConfig(flite=0.25).corpus()
    assert dataclasses.replace(plain, flite=0.0).digest() == plain.digest() != mixed.digest()
    train = [utterance_plan(mixed, "train", i) for i in range(200)]
    flite = [u for u in train if u.voice.startswith("flite:")]
    assert 30 <= len(flite) <= 70
    assert {u.voice.split(":")[1] for u in flite} == set(synth.FLITE_VOICES)
    for i, u in enumerate(train):  # the same utterances, some read by another synthesiser
        same = utterance_plan(plain, "train", i)
        assert u == same if not u.voice.startswith("flite:") else u.text == same.text
    for split in ("voices", "unseen_variants", "held_out_accent"):
        assert not any(utterance_plan(mixed, split, i).voice.startswith("flite") for i in range(50))
    with pytest.raises(ValueError, match=r"flite must be in \[0, 1\]"):
        SpeechConfig(flite=2.0)
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(synth.EspeakNotFoundError, match="apt-get install flite"):
        synth.flite_binary()


@needs_flite
def test_flite_synthesis_is_reproducible_and_follows_rate_and_pitch():
    spec = make_task("speech-words").spec
    u = utterance_plan(spec, "train", 0)._replace(voice="flite:awb", snr_db=float("inf"))
    a = synth.synthesize(u, seed=1)
    np.testing.assert_array_equal(a, synth.synthesize(u, seed=1))
    assert a.dtype == np.float32 and len(a) > 0.3 * 16000
    slow = synth.synthesize(u._replace(rate=120), seed=1)
    fast = synth.synthesize(u._replace(rate=220), seed=1)
    assert len(slow) > 1.3 * len(fast)
    assert not np.array_equal(synth.synthesize(u._replace(voice="flite:slt"), seed=1), a)
    with pytest.raises(ValueError, match="unknown Flite voice 'nope'"):
        synth.synthesize(u._replace(voice="flite:nope"))
