"""Train a peephole LSTM with a learned initial state to tell whether a sequence of +-1 holds
more +1 than -1 (it must count along the sequence).

Run: ``python examples/quickstart.py`` (a few seconds on 2 cores).
"""

import torch
import torch.nn.functional as F

import carousel


def batch(T: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = 2 * torch.randint(0, 2, (T, B, 1)).float() - 1  # (T, B, 1), odd T: no ties
    return x, (x.sum(0) > 0).float()  # (B, 1)


def main(steps: int = 300, T: int = 21, seed: int = 0) -> float:
    torch.manual_seed(seed)
    lstm = carousel.LSTM(1, 16, peephole=True, learn_initial_state=True)
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        x, y = batch(T, 32)
        out, _ = lstm(x)
        loss = F.binary_cross_entropy_with_logits(head(out[-1]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(T, 2000)
    with torch.no_grad():
        acc = ((head(lstm(x)[0][-1]) > 0).float() == y).float().mean().item()
    print(f"majority of {T} signs: held-out accuracy {acc:.3f} (last loss {loss.item():.4f})")
    return acc


if __name__ == "__main__":
    main()
