import pytest

from carousel.train import load_config

#: Small, fast settings for engine tests (binary addition with a tiny model).
FAST = [
    "log.plot=false",
    "log.tensorboard=off",
    "log.progress=off",
    "data.valid_size=64",
    "data.long_size=64",
    "data.test_bits=16",
    "train.steps=12",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.threads=1",
    "model.hidden_size=8",
]


@pytest.fixture
def fast_overrides():
    return list(FAST)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides, run="run", task="binary-addition"):
        return load_config(task, None, [f"log.dir={tmp_path / run}", *FAST, *overrides])

    return make
