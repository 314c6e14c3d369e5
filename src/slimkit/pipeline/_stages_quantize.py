"""Quantization stages: PTQ and QAT (slimkit.quantize), exported as int8 QDQ ONNX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

from slimkit.pipeline._stage_params import config_params, train_fields, train_params
from slimkit.pipeline._stages import Stage, StageContext, fit_in_stage, register_stage
from slimkit.quantize import QuantConfig

QuantizeParams = config_params(
    QuantConfig, "QuantizeParams",
    method=(Literal["ptq", "qat"], "ptq"),
    **{k: (v[0], v[1]) for k, v in train_fields(epochs=1, lr=0.001).items()},
)

@register_stage("quantize")
class QuantizeStage(Stage):
    """Post-training quantization (calibrated on the data's calibration split) or QAT fine-tuning; int8 models
    are exported as QDQ ONNX so that ONNX Runtime runs integer kernels."""

    Params = QuantizeParams
    structural = True
    summary = "int8 PTQ / QAT (slimkit.quantize.quantize_ptq / quantize_qat), exported as QDQ ONNX"

    def _prepare(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.quantize import quantize_ptq, quantize_qat

        config = self.params.config()
        if self.params.method == "qat":
            return quantize_qat(model, ctx.example_input, ctx.data.calibration, config)
        return quantize_ptq(model, ctx.example_input, ctx.data.calibration, config)

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.quantize import convert_qat

        prepared = self._prepare(model, ctx)
        return convert_qat(prepared) if self.params.method == "qat" else prepared

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.quantize import convert_qat

        prepared = self._prepare(model, ctx)
        if self.params.method == "qat":
            fit_in_stage(prepared, ctx, train_params(self.params))
            return convert_qat(prepared)
        return prepared

    def exporter(self) -> Callable | None:
        if self.params.activation_bits is None:
            return None  # weight-only models run as fp32 in ONNX Runtime
        from slimkit.export import export_qdq

        return lambda model, example, path: export_qdq(model, example, path)
