"""Compact architectures: the zoo at MNIST size, layer rewrites of trained LeNet-5 / ResNet-20, the mobile seg net.

Trained models are cached (``benchmarks/_baselines.cached_model``, keyed by the whole training config and the
training code); accuracy and latency are measured on every run, so a re-run on a quiet machine re-times everything.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

import slimkit.data._segmentation  # noqa: F401  (registers "mnist-seg", also when data/__init__ does not import it)
from benchmarks._baselines import cached_model, loader_record, sgd_record, trained, weights_digest
from benchmarks._common import LATENCY_METHOD, LATENCY_THREADS, Section, latency_cell, latency_record, markdown_table
from slimkit import models
from slimkit.analysis import compare_latency, evaluate, profile
from slimkit.convert import fine_tune_, to_crelu, to_depthwise_separable, to_group_conv
from slimkit.data import TensorLoader, create_data
from slimkit.train import FitConfig, fit

TITLE = "Compact architectures (zoo, layer rewrites, mobile segmentation)"
log = logging.getLogger(__name__)
#: Too slow to train on this CPU budget: profiled and timed, accuracy not measured.
UNTRAINED = {"resnet50", "resnext50_32x4d"}
ZOO = ["lenet5", "resnet20", "crelu_net", "mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2",
       "squeezenet1_0", "squeezenet1_1", "resnet50", "resnext50_32x4d"]
CONVERTERS = {"depthwise-separable": to_depthwise_separable, "group (g=2, shuffle)": to_group_conv,
              "crelu": to_crelu}
#: the zoo's training, fixed a priori for every model: Adam, 1 epoch, batch 32, BN statistics re-estimated
ZOO_LR, ZOO_BATCH, BN_BATCHES = 1e-3, 32, 20
#: the rewrites' recovery, fixed a priori: `fine_tune_` (SGD Nesterov, one-cycle cosine) at its default lr
REWRITE_LR, REWRITE_EPOCHS = 0.01, 1
#: the segmentation net: SGD Nesterov + one-cycle cosine; the peak lr and the background class's loss weight are
#: chosen on the validation canvases (width-1.0 plain net), then used for every variant
SEG_LRS = (0.05, 0.1)
SEG_BACKGROUND_WEIGHTS = (0.2, 1.0)
SEG_WD, SEG_BATCH = 1e-4, 16
SEG_VARIANTS = ((1.0, False), (1.0, True), (0.5, False), (0.5, True))


def _settings(quick: bool) -> dict[str, int]:
    if quick:
        return {"zoo_train": 500, "zoo_test": 500, "finetune": 2000, "seg_train": 160, "seg_epochs": 1,
                "seg_eval": 100, "repeats": 5}
    return {"zoo_train": 10000, "zoo_test": 10000, "finetune": 50000, "seg_train": 4000, "seg_epochs": 12,
            "seg_eval": 1000, "repeats": 10}


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


def _recalibrate_batchnorm(model: nn.Module, loader: TensorLoader, batches: int = BN_BATCHES) -> None:
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


def _zoo_model(name: str, train: TensorLoader) -> nn.Module:
    record = {"role": "zoo", "model": name, "epochs": 1, "optimizer": {"name": "adam", "lr": ZOO_LR},
              "seed": 0, "bn_batches": BN_BATCHES, "train": loader_record(train)}

    def build() -> nn.Module:
        torch.manual_seed(0)
        return models.create(name)

    def fit_and_recalibrate(model: nn.Module) -> None:
        fit(model, train, epochs=1, optimizer=lambda p: torch.optim.Adam(p, ZOO_LR), progress=False)
        _recalibrate_batchnorm(model, train)

    return cached_model(f"zoo-{name}", record, build, fit_and_recalibrate, code=(_recalibrate_batchnorm,))


def _zoo(data, s: dict[str, int]) -> tuple[str, list[dict[str, Any]]]:
    train = _subset(data.train, s["zoo_train"], ZOO_BATCH, True)
    test = _subset(data.test, s["zoo_test"], 500, False)
    baseline = trained("resnet20", 4)
    x1, x64 = torch.zeros(1, 1, 28, 28), torch.zeros(64, 1, 28, 28)
    base_macs = profile(baseline, x1).total.macs
    records = []
    for name in ZOO:
        began = time.perf_counter()
        if name in UNTRAINED:
            torch.manual_seed(0)
            model, acc = models.create(name).eval(), None
        else:
            model = _zoo_model(name, train)
            acc = evaluate(model, test).accuracy
        total = profile(model, x1).total
        r1 = _latency(baseline, model, x1, 2 * s["repeats"])
        r64 = _latency(baseline, model, x64, s["repeats"])
        mac_ratio = total.macs / base_macs
        log.info("zoo %s: %.0f s", name, time.perf_counter() - began)
        records.append({"model": name, "params": total.params, "macs": total.macs, "accuracy": acc,
                        "latency_b1": r1, "latency_b64": r64, "mac_ratio": mac_ratio,
                        "time_per_mac_vs_resnet20_b64": _per_mac(r64, mac_ratio)})
    rows = [[r["model"], r["params"], r["macs"], "not trained" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
             round(r["mac_ratio"], 3), latency_cell(r["latency_b1"]), latency_cell(r["latency_b64"]),
             _quotient(r["time_per_mac_vs_resnet20_b64"])]
            for r in records]
    table = markdown_table(["model (28×28×1)", "params", "MACs", "accuracy", "MACs / ResNet-20",
                            "ORT latency / ResNet-20 (b=1)", "(b=64)", "time per MAC vs ResNet-20 (b=64)"], rows)
    return table, records


def _rewritten(converted: nn.Module, loader: TensorLoader, tag: str) -> nn.Module:
    """``converted`` after REWRITE_EPOCHS of ``fine_tune_``, cached under its weights' digest and the config."""
    record = {"role": "rewrite-finetune", "converted": weights_digest(converted), "epochs": REWRITE_EPOCHS,
              "optimizer": sgd_record(REWRITE_LR), "seed": 0, "train": loader_record(loader)}

    def train(model: nn.Module) -> None:
        fine_tune_(model, loader, FitConfig(epochs=REWRITE_EPOCHS, lr=REWRITE_LR, grad_clip=5.0))

    return cached_model(f"rewrite-{tag}", record, lambda: copy.deepcopy(converted), train, code=(fine_tune_,))


