"""Low-rank decomposition: SVD on LeNet-300-100, Tucker-2 and CP on LeNet-5 and ResNet-20 (MNIST).

For each setting: params, MACs, test accuracy of the baseline, right after decomposition and after fine-tuning
(SGD Nesterov lr 0.01, cosine, gradient clipping 1), and the ONNX Runtime latency ratio decomposed/baseline
(batch 1 and 64, measured in the same run by compare_latency with its A/A control).
"""

from __future__ import annotations

import copy
import logging
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
from slimkit.analysis import compare_latency, evaluate, profile
from slimkit.data import TensorLoader, create_data
from slimkit.decompose import DecomposeConfig, decompose, decompose_report
from slimkit.train import default_optimizer, fit, torch_threads

TITLE = "Low-rank decomposition (SVD, Tucker-2, CP)"
#: CP factors of a trained kernel include large cancelling components (Lebedev et al. 2015 note the instability);
#: without clipping, fine-tuning CP rank 32 of LeNet-5 conv2 at lr 0.01 diverged. Applied to every setting alike.
GRAD_CLIP = 1.0

log = logging.getLogger(__name__)

BASELINES = {"lenet300": ("lenet300", 10), "lenet5": ("lenet5", 10), "resnet20": ("resnet20", 4)}

# (model, label, config): Kim et al. 2016 apply Tucker-2 to k×k convs and SVD to fully-connected layers.
SETTINGS: list[tuple[str, str, DecomposeConfig]] = [
    ("lenet300", "svd energy 0.9", DecomposeConfig(method="svd", energy=0.9)),
    ("lenet300", "svd energy 0.7", DecomposeConfig(method="svd", energy=0.7)),
    ("lenet300", "svd rank 32", DecomposeConfig(method="svd", rank=32)),
    ("lenet300", "svd rank 10", DecomposeConfig(method="svd", rank=10)),
    ("lenet300", "svd vbmf (hidden layers)", DecomposeConfig(method="svd", vbmf=True, skip="layers.5")),
    ("lenet5", "tucker2 convs energy 0.9", DecomposeConfig(method="tucker2", energy=0.9, layers="re:conv\\d")),
    ("lenet5", "tucker2 convs vbmf", DecomposeConfig(method="tucker2", vbmf=True, layers="re:conv\\d")),
    ("lenet5", "tucker2 conv2 rank (16,8)", DecomposeConfig(method="tucker2", rank=(16, 8), layers="conv2")),
    ("lenet5", "cp conv2 rank 16", DecomposeConfig(method="cp", rank=16, layers="conv2")),
    ("lenet5", "cp conv2 rank 32", DecomposeConfig(method="cp", rank=32, layers="conv2")),
    ("lenet5", "tucker2+svd vbmf (all)", DecomposeConfig(method=("tucker2", "svd"), vbmf=True)),
    ("lenet5", "tucker2+svd ratio 0.25 (all)", DecomposeConfig(method=("tucker2", "svd"), ratio=0.25)),
    ("resnet20", "tucker2 vbmf", DecomposeConfig(method="tucker2", vbmf=True, skip="conv1")),
    ("resnet20", "tucker2 ratio 0.5", DecomposeConfig(method="tucker2", ratio=0.5, skip="conv1")),
    ("resnet20", "cp ratio 0.5", DecomposeConfig(method="cp", ratio=0.5, skip="conv1")),
]
#: ResNet-20 fine-tunes on the first SUBSET_IMAGES training images even in the full run: a full epoch per setting
#: takes many minutes on a shared 2-core machine.
SUBSET_FINETUNE = {"resnet20"}
SUBSET_IMAGES = 10_000
#: fine-tuning after decomposition, fixed a priori (nothing in this benchmark is tuned)
FINETUNE_EPOCHS = 1
FINETUNE_LR = 0.01
FINETUNE_WD = 5e-4
QUICK = {"lenet300": tuple(label for m, label, _ in SETTINGS if m == "lenet300"),
         "lenet5": ("tucker2 convs vbmf", "tucker2 conv2 rank (16,8)", "cp conv2 rank 16",
                    "tucker2+svd ratio 0.25 (all)"),
         "resnet20": ("tucker2 ratio 0.5",)}


