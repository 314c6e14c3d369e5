"""Quantizing the tiny language models (llama_tiny, gpt2_tiny trained on the standard library's source): W8A8 with
and without SmoothQuant, int4 and int3 weight-only (group 128) by round-to-nearest, AWQ, GPTQ and AWQ+GPTQ,
deployed as ONNX Runtime ``MatMulNBits``; ONNX Runtime's own MatMulNBits quantizer (its C++ round-to-nearest, its
RTN and GPTQ modes, HQQ) and NNCF's ``compress_weights`` (ONNX backend, data-free and with AWQ + scale estimation)
quantize the same fp32 ONNX graph in the same run. Perplexity on the held-out files, file size, ONNX Runtime
latency of a 128-token prefill and of one decode step (128 cached tokens) as ratios to fp32 with an A/A control,
and the calibration cost of GPTQ (wall time, peak memory) on an LM and on ResNet-20.

Everything tuned (weight grid symmetric or not, GPTQ's dampening, SmoothQuant's α) is chosen on the validation
files; the test files are read once per row, for the final table. The token embedding and the tied output layer
stay fp32 for every tool (ONNX Runtime's quantizer cannot reach the tied, transposed matrix; NNCF is told to leave
it), so every row quantizes the same layers: the Linear layers of the 8 blocks.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import RESULTS, Section, markdown_table

TITLE = "Language-model quantization: GPTQ, AWQ, SmoothQuant, int4/int3 in ONNX Runtime's MatMulNBits, with peers"
log = logging.getLogger(__name__)

SPECS = ("llama_tiny", "gpt2_tiny")
GROUP = 128
SKIP = ("lm_head",)  # tied to the embedding: fp32 for every tool
PREFILL, PAST = 128, 128
LATENCY_REPEATS = 40
DAMPS = (0.01, 0.1)
ALPHAS: tuple[float | str, ...] = (0.5, 0.75, "auto")
#: validation blocks used for every choice (the first ones of the split; the test split is scored whole)
VALID_BLOCKS = 128
QUICK_BLOCKS = 8


# --- models and evaluation --------------------------------------------------------------------------------------

def _trained(spec: str, data: Any, quick: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The LM the language-model benchmark trained (its chosen learning rate and training config, read from
    ``results/lm.json``; the default config when that benchmark has not run), from the shared cache."""
    from benchmarks._lm_baselines import LMTrainConfig, trained_lm

    config = LMTrainConfig()
    lm_results = RESULTS / "lm.json"
    if lm_results.is_file():
        saved = json.loads(lm_results.read_text())
        config = LMTrainConfig(**saved.get("train_config", {}))
        config = replace(config, lr=saved.get("chosen_lr", {}).get(spec, config.lr))
    if quick:
        config = replace(config, train_fraction=0.005)
    return trained_lm(spec, config, data=data)


def _ppl(model: nn.Module, loader: Any) -> float:
    from slimkit.analysis import evaluate

    return float(evaluate(model, loader).perplexity)


