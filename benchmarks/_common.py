"""Shared benchmark plumbing: the machine header, cached trained baselines, and writing a result section.

Each benchmark module ``bench_<topic>.py`` defines ``TITLE`` and ``run(quick: bool) -> Section``. Its results are
written to ``benchmarks/results/<topic>.md`` and ``.json``; BENCHMARKS.md is assembled from those sections, so a
benchmark can be re-run alone without losing the others' numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimkit._cpu import cpu_info
from slimkit._io import write_text_atomic
from slimkit.analysis._latency import SESSIONS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: ONNX Runtime threads per session in every latency comparison: one thread each, so the live sessions of a
#: comparison (baseline, its A/A copies, candidate) and the other jobs on a shared machine never oversubscribe the
#: cores; the ratio then measures the work a model does. Change it here to measure a multi-core deployment.
LATENCY_THREADS = 1
#: how every benchmark's prose describes the latency method (kept in one place so no section drifts from it)
LATENCY_METHOD = (
    f"ONNX Runtime, {LATENCY_THREADS} thread per session, thread spinning off; `compare_latency` times the baseline, "
    f"its A/A control (other sessions of the baseline's file) and the candidate, each model in {SESSIONS} sessions, "
    "call by call in a seeded random order per round, a model's round time the mean over its sessions (one session "
    "can run a model in a slow mode for its whole life); a cell is the median of the per-round ratios "
    "candidate/baseline with its 10th–90th percentile and the A/A median, or \"too noisy\" when the A/A median or "
    "its 95 % interval leaves [0.9, 1.1]. Sections whose result files record no `sessions` were measured with one "
    "session per model"
)
#: how a section timed in OpenVINO measured latency (``compare_latency(backend='openvino')``)
OPENVINO_METHOD = (
    f"OpenVINO's CPU runtime in fp32 (its bfloat16 default on a CPU with AVX512-BF16 is turned off), "
    f"{LATENCY_THREADS} inference thread per compiled model, one stream, no core pinning; `compare_latency("
    f"backend='openvino')` times the baseline, its A/A control (other compiled models of the baseline's file) and the "
    f"candidate, each model in {SESSIONS} compiled models, call by call in a seeded random order per round, a "
    "model's round time the mean over its compiled models; a cell is the median of the per-round ratios "
    "candidate/baseline with its 10th–90th percentile and the A/A median, or \"too noisy\" when the A/A median or "
    "its 95 % interval leaves [0.9, 1.1]"
)


def latency_method(backend: str) -> str:
    """How a section's latency was measured, in words."""
    return OPENVINO_METHOD if backend == "openvino" else LATENCY_METHOD


def latency_record(cmp: Any) -> dict[str, Any]:
    """The JSON record of a :class:`slimkit.analysis.LatencyComparison` kept in a benchmark's results."""
    return cmp.record()


def latency_cell(record: dict[str, Any] | None, *, aa: bool = True) -> str:
    """A table cell for a latency record: ``0.40 (0.38–0.42), A/A 1.00``, or ``too noisy (A/A 1.23)``."""
    from slimkit.analysis import format_ratio

    if record is None:
        return "–"
    text = format_ratio(record["ratio"], record["status"], record["p10"], record["p90"])
    if not aa:
        return text
    return f"{text} (A/A {record['aa']:.2f})" if record["ratio"] is None else f"{text}, A/A {record['aa']:.2f}"


@dataclass
class Section:
    """One benchmark's Markdown (tables + notes) and its raw numbers."""

    topic: str
    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats to 4 significant digits, ints with thousands separators."""

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = cpu_info()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "tensorly", "sklearn", "torch_pruning", "slimkit"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = "not installed"
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu.name,
        "cores": os.cpu_count(),
        "avx512_vnni": cpu.has("avx512_vnni"),
        "avx_vnni": cpu.has("avx_vnni"),
        "avx2": cpu.has("avx2"),
        "machine": cpu.machine,
        "int8_sums_saturate": cpu.int8_sums_saturate,
        "versions": versions,
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    """The checked-out commit, with ``+uncommitted`` when code (the package or a benchmark script) differs from it:
    a result must name the code that produced it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks/*.py"], cwd=ROOT,
                                 capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}+uncommitted" if changed else head


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, the versions and the commit a result came from."""
    v = info["versions"]
    return (f"{info['cpu']}, {info['cores']} cores (AVX2 {info['avx2']}, AVX512-VNNI {info['avx512_vnni']}, "
            f"AVX-VNNI {info['avx_vnni']}); " + ", ".join(f"{k} {val}" for k, val in v.items())
            + f"; commit {info['commit']}")


def write_section(section: Section, quick: bool, info: dict[str, Any] | None = None) -> None:
    """Write ``results/<topic>.md`` and ``.json``; both record the machine, versions and commit of the run that
    measured them (``info``: a saved run's, when its section is only rendered again)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = info or machine_info()
    header = (f"## {section.title}\n\n_Measured {info['date']}{' with --quick' if quick else ''} on "
              f"{machine_line(info)}._\n\n")
    write_text_atomic(RESULTS / f"{section.topic}.md", header + section.markdown.strip() + "\n")
    payload = {"machine": info, "quick": quick, **section.data}
    write_text_atomic(RESULTS / f"{section.topic}.json", json.dumps(payload, indent=2, default=str) + "\n")


def assemble() -> str:
    """Rebuild BENCHMARKS.md from every section in ``benchmarks/results`` (each names its own machine and commit)."""
    lines = [
        "# slimkit benchmarks",
        "",
        "Regenerate with `python -m benchmarks.run` (all) or `python -m benchmarks.run --only TOPIC`;"
        " `--quick` gives a smoke run with fewer epochs. Every number below comes from the result file its section's"
        " run wrote (`benchmarks/results/<topic>.json`); each section names the machine, versions and commit it ran"
        f" on. Latency is always a ratio to the baseline measured in the same run: {LATENCY_METHOD}.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.md")):
        lines += [path.read_text().strip(), ""]
    text = "\n".join(lines)
    write_text_atomic(ROOT / "BENCHMARKS.md", text)
    return text
