"""The registry of quantization methods a config, a recipe or the CLI names (``method: gptq``), and the layer
targets they round.

A method is either a *transform* of the float model (SmoothQuant, AWQ: exact or near-exact rescaling that makes the
weights or activations easier to quantize) or a *rounding* (RTN, GPTQ, AdaRound: how each weight becomes a code).
``QuantConfig.method`` is a spec: transforms joined by ``+``, then at most one rounding (RTN when none is named),
each with its options — ``"gptq"``, ``"gptq:damp=0.02,act_order=false"``, ``"awq+gptq"``,
``"smoothquant:alpha=auto"``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit._spec import parse_spec
from slimkit.quantize._grid import WeightGrid, dequantize, row_params
from slimkit.quantize._quantized import quantized_layer

#: how a method runs: transform(model, config, options, calls, report) or rounding(model, targets, config,
#: options, calls, report)
MethodFn = Callable[..., None]


@dataclass(frozen=True)
class Method:
    """A registered method: its kind (``transform`` or ``rounding``), its options dataclass, whether it needs
    calibration data, and the function that runs it."""

    name: str
    kind: str
    options: type
    needs_data: bool
    run: MethodFn
    summary: str = ""


METHODS: Registry[Method] = Registry("quantization method")


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


def register_method(name: str, *, kind: str, options: type = NoOptions, needs_data: bool = True,
                    summary: str = "") -> Callable[[MethodFn], MethodFn]:
    """Decorator registering ``fn`` as quantization method ``name``."""
    if kind not in ("transform", "rounding"):
        raise ValueError(f"method kind must be 'transform' or 'rounding', not {kind!r}")

    def decorator(fn: MethodFn) -> MethodFn:
        METHODS.register(name)(Method(name, kind, options, needs_data, fn, summary))
        return fn

    return decorator


@dataclass(frozen=True)
class Step:
    """One parsed item of a method spec: the method and its validated options."""

    method: Method
    options: Any

    @property
    def name(self) -> str:
        return self.method.name


_SPLIT = re.compile(r"\+(?=[A-Za-z_])")
_ALIASES = {"ptq": "rtn"}


def _options(method: Method, given: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(method.options) if f.init}
    unknown = sorted(set(given) - known)
    if unknown:
        choices = ", ".join(sorted(known)) or "(none)"
        raise ConfigError(f"method '{method.name}' has no option {', '.join(unknown)}: its options are {choices}")
    try:
        return method.options(**given)
    except TypeError as error:
        raise ConfigError(f"method '{method.name}': {error}") from None


@functools.lru_cache(maxsize=256)
def _parse(spec: str) -> tuple[Step, ...]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"quantization method {spec!r} is empty: name one of {', '.join(METHODS.names())}")
    steps = []
    for part in _SPLIT.split(spec.strip()):
        name, given = parse_spec(part.strip())
        method = METHODS.get(_ALIASES.get(name, name))
        steps.append(Step(method, _options(method, given)))
    roundings = [i for i, s in enumerate(steps) if s.method.kind == "rounding"]
    if len(roundings) > 1:
        raise ConfigError(f"method '{spec}' names {len(roundings)} roundings "
                          f"({', '.join(steps[i].name for i in roundings)}): keep one, last")
    if roundings and roundings[0] != len(steps) - 1:
        raise ConfigError(f"method '{spec}': the rounding ({steps[roundings[0]].name}) must come last, after the "
                          "transforms (e.g. 'smoothquant+gptq')")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"method '{spec}' names a method twice: name each once")
    if not roundings:
        steps.append(Step(METHODS.get("rtn"), _options(METHODS.get("rtn"), {})))
    return tuple(steps)


def parse_method(spec: str) -> tuple[Step, ...]:
    """The steps of a method spec, transforms first and the rounding last (RTN if none is named); a ConfigError
    names the unknown method or option."""
    return _parse(spec)


class LayerTarget:
    """One layer to round: its float weight as a rows × columns matrix, its grid, and where the result goes.

    Weight-only quantization (``wrapper is None``) replaces the layer with a :class:`QuantizedLinear` /
    :class:`QuantizedConv2d` holding the codes; a layer inside a :class:`QuantWrapper` (weights and activations
    quantized) gets the rounded weights written back on the wrapper's own per-channel grid, and its quantized input
    is what calibration sees.
    """

    def __init__(self, model: nn.Module, name: str, module: nn.Module, grid: WeightGrid | None = None) -> None:
        self.model, self.name, self.module = model, name, module
        self.wrapper = None if isinstance(module, (nn.Linear, nn.Conv2d)) else module
        self.layer: nn.Module = module if self.wrapper is None else module.layer
        if self.wrapper is None:
            if grid is None:
                raise ValueError("a weight-only target needs a grid")
            self.grid = grid
            self.qmin, self.qmax = 0, grid.qmax
            self.group_size = grid.size(self.columns)
        else:
            quant = self.wrapper.weight_quant
            self.grid = None
            self.qmin, self.qmax = quant.spec.qmin, quant.spec.qmax
            self.group_size = None
            rows = self.layer.weight.shape[0]
            self._scale = quant.scale.detach().reshape(-1).expand(rows).clone() if quant.scale.numel() == 1 \
                else quant.scale.detach().reshape(-1).clone()
            self._zero = quant.zero_point.detach().reshape(-1).expand(rows).clone() \
                if quant.zero_point.numel() == 1 else quant.zero_point.detach().reshape(-1).clone()

    @property
    def columns(self) -> int:
        return self.layer.weight[0].numel()

    @property
    def conv_groups(self) -> int:
        return self.layer.groups if isinstance(self.layer, nn.Conv2d) else 1

    def matrix(self) -> torch.Tensor:
        """The float weight as rows × columns (a conv's im2col layout)."""
        return self.layer.weight.detach().reshape(self.layer.weight.shape[0], -1).float()

    def params(self, w: torch.Tensor, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point per row for the columns ``w`` (the wrapper's fixed grid ignores ``w``)."""
        if self.wrapper is None:
            return row_params(w, self.grid)
        rows = rows or slice(None)
        return self._scale[rows].to(w.dtype), self._zero[rows].to(w.dtype)

    def input_of(self, x: torch.Tensor) -> torch.Tensor:
        """The input the layer's weights really multiply (quantized by the wrapper's input quantizer if any)."""
        if self.wrapper is not None and self.wrapper.input_quant is not None and self.wrapper.input_quant.quantizing:
            return self.wrapper.input_quant(x)
        return x

    def commit(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_index: torch.Tensor | None = None) -> nn.Module:
        """Store the rounded weight; returns the module now at ``name``."""
        from slimkit.quantize._fold import set_submodule

        if self.wrapper is None:
            new = quantized_layer(self.layer, self.grid, codes, scales, zeros, group_index)
            set_submodule(self.model, self.name, new)
            self.module = new
            return new
        index = group_index if group_index is not None else torch.zeros(codes.shape[1], dtype=torch.long)
        weight = dequantize(codes.float(), scales.float(), zeros.float(), index.to(codes.device))
        with torch.no_grad():
            self.layer.weight.copy_(weight.reshape(self.layer.weight.shape).to(self.layer.weight.dtype))
        return self.module


def rtn_layer(target: LayerTarget) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes, scales and zeros of a target's weight on its grid."""
    w = target.matrix()
    size = target.group_size or w.shape[1]
    scales, zeros = [], []
    for start in range(0, w.shape[1], size):
        s, z = target.params(w[:, start:start + size])
        scales.append(s)
        zeros.append(z)
    scale, zero = torch.stack(scales, 1), torch.stack(zeros, 1)
    index = torch.arange(w.shape[1]) // size
    codes = torch.clamp(torch.round(w / scale[:, index]) + zero[:, index], target.qmin, target.qmax)
    return codes, scale, zero


@register_method("rtn", kind="rounding", needs_data=False,
                 summary="round to nearest on the configured grid (the PTQ default)")
def _rtn(model: nn.Module, targets: list[LayerTarget], config: Any, options: NoOptions, calls: Any,
         report: Any) -> None:
    for target in targets:
        if target.wrapper is None:  # a QuantWrapper already rounds its weights to nearest in every forward
            target.commit(*rtn_layer(target))


def check_method_config(config: Any) -> None:
    """The method-related checks of ``QuantConfig`` (run when a config is made): a known method spec with valid
    options, and a group size / zero point only where the deployed format has them."""
    if not isinstance(config.method, str):
        raise ConfigError(f"method {config.method!r} must be a string such as 'gptq' or 'smoothquant+gptq'")
    steps = parse_method(config.method)
    size = config.group_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"group_size {size!r} must be a positive integer (e.g. 32, 64, 128) or None for one scale "
                          "per output channel")
    if not isinstance(config.weight_symmetric, bool):
        raise ConfigError(f"weight_symmetric must be true or false, got {config.weight_symmetric!r}")
    if config.activation_bits is not None:
        if size is not None:
            raise ConfigError(f"group_size={size} needs weight-only quantization: set activation_bits=None "
                              "(int8 activation kernels take one weight scale per output channel), or drop group_size")
        if not config.weight_symmetric:
            raise ConfigError("weight_symmetric=False needs weight-only quantization: set activation_bits=None "
                              "(int8 kernels take symmetric per-channel weights)")
    elif any(s.name == "smoothquant" for s in steps):
        raise ConfigError("smoothquant moves activation outliers into the weights, which only helps when activations "
                          "are quantized: set activation_bits=8 (W8A8), or use 'awq' for weight-only quantization")


def selected_layers(model: nn.Module, config: Any, kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
                    ) -> list[str]:
    """Names of the layers of ``kinds`` that ``config.layers`` / ``config.skip`` select, in module order."""
    from slimkit._select import matches_any
    from slimkit.quantize._ptq import _param_leaves

    return [name for name, module in _param_leaves(model) if isinstance(module, kinds)
            and (not config.layers or matches_any(name, config.layers)) and not matches_any(name, config.skip)]


def selected_linears(model: nn.Module, config: Any) -> list[str]:
    """The selected ``nn.Linear`` layers (the ones SmoothQuant and AWQ rescale)."""
    return selected_layers(model, config, (nn.Linear,))
