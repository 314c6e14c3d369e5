"""Least-squares fitting of a new layer's weights to an old layer's outputs on calibration data.

The fits accumulate normal equations ``AᵀA`` and ``AᵀY`` batch by batch (float64), so calibration sets of any size
fit in memory, then solve the ridge-regularised system ``(AᵀA + λ·mean(diag AᵀA)·I) P = AᵀY`` — the layer-wise
reconstruction of ThiNet (Luo et al. 2017, Eq. 6) and of Zhang et al. 2016 ("Accelerating very deep CNNs"),
applied to the rewritten layer.
"""

from __future__ import annotations

import torch
from torch import nn


class NormalEquations:
    """Running ``AᵀA`` and ``AᵀY`` for rows ``A`` (features) and ``Y`` (targets)."""

    def __init__(self) -> None:
        self.ata: torch.Tensor | None = None
        self.aty: torch.Tensor | None = None
        self.rows = 0

    def add(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        a, y = features.double(), targets.double()
        ata, aty = a.T @ a, a.T @ y
        self.ata = ata if self.ata is None else self.ata + ata
        self.aty = aty if self.aty is None else self.aty + aty
        self.rows += a.shape[0]

    def solve(self, ridge: float) -> torch.Tensor:
        """``P`` minimising ``‖AP − Y‖² + λ‖P‖²`` with λ relative to the features' mean energy."""
        if self.ata is None or self.aty is None:
            raise RuntimeError("no calibration rows were accumulated")
        scale = float(self.ata.diagonal().mean()) or 1.0
        eye = torch.eye(self.ata.shape[0], dtype=self.ata.dtype)
        return torch.linalg.solve(self.ata + ridge * scale * eye, self.aty).float()


def rows(x: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → (N·H·W)×C: one row per output position."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Receptive fields of ``conv`` on ``x`` as rows (N·H'·W') × (C·kh·kw), ordered like ``weight.reshape(O, -1)``."""
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def with_ones(a: torch.Tensor, bias: bool) -> torch.Tensor:
    """Append a column of ones so the solve also fits a bias."""
    return torch.cat([a, a.new_ones(a.shape[0], 1)], 1) if bias else a
