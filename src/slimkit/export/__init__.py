"""Export: ONNX (fp32, int8 QDQ carrying slimkit's quantization, and int2/4/8 weight-only layers as ONNX Runtime's
``MatMulNBits``), checked against PyTorch in ONNX Runtime."""

from slimkit.export._nbits import (
    KVCacheLM,
    MatMulNBitsLinear,
    export_matmul_nbits,
    is_matmul_nbits_block,
    matmul_nbits_count,
)
from slimkit.export._onnx import (
    DEFAULT_OPSET,
    ExportError,
    export_onnx,
    exportable,
    onnx_max_abs_diff,
    run_onnx,
    self_contained_onnx,
)
from slimkit.export._qdq import (
    INT8_KERNELS,
    export_qdq,
    float_islands,
    int8_kernel_count,
    onnx_accuracy,
    optimized_op_types,
    ort_quantize_dynamic,
    ort_quantize_static,
)

__all__ = [
    "DEFAULT_OPSET",
    "INT8_KERNELS",
    "ExportError",
    "KVCacheLM",
    "MatMulNBitsLinear",
    "export_matmul_nbits",
    "export_onnx",
    "export_qdq",
    "exportable",
    "float_islands",
    "int8_kernel_count",
    "is_matmul_nbits_block",
    "matmul_nbits_count",
    "onnx_accuracy",
    "onnx_max_abs_diff",
    "optimized_op_types",
    "ort_quantize_dynamic",
    "ort_quantize_static",
    "run_onnx",
    "self_contained_onnx",
]
