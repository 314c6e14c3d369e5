"""``quantize(model, example_inputs, config, *, data=None)``: the one entry point of every quantization method.

The config's ``method`` spec is run in order: transforms of the float model first (SmoothQuant, AWQ), then the
rounding (RTN, GPTQ, AdaRound). With ``activation_bits`` set, layers become :class:`QuantWrapper` s (int8 QDQ
deployment, activation ranges calibrated before the rounding); with ``activation_bits=None`` they become
:class:`QuantizedLinear` / :class:`QuantizedConv2d` holding integer codes with group-wise scales (``MatMulNBits``
deployment).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._hf_layers import is_hf_conv1d
from slimkit.quantize._fold import set_submodule
from slimkit.quantize._grid import WEIGHT_OBSERVERS, WeightGrid
from slimkit.quantize._methods import LayerTarget, parse_method
from slimkit.quantize._ptq import (
    QuantConfig,
    QuantReport,
    _param_leaves,
    bias_correct_,
    calibrate_,
    check_folding,
    check_loader,
    check_selection,
    config_dict,
    fold_and_equalize_,
    freeze_,
    prepare,
    selected_for,
    wrappers,
)
from slimkit.quantize._sequential import calibration_calls, first_tensor

log = logging.getLogger(__name__)


def quantize(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None,
    config: QuantConfig | None = None,
    *,
    data: Iterable | None = None,
) -> nn.Module:
    """Quantize a copy of ``model`` as ``config`` says (the caller's model is untouched) and return it — same class,
    same methods (a Hugging Face model keeps ``generate`` and ``save_pretrained``).

    ``data`` yields calibration batches (tensors, ``(inputs, targets)`` pairs, or mappings of keyword inputs such
    as ``input_ids``); every method except weight-only round-to-nearest needs it. What happened to each layer is in
    ``quant_report(result)``, method details (GPTQ's proxy losses, AWQ's scales, SmoothQuant's α) in its
    ``details``. Methods: Frantar et al. 2023 (GPTQ), Lin et al. 2024 (AWQ), Xiao et al. 2023 (SmoothQuant),
    Nagel et al. 2020 (AdaRound).
    """
    config = config or QuantConfig()
    steps = parse_method(config.method)
    transforms, rounding = steps[:-1], steps[-1]
    weight_only = config.activation_bits is None
    if weight_only:
        _check_weight_only(config)
    needs_data = (any(step.method.needs_data for step in steps) or not weight_only or config.bias_correction
                  or bool(config.keep_sensitive))
    calls = None
    if needs_data:
        check_loader(data, f"calibration data for method '{config.method}'")
        calls = calibration_calls(data)
    work = copy.deepcopy(model).eval()
    linearized = linearize_(work)
    check_selection(work, config)
    details: dict[str, Any] = {}
    if linearized:
        details["linearized"] = linearized
    for step in transforms:
        step.method.run(work, config, step.options, calls, details)
    if weight_only:
        qmodel, report = work, QuantReport(config=config_dict(config))
        _fold_for_weight_only(qmodel, config, report)
        grid = WeightGrid(config.weight_bits, config.weight_symmetric, config.group_size, config.weight_observer)
        targets = []
        for name, module in list(_param_leaves(qmodel)):
            if not selected_for(name, module, config, report):
                continue
            targets.append(LayerTarget(qmodel, name, module, grid))
            report.quantized.append(name)
    else:
        graph_inputs = None if isinstance(example_inputs, Mapping) else example_inputs
        qmodel, report = prepare(work, config, example_inputs=graph_inputs)
        if example_inputs is not None:
            check_folding(work, qmodel, example_inputs)
        report.calibration_batches = calibrate_(qmodel, data)
        freeze_(qmodel)
        targets = [LayerTarget(qmodel, name, w) for name, w in wrappers(qmodel).items() if w.enabled]
    report.details.update(details)
    report.details["method"] = config.method
    if calls is not None:
        report.calibration_batches = len(calls)
    float_model = copy.deepcopy(qmodel) if weight_only and (config.bias_correction or config.keep_sensitive) \
        else None
    rounding.method.run(qmodel, targets, config, rounding.options, calls, report)
    if float_model is not None:
        if config.bias_correction:
            report.bias_corrected = bias_correct_weight_only_(qmodel, float_model, calls)
        if config.keep_sensitive:
            keep_sensitive_weight_only_(qmodel, float_model, calls, config.keep_sensitive, report)
    if not weight_only:
        from slimkit.quantize._sensitivity import keep_sensitive_

        qmodel.slimkit_quant_report = report
        if config.bias_correction:
            report.bias_corrected = bias_correct_(qmodel, data)
        if config.keep_sensitive:
            keep_sensitive_(qmodel, data, config.keep_sensitive)
    qmodel.slimkit_quant_report = report
    return qmodel


def _check_weight_only(config: QuantConfig) -> None:
    if config.weight_observer not in WEIGHT_OBSERVERS:
        raise ConfigError(f"weight-only quantization chooses group-wise grids with the 'minmax' or 'mse' weight "
                          f"observer, not '{config.weight_observer}': set weight_observer to one of them")
    if not config.per_channel and config.group_size is None:
        raise ConfigError("weight-only quantization has no per-tensor grid: keep per_channel=True, or set a group_size")
    if config.lsq:
        raise ConfigError("lsq learns the scales of quantization-aware training (quantize_qat); weight-only "
                          "post-training quantization has no use for it: drop lsq")


def _fold_for_weight_only(model: nn.Module, config: QuantConfig, report: QuantReport) -> None:
    """Fold BatchNorm into the preceding convs (and equalize) as PTQ does; models without BatchNorm (transformers,
    which torch.fx often cannot trace) are left as they are."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_bn and not config.equalize:
        return
    fold_and_equalize_(model, config, report)


def linearize_(model: nn.Module) -> list[str]:
    """Replace Hugging Face ``Conv1D`` layers (GPT-2's ``y = x W + b`` with ``W`` stored in × out) by the equal
    ``nn.Linear`` in place; returns their names. Exact: the weight is transposed."""
    names = []
    for name, module in list(model.named_modules()):
        if not is_hf_conv1d(module):
            continue
        in_features, out_features = module.weight.shape
        linear = nn.Linear(in_features, out_features, bias=module.bias is not None)
        linear = linear.to(device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.T)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        set_submodule(model, name, linear)
        names.append(name)
    return names


def _quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    from slimkit.quantize._quantized import QuantizedConv2d, QuantizedLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))}


