"""Structured pruning on MNIST: every criterion at 50% / 80% of channels on LeNet-5 and ResNet-20, accuracy right
after pruning, after least-squares reconstruction and after fine-tuning, real ONNX Runtime latency next to the
MAC ratio, Torch-Pruning side by side, and graph-building cost on ResNeXt-50 at 224×224."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks._baselines import cached_model, loader_record, sgd_record, trained, weights_digest
from benchmarks._common import (
    LATENCY_METHOD,
    LATENCY_THREADS,
    Section,
    latency_cell,
    latency_record,
    markdown_table,
)
from slimkit.train import torch_threads

TITLE = "Structured pruning (channel removal): criteria, reconstruction, latency, Torch-Pruning"

RATIOS = (0.5, 0.8)
MODELS = (("lenet5", 10, "fc2"), ("resnet20", 4, "fc"))
FINETUNE_EPOCHS = (1, 3)
FINETUNE_LR = 0.01
RECONSTRUCT_BATCHES = 2
#: intra-op threads while fine-tuning (pruning wall times and ORT latency are measured on one thread)
TRAIN_THREADS = 2
#: settings fixed a priori (nothing here is tuned): the ratios, the fine-tuning budget and learning rate


def _subset(loader_inputs: torch.Tensor, targets: torch.Tensor, n: int, batch: int, shuffle: bool):
    from slimkit.data import TensorLoader

    return TensorLoader(loader_inputs[:n], targets[:n], batch, shuffle=shuffle)


def _finetune(model: torch.nn.Module, loader, epochs: int, tag: str) -> torch.nn.Module:
    """``epochs`` of SGD (lr FINETUNE_LR, one-cycle cosine) from the one-shot pruned ``model``, cached under the
    pruned weights' digest and the whole training config."""
    from slimkit.train import default_optimizer, fit

    record = {"role": "prune-finetune", "pruned": weights_digest(model), "epochs": epochs,
              "optimizer": sgd_record(FINETUNE_LR), "scheduler": "cosine", "seed": 0, "train": loader_record(loader),
              "threads": TRAIN_THREADS}

    def train(net: torch.nn.Module) -> None:
        with torch_threads(TRAIN_THREADS):  # the section times pruning and latency on one; training may use both
            fit(net.train(), loader, epochs=epochs, optimizer=lambda p: default_optimizer(p, FINETUNE_LR),
                scheduler="cosine", progress=False)

    return cached_model(f"prune-ft-{tag}", record, lambda: copy.deepcopy(model), train)


def _acc(model: torch.nn.Module, loader) -> float:
    from slimkit.analysis import evaluate

    return float(evaluate(model.eval(), loader).accuracy)


def _images(loader, batches: int) -> int:
    """How many images the first ``batches`` batches of ``loader`` hold."""
    return sum(int(targets.shape[0]) for _, (_, targets) in zip(range(batches), loader))


def _torch_pruning(base: torch.nn.Module, example: torch.Tensor, ratio: float, last: str) -> tuple[Any, float, str]:
    """Torch-Pruning's L1 MagnitudePruner (per-layer ratio, output layer ignored), or the error it raised."""
    try:
        import torch_pruning as tp
    except ImportError as error:
        return None, 0.0, f"not installed ({error})"
    model = copy.deepcopy(base)
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[model.get_submodule(last)])
        pruner.step()
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            model(torch.cat([example, example]))
    except Exception as error:  # report what the peer does on this model, do not hide it
        return None, 0.0, f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    return model.eval(), elapsed, "ok"


def _tp_version() -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "(not installed)"
    return tp.__version__


