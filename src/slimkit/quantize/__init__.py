"""Quantization: observers, fake quant (STE, LSQ), BN folding, PTQ, QAT, weight-only k-bit, mixed precision, and
the reconstruction methods GPTQ, AWQ, SmoothQuant and AdaRound.

``quantize(model, example_inputs, QuantConfig(method="gptq", weight_bits=4, group_size=128, activation_bits=None),
data=loader)`` returns a new model; what happened to each layer is in ``quant_report(result)``. Deploy int8 with
``slimkit.export.export_qdq``, int4 weight-only with ``slimkit.export.export_matmul_nbits``.
Activation quantizers are placed over the traced graph (``QuantConfig(placement="graph")``, the default), so that
residual additions, concatenations, pooling and reshapes run as integer kernels in ONNX Runtime too
(``slimkit.export.float_islands`` checks a file).
"""

from slimkit._select import matches_any as matches
from slimkit.quantize._adaround import AdaRoundOptions
from slimkit.quantize._awq import AWQOptions
from slimkit.quantize._equalize import equalization_pairs, equalize, equalize_
from slimkit.quantize._fake_quant import FakeQuantize, QuantWrapper
from slimkit.quantize._fold import analyse, fold_bn, fold_bn_into_conv
from slimkit.quantize._gptq import GPTQOptions, gptq_matrix
from slimkit.quantize._grid import WeightGrid
from slimkit.quantize._methods import METHODS, Method, parse_method, register_method
from slimkit.quantize._observers import (
    OBSERVERS,
    Observer,
    QuantSpec,
    create_observer,
    fake_quantize,
    qparams_from_range,
)
from slimkit.quantize._ptq import (
    PLACEMENTS,
    SUPPORTED_LAYERS,
    QuantConfig,
    QuantReport,
    bias_correct_,
    calibrate_,
    check_selection,
    freeze_,
    kernel_weight_bits,
    prepare,
    quant_report,
    weight_range,
    wrappers,
)
from slimkit.quantize._qat import convert_qat, quantize_qat
from slimkit.quantize._quantize import linearize_, quantize
from slimkit.quantize._quantized import QuantizedConv2d, QuantizedLinear
from slimkit.quantize._sensitivity import keep_sensitive_, layer_sensitivity
from slimkit.quantize._smoothquant import SmoothQuantOptions
from slimkit.quantize._weight_only import quantize_weights, weight_codes

__all__ = [
    "METHODS",
    "OBSERVERS",
    "PLACEMENTS",
    "SUPPORTED_LAYERS",
    "AWQOptions",
    "AdaRoundOptions",
    "FakeQuantize",
    "GPTQOptions",
    "Method",
    "Observer",
    "QuantConfig",
    "QuantReport",
    "QuantSpec",
    "QuantWrapper",
    "QuantizedConv2d",
    "QuantizedLinear",
    "SmoothQuantOptions",
    "WeightGrid",
    "analyse",
    "bias_correct_",
    "calibrate_",
    "check_selection",
    "convert_qat",
    "create_observer",
    "equalization_pairs",
    "equalize",
    "equalize_",
    "fake_quantize",
    "fold_bn",
    "fold_bn_into_conv",
    "freeze_",
    "gptq_matrix",
    "keep_sensitive_",
    "kernel_weight_bits",
    "layer_sensitivity",
    "linearize_",
    "matches",
    "parse_method",
    "prepare",
    "qparams_from_range",
    "quant_report",
    "quantize",
    "quantize_qat",
    "quantize_weights",
    "register_method",
    "weight_codes",
    "weight_range",
    "wrappers",
]
