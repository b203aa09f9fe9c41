"""Real data (scikit-learn's digits) and tiny seeded models shared by the evaluation tests."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn


def digits_tensors(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of the 1797 real 8x8 digits, features scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:n], dtype=torch.float32) / 16.0, torch.tensor(y[:n], dtype=torch.long)


def make_mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 30, lr: float = 0.05):
    """Full-batch Adam on cross-entropy (deterministic given the model's initial weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model
