"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Each layer's weights are quantized one input column at a time; the rounding error of a column is compensated by
updating the columns not yet quantized with the inverse of the layer-input Hessian ``H = 2 X Xᵀ`` (the Optimal Brain
Quantizer update, their Eq. 2–3). GPTQ's three refinements are implemented as in their Algorithm 1: a fixed
(not greedy) column order, the rows of the Cholesky factor of ``H⁻¹`` instead of repeated inverse updates (Eq. 5),
and lazy batch updates — blocks of ``block_size`` columns, the rest of the matrix updated once per block.
``damp`` adds ``damp · mean(diag H)`` to the diagonal (§4, "dampening").

Act-order (``act_order``, quantize columns in order of decreasing ``diag H``) with ``static_groups`` computes each
group's grid from the original weights of its *consecutive* columns before any update, so a column's group does
not depend on the order and the layer stays exportable as consecutive blocks (ONNX Runtime's ``MatMulNBits``);
without static groups, groups follow the permuted order and each layer stores a per-column ``group_index``.

Conv2d layers are quantized as their im2col matrix (``out × in·kh·kw``, ``H`` from the unfolded input), grouped
convolutions one group of channels at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit._masks import WEIGHT_MASK
from slimkit.quantize._methods import LayerTarget, register_method, rtn_layer
from slimkit.quantize._sequential import SequentialRunner

log = logging.getLogger(__name__)

#: per-row (scale, zero point) of a block of columns
ParamsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTQOptions:
    """GPTQ's knobs. Defaults: 1% dampening and 128-column blocks (the paper's), act-order with static groups
    (what llm-compressor and AutoGPTQ's ``desc_act`` + ``static_groups`` ship as the accurate, exportable choice),
    groups of layers sharing an input calibrated one after another (``sequential``, "true-sequential")."""

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    static_groups: bool = True
    sequential: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 < self.damp < 1:
            raise ConfigError(f"gptq: damp {self.damp!r} must be in (0, 1) (a fraction of the mean Hessian "
                              "diagonal; the paper uses 0.01)")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"gptq: block_size {self.block_size!r} must be a positive integer (columns per lazy "
                              "batch update; 128 in the paper)")
        for name in ("act_order", "static_groups", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"gptq: {name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class GPTQResult:
    """Codes (rows × columns, original column order), per-group scales and zeros (rows × groups), each column's
    group, and the dequantized weight."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_index: torch.Tensor
    weight: torch.Tensor


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damp · mean(diag H)``; the dampening grows tenfold
    (with a warning) while the matrix is not positive definite."""
    H = H.double()
    mean = float(torch.diag(H).mean())
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(6):
        lam = damp * (10**attempt) * (mean if mean > 0 else 1.0)
        factor, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                if attempt:
                    log.warning("GPTQ: Hessian not positive definite at damp=%g; used damp=%g", damp,
                                damp * 10**attempt)
                return upper
    raise ConfigError(f"GPTQ: the layer-input Hessian is not positive definite even with damp={damp * 1e5:g}: "
                      "calibrate with more (or more varied) data")


def gptq_matrix(
    W: torch.Tensor, H: torch.Tensor, params: ParamsFn, qmin: int, qmax: int, *, group_size: int | None = None,
    block_size: int = 128, damp: float = 0.01, act_order: bool = False, static_groups: bool = True,
    keep: torch.Tensor | None = None,
) -> GPTQResult:
    """Quantize the rows × columns matrix ``W`` with GPTQ given ``H`` (columns × columns) — Frantar et al. 2023,
    Algorithm 1. ``params(w)`` gives each row's (scale, zero point) for the columns ``w``; codes are
    ``clamp(round(w / s) + z, qmin, qmax)``. Computes in ``W``'s dtype (the Cholesky factors in float64).

    ``keep`` (rows × columns, bool): weights outside it (pruned ones) are quantized to exactly zero, their error
    compensated on the later kept columns like any rounding error (as SparseGPT, Frantar & Alistarh 2023, keeps a
    mask): the compensation would otherwise move them off zero and undo the pruning."""
    dtype = W.dtype
    W = W.clone()
    rows, cols = W.shape
    H = H.to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    size = group_size if group_size and group_size < cols else None
    n_groups = math.ceil(cols / size) if size else 1
    scales = torch.zeros(rows, n_groups, dtype=dtype, device=W.device)
    zeros = torch.zeros(rows, n_groups, dtype=dtype, device=W.device)
    dynamic = size is not None and not static_groups
    if size is None:
        scales[:, 0], zeros[:, 0] = params(W)
    elif not dynamic:
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = params(W[:, g * size:(g + 1) * size])
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    if act_order:
        W, H = W[:, perm], H[perm][:, perm]
    keep = None if keep is None else keep.to(torch.bool)[:, perm]
    if size is None:
        group_of = torch.zeros(cols, dtype=torch.long, device=W.device)
    elif dynamic:
        group_of = torch.arange(cols, device=W.device) // size  # groups in the order columns are quantized
    else:
        group_of = perm // size  # each column keeps the group of its original position
    U = _inverse_cholesky(H, damp).to(dtype)
    codes = torch.zeros_like(W)
    # A dynamic group's grid is computed from its columns' current values, so a group must not straddle blocks.
    block = size * math.ceil(block_size / size) if dynamic else block_size
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        err_block = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dynamic and j % size == 0:
                g = j // size
                scales[:, g], zeros[:, g] = params(W1[:, i:i + size])
            g = group_of[j]
            scale, zero = scales[:, g], zeros[:, g]
            w = W1[:, i]
            q = torch.clamp(torch.round(w / scale) + zero, qmin, qmax)
            if keep is not None:
                q = torch.where(keep[:, j], q, zero)  # a pruned weight's code is the zero point: exactly 0
            codes[:, j] = q
            err = (w - (q - zero) * scale) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            err_block[:, i] = err
        W[:, i2:] -= err_block @ U[i1:i2, i2:]
    inverse = torch.argsort(perm)
    codes, group_of = codes[:, inverse], group_of[inverse]
    weight = (codes - zeros[:, group_of]) * scales[:, group_of]
    return GPTQResult(codes, scales, zeros, group_of, weight)


def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``groups × samples × columns`` rows matching the weight matrix's columns (for a conv,
    the im2col patches of each channel group)."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding: Any = 0
        else:
            padding = layer.padding
        if isinstance(padding, str):
            raise ConfigError(f"GPTQ cannot unfold a conv with padding='{padding}': use explicit padding")
        patches = F.unfold(x, layer.kernel_size, layer.dilation, padding, layer.stride)  # N × C·kh·kw × L
        cols = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        return cols.reshape(cols.shape[0], layer.groups, -1).transpose(0, 1)
    return x.reshape(-1, x.shape[-1]).unsqueeze(0)


