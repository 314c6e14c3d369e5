"""``decompose(model, example_inputs, DecomposeConfig(...))``: factorise chosen layers into thinner ones.

The caller's model is untouched; the result is a copy in which each decomposed layer is an ``nn.Sequential`` of
ordinary Conv2d/Linear layers. What happened to every candidate layer (method, ranks, params and MACs before and
after, weight reconstruction error, or why it was left alone) is a :class:`DecomposeReport`, attached to the result
as ``model.slimkit_decompose_report`` and returned by :func:`decompose_report`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._select import select_names
from slimkit.decompose._methods import DECOMPOSITIONS, blas_threads
from slimkit.decompose._rank import RANK_RULES

if TYPE_CHECKING:
    from slimkit.analysis import ModelProfile

log = logging.getLogger(__name__)

CANDIDATE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class DecomposeConfig:
    """Which layers to factorise, how, and at which rank. Set exactly one of ``rank``, ``energy``, ``ratio``, ``vbmf``.

    ``method``: one name or several (tried in order per layer, the first that applies wins): "svd" (Linear and
    groups=1 Conv2d), "tucker2" (Kim et al. 2016) and "cp" (Lebedev et al. 2015) for k×k Conv2d. The default
    ("tucker2", "svd") is Kim et al.'s scheme: Tucker-2 for spatial convs, SVD for fully-connected and 1×1 layers.
    ``rank``: an int for every mode, or (R_out, R_in) for Tucker-2. ``energy``: keep the singular values holding this
    share of Σσ² per unfolding (e.g. 0.9). ``ratio``: target parameters of each replacement ÷ the layer's (e.g. 0.5).
    ``vbmf``: ranks from analytic EVBMF on the unfoldings (Kim et al. 2016). ``layers``/``skip``: module names,
    globs or ``re:`` regexes (None = all Conv2d/Linear). Layers whose replacement would not be smaller are left
    alone (reported) unless ``allow_growth``. ``seed`` fixes tensorly's CP-ALS/HOOI.
    """

    method: str | tuple[str, ...] = ("tucker2", "svd")
    rank: int | tuple[int, ...] | None = None
    energy: float | None = None
    ratio: float | None = None
    vbmf: bool = False
    layers: str | tuple[str, ...] | None = None
    skip: str | tuple[str, ...] = ()
    allow_growth: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        methods = (self.method,) if isinstance(self.method, str) else tuple(self.method)
        if not methods:
            raise ConfigError("method is empty: name at least one of " + ", ".join(DECOMPOSITIONS.names()))
        for name in methods:
            DECOMPOSITIONS.get(name)
        object.__setattr__(self, "method", methods)
        for name in ("layers", "skip"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        chosen = [n for n in ("rank", "energy", "ratio") if getattr(self, n) is not None] + (["vbmf"] if self.vbmf
                                                                                              else [])
        if len(chosen) != 1:
            raise ConfigError(f"set exactly one rank rule of rank, energy, ratio, vbmf (got "
                              f"{', '.join(chosen) or 'none'}): e.g. DecomposeConfig(energy=0.9)")
        if self.rank is not None:
            ranks = (self.rank,) if isinstance(self.rank, int) else tuple(self.rank)
            if not ranks or len(ranks) > 2 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1
                                                  for r in ranks):
                raise ConfigError(f"rank {self.rank!r} is invalid: use an integer ≥ 1, or (R_out, R_in) for Tucker-2")
            if len(ranks) == 2 and methods != ("tucker2",):
                raise ConfigError(f"rank {self.rank!r} gives (R_out, R_in), which only method 'tucker2' takes: "
                                  f"use one integer with methods {', '.join(methods)}")
            object.__setattr__(self, "rank", self.rank if isinstance(self.rank, int) else ranks)
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"energy {self.energy} is out of range: use a share of Σσ² in (0, 1], e.g. 0.9")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"ratio {self.ratio} is out of range: use the target params ratio in (0, 1), e.g. 0.5")

    @property
    def rule(self) -> tuple[str, Any]:
        """The rank rule's registry name and value."""
        for name in ("rank", "energy", "ratio"):
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        return "vbmf", True


@dataclass
class LayerDecomposition:
    """One candidate layer: ``method`` and ``ranks`` when decomposed, else ``skipped`` says why."""

    name: str
    type: str
    method: str | None = None
    ranks: tuple[int, ...] = ()
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    relative_error: float = 0.0
    skipped: str | None = None


