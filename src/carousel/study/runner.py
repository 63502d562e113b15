"""``carousel study long-lag``: a grid of runs (model x task x T x seed) under a time budget, in
parallel processes, resumable, summarised as a Markdown + JSON table and a plot of success rate
against T per model.

Every finished cell is written at once to ``OUT/cells/<cell>.json`` (temporary file, then
rename), so an interrupted study loses only the cells in flight; running the same command
again skips the cells already on disk whose settings match and runs the rest. Cells cut off by
the study's overall time budget are not written and run on the next invocation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from carousel.study.models import get_model_spec
from carousel.study.tasks import make_study_task, study_task_names, task_has_lag
from carousel.study.train import train_until_solved

__all__ = [
    "PRESETS",
    "Cell",
    "StudyConfig",
    "load_results",
    "run_study",
    "summarise",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    model: str
    task: str
    T: int | None
    seed: int

    @property
    def key(self) -> str:
        """File-name-safe identifier, e.g. ``lstm__adding-1997__T100__s0``."""
        return f"{self.model}__{self.task}__T{self.T}__s{self.seed}"


@dataclass(frozen=True)
class StudyConfig:
    """A study grid and its budgets.

    Attributes:
        models: model names (:data:`carousel.study.models.MODELS`).
        tasks: task names (:func:`carousel.study.tasks.study_task_names`).
        lags: the values of ``T``; tasks without a lag (the embedded Reber grammar) run once
            with ``T = None``.
        seeds: seeds ``0 .. seeds - 1`` per (model, task, T).
        max_sequences: training-sequence budget of one run.
        cell_seconds: time budget of one run (``inf`` for none).
        time_budget: time budget of the whole study in seconds (``inf`` for none); cells not
            finished by then are left for the next invocation.
        workers: parallel processes (each with one thread).
        test_size: fresh test sequences per run.
        overrides: per-model field overrides, ``{"lstm": {"hidden_size": 16}}``.
    """

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    lags: tuple[int, ...]
    seeds: int = 3
    max_sequences: int = 100_000
    cell_seconds: float = math.inf
    time_budget: float = math.inf
    workers: int = 1
    test_size: int = 2560
    overrides: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.models:
            get_model_spec(m, **self.overrides.get(m, {}))
        for t in self.tasks:
            if t not in study_task_names():
                raise ValueError(
                    f"StudyConfig: unknown task {t!r}; expected one of {study_task_names()}"
                )
        for t in self.tasks:  # every lag each task is asked for must make that task
            for T in self.lags if task_has_lag(t) else ():
                try:
                    make_study_task(t, T)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"StudyConfig: task {t!r} at T={T!r}: {e}") from None
        for name in self.overrides:
            if name not in self.models:
                raise ValueError(
                    f"StudyConfig: overrides name model {name!r}, which is not in models "
                    f"{list(self.models)}"
                )
        if self.seeds < 1 or self.workers < 1:
            raise ValueError(
                f"StudyConfig: seeds and workers must be >= 1, got {self.seeds} and {self.workers}"
            )

    def cells(self) -> list[Cell]:
        """The grid, cheapest lags first."""
        out = []
        for task in self.tasks:
            lags = (None,) if not task_has_lag(task) else self.lags
            for T in sorted(lags, key=lambda v: -1 if v is None else v):
                for model in self.models:
                    for seed in range(self.seeds):
                        out.append(Cell(model, task, T, seed))
        return out

    def settings(self, cell: Cell) -> dict:
        """Everything that determines a cell's result (hashed to detect stale files)."""
        spec = get_model_spec(cell.model, **self.overrides.get(cell.model, {}))
        task = make_study_task(cell.task, cell.T)
        return {
            "model": spec.to_dict(),
            "task": {"name": task.name, **asdict(task)},
            "seed": cell.seed,
            "max_sequences": self.max_sequences,
            "cell_seconds": self.cell_seconds,
            "test_size": self.test_size,
        }


#: Named grids. ``default`` is the adding-problem grid of docs/results.md (minus ``rnn-adam``):
#: about 10-20 minutes on 2 idle cores; ``quick`` tells the same story in a few minutes.
PRESETS: dict[str, dict] = {
    "default": dict(
        models=("delay-tap", "rnn-sgd", "lstm", "gru"),
        tasks=("adding-1997",),
        lags=(12, 25, 50, 100),
        seeds=3,
        max_sequences=150_000,
    ),
    "quick": dict(
        models=("delay-tap", "rnn-adam", "lstm"),
        tasks=("adding-1997",),
        lags=(12, 25, 50),
        seeds=1,
        max_sequences=60_000,
    ),
}


