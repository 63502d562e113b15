"""`carousel train`, `carousel eval` and `carousel tasks`."""

import argparse
import json

import pytest

from carousel.cli import build_parser, main

FAST = [
    "log.plot=false",
    "log.tensorboard=off",
    "data.valid_size=64",
    "data.long_size=64",
    "data.test_bits=16",
    "train.steps=6",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "model.hidden_size=8",
]


def sets(*items):
    return [a for item in items for a in ("--set", item)]


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "eval", "tasks"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_tasks_lists_sources_and_criteria(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "binary-addition" in out and "lecture 7c" in out and "success:" in out
    assert main(["tasks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    entry = next(d for d in data if d["name"] == "binary-addition")
    assert entry["options"]["delay"] == 2


def test_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "binary-addition", "--quiet", *sets(*FAST, f"log.dir={run}")]) == 0
    out = capsys.readouterr().out
    assert "binary-addition: 6 steps" in out and "valid" in out and "long" in out
    assert "[16-bit numbers]" in out and f"carousel eval {run / 'last'}" in out
    assert main(["eval", str(run / "last")]) == 0
    out = capsys.readouterr().out
    assert "step 6" in out and "accuracy" in out
    assert main(["eval", str(run), "--json", "--split", "long"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["evaluation"]) == ["long"] and data["step"] == 6
    # the same command again resumes: nothing left to do
    assert main(["train", "binary-addition", "--quiet", *sets(*FAST, f"log.dir={run}")]) == 0
    assert "6 steps" in capsys.readouterr().out


def test_several_values_after_one_set(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "binary-addition", "--quiet", "--json", "--set", *FAST]
    assert main([*args, "train.steps=1", "--set", f"log.dir={run}"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1


def test_train_with_a_config_file(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('[model]\ncell = "gru"\n[train]\nsteps = 2\n')
    args = ["train", "binary-addition", "--config", str(f), "--quiet", "--json"]
    fast = [o for o in FAST if not o.startswith(("train.steps", "model."))]
    assert main([*args, *sets(*fast, f"log.dir={tmp_path / 'r'}")]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2


def test_errors_exit_2_with_every_problem(tmp_path, capsys):
    code = main(["train", "binary-addition", *sets("model.hiden_size=3", "optim.lr=-1")])
    err = capsys.readouterr().err
    assert code == 2 and "2 errors" in err
    assert "did you mean 'hidden_size'" in err and "optim.lr must be >= 0.0" in err
    assert main(["train", "no-such-task"]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"\x80\x04junk")
    assert main(["eval", str(tmp_path / "w.pt")]) == 2
    assert "never loads pickle files" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_with_built_in_defaults(tmp_path, capsys, monkeypatch):
    """The README's main job: `carousel train binary-addition`."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "binary-addition"]) == 0
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.strip().startswith("long"))
    assert "accuracy 1.0000" in line and "[64-bit numbers]" in line
    assert (tmp_path / "runs/binary-addition/loss.png").is_file()
    assert (tmp_path / "runs/binary-addition/last/model.safetensors").is_file()
