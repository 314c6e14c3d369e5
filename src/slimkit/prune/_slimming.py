"""Network slimming's training-time sparsity penalty (Liu et al. 2017, Eq. 1): λ Σ |γ| over BN scales, added as
a subgradient λ·sign(γ) after each backward pass, so unimportant channels' γ go to zero before ``bn_scale`` pruning."""

from __future__ import annotations

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.train import Callback, TrainState

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BNScaleL1(Callback):
    """``fit(model, loader, callbacks=[BNScaleL1(1e-4)])`` (λ = 1e-4 is the paper's default for VGG/ResNet)."""

    def __init__(self, penalty: float = 1e-4) -> None:
        if penalty < 0:
            raise ConfigError(f"BN L1 penalty {penalty} must be ≥ 0")
        self.penalty = penalty

    def on_after_backward(self, state: TrainState) -> None:
        with torch.no_grad():
            for module in state.model.modules():
                if isinstance(module, _BN) and module.weight is not None and module.weight.grad is not None:
                    module.weight.grad.add_(self.penalty * torch.sign(module.weight))
