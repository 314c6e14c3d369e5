"""Compact architectures: the zoo at MNIST size, layer rewrites of trained LeNet-5 / ResNet-20, the mobile seg net."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import nn

import slimkit.data._segmentation  # noqa: F401  (registers "mnist-seg", also when data/__init__ does not import it)
from benchmarks._baselines import CACHE, trained
from benchmarks._common import LATENCY_METHOD, LATENCY_THREADS, Section, latency_cell, latency_record, markdown_table
from slimkit import models
from slimkit._io import write_text_atomic
from slimkit.analysis import compare_latency, evaluate, profile
from slimkit.convert import fine_tune_, to_crelu, to_depthwise_separable, to_group_conv
from slimkit.data import TensorLoader, create_data
from slimkit.train import fit

TITLE = "Compact architectures (zoo, layer rewrites, mobile segmentation)"
#: Bump a part's version when its measuring code changes, so its cached table is measured again.
PART_VERSION = {"zoo": 5, "rewrites": 4, "seg": 5, "items": 3}
#: Too slow to train on this CPU budget (≈1 GMAC per 28×28 image): profiled and timed, accuracy not measured.
UNTRAINED = {"resnet50", "resnext50_32x4d"}
#: The settings a part's cached result depends on (by key prefix).
PART_KEYS = {"zoo": ("zoo", "repeats"), "rewrites": ("finetune", "repeats"), "seg": ("seg",)}

ZOO = ["lenet5", "resnet20", "crelu_net", "mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2",
       "squeezenet1_0", "squeezenet1_1", "resnet50", "resnext50_32x4d"]
CONVERTERS = {"depthwise-separable": to_depthwise_separable, "group (g=2, shuffle)": to_group_conv,
              "crelu": to_crelu}


def _settings(quick: bool) -> dict[str, int]:
    if quick:
        return {"zoo_train": 500, "zoo_test": 500, "finetune": 2000, "seg_train": 160, "seg_epochs": 1,
                "seg_test": 100, "repeats": 5}
    return {"zoo_train": 10000, "zoo_test": 2000, "finetune": 50000, "seg_train": 4000, "seg_epochs": 12,
            "seg_test": 500, "repeats": 10}


def _subset(loader: TensorLoader, n: int, batch: int, shuffle: bool) -> TensorLoader:
    return TensorLoader(loader.inputs[:n], loader.targets[:n], batch, shuffle=shuffle, seed=0)


def _latency(base: nn.Module, cand: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    return latency_record(compare_latency(base.eval(), cand.eval(), x, backend="onnxruntime",
                                          threads=LATENCY_THREADS, warmup=3, repeats=repeats))


def _per_mac(record: dict[str, Any], mac_ratio: float) -> float | None:
    """Latency ratio ÷ MAC ratio, None when the latency comparison was too noisy."""
    return None if record["ratio"] is None else record["ratio"] / mac_ratio


def _quotient(value: float | None) -> str:
    return "too noisy" if value is None else f"{value:.2f}"


def _cached(key: str, s: dict[str, int], measure) -> dict[str, Any]:
    """One measured record, kept in benchmarks/.cache so an interrupted run resumes where it stopped (each zoo
    model or rewrite takes minutes on a shared CPU). Reused only when the settings and PART_VERSION match."""
    path = CACHE / f"compact-{key}-v{PART_VERSION['items']}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["settings"] == s:
            return cached["record"]
    record = measure()
    CACHE.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"settings": s, "record": record}, default=str))
    return record


def _recalibrate_batchnorm(model: nn.Module, loader: TensorLoader, batches: int = 20) -> None:
    """Re-estimate BN running statistics with the final weights (cumulative average over ``batches`` training
    batches). After a few dozen fast-moving steps the momentum averages lag far behind the weights, and eval-mode
    accuracy would measure that lag instead of the model."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for i, (inputs, _) in enumerate(loader):
            if i == batches:
                break
            model(inputs)
    model.eval()


