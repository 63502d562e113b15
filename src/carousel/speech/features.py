"""Log-mel filterbank features with per-utterance normalisation (computed with librosa)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np

__all__ = ["FeatureConfig", "augment", "log_mel", "require_librosa"]


def require_librosa() -> ModuleType:
    """Import librosa, or raise an ImportError that says how to install it."""
    try:
        import librosa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "carousel.speech needs librosa for its features: pip install 'carousel-rnn[speech]' "
            "(or pip install librosa)"
        ) from e
    return librosa


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank settings (defaults: 16 kHz, 25 ms windows every 10 ms, 40 bands)."""

    # sample rate the audio is resampled to (Hz)
    sample_rate: int = 16000
    # analysis window (samples; 400 = 25 ms at 16 kHz)
    win_length: int = 400
    # hop between frames (samples; 160 = 10 ms at 16 kHz)
    hop_length: int = 160
    # mel bands
    n_mels: int = 40
    # lowest and highest band edges (Hz; fmax 0 means the Nyquist frequency)
    fmin: float = 20.0
    fmax: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "win_length", "hop_length", "n_mels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"FeatureConfig: {name} must be a positive integer, got {v!r}")
        if self.hop_length > self.win_length:
            raise ValueError(
                f"FeatureConfig: hop_length ({self.hop_length}) must be <= win_length "
                f"({self.win_length})"
            )
        if not 0 <= self.fmin < (self.fmax or self.sample_rate / 2):
            raise ValueError(
                f"FeatureConfig: need 0 <= fmin < fmax, got fmin={self.fmin}, fmax={self.fmax}"
            )


@functools.lru_cache(maxsize=8)
def _mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    librosa = require_librosa()
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax or None)


