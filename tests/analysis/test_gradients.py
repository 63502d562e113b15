"""Gradient flow through time (carousel.analysis.gradients): known answers and an oracle."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import carousel
from carousel.analysis import GradientFlow, default_loss, gradient_norms_through_time
from carousel.functional import LSTMState
from carousel.functional.lstm import lstm_step

D = torch.float64


@pytest.mark.parametrize("w", [0.9, 1.1])
def test_linear_rnn_follows_w_to_the_t_exactly(linear_cell, w):
    T = 40
    layer = carousel.Recurrent(linear_cell(torch.tensor([[w]], dtype=D)))
    flow = gradient_norms_through_time(layer, torch.randn(T, 3, 1, dtype=D))
    want = w ** torch.arange(T - 1, -1, -1, dtype=D)  # dL/dh_t = w^(T-1-t) for L = h_(T-1)
    for b in range(3):
        torch.testing.assert_close(flow.norms["l0"]["h"][:, b], want, rtol=1e-12, atol=0)
    torch.testing.assert_close(flow.by_distance(), w ** torch.arange(T, dtype=D))
    # loss at every step: dL/dh_t = sum_{s >= t} w^(s-t)
    every = gradient_norms_through_time(layer, torch.randn(T, 3, 1, dtype=D), loss_at="every")
    k = torch.arange(T - 1, -1, -1, dtype=D) + 1
    torch.testing.assert_close(every.curve(), (1 - w**k) / (1 - w), rtol=1e-12, atol=0)


def test_linear_rnn_orthogonal_times_w(linear_cell):
    T, H, w = 25, 5, 0.8
    q = torch.linalg.qr(torch.randn(H, H, dtype=D))[0]
    layer = carousel.Recurrent(linear_cell(w * q))
    flow = gradient_norms_through_time(layer, torch.randn(T, 2, 1, dtype=D))
    want = math.sqrt(H) * w ** torch.arange(T - 1, -1, -1, dtype=D)  # dL/dh_T = ones
    torch.testing.assert_close(flow.curve(), want, rtol=1e-10, atol=0)


def _oracle(lstm, x, lengths, loss_at):
    """dL/dh_t and dL/dc_t of a 2-layer bidirectional LSTM by hand: each sequence alone,
    unpadded, with zero probes added to every state (dL/dprobe = dL/dstate)."""
    H = lstm.hidden_size
    out = {}
    for b, n in enumerate(lengths.tolist()):
        inp = x[:n, b : b + 1]
        probes = {}
        for l in range(2):
            outs = []
            for d in (0, 1):
                suf = f"_l{l}" + ("_reverse" if d else "")
                W = [
                    getattr(lstm, p + suf) for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ]
                seq = inp if d == 0 else inp.flip(0)
                ph = torch.zeros(n, 1, H, dtype=D, requires_grad=True)
                pc = torch.zeros(n, 1, H, dtype=D, requires_grad=True)
                h = c = torch.zeros(1, H, dtype=D)
                ys = []
                for t in range(n):
                    _, s, g = lstm_step(seq[t], LSTMState(h, c), *W)
                    c = s.c + pc[t]  # the probe on c_t acts before h_t = o_t tanh(c_t)
                    h = g["o"] * torch.tanh(c) + ph[t]
                    ys.append(h)
                y = torch.stack(ys)
                outs.append(y if d == 0 else y.flip(0))
                probes[f"l{l}" + ("_reverse" if d else "")] = (ph, pc, d)
            inp = torch.cat(outs, -1)
        loss = inp[-1].sum() if loss_at == "last" else inp.sum()
        flat = [p for ph, pc, _ in probes.values() for p in (ph, pc)]
        grads = iter(torch.autograd.grad(loss, flat))
        for name, (_, _, d) in probes.items():
            for f in ("h", "c"):
                g = next(grads)[:, 0].norm(dim=-1)
                out.setdefault(name, {}).setdefault(f, []).append(g if d == 0 else g.flip(0))
    return out


@pytest.mark.parametrize("loss_at", ["last", "every"])
def test_stacked_bidirectional_lstm_with_lengths_matches_an_oracle(loss_at):
    T, B, I = 7, 3, 2
    lstm = carousel.LSTM(I, 4, num_layers=2, bidirectional=True, dtype=D)
    x = torch.randn(T, B, I, dtype=D)
    lengths = torch.tensor([7, 3, 5])
    flow = gradient_norms_through_time(
        lstm, x, loss_at=loss_at, forward_kwargs={"lengths": lengths}
    )
    want = _oracle(lstm, x, lengths, loss_at)
    assert flow.tracks == ["l0", "l0_reverse", "l1", "l1_reverse"]
    for track, fields in want.items():
        for f, per_seq in fields.items():
            got = flow.norms[track][f]
            for b, g in enumerate(per_seq):
                n = int(lengths[b])
                torch.testing.assert_close(got[:n, b], g)
                assert (got[n:, b] == 0).all()


def test_custom_loss_model_with_head_and_parameter_grads_untouched():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = carousel.GRU(3, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = Classifier()
    y = torch.tensor([0, 1])
    flow = gradient_norms_through_time(
        model, torch.randn(2, 9, 3), lambda out: nn.functional.cross_entropy(out, y)
    )
    assert flow.tracks == ["rnn.l0"] and flow.norms["rnn.l0"]["h"].shape == (9, 2)
    assert all(p.grad is None for p in model.parameters())
    s = flow.summary()
    assert set(s) == {f"gradflow/rnn.l0/h/{k}" for k in ("first", "last", "log10_ratio")}
    assert s["gradflow/rnn.l0/h/log10_ratio"] == pytest.approx(
        math.log10(s["gradflow/rnn.l0/h/first"] / s["gradflow/rnn.l0/h/last"])
    )
    # a frozen model still has a graph (through the input)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = gradient_norms_through_time(model, torch.randn(2, 9, 3), lambda out: out.sum())
    assert frozen.norms["rnn.l0"]["h"].abs().sum() > 0


def test_packed_input_equals_padded_input_with_lengths():
    """A PackedSequence input (a tuple itself) is one argument of the model, not several."""
    torch.manual_seed(0)
    lstm, x, lengths = carousel.LSTM(2, 3, num_layers=2), torch.randn(5, 2, 2), torch.tensor([5, 3])
    packed = gradient_norms_through_time(lstm, pack_padded_sequence(x, lengths))
    padded = gradient_norms_through_time(lstm, x, forward_kwargs={"lengths": lengths})
    assert packed.norms.keys() == padded.norms.keys()
    for track, fields in padded.norms.items():
        for name, norms in fields.items():
            torch.testing.assert_close(packed.norms[track][name], norms)


def test_default_loss_and_errors():
    out = torch.arange(24.0).view(4, 3, 2)
    assert default_loss(out) == out[-1].sum()
    assert default_loss(out, "every") == out.sum()
    assert default_loss(out.transpose(0, 1), batch_first=True) == out[-1].sum()
    assert (
        default_loss(out, lengths=torch.tensor([1, 4, 2]))
        == out[0, 0].sum() + out[3, 1].sum() + out[1, 2].sum()
    )
    assert default_loss((torch.ones(3, 2), None)) == 6.0
    # a PackedSequence is a tuple too, but it is the output itself, not (output, state)
    lengths = torch.tensor([4, 2, 1])
    packed = pack_padded_sequence(out, lengths)
    every = out[:4, 0].sum() + out[:2, 1].sum() + out[0, 2].sum()
    last = out[3, 0].sum() + out[1, 1].sum() + out[0, 2].sum()
    for given in (packed, (packed, None)):
        assert default_loss(given, "every") == every
        assert default_loss(given, lengths=lengths) == last
    with pytest.raises(TypeError, match="output is a str; pass a loss_fn"):
        default_loss(("text", None))
    with pytest.raises(ValueError, match="loss_at must be one of"):
        default_loss(out, "first")
    with pytest.raises(ValueError, match="needs an output with a time axis"):
        default_loss(torch.ones(3, 2), "every")
    lstm, x = carousel.LSTM(2, 3), torch.randn(5, 2, 2)
    with pytest.raises(ValueError, match="loss_at selects the steps of the default loss"):
        gradient_norms_through_time(lstm, x, lambda o: o[0].sum(), loss_at="every")
    with pytest.raises(ValueError, match="loss_at must be one of"):
        gradient_norms_through_time(lstm, x, loss_at="middle")
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        gradient_norms_through_time(lstm, x, lambda o: o[0])
    with pytest.raises(ValueError, match="gradients would not be finite"):
        gradient_norms_through_time(lstm, x, lambda o: o[0].sum() * math.inf)
    flow = gradient_norms_through_time(lstm, x)
    with pytest.raises(KeyError, match="no track 'l7'"):
        flow.curve("l7")
    with pytest.raises(KeyError, match="has no field 'z'"):
        flow.curve("l0", "z")
    assert isinstance(flow, GradientFlow) and flow.loss == pytest.approx(
        float(lstm(x)[0][-1].sum().detach())
    )
