"""Writing a model in a deployable format and checking the file against PyTorch on a real batch.

Used by the ``export`` stage and by ``slimkit export``. ONNX files are run in ONNX Runtime and compared with the
PyTorch model (max absolute difference and argmax agreement, tolerance recorded); TorchScript files are loaded back
and compared the same way; the compressed container is written by :func:`slimkit.share.save_compressed`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._io import atomic_write, staging_file
from slimkit.analysis import output_logits

FORMATS = ("onnx", "torchscript", "compressed")


def check_batch(data: Any, size: int = 16) -> torch.Tensor:
    """Real inputs to compare a file with PyTorch: the first ``size`` test inputs (zeros if the loader has none)."""
    inputs = getattr(getattr(data, "test", None), "inputs", None)
    if isinstance(inputs, torch.Tensor) and len(inputs):
        return inputs[:size].clone()
    return data.example_input(size)


def _compare(expected: torch.Tensor, got: np.ndarray, atol: float) -> dict[str, Any]:
    expected_np = expected.detach().cpu().numpy()
    diff = float(np.max(np.abs(got - expected_np))) if got.size else 0.0
    agreement = float((got.argmax(-1) == expected_np.argmax(-1)).mean()) if got.ndim >= 2 else 1.0
    return {"max_abs_diff": diff, "atol": atol, "argmax_agreement": agreement, "ok": diff <= atol}



def _write_and_check(model: nn.Module, batch: torch.Tensor, expected: torch.Tensor, target: Path, fmt: str,
                     exporter: Any, atol: float) -> dict[str, Any]:
    from slimkit.export import export_onnx, exportable, run_onnx

    example = batch[:1]
    if fmt == "onnx":
        (exporter or export_onnx)(model, example, target)
        check = _compare(expected, run_onnx(target, batch), atol)
        check["runtime"] = "onnxruntime"
    elif fmt == "torchscript":
        if exportable(model) is not model:  # tracing bakes the mask and cache shapes of one batch into the file
            raise ConfigError(f"{type(model).__name__} is a Hugging Face model, which TorchScript tracing cannot "
                              "capture for other batch sizes: use --format onnx (or save_pretrained)")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(copy.deepcopy(model), example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        with atomic_write(target) as handle:
            handle.write(buffer.getvalue())
        with torch.no_grad():
            got = torch.jit.load(str(target))(batch).numpy()  # the file this function just wrote
        check = _compare(expected, got, atol)
        check["runtime"] = "torchscript"
    else:
        from slimkit.share import load_compressed, save_compressed

        save_compressed(model, target)
        spec = getattr(model, "slimkit_spec", None)
        reloaded = load_compressed(target, spec=spec)
        with torch.no_grad():
            got = output_logits(reloaded(batch)).numpy() if isinstance(reloaded, nn.Module) else expected.numpy()
        check = _compare(expected, got, atol)
        check["runtime"] = "slimkit.share.load_compressed"
    return check


def _saturation_hint(model: nn.Module) -> str:
    """Why an int8 file can disagree with its model on this CPU, when that is the likely cause."""
    from slimkit._cpu import cpu_info
    from slimkit.quantize import kernel_weight_bits

    report = getattr(model, "slimkit_quant_report", None)
    weight_range = report.details.get("weight_range") if report is not None else None
    if not weight_range or not cpu_info().int8_sums_saturate:
        return ""
    bits, activation_bits = weight_range["bits"], report.config.get("activation_bits")
    if kernel_weight_bits(bits, activation_bits, True) == bits:
        return ""
    return (f", or quantize with reduce_range: true (--reduce-range): this CPU adds uint8 × int8 products in "
            f"saturating int16 ({cpu_info().kind}) and the model's {bits}-bit weights overflow it")


def export_model(
    model: nn.Module,
    data: Any,
    path: str | Path,
    fmt: str,
    *,
    exporter: Any = None,
    atol: float = 1e-4,
    strict: bool = True,
) -> dict[str, Any]:
    """Write ``model`` to ``path`` in format ``fmt`` and check it; returns the check (file, diff, tolerance).

    ``exporter(model, example, path)`` replaces :func:`slimkit.export.export_onnx` (the int8 QDQ export of a
    quantized model). With ``strict`` a difference above ``atol`` raises :class:`slimkit.export.ExportError`.
    """
    from slimkit.export import ExportError

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    if fmt == "torchscript":
        from slimkit.share import clustered_layers

        if clustered_layers(model):
            raise ConfigError("TorchScript cannot hold a clustered layer (tracing cannot take its codebook lookup): "
                              "export to onnx, or to compressed for the Huffman-coded container")
    target = Path(path)
    model = model.eval()
    batch = check_batch(data)
    with torch.no_grad():
        expected = output_logits(model(batch))  # a Hugging Face LM's output object → its logits, as exported
    # written under a fresh temporary name and renamed only once checked: a file that fails its check is never
    # left, and no file of the user's (a fixed name could be theirs) is written over
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_file(target, f".unchecked{target.suffix}")
    try:
        check = _write_and_check(model, batch, expected, staging, fmt, exporter, atol)
        check.update(file=str(target), format=fmt, bytes=staging.stat().st_size, batch=len(batch))
        if strict and not check["ok"]:
            raise ExportError(f"{fmt} file '{target}' differs from PyTorch by {check['max_abs_diff']:.3g} on "
                              f"{len(batch)} test inputs (tolerance {atol:g}; argmax agreement "
                              f"{check['argmax_agreement']:.1%}): raise the tolerance if the format is lossy (int8)"
                              f"{_saturation_hint(model)}; no file was written")
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)
    return check
