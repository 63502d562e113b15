"""Log-mel filterbank features with per-utterance normalisation (computed with librosa)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureConfig", "log_mel", "require_librosa"]


def require_librosa():
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
