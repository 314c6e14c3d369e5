"""Per-layer costs of every choice — MACs, bytes of the deployed file, ONNX Runtime latency — and the search
problem of one deployment format built from them and from the sensitivities.

MACs are counted (``slimkit.analysis.profile``): a Conv2d/Linear's MACs scale with its input and output widths and
with its factorisation's measured MAC ratio. Latency comes from the measured per-layer ONNX Runtime tables of
:func:`slimkit.analysis.build_latency_table` (NetAdapt / HALP look-up tables at the deployed batch and threads, read
at the layer's input and output widths), times measured ratios for what the tables do not cover (a factorised
layer: its factors against the layer, timed as one-layer ONNX graphs), plus the other ops' time: a fixed part, and
over each layer's outputs a part that shrinks with its output channels (as the pruning's latency model reads it;
in the int8 network, measured better as a constant).
An int8 layer reads its own table of the int8 kernels (QLinearConv / QGemm), whose time does not follow the fp32
kernels' as widths shrink; those tables and the int8 network's other ops are scaled so that the whole int8 model's
prediction is its measured ratio to the fp32 one. Bytes follow each format's storage: 4 bytes per fp32 weight;
an int8 weight byte plus per-channel scale, zero point and int32 bias; for the container, the exact bytes of each
layer's codebook, Huffman-coded index streams and bias at each sparsity and cluster width. A constant per format
(graph, header, normalisation tensors) is calibrated from the input model's real deployed file.

These are predictions; the search's candidate is then measured, and a miss corrects the search's target (NetAdapt's
empirical measurement step, Yang et al. 2018) or, for a mixed int8 plan, its float layers' costs (``_run.py``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from slimkit.auto._search import Choice, Problem, Term

log = logging.getLogger(__name__)

#: bytes per output channel an int8 QDQ layer stores besides its weights: int32 bias, fp32 scale, int8 zero point
INT8_CHANNEL_BYTES = 9


def layer_info(model: nn.Module, example: Any) -> dict[str, dict[str, Any]]:
    """Every Conv2d and Linear layer: kind (conv, depthwise, linear), widths, MACs per sample, weights, bias."""
    from slimkit.analysis import profile

    macs = {row.name: row.macs for row in profile(model, example).rows}
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kind = "depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv"
            cin, cout = m.in_channels, m.out_channels
        elif isinstance(m, nn.Linear):
            kind, cin, cout = "linear", m.in_features, m.out_features
        else:
            continue
        out[name] = {"kind": kind, "in": cin, "out": cout, "macs": int(macs.get(name, 0)),
                     "weights": m.weight.numel(), "bias": 0 if m.bias is None else m.bias.numel()}
    return out


@dataclass
class Analysis:
    """Everything the search needs about the input model, as plain JSON-able values (cached in the run folder).

    layers: :func:`layer_info`. groups: channel analysis (``_sensitivity.channel_analysis``). rank, int8, container:
    the other knobs' analyses. latency: per-layer tables (``layers``: kind, in/out grids, ms, ``outputs``: the
    layer's share of the values the layers write), ``other`` (the share of time in other ops) and ``other_fixed``
    (its part no width changes), ``int8`` (int8 / fp32 latency of the whole model), ``int8_layers`` (the int8
    kernels' tables), ``int8_other_ms`` and ``int8_scale`` (the int8 network's other ops and the factor that makes
    the int8 tables predict the measured whole-model ratio), ``int8_float_extra`` (layer → what keeping it float in
    the int8 network adds, measured in context), ``rank`` (layer → ratio → latency ratio of its factors),
    ``rank_int8`` (the same in int8). base: the input model's totals (``macs``, ``bytes`` of its fp32 ONNX file, the
    other formats' reference files).
    """

    layers: dict[str, dict[str, Any]]
    base: dict[str, Any]
    skip: list[str] = field(default_factory=list)
    groups: dict[str, Any] = field(default_factory=dict)
    rank: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None

    def sides(self, layer: str) -> tuple[list[str], list[str]]:
        """The channel groups whose width reaches ``layer``'s input and its output. A residual stream's width is
        often the sum of several groups' units (ResNet's zero-padded shortcuts carry the previous stage's
        channels), so a side may follow several groups; a depthwise layer's input follows its output's."""
        info = self.layers[layer]
        found: dict[str, list[str]] = {"in": [], "out": []}
        for group, entry in self.groups.items():
            for level in entry["levels"]:
                w = level["widths"].get(layer)
                if w is None:
                    continue
                if w[0] != info["in"] and group not in found["in"]:
                    found["in"].append(group)
                if w[1] != info["out"] and group not in found["out"]:
                    found["out"].append(group)
        if info["kind"] == "depthwise" and not found["in"] and found["out"]:
            found["in"] = list(found["out"])
        return found["in"], found["out"]

    def removed(self, layer: str, group: str, level: int, side: int) -> int:
        """Channels of ``layer``'s input (side 0) or output (side 1) removed when ``group`` alone is at ``level``
        (several groups' removals add up: each prunes its own units)."""
        full = self.layers[layer]["in" if side == 0 else "out"]
        w = self.groups[group]["levels"][level]["widths"].get(layer)
        return 0 if w is None else full - int(w[side])


def _latency_cost(table: dict[str, Any], cin: int, cout: int) -> float:
    """A layer's measured milliseconds at (cin, cout): :meth:`slimkit.analysis.LayerLatency.cost`."""
    from slimkit.analysis import Geometry, LayerLatency

    layer = LayerLatency(table.get("name", ""), Geometry(table["kind"]), table["in"], table["out"],
                         tuple(table["in_grid"]), tuple(table["out_grid"]), tuple(tuple(r) for r in table["ms"]),
                         table["step_in"], table["step_out"], tuple(table.get("in_base", ())),
                         tuple(table.get("out_base", ())))
    return layer.cost(cin, cout)


def layer_ms(table: dict[str, Any]) -> float:
    """A layer's measured milliseconds at its full width."""
    return _latency_cost(table, table["in"], table["out"])


def other_share(table: dict[str, Any]) -> float:
    """A table's share of time outside its layers, clamped to [0, 0.95]."""
    return min(0.95, max(0.0, float(table["other"])))


def fixed_share(table: dict[str, Any]) -> float:
    """The part of :func:`other_share` that no width changes (the executor's own work); the rest is spent over the
    layers' outputs and shrinks with them. A table kept before the split was measured: all of it."""
    return min(float(table.get("other_fixed", table["other"])), other_share(table))


def full_ms(latency: dict[str, Any]) -> float:
    """The input model's whole time in the fp32 tables' milliseconds: its layers and its other ops."""
    return sum(layer_ms(t) for t in latency["layers"].values()) / (1 - other_share(latency))


def level_widths(groups: dict[str, Any]) -> dict[str, tuple[list[int], list[int]]]:
    """Every layer's input and output widths over every group's levels (what the latency tables must measure)."""
    found: dict[str, tuple[set[int], set[int]]] = {}
    for entry in groups.values():
        for level in entry["levels"]:
            for layer, (cin, cout) in level["widths"].items():
                sides = found.setdefault(layer, (set(), set()))
                sides[0].add(int(cin))
                sides[1].add(int(cout))
    return {layer: (sorted(a), sorted(b)) for layer, (a, b) in found.items()}


def calibrate_int8(latency: dict[str, Any], int8_table: dict[str, Any], skip: list[str]) -> None:
    """Add the int8 kernels' tables (:func:`table_payload` of a ``precision="int8"`` table) to ``latency``, with the
    int8 network's other ops in milliseconds and the factor that makes the whole int8 model's prediction equal its
    measured ratio ``latency["int8"]`` (the layer tables are timed alone; the network adds its own overheads).
    Skipped layers stay float in the int8 network and keep their fp32 cost."""
    fp32 = {name: layer_ms(t) for name, t in latency["layers"].items()}
    int8 = {name: layer_ms(t) for name, t in int8_table["layers"].items() if name not in skip}
    layers_ms = sum(int8.values()) + sum(ms for name, ms in fp32.items() if name not in int8)
    other = other_share(int8_table)
    other_ms = layers_ms * other / (1 - other)
    float_ms = layers_ms - sum(int8.values())
    scale = (latency["int8"] * full_ms(latency) - float_ms) / max(layers_ms - float_ms + other_ms, 1e-12)
    latency.update(int8_layers=int8_table["layers"], int8_other_ms=other_ms, int8_scale=max(scale, 1e-6))


def table_payload(table: Any) -> dict[str, Any]:
    """A :class:`slimkit.analysis.LatencyTable` as the JSON the analysis keeps."""
    return {"other": table.other, "other_fixed": table.fixed_share, "batch": table.batch, "threads": table.threads,
            "layers": {name: {"name": name, "kind": t.geometry.kind, "in": t.in_channels, "out": t.out_channels,
                              "in_grid": list(t.in_grid), "out_grid": list(t.out_grid),
                              "in_base": list(t.in_base), "out_base": list(t.out_base),
                              "ms": [list(r) for r in t.ms], "step_in": t.step_in, "step_out": t.step_out,
                              "outputs": table.output_share(name)}
                       for name, t in table.layers.items()}}


def other_ops_ms(fmt: str, latency: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Format ``fmt``'s other ops in milliseconds: the part no width changes, and each layer's part at its full
    output width, which shrinks with the layer's output channels (:meth:`slimkit.analysis.LatencyTable.other_over`;
    a table kept before the split was measured: all of it fixed). With its own tables, the int8 network's are a
    constant, scaled as its layers are: shrinking them predicted its measured ratios worse (the latency-model
    benchmark); without its tables, the fp32 network's times the whole model's int8 ratio."""
    if fmt == "int8" and "int8_layers" in latency:
        return latency["int8_other_ms"] * latency["int8_scale"], {}
    ratio = latency.get("int8", 1.0) if fmt == "int8" else 1.0
    network_ms = full_ms(latency) * ratio
    fixed = fixed_share(latency)
    shrinking = network_ms * (other_share(latency) - fixed)
    return network_ms * fixed, {name: shrinking * float(t.get("outputs", 0.0)) for name, t in latency["layers"].items()}


def _options(fmt: str, analysis: Analysis, layer: str, knobs: set[str]) -> tuple[list[dict], list[float], list]:
    """A layer's options in format ``fmt`` (mildest first): labels, sensitivity, strength per knob."""
    if layer in analysis.skip:
        return [{}], [0.0], [(0,)]
    if fmt == "container":
        rows = analysis.container.get(layer, [])
        if not rows:
            return [{}], [0.0], [(0,)]
        sparsities = sorted({r["sparsity"] for r in rows})
        bits = sorted({r["bits"] for r in rows}, reverse=True)
        if "sparsity" not in knobs:
            rows = [r for r in rows if r["sparsity"] == 0.0]
        labels, deltas, strength = [], [], []
        for r in sorted(rows, key=lambda r: (sparsities.index(r["sparsity"]) + bits.index(r["bits"]),
                                             r["sparsity"], -r["bits"])):
            labels.append({"sparsity": r["sparsity"], "bits": r["bits"]})
            deltas.append(r["delta"])
            strength.append((sparsities.index(r["sparsity"]), bits.index(r["bits"])))
        return labels, deltas, strength
    ranks = [{"rank": None, "params": 1.0, "macs": 1.0, "delta": 0.0}]
    if "rank" in knobs:
        ranks += [{"rank": r["ratio"], **{k: r[k] for k in ("params", "macs", "delta")}}
                  for r in analysis.rank.get(layer, [])]
    precisions = [False]
    if fmt == "int8":
        precisions = [True, False] if "int8" in knobs and layer in analysis.int8 else [True]
    combos = []
    for q, (ri, r) in itertools.product(precisions, enumerate(ranks)):
        quant_strength = 1 if q and len(precisions) > 1 else 0
        combos.append(((quant_strength, ri), {"int8": q, "rank": r["rank"]} if fmt == "int8" else {"rank": r["rank"]},
                       r["delta"] + (analysis.int8.get(layer, 0.0) if q else 0.0)))
    combos.sort(key=lambda c: (sum(c[0]), c[0]))
    return [c[1] for c in combos], [c[2] for c in combos], [c[0] for c in combos]


def build_problem(fmt: str, analysis: Analysis, knobs: set[str], dims: list[str]) -> Problem:
    """The search problem of format ``fmt`` over ``dims`` (latency, size, macs; latency needs ``analysis.latency``)."""
    from slimkit.auto._formats import create_format

    format_knobs = create_format(fmt).knobs & knobs
    choices: dict[str, Choice] = {}
    if "channels" in format_knobs:
        for group, entry in analysis.groups.items():
            levels = entry["levels"]
            if len(levels) > 1:
                choices[f"group:{group}"] = Choice(f"group:{group}", [lv["keep"] for lv in levels],
                                                   [lv["delta"] for lv in levels], [(i,) for i in range(len(levels))])
    latency = analysis.latency
    base = analysis.base
    terms: list[Term] = []
    constant: dict[str, float] = {d: 0.0 for d in dims}
    full: dict[str, float] = {}
    other_over: dict[str, float] = {}
    if "macs" in dims:
        full["macs"] = float(base["macs"])
        constant["macs"] = float(base["macs"]) - sum(info["macs"] for info in analysis.layers.values())
    if "size" in dims:
        full["size"] = float(base["bytes"])
    if "latency" in dims:
        if latency is None:
            raise ValueError("a latency budget needs the latency tables in the analysis")
        full["latency"] = full_ms(latency)
        constant["latency"], other_over = other_ops_ms(fmt, latency)
    size_reference = 0.0
    groups_on = "channels" in format_knobs
    for layer, info in analysis.layers.items():
        labels, deltas, strength = _options(fmt, analysis, layer, format_knobs)
        layer_key = f"layer:{layer}"
        if len(labels) > 1:
            choices[layer_key] = Choice(layer_key, labels, deltas, strength)
        gin, gout = analysis.sides(layer) if groups_on else ([], [])
        gin = [g for g in gin if f"group:{g}" in choices]
        gout = [g for g in gout if f"group:{g}" in choices]

        def cost_at(cin: int, cout: int, option: dict[str, Any], layer: str = layer,
                    info: dict[str, Any] = info) -> dict[str, float]:
            cost = _layer_cost(fmt, analysis, layer, info, cin, cout, option, dims)
            if "latency" in dims:  # the other ops over its outputs
                cost["latency"] += other_over.get(layer, 0.0) * cout / info["out"]
            return cost

        if len(gin) <= 1 and len(gout) <= 1:
            terms.append(_exact_term(analysis, layer, info, gin, gout, labels, choices, dims, cost_at))
        else:
            terms += _bilinear_terms(analysis, layer, info, gin, gout, labels, choices, dims, cost_at)
        if "size" in dims:
            size_reference += _reference_bytes(fmt, analysis, layer, info)
    if "size" in dims:
        constant["size"] = float(base.get(f"{fmt}_bytes", base["bytes"])) - size_reference
        if fmt == "container":  # besides its layers, a group's pruning adds its layout's header record and
            # removes its normalisation tensors (stored raw), each as measured with the group alone pruned
            for key in choices:
                if key.startswith("group:"):
                    levels = analysis.groups[key.partition(":")[2]]["levels"]
                    change = np.array([float(lv.get("layout", 0)) - float(lv.get("other_bytes", 0)) for lv in levels])
                    terms.append(Term([key], {d: change if d == "size" else np.zeros(len(levels)) for d in dims},
                                      key))
    return Problem(fmt, choices, terms, constant, full)


def _layer_cost(fmt: str, analysis: Analysis, layer: str, info: dict[str, Any], cin: int, cout: int,
                option: dict[str, Any], dims: list[str]) -> dict[str, float]:
    """One layer's predicted MACs, bytes and milliseconds at (cin, cout) with its own ``option``."""
    latency = analysis.latency
    fin = 1.0 if info["kind"] == "depthwise" else cin / info["in"]
    fout = cout / info["out"]
    rank = option.get("rank")
    rank_row = next((r for r in analysis.rank.get(layer, []) if r["ratio"] == rank), None) if rank else None
    rp = rank_row["params"] if rank_row else 1.0
    rm = rank_row["macs"] if rank_row else 1.0
    out: dict[str, float] = {}
    if "macs" in dims:
        out["macs"] = info["macs"] * fin * fout * rm
    if "size" in dims:
        weights = info["weights"] * fin * fout * rp
        bias = info["bias"] * fout
        if fmt == "container":
            out["size"] = _container_bytes(analysis, layer, option, info, fin * fout, fout)
        elif fmt == "int8" and option.get("int8"):
            out["size"] = weights + INT8_CHANNEL_BYTES * cout
        else:
            out["size"] = 4 * (weights + bias)
    if "latency" in dims:
        ms = 0.0
        table = latency["layers"].get(layer) if latency else None
        int8_table = latency.get("int8_layers", {}).get(layer) if latency and fmt == "int8" else None
        extra = latency.get("int8_float_extra", {}).get(layer) if latency and int8_table is not None else None
        # a factorisation's time over the layer's, measured (in int8 too when timed so); a table without its
        # measurement (a meter that does not time factors): its params ratio
        factors = latency.get("rank", {}).get(layer, {}).get(str(rank), rp) if latency and rank is not None else 1.0
        factors_int8 = latency.get("rank_int8", {}).get(layer, {}).get(str(rank), factors) \
            if latency and rank is not None else 1.0
        if int8_table is not None and option.get("int8"):  # the int8 kernel's own table (its steps are not fp32's)
            ms = _latency_cost(int8_table, cin, cout) * latency["int8_scale"] * factors_int8
        elif extra is not None and table is not None:
            # a float layer of the int8 network: its int8 cost plus what keeping it float measured in context,
            # scaled by the layer's fp32 time at these widths
            share = _latency_cost(table, cin, cout) / max(layer_ms(table), 1e-12)
            ms = (_latency_cost(int8_table, cin, cout) * latency["int8_scale"] + extra * share) * factors
        elif table is not None:  # (the container's model runs decoded: dense at these widths, like fp32's)
            ms = _latency_cost(table, cin, cout) * factors
            if option.get("int8"):
                ms *= latency.get("int8", 1.0)
        out["latency"] = ms
    return out


def _exact_term(analysis: Analysis, layer: str, info: dict[str, Any], gin: list[str], gout: list[str],
                labels: list[dict[str, Any]], choices: dict[str, Choice], dims: list[str], cost_at: Any) -> Term:
    """A layer whose input and output each follow at most one group: its cost at every combination of the two
    groups' widths and its own option, read exactly (the latency table's steps included)."""
    factors = [f"group:{g}" for g in dict.fromkeys([*gin, *gout])]
    if f"layer:{layer}" in choices:
        factors.append(f"layer:{layer}")
    shape = [len(choices[f].labels) for f in factors]
    cost = {d: np.zeros(shape) for d in dims}
    for idx in itertools.product(*[range(n) for n in shape]):
        picks = dict(zip(factors, idx))
        cin = info["in"] - (analysis.removed(layer, gin[0], picks[f"group:{gin[0]}"], 0) if gin else 0)
        cout = info["out"] - (analysis.removed(layer, gout[0], picks[f"group:{gout[0]}"], 1) if gout else 0)
        values = cost_at(max(cin, 1), max(cout, 1), labels[picks.get(f"layer:{layer}", 0)])
        for d in dims:
            cost[d][idx] = values[d]
    return Term(factors, cost, layer)


def _bilinear_terms(analysis: Analysis, layer: str, info: dict[str, Any], gin: list[str], gout: list[str],
                    labels: list[dict[str, Any]], choices: dict[str, Choice], dims: list[str],
                    cost_at: Any) -> list[Term]:
    """A layer on a residual stream whose width is a sum over several groups: for each of its own options, its
    cost fitted as a + b·c_in + c·c_out + d·c_in·c_out (exact for MACs and ONNX bytes; a least-squares fit of the
    latency table and of a container's codebook, capped at the weights a layer has left), expanded over the groups'
    removed channels into one term per group and one per (input, output) pair of groups, each joint with the
    layer's option."""
    spread = (1.0, 0.75, 0.5, 0.25, 0.125)
    ins = sorted({max(1, round(info["in"] * f)) for f in spread})
    outs = sorted({max(1, round(info["out"] * f)) for f in spread})
    grid = [(ci, co) for ci in ins for co in outs]
    design = np.array([[1.0, ci, co, ci * co] for ci, co in grid])
    key = f"layer:{layer}"
    options = labels if key in choices else labels[:1]
    coef = {d: np.zeros((len(options), 4)) for d in dims}  # per option: a, b, c, d
    for q, option in enumerate(options):
        values = [cost_at(ci, co, option) for ci, co in grid]
        for d in dims:
            coef[d][q] = np.linalg.lstsq(design, np.array([v[d] for v in values]), rcond=None)[0]
    own = [key] if key in choices else []

    def shaped(table: dict[str, np.ndarray], factors: list[str]) -> Term:
        if not own:  # drop the option axis of a layer with one option
            table = {d: v[..., 0] for d, v in table.items()}
        return Term(factors + own, table, layer)

    full_in, full_out = info["in"], info["out"]
    terms = [shaped({d: (c[:, 0] + c[:, 1] * full_in + c[:, 2] * full_out + c[:, 3] * full_in * full_out)
                     for d, c in coef.items()}, [])]

    def removed(group: str, side: int) -> np.ndarray:
        return np.array([analysis.removed(layer, group, i, side) for i in range(len(choices[f"group:{group}"].labels))],
                        dtype=np.float64)

    for side, groups in ((0, gin), (1, gout)):
        for g in groups:
            r = removed(g, side)
            table = {}
            for d, c in coef.items():
                slope = -(c[:, 1] + c[:, 3] * full_out) if side == 0 else -(c[:, 2] + c[:, 3] * full_in)
                table[d] = np.outer(r, slope)  # (levels, options)
            terms.append(shaped(table, [f"group:{g}"]))
    for g in gin:
        for h in gout:
            rg, rh = removed(g, 0), removed(h, 1)
            if g == h:  # one group on both sides: a single factor
                terms.append(shaped({d: np.outer(rg * rh, c[:, 3]) for d, c in coef.items()}, [f"group:{g}"]))
            else:
                terms.append(shaped({d: np.einsum("i,j,q->ijq", rg, rh, c[:, 3]) for d, c in coef.items()},
                                    [f"group:{g}", f"group:{h}"]))
    return terms


def _container_bytes(analysis: Analysis, layer: str, option: dict[str, Any], info: dict[str, Any],
                     kept: float = 1.0, kept_out: float = 1.0) -> float:
    """The layer's bytes in the container at ``option``, with a ``kept`` share of its weights and ``kept_out`` of
    its outputs left by channel pruning. The analysis measured the whole layer's exact bytes; of them the index
    streams shrink with the weights (the same sparsity and cluster width over fewer weights: about the same bits per
    weight), the bias with the outputs; their Huffman tables stay (rows kept before they were recorded: scaled with
    the streams), and so does the codebook's ``2**bits`` float32 centroids unless fewer weights are left to
    cluster (k-means finds at most as many clusters as distinct values)."""
    if not option:  # a skipped layer is stored raw, float32
        return 4.0 * (info["weights"] * kept + info["bias"] * kept_out)
    for r in analysis.container[layer]:
        if r["sparsity"] == option["sparsity"] and r["bits"] == option["bits"]:
            if kept >= 1.0 and kept_out >= 1.0:
                return float(r["bytes"])
            bias = 4.0 * info["bias"]
            nonzero = info["weights"] * (1.0 - r["sparsity"])
            centroids = 2 ** r["bits"]
            full_codebook = 4.0 * min(centroids, max(math.ceil(nonzero), 1))
            kept_codebook = 4.0 * min(centroids, max(math.ceil(nonzero * kept), 1))
            tables = float(r.get("tables", 0))
            streams = max(float(r["bytes"]) - bias - full_codebook - tables, 0.0)
            return kept_codebook + tables + streams * kept + bias * kept_out
    raise KeyError(f"{layer}: no container bytes for {option}")


def _reference_bytes(fmt: str, analysis: Analysis, layer: str, info: dict[str, Any]) -> float:
    """The layer's predicted bytes in the format's reference file (the input model deployed in that format:
    fp32 ONNX; int8 QDQ with every layer int8; the container with every layer at 8 bits, no sparsity)."""
    if fmt == "container":
        option = {} if layer in analysis.skip or layer not in analysis.container else {"sparsity": 0.0, "bits": 8}
        if option and not any(r["sparsity"] == 0.0 and r["bits"] == 8 for r in analysis.container[layer]):
            option = {}
        return _container_bytes(analysis, layer, option, info)
    if fmt == "int8" and layer not in analysis.skip:
        return info["weights"] + INT8_CHANNEL_BYTES * info["out"]
    return 4.0 * (info["weights"] + info["bias"])


def uniform_ties(problem: Problem, analysis: Analysis, fractions: Sequence[float]) -> dict[str, list[int]] | None:
    """Every channel group of ``problem`` tied to one keep fraction: for each of ``fractions`` below 1, mildest
    first, the level at which each group keeps ``max(1, round(fraction × units))`` units, as
    :func:`~slimkit.auto._sensitivity.keep_levels` made them (a group too small to lose a unit at that fraction
    stays whole) — uniform pruning, one ratio for every group, as a solve's ``ties``. None without two groups to
    tie or without a fraction (a fraction the analysis has no level for, made with other settings, is left out)."""
    keys = [k for k in problem.choices if k.startswith("group:")]
    if len(keys) < 2:
        return None
    ties: dict[str, list[int]] = {k: [] for k in keys}
    for fraction in sorted({f for f in fractions if f < 1}, reverse=True):
        found = {}
        for key in keys:
            entry = analysis.groups[key.partition(":")[2]]
            keep = max(1, round(fraction * entry["units"]))
            found[key] = next((i for i, lv in enumerate(entry["levels"]) if lv["keep"] == keep), None)
        if all(i is not None for i in found.values()):
            for key, i in found.items():
                ties[key].append(i)
    return ties if ties[keys[0]] else None


def plan_of(problem: Problem, picks: dict[str, int], analysis: Analysis, ratios: dict[str, float],
            objective: float) -> Any:
    """The :class:`~slimkit.auto._plan.Plan` of a solution."""
    from slimkit.auto._plan import Plan, ratio_for_keep

    plan = Plan(problem.format, predicted={**ratios, "delta": objective})
    for key, i in picks.items():
        kind, _, name = key.partition(":")
        label = problem.choices[key].labels[i]
        if kind == "group":
            units = analysis.groups[name]["units"]
            if label < units:
                plan.prune[name] = ratio_for_keep(units, label)
        else:
            if label.get("rank") is not None:
                plan.rank[name] = label["rank"]
            if problem.format == "int8" and label.get("int8") is False:
                plan.float_layers.append(name)
            if problem.format == "container" and "bits" in label:
                plan.bits[name] = label["bits"]
                if label["sparsity"] > 0:
                    plan.sparsity[name] = label["sparsity"]
    if problem.format == "container":  # layers with one option (no choice) still need their bits
        for layer in analysis.layers:
            if layer not in analysis.skip and layer not in plan.bits and analysis.container.get(layer):
                only = problem.choices.get(f"layer:{layer}")
                if only is None:
                    row = analysis.container[layer][0]
                    plan.bits[layer] = row["bits"]
                    if row["sparsity"] > 0:
                        plan.sparsity[layer] = row["sparsity"]
    return plan
