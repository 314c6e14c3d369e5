"""Per-layer sensitivity of every knob: what each choice, applied to its layer (or channel group) alone, costs in
accuracy, from cheap proxies on calibration data.

Measured (``loss``): the calibration set's cross-entropy (or, with ``proxy="kl"``, the KL divergence from the input
model's outputs, which needs no labels) with one choice applied to one layer, minus the input model's. This is the
per-layer sweep of Li et al. (2017, §4.1) and NNCF's accuracy control, read on the loss rather than the accuracy
(smoother on a small calibration set). Channel removal and int8 are always measured: channel removal moves a whole
layer's outputs far from where a second-order expansion holds, and int8 error comes as much from activations as
from weights.

Estimated (``hessian``): for the weight-perturbing knobs (low rank, sparsity, clusters), the second-order term
ΔL ≈ ½ · tr(H_l)/n_l · ‖W_l − Ŵ_l‖² with the layer's average Hessian trace from Hutchinson's estimator
(HAWQ-V2, Dong et al. 2020, Eq. 5; Hutchinson 1989), so every choice costs one weight-error norm instead of a
forward pass over the calibration set.

Additivity: the search adds these per-layer costs (HAWQ-V3's ILP and HALP do the same); the interactions it
misses are what the measured verification and the accuracy-aware back-off are for. Every table is monotone in the
knob (a stronger choice never costs less than a milder one: a smaller measured value is calibration noise).

Every entry is cached in the run folder as it is measured, keyed by the input weights and the settings, so a
resumed search never measures it again.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import DataError
from slimkit.auto._folder import Cache

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _no_progress(what: str, done: int, total: int) -> None:
    pass


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from slimkit.analysis import output_logits

    return output_logits(model(x))


@dataclass
class Calibration:
    """The calibration samples the proxies are measured on, and the input model's score on them."""

    inputs: torch.Tensor
    targets: torch.Tensor
    reference: torch.Tensor
    proxy: str
    base: float
    batch: int = 256
    seconds: float = 0.0

    @classmethod
    def build(cls, model: nn.Module, loader: Iterable, samples: int, proxy: str) -> Calibration:
        xs, ys, seen = [], [], 0
        for batch in loader:
            x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
            if y is None:
                raise DataError("auto needs labelled calibration batches (inputs, targets)")
            xs.append(x)
            ys.append(y)
            seen += len(x)
            if seen >= samples:
                break
        if not xs:
            raise DataError("the calibration loader yielded no batches: auto needs calibration data")
        inputs, targets = torch.cat(xs)[:samples], torch.cat(ys)[:samples]
        calib = cls(inputs, targets, torch.empty(0), proxy, 0.0)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            calib.reference = torch.cat([_logits(model, inputs[i:i + calib.batch]).float()
                                         for i in range(0, len(inputs), calib.batch)])
        model.train(was_training)
        started = time.perf_counter()
        calib.base = calib.score(model)
        calib.seconds = time.perf_counter() - started
        return calib

    def score(self, model: nn.Module) -> float:
        """The mean cross-entropy (``loss``) or KL divergence from the input model (``kl``) over the samples."""
        was_training = model.training
        model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(self.inputs), self.batch):
                out = _logits(model, self.inputs[i:i + self.batch]).float()
                if self.proxy == "kl":
                    ref = self.reference[i:i + len(out)]
                    total += float(nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                                        reduction="sum"))
                else:
                    total += float(nn.functional.cross_entropy(out, self.targets[i:i + len(out)], reduction="sum"))
        model.train(was_training)
        return total / len(self.inputs)

    def delta(self, model: nn.Module) -> float:
        return self.score(model) - self.base


def monotone(deltas: Sequence[float]) -> list[float]:
    """Deltas ordered from the mildest choice to the strongest, made non-decreasing and ≥ 0 (running maximum)."""
    out, best = [], 0.0
    for d in deltas:
        best = max(best, float(d)) if math.isfinite(d) else math.inf
        out.append(best)
    return out


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) channels of every Conv2d and Linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def other_state_bytes(model: nn.Module) -> int:
    """Bytes of the state outside Conv2d and Linear layers (normalisation parameters and statistics, say): what a
    container stores raw besides its clustered layers."""
    from slimkit.share import ClusteredLayer

    layers = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, ClusteredLayer))}

    def in_layer(key: str) -> bool:  # under a layer at any depth (a parametrization's original, say)
        parts = key.split(".")
        return any(".".join(parts[:i]) in layers for i in range(1, len(parts)))

    return sum(t.numel() * t.element_size() for key, t in model.state_dict().items() if not in_layer(key))