def _resnext_cost() -> dict[str, Any]:
    """Graph build + 30% L1 pruning of ResNeXt-50 (32×4d) at 1×3×224×224 in a fresh process (peak RSS)."""
    code = r"""
import json, time, torch
torch.set_num_threads(2)
from slimkit import models
from slimkit.prune import PruneConfig, prune_channels
from slimkit.graph import dependency_graph
from slimkit.analysis import profile
model = models.create("resnext50_32x4d", num_classes=1000, in_channels=3, input_size=224).eval()
x = torch.zeros(1, 3, 224, 224)
def hwm():  # VmHWM (peak RSS of this process image; ru_maxrss would include the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1])
rss0 = hwm()
t = time.perf_counter(); graph = dependency_graph(model, x); t_graph = time.perf_counter() - t
del graph
t = time.perf_counter(); pruned = prune_channels(model, x, PruneConfig(ratio=0.3)); t_prune = time.perf_counter() - t
rss1 = hwm()
before, after = profile(model, x).total, profile(pruned, x).total
print(json.dumps({"params": before.params, "macs": before.macs, "params_after": after.params,
                  "macs_after": after.macs, "graph_s": t_graph, "prune_s": t_prune,
                  "rss_model_mb": rss0 / 1024, "rss_peak_mb": rss1 / 1024}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mac_per_real(mac_speedup: float, real_speedup: float | None) -> str:
    """MAC speed-up ÷ measured speed-up (1: every MAC saved became time saved), or "too noisy"."""
    return "too noisy" if real_speedup is None else f"{mac_speedup / real_speedup:.2f}"


def run(quick: bool) -> Section:
    from slimkit.analysis import compare_latency, profile
    from slimkit.data import create_data
    from slimkit.prune import CRITERIA, PruneConfig, prune_channels, reconstruct_

    torch.set_num_threads(1)
    data = create_data("mnist", batch_size=128)
    n_test = 2000 if quick else data.test.dataset_size
    test = _subset(data.test.inputs, data.test.targets, n_test, 500, False)
    n_ft = {"lenet5": 10000 if quick else 50000, "resnet20": 5000 if quick else 50000}
    train_x, train_y = data.train.inputs, data.train.targets
    example = data.example_input(1)
    rows, tp_rows, lat_rows = [], [], []
    raw: dict[str, Any] = {"rows": [], "torch_pruning": [], "latency": []}
    for name, epochs, last in MODELS:
        base = trained(name, epochs, data=data)
        base_prof = profile(base, example).total
        base_acc = _acc(base, test)
        ft_loader = _subset(train_x, train_y, n_ft[name], 128, True)
        rows.append([name, "—", "unpruned", base_prof.params, base_prof.macs, base_acc, "", "", "", "", ""])
        for ratio in RATIOS:
            pruned = None
            for criterion in CRITERIA.names():
                start = time.perf_counter()
                pruned = prune_channels(base, example, PruneConfig(ratio=ratio, criterion=criterion),
                                        data=data.calibration).eval()
                wall = time.perf_counter() - start
                prof = profile(pruned, example).total
                acc0 = _acc(pruned, test)
                recon = copy.deepcopy(pruned)
                reconstruct_(recon, base, data.calibration, batches=RECONSTRUCT_BATCHES)
                acc_rec = _acc(recon, test)
                acc_ft = [_acc(_finetune(pruned, ft_loader, epochs, name), test) for epochs in FINETUNE_EPOCHS]
                row = [name, f"{ratio:.0%}", criterion, prof.params, prof.macs, acc0, acc_rec, *acc_ft,
                       round(prof.macs / base_prof.macs, 3), round(wall, 2)]
                rows.append(row)
                raw["rows"].append(dict(zip(["model", "ratio", "criterion", "params", "macs", "acc_pruned",
                                             "acc_reconstructed", *[f"acc_finetuned_{e}ep" for e in FINETUNE_EPOCHS],
                                             "mac_ratio", "prune_s"], row, strict=True)))
            # Every criterion keeps the same widths with scope="layer": one latency measurement per ratio.
            prof = profile(pruned, example).total
            for batch in (1, 64):
                x = torch.rand(batch, *example.shape[1:])
                cmp = compare_latency(base, pruned, x, backend="onnxruntime", threads=LATENCY_THREADS,
                                      repeats=30 if quick else 50)
                record = latency_record(cmp)
                raw["latency"].append({"model": name, "ratio": ratio, "pruner": "slimkit", "batch": batch,
                                       "mac_ratio": prof.macs / base_prof.macs, **record})
                lat_rows.append([name, f"{ratio:.0%}", "slimkit", batch, round(prof.macs / base_prof.macs, 3),
                                 latency_cell(record), _mac_per_real(base_prof.macs / prof.macs, cmp.speedup)])
            peer, wall, status = _torch_pruning(base, example, ratio, last)
            if peer is None:
                tp_rows.append([name, f"{ratio:.0%}", "", "", "", "", "", "", status])
                continue
            pprof = profile(peer, example).total
            tp_rows.append([name, f"{ratio:.0%}", pprof.params, pprof.macs, _acc(peer, test),
                            *[_acc(_finetune(peer, ft_loader, epochs, f"{name}-tp"), test)
                              for epochs in FINETUNE_EPOCHS], round(wall, 2), status])
            for batch in (1, 64):
                x = torch.rand(batch, *example.shape[1:])
                cmp = compare_latency(base, peer, x, backend="onnxruntime", threads=LATENCY_THREADS,
                                      repeats=30 if quick else 50)
                record = latency_record(cmp)
                raw["latency"].append({"model": name, "ratio": ratio, "pruner": "torch-pruning", "batch": batch,
                                       "mac_ratio": pprof.macs / base_prof.macs, **record})
                lat_rows.append([name, f"{ratio:.0%}", "torch-pruning", batch,
                                 round(pprof.macs / base_prof.macs, 3), latency_cell(record),
                                 _mac_per_real(base_prof.macs / pprof.macs, cmp.speedup)])
    raw["torch_pruning"] = tp_rows
    resnext = _resnext_cost()
    raw["resnext50"] = resnext
    calib = PruneConfig().batches
    raw["settings"] = {"test_images": n_test, "finetune_images": n_ft, "finetune_epochs": FINETUNE_EPOCHS,
                       "finetune_lr": FINETUNE_LR, "finetune_threads": TRAIN_THREADS,
                       "reconstruct_images": _images(data.calibration, RECONSTRUCT_BATCHES),
                       "criterion_images": _images(data.calibration, calib)}
    st = raw["settings"]
    settings = (f"test accuracy on {'the first ' if n_test < data.test.dataset_size else 'all '}{n_test:,} MNIST "
                f"test images; fine-tuning = {' or '.join(map(str, FINETUNE_EPOCHS))} epochs (SGD lr {FINETUNE_LR:g}, "
                "one-cycle cosine over the epochs, each from the one-shot pruned model) "
                f"over the first {n_ft['lenet5']:,} (LeNet-5) / {n_ft['resnet20']:,} (ResNet-20) training images; "
                f"reconstruction = layer-by-layer least squares on {st['reconstruct_images']:,} calibration images; "
                f"data-driven criteria (ThiNet, Taylor) score on {st['criterion_images']:,} calibration images. "
                "Every setting was fixed beforehand; nothing was tuned, so no validation split is involved")
    md = [
        f"Baselines: `trained('lenet5', {MODELS[0][1]})`, `trained('resnet20', {MODELS[1][1]})` (option-A shortcuts), "
        f"trained on the {data.train.dataset_size:,} training images. One-shot "
        f"`prune_channels(..., PruneConfig(ratio=r, criterion=c))`, same ratio in every channel group "
        f"(output layer protected). Settings: {settings}.",
        "",
        markdown_table(["model", "ratio", "criterion", "params", "MACs", "acc pruned", "acc reconstructed",
                        *[f"acc {e}-ep fine-tune" for e in FINETUNE_EPOCHS], "MAC ratio", "prune s"], rows),
        "",
        f"**Torch-Pruning** (`torch-pruning` {_tp_version()} from PyPI, `MagnitudePruner` with L1 importance, same "
        "ratio, output layer ignored, same fine-tuning), in the same run:",
        "",
        markdown_table(["model", "ratio", "params", "MACs", "acc pruned",
                        *[f"acc {e}-ep fine-tune" for e in FINETUNE_EPOCHS], "prune s", "status"], tp_rows),
        "",
        f"**Latency**, pruned / original in the same run: {LATENCY_METHOD}. `MAC speed-up / real speed-up` = 1 "
        "means the full MAC reduction became wall-clock time.",
        "",
        markdown_table(["model", "ratio", "pruner", "batch", "MAC ratio", "latency ratio",
                        "MAC speed-up / real speed-up"], lat_rows),
        "",
    ]
    if "error" in resnext:
        md.append(f"ResNeXt-50 graph cost: failed ({resnext['error']}).")
    else:
        md.append(
            f"**Generality / cost at scale**: ResNeXt-50 (32×4d, {resnext['params']:,} params, "
            f"{resnext['macs'] / 1e9:.2f} G MACs at 1×3×224×224): building the dependency graph took "
            f"{resnext['graph_s']:.1f} s and a full 30% L1 prune (copy, trace, one batch-1 forward on ids, slicing, "
            f"validation forward) {resnext['prune_s']:.1f} s on 2 threads; peak RSS of the process "
            f"{resnext['rss_peak_mb']:.0f} MB (VmHWM; {resnext['rss_model_mb']:.0f} MB after importing torch and "
            "building the model). "
            f"Pruned: {resnext['params_after']:,} params, {resnext['macs_after'] / 1e9:.2f} G MACs "
            "(ResNeXt's grouped 3×3 convs prune by channel *slot*, equal in all 32 groups).")
    return Section(topic="prune", title=TITLE, markdown="\n".join(md), data=raw)