def _zoo(data, s: dict[str, int], log: list[str]) -> tuple[str, list[dict[str, Any]]]:
    train = _subset(data.train, s["zoo_train"], 32, True)
    test = _subset(data.test, s["zoo_test"], 500, False)
    baseline = trained("resnet20", 4)
    x1, x64 = torch.zeros(1, 1, 28, 28), torch.zeros(64, 1, 28, 28)
    base_macs = profile(baseline, x1).total.macs

    def measure(name: str) -> dict[str, Any]:
        began = time.perf_counter()
        torch.manual_seed(0)
        model = models.create(name)
        acc = None
        if name not in UNTRAINED:
            fit(model, train, epochs=1, optimizer=lambda p: torch.optim.Adam(p, 1e-3), progress=False)
            _recalibrate_batchnorm(model, train)
            acc = evaluate(model, test).accuracy
        total = profile(model, x1).total
        r1 = _latency(baseline, model, x1, 2 * s["repeats"])
        r64 = _latency(baseline, model, x64, s["repeats"])
        mac_ratio = total.macs / base_macs
        log.append(f"zoo {name}: {time.perf_counter() - began:.0f}s")
        return {"model": name, "params": total.params, "macs": total.macs, "accuracy": acc,
                "latency_b1": r1, "latency_b64": r64, "mac_ratio": mac_ratio,
                "time_per_mac_vs_resnet20_b64": _per_mac(r64, mac_ratio)}

    keys = {name: f"zoo-{name}" if name in UNTRAINED else f"zoo-bnrecal-{name}" for name in ZOO}
    records = [_cached(keys[name], s, lambda name=name: measure(name)) for name in ZOO]
    rows = [[r["model"], r["params"], r["macs"], "not trained" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
             round(r["mac_ratio"], 3), latency_cell(r["latency_b1"]), latency_cell(r["latency_b64"]),
             _quotient(r["time_per_mac_vs_resnet20_b64"])]
            for r in records]
    table = markdown_table(["model (28×28×1)", "params", "MACs", "accuracy", "MACs / ResNet-20",
                            "ORT latency / ResNet-20 (b=1)", "(b=64)", "time per MAC vs ResNet-20 (b=64)"], rows)
    return table, records


def _rewrites(data, s: dict[str, int], log: list[str]) -> tuple[str, list[dict[str, Any]]]:
    x1, x64 = data.example_input(), data.example_input(64)
    finetune = _subset(data.train, s["finetune"], 128, True)
    rows, records = [], []
    for name, epochs in (("lenet5", 10), ("resnet20", 4)):
        original = trained(name, epochs)
        total = profile(original, x1).total
        acc = evaluate(original, data.test).accuracy
        rows.append([name, "original", total.params, total.macs, "", "", f"{acc:.2%}", 1.0])
        records.append({"model": name, "rewrite": "original", "params": total.params, "macs": total.macs,
                        "acc_finetuned": acc, "latency_b64": None})
        for label, convert in CONVERTERS.items():

            def measure(original=original, convert=convert, name=name, label=label) -> dict[str, Any]:
                began = time.perf_counter()
                plain = convert(original, x1)
                acc_rewrite = evaluate(plain, data.test).accuracy
                model = convert(original, x1, data=data.calibration)
                acc_recon = evaluate(model, data.test).accuracy
                fine_tune_(model, finetune, epochs=1, lr=0.01)
                acc_ft = evaluate(model, data.test).accuracy
                total = profile(model, x1).total
                ratio = _latency(original, model, x64, s["repeats"])
                log.append(f"rewrite {name} {label}: {time.perf_counter() - began:.0f}s")
                return {"model": name, "rewrite": label, "params": total.params, "macs": total.macs,
                        "acc_rewrite": acc_rewrite, "acc_reconstructed": acc_recon, "acc_finetuned": acc_ft,
                        "latency_b64": ratio}

            r = _cached(f"rewrite-{name}-{label.split()[0]}", s, measure)
            records.append(r)
            rows.append([name, label, r["params"], r["macs"], f"{r['acc_rewrite']:.2%}",
                         f"{r['acc_reconstructed']:.2%}", f"{r['acc_finetuned']:.2%}",
                         latency_cell(r["latency_b64"])])
    table = markdown_table(["model", "rewrite", "params", "MACs", "acc. after rewrite (weight fit)",
                            "after LS reconstruction", "after 1 ep. fine-tune", "ORT latency / original (b=64)"],
                           rows)
    return table, records


