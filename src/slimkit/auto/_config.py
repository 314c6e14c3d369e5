"""The settings of :func:`slimkit.auto.auto_compress`: one frozen dataclass, validated when it is made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from slimkit._errors import ConfigError
from slimkit.auto._budget import Budget, parse_budget

#: what the search may change, per layer or channel group
KNOBS = ("channels", "rank", "int8", "sparsity", "clusters")
#: how a knob's per-layer accuracy cost is estimated (see ``_sensitivity.py``)
SENSITIVITY_METHODS = ("auto", "loss", "hessian")
RECOVERIES = ("kd", "finetune")
PROXIES = ("loss", "kl")


def _fractions(name: str, values: Any, low: float, high: float, *, open_high: bool = True) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={values!r}: give a list of numbers") from None
    for v in out:
        if not math.isfinite(v) or not low < v or (v >= high if open_high else v > high):
            right = ")" if open_high else "]"
            raise ConfigError(f"{name} value {v:g} is out of range: use values in ({low:g}, {high:g}{right}")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class AutoConfig:
    """What ``auto_compress`` searches and how.

    budget: a :class:`Budget` or its text (``"latency=0.4,size=0.05"``). A latency budget is met when the 95 %
        confidence interval of the measured median ratio lies within it (a noisy reading is not a met budget).
    max_drop: the largest accuracy drop accepted on the validation split, in percentage points (0.5 = from 99.1 %
        to 98.6 %). A candidate that drops more is backed off (its most sensitive choices made milder) and tried
        again, up to ``max_candidates`` candidates or ``time_limit`` seconds.
    min_accuracy: the lowest validation accuracy accepted, in percent (e.g. 98.24), or None. A candidate must meet
        both it and ``max_drop``; it asks for more than the input model has when another method's accuracy is the
        mark (Deep Compression's retrained models are often more accurate than the dense one they started from).
    formats: deployment formats the search may choose: ``onnx`` (fp32 ONNX), ``int8`` (int8 QDQ ONNX, ONNX
        Runtime's integer kernels), ``container`` (k-means weight sharing with Huffman coding, Han et al. 2016).
    knobs: what may change: ``channels`` (structured pruning per channel group; in the container before its
        sparsity and clusters, for models it can rebuild pruned: not Hugging Face ones), ``rank`` (low-rank
        factorisation per layer, fp32 and int8 formats), ``int8`` (per-layer int8 or float in the int8 format),
        ``sparsity`` (per-layer magnitude pruning) and ``clusters`` (per-layer k-means bits) in the container format.
    keep_fractions: the widths a channel group may keep (fractions of its channels; the latency table's kernel
        steps are added when a latency budget is set: at most 16 multiples of a step per group, see
        ``slimkit.auto._sensitivity.keep_levels``).
    rank_ratios: parameter ratios a factorised layer may have (Tucker-2 for k×k convs, SVD for Linear / 1×1).
    sparsities / cluster_bits: the per-layer choices of the container format.
    criterion: the channel importance criterion of structured pruning (``slimkit.prune.CRITERIA``).
    sensitivity: ``loss`` measures the calibration loss with each choice applied to its layer alone; ``hessian``
        estimates it for weight perturbations as ½·tr(H)/n·‖ΔW‖² (HAWQ-V2, Dong et al. 2020) from a Hutchinson
        trace; ``auto`` measures when that takes at most ``sensitivity_seconds`` and estimates otherwise (channel
        removal and int8 are always measured).
    sensitivity_steps: with measured costs, each container sparsity is measured after this many fine-tuning steps
        (pruned weights held at zero; ``recovery_lr``; the unpruned model after the same steps is the reference);
        under ``auto`` only when those steps fit ``sensitivity_seconds`` as well. 0 (the default): one-shot. Measured
        with 100 steps (benchmarks/results/archive/auto-sensitivity-steps-100.json): LeNet-300-100 neutral (size
        0.03: 98.20 % valid against 98.18 % one-shot), LeNet-5 worse — its costs, recovered, now rank below the
        other formats' one-shot costs, and the container plans chosen validated at 98.95 % and 98.89 % where
        one-shot's int8 plans had 99.09 % and 99.00 %. Channel removal is always measured one-shot, so recovered
        sparsity costs also rank below the container's own channel costs.
    proxy: the measured quantity: ``loss`` (cross-entropy increase) or ``kl`` (divergence from the input model's
        outputs, label-free).
    calibration_samples: calibration samples the sensitivities are measured on (from ``data.calibration``).
    recovery: ``kd`` (Hinton KD from the input model) or ``finetune`` after pruning / factorisation; the container
        format's magnitude-pruning rounds always fine-tune (their masks must hold; they also recover from its
        removed channels), then it fine-tunes the centroids.
    recovery_epochs / recovery_lr: the recovery's budget; cluster_epochs / cluster_lr: the centroid fine-tuning
        (each centroid moved by the mean of its weights' gradients, ``centroid_gradient: mean`` in the recipe).
    prune_rounds: magnitude pruning in this many rounds (sparsity rising geometrically, Han et al. 2015), each
        followed by ``recovery_epochs`` of fine-tuning.
    max_candidates / time_limit: when the accuracy-aware loop stops (a time limit is wall-clock seconds of this
        process; a resumed run starts its clock again).
    skip: layers the search never changes (names, globs, ``re:`` regexes).
    """

    budget: Budget | str
    max_drop: float = 1.0
    formats: tuple[str, ...] = ("onnx", "int8", "container")
    knobs: tuple[str, ...] = KNOBS
    keep_fractions: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
    rank_ratios: tuple[float, ...] = (0.25, 0.5)
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    cluster_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    criterion: str = "l1"
    sensitivity: str = "auto"
    sensitivity_seconds: float = 300.0
    sensitivity_steps: int = 0
    proxy: str = "loss"
    calibration_samples: int = 512
    recovery: str = "kd"
    recovery_epochs: int = 2
    recovery_lr: float = 0.01
    cluster_epochs: int = 1
    cluster_lr: float = 0.001
    prune_rounds: int = 1
    max_candidates: int = 6
    time_limit: float | None = None
    skip: tuple[str, ...] = ()
    seed: int = 0
    min_accuracy: float | None = None  # last: a new field must not move the positional ones

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "budget", parse_budget(self.budget))
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or \
                not math.isfinite(self.max_drop) or not 0 <= self.max_drop < 100:
            raise ConfigError(f"max_drop={self.max_drop!r}: give the accuracy drop accepted in percentage points, in "
                              "[0, 100), e.g. 0.5")
        if self.min_accuracy is not None and (
                isinstance(self.min_accuracy, bool) or not isinstance(self.min_accuracy, (int, float))
                or not math.isfinite(self.min_accuracy) or not 1 < self.min_accuracy <= 100):
            # a fraction (0.98) read as percent would be no floor at all: refused rather than taken as 0.98 %
            raise ConfigError(f"min_accuracy={self.min_accuracy!r}: give the lowest validation accuracy accepted in "
                              "percent, in (1, 100], e.g. 98.5 (not 0.985)")
        from slimkit.auto._formats import FORMATS

        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        if not formats:
            raise ConfigError(f"formats is empty: choose among {', '.join(FORMATS.names())}")
        for name in formats:
            FORMATS.get(name)
        set_(self, "formats", tuple(dict.fromkeys(formats)))
        knobs = (self.knobs,) if isinstance(self.knobs, str) else tuple(self.knobs)
        bad = [k for k in knobs if k not in KNOBS]
        if bad or not knobs:
            raise ConfigError(f"knob '{bad[0] if bad else ''}' is unknown: choose among {', '.join(KNOBS)}")
        set_(self, "knobs", tuple(dict.fromkeys(knobs)))
        set_(self, "keep_fractions", _fractions("keep_fractions", self.keep_fractions, 0, 1))
        set_(self, "rank_ratios", _fractions("rank_ratios", self.rank_ratios, 0, 1))
        set_(self, "sparsities", _fractions("sparsities", self.sparsities, 0, 1))
        bits = tuple(sorted(set(self.cluster_bits))) if not isinstance(self.cluster_bits, int) else (self.cluster_bits,)
        if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8 for b in bits):
            raise ConfigError(f"cluster_bits={self.cluster_bits!r}: give whole numbers in [1, 8] (bits per cluster "
                              "index; 8 = 256 shared values per layer)")
        set_(self, "cluster_bits", bits)
        from slimkit.prune import CRITERIA

        CRITERIA.get(self.criterion)
        for name, value, allowed in (("sensitivity", self.sensitivity, SENSITIVITY_METHODS),
                                     ("recovery", self.recovery, RECOVERIES), ("proxy", self.proxy, PROXIES)):
            if value not in allowed:
                raise ConfigError(f"{name} '{value}' is unknown: use one of {', '.join(allowed)}")
        for name, low in (("calibration_samples", 1), ("recovery_epochs", 0), ("cluster_epochs", 0),
                          ("prune_rounds", 1), ("max_candidates", 1), ("seed", 0),
                          ("sensitivity_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}={value!r}: use a whole number ≥ {low}")
        for name in ("recovery_lr", "cluster_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10:
                raise ConfigError(f"{name}={value!r}: use a learning rate in (0, 10], e.g. 0.01")
        for name in ("time_limit", "sensitivity_seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name}={value!r}: use a positive number of seconds")
        set_(self, "skip", (self.skip,) if isinstance(self.skip, str) else tuple(self.skip))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (the budget as its fields)."""
        payload = asdict(self)
        payload["budget"] = self.budget.to_dict()  # type: ignore[union-attr]
        return payload
