"""Group-wise weight grids for weight-only quantization (the format of ONNX Runtime's ``MatMulNBits``).

A weight matrix ``W`` (output rows × input columns; a conv's im2col matrix ``out × in·kh·kw``) is cut along its input
dimension into groups of ``group_size`` columns (one group = the whole row for per-channel grids). Each row of each
group has its own affine grid: codes ``q ∈ [0, 2^b - 1]`` (unsigned), ``ŵ = (q - z) · s``.

- asymmetric: ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)`` (the range widened to contain 0);
- symmetric: ``z = 2^(b-1)`` and ``s = -x* / 2^(b-1)`` where ``x*`` is the group's value of largest magnitude, so
  ``x*`` lands exactly on code 0 and all ``2^b`` levels are used — ONNX Runtime's convention (its
  ``DefaultWeightOnlyQuantizer``), the scale taking the sign that puts the extreme on the long side of the grid.

``observer="mse"`` shrinks each range by the factor in ``1, 0.99, ..., 0.21`` that minimises ``Σ|w - ŵ|^2.4``
(the grid search of the GPTQ reference implementation, Frantar et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimkit._errors import ConfigError

WEIGHT_OBSERVERS = ("minmax", "mse")
_MSE_NORM, _MSE_GRID, _MSE_MAX_SHRINK = 2.4, 100, 0.8


@dataclass(frozen=True)
class WeightGrid:
    """``bits`` per code, symmetric or not, ``group_size`` input columns per scale (None: one per output row)."""

    bits: int = 4
    symmetric: bool = False
    group_size: int | None = None
    observer: str = "minmax"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"weight bits {self.bits!r} are not supported: use an integer from 2 to 8")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ConfigError(f"group_size {self.group_size!r} must be a positive integer (e.g. 32, 64, 128) or None "
                              "for one scale per output channel")
        if self.observer not in WEIGHT_OBSERVERS:
            raise ConfigError(f"weight observer '{self.observer}' cannot choose group-wise weight grids: use one of "
                              f"{', '.join(WEIGHT_OBSERVERS)}")

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def groups(self, columns: int) -> int:
        """Number of groups along ``columns`` input columns (the last group may be shorter)."""
        size = self.group_size or columns
        return -(-columns // size)

    def size(self, columns: int) -> int:
        return min(self.group_size or columns, columns)


def _minmax(w: torch.Tensor, grid: WeightGrid, shrink: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` (rows × values), its range multiplied by ``shrink``."""
    if grid.symmetric:
        idx = w.abs().argmax(dim=1, keepdim=True)
        extreme = torch.gather(w, 1, idx).squeeze(1) * shrink
        half = 2 ** (grid.bits - 1)
        scale = -extreme / half
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return scale, torch.full_like(scale, float(half))
    lo = torch.clamp(w.min(dim=1).values, max=0.0) * shrink
    hi = torch.clamp(w.max(dim=1).values, min=0.0) * shrink
    scale = (hi - lo) / grid.qmax
    zero = torch.clamp(torch.round(-lo / torch.where(scale == 0, torch.ones_like(scale), scale)), 0, grid.qmax)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, zero


def row_params(w: torch.Tensor, grid: WeightGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (each of shape ``rows``) of the grid for each row of ``w`` (one group's columns)."""
    if grid.observer == "minmax":
        return _minmax(w, grid)
    best = torch.full((w.shape[0],), float("inf"), dtype=w.dtype, device=w.device)
    scale, zero = _minmax(w, grid)
    for i in range(int(_MSE_MAX_SHRINK * _MSE_GRID)):
        s, z = _minmax(w, grid, 1.0 - i / _MSE_GRID)
        err = (fake_quant(w, s[:, None], z[:, None], grid.qmax) - w).abs().pow(_MSE_NORM).sum(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def codes_of(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round(w / s) + z, 0, qmax)`` (scale and zero broadcast against ``w``)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, qmax)


def fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Round ``w`` to its grid and back: ``(codes - z) · s``."""
    return (codes_of(w, scale, zero, qmax) - zero) * scale


def group_params(w: torch.Tensor, grid: WeightGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of every group of a matrix ``w`` (rows × columns): each of shape ``rows × groups``."""
    _rows, cols = w.shape
    size = grid.size(cols)
    scales, zeros = [], []
    for start in range(0, cols, size):
        s, z = row_params(w[:, start:start + size], grid)
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def expand(params: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Per-group values (rows × groups) as per-column values (rows × columns) through each column's group."""
    return params[:, group_index]


def contiguous_groups(columns: int, grid: WeightGrid, device: torch.device | None = None) -> torch.Tensor:
    """Each column's group when groups are consecutive runs of ``group_size`` columns."""
    return torch.arange(columns, device=device) // grid.size(columns)


def quantize_rtn(w: torch.Tensor, grid: WeightGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: ``(codes, scales, zeros)`` of ``w`` on its group-wise grid."""
    scales, zeros = group_params(w, grid)
    index = contiguous_groups(w.shape[1], grid, w.device)
    codes = codes_of(w, expand(scales, index), expand(zeros, index), grid.qmax)
    return codes, scales, zeros


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_index: torch.Tensor) -> torch.Tensor:
    """``(codes - z) · s`` with per-group ``scales``/``zeros`` spread over columns by ``group_index``."""
    return (codes - expand(zeros, group_index)) * expand(scales, group_index)
