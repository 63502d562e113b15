"""The language model, incremental stepping (equal to a full rerun), sampling, beam search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from carousel.generate import beam_search, generate, sample_tokens
from carousel.models.charlm import CharLM
from carousel.text.vocab import Vocabulary

CONFIGS = [
    ("lstm", {}, 8, True),
    ("lstm", {"variant": "CIFG"}, 8, False),
    ("lstm", {"layer_norm": True, "peephole": True}, 8, False),
    ("lstm", {"learn_initial_state": True}, 8, True),
    ("lstm", {}, 0, True),  # one-hot input
    ("gru", {}, 8, True),
    ("gru", {"reset_after": False}, 8, False),
    ("rnn", {"nonlinearity": "relu"}, 8, True),
    ("rnn", {}, 0, True),
]


def _model(cell, options, emb, V=7, H=6, L=2):
    torch.manual_seed(0)
    m = CharLM(V, H, L, cell=cell, embedding_size=emb, layer_options=options, dtype=torch.float64)
    if options.get("learn_initial_state"):
        with torch.no_grad():
            for n, p in m.rnn.named_parameters():
                if n.startswith("initial_"):
                    p.normal_()
    return m.eval()


@pytest.mark.parametrize(("cell", "options", "emb", "fast"), CONFIGS)
def test_incremental_steps_equal_a_full_rerun(cell, options, emb, fast):
    m = _model(cell, options, emb)
    seq = torch.randint(0, 7, (12, 3))
    full = m(seq).logits  # (T, B, V)
    with torch.no_grad():
        stepper = m.stepper(3)
        assert stepper.fast is fast
        steps = torch.stack([stepper.step(seq[t]) for t in range(12)])
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        # feeding a block then stepping gives the same as well
        s2 = m.stepper(3)
        last = s2.feed(seq[:5])
        torch.testing.assert_close(last, full[4], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s2.step(seq[5]), full[5], rtol=1e-10, atol=1e-10)


def test_model_shapes_states_and_errors():
    m = CharLM(11, 16, 3, embedding_size=4, dropout=0.2)
    out = m(torch.randint(0, 11, (5, 2)), return_states=True)
    assert out.logits.shape == (5, 2, 11)
    assert out.states.c.shape == (3, 5, 2, 16)
    assert m.initial_state(4).h.shape == (3, 4, 16)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=11\)"):
        m(torch.tensor([[11]]))
    with pytest.raises(ValueError, match=r"expected tokens of shape \(T, B\)"):
        m(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer ids"):
        m(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="cannot be bidirectional"):
        CharLM(5, 4, 1, layer_options={"bidirectional": True})
    with pytest.raises(ValueError, match="may not set 'hidden_size'"):
        CharLM(5, 4, 1, layer_options={"hidden_size": 3})
    with pytest.raises(ValueError, match="invalid layer_options for cell='gru'"):
        CharLM(5, 4, 1, cell="gru", layer_options={"variant": "CIFG"})
    with pytest.raises(ValueError, match="cell must be one of"):
        CharLM(5, 4, 1, cell="transformer")
    with pytest.raises(ValueError, match=r"expected tokens of shape \(3,\)"):
        m.eval().stepper(3).step(torch.tensor([1]))


VOCAB = Vocabulary.build("the quick brown fox jumps over the lazy dog\n")


def _lm():
    torch.manual_seed(1)
    return CharLM(len(VOCAB), 24, 2, embedding_size=8)


def test_sampling_is_deterministic_with_a_seed_and_streams():
    m = _lm()
    a = generate(m, VOCAB, prime="the ", length=40, temperature=0.9, seed=3)
    b = generate(m, VOCAB, prime="the ", length=40, temperature=0.9, seed=3)
    c = generate(m, VOCAB, prime="the ", length=40, temperature=0.9, seed=4)
    assert a == b and a.text != c.text
    assert len(a.tokens) == 40 and a.text == VOCAB.decode(a.tokens)
    pieces: list[str] = []
    d = generate(m, VOCAB, prime="the ", length=40, temperature=0.9, seed=3, on_text=pieces.append)
    assert "".join(pieces) == d.text == a.text and len(pieces) == 40
    assert "\ufffd" not in generate(m, VOCAB, length=200, temperature=3.0, seed=0).text
    assert m.training  # generate restores the mode


def test_log_prob_matches_a_full_rerun_and_greedy_variants_agree():
    m = _lm().eval()
    g = generate(m, VOCAB, prime="over ", length=15, temperature=0, allow_unknown=True)
    seq = torch.cat([VOCAB.encode("over "), torch.tensor(g.tokens)])
    with torch.no_grad():
        logp = torch.log_softmax(m(seq[:-1, None]).logits[:, 0], -1)  # (T, V)
    rerun = logp[4:].gather(1, seq[5:, None]).sum()
    assert g.log_prob == pytest.approx(float(rerun), rel=1e-5)
    # greedy == top_k=1 sampling == beam width 1
    k1 = generate(m, VOCAB, prime="over ", length=15, top_k=1, seed=9, allow_unknown=True)
    b1 = generate(m, VOCAB, prime="over ", length=15, beam_width=1, allow_unknown=True)
    assert g.tokens == k1.tokens == b1.tokens


def test_beam_search_finds_the_exact_optimum_when_wide_enough():
    torch.manual_seed(0)
    V, T = 3, 4
    m = CharLM(V, 5, 1, embedding_size=3, dtype=torch.float64).eval()
    prime = torch.tensor([0, 1])
    with torch.no_grad():
        best, best_lp = None, -math.inf
        for cont in itertools.product(range(V), repeat=T):
            seq = torch.cat([prime, torch.tensor(cont)])
            lp = torch.log_softmax(m(seq[:-1, None]).logits[:, 0], -1)
            s = float(lp[1:].gather(1, seq[2:, None]).sum())
            if s > best_lp:
                best, best_lp = list(cont), s
    hyps = beam_search(m, prime, T, beam_width=V**T)
    assert hyps[0].tokens == best and hyps[0].log_prob == pytest.approx(best_lp)
    scores = [h.log_prob for h in hyps]
    assert scores == sorted(scores, reverse=True)
    narrow = beam_search(m, prime, T, beam_width=2)
    greedy = beam_search(m, prime, T, beam_width=1)
    assert best_lp + 1e-9 >= narrow[0].log_prob >= greedy[0].log_prob - 1e-9
    committed: list[int] = []
    again = beam_search(m, prime, T, beam_width=2, on_commit=committed.extend)
    assert committed == again[0].tokens


def test_batched_sampling_rows_are_independent_streams():
    m = _lm().eval()
    prime = VOCAB.encode("the ").unsqueeze(1).repeat(1, 5)  # (P, B)
    g = torch.Generator().manual_seed(0)
    toks, logp = sample_tokens(m, prime, 30, temperature=1.0, generator=g)
    assert toks.shape == (30, 5) and logp.shape == (5,)
    assert len({tuple(toks[:, b].tolist()) for b in range(5)}) > 1


def test_generation_errors():
    m = _lm()
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(m, VOCAB, length=3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        generate(m, VOCAB, length=3, top_k=0)
    with pytest.raises(ValueError, match="length must be >= 1"):
        generate(m, VOCAB, length=0)
    strict = Vocabulary(list(VOCAB.tokens[1:]), unknown="skip")
    with pytest.raises(ValueError, match="has no token in the vocabulary"):
        generate(m, strict, prime="ZZZ", length=3)
    with pytest.raises(ValueError, match=r"expected prime ids of shape \(P,\)"):
        beam_search(m, torch.zeros(2, 2, dtype=torch.long), 3)


def test_word_models_generate_one_word_per_step():
    words = Vocabulary.build("the cat sat on the mat. the dog sat on the log.", unit="word")
    torch.manual_seed(0)
    m = CharLM(len(words), 8, 1, embedding_size=4)
    g = generate(m, words, prime="the cat", length=6, seed=0)
    assert len(g.tokens) == 6
    assert g.text == "".join(words.tokens[i] for i in g.tokens)
    assert all(words.tokens[i] != "<unk>" for i in g.tokens)
