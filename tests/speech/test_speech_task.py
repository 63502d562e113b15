"""End to end: train the speech task on a manifest of WAV files, then transcribe with the CLI.

The recordings are tone sequences (each digit a tone of its own pitch), so the test needs
neither espeak-ng nor minutes of training (this checks that the pieces fit and the loss
falls; the learning bars are in docs/results.md)."""

import json

import numpy as np
import pytest
import torch

from carousel.speech import ManifestEntry, write_manifest, write_wav

pytest.importorskip("librosa")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tones(text, rng, rate=8000):
    parts = [np.zeros(int(rate * 0.05))]
    for ch in text:
        n = int(rate * rng.uniform(0.12, 0.18))
        t = np.arange(n) / rate
        parts += [0.5 * np.sin(2 * np.pi * (300 + 150 * int(ch)) * t), np.zeros(int(rate * 0.05))]
    x = np.concatenate(parts)
    return x + 0.01 * rng.standard_normal(len(x))


def _manifest(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    entries = []
    for i in range(n):
        text = "".join(str(d) for d in rng.integers(0, 4, int(rng.integers(2, 4))))
        write_wav(folder / f"{i}.wav", _tones(text, rng), 8000)
        entries.append(ManifestEntry(folder / f"{i}.wav", text))
    write_manifest(folder / "manifest.tsv", entries)
    return folder / "manifest.tsv", entries


def test_train_on_a_manifest_and_transcribe(tmp_path, one_thread, capsys):
    from carousel.cli import main
    from carousel.train import load_config, train

    train_m, _ = _manifest(tmp_path / "train", 16, 0)
    eval_m, entries = _manifest(tmp_path / "eval", 4, 1)
    cfg = load_config(
        "speech",
        overrides=[
            f"data.train_manifest={train_m}", f"data.eval_manifest={eval_m}",
            "data.n_mels=16", "model.hidden_size=24", "model.num_layers=1",
            "model.stride=2", "model.frontend_size=16", "optim.lr=0.02",
            "train.steps=80", "train.batch_size=8", "train.eval_every=80",
            "train.checkpoint_every=80", "train.clip_norm=5",
            f"log.dir={tmp_path / 'run'}", "log.progress=off", "log.plot=false",
            "log.tensorboard=off",
        ],
    )  # fmt: skip
    result = train(cfg)
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, records) if "loss" in r and "split" not in r]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # it learns
    assert 0 <= result.evaluation["manifest"]["cer"] <= 1.5
    files = [str(e.path) for e in entries[:2]]
    assert main(["transcribe", str(tmp_path / "run"), *files, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in out] == files
    for d in out:
        assert len(d["times"]) == len(d["text"]) and d["times"] == sorted(d["times"])
    assert main(["transcribe", str(tmp_path / "run"), files[0], "--beam", "4"]) == 0
    assert "@" in capsys.readouterr().out
    assert main(["transcribe", str(tmp_path / "run"), "--evaluate", "--beam", "4", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["manifest"]
    assert scores["utterances"] == 4 and 0 <= scores["beam_cer"] <= 1.5
    assert main(["transcribe", str(tmp_path / "run"), str(tmp_path / "no.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