@dataclass
class DecomposeReport:
    """What :func:`decompose` did to each candidate layer, and the model totals before/after."""

    layers: list[LayerDecomposition] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def decomposed(self) -> list[LayerDecomposition]:
        return [row for row in self.layers if row.skipped is None]

    @property
    def skipped(self) -> dict[str, str]:
        return {row.name: row.skipped for row in self.layers if row.skipped is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _relative_error(original: nn.Module, replacement: nn.Sequential) -> float:
    """‖f(x) − f̂(x)‖ / ‖f(x)‖ of the bias-free layer responses on a fixed Gaussian input.

    For a Linear layer this estimates ‖W − Ŵ‖_F / ‖W‖_F (E‖Ax‖² = ‖A‖²_F for x ~ N(0, I)); for a conv it is the
    same for the unfolded kernel, without composing the factors' kernels through strides and dilations.
    """
    generator = torch.Generator().manual_seed(0)
    if isinstance(original, nn.Linear):
        size: tuple[int, ...] = (64, original.in_features)
    else:
        kh, kw = original.kernel_size
        size = (2, original.in_channels, 2 * kh + 5, 2 * kw + 5)
    x = torch.randn(size, generator=generator).to(original.weight)
    with torch.no_grad():
        expected, got = original(x).double(), replacement(x).double()
    return float((expected - got).norm() / (expected - _bias_term(original, expected)).norm().clamp_min(1e-30))


def _bias_term(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    if module.bias is None:
        return torch.zeros_like(like)
    shape = [1, -1] + [1] * (like.dim() - 2)
    return module.bias.detach().double().view(shape).expand_as(like)


def _module_macs(prof, name: str) -> int:
    return sum(r.macs for r in prof.rows if r.name == name or r.name.startswith(name + "."))


def _decompose_layer(result: nn.Module, module: nn.Module, name: str, config: DecomposeConfig, before: ModelProfile,
                     report: DecomposeReport) -> None:
    """Replace ``name`` in ``result`` by the first applicable method's factors, recording the outcome in ``report``."""
    rule_name, rule_value = config.rule
    rule = RANK_RULES.get(rule_name)
    row = LayerDecomposition(name=name, type=type(module).__name__,
                             params_before=sum(p.numel() for p in module.parameters()),
                             macs_before=_module_macs(before, name))
    report.layers.append(row)
    reasons = []
    for method_name in config.method:
        method = DECOMPOSITIONS.get(method_name)
        reason = method.skip_reason(module)
        if reason is not None:
            reasons.append(f"{method_name}: {reason}")
            continue
        ranks = rule(method, module, rule_value)
        after = method.params(module, ranks)
        if after >= row.params_before and not config.allow_growth:
            reasons.append(f"{method_name} at ranks {ranks} has {after:,} params ≥ {row.params_before:,} "
                           f"(pass allow_growth=True to decompose anyway)")
            continue
        replacement = method.build(module, ranks, config.seed)
        row.method, row.ranks, row.params_after = method_name, ranks, after
        row.relative_error = _relative_error(module, replacement)
        _set_submodule(result, name, replacement)
        log.info("%s: %s at ranks %s, params %d → %d, weight error %.3g", name, method_name, ranks,
                 row.params_before, after, row.relative_error)
        break
    else:
        row.skipped = "; ".join(reasons)
        row.params_after, row.macs_after = row.params_before, row.macs_before
        log.info("%s left alone: %s", name, row.skipped)


def layers_to_decompose(model: nn.Module, config: DecomposeConfig) -> list[str]:
    """The Conv2d/Linear names ``config.layers``/``config.skip`` select (ConfigError for a literal name that is not
    one), in model order. Methods may still leave some alone; the report says which and why."""
    RANK_RULES.get(config.rule[0])
    candidates = [n for n, m in model.named_modules() if n and isinstance(m, CANDIDATE_TYPES)]
    return select_names(candidates, config.layers, config.skip)


def decompose(
    model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], config: DecomposeConfig, *,
    data: Iterable | None = None,
) -> nn.Module:
    """A copy of ``model`` with the chosen Conv2d/Linear layers factorised (SVD, Tucker-2 or CP); see the config.

    ``example_inputs`` are used to count MACs before/after (``slimkit.analysis.profile``). ``data`` is accepted for
    the common technique shape and not used: every decomposition here works on the weights alone. Layer names that
    do not exist, an unknown method or an invalid rank rule raise ``ConfigError`` before any work is done.
    """
    from slimkit.analysis import profile

    chosen = layers_to_decompose(model, config)
    result = copy.deepcopy(model)
    modules = dict(result.named_modules())
    before = profile(result, example_inputs)
    report = DecomposeReport(config={k: v for k, v in asdict(config).items()})
    with blas_threads(torch.get_num_threads()):
        for name in chosen:
            _decompose_layer(result, modules[name], name, config, before, report)
    after_prof = profile(result, example_inputs)
    for row in report.layers:
        if row.skipped is None:
            row.macs_after = _module_macs(after_prof, row.name)
    report.params_before, report.params_after = before.total.params, after_prof.total.params
    report.macs_before, report.macs_after = before.total.macs, after_prof.total.macs
    result.slimkit_decompose_report = report
    return result


def decompose_report(model: nn.Module) -> DecomposeReport:
    """The :class:`DecomposeReport` of a model returned by :func:`decompose`."""
    report = getattr(model, "slimkit_decompose_report", None)
    if report is None:
        raise ConfigError("this model was not produced by slimkit.decompose.decompose: it has no decompose report")
    return report
