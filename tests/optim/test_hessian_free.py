"""HessianFree: learning, damping, backtracking, line search, warm start, state_dict round trip,
diagnostics and argument errors."""

import copy
import io
import logging

import pytest
import torch
from torch import nn

import carousel
import carousel.optim.hessian_free as hf_module
from carousel.optim import HessianFree, matching_loss
from carousel.tasks.pathological import Addition


class LastStep(nn.Module):
    """tanh RNN and a linear readout of the last step: ``(T, B, I) -> (B, O)``."""

    def __init__(self, input_size=2, hidden_size=6, output_size=1, dtype=torch.float32):
        super().__init__()
        self.rnn = carousel.RNN(input_size, hidden_size, dtype=dtype, impl="reference")
        self.out = nn.Linear(hidden_size, output_size, dtype=dtype)

    def forward(self, x):
        return self.out(self.rnn(x)[0][-1])


def _closure(opt, model, x, y, loss="mse"):
    def closure():
        opt.zero_grad()
        value = matching_loss(loss, model(x), y)
        value.backward()
        return value

    return closure


class AtLengths(LastStep):
    """Reads the output at each sequence's last step ``lengths - 1``."""

    def forward(self, x, lengths):
        z = self.out(self.rnn(x)[0])  # (T, B, O)
        idx = (lengths - 1).view(1, -1, 1).expand(1, -1, z.shape[-1])
        return z.gather(0, idx).squeeze(0)  # (B, O)


def test_tanh_rnn_learns_addition():
    """A 12-unit tanh RNN learns the addition problem at T=10 (Martens & Sutskever 2011's
    definition) in 25 Hessian-free steps of 128 sequences (curvature on 32): held-out mean
    squared error below 0.02 (predicting the mean scores 0.167)."""
    torch.manual_seed(0)
    task = Addition(10)
    model = AtLengths(2, 12, 1)
    opt = HessianFree(model.parameters(), model=model, loss="mse", structural_damping=0.03)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        b = task.sample(128, generator=gen)

        def closure(b=b):
            opt.zero_grad()
            value = nn.functional.mse_loss(model(b.inputs, b.lengths), b.targets)
            value.backward()
            return value

        opt.step(closure, curvature_inputs=(b.inputs[:, :32], b.lengths[:32]))
    test = task.sample(500, seed=123)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(test.inputs, test.lengths), test.targets))
    assert mse < 0.02, mse


def _linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 2, dtype=torch.float64)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randn(64, 2, generator=g, dtype=torch.float64)
    return model, x, y


def _scaled_closure(opt, model, x, y, scale):
    """Reports f0 + scale * (f - f0) at candidate points: the reduction ratio becomes scale
    (the model is linear and the loss quadratic, so the Gauss-Newton model is exact)."""
    calls = {"n": 0, "f0": None}

    def closure():
        opt.zero_grad()
        value = nn.functional.mse_loss(model(x), y)
        calls["n"] += 1
        if calls["n"] == 1:
            value.backward()
            calls["f0"] = value.detach()
            return value
        return calls["f0"] + scale * (value.detach() - calls["f0"])

    return closure


@pytest.mark.parametrize(
    ("scale", "factor"), [(-1.0, 1.5), (0.1, 1.5), (0.5, 1.0), (0.9, 1 / 1.5), (1.0, 1 / 1.5)]
)
def test_damping_moves_in_the_right_direction(scale, factor):
    """With a tiny damping the damped quadratic model is the exact loss of a linear model, so
    the reduction ratio is the reported fraction ``scale`` of the true reduction."""
    model, x, y = _linear_problem()
    lam = 1e-7
    opt = HessianFree(model.parameters(), model=model, loss="mse", damping=lam,
                      line_search=False, preconditioner=None)  # fmt: skip
    opt.step(_scaled_closure(opt, model, x, y, scale))
    d = opt.last_diagnostics
    assert d.reduction_ratio == pytest.approx(scale, rel=1e-4, abs=1e-6)
    assert d.damping == lam
    assert d.next_damping == pytest.approx(lam * factor)
    assert opt.state[next(model.parameters())]["damping"] == pytest.approx(lam * factor)


