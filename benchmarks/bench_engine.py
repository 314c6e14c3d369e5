"""The pruning engine on 24 torchvision architectures at their ImageNet resolution, Torch-Pruning side by side: wall
time of a 30% prune, memory it adds, and the parameters and MACs it actually removes.

torchvision needs another torch than slimkit's environment, so every measurement runs in the venv that
``benchmarks/make_torchvision_venv.sh`` makes (this module runs it when the venv is missing), one fresh process per
(tool, architecture) via ``benchmarks/_engine_worker.py``, the two tools alternating architecture by architecture so
a change in the machine's load hits both. A process that passes ``MEMORY_LIMIT_MB`` or ``TIMEOUT_S`` is stopped and
reported as such (Torch-Pruning was seen climbing past 18 GB on Swin-T and MaxViT-T).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, Section, markdown_table

log = logging.getLogger(__name__)

TITLE = "Pruning engine on 24 torchvision architectures (224×224): time, memory and what a 30% ratio removes, " \
        "Torch-Pruning side by side"

RATIO = 0.3
ARCHS = (
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16", "alexnet", "squeezenet1_1",
    "densenet121", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "mnasnet1_0", "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf",
    "convnext_tiny", "vit_b_16", "swin_t", "maxvit_t",
)
QUICK_ARCHS = ("resnet18", "mobilenet_v2", "shufflenet_v2_x1_0")
TOOLS = ("slimkit", "torch_pruning")
TIMEOUT_S = 300.0
MEMORY_LIMIT_MB = 12_288
#: the issue's goal for the engine: a 30% prune of ResNet-50 in under 2 s
RESNET50_GOAL_S = 2.0
#: fresh processes per tool and architecture, alternating tools (A B, B A, ...): one prune takes 0.1-1 s, and on a
#: shared machine a single timing of that length varies by ±50% (first run of this table: resnet18 0.2 vs 0.3 s)
REPEATS = 5
#: a time ratio this close to 1 is within what the repeats vary by, and is not called slower or faster
TIE_BAND = 0.1


def venv_python() -> Path:
    """The torchvision venv's interpreter, made by ``make_torchvision_venv.sh`` when it does not exist yet."""
    venv = Path(os.environ.get("SLIMKIT_TV_VENV", ROOT / "benchmarks" / ".venv-torchvision"))
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([str(ROOT / "benchmarks" / "make_torchvision_venv.sh")], check=True,
                       env=dict(os.environ, SLIMKIT_TV_VENV=str(venv)))
    return python


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


