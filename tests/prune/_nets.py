"""A small conv net trained on sklearn digits (8×8), shared by the schedule/sensitivity tests."""

from __future__ import annotations

import functools

import torch
from torch import nn


class DigitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@functools.lru_cache(maxsize=1)
def trained_digit_net():
    """(state_dict, data bundle): 3 epochs on digits, ~95% test accuracy, a few seconds."""
    from slimkit.data import create_data
    from slimkit.train import fit

    data = create_data("digits", batch_size=64)
    torch.manual_seed(0)
    model = DigitNet()
    fit(model, data.train, epochs=3, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}, data


def digit_net() -> tuple[DigitNet, object]:
    state, data = trained_digit_net()
    model = DigitNet()
    model.load_state_dict(state)
    return model.eval(), data
