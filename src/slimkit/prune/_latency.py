"""Latency-aware channel pruning: per-group widths that reach a latency target with the least importance lost.

``PruneConfig(target_latency=0.5)`` asks for a model that runs in half the time of the original in ONNX Runtime (at
the deployed batch and thread count; ``LatencyTarget(backend="openvino")``: in OpenVINO's CPU runtime). The latency
model is a measured per-layer lookup table (:func:`slimkit.analysis.build_latency_table`; NetAdapt, Yang et al.
2018; HALP, Shen et al. 2022). The search is HALP's latency-constrained knapsack (Shen et al. 2022, Eq. 3: maximise
the importance kept subject to the summed layer latencies ≤ the budget), solved by a Lagrangian greedy over channel
groups: starting from the full model, repeatedly shrink the group whose next step costs the least importance per
millisecond saved, until the predicted latency meets the target; then give steps back, most importance per
millisecond first, while it still does. A layer's latency depends on its input and its output channels, so every
step is costed with the current widths of both neighbouring groups (HALP's augmented knapsack handles the same
coupling by fixing the neighbours).

A group only ever takes the widths at which the kernels' time steps (multiples of the measured step, e.g. 16 for
MLAS NCHWc convolutions on AVX-512, or its full width): between two steps the kernel pads, so removing channels
there costs accuracy and buys no time. Importance is the configured criterion's unit score, normalised by the
group's mean as in global pruning (Molchanov et al. 2017).

The prediction is then checked: the pruned model is timed against the original with
:func:`slimkit.analysis.compare_latency`; if the measured ratio misses the target by more than ``tolerance`` the
search runs again with the target corrected by measured/predicted (up to ``refine`` times, NetAdapt's "empirical
measurement" step). A target below the table's floor (every group at its narrowest allowed width) is not refused on
the prediction alone when timing is on: the isolated-layer tables over-predict heavily pruned networks (ResNet-20 at
28×28 pruned 75 %, batch 64: 0.24 predicted, 0.20 measured; BENCHMARKS.md, latency model), so the narrowest model
is timed first, and the first goal is read off the line through it and the unpruned model. Predicted and measured
ratios are recorded in :func:`pruning_info` under ``"latency"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._runtimes import DEFAULT_RUNTIME, require_runtime, runtime

log = logging.getLogger(__name__)

#: how groups' importance is weighed against each other (``LatencyTarget.group_weight``)
GROUP_WEIGHTS = ("units", "latency")


@dataclass(frozen=True)
class LatencyTarget:
    """A latency target for :func:`prune_channels` (``PruneConfig(target_latency=LatencyTarget(0.5, batch=64))``;
    a plain float means ``LatencyTarget(ratio=float)``).

    ratio: the pruned model's latency as a fraction of the original's, in (0, 1).
    batch: the batch the model is deployed at (latency and the kernels' steps depend on it); default: the example
        input's batch.
    threads: threads per runtime session, for the table and for the check (1: see ``compare_latency``).
    refine: how many times a measured miss corrects the target and searches again (0: trust the table).
    measure: time the result against the original and record predicted vs measured (False: predicted only).
    tolerance: a measured ratio within ``ratio · (1 ± tolerance)`` is a hit.
    max_points: grid points per channel axis of each layer's table.
    min_keep: no group keeps fewer than this fraction of its units. Normalised importance is additive, so the
        knapsack alone would happily cut one layer to a handful of channels where that saves the most time; the
        floor keeps every layer alive (Torch-Pruning's ``max_pruning_ratio``, NNCF's maximal pruning level).
    sub_block: also allow a quarter, half and three quarters of one step (e.g. 4, 8, 12 of a 16-channel block).
        Off by default: below one block MLAS pads the outputs and converts layouts, so these widths save time
        but several times less than their MACs; on, a narrow model (ResNet-20's 16-channel stage) reaches lower
        targets.
    group_weight: how much a whole group's importance weighs against another's. "units": each unit's score is
        divided by its group's mean (Molchanov et al. 2017), so a group weighs its unit count and a channel of a
        16-wide group weighs as much as one of a 64-wide group; as a channel of a narrow early layer costs more
        time, the search cuts the narrow groups first. "latency": a group weighs its share of the predicted
        run time, its units split that by their scores, and a unit weighs more the fewer its group keeps
        (1 / kept fraction: a log barrier); with equal scores the best cut under the budget is then the same
        fraction of every group, so uniform pruning is the neutral answer, and scores and the kernels' time
        steps move the cuts from there. Neither wins everywhere (BENCHMARKS.md, latency-aware pruning): ResNet-20
        fine-tuned on MNIST validated better with "latency" at 0.5× in every run so far, while MobileNetV2 at
        224, pruned one-shot, kept much less of its function with it (relative L2 to the original 0.68 against
        0.36 with "units", as far off as uniform pruning); so "units" stays the default, and the choice belongs
        on a validation split.
    backend: the runtime whose latency is targeted: "onnxruntime" (slimkit's deployment runtime) or "openvino"
        (OpenVINO's CPU runtime in fp32, an optional dependency): the table is measured and the result timed there.
        None: ONNX Runtime, or in a recipe the runtime its evaluation measures in (``evaluation.runtime``).
    """

    ratio: float
    batch: int | None = None
    threads: int = 1
    refine: int = 2
    measure: bool = True
    tolerance: float = 0.05
    max_points: int = 6
    min_keep: float = 0.25
    sub_block: bool = False
    group_weight: str = "units"
    backend: str | None = None

    def __post_init__(self) -> None:
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1 or not math.isfinite(r):
            raise ConfigError(f"target_latency {r!r} is out of range: give the pruned model's latency as a "
                              "fraction of the original's, in (0, 1), e.g. 0.5 for twice as fast")
        for name, low in (("batch", 1), ("threads", 1), ("refine", 0), ("max_points", 2)):
            value = getattr(self, name)
            if name == "batch" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"target_latency.{name}={value!r}: use a whole number ≥ {low}")
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, (int, float)) or not 0 < self.min_keep <= 1:
            raise ConfigError(f"target_latency.min_keep={self.min_keep!r}: use a fraction in (0, 1], e.g. 0.25")
        if not isinstance(self.sub_block, bool) or not isinstance(self.measure, bool):
            raise ConfigError("target_latency.sub_block and .measure are true or false")
        if self.group_weight not in GROUP_WEIGHTS:
            raise ConfigError(f"target_latency.group_weight={self.group_weight!r}: use one of "
                              f"{', '.join(repr(w) for w in GROUP_WEIGHTS)}")
        if not 0 < self.tolerance < 0.5:
            raise ConfigError(f"target_latency.tolerance={self.tolerance!r}: use a fraction in (0, 0.5), e.g. 0.05")
        if self.backend is not None:
            runtime(self.backend, "target_latency.backend")

    @property
    def runtime(self) -> str:
        """The runtime timed: :attr:`backend`, or ONNX Runtime when it is None."""
        return self.backend or DEFAULT_RUNTIME


def as_latency_target(value: float | LatencyTarget | Mapping[str, Any]) -> LatencyTarget:
    """A target from a float (the ratio), a :class:`LatencyTarget`, or its fields as a mapping (YAML, CLI)."""
    if isinstance(value, LatencyTarget):
        return value
    if isinstance(value, Mapping):
        known = set(LatencyTarget.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown or "ratio" not in value:
            raise ConfigError(f"target_latency {dict(value)!r}: give 'ratio' and optionally "
                              f"{', '.join(sorted(known - {'ratio'}))}"
                              + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
        return LatencyTarget(**value)
    return LatencyTarget(ratio=value)  # type: ignore[arg-type]


def check_config(config: Any) -> None:
    """The latency fields of a ``PruneConfig``: a valid target, and no other target beside it."""
    if not isinstance(config.target_latency, LatencyTarget):
        as_latency_target(config.target_latency)
    if config.target_macs is not None or config.speedup is not None:
        raise ConfigError("give one target: target_latency, target_macs or speedup, not several")
    if isinstance(config.ratio, Mapping):
        raise ConfigError("target_latency chooses every group's width: do not also give per-layer ratios")


# --- the search ------------------------------------------------------------------------------------------------


@dataclass
class _Group:
    index: int
    name: str
    units: int
    lost: np.ndarray  # lost[r] = importance lost by removing the r least important units
    sides: list[tuple[str, str, float]]  # (table layer, "in" | "out", channels per unit)
    unit_step: int
    min_keep: float = 0.0
    sub_block: bool = False

    def keeps(self) -> list[int]:
        """Allowed keep counts, ascending: multiples of the unit step, the full group, and with ``sub_block`` a
        quarter, half and three quarters of one step (the regime below one kernel block, which the table
        measures); none below ``min_keep`` of the group except the smallest allowed one."""
        quarter = self.unit_step // 4
        below = {quarter, 2 * quarter, 3 * quarter} if quarter >= 1 and self.sub_block else set()
        options = sorted({k for k in {*range(self.unit_step, self.units, self.unit_step), *below}
                          if 1 <= k < self.units} | {self.units})
        floor = math.ceil(self.min_keep * self.units - 1e-9)
        return [k for k in options if k >= floor] or options[-1:]


@dataclass
class LatencyPlan:
    """What the search chose: units kept per group (by group index) and the predicted latency ratio."""

    keeps: dict[int, int]
    predicted: float
    widths: dict[str, tuple[int, int]]
    lost: float


def _groups(graph: Any, ctx: Any, criterion: Any, table: Any, min_keep: float = 0.0,
            sub_block: bool = False, group_weight: str = "units") -> list[_Group]:
    groups = []
    for gi, group in enumerate(graph.groups):
        n = len(group.units)
        scores = np.sort(np.abs(np.asarray(criterion.scores(ctx, group), dtype=np.float64)))
        sides: list[tuple[str, str, float]] = []
        unit_step = 1
        for name, side in dict.fromkeys(group.members):
            if name not in table.layers:
                continue
            use = graph.uses[name]
            channel_map = use.in_map if side == "in" else use.out_map
            if channel_map is None:
                continue
            hits = int((graph.unit_positions(channel_map, group.units) >= 0).sum())
            if hits == 0:
                continue
            per_unit = hits / n
            sides.append((name, side, per_unit))
            layer = table.layers[name]
            step = layer.step_in if side == "in" else layer.step_out
            if float(per_unit).is_integer():
                need = step // math.gcd(step, int(per_unit))
                unit_step = unit_step * need // math.gcd(unit_step, need)
        lost = np.concatenate([[0.0], np.cumsum(scores / (scores.mean() + 1e-12))])
        groups.append(_Group(gi, group.name, n, lost, sides, unit_step, min_keep, sub_block))
    if group_weight == "latency":
        _weigh_by_latency(table, groups)
    return groups


def _weigh_by_latency(table: Any, groups: list[_Group]) -> None:
    """Rescale each group's importance to its share of the predicted run time (a layer's time counted once per
    side, input and output, and split among the groups on that side by the channels each holds), and weigh each
    removal by how thin it leaves its group. Before that barrier the groups' totals add up to their units, as
    with "units", so the search's thresholds keep their scale."""
    shares = []
    for g in groups:
        share = 0.0
        for name, side, per_unit in g.sides:
            layer = table.layers[name]
            channels = layer.in_channels if side == "in" else layer.out_channels
            share += layer.cost(layer.in_channels, layer.out_channels) * min(1.0, g.units * per_unit / channels)
        shares.append(share)
    weighed = [(g, s) for g, s in zip(groups, shares) if s > 0]
    if not weighed:
        return
    total_share = sum(s for _, s in weighed)
    total_units = sum(g.units for g, _ in weighed)
    for g, share in weighed:
        # the r-th unit removed weighs 1 / (1 - r/n) more: the fewer units a group keeps, the more each carries,
        # and summed over a group of equal scores this is -log(kept fraction), whose optimum under a time budget
        # with costs proportional to each group's share is the same fraction in every group: uniform pruning
        steps = np.diff(g.lost) / (1.0 - np.arange(g.units) / g.units)
        g.lost = np.concatenate([[0.0], np.cumsum(steps)]) / g.units * (share / total_share * total_units)


def _widths(table: Any, groups: list[_Group], keeps: Mapping[int, int]) -> dict[str, tuple[int, int]]:
    removed: dict[tuple[str, str], float] = {}
    for g in groups:
        for name, side, per_unit in g.sides:
            removed[(name, side)] = removed.get((name, side), 0.0) + (g.units - keeps[g.index]) * per_unit
    out = {}
    for name, layer in table.layers.items():
        cin = layer.in_channels - round(removed.get((name, "in"), 0.0))
        cout = layer.out_channels - round(removed.get((name, "out"), 0.0))
        if layer.geometry.kind == "depthwise":
            cin = cout = min(cin, cout)
        out[name] = (max(cin, 1), max(cout, 1))
    return out


def search(table: Any, groups: list[_Group], target: float, *, swaps: int = 200) -> LatencyPlan:
    """HALP's knapsack by Lagrangian greedy (see the module docstring): widths whose predicted ratio ≤ ``target``.

    Three phases: shrink (cheapest importance per millisecond first) until the target holds; give back (most
    importance per millisecond first) while it still holds; then up to ``swaps`` exchanges of one group's step up
    against another's step down that keep the target and gain importance (a 2-opt pass over the greedy's choice,
    which steps of 16 channels leave coarse)."""
    keeps = {g.index: g.units for g in groups}
    allowed = {g.index: g.keeps() for g in groups}
    touch: dict[str, list[tuple[int, str, float]]] = {}
    for g in groups:
        for name, side, per_unit in g.sides:
            touch.setdefault(name, []).append((g.index, side, per_unit))
    units = {g.index: g.units for g in groups}

    def layer_share(name: str, k: Mapping[int, int]) -> float:
        layer = table.layers[name]
        cin, cout = layer.in_channels, layer.out_channels
        for gi, side, per_unit in touch.get(name, ()):
            removed = round((units[gi] - k[gi]) * per_unit)
            if side == "in":
                cin -= removed
            else:
                cout -= removed
        if layer.geometry.kind == "depthwise":
            cin = cout = min(cin, cout)
        return table.layer_share(name, max(cin, 1), max(cout, 1))

    def delta(g: _Group, k: int, base: Mapping[int, int]) -> float:
        names = {n for n, _, _ in g.sides}
        trial = {**base, g.index: k}
        return sum(layer_share(n, trial) - layer_share(n, base) for n in names)

    def lost(g: _Group, k: int) -> float:
        return float(g.lost[g.units - k])

    def down(g: _Group, base: Mapping[int, int]) -> tuple[float, float, int] | None:
        """(importance lost, ratio change < 0, keep) of the nearest narrower width that saves time."""
        options = allowed[g.index]
        for k in options[:options.index(base[g.index])][::-1]:
            d = delta(g, k, base)
            if d < -1e-12:
                return lost(g, k) - lost(g, base[g.index]), d, k
        return None

    def up(g: _Group, base: Mapping[int, int]) -> tuple[float, float, int] | None:
        """(importance regained, ratio change ≥ 0, keep) of the next wider allowed width."""
        options = allowed[g.index]
        pos = options.index(base[g.index])
        if pos + 1 >= len(options):
            return None
        k = options[pos + 1]
        return lost(g, base[g.index]) - lost(g, k), delta(g, k, base), k

    active = [g for g in groups if g.sides]
    ratio = table.predict_ratio(_widths(table, groups, keeps))
    while ratio > target:
        moves = [(m[0] / -m[1], g, m) for g in active if (m := down(g, keeps)) is not None]
        if not moves:
            break
        _, g, m = min(moves, key=lambda t: t[0])
        keeps[g.index], ratio = m[2], ratio + m[1]

    def give_back() -> float:
        r = ratio
        while True:
            moves = [(m[0] / max(m[1], 1e-12), g, m) for g in active
                     if (m := up(g, keeps)) is not None and r + m[1] <= target + 1e-12]
            if not moves:
                return r
            _, g, m = max(moves, key=lambda t: t[0])
            keeps[g.index], r = m[2], r + m[1]

    if ratio <= target:
        ratio = give_back()
        for _ in range(swaps):
            best = None
            for g_up in active:
                u = up(g_up, keeps)
                if u is None:
                    continue
                grown = {**keeps, g_up.index: u[2]}
                for g_down in active:
                    if g_down is g_up:
                        continue
                    d = down(g_down, grown)
                    if d is None or ratio + u[1] + d[1] > target + 1e-12:
                        continue
                    gain = u[0] - d[0]
                    if gain > 1e-9 and (best is None or gain > best[0]):
                        best = (gain, g_up, u, g_down, d)
            if best is None:
                break
            _, g_up, u, g_down, d = best
            keeps[g_up.index], keeps[g_down.index] = u[2], d[2]
            ratio = table.predict_ratio(_widths(table, groups, keeps))
            ratio = give_back()
    widths = _widths(table, groups, keeps)
    total_lost = float(sum(lost(g, keeps[g.index]) for g in groups))
    return LatencyPlan(keeps, table.predict_ratio(widths), widths, total_lost)


def min_ratio(table: Any, groups: list[_Group]) -> float:
    """The lowest predicted ratio the allowed widths reach (every prunable group at its narrowest width)."""
    keeps = {g.index: (g.keeps()[0] if g.sides else g.units) for g in groups}
    return table.predict_ratio(_widths(table, groups, keeps))


# --- the entry point ---------------------------------------------------------------------------------------------


def _next_goal(target: float, rounds: list[dict[str, Any]]) -> float:
    """The table ratio to aim at next: the secant through the last two (predicted, measured) rounds where they
    differ, else the last round scaled by measured/predicted (the runtime is that far off the table here)."""
    timed = [(r["predicted"], r["measured"]["ratio"]) for r in rounds
             if r["measured"] is not None and r["measured"]["ratio"] is not None]
    (p1, m1) = timed[-1]
    if len(timed) >= 2:
        p0, m0 = timed[-2]
        if abs(p1 - p0) > 1e-6 and (m1 - m0) / (p1 - p0) > 0:
            return p1 + (target - m1) * (p1 - p0) / (m1 - m0)
    return target * p1 / m1


def _batched(inputs: tuple, batch: int) -> tuple:
    return tuple(x.expand(batch, *x.shape[1:]).contiguous().clone() if isinstance(x, torch.Tensor) and x.dim() > 0
                 else x for x in inputs)


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor | tuple, config: Any, *, data: Any = None,
                     loss: Any = None, table: Any = None, keeps: Mapping[int, int] | None = None,
                     runtime_option: str = "target_latency.backend") -> nn.Module:
    """``prune_channels`` with ``config.target_latency``: widths from the latency table (measured, or ``table``
    given), the model pruned to them, then timed against the original (see the module docstring).

    ``keeps`` (group index → units kept, as ``pruning_info(model)["latency"]["keeps"]`` records a finished search's
    choice) prunes straight to those widths with the same criterion and data: no table, no timing, no runtime — how
    a run folder rebuilds its pruned architecture. ``runtime_option``: how the caller lets the user choose the
    runtime, named when it is not installed."""
    from slimkit.analysis import build_latency_table, compare_latency
    from slimkit.graph import dependency_graph
    from slimkit.prune._criteria import CRITERIA, PruneContext
    from slimkit.prune._structured import _prune_once, pruning_info, set_pruning_info

    target = as_latency_target(config.target_latency)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if keeps is not None:
        return _prune_once(model, inputs, config, 0.0, data, loss, keeps=dict(keeps))
    require_runtime(target.runtime, runtime_option)  # not installed: said before any work
    batch = target.batch or int(inputs[0].shape[0])
    if table is None:
        table = build_latency_table(model, inputs, batch=batch, threads=target.threads, max_points=target.max_points,
                                    backend=target.runtime)
    elif (measured_in := getattr(table, "backend", DEFAULT_RUNTIME)) != target.runtime:
        raise ConfigError(f"the latency table given was measured in {measured_in}, but the target is in "
                          f"{target.runtime}: build the table with backend={target.runtime!r}, or drop it")
    graph = dependency_graph(model, inputs, skip=config.skip, protect_first=config.protect_first,
                             layers=config.layers, leaf_modules=config.leaf_modules)
    criterion = CRITERIA.get(config.criterion)()
    ctx = PruneContext(graph, data=data, loss=loss, batches=config.batches, rng=np.random.default_rng(config.seed),
                       options=dict(config.criterion_options))
    ctx.criterion = criterion
    if criterion.needs_data:
        ctx.calibration_batches(config.criterion)
    criterion.prepare(ctx)
    groups = _groups(graph, ctx, criterion, table, target.min_keep, target.sub_block, target.group_weight)
    floor = min_ratio(table, groups)
    rounds: list[dict[str, Any]] = []
    tried: list[tuple[nn.Module, LatencyPlan, dict[str, Any] | None]] = []
    x = _batched(inputs, batch)

    def attempt(goal: float) -> dict[str, Any] | None:
        """The plan for ``goal`` built, timed against the original when ``target.measure``, and recorded."""
        plan = search(table, groups, goal)
        pruned = _prune_once(model, inputs, config, 0.0, data, loss, keeps=plan.keeps)
        measured = None
        if target.measure:
            cmp = compare_latency(model, pruned, x, backend=target.runtime, threads=target.threads)
            measured = {"ratio": cmp.ratio, "p10": cmp.ratio_p10, "p90": cmp.ratio_p90, "aa": cmp.aa_ratio,
                        "status": cmp.status}
        rounds.append({"goal": goal, "predicted": plan.predicted, "measured": measured})
        tried.append((pruned, plan, measured))
        log.info("latency target %.3f: round %d predicted %.3f, measured %s", target.ratio, len(rounds) - 1,
                 plan.predicted, "—" if measured is None else measured["status"] if measured["ratio"] is None
                 else f"{measured['ratio']:.3f}")
        return measured

    goal = target.ratio
    if floor > target.ratio:
        # the table may be pessimistic at narrow widths (isolated kernels, colder caches than in the network): the
        # narrowest model the allowed widths make is timed before the target is called out of reach
        reach = attempt(floor * (1 + 1e-9)) if target.measure else None
        reached = None if reach is None else reach["ratio"]
        if reached is None or reached > target.ratio * (1 + target.tolerance):
            if reached is None:
                what = (f"{floor:.2f} of the original's latency is predicted with every prunable group at its "
                        "narrowest measured width")
                least = floor
            else:
                what = (f"with every prunable group at its narrowest allowed width the model measured {reached:.2f} "
                        f"of the original's latency (the table predicted {floor:.2f})")
                least = reached
            raise ConfigError(f"target_latency {target.ratio} is below what pruning can reach on this model: "
                              f"{what} (unprunable layers and other ops take {table.other:.0%}): use target_latency "
                              f"≥ {math.ceil(least * 100) / 100:.2f}"
                              + ("" if target.sub_block else ", or allow widths below one kernel block "
                                 "(LatencyTarget(sub_block=True))") + (f" or a lower min_keep than {target.min_keep}"
                                                                       if target.min_keep > 0.125 else ""))
        # predicted ↔ measured on the line through (floor, reached) and the unpruned model (1, 1)
        goal = floor + (target.ratio - reached) * (1 - floor) / max(1 - reached, 1e-9)
    for _ in range(target.refine + 1 if not rounds or goal > floor else 0):  # the narrowest model is the answer
        goal = min(0.999, max(floor, goal))
        measured = attempt(goal)
        if measured is None or measured["ratio"] is None:
            break  # nothing trustworthy to correct with
        if abs(measured["ratio"] / target.ratio - 1) <= target.tolerance:
            break
        goal = _next_goal(target.ratio, rounds)
    hits = [t for t in tried if t[2] is not None and t[2]["ratio"] is not None
            and t[2]["ratio"] <= target.ratio * (1 + target.tolerance)]
    timed = [t for t in tried if t[2] is not None and t[2]["ratio"] is not None]
    if hits:  # the hit that keeps the most importance
        pruned, plan, measured = min(hits, key=lambda t: t[1].lost)
    elif timed:  # none hit: the fastest
        pruned, plan, measured = min(timed, key=lambda t: t[2]["ratio"])
    else:
        pruned, plan, measured = tried[-1]
    info = dict(pruning_info(pruned) or {})
    info["latency"] = {
        "target": target.ratio, "batch": batch, "threads": target.threads, "backend": target.runtime,
        "predicted": plan.predicted,
        "measured": measured, "rounds": rounds, "other": table.other, "importance_lost": plan.lost,
        "widths": {name: list(w) for name, w in plan.widths.items()},
        "keeps": {str(index): keep for index, keep in plan.keeps.items()},
        "steps": {name: [t.step_in, t.step_out] for name, t in table.layers.items()},
    }
    set_pruning_info(pruned, info)
    return pruned