def _segmentation(s: dict[str, int], log: list[str]) -> tuple[str, list[dict[str, Any]]]:
    data = create_data("mnist-seg", batch_size=16, train_size=s["seg_train"], test_size=s["seg_test"])
    weight = torch.ones(11)
    weight[0] = 0.2  # background is ~90% of the pixels: down-weight it so a short run learns the digits at all
    x1 = data.example_input()
    variants = [(1.0, False), (1.0, True), (0.5, False), (0.5, True)]
    built = {}
    rows, records = [], []
    for width, crelu in variants:
        began = time.perf_counter()
        torch.manual_seed(0)
        model = models.create("mobile_segnet", width=width, crelu=crelu)
        # SGD with the one-cycle schedule: Adam at a fixed 1e-2 or 2e-3 plateaued at "background vs digit" (mIoU 0.10)
        fit(model, data.train, epochs=s["seg_epochs"], scheduler="cosine", progress=False,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
            loss=lambda out, target: nn.functional.cross_entropy(out, target, weight=weight, ignore_index=255))
        built[(width, crelu)] = model
        total = profile(model, x1).total
        result = evaluate(model, data.test, metric="miou")
        ratio = None if (width, crelu) == variants[0] else _latency(built[variants[0]], model, x1,
                                                                     2 * s["repeats"])
        records.append({"width": width, "crelu": crelu, "params": total.params, "macs": total.macs,
                        "miou": result.miou, "pixel_accuracy": result.accuracy, "latency_b1": ratio})
        rows.append([width, "yes" if crelu else "no", total.params, total.macs, f"{result.miou:.3f}",
                     f"{result.accuracy:.2%}", "1 (reference)" if ratio is None else latency_cell(ratio)])
        log.append(f"segnet width {width} crelu {crelu}: {time.perf_counter() - began:.0f}s")
    table = markdown_table(["width", "CReLU", "params", "MACs (1×64×64)", "test mIoU", "pixel acc.",
                            "ORT latency / width-1.0 plain (b=1)"], rows)
    return table, records


