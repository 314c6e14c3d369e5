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

from slimkit._io import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "tensorly", "sklearn", "torch_pruning", "slimkit"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = "not installed"
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": " avx_vnni" in flags,
        "avx2": "avx2" in flags,
        "versions": versions,
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_section(section: Section, quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"## {section.title}\n\n_Measured {machine_info()['date']}{' with --quick' if quick else ''}._\n\n"
    write_text_atomic(RESULTS / f"{section.topic}.md", header + section.markdown.strip() + "\n")
    write_text_atomic(RESULTS / f"{section.topic}.json", json.dumps(section.data, indent=2, default=str) + "\n")


def assemble() -> str:
    """Rebuild BENCHMARKS.md from every section in ``benchmarks/results``."""
    info = machine_info()
    v = info["versions"]
    lines = [
        "# slimkit benchmarks",
        "",
        "Regenerate with `python -m benchmarks.run` (all) or `python -m benchmarks.run --only TOPIC`;"
        " `--quick` gives a smoke run with fewer epochs. Latency is always a ratio to the baseline measured"
        " in the same run (median, fixed thread count; ONNX Runtime models alternate in blocks, one live session"
        " at a time): these machines are noisy.",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; AVX2 {info['avx2']}, AVX512-VNNI {info['avx512_vnni']},"
        f" AVX-VNNI {info['avx_vnni']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- assembled {info['date']} at commit {info['commit']}",
        "",
    ]
    for path in sorted(RESULTS.glob("*.md")):
        lines += [path.read_text().strip(), ""]
    text = "\n".join(lines)
    write_text_atomic(ROOT / "BENCHMARKS.md", text)
    return text
