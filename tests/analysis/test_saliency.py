"""Saliency (carousel.analysis.saliency)."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import carousel
from carousel.analysis import evaluation_mode, saliency


class ReadsOnlyStep(nn.Module):
    """An LSTM classifier that sees only input step k (the others are multiplied by 0)."""

    def __init__(self, k: int, batch_first: bool = False):
        super().__init__()
        self.k, self.batch_first = k, batch_first
        self.rnn = carousel.LSTM(3, 8, batch_first=batch_first)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        T = x.shape[1 if self.batch_first else 0]
        keep = torch.zeros(T, dtype=x.dtype)
        keep[self.k] = 1
        keep = keep.view(1, T, 1) if self.batch_first else keep.view(T, 1, 1)
        out, _ = self.rnn(x * keep)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.head(self.drop(last))


@pytest.mark.parametrize("batch_first", [False, True])
def test_zero_everywhere_but_the_step_read(batch_first):
    model = ReadsOnlyStep(4, batch_first).train()
    x = torch.randn((2, 10, 3) if batch_first else (10, 2, 3))
    s = saliency(model, x)
    assert s.scores.shape == (10, 2)
    assert (s.scores[:4] == 0).all() and (s.scores[5:] == 0).all()
    assert (s.scores[4] > 0).all()
    assert s.gradients.shape == x.shape and s.step is None
    # the most active class, in evaluation mode (dropout off), and the mode restored
    with torch.no_grad(), evaluation_mode(model):
        logits = model(x)
    assert torch.equal(s.target, logits.argmax(-1))
    torch.testing.assert_close(s.output, logits.gather(1, s.target[:, None])[:, 0])
    assert model.training and model.drop.training
    # an explicit target
    assert saliency(model, x, target=3).target.tolist() == [3, 3]


def test_per_step_outputs_tokens_lengths_and_unbatched():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 5)
            self.rnn = carousel.GRU(5, 6)
            self.head = nn.Linear(6, 10)

        def forward(self, tokens, lengths=None):
            out, _ = self.rnn(self.emb(tokens), lengths=lengths)
            return self.head(out)

    tokens = torch.randint(0, 10, (7, 3))
    s = saliency(Tagger(), tokens, step=2)
    assert s.step == 2 and s.gradients.shape == (7, 3, 5)
    assert (s.scores[3:] == 0).all() and (s.scores[:3] > 0).all()  # causal: nothing after 2
    lengths = torch.tensor([7, 3, 5])
    s = saliency(Tagger(), tokens, forward_kwargs={"lengths": lengths})
    for b, n in enumerate(lengths.tolist()):  # each sequence's own last step
        assert (s.scores[n:, b] == 0).all() and s.scores[n - 1, b] > 0
    one = saliency(carousel.LSTM(3, 4), torch.randn(6, 3))
    assert one.scores.shape == (6, 1) and one.target.shape == (1,)


def test_errors():
    lstm = carousel.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"has no nn\.Embedding"):
        saliency(lstm, torch.zeros(5, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 4\)"):
        saliency(lstm, torch.randn(5, 2, 3), target=4)
    with pytest.raises(ValueError, match=r"step must be an int in \[-5, 5\)"):
        saliency(lstm, torch.randn(5, 2, 3), step=5)
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        saliency(lstm, [1, 2])
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.raises(TypeError, match=r"inputs is a PackedSequence; pass the padded tensor"):
        saliency(lstm, packed)
    with pytest.raises(ValueError, match=r"expected the output as \(B, C\) or \(T, B, C\)"):
        saliency(lstm, torch.randn(5, 2, 3), output_fn=lambda out: out[0].sum())


@pytest.mark.gpu
def test_cuda_eval_mode():
    lstm = carousel.LSTM(3, 4).cuda().eval()
    s = saliency(lstm, torch.randn(5, 2, 3, device="cuda"))
    assert s.scores.device.type == "cuda" and not lstm.training
