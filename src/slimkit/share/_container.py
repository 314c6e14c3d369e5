"""The compressed container: one file holding a Deep-Compressed model (Han et al. 2016, Sec. 2–4).

Layout (little-endian)::

    b"SLIMKIT\\0"  magic
    uint32        format version
    uint32        header length H
    H bytes       zlib-compressed JSON header (spec to rebuild the model, layer records, tensor records, offsets)
    payload       binary blobs: float32 codebooks, compact Huffman code-length tables, Huffman bit streams,
                  fixed-width packed streams, raw tensors (biases, unclustered layers, BN statistics)

Each :class:`~slimkit.share.ClusteredLayer` is stored as its codebook plus two symbol streams: the cluster index of
every stored entry and the relative index (gap − 1) of every stored entry, with filler zeros where a gap exceeds
the index width. Each stream is either canonical-Huffman coded (code-length table of the symbols that occur, see
:func:`~slimkit.share._huffman.encode_lengths`, plus the bit stream) or, when that is not smaller, packed at a fixed
width (the bit length of its largest symbol); the header records which (``"coding": "huffman" | "raw"``). The
choice is per stream rather than per layer: a tiny layer's cluster indices may not pay for their table while its
gaps (nearly all 0) still compress well, and the flag costs nothing extra.

Format history: 1 (development only, never released) stored every code-length table as one uint8 per alphabet
symbol (2×257 B per 8-bit conv layer) and always Huffman-coded; 2 (this) is the above. No pickle anywhere: loading
never runs code from the file. The file size is the compressed size.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import CheckpointError, ModelSpecError
from slimkit._io import atomic_write
from slimkit.share._clustered import ClusteredLayer, clustered_layers, set_submodule
from slimkit.share._huffman import (
    code_lengths,
    decode_lengths,
    encode_lengths,
    fixed_width,
    huffman_decode,
    huffman_encode,
    pack_fixed,
    unpack_fixed,
)
from slimkit.share._relindex import relative_decode, relative_encode

MAGIC = b"SLIMKIT\0"
FORMAT_VERSION = 2
SPEC_ATTRIBUTE = "slimkit_spec"


@dataclass
class LayerBytes:
    """Bytes one clustered layer takes in the file, by part (the header's share is not included)."""

    name: str
    weights: int
    stored_entries: int
    nonzero: int
    bits: int
    index_bits: int
    codebook: int
    cluster_stream: int
    index_stream: int
    tables: int
    bias: int
    cluster_coding: str = "huffman"
    index_coding: str = "huffman"

    @property
    def total(self) -> int:
        return self.codebook + self.cluster_stream + self.index_stream + self.tables + self.bias


@dataclass
class ContainerSummary:
    """What :func:`save_compressed` wrote: total file bytes, header bytes, per-layer bytes, other tensors."""

    path: Path
    file_bytes: int
    header_bytes: int
    other_tensor_bytes: int
    layers: list[LayerBytes] = field(default_factory=list)


def _np_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Payload:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, blob: bytes) -> list[int]:
        self.parts.append(blob)
        self.size += len(blob)
        return [self.size - len(blob), len(blob)]


def _stream(payload: _Payload, symbols: np.ndarray, alphabet: int) -> tuple[dict[str, Any], int, int]:
    """Store ``symbols`` Huffman-coded, or packed at a fixed width if Huffman (table + bits) is not smaller.

    Returns the header record, the stream bytes and the table bytes."""
    lengths = code_lengths(Counter(symbols.tolist()))
    data, n_bits = huffman_encode(symbols, lengths)
    table = encode_lengths(lengths, alphabet)
    width = fixed_width(symbols)
    raw_bytes = (len(symbols) * width + 7) // 8
    if raw_bytes <= len(table) + len(data):
        return {"coding": "raw", "width": width, "data": payload.add(pack_fixed(symbols, width))}, raw_bytes, 0
    record = {"coding": "huffman", "table": payload.add(table), "data": payload.add(data), "bits": n_bits}
    return record, len(data), len(table)


def resolve_spec(model: nn.Module, spec: str | None) -> str:
    """The model spec to record: ``spec``, else ``model.slimkit_spec``, else a registered model with this exact
    architecture (same class and parameter shapes, default options)."""
    spec = spec or getattr(model, SPEC_ATTRIBUTE, None)
    if spec:
        return str(spec)
    from slimkit.models import MODELS, create

    wanted = _architecture(model)
    for name in MODELS.names():
        try:
            with torch.device("meta"):
                candidate = create(name)
        except Exception:  # a factory that cannot build on the meta device is simply not a candidate
            continue
        if type(candidate) is type(model) and _architecture(candidate) == wanted:
            return name
    raise ModelSpecError(f"cannot tell which model '{type(model).__name__}' is, to rebuild it when loading: pass "
                         "spec='name:options' or 'file.py:factory' to save_compressed (or set model.slimkit_spec)")


def _architecture(model: nn.Module) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, tensor in model.state_dict().items():
        shapes[name.removesuffix(".indices") + ".weight" if name.endswith(".indices") else name] = tuple(tensor.shape)
    return {k: v for k, v in shapes.items() if not k.endswith(".codebook")}


