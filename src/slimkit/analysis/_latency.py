"""Real latency: median, p10 and p90 of repeated runs after warm-up, at a fixed thread count.

Latency is noisy on shared machines, so the number to report is a ratio to a baseline measured in the same run:
:func:`compare_latency` interleaves the two models' repeats so that drift in machine load hits both alike.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._inputs import input_tuple

#: ONNX Runtime blocks per model in compare_latency (each in a fresh session)
ORT_ROUNDS = 5

ModelOrPath = nn.Module | str | os.PathLike


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds per call of the whole batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    backend: str
    threads: int
    batch_size: int
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyComparison:
    """Baseline and candidate measured in one interleaved run; ``speedup`` = baseline / candidate median."""

    baseline: LatencyResult
    candidate: LatencyResult

    @property
    def ratio(self) -> float:
        """Candidate latency as a fraction of the baseline's (0.5 = twice as fast)."""
        return self.candidate.median_ms / self.baseline.median_ms

    @property
    def speedup(self) -> float:
        return self.baseline.median_ms / self.candidate.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict(), "ratio": self.ratio}


def _torch_runner(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], None]:
    model = model.eval()

    def run() -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                model(*inputs)
        finally:
            torch.set_num_threads(previous)

    return run


def _onnx_runner(path: str | os.PathLike, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], None]:
    """An ONNX Runtime session as deployed (default thread spinning on). Only one may be alive while timing: an
    idle session's spinning workers steal the cores from the timed one (a 30× distortion measured at batch 64),
    and turning spinning off instead penalises graphs of many small ops (int8 LeNet-5 looked 1.15× slower than
    fp32 that way, 1.4× faster as deployed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}

    def run() -> None:
        session.run(None, feed)

    return run


def _as_onnx(model: ModelOrPath, inputs: tuple[torch.Tensor, ...], workdir: Path) -> str | os.PathLike:
    if not isinstance(model, nn.Module):
        return model
    from slimkit.export import export_onnx

    path = workdir / f"model_{id(model)}.onnx"
    export_onnx(model, inputs, path, dynamic_batch=False)
    return path


def _make_runner(
    model: ModelOrPath, inputs: tuple[torch.Tensor, ...], backend: str, threads: int, workdir: Path
) -> Callable[[], None]:
    if backend == "torch":
        if not isinstance(model, nn.Module):
            raise ConfigError("backend='torch' needs an nn.Module; for an .onnx file use backend='onnxruntime'")
        return _torch_runner(model, inputs, threads)
    if backend == "onnxruntime":
        return _onnx_runner(_as_onnx(model, inputs, workdir), inputs, threads)
    raise ConfigError(f"unknown latency backend '{backend}': use 'torch' or 'onnxruntime'")


def _summarise(samples: list[float], backend: str, threads: int, batch: int) -> LatencyResult:
    arr = np.asarray(samples) * 1e3
    return LatencyResult(
        median_ms=float(statistics.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        backend=backend,
        threads=threads,
        batch_size=batch,
        repeats=len(samples),
    )


def _check(threads: int, warmup: int, repeats: int) -> None:
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs threads ≥ 1, repeats ≥ 1, warmup ≥ 0 (got {threads}, {repeats}, {warmup})")


def latency(
    model: ModelOrPath,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "torch",
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
) -> LatencyResult:
    """Time ``model`` (an ``nn.Module``, or an ``.onnx`` path with ``backend="onnxruntime"``) on ``example_inputs``.

    A module measured with ``backend="onnxruntime"`` is exported to a temporary ONNX file first.
    """
    _check(threads, warmup, repeats)
    inputs = input_tuple(example_inputs)
    with tempfile.TemporaryDirectory(prefix="slimkit-latency-") as tmp:
        run = _make_runner(model, inputs, backend, threads, Path(tmp))
        for _ in range(warmup):
            run()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return _summarise(samples, backend, threads, inputs[0].shape[0])


def compare_latency(
    baseline: ModelOrPath,
    candidate: ModelOrPath,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "torch",
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
) -> LatencyComparison:
    """Measure two models in one run and return both results and their ratio.

    PyTorch: repeats alternate between the two models. ONNX Runtime: the two alternate in blocks (up to
    :data:`ORT_ROUNDS` per model), each block in a session of its own that is closed before the other model's
    starts, so neither session's idle threads spin against the other while both still see the same machine state.
    """
    _check(threads, warmup, repeats)
    inputs = input_tuple(example_inputs)
    samples: list[list[float]] = [[], []]
    with tempfile.TemporaryDirectory(prefix="slimkit-latency-") as tmp:
        if backend == "onnxruntime":
            paths = [_as_onnx(m, inputs, Path(tmp)) for m in (baseline, candidate)]
            rounds = min(ORT_ROUNDS, repeats)
            for r in range(rounds):
                block = repeats // rounds + (1 if r < repeats % rounds else 0)
                for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                    run = _onnx_runner(paths[k], inputs, threads)
                    for _ in range(max(1, warmup // rounds)):
                        run()
                    for _ in range(block):
                        start = time.perf_counter()
                        run()
                        samples[k].append(time.perf_counter() - start)
                    del run
        else:
            runners = [_make_runner(m, inputs, backend, threads, Path(tmp)) for m in (baseline, candidate)]
            for _ in range(warmup):
                for run in runners:
                    run()
            for i in range(repeats):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    start = time.perf_counter()
                    runners[k]()
                    samples[k].append(time.perf_counter() - start)
    batch = inputs[0].shape[0]
    return LatencyComparison(
        baseline=_summarise(samples[0], backend, threads, batch),
        candidate=_summarise(samples[1], backend, threads, batch),
    )
