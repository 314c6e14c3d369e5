"""Quantization grids and calibration observers (a registry: ``minmax``, ``moving_average_minmax``, ``percentile``,
``mse``, ``entropy``).

An observer watches tensors during calibration and proposes a clipping range ``[lo, hi]`` (per tensor or per
channel); :func:`qparams_from_range` turns the range into an affine grid ``x ≈ (q - zero_point) · scale`` with
``q ∈ [qmin, qmax]`` (Jacob et al. 2018, Eq. 1; Krishnamoorthi 2018 §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slimkit._errors import ConfigError
from slimkit._registry import Registry

OBSERVERS: Registry[type[Observer]] = Registry("observer")

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    ``symmetric`` grids are signed and narrow (``[-(2^(b-1) - 1), 2^(b-1) - 1]``, zero point 0: ONNX Runtime's
    preferred int8 weight format); asymmetric grids are unsigned (``[0, 2^b - 1]``, the uint8 activation format).
    ``ch_axis`` is the channel axis for per-channel grids (0 for Conv/Linear weights), ``None`` for per-tensor.
    """

    bits: int = 8
    symmetric: bool = False
    ch_axis: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1


def check_bits(bits: int, what: str = "bit width") -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} {bits!r} is not supported: use an integer from {MIN_BITS} to {MAX_BITS}")


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the grid covering ``[lo, hi]`` (the range is widened to contain 0 so that zero —
    padding, ReLU outputs — is represented exactly)."""
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if spec.symmetric:
        scale = torch.maximum(-lo, hi) / spec.qmax
        scale = torch.clamp(scale, min=1e-8)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / (spec.qmax - spec.qmin), min=1e-8)
    zero_point = torch.clamp(spec.qmin - torch.round(lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward, identity in the backward: the straight-through estimator (Bengio et al. 2013)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Quantize then dequantize: ``(clamp(round(x / s) + z, qmin, qmax) - z) · s``.

    Gradients: straight-through inside the range, zero outside (clipped STE); with respect to ``scale`` this is
    exactly the LSQ gradient of Esser et al. 2020, Eq. 3.
    """
    if spec.ch_axis is not None and scale.numel() > 1:
        shape = [1] * x.dim()
        shape[spec.ch_axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = torch.clamp(_round_ste(x / scale) + zero_point, spec.qmin, spec.qmax)
    return (q - zero_point) * scale


def _channels_first(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` as a (channels, values) matrix; one row for per-tensor specs."""
    if spec.ch_axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, spec.ch_axis).reshape(x.shape[spec.ch_axis], -1)


class Observer:
    """Base class: ``update(x)`` during calibration, then ``range()`` → ``(lo, hi)`` and ``qparams()``."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        rows = _channels_first(x.detach().float(), self.spec)
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        self._merge(lo, hi)
        self._collect(rows)
        self.batches += 1

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _collect(self, rows: torch.Tensor) -> None:
        """Keep what the range search needs (nothing for min/max)."""

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.hi is None:
            raise ConfigError(f"{type(self).__name__} has seen no data: calibrate with at least one batch first")
        return self.lo, self.hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.spec)

    def release(self) -> None:
        """Drop what only the range search needed (called when the quantizer freezes; min/max stay)."""


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The running minimum and maximum (the widest range: no clipping error, most rounding error)."""


@OBSERVERS.register("moving_average_minmax")
class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min/max (``momentum`` 0.01 as in Jacob et al. 2018 / PyTorch)."""

    def __init__(self, spec: QuantSpec, momentum: float = 0.01) -> None:
        super().__init__(spec)
        self.momentum = momentum

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class _SampledObserver(Observer):
    """Keeps a uniform random sample of the observed values (≤ ``max_samples`` per channel) for range search, so
    calibration memory stays bounded however many activations pass."""

    def __init__(self, spec: QuantSpec, max_samples: int = 1 << 20) -> None:
        super().__init__(spec)
        self.max_samples = max_samples
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self._gen = torch.Generator().manual_seed(0)

    def _collect(self, rows: torch.Tensor) -> None:
        per_batch = max(1, self.max_samples // 16)
        if rows.shape[1] > per_batch:
            idx = torch.randint(rows.shape[1], (per_batch,), generator=self._gen)
            rows = rows[:, idx]
        self.samples.append(rows)
        self.count += rows.shape[1]
        if self.count > 2 * self.max_samples:
            merged = torch.cat(self.samples, dim=1)
            keep = torch.randperm(merged.shape[1], generator=self._gen)[: self.max_samples]
            self.samples, self.count = [merged[:, keep]], self.max_samples

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples, dim=1)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        released = getattr(self, "_released", None)
        if released is not None and not self.samples:
            return qparams_from_range(*released, self.spec)
        return super().qparams()

    def release(self) -> None:
        if self.samples:
            self._released = self.range()  # the searched range stays available without the samples
        self.samples, self.count = [], 0


@OBSERVERS.register("percentile")
class PercentileObserver(_SampledObserver):
    """Clip to the ``percentile``-th percentile of the values (and 100 - p at the low end) — McKinstry et al. 2018."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, max_samples: int = 1 << 20) -> None:
        super().__init__(spec, max_samples)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile {percentile} is out of range: use a value in (50, 100]")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        super().range()
        v = self.values()
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        if v.shape[1] > 16_000_000:  # torch.quantile's input limit
            v = v[:, :16_000_000]
        lo, hi = torch.quantile(v, q, dim=1)
        return lo, hi


@OBSERVERS.register("mse")
class MSEObserver(_SampledObserver):
    """Search the clipping range ``α · [min, max]`` (α on a geometric grid of ``steps`` values in [0.01, 1]) that
    minimises the mean squared quantization error of the observed values, per channel (Banner et al. 2019;
    Nagel et al. 2021 §3.4)."""

    def __init__(self, spec: QuantSpec, steps: int = 100, max_samples: int = 1 << 18) -> None:
        super().__init__(spec, max_samples)
        self.steps = steps

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo0, hi0 = super().range()
        v = self.values()
        best = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for alpha in torch.logspace(-2.0, 0.0, self.steps):
            lo, hi = lo0 * alpha, hi0 * alpha
            scale, zp = qparams_from_range(lo, hi, self.spec)
            spec = QuantSpec(self.spec.bits, self.spec.symmetric, 0)
            err = (fake_quantize(v, scale, zp, spec) - v).pow(2).mean(dim=1)
            better = err < best
            best = torch.where(better, err, best)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


@OBSERVERS.register("entropy")
class EntropyObserver(_SampledObserver):
    """TensorRT's entropy calibration (Migacz 2017): histogram ``|x|`` into 2048 bins, and pick the threshold whose
    quantized distribution (``2^(bits-1)`` levels) has the smallest KL
    divergence from the clipped reference distribution."""

    def __init__(self, spec: QuantSpec, bins: int = 2048, stride: int = 8, max_samples: int = 1 << 20) -> None:
        super().__init__(spec, max_samples)
        self.bins, self.stride = bins, stride

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo0, hi0 = super().range()
        v = self.values()
        thresholds = torch.stack([self._threshold(v[c]) for c in range(v.shape[0])])
        return torch.maximum(lo0, -thresholds), torch.minimum(hi0, thresholds)

    def _threshold(self, values: torch.Tensor) -> torch.Tensor:
        import numpy as np

        # Signed values spread 2^(bits-1) levels over |x| (TensorRT); non-negative ones (after ReLU) use all 2^bits
        # levels of the unsigned grid (as NVIDIA's pytorch-quantization does).
        levels = 2 ** (self.spec.bits - 1) if bool(values.min() < 0) or self.spec.symmetric else 2**self.spec.bits
        mags = values.abs().double().numpy()
        # Exact zeros (most ReLU outputs) are always on the grid; left in, their mass dominates the first bin and
        # every merge of it looks costly, pulling the threshold down.
        mags = mags[mags > 0]
        top = float(mags.max()) if mags.size else 0.0
        if top == 0.0:
            return torch.tensor(0.0)
        hist, edges = np.histogram(mags, bins=self.bins, range=(0.0, top))
        hist = hist.astype(np.float64)
        best_kl, best_i = math.inf, self.bins
        for i in range(levels, self.bins + 1, self.stride):
            ref = hist[:i].copy()
            ref[-1] += hist[i:].sum()  # outliers are clipped into the last bin
            # Quantize the first i bins into `levels` groups, spreading each group's mass over its non-empty bins.
            chunk = hist[:i]
            nonzero = (chunk > 0).astype(np.float64)
            starts = np.linspace(0, i, levels + 1).astype(np.int64)[:-1]
            sizes = np.diff(np.append(starts, i))
            sums = np.add.reduceat(chunk, starts)
            counts = np.add.reduceat(nonzero, starts)
            cand = np.repeat(sums / np.maximum(counts, 1.0), sizes) * nonzero
            p = ref / ref.sum()
            mask = p > 0
            q = cand / max(cand.sum(), 1e-12)
            q = np.where(mask & (q == 0), 1e-12, q)
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return torch.tensor(float(edges[best_i]), dtype=torch.float32)


def create_observer(name: str, spec: QuantSpec, **options) -> Observer:
    """``OBSERVERS.get(name)(spec, **options)`` (raises a ConfigError naming the choices for an unknown name)."""
    return OBSERVERS.get(name)(spec, **options)
