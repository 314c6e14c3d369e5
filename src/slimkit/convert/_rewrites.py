"""The three layer rewrites: depthwise-separable (MobileNet), group conv + channel shuffle (ShuffleNet), CReLU.

Each returns a new model (the caller's is untouched) whose selected convs are replaced by compact blocks, initialised
to approximate the old layer from its weights alone, and — given calibration batches — refitted by least squares to
reproduce the old layer's output features (see :mod:`slimkit.convert._lstsq`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.convert._driver import RewriteConfig, convert, register_converter
from slimkit.convert._lstsq import NormalEquations, patches, rows, with_ones
from slimkit.models import ChannelShuffle, CReLU


def _common_reason(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1:
        return f"it is already a group conv (groups={conv.groups})"
    if conv.padding_mode != "zeros":
        return f"padding_mode '{conv.padding_mode}' is not supported (zeros only)"
    return None


# ---------------------------------------------------------------------------------------------------- depthwise


@dataclass(frozen=True)
class DepthwiseSeparableConfig(RewriteConfig):
    """``norm``/``activation``: put BN and/or ReLU between the depthwise and the pointwise conv (MobileNet's block
    has both; without them the weight fit below is exact for per-channel rank-1 filters). The BN starts as identity.
    ``min_in_channels``: convs with fewer input channels are left alone — MobileNet keeps its first layer a full conv,
    because a depthwise-separable layer over 1-3 input channels is rank ≤ 3 and loses most of the filters."""

    norm: bool = False
    activation: bool = False
    min_in_channels: int = 4


class _DepthwiseSeparable:
    """k×k conv W (O×I×k×k) → depthwise d (I×1×k×k) + pointwise p (O×I×1×1) (Howard et al. 2017, §3.1).

    Weight fit: for each input channel c, W[:, c] (O × k²) ≈ p[:, c] ⊗ d[c], the best rank-1 approximation (SVD,
    Eckart–Young), split √σ each way. Data refit: least squares on the pointwise weights (and bias) given the
    depthwise outputs, against the old layer's outputs.
    """

    def why_not(self, conv: nn.Conv2d, config: DepthwiseSeparableConfig) -> str | None:
        if conv.kernel_size == (1, 1):
            return "it is already 1×1 (pointwise)"
        if conv.in_channels < config.min_in_channels:
            return (f"it has {conv.in_channels} input channels < min_in_channels={config.min_in_channels} "
                    "(a depthwise-separable layer there is rank ≤ in_channels)")
        return _common_reason(conv)

    def rewrite(self, conv: nn.Conv2d, config: DepthwiseSeparableConfig) -> nn.Module:
        out_c, in_c = conv.out_channels, conv.in_channels
        kh, kw = conv.kernel_size
        depthwise = nn.Conv2d(in_c, in_c, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=in_c,
                              bias=False)
        pointwise = nn.Conv2d(in_c, out_c, 1, bias=conv.bias is not None)
        with torch.no_grad():
            per_channel = conv.weight.detach().double().permute(1, 0, 2, 3).reshape(in_c, out_c, kh * kw)
            u, s, vh = torch.linalg.svd(per_channel, full_matrices=False)
            root = s[:, :1].sqrt()  # I×1
            depthwise.weight.copy_((vh[:, 0, :] * root).reshape(in_c, 1, kh, kw))
            pointwise.weight.copy_((u[:, :, 0] * root).T.reshape(out_c, in_c, 1, 1))
            if conv.bias is not None:
                pointwise.bias.copy_(conv.bias)
        layers: OrderedDict[str, nn.Module] = OrderedDict(depthwise=depthwise)
        if config.norm:
            bn = nn.BatchNorm2d(in_c)
            with torch.no_grad():
                bn.running_var.fill_(1.0 - bn.eps)  # exactly the identity in eval mode
            layers["bn"] = bn
        if config.activation:
            layers["relu"] = nn.ReLU()
        layers["pointwise"] = pointwise
        return nn.Sequential(layers)

    def reconstruct(self, new: nn.Module, conv: nn.Conv2d, batches: Iterable, config: DepthwiseSeparableConfig) -> None:
        pointwise = new.pointwise
        mid = nn.Sequential(*[m for name, m in new.named_children() if name != "pointwise"]).eval()
        system = NormalEquations()
        for x, y in batches:
            with torch.no_grad():
                system.add(with_ones(rows(mid(x)), pointwise.bias is not None), rows(y))
        solution = system.solve(config.ridge)
        with torch.no_grad():
            pointwise.weight.copy_(solution[: conv.in_channels].T.reshape_as(pointwise.weight))
            if pointwise.bias is not None:
                pointwise.bias.copy_(solution[conv.in_channels])


register_converter("depthwise-separable", DepthwiseSeparableConfig)(_DepthwiseSeparable())


def to_depthwise_separable(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                           config: DepthwiseSeparableConfig | None = None, *,
                           data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` with its selected k×k convs (k > 1, groups 1) as depthwise k×k + pointwise 1×1
    (Howard et al. 2017); MACs of a converted layer fall by 1/N + 1/k² (Eq. 5). ``data`` enables the least-squares
    refit. Same as ``convert(model, x, config, data=data)``."""
    return convert(model, example_inputs, config or DepthwiseSeparableConfig(), data=data)


