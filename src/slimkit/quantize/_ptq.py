"""Post-training quantization: fold BN, insert observers, calibrate, freeze (Krishnamoorthi 2018; Nagel et al. 2021).

The result is an ordinary ``nn.Module`` whose Conv2d/Linear layers are :class:`QuantWrapper` s. What happened to every
layer is recorded in a :class:`QuantReport` stored on the returned model as ``model.slimkit_quant_report`` (and
returned by :func:`quant_report`): quantized layers, layers left in float with the reason, folded BatchNorms.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit import _cpu
from slimkit._cpu import kernel_weight_bits
from slimkit._errors import ConfigError, DataError
from slimkit._inputs import input_tuple
from slimkit._select import check_names
from slimkit._select import matches_any as matches
from slimkit.quantize._fake_quant import FakeQuantize, QuantWrapper
from slimkit.quantize._fold import analyse, fold_bn_, set_submodule
from slimkit.quantize._observers import OBSERVERS, QuantSpec, check_bits
from slimkit.quantize._sequential import first_tensor

log = logging.getLogger(__name__)

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
#: Where activation quantizers go: over the traced graph (int8 end to end) or around each Conv/Linear only.
PLACEMENTS = ("graph", "layers")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. Defaults: int8 per-channel symmetric weights, uint8 per-tensor asymmetric
    activations calibrated by min/max — the format ONNX Runtime's int8 kernels run fastest (U8S8).

    ``activation_bits=None`` quantizes weights only. ``method`` names how weights are rounded and what transforms
    run first (a spec of registered methods, see :data:`slimkit.quantize.METHODS`): ``"rtn"`` (round to nearest, the
    default; ``"ptq"`` is the same), ``"gptq"``, ``"adaround"``, ``"awq"``, ``"smoothquant"``, combinations like
    ``"smoothquant+gptq"`` and options like ``"gptq:damp=0.02"``. ``group_size`` gives every ``group_size`` input
    columns of each output channel their own scale (weight-only; the ``MatMulNBits`` layout), ``weight_symmetric=False``
    adds a zero point per group (weight-only). ``placement="graph"`` (default) places activation quantizers
    over the traced graph so that residual additions, concatenations, pooling and reshapes run in int8 too (see
    ``slimkit.quantize._placement``); ``"layers"`` quantizes only each Conv/Linear's input and output (and is what
    an untraceable model gets). ``skip``/``layers`` take module names, globs or ``re:`` regexes;
    ``keep_sensitive=k`` keeps the k layers whose quantization hurts the output most in float (a per-layer sweep).
    ``bias_correction`` applies empirical bias correction (Nagel et al. 2019 §4.2), ``equalize`` cross-layer
    equalization (same paper, §4.1) before quantizing; ``lsq`` makes the scales
    learnable (Esser et al. 2020), used by QAT. ``observer_options`` go to the activation observer
    (e.g. ``{"percentile": 99.9}``).

    ``reduce_range`` narrows 8-bit weights to 7 bits (±63) when activations are 8-bit too, so that the int16 sum
    of two uint8 × int8 products cannot saturate: x86 CPUs without VNNI compute QLinearConv/QGemm with
    VPMADDUBSW, whose saturated sums made full-range int8 files disagree with their own fake-quant model (ONNX
    Runtime's quantizer calls the same fix ``reduce_range``). ``None`` (default) decides for the CPU running
    slimkit (:func:`slimkit._cpu.cpu_info`); set it to ``True`` when building on a VNNI machine for such a target,
    ``False`` to keep full-range weights for a VNNI or ARM target. The report's ``details["weight_range"]`` says
    what was chosen and why.
    """

    weight_bits: int = 8
    activation_bits: int | None = 8
    observer: str = "minmax"
    weight_observer: str = "minmax"
    per_channel: bool = True
    skip: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    keep_sensitive: int = 0
    bias_correction: bool = False
    equalize: bool = False
    lsq: bool = False
    observer_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    method: str = "rtn"
    group_size: int | None = None
    weight_symmetric: bool = True
    placement: str = "graph"
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight bit width")
        if self.activation_bits is not None:
            check_bits(self.activation_bits, "activation bit width")
        from slimkit.quantize._methods import check_method_config

        check_method_config(self)
        OBSERVERS.get(self.observer)
        OBSERVERS.get(self.weight_observer)
        for name in ("skip", "layers"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement {self.placement!r} is unknown: use one of {', '.join(PLACEMENTS)}")
        if self.reduce_range is not None and not isinstance(self.reduce_range, bool):
            raise ConfigError(f"reduce_range {self.reduce_range!r} must be true, false or null (decide for this CPU)")
        if self.reduce_range and self.activation_bits is None:
            raise ConfigError("reduce_range narrows weights for the int8 kernels of quantized activations; with "
                              "activation_bits=None (weight-only) there are none: drop reduce_range")
        if not isinstance(self.keep_sensitive, int) or self.keep_sensitive < 0:
            raise ConfigError(f"keep_sensitive {self.keep_sensitive!r} must be an integer ≥ 0 (layers kept in float)")


@dataclass
class QuantReport:
    """What quantization did to each layer.

    ``placement`` is where activation quantizers went (``"graph"`` or ``"layers"``); with graph placement,
    ``int8_ops`` names the traced ops that run as integer kernels (layers, additions, concatenations, pooling),
    ``float_ops`` the ops left in float next to quantized tensors (op → why: no integer kernel, or never ran), and
    ``shared_scales`` the tensors that share one quantizer by construction (concatenation inputs and output, the
    inputs of a layer called more than once).
    """

    quantized: list[str] = field(default_factory=list)
    float_layers: dict[str, str] = field(default_factory=dict)
    folded_bn: list[tuple[str, str]] = field(default_factory=list)
    fused_relu: list[str] = field(default_factory=list)
    bias_corrected: list[str] = field(default_factory=list)
    equalized: list[tuple[str, str]] = field(default_factory=list)
    shared_input_quant: list[tuple[str, str]] = field(default_factory=list)
    placement: str = "layers"
    int8_ops: list[str] = field(default_factory=list)
    float_ops: dict[str, str] = field(default_factory=dict)
    shared_scales: dict[str, list[str]] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    calibration_batches: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quant_report(model: nn.Module) -> QuantReport:
    """The :class:`QuantReport` of a model made by this package."""
    report = getattr(model, "slimkit_quant_report", None)
    if report is None:
        raise ConfigError(f"{type(model).__name__} was not quantized by slimkit.quantize: it has no quant report")
    return report


def wrappers(model: nn.Module) -> dict[str, QuantWrapper]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantWrapper)}