def test_reduction_ratio_uses_the_damped_model():
    """rho = (f(theta + p) - f(theta)) / (g.p + p.(G + lambda I)p / 2) for the chosen p."""
    model, x, y = _linear_problem()
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    opt = HessianFree(model.parameters(), model=model, loss="mse", damping=0.5,
                      line_search=False, preconditioner=None)  # fmt: skip
    opt.step(_closure(opt, model, x, y))
    d = opt.last_diagnostics
    p = torch.cat([q.detach().reshape(-1) for q in model.parameters()]) - theta0
    X = torch.cat([x, torch.ones(64, 1, dtype=x.dtype)], 1)  # (N, 5): weights then bias
    G1 = 2.0 / y.numel() * X.T @ X  # curvature of one output's row of weights and bias
    W, b = p[:8].view(2, 4), p[8:]
    P = torch.cat([W, b.unsqueeze(1)], 1)  # (2, 5)
    curv = float(sum(P[k] @ G1 @ P[k] for k in range(2))) + 0.5 * float(p @ p)
    with torch.no_grad():
        model_theta = nn.Linear(4, 2, dtype=torch.float64)
        model_theta.weight[:] = theta0[:8].view(2, 4)
        model_theta.bias[:] = theta0[8:]
        model_theta.weight.requires_grad_(True)
    f0 = nn.functional.mse_loss(model_theta(x), y)
    (gw,) = torch.autograd.grad(f0, model_theta.weight)
    gb = 2.0 / y.numel() * (model_theta(x) - y).sum(0).detach()
    slope = float((gw * W).sum() + (gb * b).sum())
    predicted = slope + 0.5 * curv
    assert d.predicted_reduction == pytest.approx(predicted, rel=1e-6)
    assert d.reduction_ratio == pytest.approx((d.new_loss - d.loss) / predicted, rel=1e-6)


def test_line_search_rejects_an_update_that_never_decreases_the_loss():
    model, x, y = _linear_problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = HessianFree(model.parameters(), model=model, loss="mse")
    opt.step(_scaled_closure(opt, model, x, y, -1.0))
    d = opt.last_diagnostics
    assert d.step_size == 0.0 and d.new_loss == d.loss and d.update_norm == 0.0
    assert d.closure_evaluations > 60  # backtracking plus 60 line-search tries
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    # the same step with scale 1 is accepted in full
    opt2 = HessianFree(model.parameters(), model=model, loss="mse")
    opt2.step(_scaled_closure(opt2, model, x, y, 1.0))
    assert opt2.last_diagnostics.step_size == 1.0


def test_backtracking_chooses_an_earlier_iterate_when_later_ones_are_worse():
    torch.manual_seed(0)
    model = LastStep(2, 8, 1, dtype=torch.float64)
    x = torch.randn(6, 32, 2, dtype=torch.float64)
    y = torch.randn(32, 1, dtype=torch.float64)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    opt = HessianFree(model.parameters(), model=model, loss="mse", damping=1e-3,
                      preconditioner=None, line_search=False)  # fmt: skip
    calls = {"n": 0}

    def closure():
        opt.zero_grad()
        value = nn.functional.mse_loss(model(x), y)
        calls["n"] += 1
        if calls["n"] == 1:
            value.backward()
            return value
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        return value.detach() + 50.0 * (theta - theta0).pow(2).sum()  # long steps look bad

    opt.step(closure)
    d = opt.last_diagnostics
    assert d.cg_iterate < d.cg_iterations
    assert d.closure_evaluations >= 3


def test_warm_start_is_the_decayed_previous_cg_solution(monkeypatch):
    torch.manual_seed(0)
    model = LastStep()
    x, y = torch.randn(5, 16, 2), torch.randn(16, 1)
    seen = []
    real = hf_module.conjugate_gradient

    def spy(matvec, b, x0=None, **kw):
        seen.append(None if x0 is None else x0.clone())
        return real(matvec, b, x0, **kw)

    monkeypatch.setattr(hf_module, "conjugate_gradient", spy)
    opt = HessianFree(model.parameters(), model=model, loss="mse", cg_decay=0.5)
    opt.step(_closure(opt, model, x, y))
    direction = torch.cat([opt.state[p]["cg_direction"].reshape(-1) for p in model.parameters()])
    opt.step(_closure(opt, model, x, y))
    assert seen[0] is None
    torch.testing.assert_close(seen[1], 0.5 * direction)


