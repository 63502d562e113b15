import pytest
import torch

import carousel
from carousel import init


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_orthogonal_square_and_rectangular():
    w = init.orthogonal_(torch.empty(6, 6, dtype=torch.float64), gain=2.0, generator=gen())
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(w.T @ w, 4 * torch.eye(6, dtype=torch.float64))
    tall = init.orthogonal_(torch.empty(8, 3, dtype=torch.float64), generator=gen())
    torch.testing.assert_close(tall.T @ tall, torch.eye(3, dtype=torch.float64))
    wide = init.orthogonal_(torch.empty(3, 8, dtype=torch.float64), generator=gen())
    torch.testing.assert_close(wide @ wide.T, torch.eye(3, dtype=torch.float64))


def test_identity():
    w = init.identity_(torch.empty(4, 4), 0.5)
    assert torch.equal(w, 0.5 * torch.eye(4))


@pytest.mark.parametrize("nonzero", [None, 3])
def test_echo_state_spectral_radius(nonzero):
    w = init.echo_state_(torch.empty(20, 20), 1.1, nonzero=nonzero, generator=gen())
    assert init.spectral_radius(w) == pytest.approx(1.1, rel=1e-5)
    if nonzero is not None:
        assert ((w != 0).sum(1) == nonzero).all()


def test_scale_to_spectral_radius():
    w = torch.randn(10, 10, generator=gen(), dtype=torch.float64)
    init.scale_to_spectral_radius_(w, 0.9)
    assert init.spectral_radius(w) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="spectral radius 0"):
        init.scale_to_spectral_radius_(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="square"):
        init.scale_to_spectral_radius_(torch.zeros(3, 4), 1.0)


def test_sparse_counts_and_std():
    w = init.sparse_(torch.empty(50, 40), nonzero=15, std=2.0, generator=gen())
    assert ((w != 0).sum(1) == 15).all()
    assert w[w != 0].std().item() == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError, match="nonzero must be an int >= 1"):
        init.sparse_(torch.empty(2, 2), nonzero=0)


def test_uniform_normal_ranges_and_determinism():
    u = init.uniform_(torch.empty(1000), 0.3, generator=gen(1))
    assert u.abs().max() <= 0.3 and u.abs().max() > 0.25
    assert torch.equal(u, init.uniform_(torch.empty(1000), 0.3, generator=gen(1)))
    n = init.normal_(torch.empty(10000), 0.1, generator=gen())
    assert n.std().item() == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="std must be >= 0"):
        init.normal_(torch.empty(2), -1.0)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        init.uniform_(torch.empty(2), 1.0, generator=0)


def blocks(w, H):
    return [w[k * H : (k + 1) * H] for k in range(w.shape[0] // H)]


def test_initialize_orthogonal_per_gate_block_all_layers_and_directions():
    H = 5
    lstm = carousel.LSTM(3, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    init.initialize_(
        lstm, recurrent="orthogonal", input="uniform", input_scale=0.01, generator=gen()
    )
    for name in ("weight_hh_l0", "weight_hh_l1_reverse"):
        for b in blocks(getattr(lstm, name), H):
            torch.testing.assert_close(b @ b.T, torch.eye(H, dtype=torch.float64))
    assert lstm.weight_ih_l1.abs().max() <= 0.01


def test_initialize_identity_irnn():
    rnn = carousel.RNN(2, 6, nonlinearity="relu")
    init.initialize_(rnn, recurrent="identity", input="normal", input_scale=0.001, bias=0.0)
    assert torch.equal(rnn.weight_hh_l0, torch.eye(6))
    assert torch.equal(rnn.bias_ih_l0, torch.zeros(6)) and torch.equal(
        rnn.bias_hh_l0, torch.zeros(6)
    )


def test_initialize_echo_state_gru_recurrent_cells_and_torch_nn():
    H = 8
    layer = carousel.Recurrent([carousel.GRUCell(2, H), carousel.GRUCell(H, H)])
    init.initialize_(layer, recurrent="echo-state", recurrent_scale=0.95, generator=gen())
    for k in range(2):
        for b in blocks(layer.cells[k].weight_hh, H):
            assert init.spectral_radius(b) == pytest.approx(0.95, rel=1e-4)
    nn_lstm = torch.nn.LSTM(2, H)
    init.initialize_(nn_lstm, recurrent="echo-state", generator=gen())
    for b in blocks(nn_lstm.weight_hh_l0, H):
        assert init.spectral_radius(b) == pytest.approx(1.1, rel=1e-4)


def test_initialize_layers_selects_layers():
    lstm = carousel.LSTM(3, 4, num_layers=2)
    before = lstm.weight_hh_l0.detach().clone()
    init.initialize_(lstm, recurrent="identity", layers=[1])
    assert torch.equal(lstm.weight_hh_l0, before)
    assert torch.equal(lstm.weight_hh_l1[:4], torch.eye(4))


def test_initialize_inside_a_model_and_deterministic():
    def make(seed):
        model = torch.nn.Sequential()
        model.add_module("rnn", carousel.GRU(2, 4))
        return init.initialize_(model, recurrent="orthogonal", generator=gen(seed))

    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.rnn.weight_hh_l0, b.rnn.weight_hh_l0)
    assert not torch.equal(a.rnn.weight_hh_l0, c.rnn.weight_hh_l0)


def test_forget_gate_bias():
    lstm = carousel.LSTM(3, 4, num_layers=2)
    init.forget_gate_bias_(lstm, 1.0)
    for l in (0, 1):
        total = getattr(lstm, f"bias_ih_l{l}") + getattr(lstm, f"bias_hh_l{l}")
        assert torch.equal(total[4:8], torch.ones(4))
    # NIG has rows f, g, o: the forget block is the first one
    nig = carousel.LSTM(3, 4, variant="NIG")
    init.initialize_(nig, forget_bias=2.0)
    assert torch.equal(nig.bias_ih_l0[:4] + nig.bias_hh_l0[:4], torch.full((4,), 2.0))


def test_errors():
    with pytest.raises(ValueError, match="recurrent must be one of"):
        init.initialize_(carousel.RNN(2, 3), recurrent="glorot")
    with pytest.raises(ValueError, match="input must be one of"):
        init.initialize_(carousel.RNN(2, 3), input="identity")
    with pytest.raises(ValueError, match="found no recurrent weights"):
        init.initialize_(torch.nn.Linear(2, 3), recurrent="orthogonal")
    with pytest.raises(ValueError, match="needs square"):
        init.initialize_(carousel.LSTM(3, 4, proj_size=2), recurrent="identity")
    with pytest.raises(ValueError, match="no forget gate"):
        init.forget_gate_bias_(carousel.LSTM(3, 4, variant="CIFG"))
    with pytest.raises(ValueError, match="found no LSTM forget-gate bias"):
        init.forget_gate_bias_(carousel.GRU(3, 4))
    with pytest.raises(ValueError, match="2-D weight matrix"):
        init.orthogonal_(torch.empty(3))
