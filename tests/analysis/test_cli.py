"""`carousel explain` and `carousel analyze` with tiny sizes."""

import numpy as np
import pytest
import torch

from carousel.cli import main

pytest.importorskip("matplotlib")


def test_explain_vanishing(tmp_path, capsys):
    argv = ["explain", "vanishing", "--length", "12", "--hidden-size", "4", "--batch-size", "2",
            "--scales", "0.5,2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tanh RNN, W_hh = 0.5 x orthogonal" in out and "LSTM (chrono gate init)" in out
    assert (tmp_path / "vanishing.png").stat().st_size > 1000


def test_explain_memory_cell_and_topics(tmp_path, capsys):
    assert main(["explain", "memory-cell", "--steps", "60", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "read at step 48: 0.70000" in out and (tmp_path / "memory_cell.png").exists()
    assert main(["explain"]) == 0
    assert "memory-cell" in capsys.readouterr().out
    bad = ["explain", "memory-cell", "--steps", "10", "--read-step", "9", "--out", str(tmp_path)]
    assert main(bad) == 2
    assert "need 0 < read_step < forget_step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", "vanishing", "--scales", "0,1"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    train = pytest.importorskip("carousel.train")
    run = tmp_path_factory.mktemp("run")
    overrides = ["log.plot=false", "log.tensorboard=off", "log.progress=off",
                 "data.valid_size=16", "data.long_size=16", "data.test_bits=16",
                 "train.steps=2", "train.eval_every=0", "model.hidden_size=8",
                 f"log.dir={run}"]  # fmt: skip
    train.train(train.load_config("binary-addition", None, overrides))
    return run / "last"


def test_analyze_a_checkpoint_on_its_task(checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["analyze", str(checkpoint), "--out", str(out), "--batch-size", "2", "--lyapunov-k", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "largest Lyapunov exponent" in printed and "most salient input step" in printed
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "binary-addition" in html


def test_analyze_an_input_file_with_hdf5(checkpoint, tmp_path, capsys):
    pytest.importorskip("h5py")
    x = np.random.default_rng(0).integers(0, 2, (9, 2)).astype(np.float32)  # (T, I): one sequence
    np.save(tmp_path / "x.npy", x)
    argv = ["analyze", str(checkpoint), "--input", str(tmp_path / "x.npy"), "--out",
            str(tmp_path / "r"), "--what", "traces,gradients", "--hdf5", str(tmp_path / "s.h5"),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    import json

    numbers = json.loads(capsys.readouterr().out)
    assert set(numbers) == {"report", "gradients", "traces", "hdf5"}
    from carousel.analysis import read_hdf5

    assert read_hdf5(tmp_path / "s.h5")["offsets"].tolist() == [0, 9]
    torch.save({"inputs": torch.from_numpy(x)}, tmp_path / "x.pt")
    argv = ["analyze", str(checkpoint), "--input", str(tmp_path / "x.pt"), "--what", "saliency",
            "--out", str(tmp_path / "r2")]  # fmt: skip
    assert main(argv) == 0


def test_analyze_errors(checkpoint, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("1,2\n")
    assert main(["analyze", str(checkpoint), "--input", str(tmp_path / "x.csv")]) == 2
    assert "input file must end in one of" in capsys.readouterr().err
    assert main(["analyze", str(checkpoint), "--what", "colours", "--out", str(tmp_path)]) == 2
    assert "what must be a non-empty subset" in capsys.readouterr().err
    assert main(["analyze", str(checkpoint), "--split", "nope", "--out", str(tmp_path)]) == 2
    assert "has no split 'nope'" in capsys.readouterr().err
