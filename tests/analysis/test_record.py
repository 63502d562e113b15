"""Recording per-step states and gates from layers and models (carousel.analysis.record)."""

import pytest
import torch
from torch import nn

import carousel
from carousel.analysis import find_layers, record, traces

D = torch.float64
T, B, I, H = 6, 3, 2, 4
LENGTHS = torch.tensor([6, 2, 4])


@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_matches_the_layers_own_traces(family, bidirectional, batch_first, use_lengths):
    layer = getattr(carousel, family)(
        I, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, dtype=D
    )
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=D)
    kw = {"lengths": LENGTHS} if use_lengths else {}
    ref = layer(x, return_states=True, return_gates=True, **kw)
    rec = record(layer, x, forward_kwargs=kw)
    D_ = 2 if bidirectional else 1
    assert list(rec.layers) == [
        f"l{l}" + ("_reverse" if d else "") for l in range(2) for d in range(D_)
    ]
    mask = (torch.arange(T).unsqueeze(1) < LENGTHS).to(D) if use_lengths else torch.ones(T, B)
    for k, lay in enumerate(rec.layers.values()):
        fields = ("h", "c") if family == "LSTM" else ("h",)
        assert lay.field_names == fields
        for i, f in enumerate(fields):
            want = (ref.states if family != "LSTM" else ref.states[i])[k]
            if batch_first:
                want = want.transpose(0, 1)
            torch.testing.assert_close(lay.states[f], want * mask.unsqueeze(-1))
        for g, v in lay.gates.items():
            want = ref.gates[g][k].transpose(0, 1) if batch_first else ref.gates[g][k]
            torch.testing.assert_close(v, want)
        assert lay.inputs.shape == (T, B, I if k < D_ else D_ * H)
        assert (lay.mask is not None) == use_lengths
    out = rec.output[0]
    torch.testing.assert_close(out, ref.output)


def test_traces_shapes_per_family():
    x = torch.randn(T, B, I)
    lstm = traces(carousel.LSTM(I, H), x)["l0"]
    assert set(lstm.states) == {"h", "c"} and set(lstm.gates) == {"i", "f", "g", "o"}
    assert all(v.shape == (T, B, H) for v in [*lstm.states.values(), *lstm.gates.values()])
    gru = traces(carousel.GRU(I, H), x)["l0"]
    assert set(gru.states) == {"h"} and set(gru.gates) == {"r", "z", "n"}
    rnn = traces(carousel.RNN(I, H), x)["l0"]
    assert set(rnn.states) == {"h"} and rnn.gates == {}
    unbatched = traces(carousel.LSTM(I, H, variant="CIFG"), torch.randn(T, I))["l0"]
    assert unbatched.states["c"].shape == (T, 1, H)


def test_models_holding_layers_multiple_calls_and_custom_cells(linear_cell):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = carousel.LSTM(I, H)
            self.decoder = carousel.Recurrent(linear_cell(torch.eye(H), input_size=H))

        def forward(self, x):
            out, _ = self.encoder(x)
            # the decoder called one step at a time, carrying its state
            h = torch.zeros(1, x.shape[1], H)
            ys = []
            for t in range(x.shape[0]):
                y, h = self.decoder(out[t : t + 1], h)
                ys.append(y)
            return torch.cat(ys)

    rec = record(Model(), torch.randn(T, B, I))
    assert list(rec.layers) == ["encoder.l0", "decoder.l0"]
    dec = rec.layers["decoder.l0"]
    assert dec.states["h"].shape == (T, B, H) and dec.gates == {}
    torch.testing.assert_close(dec.states["h"], rec.output.detach())


def test_impl_and_methods_restored_and_errors():
    lstm = carousel.LSTM(I, H)
    record(lstm, torch.randn(T, B, I))
    assert lstm.impl == "auto"
    assert "forward" not in vars(lstm)
    assert all("step_with_params" not in vars(c) for c in lstm._all_cells())
    with pytest.raises(ValueError, match="holds no carousel recurrent layer"):
        find_layers(nn.LSTM(I, H))
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        find_layers(lambda x: x)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = carousel.RNN(I, H)

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="ran none of its carousel layers"):
        record(Unused(), torch.randn(T, B, I))
