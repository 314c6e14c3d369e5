"""The structured-pruning config: one frozen dataclass, validated before any work is done."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slimkit._errors import ConfigError
from slimkit.prune._latency import LatencyTarget

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneConfig:
    """What :func:`prune_channels` removes.

    ratio: fraction of each channel group's units removed (``0.5``), or per-layer fractions keyed by layer
        name/glob/``re:`` (``{"conv1": 0.3, "layer3.*": 0.6}``; unmatched groups are not pruned).
    criterion: importance criterion name (``l1``, ``l2``, ``random``, ``bn_scale``, ``taylor``, ``fpgm``, ``thinet``).
    scope: ``"layer"`` removes ``ratio`` of every group; ``"global"`` ranks group-normalised scores across groups
        (Molchanov et al. 2017) and removes ``ratio`` of all units.
    target_macs / speedup: instead of a ratio, search the global ratio until the model's MACs are at most
        ``target_macs`` (or ``original / speedup``).
    target_latency: instead of a ratio, the pruned model's ONNX Runtime latency as a fraction of the original's
        (``0.5``, or a :class:`LatencyTarget` with the deployed batch and threads): widths chosen from a measured
        latency table, snapped to where the kernels' time steps (HALP-style search, see ``prune/_latency.py``).
    round_to: channels kept per group are a multiple of this (8 for SIMD/tensor-core friendly widths).
    skip: layers that are never pruned (the output layer never is); protect_first also protects the first layer.
    layers: only groups whose first layer matches are pruned (default: all).
    leaf_modules: submodules torch.fx must not trace into (their channels are kept).
    batches: calibration batches for data-driven criteria (taylor, thinet).
    """

    ratio: float | Mapping[str, float] = 0.5
    criterion: str = "l1"
    scope: str = "layer"
    target_macs: int | None = None
    speedup: float | None = None
    target_latency: float | LatencyTarget | None = None
    round_to: int = 1
    skip: tuple[str, ...] = ()
    protect_first: bool = False
    layers: tuple[str, ...] | None = None
    leaf_modules: tuple[str, ...] = ()
    batches: int = 4
    seed: int = 0
    criterion_options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target_latency is not None:  # a recipe's prune stage builds the config: fail at its line
            from slimkit.prune._latency import check_config

            check_config(self)

    def validate(self) -> PruneConfig:
        """Raise :class:`ConfigError` naming the bad field and the fix; returns self."""
        from slimkit.prune._criteria import CRITERIA

        ratios = self.ratio.items() if isinstance(self.ratio, Mapping) else [(None, self.ratio)]
        for name, value in ratios:
            where = f" for '{name}'" if name else ""
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"prune ratio {value}{where} is out of range: use a value in [0, 1)")
        CRITERIA.get(self.criterion)
        if self.scope not in SCOPES:
            raise ConfigError(f"scope '{self.scope}' is unknown: use one of {', '.join(SCOPES)}")
        if self.target_macs is not None and self.speedup is not None:
            raise ConfigError("give target_macs or speedup, not both")
        if self.target_macs is not None and self.target_macs <= 0:
            raise ConfigError(f"target_macs {self.target_macs} must be positive")
        if self.speedup is not None and self.speedup <= 1:
            raise ConfigError(f"speedup {self.speedup} must be > 1 (2.0 halves the MACs)")
        if (self.target_macs or self.speedup) and isinstance(self.ratio, Mapping):
            raise ConfigError("a MAC/speed-up target searches one global ratio: do not also give per-layer ratios")
        if self.target_latency is not None:
            from slimkit.prune._latency import check_config

            check_config(self)
        if self.round_to < 1:
            raise ConfigError(f"round_to {self.round_to} must be ≥ 1")
        if self.batches < 1:
            raise ConfigError(f"batches {self.batches} must be ≥ 1")
        return self