def _param_leaves(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if name and next(module.children(), None) is None and any(True for _ in module.parameters(recurse=False)):
            yield name, module


def check_selection(model: nn.Module, config: QuantConfig) -> None:
    """``config.layers`` and ``config.skip`` name layers with weights of ``model`` (a ``skip`` typo would quietly
    quantize the layer meant to stay float), ``layers`` only ones that can be quantized, and ``keep_sensitive``
    leaves at least one of them to quantize."""
    names = [name for name, _ in _param_leaves(model)]
    check_names(names, config.skip, kind="weighted")
    for pattern in config.layers:
        hits = [n for n in names if matches(n, [pattern])]
        if not hits:
            raise ConfigError(f"layers pattern '{pattern}' matches no layer with weights: choose among "
                              f"{', '.join(names[:20])}")
        bad = [n for n in hits if not isinstance(model.get_submodule(n), SUPPORTED_LAYERS)]
        if bad:
            kinds = ", ".join(f"{n} ({type(model.get_submodule(n)).__name__})" for n in bad)
            raise ConfigError(f"cannot quantize {kinds}: only Conv2d and Linear are supported; remove them from "
                              "`layers` (they stay in float)")
    if config.keep_sensitive:
        chosen = [n for n, module in model.named_modules() if n and float_reason(n, module, config) is None]
        if config.keep_sensitive >= len(chosen):
            raise ConfigError(f"keep_sensitive={config.keep_sensitive} keeps every one of the {len(chosen)} layers it "
                              f"would quantize in float, so nothing is quantized: use at most {len(chosen) - 1}")


def weight_range(config: QuantConfig) -> dict[str, Any]:
    """The weight grid the config gives the integer kernels on this machine, and why: ``{"bits", "reduce_range",
    "reason"}`` with ``reduce_range`` resolved (``None`` decided for this CPU) — recorded in the report's
    ``details["weight_range"]``, and what a run folder's replay reuses."""
    reduce = _cpu.resolve_reduce_range(config.reduce_range)
    if config.reduce_range is not None:
        reason = "set by the config"
    else:
        cpu = _cpu.cpu_info()  # through the module: one place a test (or a cross-build) replaces
        reason = (f"this CPU ({cpu.name}: {cpu.kind}) " + ("adds uint8 × int8 products in saturating int16"
                                                           if reduce else "accumulates int8 products in int32"))
    return {"bits": kernel_weight_bits(config.weight_bits, config.activation_bits, reduce), "reduce_range": reduce,
            "reason": reason}


def weight_spec(config: QuantConfig, chosen: dict[str, Any] | None = None) -> QuantSpec:
    """The symmetric weight grid of Conv2d/Linear layers under ``config`` (narrowed by :func:`weight_range`, or by
    ``chosen``, its result computed earlier)."""
    bits = (chosen or weight_range(config))["bits"]
    return QuantSpec(bits, symmetric=True, ch_axis=0 if config.per_channel else None)


def config_dict(config: QuantConfig) -> dict[str, Any]:
    """The config as the report records it (mappings as plain dicts)."""
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(config).items()}


