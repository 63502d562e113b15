"""The long-lag study: models, the training run, the grid runner (atomic cells, resume, stale
settings, deadline, processes) and the CLI, on tiny grids."""

import json
import math

import pytest
import torch

from carousel.cli import main
from carousel.study import models as study_models
from carousel.study import runner
from carousel.study.models import MODELS, get_model_spec, init_sutskever2013
from carousel.study.runner import StudyConfig, run_study
from carousel.study.train import train_until_solved
from carousel.tasks.longlag import HochreiterAdding, make_task

TINY = dict(
    models=("delay-tap",),
    tasks=("adding-1997",),
    lags=(12,),
    seeds=2,
    max_sequences=64,
    test_size=16,
)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_steps(name):
    spec = get_model_spec(name, batch_size=4)
    task = HochreiterAdding(T=12)
    res = train_until_solved(spec, task, seed=0, max_sequences=8, test_size=4)
    assert res.status == "budget" and res.updates == 2 and res.sequences == 8
    assert res.test_size == 4 and math.isfinite(res.test_loss)


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model_spec("nope")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        get_model_spec("lstm", optimizer="lbfgs")


def test_lstm_gate_biases():
    spec = get_model_spec("lstm", forget_bias=5.0, input_bias=-3.0)
    model = spec.build(2, 1, seed=0)
    H = spec.hidden_size
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0  # rows i, f, g, o
    assert torch.all(b[:H] == -3.0) and torch.all(b[H : 2 * H] == 5.0)


def test_sutskever2013_init():
    spec = get_model_spec("rnn-sutskever2013", hidden_size=30)
    model = spec.build(2, 1, seed=0)
    W = model.rnn.weight_hh_l0.detach().double()
    assert torch.linalg.eigvals(W).abs().max().item() == pytest.approx(1.1, rel=1e-5)
    assert ((W != 0).sum(1) == 15).all()  # 15 incoming connections per unit
    assert model.rnn.weight_ih_l0.abs().max() < 0.01
    init_sutskever2013(model, spectral_radius=0.5, nonzeros=30)
    W = model.rnn.weight_hh_l0.detach().double()
    assert torch.linalg.eigvals(W).abs().max().item() == pytest.approx(0.5, rel=1e-5)


def test_momentum_schedule():
    spec = get_model_spec("rnn-sutskever2013")
    mus = [spec.momentum_at(t) for t in (0, 249, 250, 750, 10**6)]
    assert mus[:4] == [0.5, 0.5, 0.75, 0.875] and mus[4] == 0.99
    assert get_model_spec("lstm").momentum_at(10) is None
    # momentum 0, the ablation, is plain SGD (torch's Nesterov refuses momentum 0)
    plain = get_model_spec("rnn-sutskever2013", momentum=0.0)
    opt = plain.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert not opt.param_groups[0]["nesterov"] and plain.momentum_at(10**6) == 0.0


def test_lstm_learns_temporal_order_at_short_lag():
    """Learning, proven: an LSTM meets the 1997 stopping rule on temporal order at T=20."""
    task = make_task("temporal-order-1997", T=20)
    res = train_until_solved(get_model_spec("lstm"), task, seed=0, max_sequences=60_000)
    assert res.solved, res
    assert res.test_wrong <= 30  # of 2560


