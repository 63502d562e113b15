"""The long-lag tasks: definitions checked against their papers on hand-checked structure, the
success tests on oracle outputs, seeding."""

import math

import pytest
import torch
import torch.nn.functional as F

from carousel.tasks.longlag import (
    LONGLAG_TASKS,
    REBER_SYMBOLS,
    TEMPORAL_ORDER_SYMBOLS,
    ArjovskyCopy,
    BitMemorisation,
    EmbeddedReber,
    HochreiterAdding,
    HochreiterMultiplication,
    HochreiterTemporalOrder,
    PascanuTemporalOrder,
    gather_last,
    make_task,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small(name):
    return make_task(name) if name == "embedded-reber-1997" else make_task(name, T=30)


def oracle_outputs(task, batch, scale=20.0):
    """Outputs that answer every scored step exactly (logits for classification)."""
    T, B = batch.inputs.shape[:2]
    out = torch.zeros(T, B, task.output_size)
    if task.readout == "last":
        idx = batch.lengths - 1
        cols = torch.arange(B)
        if task.kind == "classification":
            out[idx, cols] = scale * F.one_hot(batch.targets, task.output_size).float()
        else:
            out[idx, cols] = batch.targets
    elif task.kind == "classification":
        out = scale * F.one_hot(batch.targets, task.output_size).float()
    else:  # multi-label: legal symbols clearly above the others
        out = scale * (batch.targets - 0.5)
    return out


@pytest.mark.parametrize("name", list(LONGLAG_TASKS))
def test_registry_sweep(name):
    task = small(name)
    b = task.sample(6, generator=gen(1))
    T, B, I = b.inputs.shape
    assert (B, I) == (6, task.input_size)
    assert b.lengths.shape == (6,) and int(b.lengths.max()) == T
    assert b.mask.shape == (T, B) and b.mask.dtype == torch.bool
    if task.readout == "last":
        assert torch.equal(b.mask.float().argmax(0), b.lengths - 1)
        assert b.targets.shape[0] == B
    else:
        assert b.targets.shape[:2] == (T, B)
    # padding is zero
    past = torch.arange(T).unsqueeze(1) >= b.lengths.unsqueeze(0)
    assert b.inputs[past].abs().sum() == 0
    # seeding: same seed same batch, other seed other batch
    b2 = task.sample(6, generator=gen(1))
    assert all(torch.equal(x, y) for x, y in zip(b, b2))
    b3 = task.sample(6, generator=gen(2))
    assert not torch.equal(b.inputs, b3.inputs) if b.inputs.shape == b3.inputs.shape else True
    # oracle outputs pass the success test, zeros mostly fail it; the loss is a finite scalar
    ok = task.correct(oracle_outputs(task, b), b)
    assert ok.shape == (6,) and ok.dtype == torch.bool and ok.all()
    zero = torch.zeros(T, B, task.output_size)
    assert task.loss(zero, b).dim() == 0 and math.isfinite(task.loss(zero, b).item())
    assert task.errors(zero, b).shape == (6,)
    assert task.name == name and task.source and task.criterion


def test_sample_on_device_and_batch_size_checked():
    task = HochreiterAdding(T=20)
    b = task.sample(2, generator=gen(), device="meta")
    assert b.inputs.device.type == "meta"
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        task.sample(0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        task.sample(2.0)


def test_adding_1997_definition():
    T = 40
    task = HochreiterAdding(T=T)
    b = task.sample(500, generator=gen(3))
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    assert int(b.lengths.min()) >= T and int(b.lengths.max()) <= T + T // 10
    assert set(b.lengths.tolist()) == set(range(T, T + T // 10 + 1))  # all lengths occur
    for j in range(500):
        L = int(b.lengths[j])
        v, m = values[:L, j], markers[:L, j]
        marked = (m == 1).nonzero().flatten().tolist()
        assert len(marked) == 2
        assert marked[0] < 10 and marked[1] <= T // 2 - 1  # first ten; first T/2 - 1 unmarked
        assert m[L - 1] == -1
        assert m[0] == (1 if 0 in marked else -1)
        assert ((m == 0) | (m == 1) | (m == -1)).all()
        assert (m == -1).sum() == (1 if 0 in marked else 2)
        assert v.abs().max() <= 1
        if 0 in marked:
            assert v[0] == 0
        expect = 0.5 + v[marked].sum() / 4
        assert torch.isclose(b.targets[j, 0], expect)
    # hand-checked outputs: error 0.039 passes, 0.041 fails
    out = torch.zeros(b.inputs.shape[0], 500, 1)
    out[b.lengths - 1, torch.arange(500)] = b.targets + 0.039
    assert task.correct(out, b).all()
    out[b.lengths - 1, torch.arange(500)] = b.targets - 0.041
    assert not task.correct(out, b).any()
    assert task.stop_rule.window == 2000 and task.stop_rule.max_mean_error == 0.01


def test_multiplication_1997_definition():
    task = HochreiterMultiplication(T=30)
    b = task.sample(300, generator=gen(5))
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    assert values.min() >= 0 and values.max() <= 1
    for j in range(300):
        marked = (markers[:, j] == 1).nonzero().flatten()
        if 0 in marked.tolist():
            assert values[0, j] == 1.0
        assert torch.isclose(b.targets[j, 0], values[marked, j].prod())
    assert (
        task.stop_rule.max_wrong == 140
        and HochreiterMultiplication(nseq=13).stop_rule.max_wrong == 13
    )


def test_temporal_order_1997_definition():
    for n, classes in ((2, 4), (3, 8)):
        task = HochreiterTemporalOrder(T=100, num_relevant=n)
        assert task.output_size == classes and task.input_size == 8
        b = task.sample(400, generator=gen(6))
        sym = b.inputs.argmax(-1)
        assert int(b.lengths.min()) >= 100 and int(b.lengths.max()) <= 110
        windows = task.windows()
        assert windows == ([(10, 20), (50, 60)] if n == 2 else [(10, 20), (33, 43), (66, 76)])
        X, Y = TEMPORAL_ORDER_SYMBOLS.index("X"), TEMPORAL_ORDER_SYMBOLS.index("Y")
        for j in range(400):
            L = int(b.lengths[j])
            s = sym[:L, j]
            assert s[0] == TEMPORAL_ORDER_SYMBOLS.index("E")
            assert s[L - 1] == TEMPORAL_ORDER_SYMBOLS.index("B")
            rel = ((s == X) | (s == Y)).nonzero().flatten()
            assert len(rel) == n
            for pos, (lo, hi) in zip(rel.tolist(), windows):
                assert lo <= pos + 1 <= hi  # 1-based, as in the paper
            label = 0
            for pos in rel.tolist():
                label = 2 * label + int(s[pos] == Y)
            assert b.targets[j] == label
            middle = torch.ones(L, dtype=torch.bool)
            middle[0] = middle[L - 1] = False
            middle[rel] = False
            assert ((s[middle] >= 2) & (s[middle] <= 5)).all()  # a, b, c, d
    # threshold 0.3 on every output
    task = HochreiterTemporalOrder(T=20)
    b = task.sample(1, generator=gen())
    out = torch.zeros(b.inputs.shape[0], 1, 4)
    target = int(b.targets[0])
    p = torch.full((4,), 0.08)
    p[target] = 0.76  # every output within 0.3 of its target
    out[b.lengths - 1, 0] = p.log()
    assert task.correct(out, b).all()
    p = torch.full((4,), 0.32 / 3)
    p[target] = 0.68  # the target output is 0.32 away: wrong
    out[b.lengths - 1, 0] = p.log()
    assert not task.correct(out, b).any()


def test_temporal_order_pascanu2013_definition():
    task = PascanuTemporalOrder(T=50)
    b = task.sample(300, generator=gen(7))
    sym = b.inputs.argmax(-1)  # (T, B)
    assert b.inputs.shape == (50, 300, 6) and (b.lengths == 50).all()
    for j in range(300):
        rel = (sym[:, j] < 2).nonzero().flatten().tolist()
        assert len(rel) == 2
        assert 5 <= rel[0] < 10 and 25 <= rel[1] < 30
        v0, v1 = int(sym[rel[0], j]), int(sym[rel[1], j])
        assert b.targets[j] == v0 + 2 * v1


def _reber_valid(s):
    """An independent check of an embedded Reber string against the grammar's graph."""
    edges = {
        (0, "T"): 1, (0, "P"): 2, (1, "S"): 1, (1, "X"): 3, (2, "T"): 2, (2, "V"): 4,
        (3, "X"): 2, (3, "S"): 5, (4, "P"): 3, (4, "V"): 5,
    }  # fmt: skip
    if not (s[0] == "B" and s[1] in "TP" and s[-2] == s[1] and s[-1] == "E"):
        return False
    inner = s[2:-2]
    if inner[0] != "B" or inner[-1] != "E":
        return False
    state = 0
    for ch in inner[1:-1]:
        if (state, ch) not in edges:
            return False
        state = edges[(state, ch)]
    return state == 5


def test_embedded_reber_strings_and_targets():
    g = gen(8)
    for _ in range(200):
        s, nexts = EmbeddedReber.string(g)
        assert _reber_valid(s), s
        assert len(nexts) == len(s) - 1
        for t in range(len(s) - 1):
            assert s[t + 1] in nexts[t]
        assert nexts[-2] == {s[1]} and nexts[0] == {"T", "P"} and nexts[1] == {"B"}
    # a hand-checked string
    b = EmbeddedReber().sample(1, generator=gen(0))
    syms = "".join(REBER_SYMBOLS[i] for i in b.inputs[: b.lengths[0], 0].argmax(-1))
    assert syms == "BTBPVPSETE"  # inner Reber string BPVPSE
    legal = ["TP", "B", "TP", "TV", "PV", "SX", "E", "T", "E"]
    for t, want in enumerate(legal):
        got = {REBER_SYMBOLS[i] for i in b.targets[t, 0].nonzero().flatten()}
        assert got == set(want)
    assert b.mask[:, 0].sum() == 9


def test_embedded_reber_long_lag_prediction_decides():
    task = EmbeddedReber()
    b = task.sample(8, generator=gen(9))
    out = oracle_outputs(task, b)
    assert task.correct(out, b).all()
    # swap the prediction of the second-to-last symbol (T <-> P) in sequence 0: wrong
    t = int(b.lengths[0]) - 3
    out[t, 0, [1, 2]] = out[t, 0, [2, 1]]
    ok = task.correct(out, b)
    assert not ok[0] and ok[1:].all()


def test_copy_arjovsky2016_definition():
    task = ArjovskyCopy(T=15)
    b = task.sample(20, generator=gen(10))
    sym = b.inputs.argmax(-1)
    assert b.inputs.shape == (35, 20, 10)
    assert ((sym[:10] >= 1) & (sym[:10] <= 8)).all()
    assert (sym[10:24] == 0).all() and (sym[24] == 9).all() and (sym[25:] == 0).all()
    assert (b.targets[:25] == 0).all() and torch.equal(b.targets[25:], sym[:10])
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / 35)


def test_bit_memorisation_tokens_and_recall_bits():
    task = BitMemorisation(num_bits=3, T=2)
    tok = task.tokens(5, gen(11))
    assert tok.shape == (8, 5)
    assert torch.equal(tok[:3], tok[5:]) and (tok[3:5] == 2).all()
    b = task.sample(5, generator=gen(11))
    assert torch.equal(torch.cat([b.inputs.argmax(-1), b.targets[-1:]]), tok)
    assert b.mask.sum(0).tolist() == [3] * 5
    perfect = oracle_outputs(task, b, scale=50.0)
    assert task.recall_bits(perfect, b).max() < 1e-6
    uniform = torch.zeros(7, 5, 3)
    assert torch.allclose(task.recall_bits(uniform, b), torch.full((5,), 3 * math.log2(3)))


def test_gather_last():
    out = torch.arange(12.0).view(4, 3, 1)
    assert gather_last(out, torch.tensor([1, 4, 2])).flatten().tolist() == [0.0, 10.0, 5.0]


def test_errors_are_named():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(ValueError, match="T must be >= 12, got 5"):
        HochreiterAdding(T=5)
    with pytest.raises(ValueError, match="num_relevant must be 2"):
        HochreiterTemporalOrder(num_relevant=4)
    with pytest.raises(TypeError, match="'embedded-reber-1997'"):
        make_task("embedded-reber-1997", T=50)
    assert make_task("embedded-reber-1997", T=None).lag is None
    task = HochreiterAdding(T=20)
    b = task.sample(2, generator=gen())
    with pytest.raises(ValueError, match=r"expected outputs of shape \(T, B, 1\)"):
        task.loss(torch.zeros(b.inputs.shape[0], 2, 3), b)


@pytest.mark.parametrize("name", [n for n in LONGLAG_TASKS if n != "bit-memorisation"])
def test_registered_in_the_engine(name):
    from carousel.models import ModelConfig, ModelOutput
    from carousel.tasks import get_task
    from carousel.tasks.longlag import LongLagConfig

    spec = get_task(name)
    assert spec.source == LONGLAG_TASKS[name][0].source
    task = spec.cls(LongLagConfig(T=24, test_size=40))
    if name != "embedded-reber-1997":
        assert task.task.lag == 24
    g = gen(3)
    batch = task.batch("train", 5, generator=g)
    ref = task.task.sample(5, generator=gen(3))
    assert torch.equal(batch.inputs, ref.inputs) and batch.per_step == (task.task.readout == "all")
    out = oracle_outputs(task.task, ref)
    assert task.loss(ModelOutput(out, None), batch) == task.task.loss(out, ref)
    assert task.metrics(ModelOutput(out, None), batch) == {"accuracy": 1.0, "error": 0.0}
    sizes = [b.batch_size for b in task.eval_batches("test", generator=gen(4))]
    assert sum(sizes) == 40
    model = task.make_model(ModelConfig(cell="lstm", hidden_size=4))
    assert task.forward(model, batch).output.shape[-1] == task.task.output_size
