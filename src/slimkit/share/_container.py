"""The compressed container: one file holding a Deep-Compressed model (Han et al. 2016, Sec. 2–4).

Layout (little-endian)::

    b"SLIMKIT\\0"  magic
    uint32        format version
    uint32        header length H
    32 bytes      SHA-256 of everything after it (header and payload): a damaged file is refused, never half-read
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
symbol (2×257 B per 8-bit conv layer) and always Huffman-coded; 2 added per-stream coding; 3 (this) adds the
checksum. 2 is still read (without the checksum).

Loading never runs code and never trusts a size the file declares: no pickle anywhere; the header's model spec
must be a registered model (a ``file.py:factory`` spec is never stored, and one found in a header is refused);
the model is first built on the meta device and every record's shape must equal the architecture's before any
tensor is allocated; every blob must lie inside the payload and hold exactly the bytes its shape needs; the
header's decompressed size is bounded. The file size is the compressed size.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import CheckpointError, ConfigError, DataError, ModelSpecError
from slimkit._io import atomic_write
from slimkit.share._clustered import CONV_ARGS, ClusteredLayer, clustered_layers, finalize_clusters, set_submodule
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
#: 4: a channel-pruned model's layout (``pruned_attributes``); a model of its spec's own layout is still written as 3,
#: which slimkit releases before 4 read
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)
#: what an error about a damaged container tells the user to do
_RESAVE = "re-save it with save_compressed, or restore the file from where it was written"
DAMAGED = f"the file is damaged: {_RESAVE}"
SPEC_ATTRIBUTE = "slimkit_spec"
_DIGEST_BYTES = 32
#: a header is a few hundred bytes per layer; anything near this is not a slimkit file
_MAX_HEADER_BYTES = 64 * 2**20
#: the densest a container gets: a stored entry (≥ 2 bits) covers at most 2**index_bits ≤ 2**16 positions of a
#: pruned layer; a model with more values than this per file byte cannot have come from save_compressed
_MAX_VALUES_PER_BYTE = 4 * 2**16


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


@dataclass(frozen=True)
class _StreamPlan:
    """How :func:`save_compressed` stores one symbol stream: Huffman with code ``lengths`` (its ``table`` and
    ``data_bytes`` of bits), or, when that is not smaller, packed at ``width`` bits (``lengths`` None)."""

    lengths: dict[int, int] | None
    width: int
    data_bytes: int
    table: bytes


def _stream_plan(symbols: np.ndarray, alphabet: int) -> _StreamPlan:
    counts = Counter(symbols.tolist())
    lengths = code_lengths(counts)
    table = encode_lengths(lengths, alphabet)
    huffman_bytes = (sum(n * lengths[symbol] for symbol, n in counts.items()) + 7) // 8
    width = fixed_width(symbols)
    raw_bytes = (len(symbols) * width + 7) // 8
    if raw_bytes <= len(table) + huffman_bytes:
        return _StreamPlan(None, width, raw_bytes, b"")
    return _StreamPlan(lengths, width, huffman_bytes, table)


def stream_bytes(symbols: np.ndarray, alphabet: int) -> tuple[int, int]:
    """The bytes :func:`save_compressed` stores ``symbols`` in (of an ``alphabet``-symbol code) — canonical Huffman,
    its code-length table and bit stream, or, when that is not smaller, packed at a fixed width — and how many of
    them are the table. Sizes only: nothing is encoded."""
    if symbols.size == 0:
        return 0, 0
    plan = _stream_plan(symbols, alphabet)
    return plan.data_bytes + len(plan.table), len(plan.table)


def _stream(payload: _Payload, symbols: np.ndarray, alphabet: int) -> tuple[dict[str, Any], int, int]:
    """Store ``symbols`` as :func:`_stream_plan` chooses. Returns the header record, the stream bytes and the table
    bytes."""
    plan = _stream_plan(symbols, alphabet)
    if plan.lengths is None:
        record = {"coding": "raw", "width": plan.width, "data": payload.add(pack_fixed(symbols, plan.width))}
        return record, plan.data_bytes, 0
    data, n_bits = huffman_encode(symbols, plan.lengths)
    record = {"coding": "huffman", "table": payload.add(plan.table), "data": payload.add(data), "bits": n_bits}
    return record, len(data), len(plan.table)


def resolve_spec(model: nn.Module, spec: str | None) -> str:
    """The model spec to record: ``spec``, else ``model.slimkit_spec``, else a registered model with this exact
    architecture (same class and parameter shapes, default options). A ``file.py:factory`` spec is returned as
    given; :func:`save_compressed` does not store it (a file never names code to import)."""
    spec = spec or getattr(model, SPEC_ATTRIBUTE, None)
    if spec:
        return str(spec)
    from slimkit.models import MODELS, create

    wanted = _architecture(model)
    # factories defined beside the model's class first: building every registered model (Hugging Face ones import
    # transformers) to reach the right one took seconds
    home = type(model).__module__
    for name in sorted(MODELS.names(), key=lambda name: getattr(MODELS.get(name), "__module__", None) != home):
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


def _compressed_json(value: Any) -> bytes:
    # the header is repetitive JSON; it would otherwise cost ~1 KB per model
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 9)


def pruned_layout_bytes(model: nn.Module, reference: nn.Module) -> int:
    """About how many bytes the record of ``model``'s pruned layout (its size attributes that differ from
    ``reference``'s, the unpruned architecture) adds to a container's compressed header: compressed after the
    tensor records that name every module already, as in the header, less those records alone. 0 when the layouts
    are equal or the difference is no pruning."""
    from slimkit.prune import changed_size_attributes

    changed = changed_size_attributes(model, reference)
    if not changed:
        return 0
    context = {"tensors": [{"key": key, "shape": list(tensor.shape)} for key, tensor in model.state_dict().items()]}
    return max(0, len(_compressed_json({**context, "pruned_attributes": changed})) - len(_compressed_json(context)))


def _pruned_layout(model: nn.Module, spec: str) -> dict[str, dict[str, Any]] | None:
    """How ``model`` differs from what ``spec`` builds: None when not at all; for a channel pruning (the same
    tensors, none larger), the size attributes pruning set, which the container records so that a load rebuilds the
    pruned layout (:func:`slimkit.prune.apply_layout_`) — checked here by rebuilding it and comparing outputs.
    Anything else (a decompose, convert, depth prune or quantize) is a :class:`ConfigError`, as a container could
    never be loaded. A spec that cannot build on the meta device is checked when the container is loaded; a
    ``file.py:factory`` spec is the caller's (typed to save_compressed, or the model's from their own typing)."""
    from slimkit.models import from_spec, is_code_spec
    from slimkit.prune import apply_layout_, changed_size_attributes, is_hf_model

    allow_code = is_code_spec(spec)
    try:
        with torch.device("meta"):
            reference = from_spec(spec, allow_code=allow_code)
    except Exception:
        return None
    built, have = _architecture(reference), _architecture(model)
    if have == built:
        return None
    extra, missing = sorted(set(have) - set(built)), sorted(set(built) - set(have))
    differ = [k for k in have if k in built and have[k] != built[k]]
    grew = [k for k in differ if len(have[k]) != len(built[k]) or any(a > b for a, b in zip(have[k], built[k]))]
    if is_hf_model(model) and not (extra or missing or grew):
        raise ConfigError("a channel-pruned Hugging Face model keeps its sizes in its config too, which a compressed "
                          "container does not record: save it with slimkit.prune.save_pruned (from_pretrained "
                          "reloads it), or export it to ONNX")
    dense = finalize_clusters(model).cpu()
    attributes = None if extra or missing or grew else changed_size_attributes(dense, reference)
    if attributes is not None:
        state = dense.state_dict()
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        try:
            with torch.random.fork_rng(devices=[]):  # building the reference draws weights: the caller's RNG stays
                rebuilt = from_spec(spec, allow_code=allow_code).to(dtype)
            apply_layout_(rebuilt, {k: tuple(v.shape) for k, v in state.items()}, attributes, f"'{spec}'",
                          fix="report this as a slimkit bug")
            rebuilt.load_state_dict(state)
            x = _example(spec, dtype, model)
            with torch.no_grad():
                ours, theirs = rebuilt.eval()(x), dense.eval()(x)
        except Exception as error:  # the rebuilt model does not load or run: its layout cannot be verified
            raise ConfigError(f"a compressed container could not verify that '{spec}' rebuilt to this model's "
                              f"shapes and size attributes computes what it computes ({type(error).__name__}: "
                              f"{error}): export it to ONNX instead") from None
        if isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor) and torch.equal(ours, theirs):
            return attributes
        what = (f"'{spec}' rebuilt to this model's shapes and size attributes does not compute what it computes (a "
                "size kept outside the tensors and the module attributes)")
    elif differ and not (extra or missing or grew):
        what = f"'{differ[0]}' is smaller, but a module changed in a way pruning does not"
    else:
        key = (grew or differ or [None])[0]
        what = (f"'{key}' is {'×'.join(map(str, have[key]))} where '{spec}' builds "
                f"{'×'.join(map(str, built[key]))}" if key is not None
                else f"'{spec}' has no '{extra[0]}'" if extra else f"'{missing[0]}', which '{spec}' builds, is gone")
    raise ConfigError(f"a compressed container rebuilds its model from the spec '{spec}', which this model no "
                      f"longer matches ({what}: a decompose, convert, depth prune or quantize step changed the "
                      "architecture): export it to ONNX instead (a container holds a model of its spec's layout, "
                      "channel-pruned or not: unstructured pruning and clustering keep it)")


def _example(spec: str, dtype: torch.dtype, model: nn.Module | None = None) -> torch.Tensor:
    """An input to check a pruned layout on, floating point in ``dtype``: the spec's example, or for the user's own
    code the input ``model``'s pruning ran on (``pruning_info`` keeps its shape); a ValueError when it is unknown."""
    from slimkit.models import example_input, is_code_spec
    from slimkit.prune import pruning_info

    if is_code_spec(spec):
        shape = (pruning_info(model) or {}).get("input_shape") if model is not None else None
        if not isinstance(shape, list):
            raise ValueError("the input of a model from your own code is unknown here")
        x = torch.zeros(shape)
    else:
        x = example_input(spec)
    return x.to(dtype) if x.is_floating_point() else x