def bias_correct_weight_only_(model: nn.Module, float_model: nn.Module, calls: list) -> list[str]:
    """Empirical bias correction (Nagel et al. 2019, §4.2) of weight-only layers: add ``E[(W - Ŵ) x]`` per output
    channel to each quantized layer's bias (creating one if needed), ``x`` the layer's input in the quantized model,
    measured in one pass over the calibration calls before any bias changes."""
    import torch.nn.functional as F

    from slimkit.quantize._quantized import QuantizedConv2d
    from slimkit.quantize._sequential import call, no_kv_cache

    layers = _quantized_layers(model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, layer: nn.Module, delta: torch.Tensor):
        def fn(_module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            if isinstance(layer, QuantizedConv2d):
                shift = F.conv2d(x, delta.to(x.dtype), None, layer.stride, layer.padding, layer.dilation,
                                 layer.groups)
                reduce, rows = [0, 2, 3], shift.numel() // shift.shape[1]
            else:
                shift = F.linear(x, delta.to(x.dtype))
                reduce, rows = list(range(shift.dim() - 1)), shift.numel() // shift.shape[-1]
            sums[name] = sums.get(name, 0) + shift.double().sum(dim=reduce)
            counts[name] = counts.get(name, 0) + rows
        return fn

    handles = []
    for name, layer in layers.items():
        delta = float_model.get_submodule(name).weight.detach() - layer.weight.detach()
        handles.append(layer.register_forward_pre_hook(hook(name, layer, delta)))
    try:
        with torch.no_grad(), no_kv_cache(model):
            for inputs in calls:
                call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    for name, total in sums.items():
        layer = layers[name]
        correction = (total / counts[name]).float()
        with torch.no_grad():
            if layer.bias is None:
                layer.bias = nn.Parameter(correction)
            else:
                layer.bias += correction
    return sorted(sums)


def keep_sensitive_weight_only_(model: nn.Module, float_model: nn.Module, calls: list, count: int,
                                report: QuantReport, max_batches: int = 4) -> list[str]:
    """Mixed precision for weight-only models: each quantized layer's sensitivity is the relative output error
    ``‖f_l(x) - f(x)‖² / ‖f(x)‖²`` of the float model with only that layer quantized (over up to ``max_batches``
    calibration batches); the ``count`` most sensitive layers go back to their float weights."""
    from slimkit.quantize._sequential import call, no_kv_cache

    layers = _quantized_layers(model)
    batches = calls[:max_batches]
    with torch.no_grad(), no_kv_cache(float_model):
        reference = [first_tensor(call(float_model, c)) for c in batches]
        norm = sum(float(r.double().pow(2).sum()) for r in reference) or 1.0
        scores = {}
        for name, layer in layers.items():
            original = float_model.get_submodule(name)
            set_submodule(float_model, name, layer)
            try:
                err = sum(float((first_tensor(call(float_model, c)) - r).double().pow(2).sum())
                          for c, r in zip(batches, reference))
            finally:
                set_submodule(float_model, name, original)
            scores[name] = err / norm
    chosen = sorted(scores, key=scores.get, reverse=True)[:count]
    for name in chosen:
        set_submodule(model, name, copy.deepcopy(float_model.get_submodule(name)))
        if name in report.quantized:
            report.quantized.remove(name)
        report.float_layers[name] = f"kept in float: sensitivity {scores[name]:.3g}"
    report.sensitivity = scores
    return chosen
