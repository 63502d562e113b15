import itertools
import math

import pytest
import torch

from carousel.ctc import (
    Alphabet,
    CharScorer,
    CTCHypothesis,
    NGramCharScorer,
    RecurrentLMScorer,
    beam_search_decode,
    character_error_rate,
    edit_distance,
    greedy_decode,
    prefix_beam_search,
    word_error_rate,
)


def labelling_log_probs(log_probs, blank=0):
    """Exact log p(l|x) of every labelling, by enumerating all paths."""
    T, C = log_probs.shape
    out = {}
    for path in itertools.product(range(C), repeat=T):
        lab = tuple(k for k, _ in itertools.groupby(path) if k != blank)
        s = sum(float(log_probs[t, k]) for t, k in enumerate(path))
        out[lab] = (
            s if lab not in out else max(out[lab], s) + math.log1p(math.exp(-abs(out[lab] - s)))
        )
    return out


def test_greedy_collapses_and_respects_lengths():
    # frames: a a _ a b b
    ids = [1, 1, 0, 1, 2, 2]
    lp = torch.full((6, 2, 3), -10.0)
    for t, k in enumerate(ids):
        lp[t, :, k] = 0.0
    h0, h1 = greedy_decode(lp, [6, 3])
    assert h0 == CTCHypothesis((1, 1, 2), 0.0, (0, 3, 4))
    assert h1.tokens == (1,) and h1.timesteps == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_wide_prefix_beam_is_exact_on_small_problems(seed):
    g = torch.Generator().manual_seed(seed)
    lp = (2 * torch.randn(5, 3, generator=g, dtype=torch.float64)).log_softmax(-1)
    exact = labelling_log_probs(lp)
    hyps = prefix_beam_search(lp, beam_width=1000, prune_log_prob=-math.inf)
    best = max(exact, key=exact.get)
    assert hyps[0].tokens == best
    for h in hyps:  # every prefix's score is its exact probability (no LM)
        assert h.score == pytest.approx(exact[h.tokens], abs=1e-9)
    assert sum(math.exp(h.score) for h in hyps) == pytest.approx(1.0)


def test_beam_beats_greedy_when_alignments_add_up():
    # best path is blank,blank ('' at .36) but 'a' has .64 over its three alignments
    lp = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]], dtype=torch.float64))
    assert greedy_decode(lp.unsqueeze(1))[0].tokens == ()
    h = prefix_beam_search(lp, beam_width=4)[0]
    assert h.tokens == (1,) and math.exp(h.score) == pytest.approx(0.64)


def test_timesteps_mark_the_frame_of_each_character():
    alphabet = Alphabet("abc")
    frames = "__a___b__b_c"
    lp = torch.full((len(frames), len(alphabet)), math.log(0.01))
    for t, ch in enumerate(frames):
        lp[t, 0 if ch == "_" else alphabet.encode(ch)[0]] = math.log(0.97)
    for h in (greedy_decode(lp.unsqueeze(1))[0], prefix_beam_search(lp)[0]):
        assert alphabet.decode(h.tokens) == "abbc"
        assert h.timesteps == (2, 6, 9, 11)


def test_ngram_scorer_is_a_distribution_and_fits_counts():
    lm = NGramCharScorer(5, order=3).fit([[1, 2, 3, 4], [1, 2, 2], [3, 1]])
    assert isinstance(lm, CharScorer)
    for state in [lm.initial_state(), (1, 2), (4, 4), (-1, 3)]:
        p = [math.exp(v) for v in lm.next_log_probs(state)]
        assert p[0] == 0.0
        assert sum(p) + math.exp(lm.end_log_prob(state)) == pytest.approx(1.0)
    # seen continuations are more probable than unseen ones
    s = lm.advance(lm.advance(lm.initial_state(), 1), 2)
    nxt = lm.next_log_probs(s)
    assert nxt[3] > nxt[4] and nxt[2] > nxt[4]
    assert lm.log_prob([1, 2, 3, 4]) > lm.log_prob([4, 3, 2, 1])
    with pytest.raises(ValueError, match="label 0 at position 1 is the blank"):
        lm.fit([[1, 0]])


def test_ngram_scorer_weights_equal_repeated_sequences():
    seqs, weights = [[1, 2, 3], [2, 2], [3, 1, 4]], [3, 1, 2]
    weighted = NGramCharScorer(5, order=3).fit(seqs, weights=weights)
    repeated = NGramCharScorer(5, order=3).fit([s for s, k in zip(seqs, weights) for _ in range(k)])
    for probe in ([1, 2, 3], [3, 1], [4, 4, 2], []):
        assert weighted.log_prob(probe) == pytest.approx(repeated.log_prob(probe), abs=1e-12)
    with pytest.raises(ValueError, match="weights must be positive integers, got 0"):
        NGramCharScorer(5, order=2).fit([[1]], weights=[0])
    with pytest.raises(ValueError, match=r"got 1\.5 for sequence 0"):
        NGramCharScorer(5, order=2).fit([[1]], weights=[1.5])
    with pytest.raises(ValueError):  # one weight per sequence
        NGramCharScorer(5, order=2).fit([[1], [2]], weights=[1])


