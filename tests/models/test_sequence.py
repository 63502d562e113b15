import pytest
import torch

import carousel
from carousel._config import ConfigError
from carousel.init import spectral_radius
from carousel.models import InitConfig, ModelConfig, SequenceModel, build_recurrent


@pytest.mark.parametrize(
    ("cell", "cls"), [("rnn", carousel.RNN), ("lstm", carousel.LSTM), ("gru", carousel.GRU)]
)
def test_build_recurrent_kinds(cell, cls):
    layer = build_recurrent(ModelConfig(cell=cell, hidden_size=5, num_layers=2), 3)
    assert isinstance(layer, cls) and layer.num_layers == 2 and layer.hidden_size == 5


def test_per_step_and_last_readouts():
    x = torch.randn(7, 4, 3)
    m = SequenceModel(3, 2, ModelConfig(cell="gru", hidden_size=6))
    out = m(x)
    assert out.output.shape == (7, 4, 2) and out.state.shape == (1, 4, 6)
    torch.testing.assert_close(out.output, m.head(m.rnn(x)[0]))
    last = SequenceModel(3, 2, ModelConfig(cell="lstm", hidden_size=6), readout="last")
    lengths = torch.tensor([7, 3, 5, 1])
    y = last(x, lengths=lengths).output
    assert y.shape == (4, 2)
    full = last.rnn(x, lengths=lengths)[0]  # zero past each end
    torch.testing.assert_close(y, last.head(full[lengths - 1, torch.arange(4)]))


def test_bidirectional_last_readout_uses_both_directions():
    m = SequenceModel(
        3, 1, ModelConfig(cell="rnn", hidden_size=4, bidirectional=True), readout="last"
    )
    x = torch.randn(5, 2, 3)
    out, h = m.rnn(x)
    torch.testing.assert_close(m(x).output, m.head(torch.cat([out[-1, :, :4], out[0, :, 4:]], -1)))


def test_embedding_inputs_and_carried_state():
    m = SequenceModel(10, 10, ModelConfig(cell="lstm", hidden_size=8), embedding_size=4)
    tokens = torch.randint(0, 10, (6, 3))
    whole = m(tokens)
    first = m(tokens[:4])
    second = m(tokens[4:], first.state)
    torch.testing.assert_close(torch.cat([first.output, second.output]), whole.output)


def test_init_config_is_applied_with_generator():
    cfg = ModelConfig(cell="rnn", hidden_size=8, init=InitConfig(recurrent="echo-state"))
    a = SequenceModel(2, 1, cfg, generator=torch.Generator().manual_seed(3))
    b = SequenceModel(2, 1, cfg, generator=torch.Generator().manual_seed(3))
    assert spectral_radius(a.rnn.weight_hh_l0) == pytest.approx(1.1, rel=1e-4)
    assert torch.equal(a.rnn.weight_hh_l0, b.rnn.weight_hh_l0)


def test_model_config_reports_every_error_at_once():
    with pytest.raises(ConfigError) as e:
        ModelConfig(cell="gru", hidden_size=0, nonlinearity="relu", dropout=2.0)
    msg = str(e.value)
    assert len(e.value.errors) == 3
    assert "model.hidden_size must be >= 1, got 0" in msg
    assert "model.nonlinearity applies to cell='rnn' only" in msg
    assert "model.dropout must be <= 1.0" in msg
    with pytest.raises(ConfigError, match=r"model\.init\.recurrent must be one of"):
        InitConfig(recurrent="magic")
    with pytest.raises(ConfigError, match="must be smaller than hidden_size"):
        ModelConfig(cell="lstm", hidden_size=4, proj_size=4)


def test_sequence_model_argument_errors():
    with pytest.raises(ValueError, match="readout must be one of"):
        SequenceModel(2, 1, readout="mean")
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        SequenceModel(2, 1, {"cell": "rnn"})


def test_construction_with_a_generator_is_deterministic_and_leaves_global_rng():
    cfg = ModelConfig(cell="lstm", hidden_size=6)
    state = torch.get_rng_state()
    a = SequenceModel(2, 1, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global generator does not matter
    b = SequenceModel(2, 1, cfg, generator=torch.Generator().manual_seed(1))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
