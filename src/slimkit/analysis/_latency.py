"""Real latency in a real runtime, and comparisons that refuse to report noise.

:func:`latency` times one model (median, p10, p90 after warm-up, at a fixed thread count). :func:`compare_latency`
is the number to publish: the candidate's latency as a ratio to a baseline measured in the same run, with an A/A
control. The runners stay alive for the whole comparison: the baseline A, a separate instance of the baseline A′
(other ONNX Runtime sessions or OpenVINO compiled models of the same file, or a deep copy of the module) and the
candidate B — each model in :data:`SESSIONS` sessions under ONNX Runtime (compiled models under OpenVINO) — and, in
:func:`compare_latency_many`, further candidates beside B. Every round runs each runner once, in an order drawn per
round from a seeded RNG, and every call is timed; the ratios are taken per round (B/A and A′/A), so drift in machine
load hits both sides of each ratio alike. A comparison whose A/A median ratio leaves :data:`AA_BAND`, or whose A/A
median is too uncertain to tell (its 95 % distribution-free confidence interval reaches outside the band), is
reported as ``"too noisy"`` and carries no ratio: the machine could not tell the baseline from itself, so it cannot
tell the candidate from the baseline. The second condition matters with few rounds: nine rounds of heavy noise can
land an A/A median on 1.00 by luck while its interval spans 0.3–3.

The A/A control follows the practice of online experiments (Kohavi, Tang & Xu, *Trustworthy Online Controlled
Experiments*, 2020, ch. 19) and of interleaved benchmarking (Mytkowicz et al., *Producing Wrong Data Without Doing
Anything Obviously Wrong!*, ASPLOS 2009; Georges et al., *Statistically Rigorous Java Performance Evaluation*,
OOPSLA 2007).

Threads. ONNX Runtime sessions run with intra-op and inter-op thread spinning off (``session.intra_op.allow_spinning
= 0``): with three sessions alive, a spinning idle pool steals the cores from the one being timed. The thread count
is explicit and defaults to :data:`DEFAULT_THREADS` = 1: one thread per session cannot oversubscribe a shared
machine, has no thread-pool wake-up cost (which spinning off would otherwise add to every op of a small graph), and
makes the ratio a measure of the work the model does. Pass ``threads=os.cpu_count()`` for the figure of a
dedicated multi-core deployment; the thread count is recorded in every result.

``backend="openvino"`` times the same ONNX file in OpenVINO's CPU runtime (an optional dependency), compiled as
:func:`slimkit.analysis._openvino.openvino_compiled` says: fp32 float arithmetic, one stream, ``threads``
inference threads, no pinning.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._inputs import input_tuple
from slimkit._runtimes import RUNTIMES, require_runtime
from slimkit.analysis._openvino import openvino_runner

#: the A/A control's median ratio must lie in this closed band for a comparison to carry a ratio
AA_BAND = (0.9, 1.1)
#: ONNX Runtime sessions per model in :func:`compare_latency`. One session's speed can sit in one of two modes for
#: its whole life: LeNet-5's int8 file at batch 64, timed in 8 fresh sessions, ran 2.25–2.60 ms in six and 3.40 ms
#: in two, each stable within its session (a one-session comparison read the same model at 0.45 and at 0.56 of the
#: baseline in two runs). Each model's time is the mean over its sessions, and the A/A control's sessions show how
#: much the draw still moves it.
SESSIONS = 3
#: threads per session (ONNX Runtime intra-op, OpenVINO inference threads) or for the process (PyTorch) unless the
#: caller says otherwise
DEFAULT_THREADS = 1
#: status of a comparison whose A/A control lies inside :data:`AA_BAND`
OK = "ok"
#: status (and the text every printer shows instead of a ratio) when the A/A control leaves :data:`AA_BAND`
TOO_NOISY = "too noisy"
#: backends that time an ONNX file (a module is exported first) in live instances: sessions, compiled models
ONNX_BACKENDS = tuple(RUNTIMES)
BACKENDS = ("torch", *ONNX_BACKENDS)

ModelOrPath = nn.Module | str | os.PathLike
Runner = Callable[[], object]
Clock = Callable[[], float]


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
    """A baseline (A), a separate copy of it (A′, the control) and a candidate (B) timed interleaved in one run.

    ``ratio`` is the median over rounds of the paired ratio B/A (0.5 = twice as fast), ``ratio_p10`` /
    ``ratio_p90`` the 10th and 90th percentiles of the paired ratios (their spread) and ``ratio_ci`` the 95 %
    confidence interval of the median (its precision); ``aa_*`` are the same for A′/A. When ``aa_ratio`` or
    ``aa_ci`` leaves :data:`AA_BAND` the status is :data:`TOO_NOISY` and ``ratio``, its spread and interval are
    None. ``sessions``: runtime sessions (ONNX Runtime) or compiled models (OpenVINO) per model, a round's time of
    each model the mean over its sessions.
    """

    baseline: LatencyResult
    candidate: LatencyResult
    control: LatencyResult
    ratio: float | None
    ratio_p10: float | None
    ratio_p90: float | None
    ratio_ci: tuple[float, float] | None
    aa_ratio: float
    aa_p10: float
    aa_p90: float
    aa_ci: tuple[float, float]
    status: str
    seed: int
    sessions: int = 1

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def speedup(self) -> float | None:
        """Baseline / candidate (2.0 = twice as fast), None when too noisy."""
        return None if self.ratio is None else 1.0 / self.ratio

    def record(self) -> dict[str, Any]:
        """The flat JSON record a run folder or a benchmark keeps: the ratio, its spread and 95 % interval, the A/A
        control, the status, the setting (threads, batch, rounds, sessions) and both medians in ms."""
        return {"ratio": self.ratio, "p10": self.ratio_p10, "p90": self.ratio_p90,
                "ci": None if self.ratio_ci is None else list(self.ratio_ci), "aa": self.aa_ratio,
                "aa_p10": self.aa_p10, "aa_p90": self.aa_p90, "status": self.status, "threads": self.baseline.threads,
                "batch": self.baseline.batch_size, "rounds": self.baseline.repeats, "sessions": self.sessions,
                "baseline_ms": self.baseline.median_ms, "candidate_ms": self.candidate.median_ms}

    def text(self, digits: int = 2) -> str:
        """``"0.27 (0.25–0.30)"``: the ratio and its p10–p90 spread, or ``"too noisy"``."""
        return format_ratio(self.ratio, self.status, self.ratio_p10, self.ratio_p90, digits=digits)

    def aa_text(self, digits: int = 2) -> str:
        """``"1.01 (0.97–1.04)"``: the A/A control's median ratio and spread (always a number)."""
        return format_ratio(self.aa_ratio, OK, self.aa_p10, self.aa_p90, digits=digits)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "ratio_p10": self.ratio_p10, "ratio_p90": self.ratio_p90,
                "ratio_ci": None if self.ratio_ci is None else list(self.ratio_ci), "aa_ratio": self.aa_ratio,
                "aa_p10": self.aa_p10, "aa_p90": self.aa_p90, "aa_ci": list(self.aa_ci), "status": self.status,
                "seed": self.seed, "baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict(),
                "control": self.control.to_dict()}


