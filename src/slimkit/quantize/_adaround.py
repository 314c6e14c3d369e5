"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Each weight is rounded down or up — never further than one grid step from its float value — as a learned
per-weight choice: ``W̃ = s · (clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) - z)`` with the rectified sigmoid
``h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1)``, ``ζ = 1.1``, ``γ = -0.1`` (their Eq. 23). ``V`` is trained with Adam to
minimise the layer's output reconstruction error ``‖f(W x) - f(W̃ x̂)‖²`` plus the regulariser
``λ Σ 1 - |2h(V) - 1|^β`` (Eq. 24–25) that drives every ``h`` to 0 or 1; ``β`` anneals from 20 to 2 after a warm-up
(20% of the iterations) without the regulariser. ``x`` is the layer's input in the float model and ``x̂`` in the
quantized model so far (the asymmetric reconstruction of their §5), ``f`` the layer's fused ReLU if any.
Defaults follow the paper: 10,000 iterations of batch 32, ``λ = 0.01``, Adam with learning rate 1e-3.
The scale ``s`` is the layer's grid (its observer's per-channel scale, or the group-wise weight grid).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit.quantize._methods import LayerTarget, register_method, rtn_layer
from slimkit.quantize._sequential import SequentialRunner

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundOptions:
    """AdaRound's knobs (the paper's defaults); ``samples`` caps the calibration inputs kept per layer."""

    iterations: int = 10000
    batch_size: int = 32
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    lr: float = 1e-3
    samples: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"adaround: {name} must be a positive integer, got {value!r}")
        for name in ("reg", "beta_start", "beta_end", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
                    not math.isfinite(value):
                raise ConfigError(f"adaround: {name} must be a positive number, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or not 0 <= self.warmup < 1:
            raise ConfigError(f"adaround: warmup {self.warmup!r} must be a fraction of the iterations in [0, 1)")
        if self.beta_end > self.beta_start:
            raise ConfigError(f"adaround: beta anneals down, so beta_start ({self.beta_start}) must be ≥ beta_end "
                              f"({self.beta_end})")


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1)`` (Nagel et al. 2020, Eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V)`` equal to the fractional part ``rest`` of ``W/s`` (the float weight as the start)."""
    rest = rest.clamp(0.0, 1.0 - 1e-6)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


def _grid_of(target: LayerTarget, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group scales and zeros (rows × groups) and their per-column expansion (rows × columns)."""
    cols = w.shape[1]
    size = target.group_size or cols
    scales, zeros = [], []
    for start in range(0, cols, size):
        s, z = target.params(w[:, start:start + size])
        scales.append(s)
        zeros.append(z)
    scale, zero = torch.stack(scales, 1), torch.stack(zeros, 1)
    index = torch.arange(cols) // size
    return scale, zero, scale[:, index], zero[:, index]


def _forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, relu: bool) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            y = F.conv2d(x, weight, layer.bias, layer.stride, 0, layer.dilation, layer.groups)
        else:
            y = F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(x, weight, layer.bias)
    return F.relu(y) if relu else y


def adaround_target(target: LayerTarget, x_quant: torch.Tensor, x_float: torch.Tensor,
                    options: AdaRoundOptions) -> dict[str, float]:
    """Learn the rounding of one layer from its quantized-model inputs ``x_quant`` and float-model inputs
    ``x_float`` (same samples, first dimension); commits the codes and returns the reconstruction errors of
    round-to-nearest and of the learned rounding on the stored samples."""
    layer = target.layer
    relu = bool(target.wrapper is not None and target.wrapper.relu)
    w = target.matrix()
    shape = layer.weight.shape
    scale, zero, S, Z = _grid_of(target, w)
    floor = torch.floor(w / S)
    v = nn.Parameter(initial_v(w / S - floor))
    optimizer = torch.optim.Adam([v], lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    n = x_quant.shape[0]
    with torch.no_grad():
        target_out = _forward(layer, x_float, layer.weight, relu)
    warm = int(options.warmup * options.iterations)

    def soft_weight(h: torch.Tensor) -> torch.Tensor:
        return ((torch.clamp(floor + h + Z, target.qmin, target.qmax) - Z) * S).reshape(shape)

    def recon(weight: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
        out = _forward(layer, x_quant[idx], weight, relu)
        diff = (out - target_out[idx]).pow(2)
        channel_dim = 1 if diff.dim() == 4 else diff.dim() - 1
        return diff.sum(dim=channel_dim).mean()

    with torch.enable_grad():
        for it in range(options.iterations):
            idx = torch.randint(n, (min(options.batch_size, n),), generator=generator)
            h = rectified_sigmoid(v)
            loss = recon(soft_weight(h), idx)
            if it >= warm:
                progress = (it - warm) / max(1, options.iterations - warm)
                beta = options.beta_end + (options.beta_start - options.beta_end) * (1 - progress)
                loss = loss + options.reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).to(w.dtype) + Z, target.qmin, target.qmax)
        nearest = torch.clamp(torch.round(w / S) + Z, target.qmin, target.qmax)
        errors = {"rtn": float(recon(((nearest - Z) * S).reshape(shape), slice(None))),
                  "adaround": float(recon(((codes - Z) * S).reshape(shape), slice(None)))}
    target.commit(codes, scale, zero)
    return errors


def _keep(store: list[torch.Tensor], count: list[int], cap: int):
    def add(x: torch.Tensor) -> None:
        room = cap - count[0]
        if room > 0:
            part = x.detach()[:room].clone()
            store.append(part)
            count[0] += part.shape[0]
    return add


@register_method("adaround", kind="rounding", options=AdaRoundOptions,
                 summary="AdaRound: learned up/down rounding per layer by output reconstruction (Nagel et al. 2020)")
def _adaround(model: nn.Module, targets: list[LayerTarget], config: Any, options: AdaRoundOptions, calls: list,
              report: Any) -> None:
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if hasattr(module, "weight_quant") and hasattr(module, "enabled"):
            module.enabled = False  # a QuantWrapper computing in float: the targets of the reconstruction
    by_name = {t.name: t for t in targets}
    runner = SequentialRunner(model, calls, list(by_name), reference=reference)
    errors: dict[str, dict[str, float]] = {}
    for stage in runner.stages():
        for name in stage.layers:
            target = by_name[name]
            quant_in: list[torch.Tensor] = []
            float_in: list[torch.Tensor] = []
            stage.run({name: _keep(quant_in, [0], options.samples)}, stop_after=name, keep_outputs=False)
            stage.run({name: _keep(float_in, [0], options.samples)}, reference=True, stop_after=name,
                      keep_outputs=False)
            x_quant = target.input_of(torch.cat(quant_in))
            errors[name] = adaround_target(target, x_quant, torch.cat(float_in), options)
    for name in runner.skipped():
        by_name[name].commit(*rtn_layer(by_name[name]))
    report.details["adaround"] = {"reconstruction_error": errors, "rounded_to_nearest": runner.skipped()}
