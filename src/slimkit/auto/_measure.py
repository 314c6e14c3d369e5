"""Measuring a candidate: the deployed file's bytes, MACs, validation accuracy, and ONNX Runtime latency against the
input model (interleaved, with the A/A control of :func:`slimkit.analysis.compare_latency`).

Latency goes through a :class:`LatencyMeter` so a test can inject a deterministic one (timing real models on a
shared machine is noise); :class:`OrtLatency` is the real one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class LatencyMeter(Protocol):
    """What times models for ``auto_compress``: per-layer tables for the search, and A/B comparisons to verify.
    A meter may also define ``compare_many(baseline, baseline_file, candidates, inputs, *, threads)`` (candidates
    as ``(module, file or None)`` pairs; one record each), which the analysis uses to time many variants of one
    baseline (:meth:`OrtLatency.compare_many`); without it each is a :meth:`compare`."""

    def table(self, model: nn.Module, example: Any, *, batch: int, threads: int, precision: str = "fp32",
              network: Path | None = None, widths: dict[str, tuple[list[int], list[int]]] | None = None) -> Any:
        """A :class:`slimkit.analysis.LatencyTable` of ``model`` at the deployed batch and threads, its layers timed
        in ``precision`` (int8: ``network`` is the model's deployed int8 file), ``widths`` measured besides the
        grid."""

    def compare(self, baseline: nn.Module, candidate: nn.Module, baseline_file: Path | None,
                candidate_file: Path | None, inputs: tuple[torch.Tensor, ...], *, threads: int) -> dict[str, Any]:
        """The candidate's latency as a ratio to the baseline's: a dict with ``ratio`` (None when too noisy),
        ``p10``, ``p90``, ``aa`` (the A/A control), ``status`` ("ok" or "too noisy"). The ONNX files are timed when
        given (the deployed int8 file, for instance); otherwise the modules are exported."""


class OrtLatency:
    """ONNX Runtime: :func:`slimkit.analysis.build_latency_table` and :func:`slimkit.analysis.compare_latency`
    (``repeats`` interleaved rounds; a "too noisy" comparison is repeated once with twice the rounds)."""

    def __init__(self, repeats: int = 50, warmup: int = 10) -> None:
        self.repeats, self.warmup = repeats, warmup

    def table(self, model: nn.Module, example: Any, *, batch: int, threads: int, precision: str = "fp32",
              network: Path | None = None, widths: dict[str, tuple[list[int], list[int]]] | None = None) -> Any:
        from slimkit.analysis import build_latency_table

        return build_latency_table(model, example, batch=batch, threads=threads, precision=precision,
                                   network=network, widths=widths)

    def compare(self, baseline: nn.Module, candidate: nn.Module, baseline_file: Path | None,
                candidate_file: Path | None, inputs: tuple[torch.Tensor, ...], *, threads: int) -> dict[str, Any]:
        return self._shared_runs(baseline, baseline_file, [(candidate, candidate_file)], inputs, threads=threads)[0]

    def compare_many(self, baseline: nn.Module, baseline_file: Path | None,
                     candidates: Sequence[tuple[nn.Module, Path | None]], inputs: tuple[torch.Tensor, ...], *,
                     threads: int) -> list[dict[str, Any]]:
        """Each ``(module, file)`` candidate's latency record (as :meth:`LatencyMeter.compare` gives it; the file is
        timed where given, else the module) against one baseline, up to
        :data:`CANDIDATES_PER_RUN` of them in one interleaved run (:func:`slimkit.analysis.compare_latency_many`);
        a run whose shared A/A control was too noisy is repeated once with twice the rounds. A subclass that
        overrides :meth:`compare` gets its own ``compare`` called once per candidate instead (shared runs would
        bypass it); :meth:`compare` itself times through the shared runs, never through ``compare_many``, so a
        subclass's ``compare`` may call ``super().compare`` but not ``self.compare_many``."""
        if type(self).compare is not OrtLatency.compare:  # a subclass's own timing: shared runs would bypass it
            return [self.compare(baseline, module, baseline_file, file, inputs, threads=threads)
                    for module, file in candidates]
        return self._shared_runs(baseline, baseline_file, candidates, inputs, threads=threads)

    def _shared_runs(self, baseline: nn.Module, baseline_file: Path | None,
                     candidates: Sequence[tuple[nn.Module, Path | None]], inputs: tuple[torch.Tensor, ...], *,
                     threads: int) -> list[dict[str, Any]]:
        from slimkit.analysis import TOO_NOISY, compare_latency_many

        a = baseline_file if baseline_file is not None else baseline
        records: list[dict[str, Any]] = []
        for start in range(0, len(candidates), CANDIDATES_PER_RUN):
            chunk = [file if file is not None else module
                     for module, file in candidates[start:start + CANDIDATES_PER_RUN]]
            for repeats in (self.repeats, 2 * self.repeats):
                cmps = compare_latency_many(a, chunk, inputs, backend="onnxruntime", threads=threads,
                                            warmup=self.warmup, repeats=repeats)
                if cmps[0].status != TOO_NOISY:
                    break
            records.extend(cmp.record() for cmp in cmps)
        return records