def save_compressed(model: nn.Module, path: str | Path, spec: str | None = None) -> ContainerSummary:
    """Write ``model`` (clustered layers Huffman-coded where that pays, everything else raw) to one file, atomically.

    ``spec`` rebuilds the architecture on load (a registered name with options); it defaults to
    ``model.slimkit_spec`` or a registered model with identical parameter shapes. A user's ``file.py:factory``
    spec is accepted but not stored, because a file slimkit reads must never name code to import: such a
    container is loaded with ``load_compressed(path, spec="file.py:factory")``, the caller typing the spec.
    A channel-pruned model is held too (a Hugging Face one is saved with ``slimkit.prune.save_pruned``): its shapes
    and the size attributes pruning set are recorded (checked by rebuilding the model and comparing outputs) and
    rebuilt on load.
    """
    import slimkit
    from slimkit.models import is_code_spec

    spec = resolve_spec(model, spec)
    stored_spec = None if is_code_spec(spec) else spec
    pruned = _pruned_layout(model, spec)
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
    version = FORMAT_VERSION if pruned is not None else 3
    header = _compressed_json({"format": "slimkit-compressed", "version": version, "slimkit": slimkit.__version__,
                               "spec": stored_spec, "model_class": type(model).__name__, "layers": layers,
                               "tensors": tensors, **({} if pruned is None else {"pruned_attributes": pruned})})
    digest = hashlib.sha256(header)
    for part in payload.parts:
        digest.update(part)
    with atomic_write(path, "wb") as handle:
        handle.write(MAGIC + struct.pack("<II", version, len(header)) + digest.digest() + header)
        for part in payload.parts:
            handle.write(part)
    path = Path(path)
    return ContainerSummary(path, path.stat().st_size, len(MAGIC) + 8 + _DIGEST_BYTES + len(header), other, sizes)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"'{path}' is damaged or not a slimkit container ({what}): {_RESAVE}")