def _hash(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: object) -> str:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _cell_path(out_dir: Path, cell: Cell) -> Path:
    return out_dir / "cells" / f"{cell.key}.json"


def _load_cell(path: Path, digest: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("settings_hash") == digest else None


def _watch_parent(parent: int) -> None:
    """Worker initialiser: exit when the study process is gone (killed or interrupted), so
    no orphaned worker keeps training; the cell it was running is simply not written."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="carousel-study-watchdog").start()


def _run_cell(
    cell: Cell, settings: dict, digest: str, config: StudyConfig, deadline: float, out: str
) -> dict:
    """Worker: one run, written atomically unless interrupted by the deadline."""
    torch.set_num_threads(1)
    if time.time() > deadline:
        return {"cell": asdict(cell), "status": "interrupted"}
    spec = get_model_spec(cell.model, **config.overrides.get(cell.model, {}))
    task = make_study_task(cell.task, cell.T)
    result = train_until_solved(
        spec,
        task,
        seed=cell.seed,
        max_sequences=config.max_sequences,
        max_seconds=config.cell_seconds,
        deadline=deadline,
        test_size=config.test_size,
    )
    data = {
        "cell": asdict(cell),
        **result.to_dict(),
        "settings_hash": digest,
        "settings": settings,
    }
    if result.status != "interrupted":
        _write_atomic(_cell_path(Path(out), cell), data)
    return data


def run_study(
    config: StudyConfig,
    out_dir: str | os.PathLike,
    *,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the cells of ``config`` not yet on disk, then write the report.

    Args:
        config: the grid and budgets.
        out_dir: the study's folder (``cells/``, ``results.json``, ``results.md``,
            ``success_vs_T.png``).
        on_result: called with each finished cell's record (for progress output).

    Returns:
        The records of all cells of the grid found on disk after the run.
    """
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    deadline = time.time() + config.time_budget if math.isfinite(config.time_budget) else math.inf
    todo = []
    for cell in config.cells():
        settings = config.settings(cell)
        digest = _hash(settings)
        if _load_cell(_cell_path(out, cell), digest) is None:
            todo.append((cell, settings, digest))
    log.info("study: %d cells, %d to run, %d workers", len(config.cells()), len(todo),
             config.workers)  # fmt: skip
    if config.workers == 1 or len(todo) <= 1:
        for cell, settings, digest in todo:
            rec = _run_cell(cell, settings, digest, config, deadline, str(out))
            if on_result is not None:
                on_result(rec)
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=config.workers, mp_context=ctx, initializer=_watch_parent,
            initargs=(os.getpid(),),
        ) as pool:  # fmt: skip
            pending = {
                pool.submit(_run_cell, cell, settings, digest, config, deadline, str(out))
                for cell, settings, digest in todo
            }
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    rec = fut.result()
                    if on_result is not None:
                        on_result(rec)
    records = load_results(config, out)
    write_report(config, records, out)
    return records


def load_results(config: StudyConfig, out_dir: str | os.PathLike) -> list[dict]:
    """The records of the grid's cells found on disk with matching settings."""
    out = Path(out_dir)
    records = []
    for cell in config.cells():
        rec = _load_cell(_cell_path(out, cell), _hash(config.settings(cell)))
        if rec is not None:
            records.append(rec)
    return records


