"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration").

Weight channels that meet large activations matter most; scaling them up by ``s`` before quantization (and the
activations down by ``s``, folded exactly into the previous norm or Linear) shrinks their relative rounding error
(their §3.2, Eq. 4–5). Per pair of (previous op → Linear layers) the scale is ``s = s_X^α / s_W^(1-α)``
(``s_X``: mean |x| per input channel; ``s_W``: mean normalised |w| per input channel, the "duo scaling" of the
reference implementation, or ``s_W = 1`` with ``duo_scaling=false``, the paper's Eq. 5), normalised so
``max·min = 1``; ``α`` is grid-searched (``grid`` points in [0, 1)) to minimise the mean squared error of the
block's output when the pair's Linear layers are quantized. Then (``clip``) each group's clipping range is
shrunk by the factor in ``[1 - max_shrink, 1]`` that minimises that group's output error on sampled tokens
(the reference's ``auto_clip``; skipped for query/key projections, whose errors the softmax amplifies).

AWQ is a transform of the float model: the weights are rounded afterwards by the configured rounding (RTN by
default, ``"awq+gptq"`` for GPTQ). Blocks are calibrated in order, each on the outputs of the scaled previous ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._select import matches_any
from slimkit.quantize._grid import WeightGrid, fake_quant, row_params
from slimkit.quantize._methods import register_method, selected_linears
from slimkit.quantize._ptq import weight_range
from slimkit.quantize._scaling import (
    InputStats,
    find_pairs,
    fold_checked_,
    outputs,
    relative_error,
    restore_,
    snapshot,
)
from slimkit.quantize._sequential import SequentialRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AWQOptions:
    """AWQ's knobs; defaults from the reference implementation (20-point grids, clipping down to half the range,
    512 tokens for the clipping search, duo scaling as AutoAWQ). The scale search scores the block output on the
    first calibration batches holding ``search_tokens`` tokens (the statistics use them all): the reference's
    64k tokens per grid point are GPU-sized."""

    grid: int = 20
    duo_scaling: bool = True
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512
    clip_skip: str = "re:.*(q_proj|k_proj|query|key|c_attn)$"
    search_tokens: int = 8192

    def __post_init__(self) -> None:
        for name in ("grid", "clip_grid", "clip_tokens", "search_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"awq: {name} must be a positive integer, got {value!r}")
        if isinstance(self.max_shrink, bool) or not isinstance(self.max_shrink, (int, float)) \
                or not 0 <= self.max_shrink < 1:
            raise ConfigError(f"awq: max_shrink {self.max_shrink!r} must be in [0, 1) (the largest fraction of a "
                              "group's range the clipping search may cut)")
        for name in ("duo_scaling", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"awq: {name} must be true or false, got {getattr(self, name)!r}")


def weight_grid(config: Any) -> WeightGrid:
    """The weight grid a config quantizes to (per channel when no group size is set)."""
    symmetric = config.weight_symmetric
    observer = config.weight_observer if config.weight_observer in ("minmax", "mse") else "minmax"
    bits = config.weight_bits
    if config.activation_bits is not None:  # the int8 kernels' grid (7-bit where they saturate)
        bits = weight_range(config)["bits"]
    return WeightGrid(bits, symmetric, config.group_size, observer)


def quantize_dequantize(weight: torch.Tensor, grid: WeightGrid) -> torch.Tensor:
    """Round a rows × columns weight to its group-wise grid and back (RTN)."""
    _rows, cols = weight.shape
    size = grid.size(cols)
    out = torch.empty_like(weight)
    for start in range(0, cols, size):
        w = weight[:, start:start + size]
        s, z = row_params(w, grid)
        out[:, start:start + size] = fake_quant(w, s[:, None], z[:, None], grid.qmax)
    return out


def _weight_scale(layers: list[nn.Module], grid: WeightGrid) -> torch.Tensor:
    """Mean over output rows of |w| normalised by its group's max |w|, per input channel (AutoAWQ's ``w_mean``)."""
    parts = []
    for layer in layers:
        w = layer.weight.detach().abs().float()
        size = grid.size(w.shape[1])
        groups = w.shape[1] // size if w.shape[1] % size == 0 else None
        if groups:
            g = w.reshape(w.shape[0], groups, size)
            w = (g / g.amax(dim=2, keepdim=True).clamp(min=1e-8)).reshape_as(w)
        else:
            w = w / w.amax(dim=1, keepdim=True).clamp(min=1e-8)
        parts.append(w)
    return torch.cat(parts).mean(dim=0)


def _first_tokens(calls: list, tokens: int) -> list:
    """The first calls holding at least ``tokens`` tokens (rows of their first input)."""
    chosen, seen = [], 0
    for c in calls:
        chosen.append(c)
        first = c[0][0] if c[0] else next(iter(c[1].values()))
        seen += first.numel() // (first.shape[-1] if first.is_floating_point() else 1)
        if seen >= tokens:
            break
    return chosen


def _search_scale(stage, pair, stats: dict[str, InputStats], grid: WeightGrid, options: AWQOptions,
                  reference: list[torch.Tensor], calls: list) -> tuple[torch.Tensor, float, float]:
    root = stage.root
    layers = [root.get_submodule(n) for n in pair.balance]
    x_mean = stats[pair.balance[0]].absmean.clamp(min=1e-8)
    w_mean = _weight_scale(layers, grid).clamp(min=1e-8) if options.duo_scaling else torch.ones_like(x_mean)
    originals = [layer.weight.detach().clone() for layer in layers]
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    try:
        for i in range(options.grid):
            alpha = i / options.grid
            s = (x_mean.pow(alpha) / w_mean.pow(1 - alpha)).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            with torch.no_grad():
                for layer, w in zip(layers, originals):
                    layer.weight.copy_(quantize_dequantize(w * s, grid) / s)
            err = relative_error(outputs(stage, calls), reference)
            if err < best[0]:
                best = (err, alpha, s)
    finally:
        with torch.no_grad():
            for layer, w in zip(layers, originals):
                layer.weight.copy_(w)
    return best[2], best[1], best[0]


def _clip(layer: nn.Module, x: torch.Tensor, grid: WeightGrid, options: AWQOptions) -> torch.Tensor:
    """The clipped weight of ``layer``: per output row and group, the range ``±max|w| · (1 - shrink)`` whose
    quantized output on the sampled inputs ``x`` (tokens × columns) is closest to the float output."""
    w = layer.weight.detach().float()
    rows, cols = w.shape
    size = grid.size(cols)
    if cols % size:
        return w
    groups = cols // size
    wg = w.reshape(rows, groups, size)
    xg = x.float().reshape(x.shape[0], groups, size)
    ref = torch.einsum("tgc,rgc->trg", xg, wg)
    top = wg.abs().amax(dim=2, keepdim=True)
    best_err = torch.full((rows, groups), float("inf"))
    best_max = top.clone()
    steps = int(options.max_shrink * options.clip_grid)
    for i in range(steps + 1):
        limit = top * (1 - i / options.clip_grid)
        clipped = torch.maximum(torch.minimum(wg, limit), -limit)
        q = quantize_dequantize(clipped.reshape(rows * groups, size), WeightGrid(grid.bits, grid.symmetric, None,
                                                                               grid.observer))
        out = torch.einsum("tgc,rgc->trg", xg, q.reshape(rows, groups, size))
        err = (out - ref).pow(2).mean(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better.unsqueeze(2), limit, best_max)
    return torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(rows, cols)


@register_method("awq", kind="transform", options=AWQOptions,
                 summary="AWQ: activation-aware per-channel scales folded into the previous op, and weight clipping "
                         "(Lin et al. 2024)")
def _awq(model: nn.Module, config: Any, options: AWQOptions, calls: list, details: dict[str, Any]) -> None:
    grid = weight_grid(config)
    linears = selected_linears(model, config)
    runner = SequentialRunner(model, calls, linears)
    chosen: dict[str, dict[str, Any]] = {}
    clipped: list[str] = []
    for stage in runner.stages():
        stats = {name: InputStats(options.clip_tokens) for name in stage.layers}
        stage.run({name: stats[name].add for name in stage.layers}, keep_outputs=False)
        pairs = find_pairs(stage, stage.layers)
        search = _first_tokens(stage.calls, options.search_tokens)
        reference = outputs(stage, search) if pairs else []
        check_calls = search[:2]
        check_reference = reference[:2]
        for pair in pairs:
            s, alpha, err = _search_scale(stage, pair, stats, grid, options, reference, search)
            state = snapshot(stage.root, pair)
            if fold_checked_(stage, pair, s, check_reference, check_calls):
                chosen[pair.smooth] = {"balance": pair.balance, "alpha": alpha, "block_error": err}
                reference = outputs(stage, search)
                # the balance layers' inputs are now divided by s
                for name in pair.balance:
                    stats[name].scale_(s)
            else:
                restore_(stage.root, state)
        if options.clip:
            for name in stage.layers:
                if matches_any(name, [options.clip_skip]) or stats[name].sample() is None:
                    continue
                layer = stage.root.get_submodule(name)
                with torch.no_grad():
                    layer.weight.copy_(_clip(layer, stats[name].sample(), grid, options).to(layer.weight.dtype))
                clipped.append(name)
    if not chosen:
        log.warning("awq: no (norm or Linear) → Linear pair to scale was found; only clipping was applied")
    details["awq"] = {"scales": chosen, "clipped": clipped}