class Hessian:
    """Running ``2/n Σ x xᵀ`` of a layer's inputs, one matrix per channel group (GPTQ's ``H``)."""

    def __init__(self) -> None:
        self.H: torch.Tensor | None = None
        self.n = 0

    def add(self, columns: torch.Tensor) -> None:
        columns = columns.float()
        m = columns.shape[1]
        if m == 0:
            return
        outer = torch.einsum("gni,gnj->gij", columns, columns) if columns.shape[0] > 1 \
            else (columns[0].T @ columns[0]).unsqueeze(0)
        if self.H is None:
            self.H = torch.zeros_like(outer)
        self.H *= self.n / (self.n + m)
        self.H += outer * (2.0 / (self.n + m))
        self.n += m


def gptq_target(target: LayerTarget, hessian: Hessian, options: GPTQOptions) -> dict[str, float]:
    """Quantize one layer target from its accumulated Hessian and commit the result.

    Each output row keeps the better of GPTQ's and round-to-nearest's codes under the calibration objective
    ``(w - ŵ) H (w - ŵ)ᵀ`` (GPTQ is greedy and, rarely, loses to rounding on a row), so the layer's output error on
    the calibration data is never above round-to-nearest's. Returns both proxy losses (per row, averaged) and
    how many rows kept the rounding, for the report.
    """
    W = target.matrix()
    if hessian.H is None:
        raise ConfigError(f"GPTQ: layer '{target.name}' saw no calibration input")
    groups = hessian.H.shape[0]
    per = W.shape[0] // groups
    mask = getattr(target.layer, WEIGHT_MASK, None)  # unstructured pruning's mask
    keep = mask.reshape(W.shape) if isinstance(mask, torch.Tensor) and mask.numel() == W.numel() else None
    results = []
    for g in range(groups):
        rs = slice(g * per, (g + 1) * per)

        def params(w: torch.Tensor, rs: slice = rs) -> tuple[torch.Tensor, torch.Tensor]:
            return target.params(w, rs)

        results.append(gptq_matrix(
            W[rs], hessian.H[g], params, target.qmin, target.qmax, group_size=target.group_size,
            block_size=options.block_size, damp=options.damp, act_order=options.act_order,
            static_groups=options.static_groups, keep=None if keep is None else keep[rs],
        ))
    codes = torch.cat([r.codes for r in results])
    scales = torch.cat([r.scales for r in results])
    zeros = torch.cat([r.zeros for r in results])
    weight = torch.cat([r.weight for r in results])
    group_index = results[0].group_index
    if any(not torch.equal(r.group_index, group_index) for r in results[1:]):
        raise ConfigError(f"GPTQ: conv groups of '{target.name}' ended with different column groups: use "
                          "static_groups=true")
    rtn_codes, rtn_scales, rtn_zeros = rtn_layer(target)
    size = target.group_size or W.shape[1]
    rtn_index = torch.arange(W.shape[1]) // size
    rtn_weight = (rtn_codes - rtn_zeros[:, rtn_index]) * rtn_scales[:, rtn_index]
    loss_gptq, loss_rtn = _row_loss(W - weight, hessian.H), _row_loss(W - rtn_weight, hessian.H)
    use_rtn = loss_rtn < loss_gptq
    if bool(use_rtn.any()):
        if not torch.equal(group_index, rtn_index):  # act-order with dynamic groups: RTN rows on GPTQ's groups
            rtn_codes, rtn_scales, rtn_zeros = _rtn_on_groups(target, W, group_index, scales.shape[1])
            rtn_weight = (rtn_codes - rtn_zeros[:, group_index]) * rtn_scales[:, group_index]
            loss_rtn = _row_loss(W - rtn_weight, hessian.H)
            use_rtn = loss_rtn < loss_gptq
        rows = use_rtn.unsqueeze(1)
        codes = torch.where(rows, rtn_codes, codes)
        scales, zeros = torch.where(rows, rtn_scales, scales), torch.where(rows, rtn_zeros, zeros)
    target.commit(codes, scales, zeros, group_index)
    rows_total = W.shape[0]
    return {"rtn": float(loss_rtn.sum()) / rows_total, "gptq": float(torch.minimum(loss_gptq, loss_rtn).sum())
            / rows_total, "rows_rounded_to_nearest": int(use_rtn.sum())}


