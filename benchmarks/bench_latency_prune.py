"""Latency-aware pruning: ResNet-20 (MNIST) and MobileNetV2 (224×224) pruned to ONNX Runtime latency targets of
0.5× and 0.3× with slimkit's table-driven search, next to uniform L1 pruning and Torch-Pruning at the same MACs,
and 224×224 rows (latency, MACs, params, output agreement) for MobileNetV2, ResNet-18/50 and ShuffleNetV2."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._baselines import CACHE, trained
from benchmarks._common import (
    LATENCY_THREADS,
    Section,
    latency_cell,
    latency_method,
    latency_record,
    machine_info,
    markdown_table,
)
from slimkit._io import write_text_atomic

TITLE = "Latency-aware pruning (ONNX Runtime latency targets)"
#: what a section's heading adds for the runtime its latency was measured in
RUNTIME_WORDS = {"onnxruntime": "", "openvino": ", OpenVINO"}
TARGETS = (0.5, 0.3)
#: bump when the measuring code changes, so cached records are measured again
VERSION = 1
#: LatencyTarget options tried for slimkit's latency target, chosen per target on the validation split (a candidate
#: that cannot reach a target is skipped for it)
CANDIDATE_FIELDS = ("criterion", "min_keep", "sub_block", "group_weight")
CANDIDATES = (("l1", 0.25, False, "units"), ("taylor", 0.25, False, "units"), ("l1", 0.125, True, "units"),
              ("taylor", 0.125, True, "units"), ("l1", 0.125, True, "latency"), ("taylor", 0.125, True, "latency"))
ZOO_224 = (("mobilenet_v2", {}), ("resnet18", {}), ("resnet50", {}), ("shufflenet_v2", {}))

log = logging.getLogger(__name__)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"finetune_images": 1000, "valid_images": 2000, "repeats": 10, "candidates": 1, "zoo": 1,
                "batch": 64, "batch_224": 8}
    return {"finetune_images": 20000, "valid_images": 10000, "repeats": 30, "candidates": len(CANDIDATES),
            "zoo": len(ZOO_224), "batch": 64, "batch_224": 8}


def _cached(key: str, compute) -> Any:
    """A record kept in benchmarks/.cache so an interrupted run resumes (keys carry every setting it depends on)."""
    digest = hashlib.sha256(f"{VERSION}|{key}".encode()).hexdigest()[:16]
    path = CACHE / f"latency_prune-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())["record"]
    record = compute()
    CACHE.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"key": key, "record": record}, default=float))
    return record


def _widths_key(model: nn.Module) -> str:
    return hashlib.sha256(repr([(n, tuple(p.shape)) for n, p in model.state_dict().items()]).encode()).hexdigest()


def _finetune(model: nn.Module, loader) -> nn.Module:
    from slimkit.train import default_optimizer, fit

    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    fit(model, loader, epochs=1, optimizer=lambda p: default_optimizer(p, 0.01), scheduler="cosine", progress=False)
    return model.eval()


def _acc(model: nn.Module, loader) -> float:
    from slimkit.analysis import evaluate

    return float(evaluate(model.eval(), loader).accuracy)


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    from slimkit.analysis import profile

    return int(profile(model, x).total.macs)


def _compare(base: nn.Module, cand: nn.Module, shape: tuple[int, ...], batch: int, repeats: int,
             backend: str = "onnxruntime") -> dict[str, Any]:
    from slimkit.analysis import compare_latency

    torch.manual_seed(0)
    return latency_record(compare_latency(base, cand, torch.rand(batch, *shape), backend=backend,
                                          threads=LATENCY_THREADS, warmup=3, repeats=repeats))


def _recalibrated(model: nn.Module, shape: tuple[int, ...], batches: int = 2, size: int = 8) -> nn.Module:
    """A copy whose BatchNorm statistics are re-estimated on random inputs (cumulative average), as pruning
    evaluations do before comparing outputs (EagleEye's adaptive BN, Li et al. 2020). A randomly initialised
    network with default statistics is degenerate: ShuffleNetV2's logits do not depend on the input at all."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(size, *shape, generator=gen))
    return model.eval()


def _alive(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A random zoo model made input-dependent: zero-initialised residual BN scales (Goyal et al. 2017) set to 1,
    BatchNorm statistics re-estimated (:func:`_recalibrated`)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any():
                m.weight.fill_(1.0)
    return _recalibrated(model, shape)


def _agreement(base: nn.Module, cand: nn.Module, shape: tuple[int, ...], n: int = 16) -> dict[str, float]:
    """Top-1 agreement and relative L2 distance of the logits on ``n`` random inputs, the pruned model's BatchNorm
    statistics re-estimated first (the same random calibration inputs as the base's)."""
    cand = _recalibrated(cand, shape)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = base.eval()(x), cand(x)
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
            "relative_l2": float((a - b).norm() / a.norm().clamp_min(1e-12))}


def _torch_pruning_at(base: nn.Module, x: torch.Tensor, macs: int, last: str) -> tuple[nn.Module | None, str]:
    """Torch-Pruning's L1 MagnitudePruner (same ratio in every layer, output layer ignored) at the largest ratio
    whose MACs do not exceed ``macs`` (bisection over its pruning_ratio)."""
    try:
        import torch_pruning as tp
    except ImportError as error:
        return None, f"not installed ({error})"

    model: nn.Module | None = None

    def prune(ratio: float) -> nn.Module:
        nonlocal model
        model = copy.deepcopy(base).eval()  # held outside: a failure names what the peer left in it
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[model.get_submodule(last)])
        pruner.step()
        return model

    lo, hi, best = 0.0, 0.95, None
    try:
        for _ in range(9):
            mid = (lo + hi) / 2
            model = prune(mid)
            if _macs(model, x) <= macs:
                best, hi = model, mid
            else:
                lo = mid
    except Exception as error:  # report what the peer does on this model, do not hide it
        text = f"{type(error).__name__}: {(str(error).splitlines() or [repr(error)])[0][:90]}"
        widths = _peer_widths(base, model, last) if model is not None else []
        if widths:
            text += f" ({'; '.join(widths)})"
        return None, text
    return (best, "ok") if best is not None else (None, "MAC target not reached")


