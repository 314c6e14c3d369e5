"""The quantization stage: a post-training method (RTN, GPTQ, AWQ, SmoothQuant, AdaRound, ...) or QAT
(slimkit.quantize), exported as int8 QDQ ONNX or, weight-only, with ONNX Runtime's MatMulNBits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import model_validator
from torch import nn

from slimkit._errors import CheckpointError, SlimkitError
from slimkit.pipeline._stage_params import config_params, train_fields, train_params
from slimkit.pipeline._stages import Stage, StageContext, fit_in_stage, register_stage
from slimkit.quantize import QuantConfig

_QuantizeBase = config_params(
    QuantConfig, "QuantizeParams", exclude=("method",),
    method=(str, "ptq"),
    **{k: (v[0], v[1]) for k, v in train_fields(epochs=1, lr=0.001).items()},
)


class QuantizeParams(_QuantizeBase):  # type: ignore[valid-type, misc]
    """``method``: ``qat`` (fine-tuning with fake quantization) or a post-training method spec of
    :data:`slimkit.quantize.METHODS` — ``ptq`` (round to nearest), ``gptq``, ``awq``, ``adaround``,
    ``smoothquant``, combinations like ``awq+gptq`` and options like ``gptq:damp=0.02``."""

    @model_validator(mode="after")
    def _check_method(self) -> Any:
        if self.method != "qat":
            try:
                dataclasses.replace(self.config(), method=self.method)
            except (SlimkitError, ValueError, TypeError) as error:
                raise ValueError(str(error)) from None
        return self

    def quant_config(self) -> Any:
        return dataclasses.replace(self.config(), method="rtn" if self.method == "qat" else self.method)


@register_stage("quantize")
class QuantizeStage(Stage):
    """Post-training quantization by a registered method (round to nearest, GPTQ, AWQ, SmoothQuant, AdaRound;
    calibrated on the data's calibration split) or QAT fine-tuning. Models with quantized activations are exported as
    int8 QDQ ONNX; weight-only models with their Linear layers as ONNX Runtime's ``MatMulNBits``."""

    Params = QuantizeParams
    structural = True
    compresses = True
    summary = "PTQ (RTN, GPTQ, AWQ, SmoothQuant, AdaRound) / QAT (slimkit.quantize), int8 QDQ or MatMulNBits ONNX"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.layers_are_input:  # a layer name in layers / skip that is not one fails before the run folder is made
            from slimkit.quantize import check_selection

            check_selection(input_model, self.params.quant_config())

    def _prepare(self, model: nn.Module, ctx: StageContext, **override: Any) -> nn.Module:
        from slimkit.quantize import quantize, quantize_qat

        config = dataclasses.replace(self.params.quant_config(), **override)
        if self.params.method == "qat":
            return quantize_qat(model, ctx.example_input, config, data=ctx.data.calibration)
        return quantize(model, ctx.example_input, config, data=ctx.data.calibration)

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.quantize import convert_qat

        # the weight grid the run chose, not the one this CPU would choose: scales saved for ±127 codes replayed on
        # ±63 would clip half of every channel's range (runs that recorded none predate 7-bit grids: full range)
        recorded = ctx.notes.get("weight_range")
        if recorded is not None and not (isinstance(recorded, dict) and isinstance(recorded.get("reduce_range"), bool)):
            raise CheckpointError(f"{ctx.stage_dir / 'result.json'}: its weight_range note is damaged (the int8 weight "
                                  "grid the run chose cannot be read): rerun the recipe with --force")
        reduce_range = None if self.params.activation_bits is None else bool(recorded and recorded["reduce_range"])
        prepared = self._prepare(model, ctx, reduce_range=reduce_range)
        return convert_qat(prepared) if self.params.method == "qat" else prepared

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.quantize import convert_qat, quant_report

        prepared = self._prepare(model, ctx)
        weight_range = quant_report(prepared).details.get("weight_range")
        if weight_range is not None:  # 7 or 8-bit weights, and why (reduce_range: null decides for this CPU)
            ctx.notes["weight_range"] = weight_range
        if self.params.method == "qat":
            fit_in_stage(prepared, ctx, train_params(self.params))
            return convert_qat(prepared)
        return prepared

    def exporter(self) -> Callable | None:
        if self.params.activation_bits is None:  # weight-only: MatMulNBits for the quantized Linear layers
            from slimkit.export import export_matmul_nbits

            return lambda model, example, path: export_matmul_nbits(model, example, path, atol=None)
        from slimkit.export import export_qdq

        return lambda model, example, path: export_qdq(model, example, path)