class _OrtLM:
    """An exported causal LM with past keys/values in ONNX Runtime: perplexity over a token-block loader."""

    def __init__(self, path: Path, config: Any, threads: int = 2) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def feed(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        empty = np.zeros((ids.shape[0], self.heads, 0, self.head_dim), dtype=np.float32)
        return {"input_ids": ids.astype(np.int64), **{n: empty for n in self.names[1:]}}

    def perplexity(self, loader: Any) -> float:
        from slimkit.analysis._evaluate import token_cross_entropy

        total, count = 0.0, 0
        for inputs, targets in loader:
            logits = torch.from_numpy(self.session.run(["logits"], self.feed(inputs.numpy()))[0])
            total += float(token_cross_entropy(logits, targets, reduction="sum"))
            count += int((targets != -100).sum())
        return math.exp(total / count)


def _export(model: nn.Module, path: Path, accuracy_level: int = 0) -> Path:
    from slimkit.export import export_matmul_nbits

    ids = torch.zeros(2, 8, dtype=torch.long)  # batch 2 keeps the batch axis dynamic
    # accuracy level 4 rounds the activations to int8 inside the kernel: its logits differ from PyTorch's by
    # design (its perplexity is measured in the table), so only the exact kernel is held to 1e-3
    return export_matmul_nbits(model, ids, path, kv_cache=True, accuracy_level=accuracy_level,
                               atol=1e-3 if accuracy_level == 0 else 0.1)


def _latency_inputs(config: Any, prefill: bool) -> list[torch.Tensor]:
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    generator = torch.Generator().manual_seed(0)
    if prefill:
        ids = torch.randint(1, config.vocab_size, (1, PREFILL), generator=generator)
        return [ids, *[torch.zeros(1, heads, 0, head_dim) for _ in range(2 * layers)]]
    ids = torch.randint(1, config.vocab_size, (1, 1), generator=generator)
    return [ids, *[torch.randn(1, heads, PAST, head_dim, generator=generator) for _ in range(2 * layers)]]


def _latency(fp32: Path, candidate: Path, config: Any, quick: bool) -> dict[str, Any]:
    from slimkit.analysis import compare_latency

    out = {}
    for phase in ("prefill", "decode"):
        result = compare_latency(fp32, candidate, _latency_inputs(config, phase == "prefill"),
                                 backend="onnxruntime", threads=1, warmup=3 if quick else 10,
                                 repeats=5 if quick else LATENCY_REPEATS)
        entry = result.to_dict()
        entry["text"] = result.text() if hasattr(result, "text") else f"{result.ratio:.2f}"
        entry["aa_text"] = result.aa_text() if hasattr(result, "aa_text") else "–"
        entry["baseline_ms"] = result.baseline.median_ms
        out[phase] = entry
    return out


# --- peers ------------------------------------------------------------------------------------------------------

class _Reader:
    """ONNX Runtime's calibration data reader protocol over token blocks (its GPTQ iterates it)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.index = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __iter__(self):
        return iter(self.feeds)


def _peers(fp32: Path, ort_lm: _OrtLM, calibration: list[np.ndarray], folder: Path) -> dict[str, dict[str, Any]]:
    """ONNX Runtime's and NNCF's int4 g128 weight-only quantizers on the fp32 graph; each entry has its file or the
    error that stopped it."""
    import onnx

    feeds = [ort_lm.feed(block[None]) for batch in calibration for block in batch]
    results: dict[str, dict[str, Any]] = {}

    def ort_peer(name: str, algo: Any, symmetric: bool) -> None:
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        began = time.perf_counter()
        quantizer = mq.MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=GROUP, is_symmetric=symmetric,
                                            algo_config=algo)
        quantizer.process()
        path = folder / f"{name}.onnx"
        quantizer.model.save_model_to_file(str(path), False)
        results[name] = {"path": path, "seconds": time.perf_counter() - began}

    def nncf_peer(name: str, mode: str, data_aware: bool, fallback: str) -> None:
        import nncf

        began = time.perf_counter()
        model = onnx.load(str(fp32))
        tied = [n.name for n in model.graph.node if (n.op_type == "MatMul" and n.output[0] == "logits")
                or (n.op_type == "Gather" and any(i.endswith("lm_head.weight") for i in n.input))]
        options: dict[str, Any] = {}
        if data_aware:
            options = {"dataset": nncf.Dataset(feeds), "awq": True, "scale_estimation": True,
                       "subset_size": len(feeds)}
        compressed = nncf.compress_weights(
            model, mode=getattr(nncf.CompressWeightsMode, mode), group_size=GROUP, ratio=1.0, all_layers=True,
            ignored_scope=nncf.IgnoredScope(names=tied),
            advanced_parameters=nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=getattr(nncf.GroupSizeFallbackMode, fallback)), **options)
        path = folder / f"{name}.onnx"
        onnx.save(compressed, str(path))
        results[name] = {"path": path, "seconds": time.perf_counter() - began}

    def attempt(name: str, fn: Any, *args: Any) -> None:
        logging.disable(logging.INFO)
        try:
            fn(name, *args)
            import onnxruntime as ort

            ort.InferenceSession(str(results[name]["path"]), providers=["CPUExecutionProvider"])
        except Exception as error:  # a peer that fails here is reported with its error, not hidden
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            log.warning("peer %s failed: %s", name, results[name]["error"])
        finally:
            logging.disable(logging.NOTSET)

    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    attempt("ORT default RTN sym", ort_peer, mq.DefaultWeightOnlyQuantConfig(block_size=GROUP, is_symmetric=True),
            True)
    attempt("ORT default RTN asym", ort_peer, mq.DefaultWeightOnlyQuantConfig(block_size=GROUP, is_symmetric=False),
            False)
    attempt("ORT RTN sym", ort_peer, mq.RTNWeightOnlyQuantConfig(), True)
    attempt("ORT RTN asym", ort_peer, mq.RTNWeightOnlyQuantConfig(), False)
    attempt("ORT GPTQ sym", ort_peer, mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(feeds),
                                                                    block_size=GROUP, actorder=True), True)
    attempt("ORT GPTQ asym", ort_peer, mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(feeds),
                                                                     block_size=GROUP, actorder=True), False)
    attempt("ORT HQQ", ort_peer, mq.HQQWeightOnlyQuantConfig(block_size=GROUP, bits=4), False)
    attempt("NNCF INT4_SYM", nncf_peer, "INT4_SYM", False, "ADJUST")
    attempt("NNCF INT4_ASYM", nncf_peer, "INT4_ASYM", False, "IGNORE")
    attempt("NNCF INT4_SYM + AWQ + SE", nncf_peer, "INT4_SYM", True, "ADJUST")
    attempt("NNCF INT4_ASYM + AWQ + SE", nncf_peer, "INT4_ASYM", True, "IGNORE")
    return results


# --- slimkit ----------------------------------------------------------------------------------------------------

def _weight_only(bits: int, method: str, symmetric: bool) -> Any:
    from slimkit.quantize import QuantConfig

    return QuantConfig(weight_bits=bits, activation_bits=None, group_size=GROUP, weight_symmetric=symmetric,
                       method=method, skip=SKIP)


METHODS = ("rtn", "awq", "gptq", "awq+gptq")


def _weight_only_trials(model: nn.Module, bits: int, symmetric: bool, calibration: Any, quick: bool):
    """(method, model to round, rounding spec, transform seconds) for every weight-only candidate of one grid."""
    from slimkit.quantize import linearize_, parse_method
    from slimkit.quantize._sequential import calibration_calls

    yield "rtn", model, "rtn", 0.0
    for damp in DAMPS[:1] if quick else DAMPS:
        yield "gptq", model, f"gptq:damp={damp}", 0.0
    began = time.perf_counter()
    scaled = copy.deepcopy(model)
    linearize_(scaled)
    step = parse_method("awq")[0]
    step.method.run(scaled, _weight_only(bits, "awq", symmetric), step.options, calibration_calls(calibration), {})
    seconds = time.perf_counter() - began
    yield "awq", scaled, "rtn", seconds
    yield "awq+gptq", scaled, f"gptq:damp={DAMPS[0]}", seconds


def _choose(candidates: dict[str, Any], model: nn.Module, data: Any, calibration: Any) -> tuple[str, nn.Module,
                                                                                                  dict[str, float]]:
    """Quantize with every candidate config, keep the one with the lowest validation perplexity."""
    from slimkit.quantize import quantize

    scores: dict[str, float] = {}
    best: tuple[float, str, nn.Module] | None = None
    for label, config in candidates.items():
        q = quantize(model, None, config, data=calibration)
        scores[label] = _ppl(q, data.valid)
        if best is None or scores[label] < best[0]:
            best = (scores[label], label, q)
    assert best is not None
    return best[1], best[2], scores


def _subset(loader: Any, blocks: int) -> Any:
    from slimkit.data import TensorLoader

    return TensorLoader(loader.inputs[:blocks], loader.targets[:blocks], loader.batch_size)


def _lm_rows(spec: str, model: nn.Module, full_data: Any, quick: bool, folder: Path) -> dict[str, Any]:
    from slimkit.export import matmul_nbits_count
    from slimkit.quantize import QuantConfig, quantize

    calibration = full_data.calibration
    valid = _subset(full_data.valid, QUICK_BLOCKS if quick else VALID_BLOCKS)
    test = _subset(full_data.test, QUICK_BLOCKS) if quick else full_data.test
    data = replace(full_data, valid=valid, test=test)
    if quick:
        calibration = [next(iter(full_data.calibration))]
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    fp32_path = _export(model, folder / "fp32.onnx")
    ort_fp32 = _OrtLM(fp32_path, model.config)
    rows: dict[str, dict[str, Any]] = {"fp32": {"valid": _ppl(model, data.valid), "test": _ppl(model, data.test),
                                                "bytes": fp32_path.stat().st_size,
                                                "test_ort": ort_fp32.perplexity(data.test)}}

    # W8A8 (PyTorch simulation of int8 weights per channel and uint8 activations per tensor, lm_head in fp32): no
    # int8 kernel runs it, so the weights keep the full 8-bit range on every CPU (reduce_range=False)
    plain = quantize(model, None, QuantConfig(skip=SKIP, reduce_range=False), data=calibration)
    rows["W8A8 RTN"] = {"valid": _ppl(plain, data.valid), "test": _ppl(plain, data.test)}
    alphas = {f"smoothquant:alpha={a}": QuantConfig(method=f"smoothquant:alpha={a}", skip=SKIP, reduce_range=False)
              for a in (ALPHAS[:1] if quick else ALPHAS)}
    label, smooth, valid = _choose(alphas, model, data, calibration)
    rows["W8A8 SmoothQuant"] = {"valid": valid[label], "test": _ppl(smooth, data.test), "chosen": label,
                                "tuning": valid}

    # weight-only int4 / int3, group 128: each method's grid (and GPTQ's damping) chosen on validation. AWQ's
    # scaled float model is computed once per grid and rounded by RTN ("awq") and by GPTQ ("awq+gptq"): the same
    # as quantize(..., method="awq+gptq"), which runs the transform and then the rounding.
    for bits in (4, 3):
        trials: dict[str, dict[str, tuple[float, nn.Module, float]]] = {m: {} for m in METHODS}
        for symmetric in (False, True):
            tag = "sym" if symmetric else "asym"
            for method, source, rounding, seconds in _weight_only_trials(model, bits, symmetric, calibration, quick):
                q = quantize(source, None, _weight_only(bits, rounding, symmetric), data=calibration)
                label = f"{rounding if method != 'awq+gptq' else 'awq+' + rounding} {tag}"
                trials[method][label] = (_ppl(q, data.valid), q, seconds)
        for method, found in trials.items():
            label = min(found, key=lambda k: found[k][0])
            score, q, _ = found[label]
            name = f"int{bits} {method.upper().replace('+', ' + ')}"
            rows[name] = {"valid": score, "test": _ppl(q, data.test), "chosen": label, "bits": bits,
                          "tuning": {k: v[0] for k, v in found.items()}, "_model": q}
    # one exported file per format: size, the ORT perplexity check, latency
    for bits in (4, 3):
        best = min((r for r in rows if r.startswith(f"int{bits} ")), key=lambda r: rows[r]["valid"])
        q = rows[best]["_model"]
        path = _export(q, folder / f"int{bits}.onnx")
        rows[best]["bytes"] = path.stat().st_size
        rows[best]["test_ort"] = _OrtLM(path, model.config).perplexity(data.test)
        rows[best]["latency"] = _latency(fp32_path, path, model.config, quick)
        for r in rows:  # the same format (bits, group, and zero points or not) is the same file size
            if r.startswith(f"int{bits} ") and "bytes" not in rows[r]:
                rows[r]["bytes_same_as"] = best
        if bits == 4:
            fast = _export(q, folder / "int4_acc4.onnx", accuracy_level=4)
            rows[f"{best} (accuracy_level 4)"] = {
                "valid": _OrtLM(fast, model.config).perplexity(data.valid),
                "test": _OrtLM(fast, model.config).perplexity(data.test), "bytes": fast.stat().st_size,
                "latency": _latency(fp32_path, fast, model.config, quick), "runtime": "ort"}
    for r in rows.values():
        r.pop("_model", None)

    # peers on the same fp32 graph, evaluated in ONNX Runtime
    feeds = [batch[0].numpy() for batch in calibration]
    peers = _peers(fp32_path, ort_fp32, feeds[: 1 if quick else 4], folder)
    for name, peer in peers.items():
        if "error" in peer:
            rows[name] = {"error": peer["error"], "peer": True}
            continue
        session = _OrtLM(peer["path"], model.config)
        rows[name] = {"valid": session.perplexity(data.valid), "test": session.perplexity(data.test),
                      "bytes": peer["path"].stat().st_size, "seconds": peer["seconds"], "peer": True,
                      "runtime": "ort", "nbits_nodes": matmul_nbits_count(peer["path"])}
    measured = [n for n in peers if "error" not in peers[n]]
    for name in measured[:2] if quick else measured:
        rows[name]["latency"] = _latency(fp32_path, peers[name]["path"], model.config, quick)
    out["rows"] = rows
    return out


# --- the section --------------------------------------------------------------------------------------------------

def _fmt_bytes(value: Any) -> str:
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) else "–"


def _table(spec: str, result: dict[str, Any]) -> str:
    rows = result["rows"]
    fp32 = rows["fp32"]
    lines = []
    for name, r in rows.items():
        if "error" in r:
            lines.append([name, "–", "–", "–", "–", "–", "–", f"failed: {r['error']}"])
            continue
        size = r.get("bytes") or rows.get(r.get("bytes_same_as", ""), {}).get("bytes")
        lat = r.get("latency", {})
        pre, dec = lat.get("prefill", {}), lat.get("decode", {})
        note = r.get("chosen", "")
        if "test_ort" in r:
            note = (note + "; " if note else "") + f"ORT test ppl {r['test_ort']:.3f}"
        if name.startswith("W8A8"):
            note = (note + "; " if note else "") + "PyTorch simulation"
        if "nbits_nodes" in r:
            nodes = r["nbits_nodes"]
            note = (note + "; " if note else "") + (f"{nodes} MatMulNBits" if nodes else "no layer quantized")
        lines.append([name, f"{r['valid']:.3f}", f"{r['test']:.3f}", f"{r['test'] / fp32['test'] - 1:+.1%}",
                      _fmt_bytes(size), pre.get("text", "–"), dec.get("text", "–"), note])
    return f"**{spec}** ({result['params']:,} parameters)\n\n" + markdown_table(
        ["model", "valid ppl", "test ppl", "Δ test ppl", "ONNX file", "prefill × fp32", "decode × fp32", "notes"],
        lines)


def _aa(result: dict[str, Any]) -> str:
    parts = []
    for name, r in result["rows"].items():
        for phase, entry in r.get("latency", {}).items():
            parts.append(f"{name} {phase} {entry.get('aa_text', '–')} (fp32 {entry['baseline_ms']:.2f} ms)")
    return "; ".join(parts)


def run(quick: bool) -> Section:
    from benchmarks._lm_baselines import lm_data

    data = lm_data()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-qlm-") as tmp:
        for spec in SPECS:
            model, record = _trained(spec, data, quick)
            folder = Path(tmp) / spec
            folder.mkdir()
            results[spec] = _lm_rows(spec, copy.deepcopy(model), data, quick, folder)
            results[spec]["train_record"] = {k: record.get(k) for k in ("valid_ppl", "train_tokens", "config")}
    for result in results.values():
        for r in result["rows"].values():
            r.pop("path", None)
    return Section("quantize_lm", TITLE, *render({"models": results}))


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The section's markdown and data from its results (``payload["models"]``): what ``run`` writes, and what
    ``python -m benchmarks.run --rerender quantize_lm`` rebuilds from ``results/quantize_lm.json``."""
    results = payload["models"]
    summary = []
    for spec, result in results.items():
        rows = result["rows"]
        ours4 = min((r for r in rows if r.startswith("int4 ") and "error" not in rows[r] and "accuracy" not in r),
                    key=lambda r: rows[r]["valid"])
        # a peer whose file runs no layer in 4 bits (its quantizer found no MatMul it handles) is not an int4 result
        peers = {n: r for n, r in rows.items() if r.get("peer") and "error" not in r and r.get("nbits_nodes", 1)}
        best_peer = min(peers, key=lambda n: peers[n]["test"]) if peers else None
        ours3 = min((r for r in rows if r.startswith("int3 ")), key=lambda r: rows[r]["valid"])
        summary.append(
            f"{spec}: at int4 g128 slimkit's best on validation ({ours4}) has test perplexity "
            f"{rows[ours4]['test']:.3f}" + (f" vs the best peer ({best_peer}) {peers[best_peer]['test']:.3f}"
                                              if best_peer else " (no peer produced an int4 model of it)")
            + f"; at int3 ({ours3}) {rows[ours3]['test']:.3f}, {rows[ours3]['test'] / rows['fp32']['test'] - 1:+.1%}"
            f" vs fp32 {rows['fp32']['test']:.3f}.")
    markdown = "\n\n".join([
        "Perplexity is per token on the held-out files (validation for every choice, test once per row). slimkit's "
        "weight-only rows quantize in PyTorch and run as `com.microsoft.MatMulNBits` (int3 in the 4-bit container; "
        "its ORT test perplexity is the check that the file computes what PyTorch did); peers are evaluated in ONNX "
        "Runtime from their own files. W8A8 rows are the PyTorch simulation (int8 per-channel weights, uint8 "
        "per-tensor activations calibrated by min/max). Latency: ONNX Runtime, 1 thread, ratio to fp32 in the same "
        "interleaved run (median and p10–p90), 'too noisy' when the A/A control leaves [0.9, 1.1].",
        *[_table(spec, result) for spec, result in results.items()],
        "A/A controls: " + "; ".join(_aa(r) for r in results.values()),
        "**Summary**: " + " ".join(summary),
        "GPTQ's calibration cost (time, memory) is the `gptq_cost` section.",
    ])
    return markdown, {"group_size": GROUP, "models": results, "summary": summary}