def _rewrites(data, s: dict[str, int]) -> tuple[str, list[dict[str, Any]]]:
    x1, x64 = data.example_input(), data.example_input(64)
    finetune = _subset(data.train, s["finetune"], 128, True)
    rows, records = [], []
    for name, epochs in (("lenet5", 10), ("resnet20", 4)):
        original = trained(name, epochs)
        total = profile(original, x1).total
        acc = evaluate(original, data.test).accuracy
        rows.append([name, "original", total.params, total.macs, "", "", f"{acc:.2%}", "1 (reference)"])
        records.append({"model": name, "rewrite": "original", "params": total.params, "macs": total.macs,
                        "acc_finetuned": acc, "latency_b64": None, "epochs": epochs})
        for label, convert in CONVERTERS.items():
            began = time.perf_counter()
            acc_rewrite = evaluate(convert(original, x1), data.test).accuracy
            model = convert(original, x1, data=data.calibration)
            acc_recon = evaluate(model, data.test).accuracy
            model = _rewritten(model, finetune, f"{name}-{label.split()[0]}")
            acc_ft = evaluate(model, data.test).accuracy
            total = profile(model, x1).total
            ratio = _latency(original, model, x64, s["repeats"])
            log.info("rewrite %s %s: %.0f s", name, label, time.perf_counter() - began)
            r = {"model": name, "rewrite": label, "params": total.params, "macs": total.macs,
                 "acc_rewrite": acc_rewrite, "acc_reconstructed": acc_recon, "acc_finetuned": acc_ft,
                 "latency_b64": ratio}
            records.append(r)
            rows.append([name, label, r["params"], r["macs"], f"{acc_rewrite:.2%}", f"{acc_recon:.2%}",
                         f"{acc_ft:.2%}", latency_cell(ratio)])
    table = markdown_table(["model", "rewrite", "params", "MACs", "acc. after rewrite (weight fit)",
                            "after LS reconstruction", "after 1 ep. fine-tune", "ORT latency / original (b=64)"],
                           rows)
    return table, records


