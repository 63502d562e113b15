"""WAV reading and writing, resampling, manifests and log-mel features."""

import io
import struct
import wave

import numpy as np
import pytest

from carousel.speech import (
    FeatureConfig,
    ManifestEntry,
    ManifestError,
    log_mel,
    read_manifest,
    read_wav,
    resample,
    write_manifest,
    write_wav,
)


def _tone(freq, rate, seconds=0.5, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_wav_round_trip_matches_the_stdlib_wave_module(tmp_path):
    x = _tone(440, 8000)
    write_wav(tmp_path / "a.wav", x, 8000)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and y.dtype == np.float32
    np.testing.assert_array_equal(y, pcm / 32768.0)
    assert np.abs(y - x).max() <= 1 / 32768


def test_stereo_is_averaged_and_streamed_sizes_are_tolerated(tmp_path):
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, -200, dtype="<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.stack([left, right], 1).tobytes())
    data = bytearray(buf.getvalue())
    y, rate = read_wav(bytes(data))
    assert rate == 22050 and len(y) == 100
    np.testing.assert_allclose(y, 400 / 32768)
    # a streamed WAV (espeak-ng --stdout) declares a data size past the end of the file
    pos = data.index(b"data") + 4
    data[pos : pos + 4] = struct.pack("<I", 0xFFFFFFFF)
    assert len(read_wav(bytes(data))[0]) == 100


def test_read_wav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="not a RIFF/WAVE"):
        read_wav(b"hello world, not audio")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)  # 8-bit
        w.setframerate(8000)
        w.writeframes(bytes(10))
    with pytest.raises(ValueError, match="expected 16-bit PCM"):
        read_wav(buf.getvalue())


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_keeps_the_tone(rate, tmp_path):
    write_wav(tmp_path / "t.wav", _tone(1000, rate), rate)
    y, r = read_wav(tmp_path / "t.wav", sample_rate=16000)
    assert r == 16000 and abs(len(y) - 8000) <= 1
    spectrum = np.abs(np.fft.rfft(y[1000:-1000]))
    peak = np.argmax(spectrum) * 16000 / (2 * ((len(y) - 2000) // 2))
    assert abs(peak - 1000) < 5
    assert abs(np.abs(y[1000:-1000]).max() - 0.5) < 0.02
    with pytest.raises(ValueError, match="target must be a positive integer"):
        resample(y, 16000, 0)


def test_manifest_round_trip_and_errors(tmp_path):
    (tmp_path / "wavs").mkdir()
    for n in ("a", "b"):
        write_wav(tmp_path / "wavs" / f"{n}.wav", _tone(300, 16000, 0.1), 16000)
    entries = [
        ManifestEntry(tmp_path / "wavs" / "a.wav", "123"),
        ManifestEntry(tmp_path / "wavs" / "b.wav", "hello world"),
    ]
    write_manifest(tmp_path / "m.tsv", entries)
    assert "wavs/a.wav\t123" in (tmp_path / "m.tsv").read_text()
    assert read_manifest(tmp_path / "m.tsv") == [
        ManifestEntry(e.path.resolve(), e.text) for e in entries
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("# ok\n\nwavs/a.wav 123\n")
    with pytest.raises(ManifestError, match=r"bad.tsv:3: expected 'path<TAB>transcript'"):
        read_manifest(bad)
    bad.write_text("wavs/a.wav\t  \n")
    with pytest.raises(ManifestError, match=r"bad.tsv:1: empty transcript"):
        read_manifest(bad)
    bad.write_text("wavs/nope.wav\t12\n")
    with pytest.raises(ManifestError, match=r"bad.tsv:1: no such WAV file"):
        read_manifest(bad)
    assert len(read_manifest(bad, check_files=False)) == 1
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "none.tsv")


def test_log_mel_shapes_and_normalisation():
    pytest.importorskip("librosa")
    x = _tone(500, 16000, 1.0) + 0.01 * np.random.default_rng(0).standard_normal(16000)
    f = log_mel(x)
    assert f.shape == (1 + 16000 // 160, 40) and f.dtype == np.float32
    np.testing.assert_allclose(f.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(f.std(0), 1, atol=1e-3)
    # normalisation removes the gain
    np.testing.assert_allclose(log_mel(0.5 * x), f, atol=0.05)
    # the 500 Hz band carries the energy
    raw = log_mel(x, normalize=False)
    cfg = FeatureConfig()
    import librosa

    centres = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.sample_rate / 2)
    assert abs(centres[1 + int(raw.mean(0).argmax())] - 500) < 60
    f2 = log_mel(x, FeatureConfig(n_mels=24, hop_length=100))
    assert f2.shape == (161, 24)
    with pytest.raises(ValueError, match="one-dimensional"):
        log_mel(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="hop_length"):
        FeatureConfig(hop_length=500)


def test_augment_warps_stretches_and_masks():
    from carousel.speech.features import augment

    rng = np.random.default_rng(0)
    x = np.zeros((100, 40), dtype=np.float32)
    x[:, 10] = 1.0  # one band carries the energy
    np.testing.assert_array_equal(augment(x, rng), x)  # nothing asked: unchanged
    # a warp of the band axis moves the energy to a higher band for factors > 1
    peaks = {
        int(augment(x, np.random.default_rng(s), warp=0.3).mean(0).argmax()) for s in range(20)
    }
    assert min(peaks) < 10 < max(peaks) and all(7 <= p <= 14 for p in peaks)
    # the two-part warp moves a low band against the top band, which stays in place
    y = np.zeros((5, 40), dtype=np.float32)
    y[:, 6], y[:, 39] = 1.0, 2.0
    moved = [augment(y, np.random.default_rng(s), formant_warp=0.2) for s in range(20)]
    low = {int(m[:, :30].mean(0).argmax()) for m in moved}
    assert min(low) < 6 < max(low) and all(4 <= p <= 8 for p in low)
    assert all(m[0, 39] == 2.0 for m in moved)
    # tempo changes the number of frames by up to the factor
    lens = {len(augment(x, np.random.default_rng(s), tempo=0.2)) for s in range(20)}
    assert min(lens) < 100 < max(lens) and all(80 <= n <= 126 for n in lens)
    # masks zero whole bands and spans, and are reproducible from the generator
    y = np.ones((100, 40), dtype=np.float32)
    m = augment(y, np.random.default_rng(1), freq_mask=8, time_mask=20)
    assert m.shape == y.shape and 0 < (m == 0).mean() < 0.5
    np.testing.assert_array_equal(
        m, augment(y, np.random.default_rng(1), freq_mask=8, time_mask=20)
    )
    with pytest.raises(ValueError, match=r"warp must be in \[0, 1\)"):
        augment(x, rng, warp=1.5)
    with pytest.raises(ValueError, match=r"formant_warp must be in \[0, 1\)"):
        augment(x, rng, formant_warp=-0.1)
    with pytest.raises(ValueError, match="time_mask must be >= 0"):
        augment(x, rng, time_mask=-1)