#: candidates timed together against one baseline by :meth:`OrtLatency.compare_many`: each round then runs 2 + 4
#: models instead of 3 per candidate (half the runs for four), and stays short enough (LeNet-5 at batch 64: 18
#: calls of ~5 ms) that load drift within a round is small
CANDIDATES_PER_RUN = 4


def compare_all(meter: LatencyMeter, baseline: nn.Module, baseline_file: Path | None,
                candidates: Sequence[tuple[nn.Module, Path | None]], inputs: tuple[torch.Tensor, ...], *,
                threads: int) -> list[dict[str, Any]]:
    """Each candidate's latency record against ``baseline``: in shared runs when the meter has ``compare_many``,
    else one :meth:`LatencyMeter.compare` each (a meter written before it)."""
    many = getattr(meter, "compare_many", None)
    if many is not None:
        return many(baseline, baseline_file, list(candidates), inputs, threads=threads)
    return [meter.compare(baseline, module, baseline_file, file, inputs, threads=threads)
            for module, file in candidates]


def deployed_latency(model: nn.Module, written: Path, *, example: Any, fmt: Any, folder: Path, baseline: nn.Module,
                     baseline_onnx: Path, meter: LatencyMeter, batch: int, threads: int) -> dict[str, Any]:
    """The latency record of ``model`` as deployed (``written`` by ``fmt``) against the input, at the deployed batch."""
    from slimkit.auto._formats import example_batch

    timed = fmt.timed(model, example, written, folder)
    return meter.compare(baseline, model, baseline_onnx, timed, example_batch(example, batch), threads=threads)


def measure_model(model: nn.Module, *, example: Any, data: Any, fmt: Any, folder: Path, base: dict[str, Any],
                  baseline: nn.Module, baseline_onnx: Path, meter: LatencyMeter | None, batch: int, threads: int,
                  spec: str | None) -> dict[str, Any]:
    """Write the deployed file into ``folder`` and measure the model: validation accuracy and loss, params, MACs,
    bytes of the deployed file, latency (when ``meter`` is given); ``ratios`` are to the input model's."""
    from slimkit.analysis import evaluate, profile

    model = model.eval()
    prof = profile(model, example)
    written = fmt.write(model, example, folder / fmt.file_name, spec)
    size = written.stat().st_size
    scores = evaluate(model, data.valid)
    row: dict[str, Any] = {
        "format": fmt.name, "file": written.name, "accuracy": scores.accuracy, "loss": scores.loss,
        "samples": scores.samples, "split": "valid", "params": prof.total.params, "macs": prof.total.macs,
        "bytes": size, "latency": None,
        "ratios": {"macs": prof.total.macs / max(base["macs"], 1), "size": size / max(base["bytes"], 1),
                   "latency": None},
    }
    if meter is not None:
        record = deployed_latency(model, written, example=example, fmt=fmt, folder=folder, baseline=baseline,
                                  baseline_onnx=baseline_onnx, meter=meter, batch=batch, threads=threads)
        row["latency"] = record
        row["ratios"]["latency"] = record.get("ratio")
    return row


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def measured_intact(row: Any) -> bool:
    """Whether a row read back from an auto folder (the input's or a candidate's measurements) has the types and
    ranges :func:`measure_model` writes: a damaged one is measured again instead of steering the search (an
    accuracy of "abc" crashed the ranking, one of 1.5 was reported as 150 %)."""
    if not isinstance(row, dict) or not _number(row.get("accuracy"), 0, 1) or not _number(row.get("loss")):
        return False
    if not all(_number(row.get(key), 0) for key in ("params", "macs", "bytes", "samples")):
        return False
    ratios = row.get("ratios", {})
    if not isinstance(ratios, dict) or not all(v is None or _number(v, 0) for v in ratios.values()):
        return False
    latency = row.get("latency")
    if latency is None:
        return True
    ci = latency.get("ci") if isinstance(latency, dict) else None
    return (isinstance(latency, dict) and (latency.get("ratio") is None or _number(latency["ratio"], 0))
            and (ci is None or (isinstance(ci, list) and len(ci) == 2 and all(_number(v, 0) for v in ci))))


def latency_bound(record: dict[str, Any] | None) -> float | None:
    """The latency ratio a budget is judged by: the upper end of the 95 % confidence interval of the measured median
    (when the comparison recorded one), so a budget counts as met only when the median is within it with 95 %
    confidence — a candidate read at 0.298 of a 0.3 budget on a model that runs in 0.14 ms was read at 0.328 by the
    next comparison; the median itself otherwise, None when it could not be read."""
    value = (record or {}).get("ratio")
    ci = (record or {}).get("ci")
    return max(value, float(ci[1])) if value is not None and ci else value


def judged_ratio(row: dict[str, Any], key: str) -> float | None:
    """The ratio a budget on ``key`` is judged by: :func:`latency_bound` of the row's latency record, the measured
    ratio for the other keys."""
    return latency_bound(row.get("latency")) if key == "latency" else row["ratios"].get(key)


def meets(row: dict[str, Any], budget: Any) -> dict[str, bool | None]:
    """Per budget key: True / False when measured, None when the latency could not be measured (too noisy)."""
    out: dict[str, bool | None] = {}
    for key, limit in budget.items():
        value = judged_ratio(row, key)
        out[key] = None if value is None or not math.isfinite(value) else bool(value <= limit + 1e-12)
    return out
