"""Layers: torch.nn parity, lengths, bidirectional, learned initial states, traces, errors.

The hand-written BPTT path is tested in tests/test_bptt.py against the reference path here.
"""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import carousel

D = torch.float64
T, B, I, H = 6, 4, 3, 5
LENGTHS = torch.tensor([6, 2, 5, 1])

FAMILIES = {
    "LSTM": (carousel.LSTM, torch.nn.LSTM),
    "GRU": (carousel.GRU, torch.nn.GRU),
    "RNN": (carousel.RNN, torch.nn.RNN),
}


def _inputs(batch_first, num_layers, bidirectional, family):
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=D, requires_grad=True)
    n = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(n, B, H, dtype=D, requires_grad=True)
    if family == "LSTM":
        c0 = torch.randn(n, B, H, dtype=D, requires_grad=True)
        return x, (h0, c0)
    return x, h0


def _torch_run(ref, x, hx, lengths, batch_first):
    if lengths is None:
        return ref(x, hx)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = ref(packed, hx)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, state


def _flat(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


COMBOS = list(itertools.product(FAMILIES, [1, 2], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
@pytest.mark.parametrize(("family", "num_layers", "bidir", "batch_first", "use_lengths"), COMBOS)
def test_matches_torch_nn(family, num_layers, bidir, batch_first, use_lengths, impl):
    ours_cls, ref_cls = FAMILIES[family]
    ref = ref_cls(I, H, num_layers, batch_first=batch_first, bidirectional=bidir, dtype=D)
    ours = ours_cls(
        I, H, num_layers, batch_first=batch_first, bidirectional=bidir, dtype=D, impl=impl
    )
    ours.load_state_dict(ref.state_dict())
    x, hx = _inputs(batch_first, num_layers, bidir, family)
    lengths = LENGTHS if use_lengths else None
    out_r, st_r = _torch_run(ref, x, hx, lengths, batch_first)
    out_o, st_o = ours(x, hx, lengths=lengths)
    torch.testing.assert_close(out_o, out_r)
    # the final state as torch.nn gives it: a tensor (GRU, RNN) or a pair of them (LSTM)
    assert isinstance(st_o, torch.Tensor) == isinstance(st_r, torch.Tensor)
    assert isinstance(st_o, tuple) == isinstance(st_r, tuple)
    for a, b in zip(_flat(st_o), _flat(st_r), strict=True):
        torch.testing.assert_close(a, b)
    # gradients of everything, with random upstream gradients on outputs and final states
    g_out = torch.randn_like(out_r)
    g_st = [torch.randn_like(s) for s in _flat(st_r)]
    inputs = [x, *_flat(hx)]

    def grads(model, out, st):
        loss = (out * g_out).sum() + sum((s * g).sum() for s, g in zip(_flat(st), g_st))
        return torch.autograd.grad(loss, [*inputs, *model.parameters()])

    for a, b in zip(grads(ours, out_o, st_o), grads(ref, out_r, st_r)):
        torch.testing.assert_close(a, b)


def test_state_dict_loads_both_ways():
    ours = carousel.LSTM(I, H, 2, bidirectional=True)
    ref = torch.nn.LSTM(I, H, 2, bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_projection_matches_torch():
    ref = torch.nn.LSTM(I, H, 2, proj_size=3, bidirectional=True, dtype=D)
    for impl in ("reference", "auto"):
        ours = carousel.LSTM(I, H, 2, proj_size=3, bidirectional=True, dtype=D, impl=impl)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, dtype=D)
        (o1, (h1, c1)), (o2, (h2, c2)) = (
            ours(x, lengths=LENGTHS),
            _torch_run(ref, x, None, LENGTHS, False),
        )
        torch.testing.assert_close(o1, o2)
        torch.testing.assert_close(h1, h2)
        torch.testing.assert_close(c1, c2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_sequence_input(family):
    ours_cls, ref_cls = FAMILIES[family]
    ref = ref_cls(I, H, 2, bidirectional=True, dtype=D)
    ours = ours_cls(I, H, 2, bidirectional=True, dtype=D, impl="reference")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    packed = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    (po, so), (pr, sr) = ours(packed), ref(packed)
    torch.testing.assert_close(po.data, pr.data)
    torch.testing.assert_close(po.batch_sizes, pr.batch_sizes)
    for a, b in zip(_flat(so), _flat(sr)):
        torch.testing.assert_close(a, b)


def test_unbatched_input():
    ref = torch.nn.GRU(I, H, 2, dtype=D)
    ours = carousel.GRU(I, H, 2, dtype=D, impl="reference")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, I, dtype=D)
    (o1, h1), (o2, h2) = ours(x), ref(x)
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(h1, h2)


@pytest.mark.parametrize("variant", sorted(carousel.LSTM_VARIANTS))
def test_lengths_equal_unpadded_runs(variant):
    lstm = carousel.LSTM(I, H, 2, bidirectional=True, variant=variant, dtype=D, impl="reference")
    x = torch.randn(T, B, I, dtype=D)
    out, state = lstm(x, lengths=LENGTHS)
    for b, n in enumerate(LENGTHS.tolist()):
        o_b, s_b = lstm(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b : b + 1], o_b)
        assert torch.all(out[n:, b] == 0)
        for full, single in zip(state, s_b):
            torch.testing.assert_close(full[:, b : b + 1], single)


def test_learned_initial_state_gets_gradients():
    lstm = carousel.LSTM(I, H, 2, bidirectional=True, learn_initial_state=True, impl="reference")
    names = {n for n, _ in lstm.named_parameters() if n.startswith("initial_")}
    assert names == {f"initial_{f}_l{l}{s}" for f in "hc" for l in (0, 1) for s in ("", "_reverse")}
    out, _ = lstm(torch.randn(T, B, I))
    out.pow(2).sum().backward()
    for n in names:
        assert getattr(lstm, n).grad.abs().sum() > 0, n


def test_learned_initial_state_fused_equals_reference():
    a = carousel.LSTM(I, H, 2, learn_initial_state=True, dtype=D, impl="fused")
    b = carousel.LSTM(I, H, 2, learn_initial_state=True, dtype=D, impl="reference")
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    oa, ob = a(x)[0], b(x)[0]
    torch.testing.assert_close(oa, ob)
    ga = torch.autograd.grad(oa.sum(), a.initial_h_l1)
    gb = torch.autograd.grad(ob.sum(), b.initial_h_l1)
    torch.testing.assert_close(ga, gb)


def test_gradcheck_initial_state_reference():
    lstm = carousel.LSTM(2, 3, peephole=True, dtype=D, impl="reference")
    x = torch.randn(4, 2, 2, dtype=D)
    h0 = torch.randn(1, 2, 3, dtype=D, requires_grad=True)
    c0 = torch.randn(1, 2, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, c: lstm(x, (h, c))[0], (h0, c0))


def test_return_states_and_gates():
    lstm = carousel.LSTM(I, H, 2, bidirectional=True, impl="reference")
    x = torch.randn(T, B, I)
    res = lstm(x, return_states=True, return_gates=True)
    out, (h, c) = res
    assert res.states.h.shape == (4, T, B, H) and res.states.c.shape == (4, T, B, H)
    assert set(res.gates) == {"i", "f", "g", "o"}
    assert res.gates["f"].shape == (4, T, B, H)
    # last layer's states are the output; final states are the last (first, reversed) step
    torch.testing.assert_close(res.states.h[2], out[..., :H])
    torch.testing.assert_close(res.states.h[3], out[..., H:])
    torch.testing.assert_close(res.states.c[0, -1], c[0])
    torch.testing.assert_close(res.states.c[1, 0], c[1])
    plain = lstm(x)
    assert plain.states is None and plain.gates is None
    torch.testing.assert_close(plain.output, out)


def test_return_states_batch_first_and_lengths():
    gru = carousel.GRU(I, H, batch_first=True)
    x = torch.randn(B, T, I)
    res = gru(x, lengths=LENGTHS, return_states=True, return_gates=True)
    assert res.states.shape == (1, B, T, H)
    for b, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(res.states[0, b, n - 1], res.state[0, b])
        torch.testing.assert_close(res.states[0, b, -1], res.state[0, b])
    assert torch.all(res.gates["z"][0, 1, 2:] == 0)


def test_auto_picks_fused_for_standard_lstm_and_bptt_or_reference_otherwise():
    assert carousel.LSTM(2, 3).resolve_impl() == "fused"
    assert carousel.LSTM(2, 3).resolve_impl(return_states=True) in ("compiled", "bptt", "reference")
    assert carousel.LSTM(2, 3, peephole=True).resolve_impl() in ("compiled", "bptt", "reference")


class MinimalRNNCell(torch.nn.Module):
    """A user cell that follows only the contract: h' = tanh(W [x, h])."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.lin = torch.nn.Linear(input_size + hidden_size, hidden_size, dtype=D)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype or D)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h, h


def test_user_cell_in_every_layer_feature():
    layer = carousel.Recurrent(
        [(MinimalRNNCell(I, H), MinimalRNNCell(I, H)),
         (MinimalRNNCell(2 * H, H), MinimalRNNCell(2 * H, H))],
        bidirectional=True, batch_first=True, learn_initial_state=True,
    )  # fmt: skip
    x = torch.randn(B, T, I, dtype=D)
    res = layer(x, lengths=LENGTHS, return_states=True)
    out, h = res
    assert out.shape == (B, T, 2 * H) and h.shape == (4, B, H)
    assert res.states.shape == (4, B, T, H)
    for b, n in enumerate(LENGTHS.tolist()):
        o_b, h_b = layer(x[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1, :n], o_b)
        torch.testing.assert_close(h[:, b : b + 1], h_b)
    out.sum().backward()
    assert layer.initial_h_l0_reverse.grad is not None
    with pytest.raises(ValueError, match="step_with_gates"):
        layer(x, return_gates=True)


def test_layer_equals_loop_of_its_cell():
    cell = carousel.LSTMCell(I, H, variant="FGR", dtype=D)
    layer = carousel.Recurrent(cell)
    x = torch.randn(T, B, I, dtype=D)
    out, state = layer(x)
    s = cell.initial_state(B)
    for t in range(T):
        y, s = cell(x[t], s)
        torch.testing.assert_close(out[t], y)
    for a, b in zip(state, s):
        torch.testing.assert_close(a[0], b)


def test_dropout_between_layers():
    lstm = carousel.LSTM(I, H, 2, dropout=0.5, impl="reference")
    x = torch.randn(T, B, I)
    lstm.eval()
    torch.testing.assert_close(lstm(x)[0], lstm(x)[0])
    lstm.train()
    assert not torch.equal(lstm(x)[0], lstm(x)[0])
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        carousel.LSTM(I, H, 1, dropout=0.5)


def test_layer_errors():
    lstm = carousel.LSTM(32, 8)
    with pytest.raises(
        ValueError,
        match=r"expected input of shape \(T, B, 32\) with "
        r"batch_first=False.*got \(16, 20, 31\)",
    ):
        lstm(torch.randn(16, 20, 31))
    with pytest.raises(TypeError, match="dtype"):
        lstm(torch.randn(4, 2, 32, dtype=D))
    with pytest.raises(ValueError, match=r"expected lengths of shape \(2,\)"):
        lstm(torch.randn(4, 2, 32), lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=4\], got values from 0"):
        lstm(torch.randn(4, 2, 32), lengths=torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer dtype"):
        lstm(torch.randn(4, 2, 32), lengths=torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match=r"expected hx.c of shape \(1, 2, 8\)"):
        lstm(torch.randn(4, 2, 32), (torch.zeros(1, 2, 8), torch.zeros(1, 3, 8)))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        lstm(torch.randn(4, 2, 32), torch.zeros(1, 2, 8))
    with pytest.raises(TypeError, match=r"of 2 tensors, got a tuple of 3"):
        lstm(torch.randn(4, 2, 32), (torch.zeros(1, 2, 8),) * 3)
    # a PackedSequence gets the same checks (before: torch's matmul error from inside)
    packed = pack_padded_sequence(torch.randn(4, 2, 31), [4, 2])
    with pytest.raises(ValueError, match=r"PackedSequence of 32 features .* got data of shape"):
        lstm(packed)
    with pytest.raises(TypeError, match=r"input has dtype torch\.float64"):
        lstm(pack_padded_sequence(torch.randn(4, 2, 32, dtype=torch.float64), [4, 2]))
    with pytest.raises(ValueError, match="impl must be one of"):
        carousel.LSTM(2, 3, impl="fast")
    with pytest.raises(ValueError, match="impl='fused' needs a configuration"):
        carousel.LSTM(2, 3, peephole=True, impl="fused")(torch.randn(3, 1, 2))
    with pytest.raises(ValueError, match="impl='fused' cannot return per-step states"):
        carousel.LSTM(2, 3, impl="fused")(torch.randn(3, 1, 2), return_states=True)
    with pytest.raises(ValueError, match="dropout must be in"):
        carousel.GRU(2, 3, dropout=1.5)
    with pytest.raises(ValueError, match="no time steps"):
        lstm(torch.randn(0, 2, 32))
    with pytest.raises(ValueError, match="layer 1's cell takes input_size=4"):
        carousel.Recurrent([carousel.GRUCell(2, 3), carousel.GRUCell(4, 3)])
    with pytest.raises(ValueError, match="must be a pair"):
        carousel.Recurrent([carousel.GRUCell(2, 3)], bidirectional=True)
    # states are stacked over layers: cells with other states or sizes are refused at once
    # (before, the first call failed inside torch.stack)
    with pytest.raises(ValueError, match=r"layer 0's is LSTMState\(h \(4\), c \(4\)\), "
                       r"layer 1's is Tensor\(h \(4\)\); chain Recurrent layers"):  # fmt: skip
        carousel.Recurrent([carousel.LSTMCell(2, 4), carousel.GRUCell(4, 4)])
    with pytest.raises(ValueError, match=r"layer 1's is LSTMState\(h \(3\), c \(3\)\)"):
        carousel.Recurrent([carousel.LSTMCell(2, 4), carousel.LSTMCell(4, 3)])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_auto_takes_the_reference_loop_under_torch_func(kind):
    # the fused and BPTT Functions have no forward-mode rule: under torch.func.jvp "auto"
    # must fall back to the reference loop, and the tangent must equal a finite difference
    from carousel.optim.curvature import _prepare_forward_ad

    _prepare_forward_ad()  # torch's first jvp imports a module that warns (DeprecationWarning)
    torch.manual_seed(0)
    layer = getattr(carousel, kind)(3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    v = torch.randn_like(x)
    out, tangent = torch.func.jvp(lambda x: layer(x)[0], (x,), (v,))
    torch.testing.assert_close(out, layer(x)[0])
    eps = 1e-6
    fd = (layer(x + eps * v)[0] - layer(x - eps * v)[0]) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", ["bptt", "compiled"])
def test_hand_written_paths_refuse_torch_func_transforms_clearly(impl):
    """An explicit hand-written path inside torch.func.grad says what to use instead (torch's
    own error names autograd.Function internals)."""
    layer = carousel.GRU(3, 4, impl=impl)
    params = dict(layer.named_parameters())
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=f"impl='{impl}' cannot run inside a torch.func"):
        torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,))[0].sum())(params)


def test_torch_export_takes_the_reference_loop():
    """torch.export of a variant layer (auto) traces the reference loop: the exported program
    equals eager; an explicit hand-written path says it cannot be exported."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3)
    for layer in (carousel.LSTM(3, 4, 2, variant="CIFG", bidirectional=True), carousel.GRU(3, 4)):
        program = torch.export.export(layer, (x,))
        torch.testing.assert_close(program.module()(x)[0], layer(x)[0])
    with pytest.raises(ValueError, match="impl='bptt' cannot be exported"):
        torch.export.export(carousel.GRU(3, 4, impl="bptt"), (x,))


GPU_COMBOS = list(itertools.product(FAMILIES, [False, True], [False, True]))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["reference", "bptt", "auto", "fused"])
@pytest.mark.parametrize(("family", "bidir", "use_lengths"), GPU_COMBOS)
def test_cuda_matches_torch_nn_on_cuda(family, bidir, use_lengths, impl):
    # on CUDA, "fused" and "auto" dispatch to cuDNN; every path must equal torch.nn there
    ours_cls, ref_cls = FAMILIES[family]
    ref = ref_cls(I, H, 2, bidirectional=bidir, dtype=D, device="cuda")
    ours = ours_cls(I, H, 2, bidirectional=bidir, dtype=D, device="cuda", impl=impl)
    ours.load_state_dict(ref.state_dict())
    x, hx = _inputs(False, 2, bidir, family)
    x = x.detach().cuda().requires_grad_()
    hx = tuple(h.detach().cuda().requires_grad_() for h in _flat(hx))
    hx = hx if family == "LSTM" else hx[0]
    lengths = LENGTHS if use_lengths else None
    out_r, st_r = _torch_run(ref, x, hx, lengths, False)
    out_o, st_o = ours(x, hx, lengths=lengths)
    assert out_o.device.type == "cuda"
    torch.testing.assert_close(out_o, out_r)
    for a, b in zip(_flat(st_o), _flat(st_r)):
        torch.testing.assert_close(a, b)
    g_out = torch.randn_like(out_r)
    inputs = [x, *_flat(hx)]
    ga = torch.autograd.grad((out_o * g_out).sum(), [*inputs, *ours.parameters()])
    gb = torch.autograd.grad((out_r * g_out).sum(), [*inputs, *ref.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(carousel.LSTM_VARIANTS))
def test_cuda_variants_with_every_feature_equal_the_cpu(variant):
    # learned initial state, lengths, bidirectional, traces: the same numbers on both devices
    cpu = carousel.LSTM(
        I, H, 2, bidirectional=True, variant=variant, learn_initial_state=True, dtype=D
    )
    gpu = carousel.LSTM(
        I, H, 2, bidirectional=True, variant=variant, learn_initial_state=True, dtype=D
    ).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    a = cpu(x, lengths=LENGTHS, return_states=True, return_gates=True)
    b = gpu(x.cuda(), lengths=LENGTHS.cuda(), return_states=True, return_gates=True)
    torch.testing.assert_close(b.output.cpu(), a.output)
    torch.testing.assert_close(b.states.c.cpu(), a.states.c)
    for k in a.gates:
        torch.testing.assert_close(b.gates[k].cpu(), a.gates[k])
    a.output.sum().backward()
    b.output.sum().backward()
    for (n, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, msg=n)


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("LSTM", {}),
        ("LSTM", {"bias": False, "bidirectional": True, "num_layers": 3}),
        ("LSTM", {"proj_size": 2, "bidirectional": True}),
        ("GRU", {"num_layers": 2}),
        ("RNN", {"nonlinearity": "relu", "bias": False}),
    ],
)
def test_cudnn_flatten_arguments_are_torch_nns(family, options):
    """flatten_parameters hands cuDNN the weights in torch.nn's order with torch.nn's counts
    and mode; on the CPU it leaves every weight where it is."""
    ours_cls, ref_cls = FAMILIES[family]
    ours, ref = ours_cls(3, 4, **options), ref_cls(3, 4, **options)
    n, input_size, mode, hidden, proj, layers, batch_first, bidir = ours._cudnn_flatten_args()
    assert ours._flat_keys == ref._flat_weights_names
    assert n == len(ref._flat_weights_names) // (ref.num_layers * (1 + ref.bidirectional))
    assert (input_size, mode, hidden, proj) == (3, ref.mode, 4, ref.proj_size)
    assert (layers, batch_first, bidir) == (ref.num_layers, False, ref.bidirectional)
    before = [p.data_ptr() for p in ours.parameters()]
    ours.flatten_parameters()
    assert [p.data_ptr() for p in ours.double().parameters()] != before  # converted...
    ours.flatten_parameters()  # ...and still a no-op on the CPU
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    carousel.LSTM(3, 4, peephole=True).flatten_parameters()  # no cuDNN cell: a no-op


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_weights_are_flat_for_cudnn(family):
    """Made on the GPU or moved there, the weights lie in one buffer, so cuDNN neither copies
    them at every call nor warns (warnings are errors in the tests)."""
    ours_cls, ref_cls = FAMILIES[family]
    for layer in (
        ours_cls(3, 4, 2, bidirectional=True, device="cuda"),
        ours_cls(3, 4, 2, bidirectional=True).cuda(),
    ):
        storages = {p.untyped_storage().data_ptr() for p in layer._flat_weights()}
        assert len(storages) == 1
        ref = ref_cls(3, 4, 2, bidirectional=True, device="cuda")
        layer.load_state_dict(ref.state_dict())  # copies in place: still one buffer
        assert len({p.untyped_storage().data_ptr() for p in layer._flat_weights()}) == 1
        x = torch.randn(5, 2, 3, device="cuda")
        out, _ = layer(x)
        out.sum().backward()
        torch.testing.assert_close(out, ref(x)[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: carousel.LSTM(3, 4, 2, bidirectional=True, peephole=True, layer_norm=True,
                              learn_initial_state=True),
        lambda: carousel.GRU(3, 4, reset_after=False),
        lambda: carousel.RNN(3, 4, nonlinearity="relu"),
        lambda: carousel.Recurrent([carousel.GRUCell(3, 4),
                                    carousel.GRUCell(4, 4, reset_after=False)]),
    ],
)  # fmt: skip
def test_reset_parameters_draws_as_the_construction_did(make):
    """reset_parameters, as torch.nn's layers have it: in place, the same draws as building
    the layer (torch.nn's uniform, layer-norm gains 1, learned initial states 0)."""
    torch.manual_seed(0)
    fresh = make()
    torch.manual_seed(0)
    layer = make()
    params = list(layer.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    torch.manual_seed(0)
    layer.reset_parameters()
    assert list(layer.parameters()) == params  # the same objects (an optimizer keeps them)
    for (name, a), b in zip(fresh.named_parameters(), layer.parameters()):
        assert torch.equal(a, b), name


def test_torch_nn_attributes_mode_all_weights_proj_size():
    for ours, ref in (
        (carousel.LSTM(3, 4, 2, bidirectional=True, proj_size=2),
         torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2)),
        (carousel.GRU(3, 4, bias=False), torch.nn.GRU(3, 4, bias=False)),
        (carousel.RNN(3, 4, nonlinearity="relu"), torch.nn.RNN(3, 4, nonlinearity="relu")),
    ):  # fmt: skip
        assert (ours.mode, ours.proj_size) == (ref.mode, ref.proj_size)
        ours.load_state_dict(ref.state_dict())
        for mine, theirs in zip(ours.all_weights, ref.all_weights, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "impl"),
    [("CIFG", "auto"), ("CIFG", "compiled"), ("CIFG", "bptt"), ("NP", "auto"), ("NP", "fused")],
)
def test_torch_compile_equals_eager(variant, impl):
    """torch.compile of a layer on every path (the time loop, or torch's native kernel, runs
    eagerly inside the compiled model: the runners are opaque to Dynamo): the same outputs and
    gradients, and no warning from carousel's code (torch's own, while it compiles, are
    recorded, not raised)."""
    import warnings

    torch.manual_seed(0)
    layer = carousel.LSTM(3, 4, 2, variant=variant, impl=impl)
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(layer)(x)[0]
        grads = torch.autograd.grad(out.sum(), list(layer.parameters()))
    ours = [w for w in caught if "/carousel/" in w.filename.replace("\\", "/")]
    assert not ours, [str(w.message) for w in ours]
    ref = layer(x)[0]
    ref_grads = torch.autograd.grad(ref.sum(), list(layer.parameters()))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def _grads(layer):
    return {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("impl", ["auto", "fused", "bptt", "reference"])
def test_weight_norm_and_pruning_act_as_in_torch_nn(family, impl):
    """torch.nn's weight tools act on the layers as on torch.nn's: a parametrization
    (weight_norm) and pruning replace a registered weight by a computed one, which every path
    reads; outputs and the gradients of the tensors behind the weights equal torch.nn's."""
    from torch.nn.utils import prune
    from torch.nn.utils.parametrizations import weight_norm

    ours_cls, ref_cls = FAMILIES[family]
    torch.manual_seed(0)
    ref = ref_cls(I, H, 2, bidirectional=True).double()
    ours = ours_cls(I, H, 2, bidirectional=True, impl=impl).double()
    ours.load_state_dict(ref.state_dict())
    for layer in (ref, ours):
        weight_norm(layer, "weight_hh_l0")
        weight_norm(layer, "weight_ih_l1_reverse", dim=1)
        torch.manual_seed(1)
        prune.random_unstructured(layer, "weight_ih_l0", amount=0.5)
        with torch.no_grad():
            layer.parametrizations.weight_hh_l0.original0.mul_(0.5)  # changes the weight
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, hx = _inputs(False, 2, True, family)
    out, state = ours(x, hx)
    out_ref, state_ref = ref(x, hx)
    torch.testing.assert_close(out, out_ref)
    (out.sum() + sum(s.sum() for s in _flat(state))).backward()
    (out_ref.sum() + sum(s.sum() for s in _flat(state_ref))).backward()
    mine, theirs = _grads(ours), _grads(ref)
    for name, g in theirs.items():
        torch.testing.assert_close(mine[name], g, msg=name)


@pytest.mark.parametrize("impl", ["auto", "bptt", "reference"])
def test_a_variant_reads_a_parametrized_weight(impl):
    """A variant LSTM (no torch.nn twin) with a zero parametrization of W_hh equals the same
    layer with W_hh set to zero, on every path."""
    from torch.nn.utils import parametrize

    class Zero(torch.nn.Module):
        def forward(self, w):
            return 0.0 * w

    torch.manual_seed(0)
    layer = carousel.LSTM(I, H, peephole=True, impl=impl).double()
    plain = carousel.LSTM(I, H, peephole=True, impl="reference").double()
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.zero_()
    parametrize.register_parametrization(layer, "weight_hh_l0", Zero())
    x = torch.randn(T, B, I, dtype=D)
    torch.testing.assert_close(layer(x)[0], plain(x)[0])


def test_weight_drop_sets_a_plain_tensor_in_place_of_a_weight():
    """The weight-drop recipe (AWD-LSTM): the registered weight is removed and a tensor is set
    under its name before each call; the layer reads that tensor, as torch.nn's does."""
    torch.manual_seed(0)
    ours = carousel.LSTM(I, H).double()
    ref = torch.nn.LSTM(I, H).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=D)
    mask = (torch.rand(4 * H, H) > 0.5).double()
    for layer in (ours, ref):
        raw = layer.weight_hh_l0
        del layer._parameters["weight_hh_l0"]
        layer.register_parameter("weight_hh_l0_raw", raw)
        layer.weight_hh_l0 = raw * mask
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_reset_parameters_initialises_the_tensors_behind_computed_weights():
    """With a parametrized or pruned weight, reset_parameters draws the tensors that are
    trained (a parametrization's originals, a pruned weight's ``_orig``), in place, as
    torch.nn's layers draw every parameter."""
    from torch.nn.utils import prune
    from torch.nn.utils.parametrizations import weight_norm

    layer = carousel.LSTM(3, 4)
    weight_norm(layer, "weight_hh_l0")
    prune.l1_unstructured(layer, "weight_ih_l0", amount=0.5)
    params = dict(layer.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.fill_(7.0)
    layer.reset_parameters()
    bound = 1 / 4**0.5
    for name, p in layer.named_parameters():
        assert p is params[name]
        assert p.abs().max() <= bound, name


AMP_LAYERS = {
    "LSTM": lambda impl: carousel.LSTM(I, H, 2, bidirectional=True, impl=impl),
    "LSTM-CIFG": lambda impl: carousel.LSTM(I, H, 2, variant="CIFG", impl=impl),
    "LSTM-LN": lambda impl: carousel.LSTM(I, H, layer_norm=True, impl=impl),
    "GRU": lambda impl: carousel.GRU(I, H, 2, impl=impl),
    "GRU-Cho": lambda impl: carousel.GRU(I, H, reset_after=False, impl=impl),
    "RNN": lambda impl: carousel.RNN(I, H, bidirectional=True, impl=impl),
}


@pytest.mark.parametrize("impl", ["auto", "compiled", "bptt", "reference"])
@pytest.mark.parametrize("name", sorted(AMP_LAYERS))
def test_autocast_runs_carousels_paths_in_the_parameters_dtype(name, impl):
    """Under torch.autocast (mixed precision), carousel's own paths run the recurrence in the
    parameters' dtype, fed the autocast dtype's input of the layer before: the outputs and
    gradients equal those of the same run without autocast, input cast up."""
    from carousel import kernels

    if impl == "compiled" and not kernels.available():
        pytest.skip("compiled kernels unavailable")
    torch.manual_seed(0)
    layer = AMP_LAYERS[name](impl)
    if impl == "auto" and layer.resolve_impl(device=torch.device("cpu")) == "fused":
        pytest.skip("auto takes torch's kernel here (test_autocast_fused_is_torch_nns)")
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.nn.functional.linear(x, torch.eye(I))  # the layer before: bfloat16 out
        assert low.dtype == torch.bfloat16
        out, state = layer(low, lengths=LENGTHS)
    assert out.dtype == torch.float32
    (out.sum() + sum(s.sum() for s in _flat(state))).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    out2, state2 = layer(low.float(), lengths=LENGTHS)
    (out2.sum() + sum(s.sum() for s in _flat(state2))).backward()
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    for a, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_autocast_fused_is_torch_nns(family):
    """On the fused path a standard layer under autocast is torch.nn's: the same kernel, the
    same output dtype and values."""
    ours_cls, ref_cls = FAMILIES[family]
    ref = ref_cls(I, H, 2)
    ours = ours_cls(I, H, 2, impl="fused")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x)[0], ref(x)[0]
    assert a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)


