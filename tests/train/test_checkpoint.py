import json
import os

import pytest
import torch

from carousel.train import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from carousel.train import checkpoint as ck


def adam_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def save(run, step, model, opt, **kw):
    return save_checkpoint(
        run,
        step,
        model=model.state_dict(),
        config={"task": "x"},
        optimizer=opt.state_dict(),
        **kw,
    )


def test_round_trip(tmp_path):
    model, opt = adam_state()
    rng = torch.get_rng_state()
    path = save(tmp_path, 7, model, opt, tensors={"rng.torch": rng}, meta={"metrics": {"a": 1}})
    assert path.name == "step-000007" and (tmp_path / "last").resolve() == path.resolve()
    c = load_checkpoint(tmp_path / "last")
    assert c.step == 7 and c.config == {"task": "x"} and c.metrics == {"a": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(c.model[k], v)
    assert torch.equal(c.tensors["rng.torch"], rng)
    sd = opt.state_dict()
    assert c.optimizer["param_groups"][0]["betas"] == (0.8, 0.9)  # tuples survive JSON
    assert set(c.optimizer["state"]) == {0, 1}  # integer keys survive JSON
    assert torch.equal(c.optimizer["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(c.optimizer)
    # a run directory and a step directory resolve too
    assert resolve_checkpoint(tmp_path) == resolve_checkpoint(path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporaries left


def test_keep_prunes_old_checkpoints(tmp_path):
    model, opt = adam_state()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert latest_checkpoint(tmp_path).name == "step-000004"
    save(tmp_path, 4, model, opt, keep=2)  # the same step again replaces it
    assert latest_checkpoint(tmp_path).name == "step-000004"


def test_crash_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt = adam_state()
    save(tmp_path, 1, model, opt)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_write_json", boom)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, model, opt)
    assert {p.name for p in tmp_path.iterdir()} == {"step-000001", "last"}
    c = load_checkpoint(tmp_path)
    assert c.step == 1 and not torch.equal(c.model["weight"], model.weight)


def test_damaged_files_are_named(tmp_path):
    model, opt = adam_state()
    path = save(tmp_path, 1, model, opt)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged: model\.safetensors does not match"):
        load_checkpoint(path)
    f.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        load_checkpoint(path, verify=False)
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: optimizer\.safetensors is missing"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged: not valid JSON"):
        load_checkpoint(path)


def test_foreign_and_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_checkpoint(tmp_path / "nothing")
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    with pytest.raises(CheckpointError, match="never loads pickle files"):
        load_checkpoint(pt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no checkpoint\.json"):
        load_checkpoint(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(CheckpointError, match="is not a carousel checkpoint"):
        load_checkpoint(other)
    (other / "checkpoint.json").write_text(json.dumps({"format": ck.FORMAT, "version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(other)
    os.symlink("step-000009", tmp_path / "last")
    with pytest.raises(CheckpointError, match="which does not exist"):
        load_checkpoint(tmp_path / "last")


def test_last_as_a_text_file(tmp_path, monkeypatch):
    model, opt = adam_state()

    def no_symlinks(*a, **k):
        raise OSError("symlinks not supported")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    save(tmp_path, 3, model, opt)
    assert (tmp_path / "last").read_text().strip() == "step-000003"
    assert load_checkpoint(tmp_path / "last").step == 3


def test_non_tensor_optimizer_state_is_refused(tmp_path):
    model, _ = adam_state()
    with pytest.raises(TypeError, match="neither a tensor nor plain data"):
        save_checkpoint(
            tmp_path,
            1,
            model=model.state_dict(),
            config={},
            optimizer={"state": {0: {"x": object()}}},
        )