def log_mel(
    audio: np.ndarray, config: FeatureConfig | None = None, *, normalize: bool = True
) -> np.ndarray:
    r"""Log-mel filterbank energies of one utterance, normalised per utterance.

    The power spectrogram of Hann-windowed frames (``win_length`` samples, FFT size the next
    power of two, every ``hop_length`` samples, centred; :func:`scipy.signal.stft`) is
    projected on ``n_mels`` triangular mel filters (Slaney's mel scale and area normalisation,
    ``librosa.filters.mel``), and
    :math:`\log(E + 10^{-6})` is taken. With ``normalize`` each band is shifted and scaled to
    zero mean and unit variance over the utterance (cepstral mean and variance normalisation,
    which removes the gain and the channel's fixed colouring).

    Args:
        audio: ``(N,)`` samples at ``config.sample_rate``.
        config: the settings (default :class:`FeatureConfig`).
        normalize: per-utterance mean and variance normalisation.

    Returns:
        float32 ``(1 + N // hop_length, n_mels)``.

    Raises:
        ValueError: audio that is not one-dimensional or not finite.
    """
    from scipy.signal import stft

    config = config or FeatureConfig()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel: audio must be one-dimensional (N,), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("log_mel: audio has NaN or infinite samples")
    n_fft = 1 << (config.win_length - 1).bit_length()
    fb = _mel_filters(config.sample_rate, n_fft, config.n_mels, config.fmin, config.fmax)
    pad = n_fft // 2
    x = np.pad(x, pad, mode="reflect" if len(x) > pad else "constant")
    _, _, spec = stft(
        x,
        window=("hann"),
        nperseg=config.win_length,
        noverlap=config.win_length - config.hop_length,
        nfft=n_fft,
        boundary=None,
        padded=False,
        scaling="spectrum",
    )
    # frames start every hop at the left edge; keep the 1 + N // hop centred ones
    power = np.abs(spec[:, : 1 + (len(x) - 2 * pad) // config.hop_length]) ** 2
    mel = fb @ (power * (0.5 * config.win_length) ** 2)
    feats = np.log(mel + 1e-6).T
    if normalize:
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
    return feats.astype(np.float32)


def _read_bands(x: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``x``'s bands read at the fractional band positions ``src`` (linear interpolation)."""
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, x.shape[1] - 1)
    frac = (src - lo).astype(np.float32)
    return x[:, lo] * (1 - frac) + x[:, hi] * frac


def augment(
    feats: np.ndarray,
    rng: np.random.Generator,
    *,
    warp: float = 0.0,
    tempo: float = 0.0,
    freq_mask: int = 0,
    time_mask: int = 0,
    masks: int = 2,
    formant_warp: float = 0.0,
) -> np.ndarray:
    r"""Randomly perturb the normalised log-mel features of one training utterance.

    In this order: a frequency warp (the band axis stretched by a factor :math:`a` drawn from
    :math:`[1 - w, 1 + w]`, read by linear interpolation at band :math:`m / a`: formants move
    up for :math:`a > 1`, as for a shorter vocal tract; Jaitly & Hinton 2013's vocal tract
    length perturbation, applied to the mel bands), a two-part warp (with ``formant_warp``
    :math:`v > 0`: the bands below a random knot :math:`k` in the lower half stretched by a
    factor from :math:`[1 - v, 1 + v]`, those above by what keeps the top band in place, so
    the first formant moves against the others and vowel qualities shift, as between
    accents), a tempo change (the frame axis resampled
    by a factor from :math:`[1 - t, 1 + t]`, linear interpolation), then SpecAugment's masks
    (Park et al. 2019): ``masks`` bands of up to ``freq_mask`` mel bands and ``masks`` spans of
    up to ``time_mask`` frames set to 0, the normalised mean.

    Args:
        feats: ``(T, n_mels)`` features.
        rng: the randomness.
        warp: :math:`w`, the largest relative frequency warp (0: none).
        tempo: :math:`t`, the largest relative tempo change (0: none).
        freq_mask: widest frequency mask in bands (0: none).
        time_mask: longest time mask in frames (0: none).
        masks: masks of each kind.
        formant_warp: :math:`v`, the largest relative stretch of the bands below the knot
            (0: none).

    Returns:
        float32 ``(T', n_mels)`` with ``T' = round(T / r)`` for the tempo factor ``r``.

    Raises:
        ValueError: a warp or tempo outside ``[0, 1)``, or negative mask sizes.
    """
    for name, v in (("warp", warp), ("tempo", tempo), ("formant_warp", formant_warp)):
        if not 0 <= v < 1:
            raise ValueError(f"augment: {name} must be in [0, 1), got {v}")
    for name, v in (("freq_mask", freq_mask), ("time_mask", time_mask), ("masks", masks)):
        if v < 0:
            raise ValueError(f"augment: {name} must be >= 0, got {v}")
    x = np.asarray(feats, dtype=np.float32)
    T, M = x.shape
    if warp > 0:
        a = rng.uniform(1 - warp, 1 + warp)
        x = _read_bands(x, np.clip(np.arange(M) / a, 0, M - 1))
    if formant_warp > 0:
        k = rng.uniform(0.2, 0.5) * (M - 1)
        a = rng.uniform(1 - formant_warp, 1 + formant_warp)
        x = _read_bands(x, np.interp(np.arange(M), [0, k * a, M - 1], [0, k, M - 1]))
    if tempo > 0 and T > 1:
        r = rng.uniform(1 - tempo, 1 + tempo)
        n = max(1, round(T / r))
        src = np.clip(np.arange(n) * r, 0, T - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, T - 1)
        frac = (src - lo).astype(np.float32)[:, None]
        x = x[lo] * (1 - frac) + x[hi] * frac
    if freq_mask or time_mask:
        x = x.copy()
        T = len(x)
        for _ in range(masks):
            if freq_mask:
                w = int(rng.integers(0, freq_mask + 1))
                f0 = int(rng.integers(0, M - w + 1))
                x[:, f0 : f0 + w] = 0
            if time_mask:
                w = min(int(rng.integers(0, time_mask + 1)), T)
                t0 = int(rng.integers(0, T - w + 1))
                x[t0 : t0 + w] = 0
    return x.astype(np.float32, copy=False)
