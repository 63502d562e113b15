"""Reading and writing 16-bit PCM WAV audio, resampling, and the manifest format of a speech
corpus.

Manifest format (UTF-8 text, one utterance per line)::

    # comment lines and blank lines are ignored
    path/to/utterance1.wav<TAB>the transcript
    path/to/utterance2.wav<TAB>12345

A line is a path, one TAB character, and the transcript. A relative path is relative to the
manifest's folder. The transcript is kept as written (the task decides which characters it
accepts: digits for the digit task, lowercase letters and spaces for the words task).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ManifestEntry",
    "ManifestError",
    "read_manifest",
    "read_wav",
    "resample",
    "write_manifest",
    "write_wav",
]


class ManifestError(ValueError):
    """A manifest line that cannot be read (the message names the file and line)."""


def _parse_wav(data: bytes, name: str) -> tuple[np.ndarray, int]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"read_wav: {name} is not a RIFF/WAVE file")
    pos = 12
    fmt = None
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = pos + 8
        if cid == b"fmt ":
            if size < 16:
                raise ValueError(f"read_wav: {name}: fmt chunk of {size} bytes, expected >= 16")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                (tag,) = struct.unpack("<H", data[body + 24 : body + 26])
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise ValueError(f"read_wav: {name}: data chunk before the fmt chunk")
            tag, channels, rate, bits = fmt
            if tag != 1 or bits != 16:
                raise ValueError(
                    f"read_wav: {name}: expected 16-bit PCM (format tag 1, 16 bits), got "
                    f"format tag {tag} with {bits} bits"
                )
            if channels < 1 or rate < 1:
                raise ValueError(f"read_wav: {name}: bad header ({channels} channels, {rate} Hz)")
            # streamed WAVs (e.g. `espeak-ng --stdout`) carry a placeholder size: keep what is there
            raw = data[body : min(body + size, len(data))]
            n = len(raw) // (2 * channels)
            x = np.frombuffer(raw[: n * 2 * channels], dtype="<i2").reshape(n, channels)
            return (x.astype(np.float32) / 32768.0).mean(axis=1), rate
        pos = body + size + (size & 1)
    raise ValueError(f"read_wav: {name} has no data chunk")


def read_wav(
    source: str | os.PathLike | bytes, *, sample_rate: int | None = None
) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV file (any sample rate, mono or multichannel).

    Channels are averaged to mono; samples are scaled to ``[-1, 1)``. A data chunk whose
    declared size runs past the end of the file (a streamed WAV) is read to the end.

    Args:
        source: a path, or the file's bytes.
        sample_rate: resample to this rate (Hz) with :func:`resample`; ``None`` keeps the
            file's rate.

    Returns:
        ``(audio, rate)``: float32 array ``(N,)`` and its sample rate in Hz.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a WAV file, or not 16-bit PCM.
    """
    if isinstance(source, bytes | bytearray):
        data, name = bytes(source), "<bytes>"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"read_wav: no such file {str(path)!r}")
        data, name = path.read_bytes(), repr(str(path))
    audio, rate = _parse_wav(data, name)
    if sample_rate is not None and sample_rate != rate:
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    return audio, rate


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample with a polyphase filter (:func:`scipy.signal.resample_poly`, Kaiser window).

    Args:
        audio: ``(N,)`` samples.
        rate: their sample rate in Hz.
        target: the new rate in Hz.

    Returns:
        float32 ``(round(N * target / rate),)`` samples (up to one sample of rounding).

    Raises:
        ValueError: a rate that is not a positive integer.
    """
    from math import gcd

    from scipy.signal import resample_poly

    for arg, v in (("rate", rate), ("target", target)):
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"resample: {arg} must be a positive integer (Hz), got {v!r}")
    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    g = gcd(int(rate), int(target))
    return resample_poly(np.asarray(audio, dtype=np.float64), target // g, rate // g).astype(
        np.float32
    )


def write_wav(path: str | os.PathLike | io.BytesIO, audio: np.ndarray, rate: int) -> None:
    """Write mono float audio in ``[-1, 1]`` as a 16-bit PCM WAV file (clipped to range).

    Args:
        path: a file path or a binary buffer.
        audio: ``(N,)`` samples.
        rate: sample rate in Hz.
    """
    x = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 32767 / 32768)
    pcm = np.round(x * 32768).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    header += b"data" + struct.pack("<I", len(pcm))
    if isinstance(path, io.BytesIO):
        path.write(header + pcm)
    else:
        Path(path).write_bytes(header + pcm)


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest line: the WAV ``path`` (absolute) and its ``text``."""

    path: Path
    text: str


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> list[ManifestEntry]:
    """Read a manifest (see the module docstring for the format).

    Args:
        path: the manifest file.
        check_files: raise if a listed WAV file does not exist.

    Returns:
        The entries, in file order.

    Raises:
        FileNotFoundError: no manifest at ``path``.
        ManifestError: a line without a TAB, with an empty path or transcript, or naming a
            missing file; the message names the manifest and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_manifest: no such file {str(path)!r}")
    out = []
    for no, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{no}"
        if "\t" not in line:
            raise ManifestError(
                f"read_manifest: {where}: expected 'path<TAB>transcript', got {line!r} (no TAB)"
            )
        wav, text = line.split("\t", 1)
        wav, text = wav.strip(), text.strip()
        if not wav:
            raise ManifestError(f"read_manifest: {where}: empty path")
        if not text:
            raise ManifestError(f"read_manifest: {where}: empty transcript for {wav!r}")
        full = (path.parent / wav).resolve()
        if check_files and not full.is_file():
            raise ManifestError(f"read_manifest: {where}: no such WAV file {str(full)!r}")
        out.append(ManifestEntry(full, text))
    return out


def write_manifest(path: str | os.PathLike, entries: list[ManifestEntry]) -> None:
    """Write ``entries`` as a manifest, paths relative to its folder where possible."""
    path = Path(path)
    lines = ["# carousel speech manifest: path<TAB>transcript"]
    for e in entries:
        if "\t" in e.text or "\n" in e.text:
            raise ValueError(f"write_manifest: transcript {e.text!r} contains a TAB or newline")
        try:
            p = os.path.relpath(e.path, path.parent)
        except ValueError:
            p = str(e.path)
        lines.append(f"{p}\t{e.text}")
    path.write_text("\n".join(lines) + "\n", "utf-8")
