"""CNN quantization deployed in ONNX Runtime: slimkit PTQ (int8, w4a8, w3a8; round-to-nearest, and AdaRound / GPTQ
where slimkit has them) against NNCF and ONNX Runtime's own ``quantize_static``, in one run.

(a) LeNet-5 and ResNet-20 trained on MNIST: top-1 on the full 10,000-image test set (touched once,
for the final table: every choice — observer, calibration method, preset, helpers — is made on the 10,000-image
validation split), file size, integer kernels and float islands in ONNX Runtime's optimized graph, latency ratio
to fp32 at batch 1 and 64. (b) MobileNetV2 and ResNet-50 at 224×224 (no ImageNet here: random weights with BatchNorm
statistics from random images, random-but-fixed inputs): latency ratio at batch 1 and 8, MACs, params, file size
and how closely the int8 outputs follow fp32.

Re-run alone with ``python -m benchmarks.run --only quantize`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import (
    LATENCY_METHOD,
    LATENCY_THREADS,
    Section,
    latency_cell,
    latency_record,
    machine_info,
    markdown_table,
)

TITLE = "Quantization: int8 / w4a8 / w3a8 CNNs in ONNX Runtime, against NNCF and ORT quantize_static"

log = logging.getLogger(__name__)

#: MNIST baselines: model → training epochs (benchmarks._baselines.trained, batch 128, SGD, one-cycle cosine).
#: MobileNetV2 on MNIST (3 epochs) is out of the run: its training alone takes ~35 minutes on 2 cores; its int8
#: graph is measured at 224×224 in part (b)
MNIST_MODELS = {"lenet5": 10, "resnet20": 4}
CALIBRATION_IMAGES = 1024
#: ONNX Runtime threads when measuring accuracy (latency uses the shared LATENCY_THREADS)
THREADS = 2
BATCHES = (1, 64)
#: Low-bit round-to-nearest helpers tried on the validation split (weights per channel, activations int8)
RTN_CHOICES = {
    "minmax": {},
    "mse": {"weight_observer": "mse"},
    "minmax + bias corr.": {"bias_correction": True},
    "mse + bias corr.": {"weight_observer": "mse", "bias_correction": True},
}
ORT_METHODS = ("minmax", "entropy", "percentile")
NNCF_PRESETS = ("performance", "mixed")
#: 224×224 models from the zoo (3 channels, 1000 classes) and their latency batches
LARGE_MODELS = ("mobilenet_v2", "resnet50")
LARGE_BATCHES = (1, 8)


# --- small pieces ---------------------------------------------------------------------------------------------------


#: AdaRound's iterations per layer: the paper's 10,000 took ~25 s a layer here (MobileNetV2's 52 layers at two bit
#: widths alone would be 40+ minutes); 2,000, as the README's command uses, keeps the whole section under an hour
ADAROUND_ITERATIONS = 2000


def _reconstruction_methods() -> dict[str, str]:
    """AdaRound and GPTQ, when slimkit's QuantConfig has a ``method`` field (they live on another branch until it
    lands on main; then their rows appear by themselves)."""
    from slimkit.quantize import QuantConfig

    if "method" not in {f.name for f in dataclasses.fields(QuantConfig)}:
        return {}
    return {"AdaRound": f"adaround:iterations={ADAROUND_ITERATIONS}", "GPTQ": "gptq"}


def _latency(baseline: Path, candidate: Path, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """``compare_latency`` in ONNX Runtime (baseline, its A/A copy and the candidate interleaved), as the JSON record
    every benchmark keeps (``ratio`` None and status "too noisy" when the A/A control fails)."""
    from slimkit.analysis import compare_latency

    return latency_record(compare_latency(baseline, candidate, x, backend="onnxruntime", threads=LATENCY_THREADS,
                                          warmup=5, repeats=repeats))


def _graph_facts(path: Path) -> dict[str, Any]:
    from slimkit.export import float_islands, int8_kernel_count

    islands = float_islands(path)
    return {"int8_kernels": int8_kernel_count(path), "float_islands": len(islands),
            "float_island_ops": sorted({op for op, _ in islands})}


def _subset(loader, n: int | None):
    from slimkit.data import TensorLoader

    if n is None:
        return loader
    return TensorLoader(loader.inputs[:n], loader.targets[:n], batch_size=loader.batch_size)


def _timed(build: Callable[[], Path]) -> tuple[Path, float]:
    began = time.perf_counter()
    path = build()
    return path, time.perf_counter() - began


def _choose(label: str, builders: dict[str, Callable[[], Path]], valid) -> dict[str, Any]:
    """Build every choice, score each deployed file on the validation split, keep the best (the first on ties)."""
    from slimkit.export import onnx_accuracy

    scores, built = {}, {}
    for key, build in builders.items():
        try:
            path, seconds = _timed(build)
        except Exception as error:  # a peer that fails on a model is reported, not fatal
            log.warning("%s (%s) failed: %s", label, key, error)
            scores[key] = None
            continue
        built[key] = (path, seconds)
        scores[key] = onnx_accuracy(path, valid, threads=THREADS)
        log.info("%s %s: validation %.4f (%.1f s)", label, key, scores[key], seconds)
    if not built:
        return {"label": label, "failed": True, "validation": scores}
    best = max(built, key=lambda k: (scores[k], -list(builders).index(k)))
    path, seconds = built[best]
    return {"label": label, "choice": best, "validation": scores, "path": path, "seconds": seconds}


# --- (a) MNIST models -----------------------------------------------------------------------------------------------


def _mnist_rows(name: str, epochs: int, quick: bool, tmp: Path) -> dict[str, Any]:
    from benchmarks._baselines import trained
    from benchmarks._peer_nncf import nncf_quantize, nncf_version
    from slimkit.analysis import profile
    from slimkit.data import create_data
    from slimkit.export import export_onnx, export_qdq, onnx_accuracy, ort_quantize_static
    from slimkit.quantize import OBSERVERS, QuantConfig, quantize

    data = create_data("mnist", batch_size=256, calibration_size=CALIBRATION_IMAGES)
    model = trained(name, epochs)
    valid, test = _subset(data.valid, 2000 if quick else None), _subset(data.test, 2000 if quick else None)
    example = data.example_input()
    fp32 = export_onnx(model, example, tmp / f"{name}_fp32.onnx")

    def slimkit(tag: str, **options) -> Callable[[], Path]:
        def build() -> Path:
            q = quantize(model, example, QuantConfig(**options), data=data.calibration)
            return export_qdq(q, example, tmp / f"{name}_{tag}.onnx")
        return build

    choices: dict[str, dict[str, Any]] = {}
    # the default first: a tie on validation keeps the simplest choice
    observers = ["minmax", "percentile"] if quick else ["minmax", *(o for o in OBSERVERS.names() if o != "minmax")]
    choices["int8"] = _choose("slimkit int8 PTQ", {o: slimkit(f"int8_{o}", observer=o) for o in observers}, valid)
    observer = choices["int8"]["choice"]
    choices["int8_layers"] = _choose("slimkit int8 PTQ, quantizers around layers only",
                                     {observer: slimkit("int8_layers", observer=observer, placement="layers")}, valid)
    rtn = {k: v for k, v in RTN_CHOICES.items() if not quick or k == "mse"}
    for bits in (4, 3):
        choices[f"w{bits}"] = _choose(f"slimkit w{bits}a8 RTN", {
            key: slimkit(f"w{bits}_{i}", weight_bits=bits, observer=observer, **options)
            for i, (key, options) in enumerate(rtn.items())}, valid)
        for label, method in _reconstruction_methods().items():
            choices[f"w{bits}_{label.lower()}"] = _choose(f"slimkit w{bits}a8 {label}", {
                method: slimkit(f"w{bits}_{label.lower()}", weight_bits=bits, observer=observer, method=method)},
                valid)
    methods = ("minmax",) if quick else ORT_METHODS
    choices["ort"] = _choose("ORT quantize_static (QDQ, per-channel, U8S8)", {
        m: (lambda m=m: ort_quantize_static(fp32, data.calibration, tmp / f"{name}_ort_{m}.onnx", method=m))
        for m in methods}, valid)
    nncf = nncf_version()
    if nncf is not None:
        images = tmp / f"{name}_calibration.npy"
        np.save(images, torch.cat([x for x, _ in data.calibration]).numpy())
        presets = ("performance",) if quick else NNCF_PRESETS

        def nncf_build(preset: str) -> Path:
            out = tmp / f"{name}_nncf_{preset}.onnx"
            nncf_quantize(fp32, out, images, preset=preset)
            return out

        choices["nncf"] = _choose(f"NNCF {nncf} quantize (ONNX backend)",
                                  {p: (lambda p=p: nncf_build(p)) for p in presets}, valid)

    # The final table: the test set, once per chosen file.
    repeats = {1: 20 if quick else 60, 64: 10 if quick else 30}
    inputs = {b: data.test.inputs[:b] for b in BATCHES}
    rows: dict[str, Any] = {}
    fp32_test = onnx_accuracy(fp32, test, threads=THREADS)
    rows["fp32"] = {"label": "fp32", "test": fp32_test, "validation": onnx_accuracy(fp32, valid, threads=THREADS),
                    "file_bytes": fp32.stat().st_size, "int8_kernels": 0, "float_islands": 0, "seconds": 0.0,
                    "latency": {}}
    for key, choice in choices.items():
        if choice.get("failed"):
            rows[key] = {"label": choice["label"], "failed": True, "validation": choice["validation"]}
            continue
        path = choice["path"]
        rows[key] = {
            "label": choice["label"], "choice": choice["choice"], "validation_all": choice["validation"],
            "validation": choice["validation"][choice["choice"]], "test": onnx_accuracy(path, test, threads=THREADS),
            "file_bytes": path.stat().st_size, "seconds": choice["seconds"], **_graph_facts(path),
            "latency": {b: _latency(fp32, path, x, repeats[b]) for b, x in inputs.items()},
        }
    prof = profile(model, example).total
    return {"rows": rows, "params": prof.params, "macs": prof.macs, "epochs": epochs,
            "test_images": len(test.inputs), "valid_images": len(valid.inputs)}


# --- (b) 224×224 ----------------------------------------------------------------------------------------------------


def _random_model(name: str) -> nn.Module:
    """The zoo model at 224×224 with BatchNorm statistics from random images: without ImageNet weights this gives
    activations of realistic scale (BN γ = 1 throughout, torchvision's default init, instead of the zoo's zero γ on
    each residual branch's last BN, which would make every block an identity)."""
    from slimkit import models

    torch.manual_seed(0)
    model = models.create(name, num_classes=1000, in_channels=3, input_size=224)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            module.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224, generator=generator))
    return model.eval()


