"""Per-input-channel rescaling folded into the previous op — the shared machinery of SmoothQuant and AWQ.

For a *smooth* op ``P`` (a LayerNorm/RMSNorm, or a Linear) whose output feeds only the *balance* Linear layers
``L_k``, ``L_k(P(x)) = (W_k diag(s)) (diag(s)⁻¹ P(x))``: dividing ``P``'s weight (and bias) by ``s`` per output
channel and multiplying each ``W_k``'s input columns by ``s`` leaves the float model unchanged, while moving
magnitude between activations and weights (Xiao et al. 2023, Eq. 3–4; Lin et al. 2024, Eq. 4).

Pairs are found at run time: a norm whose output tensor *is* a Linear's input (identity, not a name pattern) is
paired with every Linear reading it; Linear → Linear pairs through an op that commutes with the scaling (attention's
value path, a gated MLP's up projection, a ReLU) come from name patterns (``v_proj → o_proj``, ``up_proj →
down_proj``, ``fc1 → fc2``, as in AWQ's reference mappings). Every fold is checked by re-running the block: a pair
that changes its output (a norm also feeding something else, a non-homogeneous activation between two Linears)
is undone and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimkit._select import matches_any
from slimkit.quantize._sequential import Call, Stage, call, first_tensor, no_kv_cache

log = logging.getLogger(__name__)

#: (producer, consumer) name patterns of Linear → Linear pairs that a per-channel scale passes through exactly
LINEAR_PAIRS: tuple[tuple[str, str], ...] = (
    ("re:.*v_proj$", "re:.*o_proj$"),
    ("re:.*up_proj$", "re:.*down_proj$"),
    ("re:.*fc1$", "re:.*fc2$"),
)


@dataclass
class ScalePair:
    """A smooth op and the Linear layers reading its output (full module names)."""

    smooth: str
    balance: list[str]
    kind: str  # "norm" or "linear"


def _is_norm(module: nn.Module, width: int) -> bool:
    weight = getattr(module, "weight", None)
    return ("Norm" in type(module).__name__ and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and weight.numel() == width)


def find_pairs(stage: Stage, linears: Sequence[str], *, linear_pairs: Iterable[tuple[str, str]] = LINEAR_PAIRS,
               norms: bool = True) -> list[ScalePair]:
    """The scalable pairs inside ``stage`` among ``linears`` (full names), in execution order of the smooth op."""
    root, module = stage.root, stage.module
    prefix = f"{stage.name}." if stage.name else ""
    inside = [n for n in linears if n.startswith(prefix)]
    produced: dict[int, str] = {}
    consumed: dict[str, int] = {}
    order: dict[str, int] = {}
    keep: list[torch.Tensor] = []
    handles = []

    def post(name: str):
        def fn(_m: nn.Module, _args: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor):
                keep.append(out)
                produced[id(out)] = name
            order.setdefault(name, len(order))
        return fn

    def pre(name: str):
        def fn(_m: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and name not in consumed:
                keep.append(args[0])
                consumed[name] = id(args[0])
        return fn

    for name, sub in module.named_modules():
        full = prefix + name if name else stage.name
        if full:
            handles.append(sub.register_forward_hook(post(full)))
    handles += [root.get_submodule(n).register_forward_pre_hook(pre(n)) for n in inside]
    try:
        with torch.no_grad(), no_kv_cache(root):
            call(module, stage.calls[0])
    finally:
        for handle in handles:
            handle.remove()
    pairs: list[ScalePair] = []
    if norms:
        by_source: dict[str, list[str]] = {}
        for name in inside:
            source = produced.get(consumed.get(name, -1))
            if source is None:
                continue
            width = root.get_submodule(name).in_features
            if _is_norm(root.get_submodule(source), width):
                by_source.setdefault(source, []).append(name)
        pairs += [ScalePair(s, b, "norm") for s, b in by_source.items()]
    for producer_pat, consumer_pat in linear_pairs:
        for producer in inside:
            if not matches_any(producer, [producer_pat]):
                continue
            parent = producer.rpartition(".")[0]
            consumers = [n for n in inside if n.rpartition(".")[0] == parent and matches_any(n, [consumer_pat])]
            if len(consumers) != 1:
                continue
            a, b = root.get_submodule(producer), root.get_submodule(consumers[0])
            if a.out_features == b.in_features:
                pairs.append(ScalePair(producer, consumers, "linear"))
    pairs.sort(key=lambda p: order.get(p.smooth, 1 << 30))
    return pairs


def fold_(root: nn.Module, pair: ScalePair, scales: torch.Tensor) -> None:
    """Divide the smooth op's output channels by ``scales`` and multiply the balance layers' inputs by them."""
    smooth = root.get_submodule(pair.smooth)
    with torch.no_grad():
        s = scales.to(smooth.weight.dtype)
        if pair.kind == "norm":
            smooth.weight.div_(s)
        else:
            smooth.weight.div_(s.unsqueeze(1))
        if getattr(smooth, "bias", None) is not None:
            smooth.bias.div_(s)
        for name in pair.balance:
            layer = root.get_submodule(name)
            layer.weight.mul_(s.to(layer.weight.dtype).unsqueeze(0))


def snapshot(root: nn.Module, pair: ScalePair) -> dict[str, torch.Tensor]:
    state = {}
    for name in (pair.smooth, *pair.balance):
        module = root.get_submodule(name)
        state[f"{name}.weight"] = module.weight.detach().clone()
        if getattr(module, "bias", None) is not None:
            state[f"{name}.bias"] = module.bias.detach().clone()
    return state


def restore_(root: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in state.items():
            name, _, attr = key.rpartition(".")
            getattr(root.get_submodule(name), attr).copy_(value)


def outputs(stage: Stage, calls: Sequence[Call] | None = None) -> list[torch.Tensor]:
    """The stage's hidden-state outputs on its cached calls (or ``calls``)."""
    with torch.no_grad(), no_kv_cache(stage.root):
        return [first_tensor(call(stage.module, c)).detach() for c in (calls if calls is not None else stage.calls)]