def format_ratio(ratio: float | None, status: str | None = OK, p10: float | None = None, p90: float | None = None,
                 *, digits: int = 2) -> str:
    """How every printer shows a latency ratio: ``"too noisy"`` when the A/A control failed, ``"–"`` when nothing
    was measured, else the ratio with its p10–p90 spread when one is given."""
    if status == TOO_NOISY:
        return TOO_NOISY
    if ratio is None:
        return "–"
    if p10 is None or p90 is None:
        return f"{ratio:.{digits}f}"
    return f"{ratio:.{digits}f} ({p10:.{digits}f}–{p90:.{digits}f})"


# --- runners: one zero-argument callable per live instance ----------------------------------------------------------


def _onnx_session(path: str | os.PathLike, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle pools must sleep, not spin: several sessions are alive while one is timed
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_runner(path: str | os.PathLike, inputs: tuple[torch.Tensor, ...], threads: int) -> Runner:
    session = _onnx_session(path, threads)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ConfigError(f"{path} takes {len(names)} input(s) ({', '.join(names)}) but {len(inputs)} example "
                          "input(s) were given: pass one tensor per model input")
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}

    def run() -> object:
        return session.run(None, feed)

    return run


def _torch_runner(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
    def run() -> object:
        with torch.inference_mode():
            return model(*inputs)

    return run


_ONNX_RUNNERS: dict[str, Callable[[str | os.PathLike, tuple[torch.Tensor, ...], int], Runner]] = {
    "onnxruntime": _onnx_runner, "openvino": openvino_runner}


def export_for_timing(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | os.PathLike) -> Path:
    """``model`` (a copy, in eval mode) as an ONNX file at these fixed input shapes, for timing only.

    The TorchScript-based ``torch.onnx.export``, opset 17, constant folding: what ``slimkit.export.export_onnx``
    writes for a plain module. That exporter (Hugging Face wrapping, the ``torch.export`` fallback, atomic writes)
    sits above ``analysis`` in the package layers, so a model it alone can export is timed from its ``.onnx``
    file."""
    model = copy.deepcopy(model).eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, do_constant_folding=True)
    except OSError:
        raise
    except Exception as error:
        raise ConfigError(f"latency: {type(model).__name__} could not be exported to ONNX for timing "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}): export it "
                          "with slimkit.export.export_onnx and pass the .onnx path") from None
    return Path(path)


