"""The binary-addition study: the automaton read out of a hand-wired 3-unit adder is lecture
7c's carry automaton; the full study (engine runs) is a slow test."""

import pytest
import torch
from torch import nn

import carousel
from carousel.study.binary_addition import (
    COLUMNS,
    _automaton_adds,
    binary_addition_study,
    carry_automaton,
    extract_adder_automaton,
)


class HandAdder(nn.Module):
    """A tanh RNN with 3 units wired to add: unit j fires when a + b + carry >= j (the carry is
    unit 2 one step back), the output is the parity u1 - u2 + u3."""

    def __init__(self, K: float = 20.0):
        super().__init__()
        self.rnn = carousel.RNN(2, 3)
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            self.rnn.weight_ih_l0.fill_(K)
            self.rnn.weight_hh_l0.zero_()
            self.rnn.weight_hh_l0[:, 1] = 0.5 * K  # carry = (h2 + 1) / 2
            self.rnn.bias_ih_l0.copy_(K * (0.75 - torch.tensor([1.0, 2.0, 3.0])))
            self.rnn.bias_hh_l0.zero_()
            self.head.weight.copy_(torch.tensor([[5.0, -5.0, 5.0]]))
            self.head.bias.zero_()


def test_carry_automaton_is_minimal_and_named():
    a, names = carry_automaton()
    assert a.num_states == 4 and a.symbols == COLUMNS
    assert names[a.start] == "no carry\nprint 0"
    assert sorted(names) == sorted(
        [f"{c}\nprint {b}" for c in ("carry", "no carry") for b in (0, 1)]
    )
    assert _automaton_adds(a, 64, 256, seed=0) == 1.0


def test_automaton_of_a_hand_wired_adder():
    model = HandAdder()
    got = extract_adder_automaton(model, bits=12, sequences=256)
    assert got.num_states == 4
    assert got.equivalent(carry_automaton()[0])
    assert _automaton_adds(got, 64, 256, seed=1) == 1.0


@pytest.mark.slow
def test_binary_addition_study_end_to_end(tmp_path):
    study = binary_addition_study(seeds=1, hidden_size=3, steps=1500, out_dir=tmp_path)
    (run,) = study.runs
    assert run.steps_to_100 is not None and run.valid_accuracy == 1.0
    assert study.matches_carry_automaton and study.automaton.num_states == 4
    for name in ("binary_addition.md", "binary_addition.json", "automaton.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 0}, "seeds must be >= 1, got 0"),  # before: max() of an empty sequence
        ({"steps": -1}, "steps must be >= 1, got -1"),  # before: named checkpoint_every
        ({"delay": -1}, "delay must be >= 0, got -1"),
    ],
)
def test_study_arguments_are_checked_first(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        binary_addition_study(out_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing run, nothing written


def test_cli_bad_arguments_are_one_line_and_status_2(tmp_path, capsys):
    from carousel.cli import main

    assert main(["study", "binary-addition", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["study", "capacity", "--bits", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "carousel study binary-addition: binary_addition_study: seeds must be >= 1" in err
    assert "carousel study capacity: capacity_study: bits must be >= 1, got 0" in err
