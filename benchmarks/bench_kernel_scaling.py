"""How a convolution's time follows its MACs as channels are removed, in ONNX Runtime and OpenVINO (fp32, 1 thread).

A pruned network turns a MAC reduction into the same speed-up only if its kernels do. This measures single 3×3
convolutions, each alone at its real input size and batch, at every combination of 1, 3/4, 1/2 and 1/4 of its input
and output channels (rounded to multiples of 16, the kernels' block on AVX-512, for layers of 64 channels or more),
with the
per-layer measurers the latency tables use (:class:`slimkit.analysis.OrtMeasurer`,
:class:`slimkit.analysis.OpenVinoMeasurer`: fastest of 21 interleaved runs, against a reference layer; the layout
conversions of an isolated graph left out). The layers: ResNet-20's three stages on MNIST (28×28, 14×14, 7×7 at 16,
32, 64 channels, batch 64: the model #16's latency goal is measured on) and, for contrast, a ResNet-18 stage-3 conv
at 224×224 input (28×28 at 128 channels, batch 8). Nothing is chosen here: every cell is one fixed setting.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from benchmarks._common import LATENCY_THREADS, Section, markdown_table
from slimkit._runtimes import RUNTIMES
from slimkit.analysis._latency import AA_BAND, TOO_NOISY

TITLE = "Kernel scaling: a convolution's time against its MACs as channels go (ONNX Runtime, OpenVINO)"
#: (label, input size, full channels, batch)
LAYERS = (("ResNet-20 stage 1 (MNIST)", 28, 16, 64), ("ResNet-20 stage 2 (MNIST)", 14, 32, 64),
          ("ResNet-20 stage 3 (MNIST)", 7, 64, 64), ("ResNet-18 stage 3 (224×224 input)", 28, 128, 8))
FRACTIONS = (1.0, 0.75, 0.5, 0.25)


def _widths(full: int) -> list[int]:
    """The channel counts timed: the fractions of ``full``, rounded to the 16-channel block where it is wider."""
    out = []
    for f in FRACTIONS:
        w = max(1, round(full * f))
        if full >= 64:
            w = max(16, round(w / 16) * 16)
        if w not in out:
            out.append(w)
    return out


def _measure(backend: str, quick: bool) -> list[dict[str, Any]]:
    from slimkit.analysis import Geometry
    from slimkit.analysis._latency_table import TABLE_RUNTIMES

    measurer = TABLE_RUNTIMES[backend][0](threads=LATENCY_THREADS, repeats=5 if quick else 21)
    records = []
    for label, size, full, batch in LAYERS:
        geometry = Geometry("conv", (3, 3), (1, 1), (1, 1, 1, 1), size=(size, size), batch=batch)
        widths = _widths(full)
        points = [(cin, cout) for cin in widths for cout in widths]
        # the full-width layer once more, last (in the last chunk of probes): its A/A control
        *measured, again = [kernel for kernel, _ in measurer.points(geometry, [*points, (full, full)])]
        times = dict(zip(points, measured))
        base_ms, base_macs = times[(full, full)], geometry.macs(full, full)
        for (cin, cout), ms in times.items():
            time_ratio, mac_ratio = ms / base_ms, geometry.macs(cin, cout) / base_macs
            records.append({"backend": backend, "layer": label, "cin": cin, "cout": cout, "ms": ms,
                            "full_ms": base_ms, "aa": again / base_ms, "time_ratio": time_ratio,
                            "mac_ratio": mac_ratio, "speedup_share": mac_ratio / time_ratio})
    return records


def _steady(record: dict[str, Any]) -> bool:
    """Whether the layer's A/A control stayed inside the band every latency ratio here needs."""
    return AA_BAND[0] <= record["aa"] <= AA_BAND[1]


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    records = payload["records"]
    runtimes = list(dict.fromkeys(r["backend"] for r in records))
    names = {name: runtime.display for name, runtime in RUNTIMES.items()}
    rows = []
    for label, _, full, _ in LAYERS:
        cells: dict[tuple[int, int], dict[str, Any]] = {}
        for r in records:
            if r["layer"] == label:
                cells.setdefault((r["cin"], r["cout"]), {})[r["backend"]] = r
        for (cin, cout), by in cells.items():
            if (cin, cout) == (full, full):
                rows.append([label, f"{cin}→{cout}", 1.0,
                             *[f"{by[b]['full_ms']:.3f} ms, A/A {by[b]['aa']:.2f}" for b in runtimes]])
                continue
            mac = next(iter(by.values()))["mac_ratio"]
            rows.append([label, f"{cin}→{cout}", round(mac, 3),
                         *[f"{by[b]['time_ratio']:.2f} ({by[b]['speedup_share']:.0%})" if _steady(by[b])
                           else TOO_NOISY for b in runtimes]])
    lines = []
    for b in runtimes:
        for label, _, full, _ in LAYERS:
            half_out = [r for r in records if r["backend"] == b and r["layer"] == label and r["cin"] == full
                        and r["cout"] == _widths(full)[2]]
            half_in = [r for r in records if r["backend"] == b and r["layer"] == label and r["cout"] == full
                       and r["cin"] == _widths(full)[2]]
            if half_out and half_in and _steady(half_out[0]):
                lines.append(f"- {names.get(b, b)}, {label}: half the output channels take "
                             f"{half_out[0]['time_ratio']:.2f} of the time, half the input channels "
                             f"{half_in[0]['time_ratio']:.2f} (each halves the MACs).")
    table = markdown_table(["layer", "channels in→out", "MAC ratio",
                            *[f"{names.get(b, b)}: time ratio (speed-up ÷ MAC reduction)" for b in runtimes]], rows)
    markdown = f"""Single 3×3 convolutions (stride 1, padding 1), each timed alone at its input size and batch, at
pruned channel counts: time and MACs as fractions of the full-width layer's, and (in brackets) the speed-up ÷ the MAC
reduction, (1 / time ratio) ÷ (1 / MAC ratio): 100 % when time falls as fast as the MACs. {LATENCY_THREADS} thread;
the layer measurers of the latency tables (the fastest of {payload['repeats']} runs, interleaved with a reference layer
that every group of 8 probes runs too; the layout conversions an isolated graph needs are left out; in OpenVINO from
its per-node counters). A/A control: the full-width layer timed again in the last group of probes, as a ratio to its
first time; a layer whose A/A leaves [0.9, 1.1] shows "{TOO_NOISY}" instead of its ratios. These are single kernel
times (fastest runs), not whole-model comparisons, so no p10–p90 spread is given. Batch 64 for ResNet-20's layers
(MNIST, 28×28 input), batch 8 for the ResNet-18 layer (224×224 input).

{table}

{chr(10).join(lines)}
"""
    return markdown, payload


def run(quick: bool) -> Section:
    runtimes = [name for name, runtime in RUNTIMES.items() if importlib.util.find_spec(runtime.package)]
    records = [r for backend in runtimes for r in _measure(backend, quick)]
    payload = {"records": records, "repeats": 5 if quick else 21}
    markdown, data = render(payload)
    return Section(topic="kernel_scaling", title=TITLE, markdown=markdown, data=data)