# --- channels: structured pruning of one group ---------------------------------------------------------------------


def channel_groups(model: nn.Module, example: Any, skip: Sequence[str]) -> dict[str, int]:
    """Prunable channel groups by name (the first layer whose outputs they are) → units."""
    from slimkit.graph import dependency_graph

    graph = dependency_graph(model, example, skip=tuple(skip))
    groups: dict[str, int] = {}
    for group in graph.groups:
        groups.setdefault(group.name, len(group.units))
    return groups


#: at most this many multiples of a kernel step join a group's levels (see :func:`keep_levels`)
MAX_STEP_LEVELS = 16


def keep_levels(units: int, fractions: Sequence[float], steps: Sequence[int] = (),
                max_step_levels: int = MAX_STEP_LEVELS) -> list[int]:
    """Units kept at each level, from all units down: the fractions of ``units`` (at least 1) and the multiples of
    each kernel step in ``steps`` (widths where a layer's time steps, from the latency table) — at most
    ``max_step_levels`` of them, evenly spaced multiples of a multiple of the step where the group has more. Every
    level is measured (a sensitivity, a latency table row and column each): LeNet-5's 500-wide fc1 at a step of 16
    had 31 step levels and 70 % of the analysis' latency-table points, for widths 3 % of the layer apart."""
    if max_step_levels < 1:
        raise ValueError(f"max_step_levels={max_step_levels}: a group needs at least 1 step level")
    keeps = {units} | {max(1, round(f * units)) for f in fractions}
    for step in steps:
        if 1 < step < units:
            stride = step * math.ceil(((units - 1) // step) / max_step_levels)
            keeps |= set(range(stride, units, stride))
    return sorted(keeps, reverse=True)


def channel_analysis(model: nn.Module, example: Any, calib: Calibration, groups: dict[str, int],
                     levels: dict[str, list[int]], *, criterion: str, data: Any, skip: Sequence[str], seed: int,
                     cache: Cache, progress: Progress = _no_progress, container: bool = True) -> dict[str, Any]:
    """For every group and kept width: the proxy increase with that group alone pruned, the resulting widths of
    every Conv2d/Linear layer that changed (so the search knows which layers each group's width reaches), and what
    it changes in a container besides those layers: the bytes its pruned layout adds to the header (``layout``) and
    the bytes of other state it removes (``other_bytes``: normalisation parameters and statistics, stored raw) —
    these two only with ``container`` (a search with the container format)."""
    from slimkit.auto._plan import ratio_for_keep
    from slimkit.prune import PruneConfig, prune_channels
    from slimkit.share import pruned_layout_bytes

    full = layer_widths(model)
    full_other = other_state_bytes(model)
    total = sum(len(v) - 1 for v in levels.values())
    done = 0
    out: dict[str, Any] = {}
    for name, units in groups.items():
        rows = []
        for keep in levels[name]:
            key = f"{name}|{keep}"
            if keep == units:
                rows.append({"keep": keep, "ratio": 0.0, "delta": 0.0, "widths": {}, "layout": 0, "other_bytes": 0})
                continue
            kept = cache.get(key) if key in cache else None
            if kept is None or (container and any(k not in kept for k in ("layout", "other_bytes"))):
                ratio = ratio_for_keep(units, keep)
                config = PruneConfig(ratio={name: ratio}, criterion=criterion, skip=tuple(skip), seed=seed)
                pruned = prune_channels(model, example, config, data=data)
                widths = {layer: list(w) for layer, w in layer_widths(pruned).items() if full.get(layer) != w}
                # an entry kept before the container's fields were recorded keeps its measured delta
                delta = kept["delta"] if kept is not None and "delta" in kept else calib.delta(pruned)
                cache.put(key, {"keep": keep, "ratio": ratio, "delta": delta, "widths": widths,
                                "layout": pruned_layout_bytes(pruned, model),
                                "other_bytes": full_other - other_state_bytes(pruned)})
            rows.append(dict(cache.get(key)))
            done += 1
            progress("channels", done, total)
        for row, d in zip(rows, monotone([r["delta"] for r in rows])):
            row["delta"] = d
        out[name] = {"units": units, "levels": rows}
    if container:
        _joint_layout(model, example, out, criterion=criterion, data=data, skip=skip, seed=seed, cache=cache)
    return out


def _joint_layout(model: nn.Module, example: Any, groups: dict[str, Any], *, criterion: str, data: Any,
                  skip: Sequence[str], seed: int, cache: Cache) -> None:
    """Scale every level's ``layout`` so that the groups' records add up to what they take together: measured
    alone, each pays for what the header's one record of all of them shares (its key, the compressor's matches),
    twice what ResNet-20's twelve groups took at once. Measured with every group at its mildest pruned level."""
    from slimkit.prune import PruneConfig, prune_channels
    from slimkit.share import pruned_layout_bytes

    mildest = {name: entry["levels"][1] for name, entry in groups.items() if len(entry["levels"]) > 1}
    alone = sum(level.get("layout", 0) for level in mildest.values())
    if len(mildest) < 2 or alone <= 0:
        return
    key = "joint layout|" + ",".join(f"{name}={level['keep']}" for name, level in mildest.items())
    if key not in cache:
        config = PruneConfig(ratio={name: level["ratio"] for name, level in mildest.items()}, criterion=criterion,
                             skip=tuple(skip), seed=seed)
        cache.put(key, pruned_layout_bytes(prune_channels(model, example, config, data=data), model))
    scale = min(1.0, cache.get(key) / alone)
    for entry in groups.values():
        for level in entry["levels"]:
            level["layout"] = level.get("layout", 0) * scale


# --- int8: one layer quantized -------------------------------------------------------------------------------------


def int8_analysis(model: nn.Module, example: Any, calib: Calibration, loader: Iterable, layers: Sequence[str], *,
                  cache: Cache, progress: Progress = _no_progress) -> dict[str, float]:
    """The proxy increase with only one layer quantized to int8 (weights and activations, ``quantize``), per
    layer (the one-at-a-time sweep of Wu et al. 2020, §5.2, and NNCF's accuracy control)."""
    from slimkit.quantize import QuantConfig, quantize

    out = {}
    for i, name in enumerate(layers):
        if name not in cache:
            quantized = quantize(model, example, QuantConfig(layers=(name,)), data=loader)
            cache.put(name, max(0.0, calib.delta(quantized)))
        out[name] = cache.get(name)
        progress("int8", i + 1, len(layers))
    return out


# --- Hessian traces (HAWQ-V2) ---------------------------------------------------------------------------------------


def hessian_traces(model: nn.Module, calib: Calibration, layers: Sequence[str], *, probes: int = 8,
                   batches: int = 2, seed: int = 0) -> dict[str, float]:
    """The average Hessian trace tr(H_l)/n_l of the calibration loss with respect to each layer's weight, by
    Hutchinson's estimator E[vᵀHv] over Rademacher vectors v (HAWQ-V2, Dong et al. 2020, Algorithm 1)."""
    model = copy.deepcopy(model).eval()
    params = [model.get_submodule(name).weight for name in layers]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    sums = [0.0] * len(params)
    size = max(1, math.ceil(len(calib.inputs) / batches))
    count = 0
    for start in range(0, len(calib.inputs), size):
        x, y = calib.inputs[start:start + size], calib.targets[start:start + size]
        loss = nn.functional.cross_entropy(_logits(model, x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(probes):
            vs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for i, (h, v) in enumerate(zip(hv, vs)):
                sums[i] += float((h * v).sum())
        count += 1
    return {name: max(0.0, s / (probes * count)) / p.numel() for name, s, p in zip(layers, sums, params)}


# --- rank: one layer factorised -----------------------------------------------------------------------------------


def rank_analysis(model: nn.Module, example: Any, calib: Calibration, layers: Sequence[str],
                  ratios: Sequence[float], *, method: str, traces: dict[str, float] | None, seed: int, cache: Cache,
                  progress: Progress = _no_progress) -> dict[str, Any]:
    """For every layer and parameter ratio: the factorisation ``decompose`` makes (Tucker-2 for k×k convs, SVD for
    Linear and 1×1 convs), its parameters and MACs as fractions of the layer's, and its cost (measured or the
    Hessian estimate). Ratios at which a layer would not shrink are left out."""
    from slimkit.decompose import DecomposeConfig, decompose, decompose_report

    out: dict[str, Any] = {}
    total, done = len(layers) * len(ratios), 0
    for name in layers:
        rows = []
        for ratio in sorted(ratios, reverse=True):
            key = f"{name}|{ratio}|{method}"
            if key not in cache:
                config = DecomposeConfig(layers=(name,), ratio=ratio, method=("tucker2", "svd"), seed=seed)
                result = decompose(model, example, config)
                row = decompose_report(result).layers[0]
                if row.skipped is not None:
                    cache.put(key, None)
                else:
                    weight = model.get_submodule(name).weight.detach()
                    if method == "hessian":
                        error = float(row.relative_error * weight.norm()) ** 2
                        delta = 0.5 * (traces or {}).get(name, 0.0) * error
                    else:
                        delta = calib.delta(result)
                    cache.put(key, {"ratio": ratio, "method": row.method, "ranks": list(row.ranks),
                                    "params": row.params_after / max(row.params_before, 1),
                                    "macs": row.macs_after / max(row.macs_before, 1), "delta": delta,
                                    "relative_error": row.relative_error})
            if cache.get(key) is not None:
                rows.append(dict(cache.get(key)))
            done += 1
            progress("rank", done, total)
        for row, d in zip(rows, monotone([r["delta"] for r in rows])):
            row["delta"] = d
        if rows:
            out[name] = rows
    return out


# --- container: one layer magnitude-pruned and clustered -------------------------------------------------------------


def clustered_parts(layer: nn.Module) -> dict[str, int]:
    """The bytes a :class:`slimkit.share.ClusteredLayer` takes in the container, by part: its float32 ``codebook``,
    its cluster index and relative index ``streams`` (Han et al. 2016, Sec. 2–4), of which ``tables`` are their
    Huffman code-length tables, and its ``bias`` (the file's header and other tensors are not included); ``total``
    is their sum."""
    from slimkit.share import relative_encode, stream_bytes

    flat = layer.indices.detach().cpu().numpy().ravel()
    gaps, symbols = relative_encode(flat, layer.zero_symbol, layer.index_bits)
    (clusters, clusters_table), (offsets, offsets_table) = (stream_bytes(symbols, layer.zero_symbol + 1),
                                                            stream_bytes(gaps, 2 ** layer.index_bits))
    parts = {"codebook": 4 * layer.codebook.numel(), "streams": clusters + offsets,
             "tables": clusters_table + offsets_table,
             "bias": 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()}
    return {**parts, "total": parts["codebook"] + parts["streams"] + parts["bias"]}


def clustered_bytes(layer: nn.Module) -> int:
    """The bytes a :class:`slimkit.share.ClusteredLayer` takes in the container (:func:`clustered_parts`)."""
    return clustered_parts(layer)["total"]


def container_option(model: nn.Module, name: str, sparsity: float, bits: int, seed: int) -> nn.Module:
    """``model`` with layer ``name`` magnitude-pruned to ``sparsity`` and clustered at ``bits`` (as the recipe's
    ``prune_unstructured`` → ``cluster`` stages would, without the fine-tuning between them)."""
    from slimkit.prune import UnstructuredConfig, finalize, magnitude_prune
    from slimkit.share import ClusterConfig, cluster_weights

    pruned = model
    if sparsity:
        pruned = finalize(magnitude_prune(model, None, UnstructuredConfig(sparsity={name: sparsity})))
    return cluster_weights(pruned, None, ClusterConfig(layers=[name], bits={name: bits}, seed=seed))


@dataclass
class ShortRecovery:
    """A few fine-tuning steps on fixed training batches, pruned weights held at zero: what a sparsity costs once the
    network has adapted to it, rather than one-shot. Magnitude pruning is always followed by retraining (Han et al.
    2015, Sec. 3.1), and one-shot losses overcharge it: on LeNet-300-100 one-shot, layers.3 at 90 % sparsity cost
    12× its 70 % cost, so the search traded sparsity for 2–3 bit clusters that retraining recovers worse. Every option
    sees the same batches in the same order, and the cost is read against the unpruned model after the same steps
    (so the steps' own gain is not credited to any choice)."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    lr: float
    seed: int

    @classmethod
    def build(cls, loader: Iterable, steps: int, lr: float, seed: int) -> ShortRecovery:
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        while len(batches) < steps:
            before = len(batches)
            for batch in loader:
                x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
                if y is None:
                    raise DataError("auto's short recovery needs labelled training batches (inputs, targets)")
                batches.append((x, y))
                if len(batches) == steps:
                    break
            if len(batches) == before:
                raise DataError("the training loader yielded no batches: auto's short recovery needs training data")
        return cls(batches, lr, seed)

    @property
    def label(self) -> str:
        return f"recovered{len(self.batches)}@{self.lr:g}"

    def __call__(self, model: nn.Module) -> nn.Module:
        """``model`` (a copy; masks attached by ``magnitude_prune`` are kept exact) after the steps, finalized."""
        from slimkit.prune import apply_masks_, attached_masks, finalize
        from slimkit.train import default_optimizer

        torch.manual_seed(self.seed)
        masks = attached_masks(model)
        optimizer = default_optimizer(model.parameters(), lr=self.lr)
        model.train()
        for x, y in self.batches:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(_logits(model, x), y).backward()
            optimizer.step()
            if masks:
                apply_masks_(model)
        return finalize(model.eval())


def container_analysis(model: nn.Module, calib: Calibration, layers: Sequence[str], sparsities: Sequence[float],
                       bits: Sequence[int], *, method: str, traces: dict[str, float] | None, seed: int, cache: Cache,
                       recovery: ShortRecovery | None = None, progress: Progress = _no_progress) -> dict[str, Any]:
    """For every layer, sparsity and cluster bits: the layer's bytes in the container and the choice's cost
    (measured, or the Hessian estimate from the clustered weight's error). With ``recovery`` (and ``method`` loss),
    each sparsity is measured after a :class:`ShortRecovery`, and its bits clustered on the recovered weights."""
    from slimkit.prune import UnstructuredConfig, magnitude_prune
    from slimkit.share import ClusterConfig, cluster_weights, clustered_layers

    if recovery is not None and method != "loss":
        raise ValueError("a short recovery needs measured losses (method='loss')")
    label = method if recovery is None else f"{method}+{recovery.label}"
    options = [(s, b) for s in (0.0, *sparsities) for b in sorted(bits, reverse=True)]
    out: dict[str, Any] = {}
    total, done = len(layers) * len(options), 0
    control: tuple[nn.Module, float] | None = None  # the unpruned model after the same steps, and its score

    def recovered(name: str, s: float) -> tuple[nn.Module, float]:
        nonlocal control
        if control is None:
            adapted = recovery(copy.deepcopy(model))  # type: ignore[misc]
            control = adapted, calib.score(adapted)
        if not s:
            return control
        pruned = magnitude_prune(model, None, UnstructuredConfig(sparsity={name: s}))
        return recovery(pruned), control[1]  # type: ignore[misc]

    for name in layers:
        rows = []
        current: tuple[float, tuple[nn.Module, float]] | None = None
        for s, b in options:
            key = f"{name}|{s}|{b}|{label}"
            kept = cache.get(key) if key in cache else None
            if kept is None or "tables" not in kept:  # (rows kept before the tables were: measured again)
                if recovery is None:
                    candidate = container_option(model, name, s, b, seed)
                else:
                    if current is None or current[0] != s:
                        current = s, recovered(name, s)
                    adapted, reference = current[1]
                    candidate = cluster_weights(adapted, None, ClusterConfig(layers=[name], bits={name: b}, seed=seed))
                layer = clustered_layers(candidate)[name]
                if kept is not None and "delta" in kept:  # its measured cost stands
                    delta = kept["delta"]
                elif method == "hessian":
                    error = float((layer.weight.detach() - model.get_submodule(name).weight.detach()).pow(2).sum())
                    delta = 0.5 * (traces or {}).get(name, 0.0) * error
                elif recovery is None:
                    delta = calib.delta(candidate)
                else:
                    delta = calib.score(candidate) - reference
                parts = clustered_parts(layer)
                cache.put(key, {"sparsity": s, "bits": b, "delta": delta, "tables": parts["tables"],
                                "bytes": parts["total"]})
            rows.append(dict(cache.get(key)))
            done += 1
            progress("container", done, total)
        # monotone along each knob: more sparsity (same bits) and fewer bits (same sparsity) never cost less
        table = {(r["sparsity"], r["bits"]): r for r in rows}
        for s in (0.0, *sparsities):
            for r, d in zip([table[(s, b)] for b in sorted(bits, reverse=True)],
                            monotone([table[(s, b)]["delta"] for b in sorted(bits, reverse=True)])):
                r["delta"] = d
        for b in bits:
            for r, d in zip([table[(s, b)] for s in (0.0, *sparsities)],
                            monotone([table[(s, b)]["delta"] for s in (0.0, *sparsities)])):
                r["delta"] = d
        out[name] = rows
    return out
