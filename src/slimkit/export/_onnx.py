"""ONNX export of fp32 models and checking the exported file against PyTorch in ONNX Runtime.

Exports are kept in ``$SLIMKIT_CACHE/onnx`` under a digest of everything the file depends on (the weights and
buffers, the module tree and its classes' source files, the example inputs, the exporter's settings and versions):
the checkpoint one command trained and exported is the next command's input, and a language model's export takes
tens of seconds. The digest also covers each module's plain attributes (numbers, strings, flags) and its hooks' code. A
file taken from the cache is first run in ONNX Runtime against the model on the example and on a second input the
digest does not fix: a change the digest cannot see (code in another file) makes it differ there, and the model is
exported again. A model its own fresh export cannot match to 1e-4 (int8 kernels round where PyTorch's fake
quantization does not) has that export's deviation kept beside the file (``<digest>.json``): the cached file passes
when it deviates at most DEVIATION_SLACK times as much. Models with quantized or sparse tensors, or over
EXPORT_CACHE_FILE_BYTES, are not cached.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit._errors import SlimkitError
from slimkit._inputs import input_tuple
from slimkit._io import atomic_write, cache_root, copy_atomic, replace_file, staging_file
from slimkit.analysis import output_logits

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: the export cache keeps this many files (the most recently used), each at most EXPORT_CACHE_FILE_BYTES
EXPORT_CACHE_FILES = 16
EXPORT_CACHE_FILE_BYTES = 256 * 2**20
#: bump when the export's output changes in a way the digest does not show
_EXPORT_CACHE_VERSION = 1
#: a cached file passes the check when it deviates from the model at most this many times as much as the fresh
#: export did (recorded when that was more than the 1e-4 tolerance); the same file on the same inputs gives the
#: same numbers, the slack covers a PyTorch rounding that moves one quantized activation by a step
DEVIATION_SLACK = 1.5


class ExportError(SlimkitError):
    """A model could not be exported to ONNX, or the exported file does not match PyTorch."""


class LogitsOnly(nn.Module):
    """A Hugging Face model as a plain tensor-in, logits-out module for export: no KV cache is built or returned
    (``use_cache=False``) and the output object's ``.logits`` is the one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:  # named arguments (not *args), so torch.export can take per-input dynamic shapes
            return output_logits(self.model(input_ids, use_cache=False))
        return output_logits(self.model(input_ids, attention_mask=attention_mask, use_cache=False))