# ---------------------------------------------------------------------------------------------------- group conv


@dataclass(frozen=True)
class GroupConvConfig(RewriteConfig):
    """``groups``: g; ``shuffle``: follow each group conv by a channel shuffle (Zhang et al. 2018, §3.1) so the
    next group conv mixes information across groups."""

    groups: int = 2
    shuffle: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ConfigError(f"groups must be a whole number ≥ 1, got {self.groups!r}")


def _group_slots(out_channels: int, groups: int, shuffle: bool) -> torch.Tensor:
    """For each old output channel k, the group-conv output slot that lands on position k after the shuffle."""
    k = torch.arange(out_channels)
    if not shuffle:
        return k
    return (k % groups) * (out_channels // groups) + k // groups


def _group_counts(convs: Iterable[nn.Conv2d]) -> list[int]:
    """The group counts ≥ 2 that divide both channel counts of at least one of ``convs``, ascending."""
    common = {math.gcd(conv.in_channels, conv.out_channels) for conv in convs}
    return sorted({d for c in common for d in range(2, c + 1) if c % d == 0})


def _use_groups(counts: list[int], what: str) -> str:
    if not counts:
        return f"no group count ≥ 2 divides {what}; select other layers"
    listed = str(counts[0]) if len(counts) == 1 else f"{', '.join(map(str, counts[:-1]))} or {counts[-1]}"
    return f"use groups={listed}"


class _GroupConv:
    """Conv (groups 1) → conv with ``groups`` g (+ channel shuffle), g× fewer weights and MACs.

    The old channel order is kept: old output channel k is computed in the slot the shuffle moves to position k,
    from the input group that slot belongs to. Weight fit: keep the block-diagonal part of W (the least-squares fit
    when inputs are white). Data refit: per group, least squares of the old outputs on that group's input patches.
    """

    def why_not(self, conv: nn.Conv2d, config: GroupConvConfig) -> str | None:
        g = config.groups
        if conv.in_channels % g or conv.out_channels % g:
            return (f"its channels ({conv.in_channels} in, {conv.out_channels} out) are not divisible by groups={g}: "
                    + _use_groups(_group_counts([conv]), "both of them"))
        return _common_reason(conv)

    def advice(self, convs: dict[str, nn.Conv2d], config: GroupConvConfig) -> str | None:
        """When ``groups`` divides the channels of none of ``convs``: which channel counts, and the group counts
        that divide some of them (None when a layer is refused for another reason)."""
        if any(_common_reason(conv) is not None for conv in convs.values()):
            return None
        by_shape: dict[tuple[int, int], list[str]] = {}
        for name, conv in convs.items():
            by_shape.setdefault((conv.in_channels, conv.out_channels), []).append(name)
        shapes = [f"{names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''} ({c_in} in, {c_out} out)"
                  for (c_in, c_out), names in by_shape.items()]
        listed = shapes[0] if len(shapes) == 1 else f"{', '.join(shapes[:-1])} or {shapes[-1]}"
        return (f"groups={config.groups} does not divide the input and output channels of {listed}: "
                + _use_groups(_group_counts(convs.values()), "both channel counts of any of them"))

    def rewrite(self, conv: nn.Conv2d, config: GroupConvConfig) -> nn.Module:
        g = config.groups
        grouped = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, groups=g, bias=conv.bias is not None)
        slots = _group_slots(conv.out_channels, g, config.shuffle)
        in_g, out_g = conv.in_channels // g, conv.out_channels // g
        with torch.no_grad():
            for k, slot in enumerate(slots.tolist()):
                group = slot // out_g
                grouped.weight[slot] = conv.weight[k, group * in_g:(group + 1) * in_g]
                if conv.bias is not None:
                    grouped.bias[slot] = conv.bias[k]
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=grouped)
        if config.shuffle:
            layers["shuffle"] = ChannelShuffle(g)
        return nn.Sequential(layers)

    def reconstruct(self, new: nn.Module, conv: nn.Conv2d, batches: Iterable, config: GroupConvConfig) -> None:
        g, grouped = config.groups, new.conv
        slots = _group_slots(conv.out_channels, g, config.shuffle)
        in_g, out_g = conv.in_channels // g, conv.out_channels // g
        old_of_slot = torch.empty_like(slots)
        old_of_slot[slots] = torch.arange(conv.out_channels)
        systems = [NormalEquations() for _ in range(g)]
        bias = grouped.bias is not None
        for x, y in batches:
            y_rows = rows(y)
            for j in range(g):
                a = with_ones(patches(x[:, j * in_g:(j + 1) * in_g], conv), bias)
                systems[j].add(a, y_rows[:, old_of_slot[j * out_g:(j + 1) * out_g]])
        with torch.no_grad():
            for j, system in enumerate(systems):
                solution = system.solve(config.ridge)  # (in_g·k² [+1]) × out_g
                weight = solution[: solution.shape[0] - int(bias)].T
                grouped.weight[j * out_g:(j + 1) * out_g] = weight.reshape(out_g, in_g, *conv.kernel_size)
                if bias:
                    grouped.bias[j * out_g:(j + 1) * out_g] = solution[-1]