def _run(model, opt, batches):
    for x, y in batches:
        opt.step(_closure(opt, model, x, y), curvature_inputs=x[:, :8])


def test_state_dict_round_trip_resumes_identically():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 24, 2, generator=g), torch.randn(24, 1, generator=g))
               for _ in range(3)]  # fmt: skip
    kw = {"loss": "mse", "structural_damping": 0.03, "weight_decay": 1e-4, "seed": 7}
    torch.manual_seed(0)
    model = LastStep()
    opt = HessianFree(model.parameters(), model=model, **kw)
    _run(model, opt, batches[:2])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _run(model, opt, batches[2:])
    expected = [p.detach().clone() for p in model.parameters()]
    expected_damping = opt.last_diagnostics.next_damping

    torch.manual_seed(1)  # a different initialisation, overwritten by the checkpoint
    model2 = LastStep()
    opt2 = HessianFree(model2.parameters(), model=model2, **kw)
    buf.seek(0)
    ckpt = torch.load(buf)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    state = opt2.state[next(model2.parameters())]
    assert state["step"] == 2 and "cg_direction" in state and state["damping"] > 0
    _run(model2, opt2, batches[2:])
    for p, q in zip(model2.parameters(), expected):
        assert torch.equal(p, q)
    assert opt2.last_diagnostics.step == 3
    assert opt2.last_diagnostics.next_damping == expected_damping


def test_captured_curvature_inputs_equal_explicit_ones():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 16, 2, generator=g), torch.randn(16, 1, generator=g)
    results = []
    for explicit in (False, True):
        torch.manual_seed(0)
        model = LastStep()
        opt = HessianFree(model.parameters(), model=model, loss="mse")
        opt.step(_closure(opt, model, x, y), curvature_inputs=x if explicit else None)
        results.append([p.detach().clone() for p in model.parameters()])
        assert opt.last_diagnostics.curvature_rows == 16
    for p, q in zip(*results):
        assert torch.equal(p, q)


def test_output_fn_selects_the_output_tensor():
    """A bare carousel layer returns (output, state); output_fn picks the tensor."""
    torch.manual_seed(0)
    layer = carousel.RNN(2, 3, impl="reference")
    x, y = torch.randn(4, 8, 2), torch.randn(4, 8, 3)
    opt = HessianFree(layer.parameters(), model=layer, loss="mse", output_fn=lambda r: r.output)

    def closure():
        opt.zero_grad()
        value = nn.functional.mse_loss(layer(x).output, y)
        value.backward()
        return value

    opt.step(closure)
    assert opt.last_diagnostics.curvature_rows == 32
    plain = HessianFree(layer.parameters(), model=layer, loss="mse")
    with pytest.raises(TypeError, match="must return the output tensor"):
        plain.step(closure)
    with pytest.raises(TypeError, match="output_fn must be callable"):
        HessianFree(layer.parameters(), model=layer, output_fn=3)


def test_structural_modules_default_to_the_recurrent_layers():
    model = LastStep()
    opt = HessianFree(model.parameters(), model=model, loss="mse", structural_damping=0.1)
    assert opt._structural_modules == (model.rnn,)

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.RNN(2, 3)
            self.inner = nn.Sequential(carousel.GRU(3, 3), nn.Linear(3, 1))

    s = Stack()
    opt = HessianFree(s.parameters(), model=s, loss="mse", structural_damping=0.1)
    assert opt._structural_modules == (s.a, s.inner[0])


def test_diagnostics_are_logged_not_printed(caplog, capsys):
    torch.manual_seed(0)
    model = LastStep()
    x, y = torch.randn(5, 16, 2), torch.randn(16, 1)
    opt = HessianFree(model.parameters(), model=model, loss="mse")
    with caplog.at_level(logging.INFO, logger="carousel.optim.hessian_free"):
        loss = opt.step(_closure(opt, model, x, y))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert "HessianFree step 1" in caplog.text
    assert capsys.readouterr().out == ""
    d = opt.last_diagnostics.as_dict()
    assert d["step"] == 1 and d["loss"] == pytest.approx(float(loss.detach()))
    assert d["cg_iterations"] >= 1 and d["closure_evaluations"] >= 2


