"""Fake-quant modules: quantize → dequantize in the forward, straight-through estimator in the backward, optional
learnable step size (LSQ, Esser et al. 2020), and the wrapper that quantizes a Conv2d/Linear's input, weights and
output the way ONNX Runtime's int8 kernels compute them (so the simulation matches the deployed model)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.quantize._observers import QuantSpec, create_observer, fake_quantize, qparams_from_range


class FakeQuantize(nn.Module):
    """Observes (while ``observing``) and fake-quantizes (while ``quantizing``) one tensor.

    ``learnable=True`` makes the scale an ``nn.Parameter`` trained by LSQ (Esser et al. 2020; gradient scaled by
    ``1/sqrt(numel · qmax)``, their Eq. 4). ``dynamic=True`` recomputes min/max qparams from every input (used for
    weights during QAT, which move each step).
    """

    def __init__(
        self, spec: QuantSpec, observer: str = "minmax", *, learnable: bool = False, dynamic: bool = False,
        **observer_options,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.observer_name = observer
        self.observer = create_observer(observer, spec, **observer_options)
        self.learnable = learnable
        self.dynamic = dynamic
        self.observing = True
        self.quantizing = False
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))

    def extra_repr(self) -> str:
        axis = "per-tensor" if self.spec.ch_axis is None else f"per-channel(axis={self.spec.ch_axis})"
        kind = "symmetric" if self.spec.symmetric else "asymmetric"
        return f"bits={self.spec.bits}, {kind}, {axis}, observer={self.observer_name}, learnable={self.learnable}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.update(x)
        if not self.quantizing:
            return x
        scale, zero_point = self.qparams(x)
        if torch.onnx.is_in_onnx_export():
            return _export_fake_quant(x, scale, zero_point, self.spec)
        return fake_quantize(x, scale, zero_point, self.spec)

    def qparams(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale and zero point in use (LSQ-scaled gradient for a learnable scale)."""
        if self.dynamic and x is not None:
            rows = x.detach().transpose(0, self.spec.ch_axis or 0).reshape(x.shape[self.spec.ch_axis or 0], -1)
            if self.spec.ch_axis is None:
                rows = rows.reshape(1, -1)
            return qparams_from_range(rows.min(dim=1).values, rows.max(dim=1).values, self.spec)
        scale = self.scale
        if self.learnable and self.training and x is not None:
            grad_scale = 1.0 / math.sqrt(max(1, x.numel() // max(1, scale.numel())) * self.spec.qmax)
            scale = (scale - scale * grad_scale).detach() + scale * grad_scale
        return scale.abs().clamp(min=1e-8), self.zero_point

    def freeze_(self) -> FakeQuantize:
        """Fix the qparams from what was observed and start quantizing (the end of calibration)."""
        scale, zero_point = self.observer.qparams()
        self.observer.release()  # calibration samples can be megabytes per quantizer; the model must stay light
        self.set_qparams_(scale, zero_point)
        self.observing = False
        self.quantizing = True
        return self

    def set_qparams_(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        scale = scale.detach().float().reshape(-1).clone()
        if self.learnable:
            if "scale" in self._buffers:
                del self._buffers["scale"]
            self.scale = nn.Parameter(scale)
        else:
            self.scale = scale
        self.zero_point = zero_point.detach().float().reshape(-1).clone()

    def fix_(self) -> None:
        """Stop learning / recomputing: the scale becomes a constant buffer (conversion after QAT)."""
        if self.dynamic:
            self.dynamic = False
        if self.learnable:
            value = self.scale.detach().abs().clamp(min=1e-8).clone()
            del self._parameters["scale"]
            self.learnable = False
            self.register_buffer("scale", value)


def _export_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The same arithmetic as :func:`fake_quantize`, written with ops the ONNX exporter turns into
    QuantizeLinear/DequantizeLinear. ONNX grids are 8-bit; a narrower grid is reproduced exactly by clamping the
    float input to the grid's end points first (they are grid points, so rounding is unchanged).

    The qparams enter the trace as constants (Python numbers, or tensors rebuilt from lists), not as operations on
    the module's buffers: the exported graph then holds one QuantizeLinear/DequantizeLinear pair per quantizer and
    nothing to fold, which keeps the export of large int8 graphs fast."""
    container = (-128, 127) if spec.symmetric else (0, 255)
    narrow = (spec.qmin, spec.qmax) != container
    with torch.no_grad():
        scales = scale.detach().reshape(-1).double().tolist()
        zeros = [round(z) for z in zero_point.detach().reshape(-1).tolist()]
    if spec.ch_axis is not None and len(scales) > 1:
        shape = [1] * x.dim()
        shape[spec.ch_axis] = -1
        if narrow:
            lo = torch.tensor([(spec.qmin - z) * s for s, z in zip(scales, zeros)], dtype=x.dtype).reshape(shape)
            hi = torch.tensor([(spec.qmax - z) * s for s, z in zip(scales, zeros)], dtype=x.dtype).reshape(shape)
            x = torch.maximum(torch.minimum(x, hi), lo)
        return torch.fake_quantize_per_channel_affine(
            x, torch.tensor(scales, dtype=torch.float32), torch.tensor(zeros, dtype=torch.int32), spec.ch_axis,
            *container)
    s, z = scales[0], zeros[0]
    if narrow:
        x = torch.clamp(x, (spec.qmin - z) * s, (spec.qmax - z) * s)
    return torch.fake_quantize_per_tensor_affine(x, float(torch.tensor(s, dtype=torch.float32)), z, *container)


class QuantWrapper(nn.Module):
    """A Conv2d or Linear with fake-quantized input, weight and output, plus an optional fused ReLU.

    Forward: ``out_q(relu?(layer(in_q(x), w_q(W), b_q)))`` where the bias is rounded to the int32 grid
    ``s_in · s_w`` as int8 kernels (QLinearConv, QGemm) store it. Any of the three quantizers may be ``None``
    (weight-only quantization has no activation quantizers). ``.layer`` keeps the float module (its weight is the
    float master copy that QAT trains).
    """

    def __init__(
        self, layer: nn.Conv2d | nn.Linear, weight_quant: FakeQuantize, input_quant: FakeQuantize | None = None,
        output_quant: FakeQuantize | None = None, relu: bool = False, storage_bits: int | None = None,
    ) -> None:
        super().__init__()
        self.layer = layer
        # the bits a weight code is stored in: the configured width, also when the kernels' grid is narrower
        # (reduce_range's 7-bit codes still take an int8 each)
        self.storage_bits = storage_bits
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.output_quant = output_quant
        self.relu = relu
        self.enabled = True
        # Set by graph placement: the traced forward applies the activation quantizers (shared with the neighbouring
        # ops); the wrapper keeps references to them only for the bias grid and the packed size.
        self.graph_quantized = False
        # profile() attributes a layer's bytes to the module owning the parameters (the inner layer), so the inner
        # layer reports the packed size computed here.
        layer.slimkit_storage_bytes = _PackedStorage(self)

    def extra_repr(self) -> str:
        return f"relu={self.relu}, enabled={self.enabled}, graph_quantized={self.graph_quantized}"

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.layer.weight)

    def _bias(self, weight_scale: torch.Tensor) -> torch.Tensor | None:
        bias = self.layer.bias
        if bias is None or self.input_quant is None or not self.input_quant.quantizing:
            return bias
        bias_scale = (self.input_quant.qparams()[0] * weight_scale).reshape(-1)
        if torch.onnx.is_in_onnx_export():
            return bias  # the exporter's post-processing stores it as int32 on exactly this grid
        return _round_to_grid(bias, bias_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            y = self.layer(x)
            return F.relu(y) if self.relu else y
        if self.input_quant is not None and not self.graph_quantized:
            x = self.input_quant(x)
        weight = self.weight_quant(self.layer.weight)
        bias = self._bias(self.weight_quant.qparams(self.layer.weight)[0])
        if isinstance(self.layer, nn.Conv2d):
            layer = self.layer
            if layer.padding_mode != "zeros":
                x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
                y = F.conv2d(x, weight, bias, layer.stride, 0, layer.dilation, layer.groups)
            else:
                y = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            y = F.linear(x, weight, bias)
        if self.relu:
            y = F.relu(y)
        if self.output_quant is not None and not self.graph_quantized:
            y = self.output_quant(y)
        return y

    def weight_bits(self) -> int:
        return self.storage_bits or self.weight_quant.spec.bits

    def slimkit_storage_bytes(self, dtype_bits: int) -> int:
        """Packed weight codes at the weight bit width + fp32 scales (+ zero points if asymmetric) + fp32 bias
        (int32 in the int8 ONNX file: the same 4 bytes) + the activation quantizers' scale/zero point."""
        if not self.enabled:
            return sum(math.ceil(p.numel() * dtype_bits / 8) for p in self.layer.parameters())
        weight = self.layer.weight
        channels = weight.shape[0] if self.weight_quant.spec.ch_axis is not None else 1
        total = math.ceil(weight.numel() * self.weight_bits() / 8) + 4 * channels
        if not self.weight_quant.spec.symmetric:
            total += channels
        if self.layer.bias is not None:
            total += 4 * self.layer.bias.numel()
        for quant in (self.input_quant, self.output_quant):
            if quant is not None:
                total += 5
        return total


class _PackedStorage:
    """``slimkit_storage_bytes`` of a wrapped layer: asks its wrapper (plain object, not a module)."""

    def __init__(self, wrapper: QuantWrapper) -> None:
        self.wrapper = wrapper

    def __call__(self, dtype_bits: int) -> int:
        return self.wrapper.slimkit_storage_bytes(dtype_bits)


def _round_to_grid(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The bias as int32 codes on ``scale`` store it (saturating at the int32 range, as the exporter does)."""
    codes = torch.clamp(torch.round(bias.double() / scale.double()), -(2.0**31), 2.0**31 - 1)
    return bias + ((codes * scale.double()).to(bias.dtype) - bias).detach()


def _register_profile_hooks() -> None:
    from slimkit.analysis import find_counter, register_counter

    @register_counter(QuantWrapper)
    def _count_wrapper(module: QuantWrapper, inputs: tuple, output: object) -> tuple[int, int]:
        counter = find_counter(module.layer)
        macs, other = counter(module.layer, inputs, output) if counter is not None else (0, 0)
        return macs, other + (output.numel() if module.relu and isinstance(output, torch.Tensor) else 0)

    @register_counter(FakeQuantize)
    def _count_fake_quant(module: FakeQuantize, inputs: tuple, output: object) -> tuple[int, int]:
        return 0, (output.numel() if module.quantizing and isinstance(output, torch.Tensor) else 0)


_register_profile_hooks()