def fold_and_equalize_(model: nn.Module, config: QuantConfig, report: QuantReport):
    """Fold BatchNorm into the preceding layers and, if asked, equalize across layers (DFQ), in place; records both
    (and why folding was impossible) in ``report``; returns the traced graph facts."""
    facts = analyse(model)
    if not facts.traced:
        report.float_layers["<graph>"] = f"torch.fx could not trace the model ({facts.error}): BN not folded"
    report.folded_bn = fold_bn_(model, facts)
    if config.equalize:
        from slimkit.quantize._equalize import equalize_

        report.equalized = equalize_(model)
    return facts


def float_reason(name: str, module: nn.Module, config: QuantConfig) -> str | None:
    """Why the config keeps this layer in float (``None``: it is quantized)."""
    if not isinstance(module, SUPPORTED_LAYERS):
        return f"unsupported layer type {type(module).__name__}"
    if config.layers and not matches(name, config.layers):
        return "not selected by `layers`"
    if matches(name, config.skip):
        return "skipped by `skip`"
    return None


def selected_for(name: str, module: nn.Module, config: QuantConfig, report: QuantReport) -> bool:
    """True when the layer is quantized; otherwise records in ``report.float_layers`` why it stays in float."""
    reason = float_reason(name, module, config)
    if reason is not None:
        report.float_layers[name] = reason
    return reason is None


