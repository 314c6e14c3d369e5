"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models").

Activation outliers sit in a few input channels; dividing those channels by ``s_j = max|X_j|^α / max|W_j|^(1-α)``
(their Eq. 4) and multiplying the weights' matching input columns by ``s_j`` — folded exactly into the preceding
norm (or Linear) — migrates the difficulty from activations to weights so both quantize to 8 bits (W8A8).
``alpha`` is the migration strength (0.5 in the paper for most models); ``alpha="auto"`` picks it per pair from
``0, 0.05, ..., 1`` by the output error of the pair's Linear layers with 8-bit (per-tensor) activations and
(per-channel) weights on sampled calibration tokens — the per-layer search of Intel Neural Compressor's
SmoothQuant. The paper smooths the inputs of the layers that follow a norm (``linear_pairs=false``, the default);
``linear_pairs=true`` also smooths Linear → Linear pairs (``v_proj → o_proj``, ``up_proj → down_proj``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.quantize._methods import register_method, selected_linears
from slimkit.quantize._observers import QuantSpec, fake_quantize, qparams_from_range
from slimkit.quantize._ptq import weight_spec
from slimkit.quantize._scaling import LINEAR_PAIRS, InputStats, find_pairs, fold_checked_, outputs
from slimkit.quantize._sequential import SequentialRunner

log = logging.getLogger(__name__)

_AUTO_GRID = tuple(i / 20 for i in range(21))


@dataclass(frozen=True)
class SmoothQuantOptions:
    """``alpha``: migration strength in [0, 1], or ``"auto"`` to search it per pair; ``tokens``: calibration
    tokens sampled per layer for the search."""

    alpha: float | str = 0.5
    linear_pairs: bool = False
    tokens: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.alpha, str):
            if self.alpha != "auto":
                raise ConfigError(f"smoothquant: alpha '{self.alpha}' must be a number in [0, 1] or 'auto'")
        elif isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ConfigError(f"smoothquant: alpha {self.alpha!r} must be in [0, 1] (0.5 in the paper) or 'auto'")
        if not isinstance(self.linear_pairs, bool):
            raise ConfigError(f"smoothquant: linear_pairs must be true or false, got {self.linear_pairs!r}")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise ConfigError(f"smoothquant: tokens must be a positive integer, got {self.tokens!r}")


def smoothing_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)`` (Xiao et al. 2023, Eq. 4); channels never active keep ``s = 1``."""
    s = act_max.clamp(min=1e-5).pow(alpha) / weight_max.clamp(min=1e-5).pow(1 - alpha)
    return torch.where((act_max > 0) & (weight_max > 0), s, torch.ones_like(s))


def _w8a8_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, config: Any) -> float:
    """Output error of ``x Wᵀ`` when ``x / s`` is quantized per tensor (the config's activation grid) and
    ``W · s`` per output channel (symmetric, the config's weight bits)."""
    xs = x / s
    aspec = QuantSpec(config.activation_bits, symmetric=False)
    a_scale, a_zero = qparams_from_range(xs.min(), xs.max(), aspec)
    xq = fake_quantize(xs, a_scale, a_zero, aspec)
    wspec = weight_spec(config)
    err = 0.0
    for w in weights:
        ws = w * s
        if config.per_channel:
            w_scale, w_zero = qparams_from_range(ws.min(dim=1).values, ws.max(dim=1).values, wspec)
        else:
            w_scale, w_zero = qparams_from_range(ws.min(), ws.max(), wspec)
        wq = fake_quantize(ws, w_scale, w_zero, wspec)
        err += float((xq @ wq.T - x @ w.T).pow(2).mean())
    return err


@register_method("smoothquant", kind="transform", options=SmoothQuantOptions,
                 summary="SmoothQuant: migrate activation outliers into the weights for W8A8 (Xiao et al. 2023)")
def _smoothquant(model: nn.Module, config: Any, options: SmoothQuantOptions, calls: list,
                 details: dict[str, Any]) -> None:
    linears = selected_linears(model, config)
    runner = SequentialRunner(model, calls, linears)
    chosen: dict[str, dict[str, Any]] = {}
    for stage in runner.stages():
        stats = {name: InputStats(options.tokens) for name in stage.layers}
        stage.run({name: stats[name].add for name in stage.layers}, keep_outputs=False)
        pairs = find_pairs(stage, stage.layers, linear_pairs=LINEAR_PAIRS if options.linear_pairs else ())
        if not pairs:
            continue
        check_calls = stage.calls[:2]
        reference = outputs(stage, check_calls)
        for pair in pairs:
            weights = [stage.root.get_submodule(n).weight.detach().float() for n in pair.balance]
            act_max = stats[pair.balance[0]].absmax
            weight_max = torch.cat([w.abs() for w in weights]).amax(dim=0)
            if options.alpha == "auto":
                x = stats[pair.balance[0]].sample()
                errors = {a: _w8a8_error(x, weights, smoothing_scales(act_max, weight_max, a), config)
                          for a in _AUTO_GRID}
                alpha = min(errors, key=errors.get)
            else:
                alpha = float(options.alpha)
            s = smoothing_scales(act_max, weight_max, alpha)
            if fold_checked_(stage, pair, s, reference, check_calls):
                chosen[pair.smooth] = {"balance": pair.balance, "alpha": alpha}
    if not chosen:
        log.warning("smoothquant: no (norm or Linear) → Linear pair to smooth was found; the model is unchanged")
    details["smoothquant"] = {"pairs": chosen}