def _agreement(fp32: Path, path: Path, x: torch.Tensor) -> dict[str, float]:
    from slimkit.export import run_onnx

    ref, got = run_onnx(fp32, x, threads=THREADS), run_onnx(path, x, threads=THREADS)
    return {"top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
            "max_abs_diff": float(np.abs(ref - got).max()), "max_abs_fp32": float(np.abs(ref).max()),
            "mean_abs_diff": float(np.abs(ref - got).mean()), "mean_abs_fp32": float(np.abs(ref).mean())}


def _large_rows(name: str, quick: bool, tmp: Path) -> dict[str, Any]:
    from benchmarks._peer_nncf import nncf_quantize, nncf_version
    from slimkit.analysis import profile
    from slimkit.export import export_onnx, export_qdq, ort_quantize_static
    from slimkit.quantize import QuantConfig, quantize

    model = _random_model(name)
    generator = torch.Generator().manual_seed(2)
    n_calib, n_eval = (16, 16) if quick else (64, 128)
    calibration = [torch.randn(8, 3, 224, 224, generator=generator) for _ in range(n_calib // 8)]
    evaluation = torch.randn(n_eval, 3, 224, 224, generator=generator)
    example = calibration[0][:1]
    fp32 = export_onnx(model, example, tmp / f"{name}224_fp32.onnx")
    files: dict[str, tuple[str, Path, float]] = {}

    def slimkit() -> Path:
        q = quantize(model, example, QuantConfig(), data=calibration)
        return export_qdq(q, example, tmp / f"{name}224_int8.onnx")

    files["int8"] = ("slimkit int8 PTQ (minmax)", *_timed(slimkit))
    files["ort"] = ("ORT quantize_static (minmax, per-channel)",
                    *_timed(lambda: ort_quantize_static(fp32, calibration, tmp / f"{name}224_ort.onnx")))
    nncf = nncf_version()
    if nncf is not None:
        images = tmp / f"{name}224_calibration.npy"
        np.save(images, torch.cat(calibration).numpy())
        out = tmp / f"{name}224_nncf.onnx"
        files["nncf"] = (f"NNCF {nncf} (performance preset)", out, nncf_quantize(fp32, out, images))
    repeats = {1: 10 if quick else 30, 8: 5 if quick else 15}
    inputs = {b: evaluation[:b] for b in LARGE_BATCHES}
    prof = profile(model, example).total
    rows = {"fp32": {"label": "fp32", "file_bytes": fp32.stat().st_size, "seconds": 0.0, "latency": {}}}
    for key, (label, path, seconds) in files.items():
        rows[key] = {"label": label, "file_bytes": path.stat().st_size, "seconds": seconds, **_graph_facts(path),
                     **_agreement(fp32, path, evaluation),
                     "latency": {b: _latency(fp32, path, x, repeats[b]) for b, x in inputs.items()}}
    return {"rows": rows, "params": prof.params, "macs": prof.macs, "eval_images": n_eval,
            "calibration_images": n_calib}


# --- the section ----------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2%}"


def _mnist_table(data: dict[str, Any]) -> str:
    columns = ["model", "method", "chosen on validation", "valid top-1", "test top-1", "Δ test (pts)", "ONNX bytes",
               "int8 kernels", "float islands", "latency / fp32, batch 1", "latency / fp32, batch 64", "quantize s"]
    rows = []
    for name in data["mnist_models"]:
        result = data[name]
        fp32 = result["rows"]["fp32"]["test"]
        for key, row in result["rows"].items():
            if row.get("failed"):
                rows.append([name, row["label"], "failed", "", "", "", "", "", "", "", "", ""])
                continue
            lat = row["latency"]
            islands = row["float_islands"]
            island_text = f"{islands} ({', '.join(row['float_island_ops'])})" if islands else islands
            rows.append([
                name, row["label"], row.get("choice", ""), _pct(row["validation"]), _pct(row["test"]),
                "" if key == "fp32" else f"{(row['test'] - fp32) * 100:+.2f}", row["file_bytes"],
                row["int8_kernels"], island_text, latency_cell(lat.get(1)) if lat else "1 (baseline)",
                latency_cell(lat.get(64)) if lat else "1 (baseline)", f"{row['seconds']:.1f}",
            ])
    return markdown_table(columns, rows)


def _large_table(data: dict[str, Any]) -> str:
    columns = ["model (224×224×3)", "method", "params", "MACs", "ONNX bytes", "int8 kernels", "float islands",
               "top-1 agreement", "max |Δ| / max |fp32|", "mean |Δ| / mean |fp32|", "latency / fp32, batch 1",
               "latency / fp32, batch 8", "quantize s"]
    rows = []
    for name in data["large_models"]:
        result = data[f"{name}_224"]
        for key, row in result["rows"].items():
            lat = row["latency"]
            if key == "fp32":
                rows.append([name, "fp32", result["params"], result["macs"], row["file_bytes"], 0, 0, "", "", "",
                             "1 (baseline)", "1 (baseline)", ""])
                continue
            rows.append([
                name, row["label"], result["params"], result["macs"], row["file_bytes"], row["int8_kernels"],
                row["float_islands"], _pct(row["top1_agreement"]),
                f"{row['max_abs_diff'] / row['max_abs_fp32']:.3f}",
                f"{row['mean_abs_diff'] / row['mean_abs_fp32']:.3f}",
                latency_cell(lat[1]), latency_cell(lat[8]), f"{row['seconds']:.1f}",
            ])
    return markdown_table(columns, rows)


def _speedup(row: dict[str, Any], batch: int) -> float | None:
    ratio = row.get("latency", {}).get(batch, {}).get("ratio") if not row.get("failed") else None
    return None if ratio is None else 1.0 / ratio


def _fmt_speedup(value: float | None) -> str:
    return "too noisy" if value is None else f"{value:.2f}×"


def _goals(data: dict[str, Any]) -> str:
    """The issue's goals, each checked against this run's numbers."""
    lines = []
    r20 = data.get("resnet20")
    if r20:
        rows = r20["rows"]
        ours = _speedup(rows["int8"], 64)
        peers = {k: _speedup(rows[k], 64) for k in ("ort", "nncf") if k in rows}
        best_peer = max((v for v in peers.values() if v is not None), default=None)
        peer_text = ", ".join(f"{rows[k]['label'].split(' (')[0]} {_fmt_speedup(v)}" for k, v in peers.items())
        met = ours is not None and best_peer is not None and ours >= best_peer
        lines.append(f"- int8 at least as fast as the faster peer (ResNet-20, batch 64): slimkit "
                     f"{_fmt_speedup(ours)} vs {peer_text} — {'met' if met else 'not met'} "
                     f"(test top-1 {_pct(rows['int8']['test'])} vs fp32 {_pct(rows['fp32']['test'])}).")
        fp32 = rows["fp32"]["test"]
        w4 = {k: v for k, v in rows.items() if k.startswith("w4") and not v.get("failed")}
        best = max(w4, key=lambda k: w4[k]["test"])
        gap = (fp32 - w4[best]["test"]) * 100
        lines.append(f"- w4a8 ResNet-20 within 0.3 points of fp32: best w4a8 row '{w4[best]['label']}' is "
                     f"{gap:.2f} points below fp32 — {'met' if gap <= 0.3 else 'not met'}.")
    return "\n".join(lines)


def _weight_range_text(data: dict[str, Any]) -> str:
    """What the int8 rows' weight grid was on the machine that ran them (runs before it was recorded: nothing)."""
    chosen = data.get("int8_weight_range")
    if not chosen:
        return ""
    return (f" slimkit's int8 rows have {chosen['bits']}-bit weights here (`QuantConfig(reduce_range=None)` decided: "
            f"{chosen['reason']}); ORT's `quantize_static` gets `reduce_range={chosen['reduce_range']}` by the same "
            "rule (`slimkit.export.ort_quantize_static`).")


def _notes(data: dict[str, Any]) -> str:
    info = data["machine"]
    vnni = "AVX512-VNNI" if info.get("avx512_vnni") else ("AVX-VNNI" if info.get("avx_vnni") else "no VNNI")
    epochs = ", ".join(f"{n} {data[n]['epochs']} epochs" for n in data["mnist_models"])
    first = data[data["mnist_models"][0]]
    methods = _reconstruction_methods()
    hook = ("AdaRound and GPTQ rows use `QuantConfig(method=...)`." if methods else
            "AdaRound and GPTQ rows appear once `QuantConfig(method=...)` (another branch) is on main: this run had "
            "none.")
    large = data[f"{data['large_models'][0]}_224"] if data["large_models"] else None
    text = f"""
(a) Baselines trained by `benchmarks._baselines.trained` ({epochs}; batch 128, SGD Nesterov, one-cycle cosine).
Calibration: {data['calibration_images']} MNIST training images for every method (slimkit, ORT and NNCF see the
same images). Every choice in the "chosen on validation" column was made on {first['valid_images']} validation
images (MNIST's held-out 10k; the "valid top-1" column); the test top-1 is on {first['test_images']} test images,
each chosen file evaluated once. slimkit int8: activation observer chosen among the registry; "quantizers around
layers only" is the same PTQ with `QuantConfig(placement="layers")` (activations quantized at each Conv/Linear
only, as before graph placement). w4a8 / w3a8: weights per channel on a 4- / 3-bit grid stored in int8 ONNX
containers (ONNX Runtime has no int4 conv kernels; the file is int8-sized), activations int8, round to nearest with
the helper chosen on validation (weight range by min/max or MSE search, with or without empirical bias
correction). {hook} ORT `quantize_static`: QDQ format, per-channel int8 weights, uint8 activations (the U8S8 format
its docs recommend on x86), `quant_pre_process` first, calibration method chosen on validation. NNCF: `nncf.quantize`
on the fp32 ONNX file (its ONNX backend, run in a subprocess), preset chosen on validation, fast bias correction on
(its default), all calibration images.

Latency, as a ratio to fp32 (< 1 is faster): {LATENCY_METHOD}. "int8 kernels" counts integer nodes (QLinearConv,
QGemm, QLinearAdd, QLinearConcat, ...) in ONNX Runtime's optimized graph; "float islands" counts the nodes that run
in float between a DequantizeLinear and a QuantizeLinear there (`slimkit.export.float_islands`). CPU: {info['cpu']},
{vnni}.{_weight_range_text(data)}
"""
    if large:
        text += f"""
(b) The zoo's models at `input_size=224`, 3 channels, 1000 classes, with random weights: BatchNorm γ = 1 and running
statistics from 32 random images, so activations have realistic scale (accuracy needs ImageNet, which is not here).
Calibration: {large['calibration_images']} random N(0, 1) images; agreement with fp32 (ONNX Runtime outputs) on
{large['eval_images']} other random images. Latency ratios as in (a), at batch 1 and 8.
"""
    return text


def run(quick: bool) -> Section:
    from slimkit.quantize import QuantConfig, weight_range

    torch.set_num_threads(THREADS)
    info = machine_info()
    mnist_models = ["lenet5", "resnet20"] if quick else list(MNIST_MODELS)
    large_models = ["mobilenet_v2"] if quick else list(LARGE_MODELS)
    data: dict[str, Any] = {"machine": info, "mnist_models": mnist_models, "large_models": large_models,
                            "calibration_images": CALIBRATION_IMAGES, "threads": THREADS,
                            "reconstruction_methods": list(_reconstruction_methods()),
                            "int8_weight_range": weight_range(QuantConfig())}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        for name in mnist_models:
            log.info("quantize benchmark: %s (MNIST)", name)
            data[name] = _mnist_rows(name, MNIST_MODELS[name], quick, Path(tmp))
        for name in large_models:
            log.info("quantize benchmark: %s (224×224)", name)
            data[f"{name}_224"] = _large_rows(name, quick, Path(tmp))
    markdown = "\n\n".join([
        "### (a) MNIST models: accuracy, size and speed of each method",
        _mnist_table(data), _goals(data), _notes(data),
        "### (b) 224×224: int8 against fp32 without ImageNet", _large_table(data),
    ])
    return Section(topic="quantize", title=TITLE, markdown=markdown, data=data)