def _peer_widths(base: nn.Module, model: nn.Module, last: str) -> list[str]:
    """What a peer's pruned CIFAR ResNet left inconsistent: option-A shortcuts (``ChannelPadShortcut``, zero
    channels added by ``F.pad``, which a graph that cannot follow the pad sees as an opaque op) still padding as
    many zero channels as before while their block's width changed, and a classifier reading another width than
    the last block gives it."""
    from slimkit.models._resnet_cifar import ChannelPadShortcut

    facts, width = [], None
    originals = dict(base.named_modules())
    for name, block in model.named_modules():
        shortcut = getattr(block, "shortcut", None)
        if not hasattr(block, "conv2") or shortcut is None:
            continue
        width = block.conv2.out_channels
        before = originals.get(name)
        if not isinstance(shortcut, ChannelPadShortcut) or not hasattr(before, "shortcut"):
            continue
        zeros = shortcut.pad[4] + shortcut.pad[5]
        if block.conv1.in_channels + zeros != width:  # the sum the residual addition needs
            facts.append(f"{name}.shortcut turns {block.conv1.in_channels} channels into "
                         f"{block.conv1.in_channels + zeros} for a block {width} wide")
        elif shortcut.pad == before.shortcut.pad and width != before.conv2.out_channels:
            facts.append(f"{name}.shortcut still adds {shortcut.pad[4]}+{shortcut.pad[5]} zero channels, its "
                         f"block now {width} wide, not {before.conv2.out_channels}")
    reads = getattr(dict(model.named_modules()).get(last), "in_features", None)
    if width is not None and reads is not None and reads != width:
        facts.append(f"{last} reads {reads} channels of the last block's {width}")
    return facts[-2:]


def _first_uniform(base: nn.Module, x: torch.Tensor, ratios: list[float], fits) -> nn.Module | None:
    """slimkit uniform L1 (same ratio per group) at the first of ``ratios`` (ascending) whose model ``fits``: the
    least pruning that does. Time and its prediction are not monotone in the ratio below one kernel block, so a
    bisection jumps past the point (it had landed at 6 % of the MACs at 0.5×)."""
    from slimkit.prune import PruneConfig, prune_channels

    for ratio in ratios:
        model = prune_channels(base, x, PruneConfig(ratio=ratio))
        if fits(model):
            return model
    return None


