"""The charlm task through the training engine, checkpoints, and the generate/cells commands."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from carousel.cli import main
from carousel.generate import generate, load_language_model
from carousel.tasks import get_task, make_task
from carousel.tasks.charlm import CharLMConfig, CharLMTask
from carousel.train import ConfigError, load_config, train

TEXT = 'def f(x):\n    return "a(b)" + x\n' * 60


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "code.txt"
    f.write_text(TEXT)
    return f


def _task(path, **kw) -> CharLMTask:
    return make_task("charlm", CharLMConfig(text=(str(path),), **kw))


def test_registered_with_stream_support():
    spec = get_task("charlm")
    assert spec.cls is CharLMTask and CharLMTask.supports_stream()


def test_config_errors_are_reported_together():
    with pytest.raises(ConfigError) as e:
        CharLMConfig(unit="byte", valid_fraction=0.0, max_vocab=1)
    msg = str(e.value)
    assert "3 errors" in msg and "data.unit" in msg and "data.valid_fraction" in msg
    assert "data.max_vocab" in msg
    assert CharLMConfig(text="one.txt").text == ("one.txt",)


def test_stream_carries_rows_and_resumes_at_any_chunk(text_file):
    task = _task(text_file)
    g = torch.Generator()
    chunks = list(itertools.islice(task.stream("train", 4, 7, generator=g), 6))
    assert chunks[0].inputs.shape == (7, 4)
    # chunk k+1 continues chunk k in every row; targets are the next tokens
    ids = task.ids("train")
    L = (ids.numel() - 1) // 4
    torch.testing.assert_close(chunks[0].inputs[:, 1], ids[L : L + 7])
    torch.testing.assert_close(chunks[1].inputs[0], chunks[0].targets[-1])
    resumed = next(task.stream("train", 4, 7, generator=g, start=5))
    torch.testing.assert_close(resumed.inputs, chunks[5].inputs)
    assert task.text("train") + task.text("valid") == TEXT


def test_vocab_comes_from_the_checkpoint_not_the_text(text_file):
    task = _task(text_file)
    state = task.state_dict()
    text_file.unlink()  # the text is gone: a loaded task still knows its vocabulary
    fresh = _task(text_file)
    fresh.load_state_dict(state)
    assert fresh.vocab == task.vocab
    model = fresh.make_model(CharLMTask.ModelConfig(hidden_size=8, num_layers=1))
    assert model.vocab_size == len(task.vocab)
    with pytest.raises(FileNotFoundError, match=r"code\.txt' does not exist"):
        fresh.ids("train")


def test_word_unit_metrics_convert_to_bits_per_char(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("the cat sat on the mat and the dog sat on the log\n" * 30)
    task = _task(f, unit="word", max_vocab=6)
    assert len(task.vocab) == 6 and task.vocab.unit == "word"
    model = task.make_model(CharLMTask.ModelConfig(hidden_size=8, num_layers=1))
    m = task.evaluate(model, "valid", generator=torch.Generator())
    # a short validation text is read as one stream: every token after the first is scored
    targets = task.ids("valid")[1:]
    chars = float(task.token_chars()[targets].sum())
    assert m["bits_per_char"] == pytest.approx(m["bits_per_token"] * targets.numel() / chars)
    assert m["bits_per_char"] < m["bits_per_token"]  # words are longer than one character
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small LSTM trained on a repetitive text through the engine (a few seconds)."""
    d = tmp_path_factory.mktemp("charlm")
    f = d / "code.txt"
    f.write_text(TEXT)
    cfg = load_config(
        "charlm",
        overrides=[
            f"data.text=[{str(f)!r}]",
            "model.hidden_size=32",
            "model.embedding_size=16",
            "train.steps=200",
            "train.batch_size=8",
            "train.tbptt_k1=25",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "optim.lr=0.01",
            "optim.schedule=constant",
            f"log.dir={d / 'run'}",
            "log.plot=false",
            "log.progress=off",
        ],
    )
    result = train(cfg)
    return result, d, f


def test_learns_a_repetitive_text(trained):
    result, _, _ = trained
    # the text repeats one 33-character line: a model that learned it is nearly certain
    bpc = result.evaluation["valid"]["bits_per_char"]
    assert bpc < 0.3, bpc


def test_generation_from_the_checkpoint_reproduces_the_text(trained):
    _, d, _ = trained
    model, vocab, task = load_language_model(d / "run" / "last")
    g = generate(model, vocab, prime="def f(x):\n", length=24, temperature=0)
    assert g.text == '    return "a(b)" + x\nde'
    by_path = generate(str(d / "run" / "last"), prime="def f(x):\n", length=24, temperature=0)
    assert by_path.text == g.text


