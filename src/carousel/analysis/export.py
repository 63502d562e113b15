"""Export of per-step states and gates to HDF5, in a layout LSTMVis reads.

LSTMVis (Strobelt et al. 2018, "LSTMVis: a tool for visual analysis of hidden state dynamics in
recurrent neural networks", IEEE TVCG 24(1)) reads one matrix ``(N, H)`` per layer, a row per
position of one long token sequence, plus a vector of ``N`` token ids and a ``.dict`` file that
maps ids to words. carousel's file holds every track, field and gate under named groups, with
LSTMVis's flat names as hard links to the same data (no copy).

The layout (format ``carousel-states``, version 1; docs/analysis.md has the full description)::

    /                        attrs: format, format_version, carousel_version, tracks (JSON)
    /offsets                 (B+1,) int64   sequence b is rows offsets[b]:offsets[b+1]
    /word_ids                (N,)   int64   token id at each row
    /states/<track>/<field>  (N, *) float32 state after each step (h; c for LSTM)
    /gates/<track>/<gate>    (N, H) float32 gate activations (i, f, g, o / r, z, n)
    /states<l>               LSTMVis alias: c of layer l (1-based, forward direction,
                             first carousel layer in the model), h if the cell has no c
    /output<l>               LSTMVis alias: h of layer l

Sequences are concatenated in batch order, each with its valid steps only (``lengths``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

import carousel
from carousel.analysis.record import LayerRecord, Recording

__all__ = ["FORMAT", "FORMAT_VERSION", "export_hdf5", "export_lstmvis", "read_hdf5"]

FORMAT = "carousel-states"
FORMAT_VERSION = 1


def _h5py() -> ModuleType:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "HDF5 export needs h5py: pip install 'carousel-rnn[analysis]' (or pip install h5py)"
        ) from None
    return h5py


def _tracks(data: Recording | dict[str, LayerRecord]) -> dict[str, LayerRecord]:
    if isinstance(data, Recording):
        return data.layers
    if isinstance(data, dict) and all(isinstance(v, LayerRecord) for v in data.values()):
        if not data:
            raise ValueError("export_hdf5: no tracks to export (empty dict)")
        return data
    raise TypeError(
        "export_hdf5: expected a Recording or a dict of LayerRecord (from carousel.analysis."
        f"record or traces), got {type(data).__name__}"
    )


def _lengths(tracks: dict[str, LayerRecord]) -> tuple[int, int, Tensor]:
    first = next(iter(tracks.values()))
    T, B = first.inputs.shape[:2]
    for name, lay in tracks.items():
        if lay.inputs.shape[:2] != (T, B):
            raise ValueError(
                f"export_hdf5: every track must have the same (T, B); {first.name} has "
                f"{(T, B)}, {name} has {tuple(lay.inputs.shape[:2])}"
            )
    if first.mask is None:
        return T, B, torch.full((B,), T, dtype=torch.long)
    return T, B, first.mask.sum(0).to(torch.long)


def _rows(z: Tensor, lengths: Tensor) -> np.ndarray:
    """``(T, B, *)`` -> ``(N, *)``: each sequence's valid steps, sequences in order."""
    parts = [z[: int(n), b] for b, n in enumerate(lengths)]
    return torch.cat(parts).detach().to("cpu", torch.float32).numpy()


def _token_ids(
    token_ids: Any, tracks: dict[str, LayerRecord], T: int, B: int, lengths: Tensor
) -> Tensor:
    if token_ids is None:
        # the bottom layer's input, read as one-hot (argmax); exact for one-hot inputs
        bottom = next(iter(tracks.values())).inputs
        return bottom.argmax(-1).cpu()
    ids = torch.as_tensor(token_ids).cpu()
    if ids.shape != (T, B) or ids.dtype.is_floating_point:
        raise ValueError(
            f"export_hdf5: token_ids must be an integer tensor of shape (T, B) = ({T}, {B}) "
            f"(time-major), got {tuple(ids.shape)} {ids.dtype}"
        )
    return ids.long()