def _as_onnx(model: ModelOrPath, inputs: tuple[torch.Tensor, ...], workdir: Path, name: str) -> str | os.PathLike:
    if not isinstance(model, nn.Module):
        if not Path(model).is_file():
            raise ConfigError(f"latency: no ONNX file at {model}: give an existing .onnx path or an nn.Module")
        return model
    return export_for_timing(model, inputs, workdir / f"{name}.onnx")


def _check(model: ModelOrPath, backend: str, threads: int, warmup: int, repeats: int) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown latency backend '{backend}': use one of {', '.join(BACKENDS)}")
    if backend in ONNX_BACKENDS:
        require_runtime(backend, "backend")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"latency threads={threads!r}: use a whole number ≥ 1 (e.g. 1, or os.cpu_count())")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs repeats ≥ 1 and warmup ≥ 0 (got repeats={repeats}, warmup={warmup})")
    if backend == "torch" and not isinstance(model, nn.Module):
        raise ConfigError("backend='torch' needs an nn.Module; for an .onnx file use backend='onnxruntime'")


class _TorchState:
    """For a PyTorch measurement: the (process-wide) intra-op thread count and eval mode of the timed modules, both
    restored afterwards (the caller's model leaves as it came)."""

    def __init__(self, threads: int, models: Sequence[ModelOrPath], active: bool) -> None:
        self.threads, self.active, self.previous = threads, active, torch.get_num_threads()
        modules = [m for m in models if isinstance(m, nn.Module)] if active else []
        self.modes = [(sub, sub.training) for m in modules for sub in m.modules()]

    def __enter__(self) -> None:
        if self.active:
            torch.set_num_threads(self.threads)
            for sub, _ in self.modes:
                sub.training = False

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.previous)
            for sub, mode in self.modes:
                sub.training = mode