def measure(python: Path, tool: str, arch: str) -> dict[str, Any]:
    """One worker process; stopped past the time or memory limit."""
    process = subprocess.Popen([str(python), "-m", "benchmarks._engine_worker", tool, arch, str(RATIO)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore"))
    start, peak = time.monotonic(), 0.0
    while process.poll() is None:
        peak = max(peak, _rss_mb(process.pid))
        stopped = ("memory", f"stopped above {MEMORY_LIMIT_MB / 1024:.0f} GB") if peak > MEMORY_LIMIT_MB else \
            ("time", f"did not finish in {TIMEOUT_S:.0f} s") if time.monotonic() - start > TIMEOUT_S else None
        if stopped:
            process.kill()
            process.communicate()
            return {"ok": False, "error": stopped[1], "stopped": stopped[0]}
        time.sleep(0.2)
    out, err = process.communicate()
    lines = out.strip().splitlines()
    if process.returncode != 0 or not lines:
        return {"ok": False, "error": (err.strip().splitlines() or [f"exit code {process.returncode}"])[-1][:160]}
    return json.loads(lines[-1])


def _repeated(python: Path, arch: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Each tool ``repeats`` times in fresh processes, in the order A B, B A, A B ... so that a slow spell of the
    machine falls on both; a tool that fails is not tried again. The first process's result is kept (reduction and
    memory do not vary), with every time and their median."""
    results: dict[str, dict[str, Any]] = {}
    for rep in range(repeats):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            if tool in results and not results[tool].get("ok"):
                continue
            result = measure(python, tool, arch)
            if tool not in results:
                results[tool] = {**result, "times": []}
            # one entry per repeat (None where a later process failed), so the two tools' lists pair up
            results[tool]["times"].append(result["seconds"] if result.get("ok") else None)
    for result in results.values():
        if result.get("ok"):
            result["seconds"] = statistics.median(t for t in result["times"] if t is not None)
    return {tool: results[tool] for tool in TOOLS}


def run(quick: bool) -> Section:
    python = venv_python()
    versions = subprocess.run([str(python), "-c", "import torch, torchvision, torch_pruning; print(torch.__version__,"
                               " torchvision.__version__, torch_pruning.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    rows: dict[str, dict[str, Any]] = {}
    repeats = 2 if quick else REPEATS
    for arch in QUICK_ARCHS if quick else ARCHS:
        rows[arch] = _repeated(python, arch, repeats)
        log.info("%s: %s", arch, "; ".join(f"{tool} {r['seconds']:.2f} s (median of "
                                           f"{sum(t is not None for t in r['times'])})"
                                           if r.get("ok") else f"{tool} {r.get('error', 'failed')}"
                                           for tool, r in rows[arch].items()))
    data = {"ratio": RATIO, "venv_versions": dict(zip(("torch", "torchvision", "torch_pruning"), versions)),
            "timeout_s": TIMEOUT_S, "memory_limit_mb": MEMORY_LIMIT_MB, "repeats": repeats, "rows": rows}
    return Section("engine", TITLE, render(data), data)


def _kept(result: dict[str, Any], key: str) -> str:
    before, after = result[key]
    return f"{after / before:.2f}"


def _cells(result: dict[str, Any]) -> list[Any]:
    if not result.get("ok"):
        return [result.get("error", "failed"), "", "", ""]
    return [f"{result['seconds']:.2f}", f"{result['added_mb']:,.0f}", _kept(result, "params"), _kept(result, "macs")]


def _pair_ratios(row: dict[str, Any]) -> list[float]:
    """slimkit's time ÷ Torch-Pruning's in each repeat (one A B pair), or the one ratio of a single run."""
    pairs = list(zip(row["slimkit"].get("times", [row["slimkit"]["seconds"]]),
                     row["torch_pruning"].get("times", [row["torch_pruning"]["seconds"]])))
    return [a / b for a, b in pairs if a is not None and b is not None]


def _summary(rows: dict[str, dict[str, Any]]) -> list[str]:
    both = {a: r for a, r in rows.items() if r["slimkit"].get("ok") and r["torch_pruning"].get("ok")}
    lines = []
    done = {tool: sum(1 for r in rows.values() if r[tool].get("ok")) for tool in TOOLS}
    lines.append(f"- Pruned and run: slimkit {done['slimkit']} of {len(rows)}, Torch-Pruning "
                 f"{done['torch_pruning']} of {len(rows)}.")
    if both:
        ratios = {a: r["slimkit"]["seconds"] / r["torch_pruning"]["seconds"] for a, r in both.items()}
        spread = {a: _pair_ratios(r) for a, r in both.items()}
        slower = sorted((a for a, q in ratios.items() if q > 1 + TIE_BAND), key=lambda a: -ratios[a])
        ties = sorted(a for a, q in ratios.items() if abs(q - 1) <= TIE_BAND)
        geo = math.exp(sum(math.log(q) for q in ratios.values()) / len(ratios))
        lines.append(f"- Time, slimkit ÷ Torch-Pruning where both ran ({len(both)} architectures; ratio of the "
                     f"medians, in brackets the lowest and highest ratio of one A B pair): geometric mean "
                     f"{geo:.2f}; slimkit slower by more than {TIE_BAND:.0%} on {len(slower)}"
                     + (": " + ", ".join(f"{a} {ratios[a]:.2f}× [{min(spread[a]):.2f}–{max(spread[a]):.2f}]"
                                         for a in slower) if slower else "")
                     + f"; within ±{TIE_BAND:.0%} on {len(ties)}"
                     + (": " + ", ".join(f"{a} {ratios[a]:.2f}× [{min(spread[a]):.2f}–{max(spread[a]):.2f}]"
                                         for a in ties) if ties else "") + ".")
        mem = {a: (r["slimkit"]["added_mb"], r["torch_pruning"]["added_mb"]) for a, r in both.items()}
        worst = max(mem, key=lambda a: mem[a][0])
        lines.append(f"- Memory added by pruning: slimkit at most {mem[worst][0]:,.0f} MB ({worst}); Torch-Pruning at "
                     f"most {max(m[1] for m in mem.values()):,.0f} MB.")
        fewer = [a for a, r in both.items()
                 if r["slimkit"]["macs"][1] / r["slimkit"]["macs"][0] > r["torch_pruning"]["macs"][1]
                 / r["torch_pruning"]["macs"][0] + 0.05]
        lines.append(f"- MACs kept more than 5 points above Torch-Pruning's at the same ratio: "
                     f"{', '.join(fewer) if fewer else 'none'}.")
        grouped = [(a, r["slimkit"]["grouped_conv_channels"], r["torch_pruning"]["grouped_conv_channels"])
                   for a, r in both.items() if r["slimkit"].get("grouped_conv_channels", [0])[0]]
        if grouped:
            lines.append("- Output channels kept in grouped (not depthwise) convolutions, slimkit vs Torch-Pruning "
                         "(slimkit removes the same slots from every group, at most the ratio of each group's "
                         "width): " + ", ".join(f"{a} {s[1] / s[0]:.2f} vs {t[1] / t[0]:.2f}" for a, s, t in grouped)
                         + ".")
    resnet50 = rows.get("resnet50", {}).get("slimkit", {})
    if resnet50.get("ok"):
        verdict = "meets" if resnet50["seconds"] < RESNET50_GOAL_S else "misses"
        lines.append(f"- ResNet-50 at 30%: {resnet50['seconds']:.2f} s with slimkit ({verdict} the "
                     f"{RESNET50_GOAL_S:g} s goal).")
    return lines


def _opaque_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for arch, r in rows.items():
        sites = r["slimkit"].get("opaque") or []
        if sites:
            ops: dict[str, int] = {}
            for site in sites:
                op = re.search(r"op '([^']+)'", site["op"])
                leaf = re.search(r"\((\w+)\) \(a leaf module\)", site["op"])
                name = f"`{op.group(1)}`" if op else f"{leaf.group(1)} kept whole" if leaf else site["op"]
                ops[name] = ops.get(name, 0) + site["froze"]
            lines.append(f"- {arch}: " + ", ".join(f"{op} froze {n} layers' channels" for op, n in ops.items()))
    return lines


def render(data: dict[str, Any]) -> str:
    """The section's Markdown from its saved results."""
    rows = data["rows"]
    v = data["venv_versions"]
    table = markdown_table(
        ["architecture", "params", "MACs", "slimkit s", "slimkit MB added", "slimkit params kept",
         "slimkit MACs kept", "Torch-Pruning s", "TP MB added", "TP params kept", "TP MACs kept"],
        [[arch, f"{(r['slimkit'].get('params') or r['torch_pruning'].get('params') or [0])[0] / 1e6:.1f}M",
          f"{(r['slimkit'].get('macs') or r['torch_pruning'].get('macs') or [0])[0] / 1e9:.2f}G",
          *_cells(r["slimkit"]), *_cells(r["torch_pruning"])] for arch, r in rows.items()])
    opaque = _opaque_lines(rows)
    return "\n".join([
        f"Each architecture built by `torchvision.models.get_model(name, weights=None)` (random weights: time, memory "
        f"and reduction do not depend on them), input 1×3×224×224 (Inception v3: 299×299), a ratio of "
        f"{data['ratio']:g} of every channel group with the L1 criterion. slimkit: `prune_channels(model, x, "
        f"PruneConfig(ratio={data['ratio']:g}))` (defaults: channels, attention heads and residual widths). "
        f"Torch-Pruning {v['torch_pruning']}: as its own torchvision script sets it up (`MagnitudePruner`, L1, "
        f"the 1000-way classifier and attention output projections ignored, ViT widths rounded to the head count). "
        f"Both in the same run, alternating per architecture, each in a fresh process of a venv with torch "
        f"{v['torch']} and torchvision {v['torchvision']} (`benchmarks/make_torchvision_venv.sh`), 2 threads. "
        f"Seconds: the whole prune (capture or dependency graph, scoring, removal), the median of "
        f"{data.get('repeats', 1)} fresh processes per tool, run in turn (A B, B A, ...). MB added: the "
        f"process's peak RSS after pruning minus its peak before (model built and run once). Kept: after ÷ before, "
        f"counted by `slimkit.analysis.profile` for both tools. A process above "
        f"{data['memory_limit_mb'] / 1024:.0f} GB or {data['timeout_s']:.0f} s is stopped.",
        "",
        table,
        "",
        *_summary(rows),
        "",
        "Ops slimkit's graph did not follow and modules it kept whole because their code uses a size it cannot "
        "rewrite (`pruning_info(model)['opaque']`, `['kept_whole']`); each freezes the channels of the layers it "
        "touches, which is why a ratio can remove fewer MACs:" if opaque else
        "slimkit's graph followed every op on every architecture (no opaque ops in `pruning_info`).",
        *opaque,
    ])