def export_hdf5(
    data: Recording | dict[str, LayerRecord],
    path: str | Path,
    *,
    token_ids: Tensor | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write per-step states and gates to an HDF5 file (layout in the module docstring).

    Args:
        data: a :class:`~carousel.analysis.record.Recording` or the dict of
            :func:`~carousel.analysis.traces`.
        path: the file to write (parent folders are created).
        token_ids: ``(T, B)`` integer token ids (time-major), stored as ``/word_ids``;
            default: the argmax of the bottom layer's input at each step (one-hot inputs).
        attrs: extra root attributes (str, numbers).

    Returns:
        The path written.

    Raises:
        ImportError: if h5py is missing (``pip install 'carousel-rnn[analysis]'``).
        ValueError: if tracks disagree in ``(T, B)`` or ``token_ids`` has the wrong shape.
    """
    h5py = _h5py()
    tracks = _tracks(data)
    T, B, lengths = _lengths(tracks)
    ids = _token_ids(token_ids, tracks, T, B, lengths)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        name: {
            "module": lay.module_name,
            "layer": lay.layer,
            "direction": lay.direction,
            "fields": list(lay.field_names),
            "gates": list(lay.gates),
        }
        for name, lay in tracks.items()
    }
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["carousel_version"] = carousel.__version__
        f.attrs["tracks"] = json.dumps(meta)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        offsets = np.concatenate([[0], np.cumsum(lengths.numpy())]).astype(np.int64)
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("word_ids", data=_rows(ids.unsqueeze(-1), lengths)[:, 0].astype(np.int64))
        for name, lay in tracks.items():
            for field, z in lay.states.items():
                f.create_dataset(f"states/{name}/{field}", data=_rows(z, lengths))
            for gate, z in lay.gates.items():
                f.create_dataset(f"gates/{name}/{gate}", data=_rows(z, lengths))
        # LSTMVis's flat names: hard links into the first module's forward tracks
        first_module = next(iter(tracks.values())).module_name
        for name, lay in tracks.items():
            if lay.module_name != first_module or lay.direction != 0:
                continue
            cell = "c" if "c" in lay.states else "h"
            f[f"states{lay.layer + 1}"] = f[f"states/{name}/{cell}"]
            f[f"output{lay.layer + 1}"] = f[f"states/{name}/h"]
    return path


def read_hdf5(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`export_hdf5`.

    Returns:
        ``{"attrs": {...}, "tracks": {...}, "offsets": (B+1,), "word_ids": (N,),
        "states": {track: {field: (N, *)}}, "gates": {track: {gate: (N, H)}}}`` with numpy
        arrays.

    Raises:
        ImportError: if h5py is missing.
        ValueError: if the file is not in this format.
    """
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(
                f"read_hdf5: {path} is not a {FORMAT} file (format attribute "
                f"{f.attrs.get('format')!r})"
            )
        out: dict[str, Any] = {
            "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()},
            "offsets": f["offsets"][()],
            "word_ids": f["word_ids"][()],
            "states": {t: {k: g[k][()] for k in g} for t, g in f["states"].items()},
            "gates": {t: {k: g[k][()] for k in g} for t, g in f.get("gates", {}).items()},
        }
        out["tracks"] = json.loads(out["attrs"]["tracks"])
    return out


def _word(w: str) -> str:
    """LSTMVis splits dict lines on whitespace: make each word one visible token."""
    named = {" ": "<space>", "\n": "<nl>", "\t": "<tab>", "\r": "<cr>", "": "<empty>"}
    if w in named:
        return named[w]
    return re.sub(r"\s", "_", w)


def export_lstmvis(
    data: Recording | dict[str, LayerRecord],
    directory: str | Path,
    *,
    token_ids: Tensor | None = None,
    vocabulary: list[str] | None = None,
    name: str = "carousel",
    description: str = "states exported by carousel",
) -> Path:
    """Write a ready-to-serve LSTMVis project folder: ``states.hdf5`` (see
    :func:`export_hdf5`), ``words.dict`` and ``lstm.yml``.

    Args:
        data: a Recording or the dict of :func:`~carousel.analysis.traces`.
        directory: the project folder (created).
        token_ids: ``(T, B)`` token ids (default: argmax of the bottom layer's input).
        vocabulary: the word of each id (default: the ids as words).
        name, description: shown by LSTMVis.

    Returns:
        The folder.

    Raises:
        ImportError: if h5py is missing.
        ValueError: if an id has no word in ``vocabulary``.
    """
    directory = Path(directory)
    states = export_hdf5(data, directory / "states.hdf5", token_ids=token_ids)
    h5py = _h5py()
    with h5py.File(states, "r") as f:
        ids = f["word_ids"][()]
        layers = sorted(int(k[len("output") :]) for k in f if re.fullmatch(r"output\d+", k))
    top = int(ids.max()) + 1 if ids.size else 1
    if vocabulary is None:
        vocabulary = [str(i) for i in range(top)]
    elif len(vocabulary) < top:
        raise ValueError(
            f"export_lstmvis: vocabulary has {len(vocabulary)} words but the token ids reach "
            f"{top - 1}"
        )
    lines = [f"{_word(w)} {i}" for i, w in enumerate(vocabulary)]
    (directory / "words.dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
    types = []
    for l in layers:
        types.append(f"    {{type: state, layer: {l}, path: states{l}}}")
        types.append(f"    {{type: output, layer: {l}, path: output{l}}}")
    yml = "\n".join(
        [
            f"name: {json.dumps(name)}",
            f"description: {json.dumps(description)}",
            "files:",
            "  states: states.hdf5",
            "  words: words.dict",
            "word_sequence:",
            "  file: states",
            "  path: word_ids",
            "  dict_file: words",
            "states:",
            "  file: states",
            "  types: [",
            ",\n".join(types),
            "  ]",
            "",
        ]
    )
    (directory / "lstm.yml").write_text(yml, encoding="utf-8")
    return directory