def _latency(baseline: torch.nn.Module, candidate: torch.nn.Module, shape: tuple[int, ...], batch: int,
             quick: bool) -> dict[str, Any]:
    """The latency record of candidate/baseline in ONNX Runtime (compare_latency: paired ratios, A/A control)."""
    repeats = (20 if quick else 40) if batch > 1 else (60 if quick else 150)
    cmp = compare_latency(baseline, candidate, torch.randn(batch, *shape), backend="onnxruntime",
                          threads=LATENCY_THREADS, warmup=5, repeats=repeats)
    return latency_record(cmp)


def _finetuned(decomposed: torch.nn.Module, loader: TensorLoader, tag: str) -> torch.nn.Module:
    """``decomposed`` after FINETUNE_EPOCHS of SGD (one-cycle cosine, gradient clipping), cached under the
    decomposed weights' digest and the whole training config."""
    record = {"role": "lowrank-finetune", "decomposed": weights_digest(decomposed), "epochs": FINETUNE_EPOCHS,
              "optimizer": sgd_record(FINETUNE_LR, FINETUNE_WD), "scheduler": "cosine", "grad_clip": GRAD_CLIP,
              "seed": 0, "train": loader_record(loader)}

    def train(model: torch.nn.Module) -> None:
        fit(model.train(), loader, epochs=FINETUNE_EPOCHS, scheduler="cosine", progress=False, grad_clip=GRAD_CLIP,
            optimizer=lambda p: default_optimizer(p, FINETUNE_LR, FINETUNE_WD))

    safe = "".join(c if c.isalnum() else "-" for c in tag)
    return cached_model(f"lowrank-{safe}", record, lambda: copy.deepcopy(decomposed), train)


def _ranks_summary(report) -> str:
    """Every layer's ranks for a few layers; for many, their count and range (the per-layer table has the rest)."""
    rows = report.decomposed
    if len(rows) <= 4:
        return "; ".join(f"{r.name} {'×'.join(map(str, r.ranks))}" for r in rows)
    flat = [k for r in rows for k in r.ranks]
    return f"{len(rows)} layers, ranks {min(flat)}–{max(flat)}"


def _vbmf_notes(raw: list[dict[str, Any]]) -> list[str]:
    """Say where EVBMF found nothing above its noise threshold (its rank 0 is clamped to 1), from the run's data."""
    notes = []
    for entry in raw:
        if not entry["report"]["config"]["vbmf"]:
            continue
        layers = [r for r in entry["report"]["layers"] if r["skipped"] is None]
        collapsed = [r for r in layers if all(k == 1 for k in r["ranks"])]
        if collapsed:
            notes.append(f"{entry['model']} / {entry['setting']}: for {len(collapsed)} of {len(layers)} layers EVBMF "
                         "kept no singular value above its estimated noise threshold (rank 0, clamped to 1): those "
                         "unfoldings' spectra are flat, indistinguishable from noise to the EVB model, so VBMF "
                         "ranks are not a usable choice there; use energy or ratio instead.")
    return notes


def run(quick: bool) -> Section:
    with torch_threads(1):
        return _run(quick)