def relative_error(got: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    num = sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref))
    den = sum(float(r.double().pow(2).sum()) for r in ref) or 1.0
    return (num / den) ** 0.5


def fold_checked_(stage: Stage, pair: ScalePair, scales: torch.Tensor, reference: Sequence[torch.Tensor],
                  calls: Sequence[Call], tolerance: float = 1e-4) -> bool:
    """Fold ``scales`` for ``pair`` and keep the fold only if the stage's outputs on ``calls`` stay within
    ``tolerance`` (relative) of ``reference``; returns whether it was kept."""
    state = snapshot(stage.root, pair)
    fold_(stage.root, pair, scales)
    err = relative_error(outputs(stage, calls), reference)
    if err > tolerance:
        restore_(stage.root, state)
        log.warning("scaling %s → %s changes the float outputs (relative error %.2g): left unscaled", pair.smooth,
                    ", ".join(pair.balance), err)
        return False
    return True


class InputStats:
    """Per-channel statistics of a layer's inputs over calibration (max |x|, mean |x|) and a uniform sample of
    ``max_tokens`` input rows over all batches (random priorities; the smallest kept)."""

    def __init__(self, max_tokens: int, seed: int = 0) -> None:
        self.absmax: torch.Tensor | None = None
        self.abssum: torch.Tensor | None = None
        self.count = 0
        self.rows: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.max_tokens = max_tokens
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        absx = rows.abs()
        amax, asum = absx.amax(dim=0), absx.sum(dim=0)
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        self.abssum = asum if self.abssum is None else self.abssum + asum
        self.count += rows.shape[0]
        keys = torch.rand(rows.shape[0], generator=self.generator)
        if self.rows is not None:
            rows, keys = torch.cat([self.rows, rows]), torch.cat([self.keys, keys])
        if rows.shape[0] > self.max_tokens:
            keep = torch.topk(keys, self.max_tokens, largest=False).indices
            rows, keys = rows[keep], keys[keep]
        self.rows, self.keys = rows, keys

    def scale_(self, scales: torch.Tensor) -> None:
        """The layer's input was divided by ``scales`` (a fold): divide the sample too."""
        if self.rows is not None:
            self.rows = self.rows / scales

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(1, self.count)

    def sample(self) -> torch.Tensor:
        return self.rows