def test_argument_errors():
    model = LastStep()
    params = list(model.parameters())
    with pytest.raises(TypeError, match=r"model must be the nn\.Module"):
        HessianFree(params, model=None)
    with pytest.raises(ValueError, match="loss must be one of"):
        HessianFree(params, model=model, loss="hinge")
    with pytest.raises(ValueError, match="damping must be > 0, got 0"):
        HessianFree(params, model=model, damping=0.0)
    with pytest.raises(ValueError, match="damping_factor must be > 1"):
        HessianFree(params, model=model, damping_factor=1.0)
    with pytest.raises(ValueError, match="cg_decay must be in"):
        HessianFree(params, model=model, cg_decay=1.5)
    with pytest.raises(ValueError, match="structural_damping must be >= 0"):
        HessianFree(params, model=model, structural_damping=-1.0)
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        HessianFree(params, model=model, preconditioner="jacobi")
    with pytest.raises(ValueError, match="max_cg_iter must be >= 1"):
        HessianFree(params, model=model, max_cg_iter=0)
    with pytest.raises(TypeError, match="line_search must be a bool"):
        HessianFree(params, model=model, line_search="yes")
    with pytest.raises(ValueError, match="exactly one parameter group"):
        HessianFree([{"params": params[:2]}, {"params": params[2:]}], model=model)
    with pytest.raises(ValueError, match=r"option\(s\) \['lr'\] are not used"):
        HessianFree([{"params": params, "lr": 0.1}], model=model)
    with pytest.raises(ValueError, match="is not a parameter of model"):
        HessianFree([nn.Parameter(torch.zeros(2))], model=model)
    with pytest.raises(ValueError, match=r"no carousel or torch\.nn recurrent layer"):
        lin = nn.Linear(2, 1)
        HessianFree(lin.parameters(), model=lin, structural_damping=0.1)
    with pytest.raises(ValueError, match="must be submodules of model"):
        HessianFree(params, model=model, structural_damping=0.1,
                    structural_modules=[nn.Linear(2, 2)])  # fmt: skip
    opt = HessianFree(params, model=model, loss="mse")
    with pytest.raises(ValueError, match="exactly one parameter group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_step_errors():
    torch.manual_seed(0)
    model = LastStep()
    x, y = torch.randn(5, 8, 2), torch.randn(8, 1)
    opt = HessianFree(model.parameters(), model=model, loss="mse")
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step(None)
    with pytest.raises(ValueError, match="must return a scalar loss"):
        opt.step(lambda: torch.ones(2))
    with pytest.raises(TypeError, match="must return the loss"):
        opt.step(lambda: "loss")

    def nan_closure():
        opt.zero_grad()
        value = nn.functional.mse_loss(model(x), y) * float("nan")
        value.backward()
        return value

    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        opt.step(nan_closure)

    def no_model_call():
        opt.zero_grad()
        value = (sum(p.sum() for p in model.parameters()) - 1.0) ** 2
        value.backward()
        return value

    with pytest.raises(ValueError, match="never called model"):
        opt.step(no_model_call)
    opt_ce = HessianFree(model.parameters(), model=model, loss="cross_entropy")
    with pytest.raises(ValueError, match="at least 2 classes"):
        opt_ce.step(_closure(opt_ce, model, x, y, loss="mse"))


@pytest.mark.gpu
def test_step_on_gpu():
    torch.manual_seed(0)
    model = LastStep().cuda()
    x, y = torch.randn(5, 16, 2, device="cuda"), torch.randn(16, 1, device="cuda")
    opt = HessianFree(model.parameters(), model=model, loss="mse", structural_damping=0.03)
    before = copy.deepcopy(model.state_dict())
    opt.step(_closure(opt, model, x, y), curvature_inputs=x[:, :8])
    assert opt.last_diagnostics.new_loss <= opt.last_diagnostics.loss
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
