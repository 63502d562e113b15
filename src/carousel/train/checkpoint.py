"""Checkpoints: a directory of safetensors files and one JSON file, written atomically.

A checkpoint is a directory ``<run>/step-NNNNNN/`` holding

- ``model.safetensors``: the model's ``state_dict``;
- ``optimizer.safetensors``: the tensors of the optimizer's state;
- ``state.safetensors``: random number generator states (``uint8`` tensors) and the training
  loop's own tensors (the state carried across a stream by truncated BPTT);
- ``checkpoint.json``: a format marker, the step, the config, the metrics, the non-tensor parts
  of the optimizer and loop state, versions, and the SHA-256 of every file above.

Nothing is pickled, so loading a checkpoint cannot run code. A checkpoint is written into a
temporary sibling directory, each file flushed to disk (``fsync``), and renamed into place
(``os.replace``); ``<run>/last`` (a symbolic link, or a one-line file where links are not
available) is then swapped atomically to point at it. A crash at any moment leaves either the
old or the new checkpoint, never half of one. Damaged files (checksum mismatch, truncated,
unreadable) and foreign ones (no ``checkpoint.json`` with carousel's format marker, a pickle
``.pt`` file) raise :class:`CheckpointError` saying which.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "carousel-checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or not carousel's."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the checkpoint directory.
        step: updates done when it was written.
        config: the run's config as plain data (see :func:`carousel.train.config_from_dict`).
        model: the model's ``state_dict``.
        optimizer: the optimizer's ``state_dict`` (``None`` if not saved).
        tensors: further tensors (RNG states ``rng.*``, the loop's ``carry.*``).
        meta: everything else from ``checkpoint.json`` (metrics, loop state, versions).
    """

    path: Path
    step: int
    config: dict[str, Any]
    model: dict[str, Tensor]
    optimizer: dict[str, Any] | None = None
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})


# ---------------------------------------------------------------------------- nested data


def _flatten(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON skeleton of ``obj`` with its tensors moved into ``tensors``."""
    if isinstance(obj, Tensor):
        key = prefix
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"cannot checkpoint a mapping key of type {type(k).__name__}")
            out[str(k)] = _flatten(v, f"{prefix}.{k}", tensors)
        keys = {"__int_keys__": [str(k) for k in obj if isinstance(k, int)]}
        return {"__dict__": out, **keys} if keys["__int_keys__"] else {"__dict__": out}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot checkpoint {prefix}: {type(obj).__name__} is neither a tensor nor plain data"
    )


def _unflatten(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            ints = set(obj.get("__int_keys__", ()))
            return {
                (int(k) if k in ints else k): _unflatten(v, tensors)
                for k, v in obj["__dict__"].items()
            }
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- writing


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_tensors(tensors: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_json(data: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; use the usual mode
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _point_last(run_dir: Path, name: str) -> None:
    last = run_dir / "last"
    tmp = run_dir / f".last.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(name, tmp, target_is_directory=True)
        os.replace(tmp, last)
    except OSError:  # no symbolic links here (some Windows set-ups): a one-line file
        tmp.unlink(missing_ok=True)
        if last.is_symlink():
            last.unlink()
        atomic_write_text(last, name + "\n")
    _fsync_dir(run_dir)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, Tensor],
    config: dict[str, Any],
    optimizer: dict[str, Any] | None = None,
    tensors: Mapping[str, Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
    keep: int = 0,
) -> Path:
    """Write a checkpoint atomically and point ``<run_dir>/last`` at it.

    Args:
        run_dir: the run directory (created if needed).
        step: updates done; the checkpoint goes to ``step-NNNNNN``.
        model: a ``state_dict``.
        config: the config as plain data.
        optimizer: an optimizer's ``state_dict`` (tensors and plain data).
        tensors: further named tensors (RNG states, carried state).
        meta: further JSON data (metrics, loop state).
        keep: keep only the newest ``keep`` step directories (0: all).

    Returns:
        The checkpoint directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    final = run_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=run_dir))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        model_t = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.items()}
        _save_tensors(model_t, tmp / "model.safetensors", {"format": FORMAT})
        opt_tensors: dict[str, Tensor] = {}
        opt_json = _flatten(optimizer, "optimizer", opt_tensors) if optimizer is not None else None
        _save_tensors(opt_tensors, tmp / "optimizer.safetensors", {"format": FORMAT})
        state_t = {k: v.detach().to("cpu").contiguous().clone() for k, v in (tensors or {}).items()}
        _save_tensors(state_t, tmp / "state.safetensors", {"format": FORMAT})
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "carousel_version": _carousel_version(),
            "torch_version": torch.__version__,
            "config": config,
            "optimizer": opt_json,
            **dict(meta or {}),
            "files": {f: _sha256(tmp / f) for f in _FILES},
        }
        _write_json(doc, tmp / "checkpoint.json")
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = run_dir / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_last(run_dir, name)
    _clean(run_dir, keep)
    return final