def _summarise(samples: Sequence[float], backend: str, threads: int, batch: int) -> LatencyResult:
    arr = np.asarray(samples, dtype=np.float64) * 1e3
    return LatencyResult(
        median_ms=float(np.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        backend=backend,
        threads=threads,
        batch_size=batch,
        repeats=len(arr),
    )


def latency(
    model: ModelOrPath,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "torch",
    threads: int = DEFAULT_THREADS,
    warmup: int = 10,
    repeats: int = 50,
) -> LatencyResult:
    """Time ``model`` (an ``nn.Module``, or an ``.onnx`` path with ``backend="onnxruntime"`` or ``"openvino"``) on
    ``example_inputs``.

    A module measured in ONNX Runtime or OpenVINO (CPU, fp32: see ``slimkit.analysis._openvino``) is exported to a
    temporary ONNX file first. An absolute time depends on the machine's load; to compare two models use
    :func:`compare_latency`.
    """
    _check(model, backend, threads, warmup, repeats)
    inputs = input_tuple(example_inputs)
    torch_state = _TorchState(threads, [model], backend == "torch")
    with tempfile.TemporaryDirectory(prefix="slimkit-latency-") as tmp, torch_state:
        if backend == "torch":
            run = _torch_runner(model, inputs)  # type: ignore[arg-type]
        else:
            run = _ONNX_RUNNERS[backend](_as_onnx(model, inputs, Path(tmp), "model"), inputs, threads)
        for _ in range(warmup):
            run()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return _summarise(samples, backend, threads, int(inputs[0].shape[0]))


def interleave(runners: Sequence[Runner], *, warmup: int, repeats: int, seed: int = 0,
               clock: Clock = time.perf_counter) -> list[list[float]]:
    """Seconds per call of each runner over ``repeats`` rounds; each round calls every runner once, in an order
    drawn from ``random.Random(seed)``, after ``warmup`` untimed rounds. ``clock`` is injectable for tests."""
    rng = random.Random(seed)
    order = list(range(len(runners)))
    for _ in range(warmup):
        for k in order:
            runners[k]()
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        rng.shuffle(order)
        for k in order:
            start = clock()
            runners[k]()
            samples[k].append(clock() - start)
    return samples


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks (lo, hi) in the sorted sample of a distribution-free confidence interval of the median: the
    order statistics x_(r), x_(n+1−r) (1-based) with r the largest rank such that P(Bin(n, ½) ≤ r − 1) ≤
    (1 − confidence)/2 (Conover, *Practical Nonparametric Statistics*, 3rd ed., §3.2). For samples too small for
    such an interval (n ≤ 5 at 95 %) the whole range is returned."""
    alpha = (1.0 - confidence) / 2
    tail, rank = 0.0, 0
    while rank <= n:
        log_term = math.lgamma(n + 1) - math.lgamma(rank + 1) - math.lgamma(n - rank + 1) - n * math.log(2.0)
        tail += math.exp(log_term)
        if tail > alpha:
            break
        rank += 1
    lo = min(max(rank - 1, 0), (n - 1) // 2)
    return lo, n - 1 - lo


def _paired(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float, tuple]:
    ratios = np.sort(np.asarray(numerator, dtype=np.float64)
                     / np.maximum(np.asarray(denominator, dtype=np.float64), 1e-12))
    lo, hi = median_ci_ranks(len(ratios))
    return (float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)),
            (float(ratios[lo]), float(ratios[hi])))


def comparison_from_samples(samples: Sequence[Sequence[float]], *, backend: str, threads: int, batch_size: int,
                            seed: int = 0, sessions: int = 1) -> LatencyComparison:
    """The comparison of per-round samples ``[A, A′, B]`` (seconds): paired ratios, A/A control and status. With
    ``sessions`` > 1 the samples are ``sessions`` runners of A, then of A′, then of B, and a round's time of each
    model is the mean over its runners."""
    if sessions > 1:
        samples = [np.mean(np.asarray(samples[i:i + sessions], dtype=np.float64), axis=0).tolist()
                   for i in range(0, 3 * sessions, sessions)]
    base, control, cand = samples
    ratio, r10, r90, rci = _paired(cand, base)
    aa, aa10, aa90, aaci = _paired(control, base)
    inside = AA_BAND[0] <= aa <= AA_BAND[1] and AA_BAND[0] <= aaci[0] and aaci[1] <= AA_BAND[1]
    status = OK if inside else TOO_NOISY
    if status != OK:
        ratio = r10 = r90 = rci = None  # type: ignore[assignment]
    return LatencyComparison(
        baseline=_summarise(base, backend, threads, batch_size),
        candidate=_summarise(cand, backend, threads, batch_size),
        control=_summarise(control, backend, threads, batch_size),
        ratio=ratio, ratio_p10=r10, ratio_p90=r90, ratio_ci=rci, aa_ratio=aa, aa_p10=aa10, aa_p90=aa90, aa_ci=aaci,
        status=status, seed=seed, sessions=sessions,
    )


def compare_latency(
    baseline: ModelOrPath,
    candidate: ModelOrPath,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "torch",
    threads: int = DEFAULT_THREADS,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
    clock: Clock = time.perf_counter,
    sessions: int = SESSIONS,
) -> LatencyComparison:
    """Time ``candidate`` against ``baseline`` interleaved, with an A/A control, and return the paired ratio.

    Both may be ``nn.Module`` s or (with ``backend="onnxruntime"`` or ``"openvino"``) ``.onnx`` paths; modules are
    exported first. In ONNX Runtime each model runs in ``sessions`` sessions (see :data:`SESSIONS`; in OpenVINO, as many
    compiled models) and the control A′ in as many more of the baseline's file; in PyTorch A′ is a deep copy of the
    module (one of each). ``repeats`` rounds each call every session once in a seeded random order (see
    :func:`interleave`); a model's time in a round is the mean over its sessions, and ``ratio`` is the median of the
    per-round B/A ratios. If the A/A median leaves :data:`AA_BAND` the result says ``status="too noisy"`` and
    ``ratio=None``: rerun on a quieter machine or with more repeats.
    """
    return compare_latency_many(baseline, [candidate], example_inputs, backend=backend, threads=threads,
                                warmup=warmup, repeats=repeats, seed=seed, clock=clock, sessions=sessions)[0]


def compare_latency_many(
    baseline: ModelOrPath,
    candidates: Sequence[ModelOrPath],
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "torch",
    threads: int = DEFAULT_THREADS,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
    clock: Clock = time.perf_counter,
    sessions: int = SESSIONS,
) -> list[LatencyComparison]:
    """:func:`compare_latency` of several candidates against one baseline in one interleaved run: every round calls
    the baseline's sessions, the A/A control's and every candidate's once, in a seeded random order, and each
    candidate's ratio is paired with the baseline's time in the same round. One control serves every candidate
    (each result carries it), and the baseline and control are timed once for all of them instead of once per
    candidate: k candidates cost k + 2 models' runs per round instead of 3k. Keep k small where a model runs long
    (a round's length is the span over which load drift can differ between a candidate and the baseline)."""
    _check(baseline, backend, threads, warmup, repeats)
    for candidate in candidates:
        _check(candidate, backend, threads, warmup, repeats)
    if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
        raise ConfigError(f"latency sessions={sessions!r}: use a whole number ≥ 1")
    if not candidates:
        return []
    sessions = sessions if backend in ONNX_BACKENDS else 1
    inputs = input_tuple(example_inputs)
    torch_state = _TorchState(threads, [baseline, *candidates], backend == "torch")
    with tempfile.TemporaryDirectory(prefix="slimkit-latency-") as tmp, torch_state:
        if backend in ONNX_BACKENDS:
            base_path = _as_onnx(baseline, inputs, Path(tmp), "baseline")
            paths = [_as_onnx(c, inputs, Path(tmp), f"candidate{k}") for k, c in enumerate(candidates)]
            runners = [_ONNX_RUNNERS[backend](path, inputs, threads)
                       for path in (base_path, base_path, *paths) for _ in range(sessions)]
        else:
            control = copy.deepcopy(baseline)
            runners = [_torch_runner(m, inputs)  # type: ignore[arg-type]
                       for m in (baseline, control, *candidates)]
        samples = interleave(runners, warmup=warmup, repeats=repeats, seed=seed, clock=clock)
        del runners  # the sessions live exactly as long as the comparison
    both = samples[:2 * sessions]
    return [comparison_from_samples([*both, *samples[(2 + k) * sessions:(3 + k) * sessions]], backend=backend,
                                    threads=threads, batch_size=int(inputs[0].shape[0]), seed=seed,
                                    sessions=sessions)
            for k in range(len(candidates))]
