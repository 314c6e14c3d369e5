"""What this machine's CPU is and can do, read once from the OS: its name, its feature flags, and whether ONNX
Runtime's uint8 × int8 kernels saturate on it (the one CPU fact that changes what slimkit writes)."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

#: x86 instruction-set extensions with an 8-bit dot product that accumulates in int32 (VPDPBUSD)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, architecture and feature flags (``flags`` is ``None`` where the OS does not list them)."""

    name: str
    machine: str
    flags: frozenset[str] | None

    @property
    def x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def vnni(self) -> bool | None:
        """True with AVX512-VNNI or AVX-VNNI; ``None`` when the flags are unknown."""
        return None if self.flags is None else any(flag in self.flags for flag in VNNI_FLAGS)

    def has(self, flag: str) -> bool:
        return self.flags is not None and flag in self.flags

    @property
    def kind(self) -> str:
        """What decides the int8 kernels' arithmetic: "x86 with VNNI", "x86 without VNNI", "x86, CPU flags
        unknown", or the machine name elsewhere."""
        if not self.x86:
            return self.machine
        return "x86, CPU flags unknown" if self.vnni is None else "x86 with VNNI" if self.vnni else "x86 without VNNI"

    @property
    def int8_sums_saturate(self) -> bool:
        """True where ONNX Runtime's uint8 × int8 kernels (QLinearConv, QGemm, MatMulInteger) add pairs of products
        in int16 with saturation: x86 without VNNI, whose kernels use VPMADDUBSW (ONNX Runtime's quantization guide,
        "reduce_range"). An x86 CPU whose flags cannot be read counts as saturating: 7-bit weights cost little,
        wrong outputs cost the model."""
        return self.x86 and not self.vnni


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of Linux's ``/proc/cpuinfo`` (the first processor's ``model name`` and
    ``flags``; ARM kernels name the flags ``Features``)."""
    name, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware") and not name:
            name = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = frozenset(value.split())
    return CpuInfo(name or machine, machine, flags)


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (cached for the process)."""
    machine = platform.machine()
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(), machine)
    except OSError:
        return CpuInfo(platform.processor() or machine, machine, None)


def resolve_reduce_range(reduce_range: bool | None) -> bool:
    """``reduce_range`` as given, or, for ``None``, whether this CPU's int8 kernels saturate (the rule slimkit's
    quantizer, ONNX Runtime's quantizer wrappers and the latency probe's int8 layers share)."""
    return cpu_info().int8_sums_saturate if reduce_range is None else reduce_range


#: ONNX Runtime's uint8 × int8 kernels on x86 without VNNI add two products in a saturating int16 (VPMADDUBSW)
INT16_MAX = 2**15 - 1


def kernel_weight_bits(weight_bits: int, activation_bits: int | None, reduce_range: bool) -> int:
    """The weight bit width the integer kernels get: with ``reduce_range`` and quantized activations, the widest
    symmetric grid whose pair of products, ``2 · (2^a - 1) · (2^(w-1) - 1)``, fits in int16 (8-bit activations:
    7-bit weights); otherwise ``weight_bits``."""
    if activation_bits is None or not reduce_range:
        return weight_bits
    bits = weight_bits
    while bits > 2 and 2 * (2**activation_bits - 1) * (2 ** (bits - 1) - 1) > INT16_MAX:
        bits -= 1
    return bits
