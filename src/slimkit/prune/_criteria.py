"""Importance criteria for structured pruning, in a registry (``CRITERIA.get("l1")``).

A criterion scores every unit of a :class:`~slimkit.graph.ChannelGroup` (low = prune first). A unit owns slices
of many parameters: its filters/rows in every layer that writes it (role ``out``), its norm scales, and the columns
of every layer that reads it (role ``in``); an attention head owns its q/k/v rows and output-projection columns.
Scores are summed over those slices, so coupled channels and whole heads are scored as one unit, as in
Torch-Pruning's group importance and LLM-Pruner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit.graph import ChannelGroup, DependencyGraph, UnitSlice, run_model

CRITERIA: Registry[type] = Registry("criterion")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
ALL_ROLES = frozenset({"out", "in", "other"})


@dataclass
class PruneContext:
    """What a criterion may look at: the graph (its ``model`` is a private copy sharing the caller's parameters:
    read it, never write into its tensors), calibration data, the loss for gradient criteria and a seeded
    generator."""

    graph: DependencyGraph
    data: Any = None
    loss: Any = None
    batches: int = 4
    rng: np.random.Generator | None = None
    options: dict | None = None
    criterion: Any = None

    def calibration_batches(self, name: str) -> list[tuple[Any, Any]]:
        """Up to ``batches`` batches of ``data`` as (inputs, targets); a dict batch (keyword inputs, maybe with
        ``labels``) is ``(batch, None)``."""
        if self.data is None:
            raise ConfigError(f"criterion '{name}' needs calibration data: pass data=<loader of (inputs, targets)> "
                              "(e.g. create_data('mnist').calibration), or of dicts of keyword inputs for a "
                              "transformer")
        out = []
        for batch in self.data:
            if isinstance(batch, Mapping):
                out.append((dict(batch), None))
            elif isinstance(batch, (tuple, list)):
                out.append((batch[0], batch[1] if len(batch) > 1 else None))
            else:
                out.append((batch, None))
            if len(out) >= self.batches:
                break
        return out


def batch_loss(model: nn.Module, inputs: Any, targets: Any, loss_fn: Callable | None = None) -> torch.Tensor:
    """The loss of one calibration batch: ``loss_fn(output, targets)`` (default cross-entropy; per token for a
    language model's ``N×L×V`` logits against ``N×L`` targets); for keyword inputs the model's own ``loss`` (Hugging
    Face models given ``labels``), else the next-token loss of a causal LM."""
    from slimkit.analysis import is_token_output, token_cross_entropy

    kwargs = dict(inputs) if isinstance(inputs, Mapping) else None
    out = run_model(model, kwargs if kwargs is not None else inputs)
    if loss_fn is not None and targets is not None:
        return loss_fn(_logits(out), targets)
    own = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if own is not None:
        return own
    logits = _logits(out)
    if targets is not None:
        if is_token_output(logits, targets):  # a (token block, shifted targets) batch of a language model
            return token_cross_entropy(logits, targets)
        return nn.functional.cross_entropy(logits, targets)
    if kwargs is not None and "input_ids" in kwargs and logits.dim() == 3:
        ids = kwargs["input_ids"]
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    raise ConfigError("cannot compute a loss for this calibration batch: give (inputs, targets) batches, "
                      "keyword batches with 'labels', or pass loss=...")


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("logits", "last_hidden_state"):
            if key in out:
                return out[key]
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    found = getattr(out, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(out, (tuple, list)):
        return out[0]
    raise ConfigError(f"cannot find the logits in a {type(out).__name__} output: pass loss=...")


def register_criterion(name: str):
    """Decorator: ``@register_criterion("mine")`` on a :class:`Criterion` subclass."""
    return CRITERIA.register(name)


def _selected(graph: DependencyGraph, group: ChannelGroup, roles: Iterable[str]) -> list[UnitSlice]:
    roles = frozenset(roles)
    return [s for s in graph.slices(group) if s.roles & roles]


def unit_reduce(graph: DependencyGraph, group: ChannelGroup, roles: Iterable[str] = ("out",), *, p: float = 1.0,
                values: Callable[[str], torch.Tensor] | None = None,
                column_scale: Callable[[UnitSlice], torch.Tensor | None] | None = None) -> np.ndarray:
    """Σ over the group's parameter slices with one of ``roles`` of Σ|w|^p per unit (p = 1: L1, p = 2: squared
    L2), reduced without copying whole weights (a 1B-parameter model is scored in place). ``values`` replaces a
    parameter by another tensor of its shape (e.g. accumulated Taylor terms); ``column_scale`` multiplies each
    index along the slice's dim (e.g. input-activation norms)."""
    total = np.zeros(len(group.units))
    for s in _selected(graph, group, roles):
        t = values(s.param) if values is not None else graph.tensor(s.param)
        t = t.detach()
        if t.dim() == 0:
            continue
        per = dim_power_sums(t, s.dim, p)
        if column_scale is not None:
            scale = column_scale(s)
            if scale is None:
                continue
            per = per * scale
        hit = s.positions >= 0
        total += np.bincount(s.positions[hit], weights=per.double().numpy()[hit], minlength=len(total))
    return total


