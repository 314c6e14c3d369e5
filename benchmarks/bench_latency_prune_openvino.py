"""Latency-aware pruning with OpenVINO as the target runtime: the ResNet-20 and MobileNetV2 latency-target tables
of ``bench_latency_prune``, with every latency table, target and timing in OpenVINO's CPU runtime (fp32).

Does a second runtime turn more of a MAC reduction into speed-up than ONNX Runtime does on ResNet-20 at 28×28,
where ONNX Runtime turns about half of it (#16)? The same protocol answers it: options chosen on validation, the
same fine-tune, uniform L1 at the same measured latency, the widths keeping the most MACs, depth pruning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks._common import Section, machine_info
from benchmarks.bench_latency_prune import _mobilenet_targets, _resnet20, _settings

TITLE = "Latency-aware pruning in OpenVINO (CPU, fp32 latency targets)"


def run(quick: bool) -> Section:
    import openvino

    torch.set_num_threads(1)
    s = _settings(quick)
    with tempfile.TemporaryDirectory(prefix="bench-latency-tables-ov-") as tmp:
        resnet_text, resnet = _resnet20(s, Path(tmp), backend="openvino")
        mbv2_text, mbv2 = _mobilenet_targets(s, Path(tmp), backend="openvino")
    markdown = "\n".join([
        f"Machine: {machine_info()['cpu']}; OpenVINO {openvino.__version__}. The tables and protocol of the ONNX "
        "Runtime section above (`bench_latency_prune`), with the latency tables, the targets and every timing in "
        "OpenVINO's CPU runtime: `LatencyTarget(..., backend='openvino')`, `build_latency_table(..., "
        "backend='openvino')`, `compare_latency(..., backend='openvino')`. The models, fine-tune and validation "
        "choice are the same code; fine-tuned accuracies are cached by the pruned widths, so a model with the same "
        "widths as in the ONNX Runtime section has its accuracy.", "",
        resnet_text, mbv2_text])
    return Section(topic="latency_prune_openvino", title=TITLE, markdown=markdown,
                   data={"settings": s, "resnet20": resnet, "mobilenet_v2": mbv2, "machine": machine_info(),
                         "openvino": openvino.__version__})