def test_generate_and_cells_commands(trained, capsys):
    _, d, f = trained
    ckpt = str(d / "run" / "last")
    assert main(["generate", ckpt, "--prime", "def", "--length", "20", "--greedy"]) == 0
    assert capsys.readouterr().out == 'def f(x):\n    return "a\n'
    assert (
        main(["generate", ckpt, "--prime", "x", "--length", "5", "--seed", "1", "--no-echo"]) == 0
    )
    out1 = capsys.readouterr().out
    assert (
        main(["generate", ckpt, "--prime", "x", "--length", "5", "--seed", "1", "--no-echo"]) == 0
    )
    assert capsys.readouterr().out == out1 and len(out1) == 6
    assert main(["generate", ckpt, "--prime", "def", "--length", "10", "--beam", "3"]) == 0
    assert capsys.readouterr().out.startswith("def f(x):")
    html = d / "cells.html"
    code = main(["cells", ckpt, "--text", str(f), "--feature", "quotes", "--feature",
                 "brackets", "--top", "3", "--html", str(html)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "quotes: cells ranked" in out and "brackets: cells ranked" in out
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert main(["cells", ckpt, "--cell", "5:0", "--text", str(f)]) == 2
    assert "outside the model" in capsys.readouterr().err
    assert main(["generate", str(d / "nothing")]) == 2
    assert "carousel generate:" in capsys.readouterr().err


def test_train_command_takes_text_files(text_file, tmp_path, capsys):
    args = ["train", "charlm", "--text", str(text_file), "--quiet", "--json"]
    sets = ["train.steps=3", "train.batch_size=2", "train.tbptt_k1=8", "model.hidden_size=8",
            f"log.dir={tmp_path / 'run'}", "log.plot=false"]  # fmt: skip
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    assert '"bits_per_char"' in capsys.readouterr().out
    model, vocab, task = load_language_model(tmp_path / "run" / "last")
    assert task.config.text == (str(text_file),) and set(vocab.tokens[1:]) == set(TEXT)


def test_ngram_baseline_on_the_task_split(text_file, capsys):
    from carousel.tasks.charlm import ngram_baseline
    from carousel.text.ngram import KneserNeyLM

    task = _task(text_file)
    res = ngram_baseline(task, max_order=4)
    direct = KneserNeyLM(task.ids("train"), len(task.vocab), 4).evaluate(task.ids("valid"))
    assert res.bits_per_char == pytest.approx(direct)  # characters: bits/char = bits/token
    assert res.best_order == min(direct, key=direct.get)
    assert res.valid_tokens == task.ids("valid").numel() - 1
    assert main(["ngram", "--text", str(text_file), "--max-order", "3"]) == 0
    out = capsys.readouterr().out
    assert "(best)" in out and "| 3" in out
    assert main(["ngram", "--set", "model.hidden_size=3"]) == 2
    assert "only data.* options apply" in capsys.readouterr().err


def test_unit_flag_trains_and_counts_words(text_file, tmp_path, capsys):
    args = ["train", "charlm", "--text", str(text_file), "--unit", "word", "--quiet"]
    sets = ["train.steps=2", "train.batch_size=2", "train.tbptt_k1=4", "model.hidden_size=8",
            f"log.dir={tmp_path / 'run'}", "log.plot=false"]  # fmt: skip
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    capsys.readouterr()
    _, vocab, task = load_language_model(tmp_path / "run" / "last")
    assert vocab.unit == "word" and task.config.unit == "word"
    assert main(["ngram", "--text", str(text_file), "--unit", "word", "--max-order", "2"]) == 0
    assert "words, " in capsys.readouterr().out


def test_train_command_names_a_bad_text_file(tmp_path, capsys):
    bad = {"latin.txt": "café".encode("latin-1"), "blob.bin": b"ab\x00cd", "empty.txt": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    expected = {"latin.txt": "is not valid utf-8", "blob.bin": "looks binary",
                "empty.txt": "is empty", "missing.txt": "does not exist"}  # fmt: skip
    for name, why in expected.items():
        run = f"log.dir={tmp_path / 'run'}"
        assert main(["train", "charlm", "--text", str(tmp_path / name), "--set", run]) == 2
        err = capsys.readouterr().err
        assert err.startswith("carousel train: text file") and name in err and why in err
