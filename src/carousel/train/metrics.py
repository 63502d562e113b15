"""Metrics of a run: JSON lines, CSV, TensorBoard (if installed) and a loss-curve plot.

Files in the run directory:

- ``metrics.jsonl``: one JSON object per record, ``{"kind": "train", "step": 10, "loss": ...}``
  for training steps and ``{"kind": "eval", "step": 250, "split": "valid", ...}`` for
  evaluations;
- ``train.csv`` and ``eval.csv``: the same records as tables (columns fixed by the first
  record of each kind);
- ``tensorboard/``: event files, when the ``tensorboard`` package is installed
  (``pip install carousel-rnn[tensorboard]``);
- ``loss.png``: :func:`plot_metrics`.

When a run resumes from step ``k``, records after ``k`` (written after the checkpoint, before the
interruption) are dropped, so the files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carousel.train.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["MetricsLogger", "plot_metrics", "read_metrics"]

log = logging.getLogger("carousel.train")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (empty if absent); a damaged last line
    (an interrupted write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf": keep the file strict JSON
    return v


class MetricsLogger:
    """Writes metric records of one run (only the process that logs creates it).

    Args:
        run_dir: the run directory.
        tensorboard: ``"auto"`` (write event files if the package is installed), ``"on"``
            or ``"off"``.
        resume_step: keep only the records up to this step (a resumed run); ``None`` starts
            the files afresh.

    Raises:
        ImportError: with ``tensorboard="on"`` when the package is not installed.
    """

    def __init__(
        self, run_dir: str | Path, *, tensorboard: str = "auto", resume_step: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._tb = self._open_tensorboard(tensorboard)
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= resume_step]
        atomic_write_text(
            self.run_dir / "metrics.jsonl",
            "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in kept),
        )
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._csv: dict[str, tuple[Any, csv.DictWriter, list[str]]] = {}
        for kind in ("train", "eval"):
            (self.run_dir / f"{kind}.csv").unlink(missing_ok=True)
        for r in kept:
            self._write_csv(r)

    def _open_tensorboard(self, mode: str) -> SummaryWriter | None:
        if mode == "off":
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode == "on":
                raise ImportError(
                    "log.tensorboard = 'on' needs the tensorboard package: "
                    "pip install 'carousel-rnn[tensorboard]' (or set log.tensorboard = 'off')"
                ) from None
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _write_csv(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind", "train")
        if kind not in ("train", "eval"):
            return
        if kind not in self._csv:
            path = self.run_dir / f"{kind}.csv"
            columns = [k for k in record if k != "kind"]
            f = open(path, "w", newline="", encoding="utf-8")
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            self._csv[kind] = (f, writer, columns)
        f, writer, _ = self._csv[kind]
        writer.writerow({k: v for k, v in record.items() if k != "kind"})
        f.flush()

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (``kind``, ``step`` and numbers) to every output."""
        self._jsonl.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        self._jsonl.flush()
        self._write_csv(record)
        if self._tb is not None:
            kind, step = record.get("kind", "train"), int(record.get("step", 0))
            prefix = f"eval/{record['split']}" if kind == "eval" else "train"
            for k, v in record.items():
                if k not in ("kind", "step", "split") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        self._jsonl.close()
        for f, _, _ in self._csv.values():
            f.close()
        self._csv.clear()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _series(
    records: Iterable[Mapping[str, Any]], key: str, **match: Any
) -> tuple[list[Any], list[float]]:
    xs, ys = [], []
    for r in records:
        if all(r.get(k) == v for k, v in match.items()) and isinstance(r.get(key), (int, float)):
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def plot_metrics(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    metric: str = "accuracy",
) -> Path:
    """Save a PNG with the loss curve (training loss, smoothed, and evaluation losses) and,
    beside it, ``metric`` on each evaluated split.

    Args:
        records: :func:`read_metrics` output.
        path: the PNG file to write.
        title: the figure's title.
        metric: the metric of the second panel.

    Returns:
        ``path``.

    Raises:
        ImportError: if matplotlib is not installed (``pip install 'carousel-rnn[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib: pip install 'carousel-rnn[plot]' (or set log.plot = false)"
        ) from None
    path = Path(path)
    splits = sorted({r["split"] for r in records if r.get("kind") == "eval" and "split" in r})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    xs, ys = _series(records, "loss", kind="train")
    if xs:
        ax.plot(xs, ys, color="0.75", lw=0.8, label="train (per step)")
        window = max(1, len(ys) // 50)
        if window > 1:
            smooth = []
            for i in range(len(ys)):
                part = ys[max(0, i - window + 1) : i + 1]
                smooth.append(sum(part) / len(part))
            ax.plot(xs, smooth, color="C0", lw=1.5, label=f"train (mean of {window})")
    for k, split in enumerate(splits):
        ex, ey = _series(records, "loss", kind="eval", split=split)
        if ex:
            ax.plot(ex, ey, "o-", color=f"C{k + 1}", ms=3, label=f"{split}")
    if any(y > 0 for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    xs, ys = _series(records, metric, kind="train")
    if xs:
        ax.plot(xs, ys, color="0.75", lw=0.8, label="train batch")
    for k, split in enumerate(splits):
        ex, ey = _series(records, metric, kind="eval", split=split)
        if ex:
            ax.plot(ex, ey, "o-", color=f"C{k + 1}", ms=3, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
