"""The structured-pruning config: one frozen dataclass, validated when it is made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slimkit._errors import ConfigError
from slimkit.prune._latency import LatencyTarget

SCOPES = ("layer", "global")
KINDS = ("heads", "channels", "residual")
GQA_MODES = ("groups", "query")


@dataclass(frozen=True)
class PruneConfig:
    """What :func:`prune_channels` removes.

    ratio: fraction of each channel group's units removed (``0.5``), or per-layer fractions keyed by layer
        name/glob/``re:`` (``{"conv1": 0.3, "layer3.*": 0.6}``; unmatched groups are not pruned).
    criterion: importance criterion name (``l1``, ``l2``, ``magnitude``, ``random``, ``bn_scale``, ``taylor``,
        ``wanda``, ``fpgm``, ``thinet``).
    scope: ``"layer"`` removes ``ratio`` of every group; ``"global"`` ranks group-normalised scores across groups
        (Molchanov et al. 2017) and removes ``ratio`` of all units.
    kinds: which kinds of groups are pruned: ``heads`` (attention heads, or GQA key/value groups), ``channels``
        (MLP width, conv filters) and ``residual`` (a residual stream's width: a transformer's hidden/embedding
        size, with every norm, embedding, position table and tied head on it). Default: all three.
    gqa: grouped-query attention units: ``"groups"`` removes whole key/value groups (a key/value head with its
        query heads), ``"query"`` removes query heads at the same slot of every group (key/value heads stay).
    target_macs / speedup: instead of a ratio, search the global ratio until the model's MACs are at most
        ``target_macs`` (or ``original / speedup``).
    target_latency: instead of a ratio, the pruned model's latency as a fraction of the original's, in ONNX Runtime
        (``0.5``, or a :class:`LatencyTarget` with the deployed batch, threads and runtime): widths chosen from a
        measured latency table, snapped to where the kernels' time steps (HALP-style search, see ``prune/_latency.py``).
    round_to: units kept per group are a multiple of this (8 for SIMD/tensor-core friendly widths).
    skip: layers that are never pruned (the model's outputs never are); protect_first also protects the first layer.
    layers: only groups whose first layer matches are pruned (default: all).
    leaf_modules: modules kept whole (their channels are not pruned): the escape hatch for code slimkit cannot
        follow.
    reconstruct: after pruning, refit every Linear/Conv2d that lost input channels to the unpruned model's
        outputs on the calibration data by least squares (ThiNet §3.3, He et al. 2017); needs ``data``.
    batches: calibration batches for data-driven criteria and reconstruction.
    timeout: seconds the whole pruning may take (capture, scoring, removal, check), None for no bound.
    """

    ratio: float | Mapping[str, float] = 0.5
    criterion: str = "l1"
    scope: str = "layer"
    kinds: tuple[str, ...] = KINDS
    gqa: str = "groups"
    target_macs: int | None = None
    speedup: float | None = None
    target_latency: float | LatencyTarget | None = None
    round_to: int = 1
    skip: tuple[str, ...] = ()
    protect_first: bool = False
    layers: tuple[str, ...] | None = None
    leaf_modules: tuple[str, ...] = ()
    reconstruct: bool = False
    batches: int = 4
    seed: int = 0
    timeout: float | None = 600.0
    criterion_options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> PruneConfig:
        """Raise :class:`ConfigError` naming the bad field and the fix; returns self."""
        from slimkit.prune._criteria import CRITERIA

        ratios = self.ratio.items() if isinstance(self.ratio, Mapping) else [(None, self.ratio)]
        for name, value in ratios:
            where = f" for '{name}'" if name else ""
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"prune ratio {value}{where} is out of range: use a value in [0, 1)")
        CRITERIA.get(self.criterion)
        if self.scope not in SCOPES:
            raise ConfigError(f"scope '{self.scope}' is unknown: use one of {', '.join(SCOPES)}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ConfigError(f"kinds {list(kinds)} must be a non-empty subset of {', '.join(KINDS)}")
        if self.gqa not in GQA_MODES:
            raise ConfigError(f"gqa '{self.gqa}' is unknown: use 'groups' (whole key/value groups) or 'query' "
                              "(query heads within every group)")
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
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout {self.timeout} must be a positive number of seconds (or None)")
        return self
