import math

import pytest
import torch

from carousel._config import ConfigError
from carousel.train import OptimConfig, build_optimizer, lr_at, momentum_at, register_optimizer
from carousel.train.optim import OPTIMIZERS, set_schedules


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_lr_schedules():
    c = OptimConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(c, t, 100) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    c = OptimConfig(lr=1.0, schedule="step", decay_steps=10, gamma=0.5)
    assert [lr_at(c, t, 100) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    c = OptimConfig(lr=1.0, schedule="exponential", decay_steps=10, gamma=0.5)
    assert lr_at(c, 5, 100) == pytest.approx(math.sqrt(0.5))
    c = OptimConfig(lr=1.0, schedule="cosine", min_lr=0.1)
    assert lr_at(c, 0, 101) == 1.0 and lr_at(c, 50, 101) == pytest.approx(0.55)
    assert lr_at(c, 100, 101) == pytest.approx(0.1, abs=1e-3)
    c = OptimConfig(lr=1.0, schedule="linear", min_lr=0.0, warmup_steps=10)
    assert lr_at(c, 10, 111) == 1.0 and lr_at(c, 60, 111) == pytest.approx(0.5)


def test_sutskever_momentum_schedule():
    c = OptimConfig(name="sgd", momentum=0.99, momentum_schedule="sutskever", nesterov=True)
    got = [momentum_at(c, t) for t in (0, 249, 250, 500, 750, 10**7)]
    assert got == pytest.approx([0.5, 0.5, 0.75, 1 - 1 / 6, 0.875, 0.99])
    capped = OptimConfig(name="sgd", momentum=0.8, momentum_schedule="sutskever")
    assert momentum_at(capped, 10_000) == 0.8
    opt = build_optimizer(params(), c)
    assert set_schedules(opt, c, 300, 1000) == c.lr
    assert opt.param_groups[0]["momentum"] == 0.75


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("lbfgs", torch.optim.LBFGS),
    ],
)
def test_builds_torch_optimizers(name, cls):
    opt = build_optimizer(params(), OptimConfig(name=name, lr=0.1))
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.1


def test_nesterov_and_options():
    opt = build_optimizer(
        params(), OptimConfig(name="sgd", momentum=0.9, nesterov=True, options={"dampening": 0})
    )
    assert opt.param_groups[0]["nesterov"] is True
    opt = build_optimizer(params(), OptimConfig(name="lbfgs", options={"history_size": 7}))
    assert opt.param_groups[0]["history_size"] == 7


def test_errors_and_registration():
    with pytest.raises(ConfigError, match=r"optim\.name must be one of"):
        build_optimizer(params(), OptimConfig(name="adagrad-x"))
    with pytest.raises(ConfigError, match=r"optim\.options"):
        build_optimizer(params(), OptimConfig(name="adam", options={"nonsense": 1}))
    register_optimizer("adagrad-test", lambda p, c: torch.optim.Adagrad(p, lr=c.lr))
    try:
        assert isinstance(
            build_optimizer(params(), OptimConfig(name="adagrad-test")), torch.optim.Adagrad
        )
    finally:
        OPTIMIZERS.pop("adagrad-test")
    seen = {}

    def needs_model(params, config, *, model):
        seen["model"] = model
        return torch.optim.SGD(params, lr=config.lr)

    register_optimizer("needs-model", needs_model)
    try:
        net = torch.nn.Linear(2, 2)
        build_optimizer(net.parameters(), OptimConfig(name="needs-model"), model=net)
        assert seen["model"] is net
    finally:
        OPTIMIZERS.pop("needs-model")
    with pytest.raises(TypeError, match="factory must be callable"):
        register_optimizer("x", 3)


HF = [
    "optim.name=hessian-free",
    "train.batch_size=128",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.threads=1",
    "log.progress=off",
    "log.plot=false",
]
ADDITION = ["data.T=10", "data.test_size=500", "model.cell=rnn", "model.hidden_size=12"]


def _hf_config(tmp_path, *extra, run="hf", task="addition-martens2011"):
    from carousel.train import load_config

    data = ADDITION if task == "addition-martens2011" else []
    return load_config(task, None, [f"log.dir={tmp_path / run}", *HF, *data, *extra])


def test_hessian_free_through_the_engine_learns_addition(tmp_path):
    # Martens & Sutskever's addition problem at T=10, a 12-unit tanh RNN, 25 HF steps
    from carousel.optim import HessianFree
    from carousel.train import train

    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model.parameters(), OptimConfig(name="hessian-free"), model=model)
    assert isinstance(opt, HessianFree)
    result = train(_hf_config(tmp_path, "train.steps=25"))
    assert result.evaluation["test"]["loss"] < 0.02  # predicting the mean scores 0.167


def test_hessian_free_resumes_exactly(tmp_path):
    from carousel.train import load_checkpoint, train

    straight = train(_hf_config(tmp_path, "train.steps=4", run="a"))
    train(_hf_config(tmp_path, "train.steps=2", "train.checkpoint_every=2", run="b"))
    resumed = train(_hf_config(tmp_path, "train.steps=4", "train.checkpoint_every=2", run="b"))
    a = load_checkpoint(straight.checkpoint).model
    b = load_checkpoint(resumed.checkpoint).model
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hessian_free_refuses_what_it_cannot_do(tmp_path):
    from carousel.train import train

    with pytest.raises(ConfigError, match="tbptt_k1"):
        train(
            _hf_config(
                tmp_path, "train.steps=2", "train.tbptt_k1=4", "train.tbptt_k2=4",
                task="binary-addition", run="tb",
            )
        )  # fmt: skip
    with pytest.raises(ConfigError, match="has none"):
        train(_hf_config(tmp_path, "train.steps=1", task="charlm", run="lm"))
