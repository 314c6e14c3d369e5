"""Export: ONNX (fp32; int8 QDQ lives with quantization), checked against PyTorch in ONNX Runtime."""

from slimkit.export._onnx import DEFAULT_OPSET, ExportError, export_onnx, onnx_max_abs_diff, run_onnx

__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx", "onnx_max_abs_diff", "run_onnx"]