def prepare(
    model: nn.Module, config: QuantConfig, *, dynamic_weights: bool = False,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> tuple[nn.Module, QuantReport]:
    """A copy of ``model`` with BN folded and the selected Conv2d/Linear layers wrapped in observing
    :class:`QuantWrapper` s (nothing is quantized until :func:`freeze_`).

    With activation quantization, ``config.placement == "graph"`` and ``example_inputs`` given, the activation
    quantizers are placed over the traced graph (:func:`place_activation_quantizers_`); otherwise around each
    layer. The report's ``placement`` says which happened (and ``float_layers["<graph>"]`` why not the graph)."""
    check_selection(model, config)
    model = copy.deepcopy(model).eval()
    report = QuantReport(config=config_dict(config))
    chosen = weight_range(config)
    if config.activation_bits is not None:
        report.details["weight_range"] = chosen
    wspec = weight_spec(config, chosen)
    facts = fold_and_equalize_(model, config, report)
    relu_of = dict(facts.layer_relu)
    selected = {name for name, module in list(_param_leaves(model)) if selected_for(name, module, config, report)}
    for name in sorted(selected):
        layer = model.get_submodule(name)
        weight_quant = FakeQuantize(wspec, config.weight_observer, learnable=config.lsq,
                                    dynamic=dynamic_weights and not config.lsq)
        input_quant = output_quant = None
        if config.activation_bits is not None:
            aspec = QuantSpec(config.activation_bits, symmetric=False)
            input_quant = FakeQuantize(aspec, config.observer, learnable=config.lsq, **config.observer_options)
            if name not in facts.model_outputs:
                output_quant = FakeQuantize(aspec, config.observer, learnable=config.lsq, **config.observer_options)
        relu = name in relu_of
        if relu:
            set_submodule(model, relu_of[name], nn.Identity())
            report.fused_relu.append(name)
        set_submodule(model, name, QuantWrapper(layer, weight_quant, input_quant, output_quant, relu=relu,
                                                storage_bits=config.weight_bits))
        report.quantized.append(name)
    if config.activation_bits is not None and config.placement == "graph" and report.quantized:
        if example_inputs is None:
            report.float_layers["<graph>"] = "no example inputs given: activations quantized around layers only"
        elif _place_on_graph(model, config, example_inputs, report):
            model.slimkit_quant_report = report
            return model, report
    for consumer, producer in facts.grid_inputs:
        if consumer in selected and producer in selected:
            source, target = model.get_submodule(producer), model.get_submodule(consumer)
            if source.output_quant is not None and target.input_quant is not None:
                target.input_quant = source.output_quant  # one quantizer: the same grid on both sides
                report.shared_input_quant.append((consumer, producer))
    model.slimkit_quant_report = report
    return model, report


def _place_on_graph(model: nn.Module, config: QuantConfig, example_inputs, report: QuantReport) -> bool:
    from slimkit.quantize._placement import place_activation_quantizers_

    aspec = QuantSpec(config.activation_bits, symmetric=False)

    def make() -> FakeQuantize:
        return FakeQuantize(aspec, config.observer, learnable=config.lsq, **config.observer_options)

    try:
        placement = place_activation_quantizers_(model, example_inputs, make)
    except Exception as error:  # torch.fx cannot trace every model: layer placement still works
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning("graph placement failed for %s (%s): quantizing activations around layers only",
                    type(model).__name__, first)
        report.float_layers["<graph>"] = f"could not trace the graph ({first}): activations quantized around layers"
        return False
    report.placement = "graph"
    layers = wrappers(model)
    report.shared_input_quant = [(consumer, producer) for consumer, c in layers.items()
                                 for producer, p in layers.items()
                                 if c.input_quant is not None and c.input_quant is p.output_quant]
    report.int8_ops = placement.int8_ops
    report.float_ops = placement.float_ops
    report.shared_scales = placement.shared
    return True


def _batches(loader: Iterable) -> Iterable[torch.Tensor]:
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def check_loader(loader: Iterable, what: str = "calibration loader") -> None:
    """Refuse an empty loader before any work (``len()`` when the loader has one)."""
    if loader is None:
        raise DataError(f"{what} is None: pass a loader yielding input batches (e.g. create_data('mnist').calibration)")
    try:
        size = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return
    if size == 0:
        raise DataError(f"{what} is empty: it must yield at least one batch (check calibration_size / the dataset)")


def calibrate_(model: nn.Module, loader: Iterable) -> int:
    """Run ``loader`` through ``model`` with every activation observer watching and nothing quantized; returns
    the number of batches seen (a DataError if none)."""
    quants = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    for quant in quants:
        quant.observing, quant.quantizing = True, False
    count = 0
    model.eval()
    with torch.no_grad():
        for inputs in _batches(loader):
            model(inputs)
            count += 1
    if count == 0:
        raise DataError("the calibration loader yielded no batches: give it at least one batch of inputs")
    return count


def freeze_(model: nn.Module) -> nn.Module:
    """Fix every quantizer's qparams from its observer and start quantizing. A wrapper whose activations were
    never observed (its layer did not run) is disabled and reported as float."""
    report = getattr(model, "slimkit_quant_report", None)
    frozen: set[int] = set()  # a quantizer shared by two wrappers (same grid) is frozen once
    for name, wrapper in wrappers(model).items():
        acts = [q for q in (wrapper.input_quant, wrapper.output_quant) if q is not None]
        if any(q.observer.lo is None for q in acts):
            wrapper.enabled = False
            if report is not None and name in report.quantized:
                report.quantized.remove(name)
                report.float_layers[name] = "never ran during calibration"
            continue
        with torch.no_grad():
            wrapper.weight_quant.observer.update(wrapper.layer.weight)
        for quant in (wrapper.weight_quant, *acts):
            if id(quant) not in frozen:
                quant.freeze_()
                frozen.add(id(quant))
    graph_quants = getattr(model, "slimkit_act_quant", None)
    for key, quant in (graph_quants.items() if graph_quants is not None else ()):
        if id(quant) in frozen:
            continue
        if quant.observer.lo is None:  # its tensor was never computed (an unused branch): it stays a pass-through
            if report is not None:
                report.float_ops[key] = "never ran during calibration"
            continue
        quant.freeze_()
        frozen.add(id(quant))
    return model


def bias_correct_(model: nn.Module, loader: Iterable) -> list[str]:
    """Empirical bias correction (Nagel et al. 2019, §4.2, Eq. 11-12): add ``E[(W - Q(W)) x]`` per output channel
    to each quantized layer's bias, the expectation taken over ``loader`` with the quantized model's own inputs.
    All layers are corrected from one pass (the shift of each is measured before any bias changes)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    targets = {n: w for n, w in wrappers(model).items() if w.enabled}

    def hook(name: str, wrapper: QuantWrapper):
        def fn(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            if wrapper.input_quant is not None:
                x = wrapper.input_quant(x)
            delta = wrapper.layer.weight - wrapper.quantized_weight()
            if isinstance(wrapper.layer, nn.Conv2d):
                layer = wrapper.layer
                shift = nn.functional.conv2d(x, delta, None, layer.stride, layer.padding, layer.dilation, layer.groups)
                reduce = [0, 2, 3]
            else:
                shift = nn.functional.linear(x, delta)
                reduce = list(range(shift.dim() - 1))
            sums[name] = sums.get(name, 0) + shift.double().sum(dim=reduce)
            counts[name] = counts.get(name, 0) + shift.numel() // shift.shape[1 if shift.dim() == 4 else -1]

        return fn

    for name, wrapper in targets.items():
        handles.append(wrapper.register_forward_pre_hook(hook(name, wrapper)))
    try:
        with torch.no_grad():
            for inputs in _batches(loader):
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    for name, total in sums.items():
        layer = targets[name].layer
        correction = (total / counts[name]).to(layer.weight.dtype)
        with torch.no_grad():
            if layer.bias is None:
                layer.bias = nn.Parameter(correction)
            else:
                layer.bias += correction
    return sorted(sums)


def check_folding(model: nn.Module, prepared: nn.Module,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> None:
    """Warn when BatchNorm folding / equalization changed the float outputs (observers off, nothing quantized)."""
    was_training = model.training
    model.eval()
    quants = [m for m in prepared.modules() if isinstance(m, FakeQuantize)]
    for quant in quants:
        quant.observing = False
    try:
        with torch.no_grad():
            if isinstance(example_inputs, Mapping):
                ref, got = model(**example_inputs), prepared(**example_inputs)
            else:
                inputs = input_tuple(example_inputs)
                ref, got = model(*inputs), prepared(*inputs)
            ref, got = first_tensor(ref), first_tensor(got)
    finally:
        model.train(was_training)
        for quant in quants:
            quant.observing = True
    err = float((ref - got).abs().max())
    if err > 1e-3 * max(1.0, float(ref.abs().max())):
        log.warning("BatchNorm folding changed the outputs by %.3g (max abs): check the folded pairs", err)