def save_compressed(model: nn.Module, path: str | Path, spec: str | None = None) -> ContainerSummary:
    """Write ``model`` (clustered layers Huffman-coded where that pays, everything else raw) to one file, atomically.

    ``spec`` rebuilds the architecture on load (a registered name with options, or ``file.py:factory``); it
    defaults to ``model.slimkit_spec`` or a registered model with identical parameter shapes.
    """
    import slimkit

    spec = resolve_spec(model, spec)
    payload = _Payload()
    clustered = clustered_layers(model)
    layers, sizes = [], []
    for name, layer in clustered.items():
        flat = layer.indices.detach().cpu().numpy().ravel()
        gaps, symbols = relative_encode(flat, layer.zero_symbol, layer.index_bits)
        codebook = layer.codebook.detach().cpu().numpy().astype("<f4").tobytes()
        cluster_record, cluster_bytes, t1 = _stream(payload, symbols, layer.zero_symbol + 1)
        gap_record, gap_bytes, t2 = _stream(payload, gaps, 2 ** layer.index_bits)
        layers.append({"name": name, "kind": layer.kind, "shape": list(layer.indices.shape), "conv": layer.conv,
                       "bits": layer.bits, "index_bits": layer.index_bits, "clusters": layer.zero_symbol,
                       "entries": len(symbols), "codebook": payload.add(codebook),
                       "symbols": cluster_record, "gaps": gap_record})
        bias = 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()
        sizes.append(LayerBytes(name, flat.size, len(symbols), int((flat != layer.zero_symbol).sum()),
                                layer.bits, layer.index_bits, len(codebook), cluster_bytes, gap_bytes, t1 + t2, bias,
                                cluster_record["coding"], gap_record["coding"]))
    skip = {f"{name}.{part}" for name in clustered for part in ("codebook", "indices")}
    tensors, other = [], 0
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        array = tensor.detach().cpu().contiguous()
        blob = array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.view(torch.int16).numpy().tobytes()
        tensors.append({"key": key, "dtype": _np_dtype(array.dtype), "shape": list(array.shape),
                        "data": payload.add(blob)})
        if not any(key.startswith(f"{name}.") for name in clustered):
            other += len(blob)
    header = json.dumps({"format": "slimkit-compressed", "version": FORMAT_VERSION, "slimkit": slimkit.__version__,
                         "spec": spec, "layers": layers, "tensors": tensors}, separators=(",", ":")).encode()
    header = zlib.compress(header, 9)  # the header is repetitive JSON; it would otherwise cost ~1 KB per model
    with atomic_write(path, "wb") as handle:
        handle.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(header)) + header)
        for part in payload.parts:
            handle.write(part)
    path = Path(path)
    return ContainerSummary(path, path.stat().st_size, len(MAGIC) + 8 + len(header), other, sizes)


def _read_header(raw: bytes, path: Path) -> tuple[dict[str, Any], memoryview]:
    if raw[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"'{path}' is not a slimkit compressed file (bad magic): write it with save_compressed")
    version, header_len = struct.unpack("<II", raw[len(MAGIC):len(MAGIC) + 8])
    if version > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' uses container format {version}, newer than this slimkit reads "
                              f"({FORMAT_VERSION}): upgrade slimkit")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"'{path}' uses container format {version} from a development build, which this "
                              f"slimkit does not read (it reads {FORMAT_VERSION}): re-save it with save_compressed")
    start = len(MAGIC) + 8
    try:
        header = json.loads(zlib.decompress(raw[start:start + header_len]).decode())
    except (zlib.error, ValueError) as error:
        raise CheckpointError(f"'{path}' has a corrupt header ({error}): the file is damaged") from None
    return header, memoryview(raw)[start + header_len:]


def _blob(payload: memoryview, where: list[int]) -> bytes:
    offset, size = where
    return bytes(payload[offset:offset + size])


def _decode_stream(payload: memoryview, record: dict[str, Any], count: int, alphabet: int) -> np.ndarray:
    if record["coding"] == "raw":
        return unpack_fixed(_blob(payload, record["data"]), record["width"], count)
    lengths = decode_lengths(_blob(payload, record["table"]), alphabet)
    return huffman_decode(_blob(payload, record["data"]), record["bits"], lengths, count)


def load_compressed(path: str | Path, spec: str | None = None) -> nn.Module:
    """Rebuild the model saved by :func:`save_compressed`: clustered layers come back as
    :class:`~slimkit.share.ClusteredLayer` with the same codebooks and indices, so outputs are bit-identical."""
    from slimkit.models import from_spec

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"compressed model '{path}' does not exist: check the path")
    header, payload = _read_header(path.read_bytes(), path)
    spec = spec or header["spec"]
    model = from_spec(spec)
    state: dict[str, torch.Tensor] = {}
    for record in header["tensors"]:
        dtype = getattr(torch, record["dtype"])
        data = bytearray(_blob(payload, record["data"]))
        state[record["key"]] = torch.frombuffer(data, dtype=dtype).reshape(record["shape"]) if data else \
            torch.zeros(record["shape"], dtype=dtype)
    for record in header["layers"]:
        k, shape = record["clusters"], record["shape"]
        symbols = _decode_stream(payload, record["symbols"], record["entries"], k + 1)
        gaps = _decode_stream(payload, record["gaps"], record["entries"], 2 ** record["index_bits"])
        indices = relative_decode(gaps, symbols, int(np.prod(shape)), k).reshape(shape)
        codebook = torch.frombuffer(bytearray(_blob(payload, record["codebook"])), dtype=torch.float32)
        name = record["name"]
        bias = state.get(f"{name}.bias")
        set_submodule(model, name, ClusteredLayer(record["kind"], codebook, torch.from_numpy(indices), bias,
                                                  record["conv"], record["bits"], record["index_bits"]))
        state[f"{name}.codebook"] = codebook
        state[f"{name}.indices"] = torch.from_numpy(indices)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"'{path}' does not fit the model '{spec}' ({error}): pass the spec it was saved "
                              "from as load_compressed(path, spec=...)") from None
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model.eval()
