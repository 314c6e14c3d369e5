"""Network slimming's L1 penalty on BN γ is added to the gradient exactly (λ·sign γ)."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.prune import BNScaleL1
from slimkit.train import TrainState


def test_penalty_adds_sign_of_gamma():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.0, 1.0]))
    model[1].weight.grad = torch.ones(4)
    BNScaleL1(0.1).on_after_backward(TrainState(model=model, optimizer=None))
    torch.testing.assert_close(model[1].weight.grad, torch.tensor([1.1, 0.9, 1.0, 1.1]))
