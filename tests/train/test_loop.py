"""The training loop: exact resume, truncated BPTT, clipping, NaN handling, metrics files."""

import json
import logging
import math
from typing import ClassVar

import pytest
import torch

from carousel.tasks.binary_addition import BinaryAddition
from carousel.train import (
    NonFiniteError,
    ResumeError,
    evaluate_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    read_metrics,
    register_optimizer,
    train,
)
from carousel.train.loop import _generator
from carousel.train.optim import OPTIMIZERS


def weights(path):
    return load_checkpoint(path).model


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


RESUME_SETUPS = {
    "lstm-dropout-nesterov-schedules-clip": [
        "model.cell=lstm",
        "model.num_layers=2",
        "model.dropout=0.3",
        "optim.name=sgd",
        "optim.lr=0.1",
        "optim.momentum=0.99",
        "optim.nesterov=true",
        "optim.momentum_schedule=sutskever",
        "optim.schedule=step",
        "optim.decay_steps=4",
        "optim.warmup_steps=2",
        "train.clip_norm=0.5",
    ],
    "tbptt-stream-k1-3-k2-5-adam": [
        "train.tbptt_k1=3",
        "train.tbptt_k2=5",
        "optim.lr=0.01",
        "model.cell=gru",
        "model.learn_initial_state=true",
    ],
}


@pytest.mark.parametrize("setup", sorted(RESUME_SETUPS))
def test_resume_ends_with_bitwise_identical_weights(make_config, setup):
    over = RESUME_SETUPS[setup]
    full = train(make_config(*over, run="full"))
    train(make_config(*over, "train.steps=5", run="cut"))
    resumed = train(make_config(*over, run="cut"))
    assert resumed.resumed_from == 5 and resumed.step == 12
    assert_same_weights(weights(full.checkpoint), weights(resumed.checkpoint))
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k, v in a.optimizer["state"].items():
        for name, t in v.items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(t, b.optimizer["state"][k][name])
    losses = [r["loss"] for r in read_metrics(full.run_dir) if r["kind"] == "train"]
    again = [r["loss"] for r in read_metrics(resumed.run_dir) if r["kind"] == "train"]
    assert losses == again and len(losses) == 12