def test_grid_writes_cells_atomically_and_resumes(tmp_path, monkeypatch):
    config = StudyConfig(**TINY)
    calls = []
    real = runner.train_until_solved

    def counting(spec, task, **kw):
        calls.append((spec.name, task.T, kw["seed"]))
        return real(spec, task, **kw)

    monkeypatch.setattr(runner, "train_until_solved", counting)
    records = run_study(config, tmp_path)
    assert len(calls) == 2 and len(records) == 2
    cells = sorted((tmp_path / "cells").iterdir())
    assert [p.name for p in cells] == [
        "delay-tap__adding-1997__T12__s0.json",
        "delay-tap__adding-1997__T12__s1.json",
    ]
    data = json.loads(cells[0].read_text())
    assert data["cell"] == {"model": "delay-tap", "task": "adding-1997", "T": 12, "seed": 0}
    assert data["settings"]["max_sequences"] == 64 and data["status"] in ("budget", "solved")
    assert not list((tmp_path / "cells").glob(".*tmp"))  # no temporary files left
    for name in ("results.json", "results.md", "success_vs_T.png"):
        assert (tmp_path / name).is_file()
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["rows"][0]["runs"] == 2 and summary["machine"]["torch"] == torch.__version__
    assert "| delay-tap | 12 |" in (tmp_path / "results.md").read_text()

    # resume: nothing to do
    calls.clear()
    run_study(config, tmp_path)
    assert calls == []
    # an interrupted study (a cell missing) reruns only that cell
    cells[1].unlink()
    run_study(config, tmp_path)
    assert calls == [("delay-tap", 12, 1)]
    # changed settings make the stored cells stale
    calls.clear()
    run_study(StudyConfig(**{**TINY, "max_sequences": 32}), tmp_path)
    assert len(calls) == 2
    # a damaged cell file is rerun, not trusted
    calls.clear()
    cells[0].write_text("{not json")
    run_study(StudyConfig(**{**TINY, "max_sequences": 32}), tmp_path)
    assert calls == [("delay-tap", 12, 0)]


def test_grid_deadline_leaves_cells_for_next_time(tmp_path):
    records = run_study(StudyConfig(**TINY, time_budget=0.0), tmp_path)
    assert records == [] and list((tmp_path / "cells").iterdir()) == []
    assert "0 / 0 (2 not run)" in (tmp_path / "results.md").read_text()


def test_grid_in_two_processes_equals_one(tmp_path):
    one = run_study(StudyConfig(**TINY), tmp_path / "one")
    two = run_study(StudyConfig(**TINY, workers=2), tmp_path / "two")
    key = lambda r: (r["sequences"], r["test_wrong"], r["test_loss"], r["train_loss"])  # noqa: E731
    assert [key(r) for r in one] == [key(r) for r in two]


def test_config_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        StudyConfig(**{**TINY, "tasks": ("nope",)})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        StudyConfig(**{**TINY, "models": ("nope",)})
    with pytest.raises(ValueError, match="overrides name model 'lstm'"):
        StudyConfig(**TINY, overrides={"lstm": {"hidden_size": 4}})
    with pytest.raises(TypeError):
        StudyConfig(**TINY, overrides={"delay-tap": {"nope": 4}})
    # a lag a task refuses is named at once (before: a traceback from inside the study)
    with pytest.raises(ValueError, match=r"task 'adding-1997' at T=0: .*T must be >= 12"):
        StudyConfig(**{**TINY, "tasks": ("adding-1997",), "lags": (0,)})


def test_lagless_task_runs_once():
    cells = StudyConfig(
        models=("lstm",), tasks=("embedded-reber-1997", "adding-1997"), lags=(20, 12), seeds=1
    ).cells()
    assert [(c.task, c.T) for c in cells] == [
        ("embedded-reber-1997", None),
        ("adding-1997", 12),
        ("adding-1997", 20),
    ]


