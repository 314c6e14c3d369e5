"""A deterministic stand-in for ONNX Runtime in latency-table tests: time = MACs at padded widths."""

from __future__ import annotations

import math

from slimkit.analysis import Geometry


class MacMeasurer:
    """Layer time ∝ MACs, output channels padded up to ``step`` (as MLAS pads NCHWc blocks), unaligned input
    channels above one step 1.5× slower (the NCHW fallback); ``other`` of the network's time outside the layers,
    ``fixed`` of it outside every kernel (default: all of it); counts every point it is asked to time."""

    def __init__(self, step: int = 16, other: float = 0.1, ms_per_mac: float = 1e-6,
                 fixed: float | None = None) -> None:
        self.step, self.other, self.ms_per_mac = step, other, ms_per_mac
        self.fixed = other if fixed is None else fixed
        self.calls = 0
        self.points_timed = 0

    def points(self, geometry: Geometry, points):
        self.calls += 1
        self.points_timed += len(points)
        out = []
        for cin, cout in points:
            padded_out = math.ceil(cout / self.step) * self.step
            slow = 1.5 if cin > self.step and cin % self.step else 1.0
            out.append((geometry.macs(cin, padded_out) * self.ms_per_mac * slow + 1e-3, 0.0))
        return out

    def other_share(self, onnx_path, inputs, table_ops) -> tuple[float, float]:
        self.calls += 1
        return self.other, self.fixed


class Forbidden:
    """A measurer that fails the test if anything is timed (the cache must answer)."""

    def points(self, geometry, points):
        raise AssertionError(f"measured {geometry.key()} {points} although the cache holds it")

    def other_share(self, onnx_path, inputs, table_ops) -> tuple[float, float]:
        raise AssertionError("measured the whole model although the cache holds it")