def _uniform_at_latency(base: nn.Module, x: torch.Tensor, table, predicted: float) -> nn.Module:
    """Uniform L1 at the least pruning (ratios 0.01 ... 0.95) whose table-predicted latency is not above
    ``predicted`` (the latency-aware model's): equal latency by the same latency model."""
    from slimkit.prune import PruneConfig, prune_channels

    found = _first_uniform(base, x, [step / 100 for step in range(1, 96)],
                           lambda model: table.predict_ratio(_layer_widths(model, x, table.batch)) <= predicted)
    return found if found is not None else prune_channels(base, x, PruneConfig(ratio=0.95))


def _uniform_at_measured(base: nn.Module, x: torch.Tensor, shape: tuple[int, ...], batch: int, measured: float,
                         repeats: int, backend: str = "onnxruntime") -> nn.Module | None:
    """Uniform L1 at the least pruning (ratios 0.05 ... 0.90) whose latency, timed against the original as every
    cell here, is not above ``measured`` (the latency-aware model's): equal latency as the runtime sees it, where
    the table can mispredict the two models differently. The first hit is the one most favourable to uniform
    pruning."""
    def fits(model: nn.Module) -> bool:
        ratio = _compare(base, model, shape, batch, repeats, backend)["ratio"]
        return ratio is not None and ratio <= measured

    return _first_uniform(base, x, [step / 20 for step in range(1, 19)], fits)


#: the block-importance criterion of the depth-pruning row (the calibration loss when a block is skipped)
DEPTH_CRITERION = "loss"


def _depth_at_measured(base: nn.Module, x: torch.Tensor, shape: tuple[int, ...], batch: int, measured: float,
                       repeats: int, calibration, backend: str = "onnxruntime") -> nn.Module | None:
    """Depth pruning (whole residual blocks, ``prune_depth``) at the fewest blocks removed whose latency, timed
    against the original as every cell here, is not above ``measured`` (the latency-aware model's): a removed block
    takes all of its time with it, so this is what a MAC-proportional speed-up costs in accuracy."""
    from slimkit import ConfigError
    from slimkit.prune import DepthPruneConfig, prune_depth

    for n in range(1, 64):
        try:
            model = prune_depth(base, x, DepthPruneConfig(n_blocks=n, criterion=DEPTH_CRITERION), data=calibration)
        except ConfigError:  # no more blocks to remove
            return None
        ratio = _compare(base, model.eval(), shape, batch, repeats, backend)["ratio"]
        if ratio is not None and ratio <= measured:
            return model
    return None


#: the search behind the "widths keeping the most MACs" row: starts (the full model, then random widths), the
#: smallest fraction of a group kept, and whether widths below one kernel block are allowed
MOST_MACS_STARTS, MOST_MACS_MIN_KEEP, MOST_MACS_SUB_BLOCK = 100, 0.125, True