def _read_header(raw: bytes, path: Path) -> tuple[dict[str, Any], memoryview, int]:
    fixed = len(MAGIC) + 8
    if raw[:len(MAGIC)] != MAGIC or len(raw) < fixed:
        raise CheckpointError(f"'{path}' is not a slimkit compressed file (bad magic): write it with save_compressed")
    version, header_len = struct.unpack("<II", raw[len(MAGIC):fixed])
    if version > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' uses container format {version}, newer than this slimkit reads "
                              f"({FORMAT_VERSION}): upgrade slimkit")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"'{path}' uses container format {version} from a development build, which this "
                              f"slimkit does not read (it reads {', '.join(map(str, READABLE_VERSIONS))}): re-save "
                              "it with save_compressed")
    start = fixed
    if version >= 3:
        start += _DIGEST_BYTES
        if len(raw) < start or hashlib.sha256(memoryview(raw)[start:]).digest() != raw[fixed:start]:
            raise _corrupt(path, "its checksum does not match its contents")
    if start + header_len > len(raw):
        raise _corrupt(path, f"the header claims {header_len:,} bytes but the file has {len(raw) - start:,} left")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(raw[start:start + header_len], _MAX_HEADER_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise _corrupt(path, f"the header does not inflate to a complete header of at most "
                                 f"{_MAX_HEADER_BYTES // 2**20} MiB")
        header = json.loads(text.decode())
    except (zlib.error, ValueError, RecursionError) as error:
        raise _corrupt(path, f"unreadable header: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or \
            not isinstance(header.get("layers"), list):
        raise _corrupt(path, "the header lacks its tensor and layer records")
    return header, memoryview(raw)[start + header_len:], version


def _blob(payload: memoryview, where: Any, path: Path, expected: int | None = None) -> bytes:
    """The bytes at ``where = [offset, size]``, which must lie inside the payload (and be ``expected`` long)."""
    if not (isinstance(where, list) and len(where) == 2 and all(type(v) is int and v >= 0 for v in where)):
        raise _corrupt(path, f"a blob reference {where!r} is not [offset, size]")
    offset, size = where
    if offset + size > len(payload):
        raise _corrupt(path, f"a blob [{offset}, {size}] reaches past the payload's {len(payload):,} bytes")
    if expected is not None and size != expected:
        raise _corrupt(path, f"a blob holds {size:,} bytes where its shape needs {expected:,}")
    return bytes(payload[offset:offset + size])


def _decode_stream(payload: memoryview, record: Any, count: int, alphabet: int, path: Path) -> np.ndarray:
    if not isinstance(record, dict) or record.get("coding") not in ("raw", "huffman"):
        raise _corrupt(path, "a symbol stream has no known coding")
    if record["coding"] == "raw":
        width = record.get("width")
        if type(width) is not int or not 0 <= width <= 32:
            raise _corrupt(path, f"a fixed-width stream has width {width!r}")
        data = _blob(payload, record.get("data"), path, (count * width + 7) // 8)
        return unpack_fixed(data, width, count)
    bits = record.get("bits")
    data = _blob(payload, record.get("data"), path)
    if type(bits) is not int or not count <= bits <= 8 * len(data):  # every symbol costs at least one bit
        raise _corrupt(path, f"a Huffman stream of {len(data):,} bytes claims {bits!r} bits for {count:,} symbols")
    lengths = decode_lengths(_blob(payload, record.get("table"), path), alphabet)
    return huffman_decode(data, bits, lengths, count)


def _model_from_header(header: dict[str, Any], spec: str | None, path: Path) -> tuple[nn.Module, str]:
    """Build (on the meta device first) the model the header describes; a typed ``spec`` wins over the header's."""
    from slimkit.models import from_spec, is_code_spec

    if spec is None:
        spec = header.get("spec")
        if spec is None:
            raise ModelSpecError(
                f"'{path}' holds a {header.get('model_class', 'user-defined')} model built from the user's own code, "
                "which a container never names: pass the spec it was saved with, "
                "load_compressed(path, spec='path/to/file.py:factory')")
        if not isinstance(spec, str):
            raise _corrupt(path, f"its model spec is {spec!r}, not a registered model name")
        if is_code_spec(spec):
            raise ModelSpecError(f"'{path}' names Python code to import as its model ({spec!r}); slimkit never "
                                 "imports code named by a file it reads: pass spec= yourself if you trust it")
        allow_code = False
    else:
        allow_code = True  # the caller typed it
    with torch.device("meta"):
        skeleton = from_spec(spec, allow_code=allow_code)
    return skeleton, spec


#: the tensor dtypes a container stores, by the name its header gives: plain numbers only (a quantized or packed dtype
#: built from raw bytes crashes the process), never looked up by a name from the file (getattr(torch, name) imports
#: torch submodules)
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                       torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                                       torch.bool)}


def _recorded_shapes(header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every well-formed record's shape by state-dict key (a clustered layer's as its dense weight's); a malformed
    record is left to :func:`_check_shapes`, which names it."""
    shapes = {}
    for record in header["tensors"]:
        if isinstance(record, dict) and isinstance(record.get("key"), str) and _record_shape(record) is not None:
            shapes[record["key"]] = _record_shape(record)
    for record in header["layers"]:
        if isinstance(record, dict) and isinstance(record.get("name"), str) and _record_shape(record) is not None:
            shapes[f"{record['name']}.weight"] = _record_shape(record)
    return shapes


def _record_shape(record: Any) -> tuple[int, ...] | None:
    shape = record.get("shape") if isinstance(record, dict) else None
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        return None
    return tuple(shape)


def _layer_form(module: nn.Module) -> tuple[str, Any] | None:
    """(kind, convolution arguments as JSON keeps them) of a layer clustering can replace, else None."""
    if isinstance(module, nn.Linear):
        return "linear", {}
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":  # a clustered conv pads with zeros
        return "conv2d", {a: list(v) if isinstance(v, tuple) else v for a in CONV_ARGS
                          for v in [getattr(module, a)]}
    return None


def _check_shapes(header: dict[str, Any], skeleton: nn.Module, path: Path) -> None:
    """Every record's shape must be the architecture's, so no size the file declares is allocated unchecked, and
    every clustered layer's kind and convolution arguments the architecture's layer's (a stride or padding the file
    made up would only fail, or allocate absurdly, at the first forward)."""
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for record in header["tensors"]:
        key = record.get("key") if isinstance(record, dict) else None
        if key not in shapes or _record_shape(record) != shapes[key]:
            raise _corrupt(path, f"tensor record {key!r} does not match the model's architecture")
    modules = dict(skeleton.named_modules())
    for record in header["layers"]:
        name = record.get("name") if isinstance(record, dict) else None
        weight = shapes.get(f"{name}.weight")
        form = _layer_form(modules[name]) if isinstance(name, str) and name in modules else None
        if weight is None or _record_shape(record) != weight or form is None:
            raise _corrupt(path, f"clustered layer {name!r} does not match the model's architecture")
        # compared as JSON text: 1.0 == 1 and True == 1 in Python, but a float stride fails at the first forward
        if json.dumps([record.get("kind"), record.get("conv") or {}], sort_keys=True) != json.dumps(form,
                                                                                                    sort_keys=True):
            raise _corrupt(path, f"clustered layer {name!r} is stored as {record.get('kind')!r} with "
                                 f"{record.get('conv')!r}, not as the architecture's {form[0]!r} with {form[1]!r}")
        for key, low, high in (("clusters", 1, 2**16), ("index_bits", 1, 16), ("bits", 1, 16)):
            if type(record.get(key)) is not int or not low <= record[key] <= high:
                raise _corrupt(path, f"clustered layer {name!r} has {key} = {record.get(key)!r}")
        if type(record.get("entries")) is not int or not 0 <= record["entries"] <= math.prod(weight):
            raise _corrupt(path, f"clustered layer {name!r} claims {record.get('entries')!r} stored entries")


def load_compressed(path: str | Path, spec: str | None = None) -> nn.Module:
    """Rebuild the model saved by :func:`save_compressed`: clustered layers come back as
    :class:`~slimkit.share.ClusteredLayer` with the same codebooks and indices, so outputs are bit-identical.

    ``spec`` (typed by the caller) overrides the header's; it is required for a model built from the user's own
    ``file.py:factory``, which a container never names. A damaged file is a :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"compressed model '{path}' {what}: give the .slim file save_compressed wrote")
    raw = path.read_bytes()
    header, payload, version = _read_header(raw, path)
    skeleton, spec = _model_from_header(header, spec, path)
    from slimkit.prune import apply_layout_

    pruned = header.get("pruned_attributes")
    if pruned is not None and version < 4:
        raise _corrupt(path, f"a format-{version} file records a pruned layout, which only format 4 has")
    shapes = None if pruned is None else _recorded_shapes(header)
    if pruned is not None:  # a channel-pruned model: the architecture's layout made the recorded one, checked
        apply_layout_(skeleton, shapes, pruned, f"'{path}'", fix=DAMAGED)
    numel = sum(t.numel() for t in skeleton.state_dict().values())
    if numel > _MAX_VALUES_PER_BYTE * len(raw) + 2**20:
        raise _corrupt(path, f"its model '{spec}' has {numel:,} values, more than a {len(raw):,}-byte container can "
                             "hold")
    _check_shapes(header, skeleton, path)
    from slimkit.models import from_spec

    model = from_spec(spec, allow_code=True)  # the spec is a registered model or the caller's (checked above)
    if pruned is not None:
        apply_layout_(model, shapes, pruned, f"'{path}'", fix=DAMAGED)
    state: dict[str, torch.Tensor] = {}
    for record in header["tensors"]:
        dtype = _DTYPES.get(record.get("dtype")) if isinstance(record.get("dtype"), str) else None
        if dtype is None:
            raise _corrupt(path, f"tensor {record['key']!r} has dtype {record.get('dtype')!r}")
        shape = tuple(record["shape"])
        size = math.prod(shape) * dtype.itemsize
        data = bytearray(_blob(payload, record.get("data"), path, size))
        state[record["key"]] = torch.frombuffer(data, dtype=dtype).reshape(shape) if data else \
            torch.zeros(shape, dtype=dtype)
    try:
        for record in header["layers"]:
            k, shape = record["clusters"], tuple(record["shape"])
            symbols = _decode_stream(payload, record.get("symbols"), record["entries"], k + 1, path)
            gaps = _decode_stream(payload, record.get("gaps"), record["entries"], 2 ** record["index_bits"], path)
            indices = relative_decode(gaps, symbols, math.prod(shape), k).reshape(shape)
            if indices.size and int(indices.max()) > k:
                raise _corrupt(path, f"layer {record['name']!r} has a cluster index past its {k} clusters")
            codebook = torch.frombuffer(bytearray(_blob(payload, record.get("codebook"), path, 4 * k)),
                                        dtype=torch.float32)
            name = record["name"]
            bias = state.get(f"{name}.bias")
            set_submodule(model, name, ClusteredLayer(record["kind"], codebook, torch.from_numpy(indices), bias,
                                                      record.get("conv"), record["bits"], record["index_bits"]))
            state[f"{name}.codebook"] = codebook
            state[f"{name}.indices"] = torch.from_numpy(indices)
    except (DataError, ConfigError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _corrupt(path, str(error)) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"'{path}' does not fit the model '{spec}' ({error}): pass the spec it was saved "
                              "from as load_compressed(path, spec=...)") from None
    setattr(model, SPEC_ATTRIBUTE, spec)
    if pruned is not None:
        _check_runs(model.eval(), spec, path)
    return model.eval()


def _check_runs(model: nn.Module, spec: str, path: Path) -> None:
    """A pruned layout whose sizes and tensors disagree (a damaged or forged file) fails here, as a
    :class:`CheckpointError`, not at the caller's first forward: the model runs once on its spec's example input
    (a model of the user's own code, whose input is not known here, is left to its first forward)."""
    from slimkit.models import is_code_spec

    if is_code_spec(spec):
        return
    try:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        with torch.no_grad():
            model(_example(spec, dtype))
    except Exception as error:
        raise _corrupt(path, f"its pruned layout does not run ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None