def test_crash_then_resume_drops_the_lost_steps_and_matches(make_config, monkeypatch):
    over = ["train.checkpoint_every=4", "model.dropout=0.2", "model.num_layers=2"]
    full = train(make_config(*over, run="full"))
    calls = {"n": 0}
    real = BinaryAddition.batch

    def crashing(self, split, batch_size, *, generator):
        calls["n"] += 1
        if calls["n"] == 7:  # during step 7, after the checkpoint at 4
            raise KeyboardInterrupt
        return real(self, split, batch_size, generator=generator)

    monkeypatch.setattr(BinaryAddition, "batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(*over, run="cut"))
    monkeypatch.setattr(BinaryAddition, "batch", real)
    steps = [r["step"] for r in read_metrics(full.run_dir.parent / "cut") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    resumed = train(make_config(*over, run="cut"))
    assert resumed.resumed_from == 4
    assert_same_weights(weights(full.checkpoint), weights(resumed.checkpoint))
    steps = [r["step"] for r in read_metrics(resumed.run_dir) if r["kind"] == "train"]
    assert steps == list(range(1, 13))


@pytest.mark.parametrize("signals", [("SIGINT",), ("SIGTERM",), ("SIGINT", "SIGINT")])
def test_a_signal_finishes_the_step_saves_it_and_stops(make_config, monkeypatch, signals):
    """Ctrl-C (or a scheduler's SIGTERM) during step 7: the step completes, a checkpoint at 7
    is written, the run stops, and the resumed run ends with the uninterrupted run's weights.
    A second signal stops at once: the steps since the last checkpoint are lost, as in a
    crash. The previous handlers are back afterwards."""
    import os
    import signal

    over = ["train.checkpoint_every=4", "model.dropout=0.2", "model.num_layers=2"]
    full = train(make_config(*over, run="full"))
    calls = {"n": 0}
    real = BinaryAddition.batch
    before = {s: signal.getsignal(getattr(signal, s)) for s in ("SIGINT", "SIGTERM")}

    def signalling(self, split, batch_size, *, generator):
        calls["n"] += 1
        if calls["n"] == 7:  # while the data of step 7 is drawn
            for name in signals:
                os.kill(os.getpid(), getattr(signal, name))
        return real(self, split, batch_size, generator=generator)

    monkeypatch.setattr(BinaryAddition, "batch", signalling)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(*over, run="cut"))
    monkeypatch.setattr(BinaryAddition, "batch", real)
    assert {s: signal.getsignal(getattr(signal, s)) for s in before} == before
    cut = full.run_dir.parent / "cut"
    saved_at = 4 if len(signals) == 2 else 7
    assert latest_checkpoint(cut).name == f"step-{saved_at:06d}"
    resumed = train(make_config(*over, run="cut"))
    assert resumed.resumed_from == saved_at
    assert_same_weights(weights(full.checkpoint), weights(resumed.checkpoint))


def test_devices_this_machine_lacks_are_config_errors():
    """A device that is not there is named, not a traceback from torch (mps was one)."""
    from carousel._config import ConfigError
    from carousel.train.loop import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda, cuda:N or mps, got 'x'"):
        resolve_device("x", key="device")  # as carousel eval/generate --device name it
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda' but CUDA is not available"):
            resolve_device("cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"has {n} CUDA device"):
            resolve_device(f"cuda:{n}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="'mps' but MPS is not available"):
            resolve_device("mps")


class RecordGrads(torch.optim.Optimizer):
    """Records the gradients it is given and never moves the weights."""

    log: ClassVar[list[list[torch.Tensor]]] = []

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure):
        loss = closure()
        RecordGrads.log.append(
            [p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None]
        )
        return loss


@pytest.fixture
def record_grads():
    RecordGrads.log = []
    register_optimizer("record-grads", lambda params, c: RecordGrads(params))
    yield RecordGrads.log
    OPTIMIZERS.pop("record-grads")


def test_tbptt_carries_detached_state_and_backpropagates_k2_steps(make_config, record_grads):
    k1, k2 = 3, 5
    cfg = make_config(
        "optim.name=record-grads",
        f"train.tbptt_k1={k1}",
        f"train.tbptt_k2={k2}",
        "train.steps=3",
        "train.dtype=float64",
        "model.hidden_size=4",
    )
    train(cfg)
    task = BinaryAddition(cfg.data)
    model = task.make_model(cfg.model, generator=_generator(cfg.seed, "init"), dtype=torch.float64)
    stream = task.stream(
        "train", cfg.train.batch_size, k1, generator=_generator(cfg.seed, "stream")
    )
    chunks = [next(stream).to(dtype=torch.float64) for _ in range(3)]
    x = torch.cat([c.inputs for c in chunks])  # (9, B, 2)
    for update in range(3):
        end = (update + 1) * k1
        start = max(0, end - k2)
        state = None
        if start:
            state = model(x[:start]).state.detach()  # carried, detached
        out = model(x[start:end], state)
        loss = task.loss(out._replace(output=out.output[-k1:]), chunks[update])
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        got = record_grads[update]
        assert len(got) == len(grads)
        for g, r in zip(got, grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_gradient_clipping_by_norm_and_value(make_config, record_grads):
    res = train(make_config("optim.name=record-grads", "train.clip_norm=0.01", "train.steps=3"))
    for grads in record_grads:
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert norm.item() == pytest.approx(0.01, rel=1e-4)
    logged = [r["grad_norm"] for r in read_metrics(res.run_dir) if r["kind"] == "train"]
    assert min(logged) > 0.01  # the pre-clip norm is what is logged
    record_grads.clear()
    train(
        make_config(
            "optim.name=record-grads", "train.clip_value=1e-3", "train.steps=2", run="value"
        )
    )
    assert max(g.abs().max().item() for grads in record_grads for g in grads) <= 1e-3 * (1 + 1e-6)


def nan_loss_at(monkeypatch, bad_steps):
    calls = {"n": 0}
    real = BinaryAddition.loss

    def loss(self, output, batch):
        value = real(self, output, batch)
        if torch.is_grad_enabled():  # training, not evaluation
            calls["n"] += 1
            if calls["n"] in bad_steps:
                return value * math.nan
        return value

    monkeypatch.setattr(BinaryAddition, "loss", loss)


def test_nan_loss_stops_naming_the_step(make_config, monkeypatch):
    nan_loss_at(monkeypatch, {3})
    with pytest.raises(NonFiniteError, match=r"^step 3: the loss is not finite \(nan\)") as e:
        train(make_config())
    assert e.value.step == 3 and e.value.what == "the loss"


def test_nan_gradient_names_the_tensor(make_config, monkeypatch):
    real = BinaryAddition.make_model
    count = {"n": 0}

    def make_model(self, config, **kw):
        model = real(self, config, **kw)

        def hook(grad):
            count["n"] += 1
            return grad * math.nan if count["n"] == 2 else grad

        model.rnn.weight_hh_l0.register_hook(hook)
        return model

    monkeypatch.setattr(BinaryAddition, "make_model", make_model)
    with pytest.raises(
        NonFiniteError,
        match=r"step 2: the gradient of rnn\.weight_hh_l0 is "
        r"not finite \(64 NaN and 0 inf values\)",
    ):
        train(make_config())


def test_nan_in_data_is_named(make_config, monkeypatch):
    real = BinaryAddition.batch
    calls = {"n": 0}

    def batch(self, split, batch_size, *, generator):
        b = real(self, split, batch_size, generator=generator)
        calls["n"] += 1
        if calls["n"] == 2:
            b.inputs[0, 0, 0] = math.inf
        return b

    monkeypatch.setattr(BinaryAddition, "batch", batch)
    with pytest.raises(NonFiniteError, match="step 2: the batch's inputs is not finite"):
        train(make_config())


def test_skip_nonfinite_skips_and_counts(make_config, monkeypatch):
    nan_loss_at(monkeypatch, {3, 5})
    res = train(make_config("train.skip_nonfinite=true"))
    assert res.skipped_steps == 2 and res.step == 12
    records = {r["step"]: r for r in read_metrics(res.run_dir) if r["kind"] == "train"}
    assert records[3]["skipped"] == 1 and records[12]["skipped"] == 2
    assert records[3]["loss"] == "nan" and math.isfinite(records[4]["loss"])
    assert load_checkpoint(res.checkpoint).meta["trainer"]["skipped"] == 2


def test_skip_nonfinite_stops_after_too_many_in_a_row(make_config, monkeypatch):
    nan_loss_at(monkeypatch, set(range(3, 100)))
    with pytest.raises(NonFiniteError, match="3 updates in a row skipped"):
        train(make_config("train.skip_nonfinite=true", "train.max_skipped_in_a_row=3"))


def test_a_skipped_update_leaves_the_weights(make_config, monkeypatch):
    nan_loss_at(monkeypatch, {2})
    skipped = train(make_config("train.skip_nonfinite=true", "train.steps=2", run="a"))
    one = train(make_config("train.steps=1", run="b"))
    assert_same_weights(weights(skipped.checkpoint), weights(one.checkpoint))


def test_metrics_files_plot_and_config_copy(make_config):
    res = train(make_config("train.eval_every=5", "log.plot=true", "train.steps=10"))
    records = read_metrics(res.run_dir)
    train_records = [r for r in records if r["kind"] == "train"]
    evals = [(r["step"], r["split"]) for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records] == list(range(1, 11))
    assert evals == [(5, "valid"), (10, "valid"), (10, "long"), (10, "stream")]
    for key in ("loss", "accuracy", "bit_accuracy", "grad_norm", "lr", "tokens_per_s"):
        assert key in train_records[0]
    header = (res.run_dir / "train.csv").read_text().splitlines()[0]
    assert header.startswith("step,loss,")
    assert (res.run_dir / "eval.csv").read_text().splitlines()[0].startswith("step,split,")
    assert res.plot == res.run_dir / "loss.png" and res.plot.stat().st_size > 1000
    assert load_config(None, res.run_dir / "config.toml") == res.config
    for line in (res.run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_other_config_refuses_to_resume_and_restart_starts_over(make_config):
    first = train(make_config("train.steps=3"))
    with pytest.raises(ResumeError, match=r"model\.hidden_size: 8 in the checkpoint, 12 now"):
        train(make_config("train.steps=3", "model.hidden_size=12"))
    again = train(make_config("train.steps=3", "model.hidden_size=12"), restart=True)
    assert again.resumed_from is None
    assert load_checkpoint(again.checkpoint).model["rnn.weight_hh_l0"].shape == (12, 12)
    done = train(make_config("train.steps=3", "model.hidden_size=12"))
    assert done.resumed_from == 3 and done.step == 3 and first.step == 3
    assert done.checkpoint == again.checkpoint and done.evaluation == again.evaluation
    evals = [r for r in read_metrics(done.run_dir) if r["kind"] == "eval"]
    assert len(evals) == 3  # one final evaluation per split, not repeated


def test_a_checkpoint_older_than_a_config_key_resumes_as_the_runs_before_it(make_config, caplog):
    over = ["train.checkpoint_every=2", "train.keep_checkpoints=0"]
    full = train(make_config(*over, "train.steps=4", run="full"))
    train(make_config(*over, "train.steps=2", run="old"))
    # as written by a carousel without train.clip_norm and the [model.init] table
    doc_path = latest_checkpoint(full.run_dir.parent / "old") / "checkpoint.json"
    doc = json.loads(doc_path.read_text())
    del doc["config"]["train"]["clip_norm"], doc["config"]["model"]["init"]
    del doc["config"]["data"]["stream_bits"]  # older than the task's streams of short sums
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(ResumeError, match=r"train\.clip_norm: not in the checkpoint.*0\.5 now"):
        train(make_config(*over, "train.steps=4", "train.clip_norm=0.5", run="old"))
    # runs before data.stream_bits streamed one endless sum: 0, where its default is 8
    with pytest.raises(ResumeError, match=r"data\.stream_bits: not in .*with 0\), 8 now"):
        train(make_config(*over, "train.steps=4", run="old"))
    with caplog.at_level(logging.WARNING, logger="carousel.train"):
        resumed = train(make_config(*over, "train.steps=4", "data.stream_bits=0", run="old"))
    assert resumed.resumed_from == 2 and resumed.step == 4
    assert "predates the config keys" in caplog.text and "train.clip_norm = None" in caplog.text
    assert "model.init = {" in caplog.text and "data.stream_bits = 0" in caplog.text
    assert_same_weights(weights(full.checkpoint), weights(resumed.checkpoint))


def test_lbfgs_through_the_closure(make_config, monkeypatch):
    calls = {"n": 0}
    real = BinaryAddition.loss

    def loss(self, output, batch):
        calls["n"] += torch.is_grad_enabled()
        return real(self, output, batch)

    monkeypatch.setattr(BinaryAddition, "loss", loss)
    res = train(
        make_config("optim.name=lbfgs", "optim.lr=0.5", "optim.options.max_iter=4", "train.steps=3")
    )
    assert calls["n"] > 3 and math.isfinite(res.train_metrics["loss"])


def test_evaluate_checkpoint_repeats_the_final_evaluation(make_config):
    res = train(make_config("train.steps=4"))
    again = evaluate_checkpoint(res.run_dir / "last", device="cpu")
    assert again == res.evaluation
    assert list(evaluate_checkpoint(res.checkpoint, ["long"])) == ["long"]
    with pytest.raises(ValueError, match="has no split 'test'"):
        evaluate_checkpoint(res.checkpoint, ["test"])


def test_tensorboard_on_needs_the_package(make_config):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ImportError, match=r"pip install 'carousel-rnn\[tensorboard\]'"):
            train(make_config("log.tensorboard=on", "train.steps=1"))
    else:
        res = train(make_config("log.tensorboard=on", "train.steps=2"))
        assert any((res.run_dir / "tensorboard").iterdir())


def test_vanishing_penalty_is_trained_and_logged(make_config):
    res = train(make_config("train.vanishing_penalty=0.5", "train.steps=3"))
    records = [r for r in read_metrics(res.run_dir) if r["kind"] == "train"]
    assert all(math.isfinite(r["penalty"]) and r["penalty"] >= 0 for r in records)


def test_binary_addition_learns_to_add_64_bit_numbers(make_config):
    """Lecture 7c: trained on 8-bit numbers, every sum of 64-bit numbers right."""
    res = train(
        make_config(
            "model.hidden_size=16",
            "train.steps=300",
            "data.test_bits=64",
            "data.long_size=512",
            "data.valid_size=512",
        )
    )
    assert res.evaluation["valid"]["accuracy"] == 1.0
    assert res.evaluation["long"]["accuracy"] == 1.0


def test_truncated_bptt_learns_back_to_back_additions_with_carried_state(make_config):
    """Chunks of 4 columns, backpropagation through 8: the carry crosses chunk boundaries, so
    only a carried state can get every bit right."""
    res = train(
        make_config(
            "model.hidden_size=16",
            "train.tbptt_k1=4",
            "train.tbptt_k2=8",
            "train.steps=400",
            "train.batch_size=32",
        )
    )
    assert res.evaluation["stream"]["bit_accuracy"] >= 0.99


@pytest.mark.gpu
def test_trains_on_cuda_and_the_checkpoint_loads_on_the_cpu(make_config):
    from carousel.train import evaluate_checkpoint, train

    cfg = make_config("device=cuda", "train.checkpoint_every=6", "train.steps=12")
    result = train(cfg)
    assert result.checkpoint is not None
    metrics = evaluate_checkpoint(result.checkpoint, device="cpu")
    assert metrics