def _most_macs_at_latency(base: nn.Module, x: torch.Tensor, table, predicted: float) -> nn.Module | None:
    """The widths that keep the most MACs with a table-predicted latency not above ``predicted``, L1 channels:
    how much of a MAC reduction the runtime turns into speed-up at that predicted latency when the widths are
    chosen for that alone, whatever it costs in accuracy (not a pruning method; the table can mispredict, so the
    row's own measured latency is what counts). The search: from the full model and from random widths, shrink
    the group losing the fewest MACs per predicted time saved (its nearest lower step that saves any) until the
    prediction holds, then hill-climb by moving one group a step up and another a step down while it still holds;
    the best of ``MOST_MACS_STARTS`` starts. None when no start reaches ``predicted``."""
    import numpy as np

    from slimkit.graph import dependency_graph
    from slimkit.prune import PruneConfig
    from slimkit.prune._criteria import CRITERIA, PruneContext
    from slimkit.prune._latency import _groups, _widths
    from slimkit.prune._structured import _prune_once

    graph = dependency_graph(base, (x,))
    criterion = CRITERIA.get("l1")()
    ctx = PruneContext(graph, rng=np.random.default_rng(0), options={}, criterion=criterion)
    criterion.prepare(ctx)
    groups = [g for g in _groups(graph, ctx, criterion, table, min_keep=MOST_MACS_MIN_KEEP,
                                 sub_block=MOST_MACS_SUB_BLOCK) if g.sides]  # the others stay whole
    allowed = {g.index: g.keeps() for g in groups}

    def ratio(keeps: dict[int, int]) -> float:
        return table.predict_ratio(_widths(table, groups, keeps))

    def macs(keeps: dict[int, int]) -> int:
        widths = _widths(table, groups, keeps)
        return sum(t.geometry.macs(*widths[name]) for name, t in table.layers.items())

    def step_down(keeps: dict[int, int], g: Any, now: float) -> tuple[dict[int, int], float] | None:
        for lower in reversed([k for k in allowed[g.index] if k < keeps[g.index]]):
            trial = {**keeps, g.index: lower}
            saved = now - ratio(trial)
            if saved > 1e-9:
                return trial, saved
        return None

    rng = np.random.default_rng(0)
    best: dict[int, int] | None = None
    for start in range(MOST_MACS_STARTS):
        keeps = {g.index: g.units if start == 0 else allowed[g.index][rng.integers(len(allowed[g.index]) // 2,
                                                                                 len(allowed[g.index]))]
                 for g in groups}
        while (now := ratio(keeps)) > predicted:
            before = macs(keeps)
            moves = [((before - macs(trial)) / saved, trial)
                     for trial, saved in filter(None, (step_down(keeps, g, now) for g in groups))]
            if not moves:
                break
            keeps = min(moves, key=lambda m: m[0])[1]
        if ratio(keeps) > predicted:
            continue
        improved = True
        while improved:
            improved, before = False, macs(keeps)
            for g in groups:
                for up in [k for k in allowed[g.index] if k > keeps[g.index]][:2]:
                    for h in groups:
                        for down in ([k for k in allowed[h.index] if k < keeps[h.index]][-2:]
                                     if h.index != g.index else []):
                            trial = {**keeps, g.index: up, h.index: down}
                            if ratio(trial) <= predicted and macs(trial) > before:
                                keeps, before, improved = trial, macs(trial), True
        if best is None or macs(keeps) > macs(best):
            best = keeps
    if best is None:
        return None
    return _prune_once(base, (x,), PruneConfig(criterion="l1"), 0.0, None, None, keeps=best)


def _layer_widths(model: nn.Module, x: torch.Tensor, batch: int) -> dict[str, tuple[int, int]]:
    from slimkit.analysis._latency_table import model_layers

    return {layer.name: (layer.cin, layer.cout) for layer in model_layers(model, x, batch)}