def _carousel_version() -> str:
    import carousel

    return carousel.__version__


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``step-NNNNNN`` checkpoint directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / "checkpoint.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _clean(run_dir: Path, keep: int) -> None:
    for p in run_dir.iterdir():  # leftovers of interrupted writes
        if p.name.startswith(".step-") and (".tmp-" in p.name or ".old-" in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    if keep <= 0:
        return
    current = latest_checkpoint(run_dir)
    for p in list_checkpoints(run_dir)[:-keep]:
        if current is None or p.resolve() != current.resolve():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- reading


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``<run_dir>/last`` points to, or ``None`` if the run has none."""
    last = Path(run_dir) / "last"
    if not last.exists() and not last.is_symlink():
        return None
    return resolve_checkpoint(last)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: a ``step-*`` directory, a ``last`` link or
    file, or a run directory (its ``last``).

    Raises:
        CheckpointError: if there is no checkpoint there, or the path is some other file.
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise CheckpointError(f"{p} points to {os.readlink(p)!r}, which does not exist")
    if p.is_symlink():
        p = p.parent / os.readlink(p)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: no such file or directory")
    if p.is_dir():
        if (p / "checkpoint.json").is_file():
            return p
        if (p / "last").exists() or (p / "last").is_symlink():
            return resolve_checkpoint(p / "last")
        raise CheckpointError(
            f"{p} is not a carousel checkpoint: it holds no checkpoint.json (a checkpoint is a "
            "step-NNNNNN directory written by `carousel train`; a run directory holds a 'last' "
            "link to one)"
        )
    # a file: `last` written as a one-line pointer, or something foreign
    if p.name == "last" and p.stat().st_size < 256:
        try:
            target = p.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            target = ""
        if _STEP_DIR.match(target):
            return resolve_checkpoint(p.parent / target)
    hint = ""
    if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        hint = "; carousel never loads pickle files, so that loading cannot run code"
    raise CheckpointError(
        f"{p} is a file, not a carousel checkpoint (a step-NNNNNN directory with "
        f"checkpoint.json and safetensors files){hint}"
    )


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is damaged or not a safetensors file: {e}") from None


def load_checkpoint(path: str | os.PathLike[str], *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (tensors on the CPU).

    Args:
        path: a checkpoint directory, a run directory or its ``last`` link.
        verify: check every file's SHA-256 against ``checkpoint.json``.

    Raises:
        CheckpointError: missing, damaged (checksum, truncation, bad JSON) or foreign files.
    """
    ckpt_dir = resolve_checkpoint(path)
    doc_path = ckpt_dir / "checkpoint.json"
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{doc_path} is damaged: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f'{doc_path} is not a carousel checkpoint (expected "format": "{FORMAT}")'
        )
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise CheckpointError(
            f"{doc_path} has format version {doc.get('version')!r}; this carousel reads up to "
            f"{VERSION} (upgrade carousel)"
        )
    files = doc.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{doc_path} is damaged: it lists no files")
    for name in _FILES:
        if not (ckpt_dir / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete: {name} is missing")
    for name in _FILES:
        f = ckpt_dir / name
        if verify and _sha256(f) != files.get(name):
            raise CheckpointError(
                f"checkpoint {ckpt_dir} is damaged: {name} does not match its checksum in "
                "checkpoint.json (changed or truncated after it was written)"
            )
    model = _load_tensors(ckpt_dir / "model.safetensors")
    opt_tensors = _load_tensors(ckpt_dir / "optimizer.safetensors")
    tensors = _load_tensors(ckpt_dir / "state.safetensors")
    optimizer = None
    if doc.get("optimizer") is not None:
        try:
            optimizer = _unflatten(doc["optimizer"], opt_tensors)
        except KeyError as e:
            raise CheckpointError(
                f"checkpoint {ckpt_dir} is damaged: optimizer tensor {e} is missing"
            ) from None
    step = doc.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{doc_path} is damaged: step is {step!r}")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{doc_path} is damaged: it holds no config")
    meta = {k: v for k, v in doc.items() if k not in ("config", "optimizer", "files")}
    return Checkpoint(
        path=ckpt_dir,
        step=step,
        config=doc["config"],
        model=model,
        optimizer=optimizer,
        tensors=tensors,
        meta=meta,
    )
