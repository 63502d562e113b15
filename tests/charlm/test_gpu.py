"""The character language model on CUDA: the same greedy text as on the CPU."""

import pytest
import torch

from carousel.generate import sample_tokens
from carousel.models.charlm import CharLM


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_greedy_generation_on_cuda_equals_the_cpu(cell):
    torch.manual_seed(0)
    cpu = CharLM(11, 16, 2, cell=cell, embedding_size=8, dtype=torch.float64).eval()
    gpu = CharLM(11, 16, 2, cell=cell, embedding_size=8, dtype=torch.float64).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    prime = torch.tensor([[1], [2], [3]])  # (T, B)
    a, _ = sample_tokens(cpu, prime, 20, temperature=0.0)
    b, _ = sample_tokens(gpu, prime.cuda(), 20, temperature=0.0)
    assert b.device.type == "cuda" and torch.equal(b.cpu(), a)