DOUBLE_BACKWARD = {
    "LSTM": lambda impl: carousel.LSTM(I, H, 2, bidirectional=True, impl=impl),
    "LSTM-vanilla": lambda impl: carousel.LSTM(I, H, variant="vanilla", impl=impl),
    "LSTM-P+LN+FGR+proj": lambda impl: carousel.LSTM(
        I, H, peephole=True, layer_norm=True, full_gate_recurrence=True, proj_size=2, impl=impl
    ),
    "GRU": lambda impl: carousel.GRU(I, H, bidirectional=True, impl=impl),
    "GRU-Cho": lambda impl: carousel.GRU(I, H, reset_after=False, impl=impl),
    "RNN-relu": lambda impl: carousel.RNN(I, H, nonlinearity="relu", impl=impl),
}


@pytest.mark.parametrize("impl", ["auto", "compiled", "bptt"])
@pytest.mark.parametrize("name", sorted(DOUBLE_BACKWARD))
def test_double_backward_equals_the_reference(name, impl):
    """A gradient penalty (the input gradient's norm, differentiated again) through every
    path equals the reference loop's, as torch.nn's layers allow it: the hand-written and
    compiled backward passes recompute the sequence for the second derivative."""
    from carousel import kernels

    if impl == "compiled" and not kernels.available():
        pytest.skip("compiled kernels unavailable")
    torch.manual_seed(0)
    ref = DOUBLE_BACKWARD[name]("reference").double()
    layer = DOUBLE_BACKWARD[name](impl).double()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)

    def grads(model):
        out, state = model(x, lengths=LENGTHS)
        loss = out.pow(2).sum() + sum(s.pow(3).sum() for s in _flat(state))
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = gx.pow(2).sum()
        return torch.autograd.grad(penalty, [x, *model.parameters()])

    for (pname, _), a, b in zip(
        [("x", None), *ref.named_parameters()], grads(layer), grads(ref), strict=True
    ):
        torch.testing.assert_close(a, b, msg=lambda m, pname=pname: f"{pname}: {m}")
