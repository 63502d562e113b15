import dataclasses

import pytest

from carousel._config import ConfigError
from carousel.models import ModelConfig
from carousel.tasks.binary_addition import BinaryAdditionConfig
from carousel.train import (
    Config,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    fill_added_keys,
    load_config,
)


def test_defaults_then_task_defaults():
    cfg = load_config("binary-addition")
    assert cfg.task == "binary-addition" and cfg.seed == 0
    assert cfg.model.cell == "rnn" and cfg.model.hidden_size == 16  # the task's defaults
    assert cfg.model.num_layers == 1  # the dataclass default
    assert isinstance(cfg.data, BinaryAdditionConfig) and cfg.data.train_bits == 8
    assert cfg.run_dir.as_posix() == "runs/binary-addition"


def test_toml_file_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'task = "binary-addition"\nseed = 4\n[data]\ntrain_bits = 6\n'
        '[model]\ncell = "lstm"\nhidden_size = 12\n[model.init]\nrecurrent = "orthogonal"\n'
        '[optim]\nname = "sgd"\nmomentum = 0.9\nnesterov = true\nbetas = [0.8, 0.9]\n'
        "[optim.options]\ndampening = 0.0\n"
    )
    cfg = load_config(
        None,
        f,
        [
            "model.hidden_size=32",
            "optim.lr=3e-3",
            "train.clip_norm=1",
            "train.skip_nonfinite=yes",
            "model.init.forget_bias=1",
            "log.dir=out/x",
            "optim.betas=0.5,0.6",
            "optim.options.weight_decay=0.01",
            "train.tbptt_k1=none",
        ],
    )
    assert cfg.seed == 4 and cfg.data.train_bits == 6
    assert (cfg.model.cell, cfg.model.hidden_size) == ("lstm", 32)
    assert cfg.model.init.recurrent == "orthogonal" and cfg.model.init.forget_bias == 1.0
    assert cfg.optim.lr == 3e-3 and cfg.optim.nesterov is True and cfg.optim.betas == (0.5, 0.6)
    assert cfg.optim.options == {"dampening": 0.0, "weight_decay": 0.01}
    assert cfg.train.clip_norm == 1.0 and isinstance(cfg.train.clip_norm, float)
    assert cfg.train.skip_nonfinite is True and cfg.run_dir.as_posix() == "out/x"


def test_every_error_reported_at_once(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        "[model]\nhiden_size = 3\ncell = 5\n[optim]\nlr = -1.0\n"
        "[train]\nsteps = 1.5\n[bogus]\nx = 1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config("binary-addition", f, ["data.delay=-3", "model.numlayers=2", "nokey"])
    msg = str(e.value)
    for part in (
        "model.hiden_size: unknown key (did you mean 'hidden_size'?)",
        "model.cell: expected a string, got int (5)",
        "train.steps: expected an integer, got float (1.5)",
        "bogus: unknown key",
        "--set model.numlayers: model.numlayers: unknown key (did you mean 'num_layers'?)",
        "--set 'nokey': expected key=value",
    ):
        assert part in msg
    assert str(f) in msg.splitlines()[0]
    # invalid values (checked once the types are right) are reported together too
    with pytest.raises(ConfigError) as e:
        load_config("binary-addition", None, ["optim.lr=-1", "data.delay=-3", "train.steps=-2"])
    assert len(e.value.errors) == 3
    assert "optim.lr must be >= 0.0, got -1.0" in str(e.value)
    assert "data.delay must be >= 0, got -3" in str(e.value)


def test_bad_files_and_tasks(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config("binary-addition", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nx=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config("binary-addition", bad)
    other = tmp_path / "other.toml"
    other.write_text('task = "charlm-x"\n')
    with pytest.raises(ConfigError, match="the file says 'charlm-x' but 'binary-addition'"):
        load_config("binary-addition", other)
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="no task given"):
        load_config(None)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"train\.tbptt_k2 must be >= tbptt_k1=5"):
        TrainConfig(tbptt_k1=5, tbptt_k2=3)
    with pytest.raises(ConfigError, match=r"tbptt_k2 needs train\.tbptt_k1"):
        TrainConfig(tbptt_k2=3)
    with pytest.raises(ConfigError, match="nesterov needs momentum > 0"):
        OptimConfig(name="sgd", nesterov=True)
    with pytest.raises(ConfigError, match="cannot carry the state of a bidirectional model"):
        load_config("binary-addition", None, ["train.tbptt_k1=4", "model.bidirectional=true"])
    with pytest.raises(ConfigError, match=r"train\.device must be auto, cpu"):
        TrainConfig(device="gpu")


def test_round_trips_through_dict_and_toml(tmp_path):
    cfg = load_config(
        "binary-addition",
        None,
        [
            "optim.betas=[0.8, 0.99]",
            "model.init.recurrent=echo-state",
            "optim.options.foreach=false",
        ],
    )
    assert config_from_dict(config_to_dict(cfg)) == cfg
    f = tmp_path / "dump.toml"
    f.write_text(config_to_toml(cfg))
    assert load_config(None, f) == cfg


def test_direct_construction_checks_section_types():
    with pytest.raises(ConfigError, match="data must be a BinaryAdditionConfig"):
        Config(task="binary-addition", data=ModelConfig())
    cfg = Config(task="binary-addition")
    assert cfg.data == BinaryAdditionConfig()
    assert dataclasses.replace(cfg, seed=3).seed == 3


def test_keys_added_since_a_saved_config_take_the_values_of_the_runs_before_them():
    saved = config_to_dict(load_config("speech-words"))  # (its task sets clip_norm = 1.0)
    del saved["data"]["l2"], saved["data"]["flite"], saved["train"]["clip_norm"]
    filled, added = fill_added_keys(saved)
    # l2's default is 0.3 for speech-words, but the runs before it had none: the task says 0.0
    assert added == {"data.l2": 0.0, "data.flite": 0.0, "train.clip_norm": None}
    assert filled["data"] == {**config_to_dict(load_config("speech-words"))["data"], "l2": 0.0}
    config_from_dict(filled)  # valid
    whole = config_to_dict(load_config("binary-addition"))
    del whole["data"]
    filled, added = fill_added_keys(whole)  # a section older than every key in it
    assert added == {"data": filled["data"]} and filled["data"]["stream_bits"] == 0
    assert fill_added_keys(config_to_dict(load_config("binary-addition")))[1] == {}
    for unreadable in ({"task": "no-such-task"}, {"model": {}}, {**whole, "train": {"steps": -1}}):
        assert fill_added_keys(unreadable) == (unreadable, {})