def _rtn_on_groups(target: LayerTarget, W: torch.Tensor, group_index: torch.Tensor,
                   groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes for arbitrary column groups (each group's grid from its own columns)."""
    scales = torch.zeros(W.shape[0], groups, dtype=W.dtype)
    zeros = torch.zeros_like(scales)
    for g in range(groups):
        scales[:, g], zeros[:, g] = target.params(W[:, group_index == g])
    codes = torch.clamp(torch.round(W / scales[:, group_index]) + zeros[:, group_index], target.qmin, target.qmax)
    return codes, scales, zeros


def _row_loss(delta: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``δ_r H δ_rᵀ`` per output row (each channel group of a grouped conv with its own Hessian)."""
    groups = H.shape[0]
    per = delta.shape[0] // groups
    return torch.cat([torch.sum((delta[g * per:(g + 1) * per] @ H[g]) * delta[g * per:(g + 1) * per], dim=1)
                      for g in range(groups)])


@register_method("gptq", kind="rounding", options=GPTQOptions,
                 summary="GPTQ: column-wise rounding with second-order error compensation (Frantar et al. 2023)")
def _gptq(model: nn.Module, targets: list[LayerTarget], config: Any, options: GPTQOptions, calls: list,
          report: Any) -> None:
    by_name = {t.name: t for t in targets}
    runner = SequentialRunner(model, calls, list(by_name))
    losses: dict[str, dict[str, float]] = {}
    for stage in runner.stages():
        groups = stage.groups if options.sequential else [stage.layers]
        for group in groups:
            hessians = {name: Hessian() for name in group}

            def hook(name: str, hessian: Hessian):
                target = by_name[name]
                return lambda x: hessian.add(input_columns(target.layer, target.input_of(x)))

            stage.run({name: hook(name, hessians[name]) for name in group}, stop_after=group[-1], keep_outputs=False)
            for name in group:
                losses[name] = gptq_target(by_name[name], hessians[name], options)
                hessians[name] = Hessian()  # free the matrix
    skipped = runner.skipped()
    for name in skipped:  # no input to compensate with: plain rounding
        by_name[name].commit(*rtn_layer(by_name[name]))
    report.details["gptq"] = {"proxy_loss": losses, "rounded_to_nearest": skipped}
