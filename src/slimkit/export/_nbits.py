"""ONNX export of weight-only quantized models to ONNX Runtime's ``com.microsoft.MatMulNBits`` (its 2/4/8-bit
CPU kernels), so a 4-bit model runs as 4-bit weights and its file is 4-bit sized.

Every :class:`slimkit.quantize.QuantizedLinear` becomes one ``MatMulNBits`` node, packed as the contrib-op spec
says (and as onnxruntime's own ``matmul_nbits_quantizer`` writes it): ``B`` is uint8 of shape
``(N, ceil(K / block_size), block_size · bits / 8)``, the codes of each block of ``block_size`` input channels packed
little-end first (the first code in the low bits of the first byte); ``scales`` is ``(N, k_blocks)`` in the
activation type; ``zero_points`` is uint8 of shape ``(N, ceil(k_blocks · bits / 8))`` packed the same way along the
blocks, omitted for symmetric grids (the default zero point is ``2^(bits-1)``). ``block_size`` is the layer's group
size (a power of two ≥ 16; per-channel layers use one block of the next power of two ≥ K, zero-padded).
ONNX Runtime's CPU kernel takes 2, 4 and 8 bits: 3-bit layers are stored in the 4-bit container (codes 0..7 with
explicit zero points — the same values, a 4-bit file), 5–7-bit layers in the 8-bit one.

``kv_cache=True`` exports a Hugging Face causal LM as a decoder with past keys/values (inputs ``input_ids``,
``past_key_values.{i}.key/value``; outputs ``logits``, ``present.{i}.key/value``): a 128-token prefill feeds an
empty past, each decode step one token and the previous step's presents.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._inputs import input_tuple
from slimkit._io import replace_file, staging_file
from slimkit.export._onnx import ExportError, quiet_exporters

log = logging.getLogger(__name__)

#: bit widths ONNX Runtime's CPU ``MatMulNBits`` kernel runs (1.20+); others go to the next container
CONTAINER_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
NBITS_OPSET = 18


@torch.library.custom_op("slimkit::matmul_nbits", mutates_args=())
def _matmul_nbits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                  bias: torch.Tensor | None, K: int, N: int, bits: int, block_size: int,
                  accuracy_level: int) -> torch.Tensor:
    """PyTorch reference of ``com.microsoft.MatMulNBits``: ``x · dequant(B)ᵀ + bias``."""
    weight = unpack_weight(packed, scales, zero_points, K, bits, block_size).to(x.dtype)
    y = x @ weight.T
    return y if bias is None else y + bias


@_matmul_nbits.register_fake
def _matmul_nbits_fake(x, packed, scales, zero_points, bias, K, N, bits, block_size, accuracy_level):
    return x.new_empty((*x.shape[:-1], N))


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` (…, n) of ``bits`` ∈ {2, 4, 8} into bytes along the last axis, the first code in the
    low bits; n must be a multiple of ``8 / bits``."""
    per = 8 // bits
    codes = codes.astype(np.uint8)
    if per == 1:
        return codes
    grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for i in range(per):
        out |= (grouped[..., i] << (bits * i)).astype(np.uint8)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits` (torch, last axis), keeping the first ``count`` codes."""
    per = 8 // bits
    if per == 1:
        return packed[..., :count]
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def unpack_weight(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, K: int, bits: int,
                  block_size: int) -> torch.Tensor:
    """The float ``N × K`` weight a ``MatMulNBits`` node computes with."""
    n, blocks, _ = packed.shape
    codes = unpack_bits(packed, bits, block_size).float()  # N × blocks × block_size
    if zero_points is None:
        zeros = torch.full((n, blocks), float(2 ** (bits - 1)), device=packed.device)
    elif zero_points.dtype == torch.uint8:
        zeros = unpack_bits(zero_points, bits, blocks).float()
    else:
        zeros = zero_points.float()
    weight = (codes - zeros.unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return weight.reshape(n, blocks * block_size)[:, :K]


def block_size_for(layer: nn.Module) -> int:
    """The ``MatMulNBits`` block size of a quantized layer: its group size, or for one group per row the next power
    of two ≥ K (at least 16)."""
    cols = layer.codes.shape[1]
    size = layer.group_size
    if size >= cols:
        return max(16, 1 << (cols - 1).bit_length())
    if not is_matmul_nbits_block(size):
        raise ExportError(f"group size {size} cannot be a MatMulNBits block: ONNX Runtime needs a power of two ≥ 16 "
                          "(re-quantize with group_size 32, 64 or 128)")
    return size


def is_matmul_nbits_block(size: int) -> bool:
    """Whether ``size`` input channels per group is a block ONNX Runtime's ``MatMulNBits`` takes (a power of two
    ≥ 16)."""
    return size >= 16 and not size & (size - 1)


class MatMulNBitsLinear(nn.Module):
    """A :class:`QuantizedLinear` in ``MatMulNBits`` layout (packed ``B``, ``scales``, packed ``zero_points``);
    its forward is the custom op ``slimkit::matmul_nbits``, exported as ``com.microsoft.MatMulNBits``."""

    def __init__(self, layer: nn.Module, accuracy_level: int = 0) -> None:
        super().__init__()
        if layer.group_index is not None:
            raise ExportError("a layer quantized with act-order and non-static groups has a per-column group index, "
                              "which MatMulNBits cannot express: re-quantize with gptq:static_groups=true")
        codes = layer.codes.cpu().numpy().astype(np.int64)
        n, k = codes.shape
        block = block_size_for(layer)
        bits = CONTAINER_BITS[layer.bits]
        blocks = math.ceil(k / block)
        zeros = layer.zero_points.cpu().numpy().astype(np.int64)
        scales = layer.scales.detach().cpu().float()
        if block != layer.group_size and block >= k:  # one block per row (per-channel grid)
            zeros, scales = zeros[:, :1], scales[:, :1]
        padded = np.repeat(zeros, block, axis=1)[:, : blocks * block].copy()
        padded[:, :k] = codes
        self.K, self.N, self.bits, self.block_size = k, n, bits, block
        self.accuracy_level = int(accuracy_level)
        self.source_bits = layer.bits
        self.register_buffer("packed", torch.from_numpy(pack_bits(padded.reshape(n, blocks, block), bits)))
        self.register_buffer("scales", scales.contiguous())
        # The default zero point is 2^(bits-1) of the container: symmetric grids of the container's own width need
        # no zero points; everything else stores them (packed along the blocks).
        if layer.symmetric and bits == layer.bits:
            self.register_buffer("zero_points", None)
        else:
            per = 8 // bits
            zp = np.zeros((n, math.ceil(blocks / per) * per), dtype=np.int64)
            zp[:, :blocks] = zeros
            self.register_buffer("zero_points", torch.from_numpy(pack_bits(zp, bits)))
        bias = getattr(layer, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.slimkit.matmul_nbits(x, self.packed, self.scales, self.zero_points, self.bias, self.K,
                                              self.N, self.bits, self.block_size, self.accuracy_level)

    def file_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zero_points, self.bias)
                   if t is not None)


def to_matmul_nbits(model: nn.Module, accuracy_level: int = 0) -> nn.Module:
    """A copy of ``model`` with every :class:`QuantizedLinear` replaced by a :class:`MatMulNBitsLinear` (same
    outputs; the form that exports to ``MatMulNBits``)."""
    from slimkit.quantize import QuantizedLinear

    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, MatMulNBitsLinear(module, accuracy_level))
    return model


def _schema() -> Any:
    """``com.microsoft.MatMulNBits`` (since version 1) as an ``onnx.defs.OpSchema``: the ONNX package has no
    schemas for ONNX Runtime's contrib ops, and onnxscript needs one to build the node."""
    from onnx import defs

    param = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    attr = defs.OpSchema.Attribute
    INT = defs.OpSchema.AttrType.INT
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    return defs.OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"),
                param("zero_points", "T3", param_option=optional), param("g_idx", "T4", param_option=optional),
                param("bias", "T1", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", floats, ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", *floats], ""), ("T4", ["tensor(int32)"], "")],
        attributes=[attr("K", INT, ""), attr("N", INT, ""), attr("bits", INT, ""), attr("block_size", INT, ""),
                    attr("accuracy_level", INT, "", required=False)],
    )


def _translation() -> dict[Any, Any]:
    import onnxscript

    nbits = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MatMulNBits", _schema())

    def matmul_nbits(x, packed, scales, zero_points, bias, K: int, N: int, bits: int, block_size: int,
                     accuracy_level: int):
        attrs = {"K": K, "N": N, "bits": bits, "block_size": block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        if bias is not None:
            return nbits(x, packed, scales, zero_points, None, bias, **attrs)
        if zero_points is not None:
            return nbits(x, packed, scales, zero_points, **attrs)
        return nbits(x, packed, scales, **attrs)

    return {torch.ops.slimkit.matmul_nbits.default: matmul_nbits}


class _FirstOutput(nn.Module):
    """The first tensor of a model's output (a Hugging Face ``ModelOutput``'s logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(*inputs)
        if hasattr(out, "to_tuple"):
            return out.to_tuple()[0]
        return out[0] if isinstance(out, (tuple, list)) else out


class KVCacheLM(nn.Module):
    """A Hugging Face causal LM as a graph with explicit past keys/values: ``(input_ids, *past) -> (logits,
    *present)``, ``past``/``present`` alternating key and value per layer (batch × kv heads × length × head dim)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)
        # transformers ≥ 5.24 calls the cache argument (and output field) `cache`; earlier ones `past_key_values`
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: cache})
        present = []
        for layer in getattr(out, self._cache_arg).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)

    def empty_past(self, batch: int, length: int = 0) -> list[torch.Tensor]:
        """Zero past tensors of ``length`` positions (length 0 for a prefill)."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return [torch.zeros(batch, heads, length, head_dim) for _ in range(2 * self.layers)]

    def names(self) -> tuple[list[str], list[str]]:
        past = [f"past_key_values.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]
        present = [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]
        return ["input_ids", *past], ["logits", *present]


def export_matmul_nbits(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    kv_cache: bool = False,
    accuracy_level: int = 0,
    atol: float | None = 1e-3,
) -> Path:
    """Export ``model`` to ONNX with its :class:`~slimkit.quantize.QuantizedLinear` layers as
    ``com.microsoft.MatMulNBits`` (any other layer exports as usual), written atomically to ``path``.

    ``accuracy_level`` is the node attribute (0: compute in the activation type; 4: ONNX Runtime may quantize the
    activations to int8 blocks, faster and slightly less exact). With ``atol`` the file is run in ONNX Runtime on
    ``example_inputs`` and must match the PyTorch model within ``atol`` (relative to the output's scale), else
    :class:`ExportError`. ``kv_cache=True`` exports a Hugging Face causal LM with past keys/values (see
    :class:`KVCacheLM`); ``example_inputs`` are then the ``input_ids`` of a prefill.
    """
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"accuracy_level {accuracy_level!r} must be 0-4 (ONNX Runtime's MatMulNBits attribute)")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    graph = to_matmul_nbits(model, accuracy_level)
    if kv_cache:
        if not hasattr(graph, "config") or not hasattr(graph.config, "num_hidden_layers"):
            raise ExportError(f"kv_cache=True needs a Hugging Face causal LM, not {type(model).__name__}")
        graph = KVCacheLM(graph).eval()
        ids = example_inputs if isinstance(example_inputs, torch.Tensor) else input_tuple(example_inputs)[0]
        ids = torch.cat([ids, ids]) if ids.shape[0] == 1 else ids
        past = graph.empty_past(ids.shape[0], 2)
        inputs: tuple = (ids, *past)
        input_names, output_names = graph.names()
        auto = torch.export.Dim.AUTO
        shapes: Any = ({0: auto, 1: auto}, tuple({0: auto, 2: auto} for _ in past))
    else:
        if getattr(getattr(graph, "config", None), "use_cache", False):
            graph.config.use_cache = False  # a copy: the exported graph returns logits, not a KV cache object
        graph = _FirstOutput(graph).eval()
        # An example batch of 1 would fix the batch axis to 1 (torch.export specialises size-1 axes): trace at 2.
        inputs = tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in input_tuple(example_inputs))
        input_names = ["input"] + [f"input_{i}" for i in range(1, len(inputs))]
        output_names = ["output"]
        # Every axis may vary (batch, sequence, image size) where the model allows it: Dim.AUTO keeps an axis the
        # model needs fixed (or an example axis of size 1) static instead of failing.
        auto = torch.export.Dim.AUTO
        shapes = (tuple({axis: auto for axis in range(t.dim())} for t in inputs),)
    tmp = str(staging_file(target, ".onnx"))
    try:
        try:
            with quiet_exporters():
                program = torch.onnx.export(
                    graph, inputs, dynamo=True, input_names=input_names, output_names=output_names,
                    dynamic_shapes=shapes, opset_version=NBITS_OPSET, custom_translation_table=_translation(),
                )
                program.save(tmp, external_data=False)
        except Exception as error:
            raise ExportError(f"could not export {type(model).__name__} with MatMulNBits: "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
        replace_file(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if atol is not None:
        check = inputs if not kv_cache else (inputs[0], *graph.empty_past(inputs[0].shape[0], 0))
        err = nbits_max_abs_diff(graph, target, check)
        if err > atol:
            raise ExportError(f"{target} differs from the PyTorch model by {err:.3g} in ONNX Runtime (atol {atol}): "
                              "report this as a bug; pass atol=None to keep the file anyway")
    return target


def nbits_max_abs_diff(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor] | torch.Tensor,
                       threads: int = 1) -> float:
    """Largest |ONNX Runtime − PyTorch| over all outputs, relative to the PyTorch outputs' largest magnitude."""
    import onnxruntime as ort

    inputs = input_tuple(inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feed)
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    if isinstance(expected[0], Mapping) or hasattr(expected[0], "to_tuple"):
        expected = (expected[0].to_tuple()[0],)
    scale = max(1.0, max(float(e.abs().max()) for e in expected if e.numel()))
    return max(float(np.max(np.abs(g - e.detach().cpu().numpy()))) if e.numel() else 0.0
               for g, e in zip(got, expected)) / scale


def matmul_nbits_count(path: str | os.PathLike) -> int:
    """Number of ``com.microsoft.MatMulNBits`` nodes in an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(1 for node in graph.node if node.op_type == "MatMulNBits" and node.domain == "com.microsoft")