def _run(quick: bool) -> Section:
    data = create_data("mnist", batch_size=128)
    example = data.example_input()
    shape = tuple(example.shape[1:])
    subset = TensorLoader(data.train.inputs[:SUBSET_IMAGES], data.train.targets[:SUBSET_IMAGES], batch_size=128,
                          shuffle=True)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    layer_rows: list[list[Any]] = []
    for model_name, (name, epochs) in BASELINES.items():
        baseline = trained(name, epochs, data=data)
        base_prof = profile(baseline, example).total
        base_acc = evaluate(baseline, data.test).accuracy
        rows.append([model_name, "baseline", "", base_prof.params, base_prof.macs, base_acc, "", "1.00×",
                     "1 (reference)", "1 (reference)"])
        for label, config in ((lab, cfg) for m, lab, cfg in SETTINGS if m == model_name):
            if quick and label not in QUICK[model_name]:
                continue
            began = time.perf_counter()
            result = decompose(baseline, example, config)
            seconds = time.perf_counter() - began
            report = decompose_report(result)
            acc0 = evaluate(result, data.test).accuracy
            finetune = subset if quick or model_name in SUBSET_FINETUNE else data.train
            result = _finetuned(result, finetune, f"{model_name}-{label}")
            acc1 = evaluate(result, data.test).accuracy
            lat1 = _latency(baseline, result, shape, 1, quick)
            lat64 = _latency(baseline, result, shape, 64, quick)
            ranks = _ranks_summary(report)
            rows.append([model_name, label, ranks, report.params_after, report.macs_after, acc0, acc1,
                         f"{report.params_before / report.params_after:.2f}×", latency_cell(lat1),
                         latency_cell(lat64)])
            for r in report.layers:
                layer_rows.append([model_name, label, r.name, r.method or "kept", "×".join(map(str, r.ranks)),
                                   r.params_before, r.params_after, r.macs_before, r.macs_after, r.relative_error])
            raw.append({"model": model_name, "setting": label, "report": report.to_dict(), "accuracy_baseline":
                        base_acc, "accuracy_decomposed": acc0, "accuracy_finetuned": acc1,
                        "finetune_images": len(finetune.targets),
                        "latency_ratio_b1": lat1["ratio"], "latency_ratio_b64": lat64["ratio"],
                        "latency_b1": lat1, "latency_b64": lat64, "decompose_seconds": seconds})
            log.info("%s %s: params %d, acc %.4f → %.4f after fine-tuning, latency ratio b1 %s b64 %s",
                     model_name, label, report.params_after, acc0, acc1, latency_cell(lat1), latency_cell(lat64))
    n_train = data.train.dataset_size
    ft = (f"{FINETUNE_EPOCHS} epoch(s) on the first {SUBSET_IMAGES:,} training images" if quick else
          f"{FINETUNE_EPOCHS} epoch(s) on the {n_train:,}-image training split (ResNet-20: on the first "
          f"{SUBSET_IMAGES:,} images, to fit the CPU budget)")
    markdown = "\n\n".join([
        markdown_table(["model", "setting", "ranks", "params", "MACs", "acc. decomposed", "acc. fine-tuned",
                        "params ratio", "ORT latency ratio b1", "b64"], rows),
        " ".join([
            "The baseline row's accuracy column is the trained model's; fine-tuning is", ft,
            f"(SGD Nesterov, lr {FINETUNE_LR:g}, one-cycle cosine, weight decay {FINETUNE_WD:g}, gradient norm",
            f"clipped at {GRAD_CLIP:g}). Every setting was fixed beforehand (nothing tuned, no validation split",
            f"involved); accuracies on the {data.test.dataset_size:,} test images.",
            f"Latency ratio = decomposed / baseline at batch 1 and 64, {LATENCY_METHOD}; below 1 is faster.",
            "Ranks: SVD K, Tucker-2 R_out×R_in, CP R; VBMF is analytic EVBMF (Nakajima et al. 2013) on each",
            "unfolding, as Kim et al. 2016. Layers a method cannot shrink (e.g. the 10-way classifier at a high",
            "energy) are left alone.",
        ]),
        *_vbmf_notes(raw),
        "Per-layer ranks, counts and relative output error of each factorised layer on Gaussian input:",
        markdown_table(["model", "setting", "layer", "method", "ranks", "params", "params after", "MACs",
                        "MACs after", "rel. error"], layer_rows),
    ])
    return Section(topic="lowrank", title=TITLE, markdown=markdown, data={"rows": raw, "quick": quick})