def _part(name: str, quick: bool, s: dict[str, int], measure) -> tuple[str, list[dict[str, Any]]]:
    """Run one part, or reuse its result from an earlier run with the same settings and code version.

    The three parts take ~10 min each on a shared 2-core machine; keeping each part's measured table lets one part
    be re-measured (delete its file in benchmarks/.cache) without re-running the others.
    """
    path = CACHE / f"compact-{name}-{'quick' if quick else 'full'}-v{PART_VERSION[name]}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        keys = [k for k in s if k.startswith(PART_KEYS[name])]
        if all(cached["settings"].get(k) == s[k] for k in keys):
            return cached["table"], cached["records"]
    table, records = measure()
    CACHE.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"settings": s, "table": table, "records": records}, default=str))
    return table, records


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    s = _settings(quick)
    data = create_data("mnist", batch_size=128)
    log: list[str] = []
    zoo_table, zoo = _part("zoo", quick, s, lambda: _zoo(data, s, log))
    rewrite_table, rewrites = _part("rewrites", quick, s, lambda: _rewrites(data, s, log))
    seg_table, seg = _part("seg", quick, s, lambda: _segmentation(s, log))
    memory_bound = [r["model"] for r in zoo if (r["time_per_mac_vs_resnet20_b64"] or 0) > 1.5]
    originals = {r["model"]: r for r in rewrites if r.get("rewrite") == "original"}
    time_per_mac = "; ".join(
        f"{r['model']} {r['rewrite']} "
        f"{_quotient(_per_mac(r['latency_b64'], r['macs'] / originals[r['model']]['macs']))}"
        for r in rewrites if r.get("rewrite") != "original" and r["model"] in originals)
    markdown = f"""
### (a) The compact zoo at MNIST size (1×28×28, 10 classes)

Every model is created at its MNIST default (small-input strides, see each model's docstring) and trained the same
short way: **1 epoch on the first {s['zoo_train']} MNIST training images** (batch 32, Adam lr 1e-3: it converges
in few steps; BN statistics then re-estimated over 20 training batches), accuracy on the first {s['zoo_test']} test
images — a CPU budget, so the accuracies rank convergence speed at least as much as capacity. ResNet-50 and
ResNeXt-50 (~1 GMAC per 28×28 image) were too slow to train within the CPU budget: their params, MACs and latency
are measured, their accuracy is not. Latency: {LATENCY_METHOD}; as a ratio to ResNet-20 (trained("resnet20", 4)).

{zoo_table}

ResNet-20 timed against itself gives {latency_cell(zoo[1]['latency_b1'])} (b=1) and
{latency_cell(zoo[1]['latency_b64'])} (b=64).

"Time per MAC vs ResNet-20" = latency ratio ÷ MAC ratio: above 1 a model turns its MACs into time less efficiently
than ResNet-20's dense 3×3 convs. Measured > 1.5× at batch 64: {', '.join(memory_bound) or 'none'} — MAC savings
from depthwise / group convs (memory-bound, little reuse per loaded weight and activation) do not become
proportional time savings on this CPU.

### (b) Rewriting trained LeNet-5 / ResNet-20 (slimkit.convert)

Baselines: trained("lenet5", 10) and trained("resnet20", 4). Each rewrite converts every eligible conv (depthwise-
separable skips convs with < 4 input channels, group conv skips channel counts not divisible by 2). "After rewrite"
= weight-space fit only (per-channel rank-1 SVD / block-diagonal part / filter pairs); "after LS reconstruction" =
least-squares refit of each new layer to the old layer's outputs on 512 calibration images, layer by layer in
execution order; then 1 epoch of fine-tuning on {s['finetune']} training images (lr 0.01, cosine). Full 10k test set.

{rewrite_table}

Latency against MACs (latency ratio ÷ MAC ratio at batch 64; 1 = every MAC saved became time saved):
{time_per_mac}. A grouped conv plus its channel shuffle, or a half conv plus concat/negate, costs extra passes over
memory, and depthwise convs reuse each loaded value little: where the quotient is well above 1, those passes ate
the MAC savings.

### (c) Mobile segmentation net on mnist-seg (64×64 canvases, 2-4 digits, 11 classes)

Trained {s['seg_epochs']} epoch(s) on {s['seg_train']} canvases (batch 16, SGD Nesterov lr 0.1 one-cycle cosine,
weight decay 1e-4, cross-entropy with background weight 0.2, ignore label 255) — short for a segmentation net
trained from scratch (Adam at a fixed lr plateaued at background-vs-digit, mIoU 0.10; mIoU was still rising at
the end here), so the mIoUs compare the variants only roughly. mIoU over 11 classes on {s['seg_test']} test
canvases made from MNIST test digits. Latency at batch 1 ({LATENCY_THREADS} thread) relative to the width-1.0 net
without CReLU, same run.

{seg_table}
"""
    return Section(topic="compact", title=TITLE, markdown=markdown,
                   data={"settings": s, "zoo": zoo, "rewrites": rewrites, "segmentation": seg, "log": log})