def test_cli_long_lag(tmp_path, capsys):
    assert main(["study", "long-lag", "--list"]) == 0
    out = capsys.readouterr().out
    assert "adding-1997" in out and "rnn-sutskever2013" in out
    args = ["study", "long-lag", "--models", "delay-tap", "--tasks", "adding-1997", "--T", "12",
            "--seeds", "1", "--max-sequences", "32", "--test-size", "8", "--workers", "1",
            "--set", "delay-tap.window=4", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| delay-tap | 12 | " in out
    data = json.loads(next((tmp_path / "cells").iterdir()).read_text())
    assert data["settings"]["model"]["window"] == 4
    assert main([*args[:-2], "--out", str(tmp_path), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "long-lag", "--set", "window=4"])
    assert "expected MODEL.FIELD=VALUE" in capsys.readouterr().err


def test_models_module_has_registry_doc():
    assert study_models.MODELS["rnn-sgd"].optimizer == "sgd"
    assert study_models.MODELS["lstm-NFG"].variant == "NFG"


def test_pathological_problems_join_the_study(tmp_path):
    """Martens & Sutskever's problems (carousel.tasks.pathological) run in the same grid; their
    stopping rule is their success threshold read on the last 2000 training sequences."""
    from carousel.study.tasks import make_study_task, study_task_names, task_has_lag
    from carousel.study.train import stop_rule_of

    assert "addition-martens2011" in study_task_names() and task_has_lag("addition-martens2011")
    task = make_study_task("addition-martens2011", 20)
    assert stop_rule_of(task).max_wrong == 20
    assert stop_rule_of(make_task("adding-1997", T=20)).max_mean_error == 0.01
    config = StudyConfig(**{**TINY, "tasks": ("addition-martens2011",), "lags": (20,), "seeds": 1})
    (rec,) = run_study(config, tmp_path)
    assert rec["cell"]["task"] == "addition-martens2011" and rec["settings"]["task"]["T"] == 20
    assert "Martens & Sutskever 2011" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_killed_study_leaves_no_workers_and_resumes(tmp_path):
    """Kill -9 the study process mid-grid: its workers exit (no orphan keeps training), no
    partial cell file is left, and the same command finishes the grid."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    args = [sys.executable, "-m", "carousel", "study", "long-lag", "--models", "lstm",
            "--tasks", "adding-1997", "--T", "100", "--seeds", "2", "--max-sequences", "60000",
            "--test-size", "8", "--workers", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(children) < 2:
        time.sleep(1)
        children = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid
        ]
    assert len(children) >= 2, "workers did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(6)
    assert not [c for c in children if os.path.exists(f"/proc/{c}") and _ppid(c) != 0]
    assert list((out / "cells").glob("*.json")) == []
    assert subprocess.run(args, stdout=subprocess.DEVNULL, timeout=1200).returncode == 0
    assert len(list((out / "cells").glob("*.json"))) == 2


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def test_cli_capacity_and_binary_addition_call_the_library(monkeypatch, capsys):
    from types import SimpleNamespace

    import carousel.study.binary_addition as ba
    import carousel.study.capacity as cap

    seen = {}

    def fake_capacity(**kw):
        seen["capacity"] = kw
        return SimpleNamespace(markdown="CAPACITY TABLE")

    def fake_addition(**kw):
        seen["addition"] = kw
        return SimpleNamespace(markdown="ADDITION TABLE", automaton=None)

    monkeypatch.setattr(cap, "capacity_study", fake_capacity)
    monkeypatch.setattr(ba, "binary_addition_study", fake_addition)
    assert main(["study", "capacity", "--bits", "1,2", "--states", "2", "--out", "x"]) == 0
    assert seen["capacity"]["bits"] == (1, 2) and seen["capacity"]["states"] == (2,)
    args = ["study", "binary-addition", "--seeds", "2", "--batch-size", "64", "--out", "y"]
    assert main(args) == 0
    assert seen["addition"] == dict(
        seeds=2, hidden_size=3, delay=0, steps=3000, batch_size=64, out_dir="y"
    )
    out = capsys.readouterr().out
    assert "CAPACITY TABLE" in out and "ADDITION TABLE" in out


def test_capacity_study_arguments_are_checked_first():
    from carousel.study.capacity import capacity_study

    with pytest.raises(ValueError, match="bits must not be empty"):
        capacity_study(bits=())
    with pytest.raises(ValueError, match="states must be >= 1, got 0"):
        capacity_study(states=(2, 0))
    with pytest.raises(ValueError, match="rnn_units must be >= 1, got 0"):
        capacity_study(rnn_units=0)
