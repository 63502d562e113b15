"""Journey 6: a tanh RNN trained with Hessian-free optimisation (Martens & Sutskever 2011) and
structural damping on the addition problem (their definition, T=10).

Run: ``python examples/hessian_free.py`` (about half a minute on 2 cores).
"""

import torch
from torch import nn

import carousel
from carousel.tasks.pathological import Addition


class AdditionNet(nn.Module):
    """tanh RNN; a linear readout of each sequence's last step: ``(T, B, 2) -> (B, 1)``."""

    def __init__(self, hidden_size: int = 12) -> None:
        super().__init__()
        self.rnn = carousel.RNN(2, hidden_size)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.rnn(x, lengths=lengths).state[-1]  # (B, H): the state at lengths - 1
        return self.out(h)


def main(steps: int = 25, T: int = 10, seed: int = 0) -> float:
    torch.manual_seed(seed)
    task, model = Addition(T), AdditionNet()
    opt = carousel.optim.HessianFree(
        model.parameters(), model=model, loss="mse", structural_damping=0.03
    )
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        b = task.sample(128, generator=gen)

        def closure(b=b):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(b.inputs, b.lengths), b.targets)
            loss.backward()
            return loss

        # the Gauss-Newton products run on a smaller curvature batch
        opt.step(closure, curvature_inputs=(b.inputs[:, :32], b.lengths[:32]))
    test = task.sample(500, seed=123)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(test.inputs, test.lengths), test.targets))
    print(f"addition T={T}: held-out MSE {mse:.4f} after {steps} HF steps (the mean scores 0.167)")
    return mse


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
