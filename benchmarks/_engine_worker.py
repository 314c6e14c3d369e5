"""One pruning of one torchvision architecture by one tool, in a fresh process of the torchvision venv
(``benchmarks/make_torchvision_venv.sh``); prints one JSON line. Run by ``bench_engine``:

    .venv-torchvision/bin/python -m benchmarks._engine_worker slimkit resnet50 0.3

Wall time covers everything the tool does (capture / dependency graph, scoring, removal), both tools imported
before the clock starts; memory is the process's peak RSS (VmHWM) after pruning minus its peak before (the model
built and run once), so it is what the pruning added. Parameters and MACs of both tools' results are counted by
the same counter (``slimkit.analysis.profile``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from slimkit.analysis import profile
from slimkit.prune import PruneConfig, prune_channels, pruning_info

#: architecture → input side (Inception v3 is defined at 299×299)
INPUT_SIZE = {"inception_v3": 299}
#: constructor options: no auxiliary heads (they only run in training mode), no pretrained weights
OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False,
                                                                                      "init_weights": True}}


def _status(key: str) -> float:
    """A VmHWM / VmRSS line of /proc/self/status, in MiB."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(key)).split()[1]) / 1024


def build(arch: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, **OPTIONS.get(arch, {})).eval()
    side = INPUT_SIZE.get(arch, 224)
    return model, torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))


def prune_slimkit(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    """slimkit's defaults: L1 filter norms, ``ratio`` of every group (channels, heads and residual widths)."""
    pruned = prune_channels(model, x, PruneConfig(ratio=ratio, criterion="l1", timeout=None))
    opaque = (pruning_info(pruned) or {}).get("opaque") or []
    # ops no rule followed, each with how many layers' channels it froze: why a ratio was not reached
    return pruned, {"opaque": [{"op": site["op"], "froze": len(site["froze"])} for site in opaque]}


def prune_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning as its own torchvision script sets it up (benchmarks/prunability/torchvision_pruning.py):
    ``MagnitudePruner`` with L1 importance, the 1000-way classifier (a Linear, or SqueezeNet's conv) and attention
    output projections ignored,
    ViT widths rounded to the head count and ``hidden_dim`` updated after pruning."""
    ignored = [m for m in model.modules()
               if (isinstance(m, nn.Linear) and m.out_features == 1000)
               or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)  # SqueezeNet's classifier is a conv
               or isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    round_to = model.encoder.layers[0].num_heads if isinstance(model, VisionTransformer) else None
    for p in model.parameters():
        p.requires_grad_(True)
    pruner = tp.pruner.MagnitudePruner(model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, round_to=round_to, ignored_layers=ignored)
    pruner.step()
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    return model, {}


TOOLS = {"slimkit": prune_slimkit, "torch_pruning": prune_torch_pruning}



def measure(tool: str, arch: str, ratio: float) -> dict[str, Any]:
    torch.set_num_threads(2)
    model, x = build(arch)
    before = profile(model, x).total
    grouped_before = _grouped_conv_channels(model)
    with torch.no_grad():
        reference_shape = tuple(model(x).shape)
    peak_before = _status("VmHWM")
    start = time.perf_counter()
    pruned, extra = TOOLS[tool](model, x, ratio)
    seconds = time.perf_counter() - start
    added_mb = max(0.0, _status("VmHWM") - peak_before)
    pruned.eval()
    with torch.no_grad():
        shape = tuple(pruned(x).shape)
    after = profile(pruned, x).total
    if shape != reference_shape:
        return {"ok": False, "error": f"output shape {list(shape)} instead of {list(reference_shape)}"}
    grouped_after = _grouped_conv_channels(pruned)
    grouped = [sum(grouped_before.values()), sum(grouped_after.get(n, 0) for n in grouped_before)]
    return {"ok": True, "seconds": seconds, "added_mb": added_mb, "peak_mb": _status("VmHWM"),
            "params": [before.params, after.params], "macs": [before.macs, after.macs],
            "grouped_conv_channels": grouped, **extra}


def _grouped_conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every grouped (not depthwise) convolution: how much of them a tool removed explains
    most of the MAC differences on ResNeXt and RegNet."""
    return {name: m.out_channels for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}


def main(argv: list[str]) -> int:
    tool, arch, ratio = argv[0], argv[1], float(argv[2])
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    try:
        result = measure(tool, arch, ratio)
    except Exception as error:  # reported in the table as the tool's outcome on this architecture
        first_line = (str(error).splitlines() or [""])[0][:160]
        result = {"ok": False, "error": f"{type(error).__name__}: {first_line}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