def _resnet20(s: dict[str, Any], tmp: Path, backend: str = "onnxruntime") -> tuple[str, dict[str, Any]]:
    from slimkit import ConfigError
    from slimkit.analysis import build_latency_table
    from slimkit.data import TensorLoader, create_data
    from slimkit.prune import LatencyTarget, PruneConfig, prune_channels, prune_to_latency, pruning_info

    data = create_data("mnist", batch_size=128)
    base = trained("resnet20", 4, data=data)
    x = data.example_input(1)
    shape = tuple(x.shape[1:])
    base_macs = _macs(base, x)
    train = TensorLoader(data.train.inputs[:s["finetune_images"]], data.train.targets[:s["finetune_images"]], 128,
                         shuffle=True, seed=0)
    valid = TensorLoader(data.valid.inputs[:s["valid_images"]], data.valid.targets[:s["valid_images"]], 500)
    began = time.perf_counter()
    table = build_latency_table(base, x, batch=s["batch"], threads=LATENCY_THREADS, cache_dir=tmp, backend=backend)
    table_s = time.perf_counter() - began

    def ours(target: float, criterion: str, min_keep: float, sub_block: bool, group_weight: str,
             measure: bool) -> nn.Module:
        config = PruneConfig(criterion=criterion, target_latency=LatencyTarget(
            target, batch=s["batch"], threads=LATENCY_THREADS, min_keep=min_keep, sub_block=sub_block,
            group_weight=group_weight, measure=measure, refine=2 if measure else 0, backend=backend))
        return prune_to_latency(base, x, config, data=data.calibration, table=table)

    # validation: which LatencyTarget options to use for each target, by validation accuracy after the fine-tune
    tuning: list[dict[str, Any]] = []
    chosen: dict[float, dict[str, Any]] = {}
    for target in TARGETS:
        for candidate in CANDIDATES[:s["candidates"]]:
            entry = {**dict(zip(CANDIDATE_FIELDS, candidate)), "target": target}
            try:
                model = ours(target, *candidate, measure=True)
            except ConfigError as error:  # this candidate cannot reach the target: it is out
                tuning.append({**entry, "valid_accuracy": None, "note": "target out of reach: "
                               + str(error).split("use ")[-1].split(",")[0]})
                continue
            key = f"tune|{_widths_key(model)}|{'|'.join(map(str, candidate))}|{target}|{s}"
            acc = _cached(key, lambda model=model: _acc(_finetune(model, train), valid))
            info = pruning_info(model)["latency"]
            tuning.append({**entry, "valid_accuracy": acc, "predicted": info["predicted"],
                           "measured": (info["measured"] or {}).get("ratio"), "mac_ratio": _macs(model, x) / base_macs})
        tried = [t for t in tuning if t["target"] == target and t["valid_accuracy"] is not None]
        best = max(tried, key=lambda t: t["valid_accuracy"]) if tried else dict(zip(CANDIDATE_FIELDS,
                                                                                    CANDIDATES[-1]))
        chosen[target] = {k: best[k] for k in CANDIDATE_FIELDS}

    rows: list[list[Any]] = [["unpruned", "", base_macs, 1.0, "1 (reference)", "1 (reference)", "", "",
                              _acc(base, data.test)]]
    records: list[dict[str, Any]] = []
    for target in TARGETS:
        mine = ours(target, *chosen[target].values(), measure=True)
        info = pruning_info(mine)["latency"]
        macs = _macs(mine, x)
        methods: list[tuple[str, nn.Module | None, str]] = [("slimkit latency target", mine, "ok")]
        methods.append(("uniform L1, same MACs", prune_channels(base, x, PruneConfig(target_macs=macs)), "ok"))
        methods.append(("uniform L1, same predicted latency",
                        _uniform_at_latency(base, x, table, info["predicted"]), "ok"))
        measured = (info["measured"] or {}).get("ratio")
        same_time = None if measured is None else _uniform_at_measured(base, x, shape, s["batch"], measured,
                                                                        s["repeats"] // 3, backend)
        methods.append(("uniform L1, same measured latency", same_time,
                        "ok" if same_time is not None else "slimkit's latency was too noisy to match"
                        if measured is None else "no uniform ratio is as fast"))
        depth = None if measured is None else _depth_at_measured(base, x, shape, s["batch"], measured,
                                                                 s["repeats"] // 3, data.calibration, backend)
        methods.append(("whole residual blocks removed, same measured latency", depth,
                        "ok" if depth is not None else "slimkit's latency was too noisy to match"
                        if measured is None else "no block count is as fast"))
        most_macs = _most_macs_at_latency(base, x, table, info["predicted"])
        methods.append(("widths keeping the most MACs, same predicted latency", most_macs,
                        "ok" if most_macs is not None else "the search found no widths at this predicted latency"))
        peer, status = _torch_pruning_at(base, x, macs, "fc")
        methods.append(("Torch-Pruning L1, same MACs", peer, status))
        for label, model, status in methods:
            if model is None:
                rows.append([label, f"{target}×", "", "", "", "", "", status, ""])
                records.append({"target": target, "method": label, "status": status})
                continue

            accuracy = _cached(f"test|{_widths_key(model)}|{label}|{target}|{s}",
                               lambda model=model: _acc(_finetune(model, train), data.test))
            r = {"macs": _macs(model, x), "params": sum(p.numel() for p in model.parameters()),
                 "b64": _compare(base, model, shape, s["batch"], s["repeats"], backend),
                 "b1": _compare(base, model, shape, 1, 2 * s["repeats"], backend), "test_accuracy": accuracy}
            mac_ratio = r["macs"] / base_macs
            b64 = r["b64"]
            efficiency = None if b64["ratio"] is None else mac_ratio / b64["ratio"]
            widths = _layer_widths(model, x, table.batch)
            # the table prices widths of its own layers; a model without some blocks (renumbered) has no prediction
            predicted = table.predict_ratio(widths) if set(widths) == set(table.layers) else None
            rows.append([label, f"{target}×", r["macs"], round(mac_ratio, 3), latency_cell(b64),
                         latency_cell(r["b1"], aa=False), "" if predicted is None else round(predicted, 3),
                         "too noisy" if efficiency is None else f"{efficiency:.0%}", r["test_accuracy"]])
            records.append({"target": target, "method": label, **r, "mac_ratio": mac_ratio,
                            "speedup_share_of_mac_reduction_b64": efficiency, "predicted": predicted,
                            "rounds": info["rounds"] if model is mine else None})
    goals = []
    for target in TARGETS:
        by = {r["method"]: r for r in records if r["target"] == target and "test_accuracy" in r}
        mine_r, uni = by.get("slimkit latency target"), by.get("uniform L1, same measured latency")
        if mine_r is None:
            continue
        eff = mine_r["speedup_share_of_mac_reduction_b64"]
        line = (f"{target}×: speed-up = {'too noisy to tell' if eff is None else f'{eff:.0%}'} of the MAC reduction "
                f"(goal ≥ 85%)")
        most = by.get("widths keeping the most MACs, same predicted latency")
        deep = by.get("whole residual blocks removed, same measured latency")
        if deep is not None and deep["speedup_share_of_mac_reduction_b64"] is not None:
            line += (f"; whole residual blocks removed to the same measured latency reach "
                     f"{deep['speedup_share_of_mac_reduction_b64']:.0%} (latency "
                     f"{latency_cell(deep['b64'], aa=False)}, test accuracy {deep['test_accuracy']:.2%})")
        if most is not None and most["speedup_share_of_mac_reduction_b64"] is not None:
            line += (f"; the widths keeping the most MACs at the same predicted latency reach "
                     f"{most['speedup_share_of_mac_reduction_b64']:.0%} (latency "
                     f"{latency_cell(most['b64'], aa=False)}, test accuracy {most['test_accuracy']:.2%})")
        if uni is not None:
            line += (f"; test accuracy {mine_r['test_accuracy']:.2%} against {uni['test_accuracy']:.2%} for uniform "
                     f"L1 at the same measured latency (b64 in this table's timing: "
                     f"{latency_cell(mine_r['b64'], aa=False)} vs {latency_cell(uni['b64'], aa=False)})")
        goals.append(f"- {line}.")
    table_md = markdown_table(["method", "target", "MACs", "MAC ratio", "latency ratio b64 (p10–p90), A/A",
                               "latency ratio b1", "predicted b64", "speed-up ÷ MAC reduction (b64)",
                               "test accuracy"], rows)
    tune_md = markdown_table(["target", "criterion", "min_keep", "sub_block", "group_weight", "validation accuracy",
                              "predicted b64", "measured b64", "MAC ratio"],
                             [[f"{t['target']}×", t["criterion"], t["min_keep"], t["sub_block"],
                               t.get("group_weight", "units"),
                               t.get("note") if t["valid_accuracy"] is None else t["valid_accuracy"],
                               round(t["predicted"], 3) if "predicted" in t else "",
                               round(t["measured"], 3) if t.get("measured") is not None else "",
                               round(t["mac_ratio"], 3) if "mac_ratio" in t else ""] for t in tuning])
    picks = "; ".join(f"{t}×: `{c['criterion']}`, `min_keep={c['min_keep']}`, `sub_block={c['sub_block']}`, "
                      f"`group_weight={c['group_weight']!r}`" for t, c in chosen.items())
    runtime = RUNTIME_WORDS[backend]
    target_args = f"t, batch={s['batch']}" + ("" if backend == "onnxruntime" else f", backend={backend!r}")
    text = f"""### ResNet-20 on MNIST, latency targets at batch {s['batch']}{runtime}

Baseline `trained("resnet20", 4)`. slimkit: `PruneConfig(target_latency=LatencyTarget({target_args}))`
on a latency table measured on this machine ({table_s:.0f} s to build; {len(table.layers)} layers, other ops
{table.other:.0%} of the run time), up to two measured correction rounds (secant on predicted vs measured).
Every model then gets the same fine-tune: 1 epoch on the first {s['finetune_images']} training images (SGD lr
0.01, cosine); accuracy on the full 10,000-image test set, touched once for this table. Chosen per target on the
validation split (first {s['valid_images']} of MNIST's 10,000 validation images, after the same fine-tune):
{picks}. "Same predicted latency": the first of the uniform L1 ratios 0.01, 0.02, ... whose table prediction is
not above the latency-aware model's; "same measured latency": the first of the uniform ratios 0.05, 0.10, ... 0.90
whose latency, timed against the original ({s['repeats'] // 3} rounds), is not above the latency-aware model's own
measured ratio — the equal latency the goal compares at, as the table can mispredict the two models differently
(its row is timed again below, so the two cells can differ by the machine's noise). "Widths keeping the most
MACs": not a pruning method — the widths (L1 channels; every group down to {MOST_MACS_MIN_KEEP:g} of its units,
{"widths below one kernel block allowed" if MOST_MACS_SUB_BLOCK else "whole kernel blocks only"}) that keep the
most MACs at the latency-aware model's table-predicted latency, as a greedy over the table finds them (the full
model and {MOST_MACS_STARTS - 1} random starts, then a pairwise hill-climb; a search, not a proof of the maximum):
how much of a MAC reduction this runtime turns into speed-up at that latency when widths are chosen for that
alone, whatever the accuracy; its own measured latency is in its row. "Whole residual blocks removed": depth
pruning (`prune_depth`, criterion `{DEPTH_CRITERION}` on the calibration batches; the candidates are every block
that keeps its input's shape, all stages at once, so the down-sampling first blocks of stages 2 and 3 stay) at the
fewest blocks whose measured latency is not above the latency-aware model's, timed as the uniform row.
"Speed-up ÷ MAC reduction" = (1 / latency ratio) ÷ (1 / MAC ratio): 100% means every MAC removed became time saved.
Latency: {latency_method(backend)}.

{table_md}

{chr(10).join(goals)}

Validation runs (each as the final run: timed, up to two correction rounds; a target below the table's floor is
out of reach only when the narrowest allowed model, timed, misses it too):

{tune_md}
"""
    return text, {"table_other": table.other, "table_seconds": table_s,
                  "chosen": {str(t): c for t, c in chosen.items()}, "tuning": tuning,
                  "rows": records, "base_macs": base_macs}


def _mobilenet_targets(s: dict[str, Any], tmp: Path, backend: str = "onnxruntime") -> tuple[str, dict[str, Any]]:
    from slimkit import models
    from slimkit.analysis import build_latency_table
    from slimkit.prune import LatencyTarget, PruneConfig, prune_channels, prune_to_latency, pruning_info

    torch.manual_seed(0)
    shape = (3, 224, 224)
    base = _alive(models.create("mobilenet_v2", num_classes=1000, in_channels=3, input_size=224), shape)
    x = torch.zeros(1, 3, 224, 224)
    base_macs = _macs(base, x)
    batch = s["batch_224"]
    table = build_latency_table(base, x, batch=batch, threads=LATENCY_THREADS, cache_dir=tmp, backend=backend)
    rows, records = [], []
    for target in TARGETS:
        mine = prune_to_latency(base, x, PruneConfig(target_latency=LatencyTarget(
            target, batch=batch, backend=backend)), table=table)
        # the other way to weigh groups (ResNet-20's validation chose it): is it as good off MNIST?
        weighed = prune_to_latency(base, x, PruneConfig(target_latency=LatencyTarget(
            target, batch=batch, group_weight="latency", backend=backend)), table=table)
        macs = _macs(mine, x)
        peer, status = _torch_pruning_at(base, x, macs, "fc")
        for label, model, st in (("slimkit latency target", mine, "ok"),
                                 ("slimkit latency target, `group_weight='latency'`", weighed, "ok"),
                                 ("uniform L1, same MACs", prune_channels(base, x, PruneConfig(target_macs=macs)),
                                  "ok"),
                                 ("Torch-Pruning L1, same MACs", peer, status)):
            if model is None:
                rows.append([label, f"{target}×", "", "", "", "", "", st, "", ""])
                continue

            r = {"macs": _macs(model, x), "params": sum(p.numel() for p in model.parameters()),
                 f"b{batch}": _compare(base, model, shape, batch, max(10, s["repeats"] // 2), backend),
                 "b1": _compare(base, model, shape, 1, s["repeats"], backend), **_agreement(base, model, shape),
                 "predicted": table.predict_ratio(_layer_widths(model, x, batch))}
            mac_ratio = r["macs"] / base_macs
            lat = r[f"b{batch}"]
            eff = None if lat["ratio"] is None else mac_ratio / lat["ratio"]
            rows.append([label, f"{target}×", r["macs"], round(mac_ratio, 3), latency_cell(lat),
                         latency_cell(r["b1"], aa=False), round(r["predicted"], 3),
                         "too noisy" if eff is None else f"{eff:.0%}", f"{r['top1_agreement']:.0%}",
                         round(r["relative_l2"], 3)])
            rounds = pruning_info(model)["latency"]["rounds"] if model is mine or model is weighed else None
            records.append({"target": target, "method": label, **r, "mac_ratio": mac_ratio,
                            "speedup_share_of_mac_reduction": eff, "rounds": rounds})
    text = f"""### MobileNetV2 at 224×224, latency targets at batch {batch}{RUNTIME_WORDS[backend]}

`models.create("mobilenet_v2", num_classes=1000, in_channels=3, input_size=224)`, randomly initialised and made
input-dependent as in the ONNX Runtime section's 224×224 zoo table (no ImageNet here, so no accuracy), L1 criterion,
default `LatencyTarget` options (steps of the measured block only, `min_keep=0.25`, `group_weight='units'`), and the
same with `group_weight='latency'` (each group weighs its share of the predicted time); uniform L1 and Torch-Pruning
are matched to the MACs of the first.

{markdown_table(["method", "target", "MACs", "MAC ratio", f"latency ratio b{batch} (p10–p90), A/A",
                 "latency ratio b1", f"predicted b{batch}", "speed-up ÷ MAC reduction", "top-1 agreement",
                 "relative L2"], rows)}
"""
    return text, {"rows": records, "base_macs": base_macs, "table_other": table.other}


def _zoo_224(s: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from slimkit import models
    from slimkit.prune import PruneConfig, prune_channels

    batch = s["batch_224"]
    shape = (3, 224, 224)
    x = torch.zeros(1, *shape)
    rows, records = [], []
    for name, options in ZOO_224[:s["zoo"]]:
        torch.manual_seed(0)
        base = _alive(models.create(name, num_classes=1000, in_channels=3, input_size=224, **options), shape)
        base_macs, base_params = _macs(base, x), sum(p.numel() for p in base.parameters())
        rows.append([name, "—", base_params, base_macs, "1 (reference)", "1 (reference)", "", ""])
        for ratio in (0.3, 0.5):
            began = time.perf_counter()
            model = prune_channels(base, x, PruneConfig(ratio=ratio))
            seconds = time.perf_counter() - began
            repeats = max(8, s["repeats"] // (4 if base_macs > 1e9 else 2))
            r = {"macs": _macs(model, x), "params": sum(p.numel() for p in model.parameters()),
                 "prune_seconds": seconds, "b1": _compare(base, model, shape, 1, repeats),
                 f"b{batch}": _compare(base, model, shape, batch, repeats), **_agreement(base, model, shape)}
            rows.append([name, f"{ratio:.0%}", r["params"], r["macs"], latency_cell(r["b1"]),
                         latency_cell(r[f"b{batch}"]), f"{r['top1_agreement']:.0%}", round(r["relative_l2"], 3)])
            records.append({"model": name, "ratio": ratio, **r, "base_macs": base_macs, "base_params": base_params})
    text = f"""### 224×224 zoo, uniform L1 pruning

Randomly initialised zoo models at `input_size=224` (1000 classes; zero-initialised residual BN scales set to 1 and
BatchNorm statistics estimated on 16 random images, so that the outputs depend on the input);
`prune_channels(PruneConfig(ratio=r))`, the same ratio in every channel group. Output agreement: top-1 agreement
and relative L2 distance of the logits against the unpruned model on 16 other random images, after re-estimating
the pruned model's BatchNorm statistics the same way (no ImageNet here: this measures how much of the function
survives one-shot pruning, not accuracy).

{markdown_table(["model", "pruned", "params", "MACs", "latency ratio b1 (p10–p90), A/A",
                 f"latency ratio b{batch}", "top-1 agreement", "relative L2"], rows)}
"""
    return text, {"rows": records}


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    s = _settings(quick)
    with tempfile.TemporaryDirectory(prefix="bench-latency-tables-") as tmp:
        resnet_text, resnet = _resnet20(s, Path(tmp))
        mbv2_text, mbv2 = _mobilenet_targets(s, Path(tmp))
    zoo_text, zoo = _zoo_224(s)
    markdown = "\n".join([
        f"Machine: {machine_info()['cpu']}. Latency tables and every latency ratio are measured afresh in each run "
        "(a quiet machine gets its own); only fine-tuned accuracies are cached (`benchmarks/.cache/latency_prune-*`,"
        " keyed by the pruned widths and every setting), so an interrupted run resumes.", "",
        resnet_text, mbv2_text, zoo_text])
    return Section(topic="latency_prune", title=TITLE, markdown=markdown,
                   data={"settings": s, "resnet20": resnet, "mobilenet_v2": mbv2, "zoo_224": zoo,
                         "machine": machine_info()})
