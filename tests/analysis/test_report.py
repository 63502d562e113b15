"""Plots, the HTML report and the lectures' demonstrations (small sizes)."""

import base64
import re

import pytest
import torch
from torch import nn

import carousel
from carousel.analysis import (
    analyze,
    demos,
    gradient_norms_through_time,
    jacobian_spectrum,
    lyapunov_exponents,
    saliency,
    traces,
)

plots = pytest.importorskip("carousel.analysis.plots")
pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_plot_writes_a_png(tmp_path):
    lstm = carousel.LSTM(3, 5, num_layers=2)
    x = torch.randn(12, 2, 3)
    flow = gradient_norms_through_time(lstm, x)
    figs = {
        "flow": plots.plot_gradient_flow(flow, path=tmp_path / "a" / "flow.png"),
        "jac": plots.plot_jacobian_spectrum(
            jacobian_spectrum(lstm, x), lyapunov_exponents(lstm, x), path=tmp_path / "jac.png"
        ),
        "traces": plots.plot_traces(traces(lstm, x)["l1"], batch_index=1, path=tmp_path / "t.png"),
        "sal": plots.plot_saliency(
            saliency(lstm, x), labels=list("abcdefghijkl"), path=tmp_path / "s.png"
        ),
        "dist": plots.plot_norm_vs_distance({"a": flow.by_distance()}, path=tmp_path / "d.png"),
    }
    for name in ("a/flow", "jac", "t", "s", "d"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG
    assert all(type(f).__name__ == "Figure" for f in figs.values())


def test_analyze_writes_a_self_contained_report(tmp_path):
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = carousel.GRU(3, 6, num_layers=2)
            self.head = nn.Linear(6, 4)

        def forward(self, x, lengths=None):
            out, h = self.rnn(x, lengths=lengths)
            return self.head(h[-1])

    model = Classifier().train()
    lengths = torch.tensor([10, 6])
    rep = analyze(model, torch.randn(10, 2, 3), tmp_path / "r", lyapunov_k=2, batch_index=1,
                  forward_kwargs={"lengths": lengths}, title="T<1>")  # fmt: skip
    assert model.training  # evaluation mode only inside
    assert list(rep.images) == ["gradients", "jacobians", "traces_rnn.l0", "traces_rnn.l1",
                                "saliency"]  # fmt: skip
    page = rep.html.read_text()
    assert "<h1>T&lt;1&gt;</h1>" in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 5 and all(base64.b64decode(i)[:8] == PNG for i in imgs)
    assert 'src="' not in page.replace('src="data:', "")  # nothing outside the file
    j = rep.numbers["jacobians"]
    assert (
        j["regime"] in ("ordered", "edge of chaos", "chaotic") and len(j["rnn.l0"]["lyapunov"]) == 2
    )
    sal = rep.numbers["saliency"]
    assert sal["scores"][6:] == [0.0] * 4 and min(sal["scores"][:6]) > 0  # 6 steps long
    # only one analysis, given as a string
    only = analyze(model, torch.randn(10, 2, 3), tmp_path / "g", what="gradients")
    assert list(only.images) == ["gradients"] and set(only.seconds) == {"record", "gradients"}
    with pytest.raises(ValueError, match="what must be a non-empty subset"):
        analyze(model, torch.randn(4, 1, 3), tmp_path, what="gradients,colours")


def test_vanishing_demo_small():
    demo = demos.vanishing_gradients(40, hidden_size=8, batch_size=4, scales=(0.5, 3.0))
    rnn_small, rnn_big = (demo.curves[f"tanh RNN, W_hh = {s} x orthogonal"] for s in ("0.5", "3"))
    assert rnn_small[-1] < 1e-8 < rnn_big[-1]
    assert demo.curves["LSTM (chrono gate init)"][-1] > demo.curves["LSTM (torch.nn init)"][-1]
    assert demo.curves["GRU (chrono gate init)"][-1] > demo.curves["GRU (torch.nn init)"][-1]
    assert all(float(c[0]) == pytest.approx(1.0) for c in demo.curves.values())
    assert demo.lyapunov["tanh RNN, W_hh = 0.5 x orthogonal"] < 0
    assert "per step" in demo.table() and len(demo.table().splitlines()) == 2 + 6
    assert set(demos.vanishing_gradients(10, hidden_size=4, batch_size=2,
                                         gate_init="chrono").curves) == {
        "tanh RNN, W_hh = 0.9 x orthogonal", "tanh RNN, W_hh = 1.5 x orthogonal",
        "GRU (chrono gate init)", "LSTM (chrono gate init)",
    }  # fmt: skip
    with pytest.raises(ValueError, match="gate_init must be one of"):
        demos.vanishing_gradients(10, gate_init="zero")
    with pytest.raises(ValueError, match="length must be an int >= 2"):
        demos.vanishing_gradients(1)


def test_memory_cell_holds_a_value_and_carries_the_error(tmp_path):
    demo = demos.memory_cell(300)
    assert demo.read_step == 240 and demo.forget_step == 270
    assert demo.read_value == pytest.approx(0.7, abs=1e-5)
    assert demo.gradient_to_value == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(demo.error_flow[:241], torch.ones(241, dtype=torch.float64), atol=1e-5)
    assert (demo.error_flow[241:] == 0).all()
    assert int(demo.saliency.argmax()) == 0 and float(demo.saliency[1:240].sum()) < 1e-3
    assert abs(demo.after_forget) < 1e-6
    assert "read at step 240: 0.70000" in demo.report()
    demos.plot_memory_cell(demo, tmp_path / "m.png")
    demos.plot_vanishing(demos.vanishing_gradients(10, hidden_size=4, batch_size=2),
                         tmp_path / "v.png")  # fmt: skip
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG == (tmp_path / "v.png").read_bytes()[:8]
    with pytest.raises(ValueError, match="need 0 < read_step < forget_step"):
        demos.memory_cell(100, read_step=90, forget_step=50)