def dim_power_sums(t: torch.Tensor, dim: int, p: float, chunk: int = 1 << 22) -> torch.Tensor:
    """Σ |t|^p over every dim but ``dim`` (one value per index along ``dim``), in float64. A reduction over
    leading dims (a weight's columns) runs as a ones-vector product over row chunks: strided reductions are ~15×
    slower, and the chunks bound the temporary memory."""
    t = t.float()
    if t.dim() == 1:
        return (t.abs() ** p).double().cpu()
    if dim == 0:
        m = t.reshape(t.shape[0], -1)
        if p != 1:
            return (torch.linalg.vector_norm(m, ord=p, dim=1) ** p).double().cpu()
        # vector_norm's ord=1 path is ~5x slower than abs-and-sum (most of a ResNet-18 prune's scoring time)
        if m.numel() <= chunk:
            return m.abs().sum(1).double().cpu()
        rows = max(1, chunk // max(m.shape[1], 1))
        return torch.cat([part.abs().sum(1) for part in m.split(rows, 0)]).double().cpu()
    m = t.movedim(dim, -1)
    m = m.reshape(-1, m.shape[-1])
    rows = max(1, chunk // max(m.shape[1], 1))
    total = torch.zeros(m.shape[1], dtype=torch.float64)
    for part in m.split(rows, 0):
        powered = part * part if p == 2 else part.abs() if p == 1 else part.abs() ** p
        total += (torch.ones(1, part.shape[0], device=part.device) @ powered).reshape(-1).double().cpu()
    return total


def unit_rows(graph: DependencyGraph, group: ChannelGroup, *, norms_only: bool = False,
              values: Callable[[str], torch.Tensor] | None = None) -> list[np.ndarray]:
    """Per parameter slice a unit owns as an output (filter rows, biases, norm scales), a (units × k) matrix of
    its values (rows of units with several channels, e.g. depthwise-repeated ones, are summed)."""
    mats = []
    for s in _selected(graph, group, ("out",)):
        owner = graph.model.get_submodule(s.param.rpartition(".")[0]) if "." in s.param else graph.model
        if norms_only and not isinstance(owner, _NORMS):
            continue
        t = (values(s.param) if values is not None else graph.tensor(s.param)).detach()
        if t.dim() == 0:
            continue
        rows = t.movedim(s.dim, 0).reshape(t.shape[s.dim], -1).double().numpy()
        mat = np.zeros((len(group.units), rows.shape[1]))
        hit = s.positions >= 0
        np.add.at(mat, s.positions[hit], rows[hit])
        mats.append(mat)
    return mats


class Criterion:
    """Scores units (``scores``), picks the ones to remove (``select``: lowest scores by default) and may adjust
    the kept weights of the model being pruned before slicing (``update_``, used by ThiNet's least-squares
    rescaling)."""

    needs_data = False

    def prepare(self, ctx: PruneContext) -> None:
        """Called once per pruning with the full context (data-driven criteria collect statistics here)."""

    def scores(self, ctx: PruneContext, group: ChannelGroup) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: PruneContext, group: ChannelGroup, n_remove: int) -> np.ndarray:
        if n_remove <= 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(self.scores(ctx, group), kind="stable")
        return np.sort(order[:n_remove])

    def update_(self, ctx: PruneContext, group: ChannelGroup, removed: np.ndarray, model: nn.Module) -> None:
        """Adjust ``model`` (a copy about to be pruned; replace its parameters, never write into them) given the
        units to remove (indices into ``group.units``)."""


@register_criterion("l1")
class L1Criterion(Criterion):
    """Sum of absolute filter weights (Li et al. 2017, §3.1): the unit's output rows, biases and norm scales."""

    def scores(self, ctx, group):
        return unit_reduce(ctx.graph, group, ("out",), p=1.0)


@register_criterion("l2")
class L2Criterion(Criterion):
    """Euclidean norm of the filter weights (Li et al. 2017 compare it with L1)."""

    def scores(self, ctx, group):
        return np.sqrt(unit_reduce(ctx.graph, group, ("out",), p=2.0))


@register_criterion("magnitude")
class MagnitudeCriterion(Criterion):
    """Group magnitude: the L2 norm of *every* parameter slice the unit owns — its rows, the columns of the layers
    that read it, norm scales, embeddings and position tables (Torch-Pruning's ``GroupMagnitudeImportance``, p=2;
    the data-free weight-magnitude criterion of LLM-Pruner, Ma et al. 2023, §3.2)."""

    def scores(self, ctx, group):
        return np.sqrt(unit_reduce(ctx.graph, group, ALL_ROLES, p=2.0))


@register_criterion("random")
class RandomCriterion(Criterion):
    """Uniformly random scores (the baseline every paper compares against)."""

    def scores(self, ctx, group):
        return ctx.rng.random(len(group.units))


@register_criterion("bn_scale")
class BNScaleCriterion(Criterion):
    """|γ| of the normalisation layers holding the unit (Liu et al. 2017, network slimming); train with
    :class:`BNScaleL1` first for sparse γ. Groups without a norm layer fall back to L1 filter norms."""

    def scores(self, ctx, group):
        norm_weights = [s for s in _selected(ctx.graph, group, ("out",)) if s.param.endswith(".weight")
                        and isinstance(_owner(ctx.graph, s.param), _NORMS)]
        if not norm_weights:
            return L1Criterion().scores(ctx, group)
        total = np.zeros(len(group.units))
        for s in norm_weights:
            w = ctx.graph.tensor(s.param).detach().abs().double().numpy()
            hit = s.positions >= 0
            np.add.at(total, s.positions[hit], w[hit])
        return total


def _owner(graph: DependencyGraph, param: str) -> nn.Module:
    owner = param.rpartition(".")[0]
    return graph.model.get_submodule(owner) if owner else graph.model


@register_criterion("fpgm")
class FPGMCriterion(Criterion):
    """Filter pruning via geometric median (He et al. 2019): the filters closest to all others (small summed
    Euclidean distance) are the most replaceable."""

    def scores(self, ctx, group):
        mats = unit_rows(ctx.graph, group)
        if not mats:
            return np.zeros(len(group.units))
        x = np.concatenate(mats, axis=1)
        sq = (x ** 2).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
        return dist.sum(1)


@register_criterion("taylor")
class TaylorCriterion(Criterion):
    """First-order Taylor importance of everything the unit owns, Σ (w · ∂L/∂w)² over its rows, the columns that
    read it and its norm scales, summed over calibration batches (Molchanov et al. 2019, Eq. 8, group form; the
    element-wise first-order score of LLM-Pruner, Ma et al. 2023, Eq. 4). Gradients come from
    ``torch.autograd.grad`` on the private copy; batch statistics are restored afterwards."""

    needs_data = True

    def prepare(self, ctx):
        model = ctx.graph.model
        names = [n for n, p in model.named_parameters() if p.requires_grad and n in ctx.graph.params]
        params = [model.get_parameter(n) for n in names]
        acc = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        was_training = model.training
        model.train()
        try:
            for x, y in ctx.calibration_batches("taylor"):
                with torch.enable_grad():
                    loss = batch_loss(model, x, y, ctx.loss)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                for n, p, g in zip(names, params, grads, strict=True):
                    if g is not None:
                        acc[n] += (p.detach() * g) ** 2
        finally:
            model.train(was_training)
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        self._acc = acc

    def scores(self, ctx, group):
        return unit_reduce(ctx.graph, group, ALL_ROLES, p=1.0,
                           values=lambda name: self._acc.get(name, torch.zeros_like(ctx.graph.tensor(name))))


@register_criterion("wanda")
class ActivationCriterion(Criterion):
    """Activation-aware magnitude: Σ |W_ij| · ‖X_j‖₂ over the columns j of every layer that reads the unit, with
    ‖X_j‖ the norm of input channel j over the calibration tokens/pixels (Sun et al. 2024, "Wanda", Eq. 1,
    summed over a structured unit's columns as in their structured variant). An attention module pruned as one op
    (``nn.MultiheadAttention``, torchvision's Swin / MaxViT attention) scales its q/k/v projection's columns by the
    norms of its own input. A unit no hooked layer reads (the last layer's outputs) falls back to group magnitude."""

    needs_data = True

    def prepare(self, ctx):
        graph = ctx.graph
        consumers = {}
        #: a weight read by an attention module's input (not its own module's) → that attention module's name
        self._reader: dict[str, str] = {}
        for use in graph.uses.values():
            if use.in_map is not None and use.kind in ("linear", "linear-t", "conv", "matmul") and use.name:
                consumers[use.name] = use
            elif use.kind == "attention" and use.extra.get("input_weights") and use.name:
                consumers[use.name] = use
                self._reader.update(dict.fromkeys(use.extra["input_weights"], use.name))
        sums: dict[str, torch.Tensor] = {}
        hooks = []
        for name, use in consumers.items():
            module = graph.model.get_submodule(name)
            channel_dim = 1 if use.kind == "conv" else -1

            def hook(mod, args, kwargs, name=name, channel_dim=channel_dim):
                x = args[0] if args else next(iter(kwargs.values()))  # MultiheadAttention(query=...)
                x = x.detach().float()
                x = x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
                sq = (x ** 2).sum(0)
                sums[name] = sums[name] + sq if name in sums else sq

            hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                for x, _ in ctx.calibration_batches("wanda"):
                    run_model(graph.model, x)
        finally:
            for h in hooks:
                h.remove()
        self._norms = {name: s.sqrt() for name, s in sums.items()}

    def _scale(self, s: UnitSlice) -> torch.Tensor | None:
        owner = self._reader.get(s.param) or (s.param.rpartition(".")[0] if s.param.endswith(".weight") else None)
        if owner is None or owner not in self._norms:
            return None
        norms = self._norms[owner]
        return norms if norms.numel() == len(s.positions) else None

    def scores(self, ctx, group):
        score = unit_reduce(ctx.graph, group, ("in",), p=1.0, column_scale=self._scale)
        if not score.any():
            return MagnitudeCriterion().scores(ctx, group)
        return score


def normalised(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean magnitude (global ranking compares groups of different scales)."""
    s = np.asarray(scores, dtype=np.float64)
    return s / (np.abs(s).mean() + 1e-12) if len(s) else s


def keep_count(n: int, ratio: float, round_to: int) -> int:
    """Units kept out of ``n`` when ``ratio`` of them go, rounded up to a multiple of ``round_to`` (at least 1)."""
    keep = n - math.floor(n * ratio + 1e-9)
    if round_to > 1:
        keep = int(math.ceil(keep / round_to) * round_to)
    return int(min(n, max(1, keep)))
