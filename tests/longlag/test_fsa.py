"""Automaton extraction on hand-built machines: a fake "network" whose hidden states are noisy
codes of a known automaton's states must give that automaton back, minimised."""

import pytest
import torch

from carousel.study.fsa import Automaton, extract_automaton, kmeans, plot_automaton

COLUMNS = ("00", "01", "10", "11")  # input symbol x = 2a + b


def carry_automaton() -> Automaton:
    """Lecture 7c's adder: state = (carry, sum bit just printed); start = no carry."""
    trans = torch.empty(4, 4, dtype=torch.long)
    outputs = torch.empty(4, dtype=torch.long)
    for carry in (0, 1):
        for bit in (0, 1):
            s = 2 * carry + bit
            outputs[s] = bit
            for x in range(4):
                total = (x >> 1) + (x & 1) + carry
                trans[s, x] = 2 * (total // 2) + total % 2
    return Automaton(trans, outputs, 0, COLUMNS)


def redundant_adder() -> Automaton:
    """A 6-state adder with two duplicated states (4 and 5 behave as 0 and 3)."""
    base = carry_automaton()
    trans = torch.cat([base.transitions, base.transitions[[0, 3]]])
    trans[trans == 0] = torch.tensor(4)  # half the moves into state 0 go to its twin
    trans[0] = base.transitions[0]
    outputs = torch.cat([base.outputs, base.outputs[[0, 3]]])
    return Automaton(trans, outputs, 0, COLUMNS)


def simulate(machine: Automaton, T: int, B: int, noise: float, seed: int = 0):
    """Hidden states: each automaton state has a random code in R^3; add noise."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(machine.num_states, 3, generator=g) * 3
    sym = torch.randint(0, 4, (T, B), generator=g)
    state = torch.full((B,), machine.start)
    states, outs = [], []
    for t in range(T):
        state = machine.transitions[state, sym[t]]
        states.append(codes[state] + noise * torch.randn(B, 3, generator=g))
        outs.append(machine.outputs[state])
    return torch.stack(states), codes[machine.start], sym, torch.stack(outs)


def test_minimise_merges_equivalent_states():
    big = redundant_adder()
    assert big.num_states == 6
    small = big.minimise()
    assert small.num_states == 4
    assert small.equivalent(carry_automaton())
    sym = torch.randint(0, 4, (30, 50), generator=torch.Generator().manual_seed(1))
    assert torch.equal(big.run(sym), carry_automaton().run(sym))


def test_carry_automaton_adds():
    a = torch.randint(0, 2, (20, 64), generator=torch.Generator().manual_seed(2))
    b = torch.randint(0, 2, (20, 64), generator=torch.Generator().manual_seed(3))
    bits = carry_automaton().run(2 * a + b)
    weights = 2 ** torch.arange(20).unsqueeze(1)
    total = (a * weights).sum(0) + (b * weights).sum(0)
    assert torch.equal((bits * weights).sum(0), total % 2**20)


@pytest.mark.parametrize("machine", [carry_automaton(), redundant_adder()])
def test_extraction_recovers_the_automaton(machine):
    states, h0, sym, outs = simulate(machine, T=12, B=200, noise=0.05)
    got = extract_automaton(
        states, h0, sym, outs, num_symbols=4, num_clusters=12, symbol_names=COLUMNS,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert got.num_states == 4
    assert got.equivalent(carry_automaton())
    assert got.symbols == COLUMNS
    table = got.table(["print 0", "print 1"])
    assert "| S0 (start) | print 0 |" in table


def test_unobserved_moves_and_reachability():
    trans = torch.tensor([[1, -1], [1, 0], [2, 2]])  # state 2 unreachable; one move unseen
    a = Automaton(trans, torch.tensor([0, 1, 0]), 0, ("a", "b"))
    m = a.minimise()
    assert m.num_states == 2
    assert m.transitions.tolist() == [[1, -1], [1, 0]]
    assert m.run(torch.tensor([[0], [1], [1], [0]])).flatten().tolist() == [1, 0, -1, -1]


def test_kmeans_separates_clusters_and_checks_k():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=g)
    c, labels = kmeans(pts, 3, generator=g)
    assert len(set(labels.tolist())) == 3
    assert all(len(set(labels[i * 50 : (i + 1) * 50].tolist())) == 1 for i in range(3))
    with pytest.raises(ValueError, match=r"k must be in \[1, 150\]"):
        kmeans(pts, 0)


def test_extract_checks_shapes():
    with pytest.raises(ValueError, match="expected symbols and outputs of shape"):
        extract_automaton(
            torch.zeros(3, 2, 3), torch.zeros(3), torch.zeros(3, 1, dtype=torch.long),
            torch.zeros(3, 2, dtype=torch.long), num_symbols=2, num_clusters=2,
        )  # fmt: skip


def test_plot_automaton(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "adder.png"
    plot_automaton(carry_automaton(), path, title="carry automaton")
    assert path.stat().st_size > 10_000
