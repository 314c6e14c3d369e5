"""Breadth of structured pruning on Hugging Face transformers built from small configs (random weights, nothing
downloaded): BERT, DistilBERT, RoBERTa, GPT-2, Llama, Mistral, Qwen2 (GQA), ViT, DeiT and Swin. Each loses ~30% of
its attention heads and MLP width; the pruned model must run, keep its output shape, lose MACs
(slimkit.analysis.profile), export to ONNX with matching outputs, and round-trip through save/load. Torch-Pruning
runs on the same models in the same run with its documented transformer settings (``num_heads``,
``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio``, the output layer in ``ignored_layers``,
then the attribute updates its examples make by hand). Last, the scale check: capture + prune of a 1B-parameter
Llama-architecture model (random weights) in a fresh process, wall time and peak memory against the model's own."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import ROOT, Section, markdown_table

TITLE = "Transformers breadth: heads + MLP width on 10 Hugging Face architectures, Torch-Pruning side by side"

RATIO = 0.3
TEXT = dict(vocab_size=1000, max_position_embeddings=128)
#: name → (config class, config options, input kind)
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "BERT": ("BertConfig", dict(TEXT, hidden_size=128, num_attention_heads=8, intermediate_size=512,
                                num_hidden_layers=2), "text"),
    "DistilBERT": ("DistilBertConfig", dict(TEXT, dim=128, n_heads=8, hidden_dim=512, n_layers=2), "text"),
    "RoBERTa": ("RobertaConfig", dict(TEXT, hidden_size=128, num_attention_heads=8, intermediate_size=512,
                                      num_hidden_layers=2, max_position_embeddings=130), "text"),
    "GPT-2": ("GPT2Config", dict(vocab_size=1000, n_positions=128, n_embd=128, n_head=8, n_layer=2), "text"),
    "Llama": ("LlamaConfig", dict(TEXT, hidden_size=128, num_attention_heads=8, num_key_value_heads=4,
                                  intermediate_size=384, num_hidden_layers=2), "text"),
    "Mistral": ("MistralConfig", dict(TEXT, hidden_size=128, num_attention_heads=8, num_key_value_heads=4,
                                      intermediate_size=384, num_hidden_layers=2), "text"),
    "Qwen2": ("Qwen2Config", dict(TEXT, hidden_size=128, num_attention_heads=8, num_key_value_heads=4,
                                  intermediate_size=384, num_hidden_layers=2), "text"),
    "ViT": ("ViTConfig", dict(image_size=32, patch_size=8, num_channels=3, hidden_size=128, num_attention_heads=8,
                              intermediate_size=512, num_hidden_layers=2), "image"),
    "DeiT": ("DeiTConfig", dict(image_size=32, patch_size=8, num_channels=3, hidden_size=128, num_attention_heads=8,
                                intermediate_size=512, num_hidden_layers=2), "image"),
    "Swin": ("SwinConfig", dict(image_size=32, patch_size=2, num_channels=3, embed_dim=32, depths=[2, 2],
                                num_heads=[4, 8], window_size=4), "image"),
}
MLP_IN = ("intermediate.dense", "lin1", "c_fc", "gate_proj", "up_proj", "fc1")
Q, K, V = ("query", "q_lin", "q_proj"), ("key", "k_lin", "k_proj"), ("value", "v_lin", "v_proj")


def _build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    import transformers

    cls, options, kind = MODELS[name]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(getattr(transformers, cls)(**options)).eval()
    gen = torch.Generator().manual_seed(1)
    if kind == "image":
        return model, {"pixel_values": torch.randn(1, 3, 32, 32, generator=gen)}, torch.randn(2, 3, 32, 32,
                                                                                            generator=gen)
    ids = torch.randint(0, 1000, (1, 12), generator=gen)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 1000, (2, 9),
                                                                                          generator=gen)


class _Main(nn.Module):
    """A HF model called positionally, returning its main tensor (for profile and ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # text: an explicit all-ones mask, so GQA attention runs as repeat_kv + SDPA (the TorchScript ONNX exporter
        # has no SDPA with enable_gqa)
        out = self.model(x, attention_mask=torch.ones_like(x)) if not x.is_floating_point() else self.model(x)
        return out["last_hidden_state"] if "last_hidden_state" in out else out[0]


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    from slimkit.analysis import profile

    return profile(_Main(model).eval(), (x[:1],)).total.macs


def _onnx(model: nn.Module, x: torch.Tensor) -> float | str:
    from slimkit.export import export_onnx, onnx_max_abs_diff

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export_onnx(_Main(model).eval(), (x[:1],), Path(tmp) / "m.onnx")
            return onnx_max_abs_diff(_Main(model).eval(), path, (x,))
        except Exception as error:
            return f"failed ({type(error).__name__})"


def _main_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _Main(model).eval()(x)


def _round_trip_slimkit(pruned: nn.Module, x: torch.Tensor) -> str:
    import transformers

    from slimkit.prune import load_pruned, pruning_info, save_pruned

    with tempfile.TemporaryDirectory() as tmp:
        if pruning_info(pruned)["hf_config"]["exact"]:
            pruned.save_pretrained(tmp)
            loaded, how = transformers.AutoModel.from_pretrained(tmp, use_safetensors=True,
                                                                 trust_remote_code=False), "save_pretrained"
        else:
            loaded, how = load_pruned(save_pruned(pruned, Path(tmp) / "p")), "slimkit format"
        same = torch.equal(_main_out(loaded, x), _main_out(pruned, x))
    return how if same else f"{how}: outputs differ"


def _round_trip_hf(model: nn.Module, x: torch.Tensor) -> str:
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        try:
            model.save_pretrained(tmp)
            loaded = transformers.AutoModel.from_pretrained(tmp, use_safetensors=True, trust_remote_code=False)
        except Exception as error:
            return f"fails ({type(error).__name__})"
        return "save_pretrained" if torch.equal(_main_out(loaded, x), _main_out(model, x)) else "outputs differ"


def _widths(model: nn.Module) -> tuple[int, int]:
    """(attention q width, MLP width) summed over layers."""
    q = mlp = 0
    for name, m in model.named_modules():
        width = getattr(m, "out_features", None) or getattr(m, "nf", None)
        if width is None:
            continue
        if name.rpartition(".")[2] in Q or name.endswith("c_attn"):
            q += width // (3 if name.endswith("c_attn") else 1)
        elif name.endswith(MLP_IN) and not name.endswith("up_proj"):
            mlp += width
    return q, mlp


def _slimkit(name: str) -> dict[str, Any]:
    from slimkit.graph import dependency_graph
    from slimkit.prune import PruneConfig, prune_channels, pruning_info

    model, inputs, x = _build(name)
    start = time.perf_counter()
    dependency_graph(model, inputs)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        pruned = prune_channels(model, inputs, PruneConfig(ratio=RATIO, kinds=("heads", "channels"),
                                                           criterion="magnitude"))
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {str(error)[:160]}", "capture_s": capture_s}
    prune_s = time.perf_counter() - start
    return _checks(model, pruned, x) | {"capture_s": capture_s, "prune_s": prune_s,
                                        "round_trip": _round_trip_slimkit(pruned, x),
                                        "opaque": len(pruning_info(pruned)["opaque"])}


def _checks(model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    try:
        out, ref = _main_out(pruned, x), _main_out(model, x)
    except Exception as error:
        return {"ok": False, "error": f"forward fails: {type(error).__name__}: {str(error)[:120]}"}
    (q0, m0), (q1, m1) = _widths(model), _widths(pruned)
    macs0, macs1 = _macs(model, x), _macs(pruned, x)
    return {"ok": out.shape == ref.shape and macs1 < macs0, "shape_ok": out.shape == ref.shape,
            "macs": [macs0, macs1], "heads_kept": q1 / q0 if q0 else None, "mlp_kept": m1 / m0 if m0 else None,
            "params": [sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters())],
            "onnx": _onnx(pruned, x)}


def _tp_heads(model: nn.Module) -> tuple[dict[nn.Module, int], list[nn.Module]]:
    """Torch-Pruning's documented inputs: ``num_heads`` for every q/k/v projection, the MLP input layers."""
    num_heads: dict[nn.Module, int] = {}
    config = model.config
    heads_cfg = getattr(config, "num_attention_heads", None)
    kv_cfg = getattr(config, "num_key_value_heads", None) or heads_cfg
    for _, m in model.named_modules():
        children = dict(m.named_children())
        q = next((children[n] for n in Q if n in children), None)
        if q is None:
            continue
        heads = next((getattr(m, a) for a in ("num_attention_heads", "num_heads", "n_heads") if hasattr(m, a)), None)
        head_dim = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
        if heads is None and head_dim:
            heads = q.out_features // head_dim
        heads = heads or heads_cfg
        num_heads[q] = heads
        for names in (K, V):
            other = next((children[n] for n in names if n in children), None)
            if other is not None:
                num_heads[other] = other.out_features // (q.out_features // heads) if kv_cfg else heads
        if "c_attn" in children:
            num_heads[children["c_attn"]] = heads
    mlp = [m for n, m in model.named_modules() if n.endswith(MLP_IN)]
    return num_heads, mlp


def _tp_update(model: nn.Module, pruner: Any, num_heads: dict[nn.Module, int]) -> None:
    """The attribute updates Torch-Pruning's transformer examples make by hand after pruning."""
    for _, m in model.named_modules():
        children = dict(m.named_children())
        q = next((children[n] for n in Q if n in children), None)
        if q is None or q not in pruner.num_heads:
            continue
        heads = pruner.num_heads[q]
        for attr in ("num_attention_heads", "num_heads", "n_heads"):
            if hasattr(m, attr):
                setattr(m, attr, heads)
        head_dim = q.out_features // heads
        for attr in ("attention_head_size", "head_dim"):
            if hasattr(m, attr):
                setattr(m, attr, head_dim)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features
        k = next((children[n] for n in K if n in children), None)
        if hasattr(m, "num_key_value_groups") and k is not None:
            m.num_key_value_groups = heads // max(1, k.out_features // head_dim)


def _torch_pruning(name: str, timeout: float = 180.0) -> dict[str, Any]:
    """Torch-Pruning in a child process, so a run that does not finish is reported as such after ``timeout``."""
    code = ("import json, sys, torch; torch.set_num_threads(2); from benchmarks.bench_transformers_breadth import "
            f"_torch_pruning_here; print(json.dumps(_torch_pruning_here({name!r}), default=str))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish in {timeout:.0f} s"}
    if out.returncode != 0:
        return {"ok": False, "error": (out.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_pruning_here(name: str) -> dict[str, Any]:
    logging.disable(logging.WARNING)
    try:
        import torch_pruning as tp
    except ImportError as error:
        return {"ok": False, "error": f"not installed ({error})"}
    model, inputs, x = _build(name)
    base = copy.deepcopy(model)
    num_heads, mlp = _tp_heads(model)
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
            pruning_ratio=0.0, pruning_ratio_dict={m: RATIO for m in [*mlp, *num_heads]}, num_heads=num_heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=RATIO,
            output_transform=lambda out: out[0].sum())
        for group in pruner.step(interactive=True):
            group.prune()
        _tp_update(model, pruner, num_heads)
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"}
    elapsed = time.perf_counter() - start
    result = _checks(base, model, x) | {"prune_s": elapsed}
    if result.get("macs") is not None:
        result["round_trip"] = _round_trip_hf(model, x)
    return result


def _capture_method(name: str, method: str, timeout: float = 120.0) -> dict[str, Any]:
    """One way of capturing a model's graph, in a child process (a hang is reported after ``timeout``)."""
    code = f"""
import json, time, torch
torch.set_num_threads(2)
from benchmarks.bench_transformers_breadth import _build
model, inputs, _ = _build({name!r})
start = time.perf_counter()
try:
    if {method!r} == "torch.fx":
        ops = len(torch.fx.symbolic_trace(model).graph.nodes)
    elif {method!r} == "torch.export":  # a cache object in the output stops export: call decoders without one
        kwargs = dict(inputs, use_cache=False) if getattr(model.config, "use_cache", None) is not None else inputs
        ops = len(torch.export.export(model, (), kwargs, strict=False).graph.nodes)
    else:
        from slimkit.graph import capture
        ops = len(capture(model, inputs).calls)
    print(json.dumps({{"ok": True, "seconds": time.perf_counter() - start, "ops": ops}}))
except Exception as error:
    print(json.dumps({{"ok": False, "seconds": time.perf_counter() - start,
                      "error": type(error).__name__ + ": " + str(error).splitlines()[0][:100]}}))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer in {timeout:.0f} s"}
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"ok": False, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}


CAPTURE_METHODS = ("torch.fx", "torch.export", "recorded forward")


def _scale(quick: bool) -> dict[str, Any]:
    """Capture + prune (magnitude, 30% of heads, MLP and hidden width) of a Llama-architecture model built from
    config in a fresh process: wall time, and peak RSS against the model's own size."""
    layers, hidden, inter, vocab = (4, 1024, 2816, 32000) if quick else (16, 2048, 8192, 128256)
    code = f"""
import json, time, torch
torch.set_num_threads(2)
import transformers
from slimkit.graph import dependency_graph
from slimkit.prune import PruneConfig, prune_channels, pruning_info
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
cfg = transformers.LlamaConfig(vocab_size={vocab}, hidden_size={hidden}, intermediate_size={inter},
                               num_hidden_layers={layers}, num_attention_heads={hidden // 64}, num_key_value_heads=8,
                               head_dim=64, tie_word_embeddings=True, max_position_embeddings=2048)
with torch.no_grad():
    model = transformers.LlamaForCausalLM(cfg).eval()
n = sum(p.numel() for p in model.parameters())
model_mb, before = n * 4 / 2**20, rss()
x = {{"input_ids": torch.randint(0, {vocab}, (1, 8))}}
t = time.perf_counter(); graph = dependency_graph(model, x); capture_s = time.perf_counter() - t
del graph
t = time.perf_counter()
pruned = prune_channels(model, x, PruneConfig(ratio=0.3, criterion="magnitude"))
prune_s = time.perf_counter() - t
print(json.dumps({{"params": n, "params_after": sum(p.numel() for p in pruned.parameters()), "model_mb": model_mb,
                  "rss_before_mb": before, "peak_mb": hwm(), "capture_s": capture_s, "prune_s": prune_s,
                  "macs": pruning_info(pruned)["reduction"]["macs"]}}))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 30 min"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_over_model"] = result["peak_mb"] / result["model_mb"]
    return result


def _cell_ok(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"✗ {r['error']}"
    return "✓" if r["ok"] else "✗"


def _fmt(v: Any, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "" if v is None else str(v)


def run(quick: bool) -> Section:
    logging.getLogger("slimkit").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    rows, raw = [], {"slimkit": {}, "torch_pruning": {}}
    for name in MODELS:
        ours, theirs = _slimkit(name), _torch_pruning(name)
        raw["slimkit"][name], raw["torch_pruning"][name] = ours, theirs
        for tool, r in (("slimkit", ours), ("Torch-Pruning", theirs)):
            macs = r.get("macs")
            rows.append([name, tool, _cell_ok(r), r.get("shape_ok", ""), _fmt(r.get("heads_kept")),
                         _fmt(r.get("mlp_kept")), f"{macs[1] / macs[0]:.3f}" if macs else "",
                         _fmt(r.get("onnx"), ".1e"), r.get("round_trip", ""),
                         _fmt(r.get("capture_s")) if tool == "slimkit" else "", _fmt(r.get("prune_s"))])
    tools = (("slimkit", "slimkit"), ("Torch-Pruning", "torch_pruning"))

    def passed(r: dict[str, Any]) -> bool:
        return bool(r.get("ok")) and isinstance(r.get("onnx"), float) and r["onnx"] < 1e-4

    runs = {tool: sum(passed(r) for r in raw[key].values()) for tool, key in tools}
    ok = {tool: sum(passed(r) and r.get("round_trip") in ("save_pretrained", "slimkit format")
                    for r in raw[key].values()) for tool, key in tools}
    raw["summary"] = {"runs": runs, "all_checks": ok}
    methods = {name: {m: _capture_method(name, m) for m in CAPTURE_METHODS} for name in MODELS}
    raw["capture_methods"] = methods
    method_rows = [[name] + [f"{r['seconds']:.2f} s ({r['ops']} ops)" if r["ok"] else f"✗ {r['error']}"
                             for r in (methods[name][m] for m in CAPTURE_METHODS)] for name in MODELS]
    scale = _scale(quick)
    raw["scale"] = scale
    table = markdown_table(["model", "tool", "pruned, runs, MACs fell", "output shape", "q width kept",
                            "MLP width kept", "MAC ratio", "ONNX max diff", "round trip", "capture s", "prune s"],
                           rows)
    if "error" in scale:
        scale_text = f"Scale check failed: {scale['error']}."
    else:
        scale_text = (
            f"Scale check ({scale['params'] / 1e9:.2f}B-parameter Llama architecture from config, random weights, "
            f"fp32, 8 input tokens, fresh process, 2 threads): capture alone {scale['capture_s']:.1f} s; capture + "
            f"scoring + removal + check (30% of heads, MLP and hidden width, magnitude) {scale['prune_s']:.1f} s, "
            f"{scale['params_after'] / 1e9:.2f}B parameters left, MACs {scale['macs'][1] / scale['macs'][0]:.3f} of "
            f"the original; peak RSS {scale['peak_mb'] / 1024:.1f} GiB = {scale['peak_over_model']:.2f}× the model's "
            f"own {scale['model_mb'] / 1024:.1f} GiB (the caller's model plus the pruned copy, which shares "
            "unpruned tensors until they are replaced). Goal: < 120 s and ≤ 2.5×."
            + (" (--quick: a smaller Llama stands in.)" if quick else ""))
    markdown = f"""Each model is `transformers.AutoModel.from_config` of a small config (random weights; GQA models have
8 query and 4 key/value heads), pruned by {RATIO:.0%} of attention heads and of MLP width (slimkit:
`PruneConfig(ratio={RATIO}, kinds=("heads", "channels"), criterion="magnitude")` — whole key/value groups for GQA, so
30% of 4 groups keeps 3; Torch-Pruning: `MetaPruner` with `num_heads`, `prune_num_heads=True`,
`prune_head_dims=False`, `head_pruning_ratio={RATIO}`, `pruning_ratio_dict` {RATIO} on the MLP input layers, then the
attribute updates of its examples). "pruned, runs, MACs fell": the pruned model runs on a batch of another size, its
main output has the original's shape and `slimkit.analysis.profile` counts fewer MACs. ONNX: exported and run in
ONNX Runtime, largest difference to PyTorch. Round trip: `save_pretrained` → `from_pretrained` when the rewritten
config describes the model, else slimkit's `save_pruned` → `load_pruned` (BERT-family, GPT-2, ViT, DeiT and Swin
derive the head size as hidden / heads, so no config value describes fewer heads at the same width); outputs must
be identical. Times are wall seconds on a shared, busy 2-core machine (capture = building the dependency graph
alone; prune = the whole `prune_channels` call, which includes a capture and a check run).

{table}

Pruned, ran with the right output shape, fewer MACs and ONNX within 1e-4: slimkit {runs['slimkit']} of
{len(MODELS)}, Torch-Pruning {runs['Torch-Pruning']} of {len(MODELS)}. With the save/load round trip as well:
slimkit {ok['slimkit']} of {len(MODELS)}, Torch-Pruning {ok['Torch-Pruning']} of {len(MODELS)} (its examples update
module attributes by hand but not the config, so `from_pretrained` meets the unpruned shapes).

How the graph could be captured (each in a fresh process, same models and inputs, decoders called with
`use_cache=False` for `torch.export`; wall seconds of the first call, graph size, or the first line of the error;
the reason `slimkit.graph` records one forward):

{markdown_table(["model", *CAPTURE_METHODS], method_rows)}

{scale_text}
"""
    return Section("transformers_breadth", TITLE, markdown, raw)