def exportable(model: nn.Module) -> nn.Module:
    """``model`` itself, or wrapped in :class:`LogitsOnly` when it is a Hugging Face model whose forward builds a KV
    cache or returns an output object (exporters take tensors and tuples of tensors only)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict") and getattr(config, "use_cache", None) is not None:
        return LogitsOnly(model)
    return model


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    cache: bool = True,
) -> Path:
    """Export ``model`` (in eval mode, the caller's object untouched) to ``path``, written atomically.

    Uses the TorchScript-based exporter, which is fast and handles every layer slimkit produces, and falls back to
    the ``torch.export``-based exporter (opset 18 at least) when the former fails; Hugging Face language models
    take the opposite order. Inputs are named ``input`` (``input_1``, ...),
    outputs ``output``; the batch dimension is dynamic unless ``dynamic_batch=False``. A Hugging Face language model
    is exported as token ids → logits, without its KV cache (see :func:`exportable`). With ``cache`` an earlier
    export of the same model is reused once ONNX Runtime confirms it (see the module's docstring).
    """
    inputs = input_tuple(example_inputs)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = exportable(copy.deepcopy(model).eval())
    key = _export_key(model, inputs, dynamic_batch, opset) if cache else None
    checks = _cache_checks(key, model, inputs) if key is not None else None
    if checks is not None and _from_cache(key, checks, target):
        return target
    input_names = ["input"] + [f"input_{i}" for i in range(1, len(inputs))]
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, "output"]} if dynamic_batch else None
    tmp = str(staging_file(target, ".onnx"))
    def torchscript() -> None:
        with quiet_exporters():
            torch.onnx.export(
                model, inputs, tmp, dynamo=False, input_names=input_names, output_names=["output"],
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
            )

    def dynamo() -> None:
        _export_dynamo(model, inputs, tmp, input_names, dynamic_batch, opset)

    # transformers' attention-mask code defeats the TorchScript exporter (aten::diff), which then prints its whole
    # graph to stdout from C++: language models go to torch.export first
    exporters = (dynamo, torchscript) if isinstance(model, LogitsOnly) else (torchscript, dynamo)
    try:
        try:
            exporters[0]()
        except OSError:
            raise  # the disk, not the model (e.g. no space left): main() names it and the fix
        except Exception as first_error:
            log.info("ONNX export by %s failed (%s); trying %s", exporters[0].__name__, first_error,
                     exporters[1].__name__)
            try:
                exporters[1]()
            except OSError:
                raise
            except Exception as second_error:
                raise ExportError(
                    f"could not export {type(model).__name__} to ONNX: {first_error} / {second_error}. "
                    "Replace data-dependent Python control flow in forward() with tensor ops, or export a submodule."
                ) from second_error
        replace_file(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if key is not None:
        _to_cache(key, target, checks)
    return target


def _export_key(model: nn.Module, inputs: tuple, dynamic_batch: bool, opset: int) -> str | None:
    """SHA-256 of what an export depends on (see the module's docstring); None for a model the cache does not take
    (its file would exceed EXPORT_CACHE_FILE_BYTES, or it holds tensors that are not dense CPU-readable ones)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    if sum(t.numel() * t.element_size() for _, t in tensors) > EXPORT_CACHE_FILE_BYTES:
        return None
    try:
        return _digest(model, inputs, dynamic_batch, opset, tensors)
    except (RuntimeError, TypeError, NotImplementedError):  # quantized, sparse, meta tensors: exported uncached
        return None


def _digest(model: nn.Module, inputs: tuple, dynamic_batch: bool, opset: int, tensors: list) -> str:
    from slimkit import __version__

    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            digest.update(str(part).encode())
            digest.update(b"\0")

    def add_tensor(name: str, tensor: torch.Tensor) -> None:
        add(name, tensor.dtype, tuple(tensor.shape))
        if tensor.numel():
            # a fresh tensor: a size-1 axis may carry stride 0 in a "contiguous" one, which cannot be viewed as bytes
            dense = tensor.detach().cpu()
            dense = dense.new_empty(dense.shape).copy_(dense)
            digest.update(dense.reshape(-1).view(torch.uint8).numpy())

    add(_EXPORT_CACHE_VERSION, __version__, torch.__version__, _onnx_versions(), opset, dynamic_batch, repr(model))
    config = getattr(getattr(model, "model", model), "config", None)
    if hasattr(config, "to_json_string"):
        add(config.to_json_string())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        add(cls.__module__, cls.__qualname__, _source_digest(cls))
    for name, module in model.named_modules():
        # plain attributes a forward may read (a clip value, a flag), and hooks, by their code
        add(name, sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and _plain(v)))
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            add(name, [_code_digest(hook) for hook in hooks.values()])
    for i, tensor in enumerate(inputs):
        add_tensor(f"input {i}", tensor)
    for name, tensor in tensors:
        add_tensor(name, tensor)
    return digest.hexdigest()


def _plain(value: object) -> bool:
    """A number, string, flag or None, or a tuple / list of them (reprs that are the same in every process)."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def _code_digest(function: object) -> str:
    code = getattr(function, "__code__", None)
    if code is None and callable(function):  # a callable object: its class's __call__
        code = getattr(type(function).__call__, "__code__", None)
    if code is None:
        return repr(function)
    return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _onnx_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("onnx", "onnxscript", "onnx-ir", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{package} {version(package)}")
    return ", ".join(found)


def _source_digest(cls: type) -> str:
    """The digest of the file that defines ``cls`` (its forward may call anything in it), "" when there is none."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # a built-in class
        return ""
    if path is None or not os.path.isfile(path):
        return ""
    stat = os.stat(path)
    return _file_digest(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cache_checks(key: str, model: nn.Module, inputs: tuple) -> list[tuple[tuple, np.ndarray]] | None:
    """What a file cached under ``key`` must compute: ``model``'s outputs on the example and on inputs the digest does
    not fix; None when nothing is cached under ``key`` or the model cannot run on them."""
    if not (cache_root() / "onnx" / f"{key}.onnx").is_file():
        return None
    checks = []
    try:
        checked = copy.deepcopy(model)  # a forward may change state (an observer): not on the model to export
        for check in (inputs, _other_inputs(inputs)):
            with torch.no_grad():
                checks.append((check, output_logits(checked(*check)).detach().cpu().numpy()))
    except Exception as error:  # the export will name a model that cannot run; here it only costs the cache
        log.info("could not check the cached export against the model (%s): exporting again", error)
        return None
    return checks


def _deviations(path: Path, checks: list[tuple[tuple, np.ndarray]]) -> list[tuple[float, bool]] | None:
    """Per check: the largest absolute difference between ``path`` in ONNX Runtime and the expected output, and
    whether every element is within 1e-4 (rtol, and atol 1e-4 · (1 + the largest output)); None when an output's
    shape or dtype differs."""
    found = []
    for check, expected in checks:
        got = run_onnx(path, check)
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return None
        close = np.allclose(got, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max(initial=0.0)))
        found.append((float(np.max(np.abs(got - expected), initial=0.0)), bool(close)))
    return found


def self_contained_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable ONNX file that keeps every tensor inside itself, as every file slimkit writes
    does. A file slimkit finds in its cache or a run folder that names external data is not one of its own, and its
    data paths (read by ONNX Runtime and onnx.load, which check them for escapes only in recent releases) could name
    any file on the machine; callers export such a file, or a damaged one, again rather than run it."""
    import onnx
    from google.protobuf.message import Message

    def external(message: Message) -> bool:  # every tensor anywhere: graphs, functions, attributes, sparse tensors
        if isinstance(message, onnx.TensorProto) and (message.data_location == onnx.TensorProto.EXTERNAL
                                                      or len(message.external_data)):
            return True
        for field, value in message.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if any(external(item) for item in ([value] if isinstance(value, Message) else value)):
                return True
        return False

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # missing, unreadable or not ONNX (protobuf's DecodeError, onnx's own): not a file to run
        return False
    return not external(model)


def _from_cache(key: str, checks: list[tuple[tuple, np.ndarray]], target: Path) -> bool:
    """Copy the export cached under ``key`` to ``target`` if it computes what the model does on ``checks``: within
    1e-4, or within DEVIATION_SLACK times the deviation its fresh export had."""
    cached = cache_root() / "onnx" / f"{key}.onnx"
    try:
        if not self_contained_onnx(cached):
            log.info("the cached export %s is damaged or names external data files, which slimkit never writes: "
                     "exporting again", cached.name)
            return False
        deviations = _deviations(cached, checks)
        recorded = _recorded_deviations(key, len(checks))
        if deviations is None or not all(close or found <= DEVIATION_SLACK * allowed
                                         for (found, close), allowed in zip(deviations, recorded, strict=True)):
            log.info("the cached export %s does not compute what the model does: exporting again", cached.name)
            return False
        copy_atomic(cached, target)
        os.utime(cached)  # most recently used
    except Exception as error:  # an unreadable cache entry only costs the export
        log.info("the cached export %s is unusable (%s): exporting again", cached.name, error)
        return False
    return True


def _recorded_deviations(key: str, count: int) -> list[float]:
    """The deviations kept beside the cached file of ``key`` (zeros when there are none or they are unreadable)."""
    sidecar = cache_root() / "onnx" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(sidecar.read_text())
        values = record.get("deviations") if isinstance(record, dict) else None
        if (isinstance(values, list) and len(values) == count
                and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values)):
            return [float(v) for v in values]
    return [0.0] * count


def _fresh_deviations(exported: Path, checks: list[tuple[tuple, np.ndarray]]) -> list[tuple[float, bool]] | None:
    try:
        return _deviations(exported, checks)
    except Exception as error:  # the file was exported and is returned; only the cache's check goes without
        log.info("could not run the fresh export %s for the cache (%s)", exported.name, error)
        return None


def _other_inputs(inputs: tuple) -> tuple:
    """Inputs the cache key does not fix, of the example's shapes and kinds: wider-ranged values for float inputs,
    the example's own values shuffled for integer ones (token ids stay in the vocabulary)."""
    generator = torch.Generator().manual_seed(0)
    other = []
    for t in inputs:
        if t.is_floating_point():
            spread = float(t.abs().max()) if t.numel() else 1.0
            other.append(torch.randn(t.shape, generator=generator).to(t.dtype) * 3 * (spread or 1.0))
        else:
            flat = t.reshape(-1)
            other.append(flat[torch.randperm(flat.numel(), generator=generator)].reshape(t.shape))
    return tuple(other)


def _to_cache(key: str, exported: Path, checks: list[tuple[tuple, np.ndarray]] | None) -> None:
    """Keep ``exported`` under ``key``. ``checks`` (those the file cached before failed): when the fresh export
    itself deviates from them beyond 1e-4, its deviations are kept beside it for the next check."""
    folder = cache_root() / "onnx"
    try:
        if exported.stat().st_size > EXPORT_CACHE_FILE_BYTES:
            return
        folder.mkdir(parents=True, exist_ok=True)
        sidecar = folder / f"{key}.json"
        sidecar.unlink(missing_ok=True)  # the deviations of the file replaced
        copy_atomic(exported, folder / f"{key}.onnx")
        deviations = _fresh_deviations(exported, checks) if checks else None
        if deviations is not None and not all(close for _, close in deviations):
            with atomic_write(sidecar, "w") as handle:
                json.dump({"deviations": [found for found, _ in deviations]}, handle)
        kept = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[EXPORT_CACHE_FILES:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        for tmp in folder.glob(".*.tmp"):  # left by a process killed mid-copy
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)
    except OSError as error:  # a read-only or full cache only costs time
        log.info("could not keep the export in %s: %s", folder, error)


#: the torch.export-based exporter only implements opset 18 and up; asked for less it logs a failed down-conversion
DYNAMO_MIN_OPSET = 18
#: loggers that narrate the exporters' internal fallbacks (with their tracebacks) as warnings on a successful export
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
                     "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporters():
    """Hold back the exporters' own warnings: a user whose export succeeded must not read tracebacks of the
    exporter's internal retries on stderr; when both exporters fail, ExportError says why."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_dynamo(
    model: nn.Module, inputs: tuple, path: str, input_names: list[str], dynamic_batch: bool, opset: int
) -> None:
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} for _ in inputs)
        # torch.export treats a size-1 dimension as the constant 1: trace a batch of 2 so the batch stays dynamic
        inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() and t.shape[0] == 1 else t for t in inputs)
    with quiet_exporters():
        program = torch.onnx.export(
            model, inputs, dynamo=True, input_names=input_names, output_names=["output"],
            dynamic_shapes=shapes, opset_version=max(opset, DYNAMO_MIN_OPSET),
        )
        program.save(path, external_data=False)


def run_onnx(path: str | os.PathLike, inputs: torch.Tensor | Sequence[torch.Tensor], threads: int = 2) -> np.ndarray:
    """Run an ONNX file in ONNX Runtime (CPU) and return its first output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # threads that spin while waiting collapse on a shared machine (see slimkit.cli); this is a check, not a timing
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), input_tuple(inputs))}
    return session.run(None, feed)[0]


def onnx_max_abs_diff(
    model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor | Sequence[torch.Tensor]
) -> float:
    """The largest absolute difference between ``model`` in PyTorch and the ONNX file in ONNX Runtime."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = output_logits(model(*input_tuple(inputs)))
    finally:
        model.train(was_training)
    got = run_onnx(path, inputs)
    return float(np.max(np.abs(got - expected.detach().cpu().numpy())))
