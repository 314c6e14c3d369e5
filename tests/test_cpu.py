"""slimkit._cpu: what the CPU is, read from /proc/cpuinfo, and whether ONNX Runtime's int8 kernels saturate on it."""

from slimkit._cpu import CpuInfo, parse_cpuinfo

EPYC = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse4_1 sse4_2 avx avx2 fma
processor	: 1
model name	: AMD EPYC 7B13
flags		: fpu sse4_1 sse4_2 avx avx2 fma
"""
ICELAKE = EPYC.replace("AMD EPYC 7B13", "Intel Xeon 8375C").replace("fma", "fma avx512f avx512bw avx512_vnni")
ALDERLAKE = EPYC.replace("fma", "fma avx_vnni")
GRAVITON = """processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp
"""


def test_an_avx2_cpu_without_vnni_saturates_and_vnni_cpus_do_not():
    epyc = parse_cpuinfo(EPYC, "x86_64")
    assert epyc.name == "AMD EPYC 7B13" and epyc.x86 and epyc.has("avx2") and not epyc.has("avx512_vnni")
    assert epyc.vnni is False and epyc.int8_sums_saturate and epyc.kind == "x86 without VNNI"
    for text in (ICELAKE, ALDERLAKE):
        cpu = parse_cpuinfo(text, "x86_64")
        assert cpu.vnni is True and not cpu.int8_sums_saturate
    # "avx512_vnni" is a flag of its own: a substring match on "avx_vnni" would not tell the two apart
    assert parse_cpuinfo(ICELAKE, "x86_64").has("avx512_vnni") and not parse_cpuinfo(ICELAKE, "x86_64").has("avx_vnni")


def test_arm_never_saturates_and_an_unreadable_x86_cpu_counts_as_saturating():
    arm = parse_cpuinfo(GRAVITON, "aarch64")
    assert not arm.x86 and arm.has("asimddp") and not arm.int8_sums_saturate and arm.name == arm.kind == "aarch64"
    unknown = CpuInfo("x86_64", "AMD64", None)
    assert unknown.kind == "x86, CPU flags unknown"
    assert unknown.vnni is None and unknown.int8_sums_saturate  # 7-bit weights cost little; wrong outputs cost all
    assert not CpuInfo("arm64", "arm64", None).int8_sums_saturate