register_converter("group", GroupConvConfig)(_GroupConv())


def to_group_conv(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  config: GroupConvConfig | None = None, *, data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` with its selected convs as ``groups``-group convs followed by a channel shuffle
    (Zhang et al. 2018); ``groups=1`` reproduces the model exactly. Same as ``convert(model, x, config, data=data)``."""
    return convert(model, example_inputs, config or GroupConvConfig(), data=data)


# ---------------------------------------------------------------------------------------------------- CReLU


@dataclass(frozen=True)
class CReLUConfig(RewriteConfig):
    """CReLU rewrite options (only the shared ones: layers, skip, reconstruct, calibration_samples, ridge)."""


def _negative_pairs(weight: torch.Tensor) -> list[tuple[int, int]]:
    """Greedily pair filters by most negative cosine similarity (Shang et al. §2.1: lower-layer filters come in
    nearly opposite pairs), so each pair is well represented by one filter and its negation."""
    flat = nn.functional.normalize(weight.reshape(weight.shape[0], -1).double(), dim=1)
    similarity = flat @ flat.T
    similarity.fill_diagonal_(float("inf"))
    pairs = []
    for _ in range(weight.shape[0] // 2):
        index = int(similarity.argmin())
        a, b = divmod(index, similarity.shape[1])
        pairs.append((a, b))
        similarity[[a, b], :] = float("inf")
        similarity[:, [a, b]] = float("inf")
    return pairs


class _CReLU:
    """Conv with N filters → conv with N/2 filters → cat(x, −x) (Shang et al. 2016), half the conv's cost.

    Old filters are paired (a, b) with W_b ≈ −W_a; the new filter is (W_a − W_b)/2, the least-squares fit of
    y_a ≈ z, y_b ≈ −z in weight space, and a fixed channel permutation after the concatenation keeps the old
    channel order. Data refit: least squares of (y_a − y_b)/2 on the input patches.
    """

    def why_not(self, conv: nn.Conv2d, config: CReLUConfig) -> str | None:
        if conv.out_channels % 2:
            return f"it has an odd number of filters ({conv.out_channels})"
        return _common_reason(conv)

    def rewrite(self, conv: nn.Conv2d, config: CReLUConfig) -> nn.Module:
        pairs = _negative_pairs(conv.weight.detach())
        half = conv.out_channels // 2
        first, second = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
        new_conv = nn.Conv2d(conv.in_channels, half, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                             bias=conv.bias is not None)
        with torch.no_grad():
            new_conv.weight.copy_((conv.weight[first] - conv.weight[second]) / 2)
            if conv.bias is not None:
                new_conv.bias.copy_((conv.bias[first] - conv.bias[second]) / 2)
        permutation = torch.empty(conv.out_channels, dtype=torch.long)
        permutation[first] = torch.arange(half)
        permutation[second] = torch.arange(half, 2 * half)
        identity = bool((permutation == torch.arange(conv.out_channels)).all())
        return nn.Sequential(OrderedDict(conv=new_conv, crelu=CReLU(False, None if identity else permutation)))

    def reconstruct(self, new: nn.Module, conv: nn.Conv2d, batches: Iterable, config: CReLUConfig) -> None:
        half = conv.out_channels // 2
        permutation = new.crelu.permutation if new.crelu.has_permutation else torch.arange(conv.out_channels)
        order = torch.argsort(permutation)  # old channel at each concatenated position
        first, second = order[:half], order[half:]
        bias = new.conv.bias is not None
        system = NormalEquations()
        for x, y in batches:
            y_rows = rows(y)
            system.add(with_ones(patches(x, conv), bias), (y_rows[:, first] - y_rows[:, second]) / 2)
        solution = system.solve(config.ridge)
        with torch.no_grad():
            new.conv.weight.copy_(solution[: solution.shape[0] - int(bias)].T.reshape_as(new.conv.weight))
            if bias:
                new.conv.bias.copy_(solution[-1])


register_converter("crelu", CReLUConfig)(_CReLU())


def to_crelu(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
             config: CReLUConfig | None = None, *, data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` whose selected convs compute half their filters and restore the rest as negations
    (Shang et al. 2016). Same as ``convert(model, x, config, data=data)``."""
    return convert(model, example_inputs, config or CReLUConfig(), data=data)