def test_lm_fusion_resolves_an_ambiguous_frame():
    # 'cat' vs 'cot': the middle frame is 55/45 towards 'o'; an LM trained on 'cat' flips it
    a = Alphabet("acot")
    lp = torch.full((3, len(a)), math.log(1e-3))
    lp[0, a.encode("c")[0]] = math.log(0.99)
    lp[1, a.encode("o")[0]] = math.log(0.55)
    lp[1, a.encode("a")[0]] = math.log(0.44)
    lp[2, a.encode("t")[0]] = math.log(0.99)
    lp = lp.log_softmax(-1)
    assert a.decode(prefix_beam_search(lp)[0].tokens) == "cot"
    lm = NGramCharScorer(len(a), order=3).fit([a.encode("cat")] * 20 + [a.encode("act")])
    best = prefix_beam_search(lp, scorer=lm, lm_weight=1.0)[0]
    assert a.decode(best.tokens) == "cat"
    assert best.timesteps == (0, 1, 2)


def test_recurrent_scorer_wrapping_an_ngram_gives_identical_results():
    ng = NGramCharScorer(4, order=2).fit([[1, 2, 3], [2, 3, 1], [3, 3]])

    def step(token, state):  # a "model" with the n-gram inside, LM vocabulary = labels + end
        state = ng.initial_state() if token is None else ng.advance(state, token)
        return torch.tensor([*ng.next_log_probs(state), ng.end_log_prob(state)]), state

    rec = RecurrentLMScorer(step, [None, 1, 2, 3], end_id=4)
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(8, 4, generator=g).log_softmax(-1)
    a = prefix_beam_search(lp, scorer=ng, lm_weight=0.7, beam_width=8)
    b = prefix_beam_search(lp, scorer=rec, lm_weight=0.7, beam_width=8)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=1e-5)


def test_recurrent_scorer_with_a_torch_lstm():
    torch.manual_seed(0)
    emb, lstm, head = torch.nn.Embedding(5, 8), torch.nn.LSTM(8, 16), torch.nn.Linear(16, 5)

    def step(token, state):
        x = emb(torch.tensor([[4 if token is None else token]]))  # 4 = start token
        out, state = lstm(x, state)
        return head(out[0, 0]).log_softmax(-1), state

    sc = RecurrentLMScorer(step, [None, 0, 1, 2], end_id=3)
    lp = torch.randn(6, 4).log_softmax(-1)
    hyps = prefix_beam_search(lp, scorer=sc, lm_weight=0.5, beam_width=4)
    assert len(hyps) == 4 and hyps[0].score >= hyps[-1].score


def test_batch_decode_and_errors():
    lp = torch.randn(5, 3, 4).log_softmax(-1)
    out = beam_search_decode(lp, [5, 2, 0], beam_width=3)
    assert len(out) == 3 and all(len(t) >= 1 for t in out)
    assert out[2][0].tokens == () and out[2][0].score == 0.0
    with pytest.raises(ValueError, match=r"expected log_probs of shape \(T, C\)"):
        prefix_beam_search(lp)
    with pytest.raises(ValueError, match=r"expected log_probs of shape \(T, B, C\)"):
        greedy_decode(lp[:, 0])
    with pytest.raises(ValueError, match=r"lengths must be in \[0, T=5\], got 6"):
        greedy_decode(lp, [6, 1, 1])
    with pytest.raises(ValueError, match="expected 3 lengths, got 1"):
        greedy_decode(lp, [1])
    with pytest.raises(TypeError, match="scorer must have initial_state"):
        prefix_beam_search(lp[:, 0], scorer=object())
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        prefix_beam_search(lp[:, 0], beam_width=0)
    with pytest.raises(ValueError, match=r"blank must be in \[0, 3\]"):
        prefix_beam_search(lp[:, 0], blank=4)
    with pytest.raises(ValueError, match=r"greedy_decode: blank must be an int in \[0, 3\], got 9"):
        greedy_decode(lp, blank=9)  # before: decoded, with class 0 among the tokens


def test_alphabet_and_metrics():
    a = Alphabet("ab ")
    assert len(a) == 4 and a.encode("ab a") == [1, 2, 3, 1] and a.decode([1, 0, 3]) == "a "
    assert a.render([1, 0, 2]) == "a_b"
    with pytest.raises(ValueError, match=r"character 'z' at position 1"):
        a.encode("az")
    with pytest.raises(ValueError, match="unique"):
        Alphabet("aa")
    with pytest.raises(ValueError, match="one character"):
        Alphabet(["ab"])
    assert edit_distance("abc", "abc") == 0 and edit_distance("", "abc") == 3
    assert character_error_rate(["abcd"], ["abd"]) == 0.25
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        character_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no characters"):
        character_error_rate([""], ["a"])