def summarise(config: StudyConfig, records: Sequence[dict]) -> list[dict]:
    """One row per (task, model, T): runs, solved, success rate, median sequences to the
    criterion (solved runs), mean test error rate and median seconds.

    Rows for cells not yet run report ``runs`` below ``seeds``.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        c = rec["cell"]
        groups.setdefault((c["task"], c["model"], c["T"]), []).append(rec)
    rows = []
    for task in config.tasks:
        lags = (None,) if not task_has_lag(task) else sorted(config.lags)
        for model in config.models:
            for T in lags:
                recs = groups.get((task, model, T), [])
                solved = [r for r in recs if r["solved"]]
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "T": T,
                        "runs": len(recs),
                        "seeds": config.seeds,
                        "solved": len(solved),
                        "success_rate": len(solved) / len(recs) if recs else None,
                        "median_sequences": (
                            int(statistics.median(r["sequences"] for r in solved))
                            if solved
                            else None
                        ),
                        "test_error": (
                            statistics.fmean(r["test_wrong"] / r["test_size"] for r in recs)
                            if recs
                            else None
                        ),
                        "median_seconds": (
                            round(statistics.median(r["seconds"] for r in recs), 1)
                            if recs
                            else None
                        ),
                        "diverged": sum(r["status"] == "diverged" for r in recs),
                    }
                )
    return rows


def machine() -> dict:
    """Where the numbers were measured."""
    return {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _markdown(config: StudyConfig, rows: list[dict]) -> str:
    lines = []
    for task in config.tasks:
        cls = make_study_task(task, config.lags[0] if task_has_lag(task) else None)
        lines.append(f"### {task}")
        lines.append("")
        lines.append(f"{cls.source}. Success test: {cls.criterion}.")
        paper = getattr(cls, "paper_results", "")
        if paper:
            lines.append(f"Paper: {paper}.")
        lines.append("")
        lines.append("| model | T | solved / runs | median sequences to criterion | test error |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in rows:
            if r["task"] != task:
                continue
            seq = f"{r['median_sequences']:,}" if r["median_sequences"] is not None else "-"
            err = f"{100 * r['test_error']:.1f}%" if r["test_error"] is not None else "-"
            runs = f"{r['solved']} / {r['runs']}" + (
                f" ({r['seeds'] - r['runs']} not run)" if r["runs"] < r["seeds"] else ""
            )
            T = "-" if r["T"] is None else r["T"]
            lines.append(f"| {r['model']} | {T} | {runs} | {seq} | {err} |")
        lines.append("")
    lines.append(
        f"Budget per run: {config.max_sequences:,} training sequences"
        + (f" or {config.cell_seconds:g} s" if math.isfinite(config.cell_seconds) else "")
        + f"; {config.test_size} test sequences per run."
    )
    return "\n".join(lines) + "\n"


def write_report(
    config: StudyConfig, records: Sequence[dict], out_dir: str | os.PathLike
) -> list[dict]:
    """Write ``results.json``, ``results.md`` and (with matplotlib) ``success_vs_T.png``.

    Returns:
        The summary rows.
    """
    out = Path(out_dir)
    rows = summarise(config, records)
    cfg = asdict(config)
    _write_atomic(
        out / "results.json",
        {"config": cfg, "machine": machine(), "rows": rows, "runs": list(records)},
    )
    (out / "results.md").write_text(_markdown(config, rows))
    try:
        plot_success(config, rows, out / "success_vs_T.png")
    except ImportError:
        log.warning("study: matplotlib is not installed; no plot (pip install matplotlib)")
    return rows


def plot_success(config: StudyConfig, rows: list[dict], path: str | os.PathLike) -> None:
    """Success rate (top) and test error rate (bottom) against T, one line per model, one
    column per task with a lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in config.tasks if task_has_lag(t)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 6.4), squeeze=False)
    lags = sorted(config.lags)
    for col, task in enumerate(tasks):
        for model in config.models:
            mine = sorted(
                (r for r in rows if r["task"] == task and r["model"] == model and r["runs"]),
                key=lambda r: r["T"],
            )
            if not mine:
                continue
            xs = [r["T"] for r in mine]
            # its own marker and line per model, and on the success panel a small vertical
            # offset, so that equal curves stay visible
            k = config.models.index(model)
            dy = 0.015 * (k - (len(config.models) - 1) / 2)
            style = dict(marker="osD^v<>ph*"[k % 10], linestyle=("-", "--", ":", "-.")[k % 4])
            ys = [r["success_rate"] + dy for r in mine]
            axes[0][col].plot(xs, ys, label=model, **style)
            axes[1][col].plot(xs, [r["test_error"] for r in mine], label=model, **style)
        axes[0][col].set_title(task)
        axes[0][col].set_ylabel("fraction of seeds solved (offset per model)")
        axes[1][col].set_ylabel("fraction of test sequences wrong")
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_ylim(-0.05, 1.05)
            ax.set_xscale("log")
            ax.set_xticks(lags)
            ax.set_xticklabels([str(v) for v in lags])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        axes[1][col].set_xlabel("T (minimal time lag parameter)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