def _segnet(data, s: dict[str, int], width: float, crelu: bool, lr: float, background: float) -> nn.Module:
    """A mobile seg net trained with SGD Nesterov (peak ``lr``, one-cycle cosine) and the background class's
    cross-entropy weight ``background``, cached."""
    record = {"role": "segnet", "width": width, "crelu": crelu, "epochs": s["seg_epochs"],
              "optimizer": sgd_record(lr, SEG_WD), "scheduler": "cosine", "background_weight": background,
              "seed": 0, "train": loader_record(data.train)}
    weight = torch.ones(data.num_classes)
    weight[0] = background

    def build() -> nn.Module:
        torch.manual_seed(0)
        return models.create("mobile_segnet", width=width, crelu=crelu)

    def train(model: nn.Module) -> None:
        fit(model, data.train, epochs=s["seg_epochs"], scheduler="cosine", progress=False,
            optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=SEG_WD),
            loss=lambda out, target: nn.functional.cross_entropy(out, target, weight=weight, ignore_index=255))

    return cached_model(f"segnet-w{width}-{'crelu' if crelu else 'plain'}", record, build, train)


def _segmentation(s: dict[str, int]) -> tuple[str, str, dict[str, Any]]:
    data = create_data("mnist-seg", batch_size=SEG_BATCH, train_size=s["seg_train"], test_size=s["seg_eval"])
    x1 = data.example_input()
    grid = []
    for lr in SEG_LRS:
        for background in SEG_BACKGROUND_WEIGHTS:
            model = _segnet(data, s, *SEG_VARIANTS[0], lr, background)
            grid.append({"lr": lr, "background_weight": background,
                         "valid_miou": evaluate(model, data.valid, metric="miou").miou})
    best = max(grid, key=lambda r: r["valid_miou"])
    grid_table = markdown_table(["peak lr", "background loss weight", "validation mIoU"],
                                [[r["lr"], r["background_weight"],
                                  f"**{r['valid_miou']:.3f}**" if r is best else f"{r['valid_miou']:.3f}"]
                                 for r in grid])
    built, rows, records = {}, [], []
    for width, crelu in SEG_VARIANTS:
        model = _segnet(data, s, width, crelu, best["lr"], best["background_weight"])
        built[(width, crelu)] = model
        total = profile(model, x1).total
        result = evaluate(model, data.test, metric="miou")
        ratio = None if (width, crelu) == SEG_VARIANTS[0] else _latency(built[SEG_VARIANTS[0]], model, x1,
                                                                         2 * s["repeats"])
        records.append({"width": width, "crelu": crelu, "params": total.params, "macs": total.macs,
                        "miou": result.miou, "pixel_accuracy": result.accuracy, "latency_b1": ratio})
        rows.append([width, "yes" if crelu else "no", total.params, total.macs, f"{result.miou:.3f}",
                     f"{result.accuracy:.2%}", "1 (reference)" if ratio is None else latency_cell(ratio)])
    table = markdown_table(["width", "CReLU", "params", "MACs (1×64×64)", "test mIoU", "pixel acc.",
                            "ORT latency / width-1.0 plain (b=1)"], rows)
    return grid_table, table, {"grid": grid, "chosen": best, "variants": records,
                               "valid_canvases": data.valid.dataset_size, "test_canvases": data.test.dataset_size}


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    s = _settings(quick)
    data = create_data("mnist", batch_size=128)
    zoo_table, zoo = _zoo(data, s)
    rewrite_table, rewrites = _rewrites(data, s)
    seg_grid, seg_table, seg = _segmentation(s)
    memory_bound = [r["model"] for r in zoo if (r["time_per_mac_vs_resnet20_b64"] or 0) > 1.5]
    originals = {r["model"]: r for r in rewrites if r.get("rewrite") == "original"}
    time_per_mac = "; ".join(
        f"{r['model']} {r['rewrite']} "
        f"{_quotient(_per_mac(r['latency_b64'], r['macs'] / originals[r['model']]['macs']))}"
        for r in rewrites if r.get("rewrite") != "original" and r["model"] in originals)
    self_timed = next(r for r in zoo if r["model"] == "resnet20")
    untrained = [r for r in zoo if r["accuracy"] is None]
    gmacs = ", ".join(f"{r['model']} {r['macs'] / 1e9:.2f}" for r in untrained)
    epochs = {r["model"]: r["epochs"] for r in rewrites if r.get("rewrite") == "original"}
    markdown = f"""
### (a) The compact zoo at MNIST size (1×28×28, 10 classes)

Every model is created at its MNIST default (small-input strides, see each model's docstring) and trained the same
short way, fixed beforehand for all (nothing tuned): **1 epoch on the first {s['zoo_train']:,} MNIST training
images** (batch {ZOO_BATCH}, Adam lr {ZOO_LR:g}; BN statistics then re-estimated over {BN_BATCHES} training
batches), accuracy on {s['zoo_test']:,} test images — a CPU budget, so the accuracies rank convergence speed at least
as much as capacity. {', '.join(r['model'] for r in untrained)} (G MACs per 28×28 image: {gmacs}) are too slow to
train within the CPU budget: their params, MACs and latency are measured, their accuracy is not. Latency:
{LATENCY_METHOD}; as a ratio to ResNet-20 (trained("resnet20", 4)).

{zoo_table}

ResNet-20 timed against itself gives {latency_cell(self_timed['latency_b1'])} (b=1) and
{latency_cell(self_timed['latency_b64'])} (b=64).

"Time per MAC vs ResNet-20" = latency ratio ÷ MAC ratio: above 1 a model turns its MACs into time less efficiently
than ResNet-20's dense 3×3 convs. Measured > 1.5× at batch 64: {', '.join(memory_bound) or 'none'}.

### (b) Rewriting trained LeNet-5 / ResNet-20 (slimkit.convert)

Baselines: trained("lenet5", {epochs['lenet5']}) and trained("resnet20", {epochs['resnet20']}). Each rewrite
converts every eligible conv (depthwise-separable skips convs with too few input channels, group conv skips channel
counts not divisible by the groups). "After rewrite" = weight-space fit only (per-channel rank-1 SVD /
block-diagonal part / filter pairs); "after LS reconstruction" = least-squares refit of each new layer to the old
layer's outputs on the calibration images, layer by layer in execution order; then {REWRITE_EPOCHS} epoch of
`fine_tune_` on {s['finetune']:,} training images (lr {REWRITE_LR:g}, one-cycle cosine; fixed beforehand). All
{data.test.dataset_size:,} test images.

{rewrite_table}

Latency against MACs (latency ratio ÷ MAC ratio at batch 64; 1 = every MAC saved became time saved):
{time_per_mac}.

### (c) Mobile segmentation net on mnist-seg (64×64 canvases, 2-4 digits, 11 classes)

Trained {s['seg_epochs']} epoch(s) on {s['seg_train']:,} canvases (batch {SEG_BATCH}, SGD Nesterov, one-cycle cosine,
weight decay {SEG_WD:g}, cross-entropy with ignore label 255). The peak learning rate and the background class's
loss weight were chosen on {seg['valid_canvases']:,} validation canvases (made from MNIST's validation digits) with
the width-1.0 plain net, then used for every variant:

{seg_grid}

Test mIoU over 11 classes on {seg['test_canvases']:,} test canvases made from MNIST test digits. Latency at batch 1
({LATENCY_THREADS} thread) relative to the width-1.0 net without CReLU, same run.

{seg_table}
"""
    return Section(topic="compact", title=TITLE, markdown=markdown,
                   data={"settings": s, "zoo": zoo, "rewrites": rewrites, "segmentation": seg})
