"""Width, depth and width+depth pruning of the tiny language models (llama_tiny with GQA, gpt2_tiny, trained on the
standard library's source by bench_lm) at 25% and 50% fewer parameters, next to Torch-Pruning at the same parameter
count: held-out perplexity right after pruning, after least-squares reconstruction, after a short KD recovery from
the unpruned model and after the same-length plain fine-tune; ONNX Runtime latency of a 128-token prefill and of one
decode step (batch 1) as ratios to the unpruned model with an A/A control, beside the MAC ratio.

Everything tuned is chosen on the first validation blocks: how slimkit's width budget is split between the hidden
width, attention heads (GQA key/value groups for llama_tiny) and MLP width, the importance criterion, and whether
recovery starts from the reconstructed or the one-shot model. The test files are read once, for the final tables.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import LATENCY_METHOD, LATENCY_THREADS, Section, latency_cell, latency_record, markdown_table

TITLE = "Language models: width, depth and width+depth pruning at a parameter budget, with Torch-Pruning"
log = logging.getLogger(__name__)

SPECS = ("llama_tiny", "gpt2_tiny")
BUDGETS = (0.25, 0.5)
#: validation blocks for every choice (the first ones of the split); the test split is scored whole
VALID_BLOCKS = 64
QUICK_BLOCKS = 8
PREFILL, PAST = 128, 128
LATENCY_REPEATS = 40
#: the grid for slimkit's width split: fraction of the hidden (residual) width kept, and the fraction of attention
#: heads removed (whole GQA key/value groups on llama_tiny: 1 of its 2); the MLP width then meets the parameter
#: target exactly (a multiple of 8 channels)
HIDDEN_KEEP = (1.0, 0.875, 0.75, 0.625, 0.5)
HEAD_RATIOS = {"llama": (0.0, 0.5), "gpt2": (0.0, 0.25, 0.5)}
CRITERIA = ("l1", "taylor", "wanda")
MLP_ROUND = 8
#: which group of the dependency graph is which (their first layer's name)
LAYOUT = {"llama": {"residual": "model.embed_tokens", "heads": "*.self_attn.q_proj", "channels": "*.mlp.gate_proj"},
          "gpt2": {"residual": "transformer.wte", "heads": "*.attn.c_attn", "channels": "*.mlp.c_fc"}}
TP_TIMEOUT = 600
#: recovery candidates, chosen on validation (see _recovery_settings)
RECOVERY_LRS = (1e-3, 3e-4)
KD_LOSSES = ("kd:T=1,alpha=1", "kd:T=2,alpha=1", "kd:T=1,alpha=0.5")
HINT_WEIGHT = 1.0
FINAL_NORM = {"llama": "model.norm", "gpt2": "transformer.ln_f"}
TP_QUICK_TIMEOUT = 60


# --- models, data, evaluation ---------------------------------------------------------------------------------------

def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ppl(model: nn.Module, loader: Any) -> float:
    from slimkit.analysis import evaluate

    return float(evaluate(model.eval(), loader).perplexity)


def _subset(loader: Any, blocks: int) -> Any:
    from slimkit.data import TensorLoader

    return TensorLoader(loader.inputs[:blocks], loader.targets[:blocks], loader.batch_size)


# --- slimkit width pruning at a parameter target ------------------------------------------------------------------

def _ratios(kind: str, hidden_keep: float, heads: float, mlp: float) -> dict[str, float]:
    names = LAYOUT[kind]
    return {names["residual"]: 1 - hidden_keep, names["heads"]: heads, names["channels"]: mlp}


def _mlp_width(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
               or 4 * config.hidden_size)


def _width(model: nn.Module, target: int, data: Any, valid: Any, quick: bool) -> dict[str, Any]:
    """slimkit width pruning to at most ``target`` parameters: the split (hidden kept × heads removed, MLP width
    solved for the target) chosen by validation perplexity with the l1 criterion, then the criterion at that split.
    Returns the chosen pruning, its model, the reconstructed model and the validation scores of every trial."""
    from slimkit.prune import PruneConfig, prune_channels

    kind = model.config.model_type
    example = data.example_input(1)
    calibration = [next(iter(data.calibration))] if quick else data.calibration
    batches = 1 if quick else 4
    width = _mlp_width(model)

    def prune(ratios: dict[str, float], criterion: str = "l1", reconstruct: bool = False) -> nn.Module:
        return prune_channels(model, example, PruneConfig(ratio=ratios, criterion=criterion, reconstruct=reconstruct,
                                                          batches=batches, timeout=None), data=calibration)

    trials: list[dict[str, Any]] = []
    for keep in HIDDEN_KEEP[::2][:2] if quick else HIDDEN_KEEP:
        for heads in HEAD_RATIOS[kind][:1] if quick else HEAD_RATIOS[kind]:
            # parameters are linear in the MLP width kept (at fixed hidden width and heads): two counts solve it
            full = _params(prune(_ratios(kind, keep, heads, 0.0)))
            half = _params(prune(_ratios(kind, keep, heads, 0.5)))
            per_unit = (full - half) / (width - (width - math.floor(width * 0.5)))
            if target - full > MLP_ROUND * per_unit:  # hidden + heads alone overshoot the budget: not this target
                continue
            mlp_keep = width - math.ceil(max(0, full - target) / per_unit)
            mlp_keep = mlp_keep // MLP_ROUND * MLP_ROUND
            if mlp_keep < MLP_ROUND or mlp_keep > width:
                continue
            ratios = _ratios(kind, keep, heads, 1 - mlp_keep / width)
            pruned = prune(ratios)
            trials.append({"hidden_keep": keep, "heads_removed": heads, "mlp_keep": mlp_keep, "criterion": "l1",
                           "params": _params(pruned), "valid_ppl": _ppl(pruned, valid), "ratios": ratios})
    if not trials:
        raise RuntimeError(f"no width split in the grid reaches {target} parameters")
    best = min(trials, key=lambda t: t["valid_ppl"])
    for criterion in CRITERIA[1:2] if quick else CRITERIA[1:]:
        pruned = prune(best["ratios"], criterion)
        trials.append({**best, "criterion": criterion, "params": _params(pruned), "valid_ppl": _ppl(pruned, valid)})
    chosen = min(trials, key=lambda t: t["valid_ppl"])
    pruned = prune(chosen["ratios"], chosen["criterion"])
    reconstructed = prune(chosen["ratios"], chosen["criterion"], reconstruct=True)
    return {"chosen": chosen, "trials": trials, "model": pruned, "reconstructed": reconstructed,
            "reconstructed_valid_ppl": _ppl(reconstructed, valid)}


def _depth(model: nn.Module, ratio: float, data: Any, quick: bool) -> tuple[nn.Module, dict[str, Any]]:
    from slimkit.prune import DepthPruneConfig, block_importance, remove_blocks

    config = DepthPruneConfig(param_ratio=ratio, criterion="angular", batches=1 if quick else 8)
    importance = block_importance(model, data.example_input(4), config, data=data.calibration)
    return remove_blocks(model, importance.removed).eval(), {"removed": list(importance.removed),
                                                             "scores": importance.scores}


# --- Torch-Pruning ----------------------------------------------------------------------------------------------

def _tp_prune(model: nn.Module, ratio: float) -> nn.Module:
    """Torch-Pruning's LLM recipe (examples/LLMs/prune_llm.py): MetaPruner, group L2 magnitude importance, heads
    pruned as wholes (``num_heads``, no head-dim pruning), hidden width pruned, ``lm_head`` ignored, round_to 4; then
    the attention modules' and config's sizes set as that example does."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    config = model.config
    num_heads: dict[nn.Module, int] = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn") and hasattr(m, "q_proj"):
            num_heads[m.q_proj] = config.num_attention_heads
            num_heads[m.k_proj] = config.num_key_value_heads
            num_heads[m.v_proj] = config.num_key_value_heads
        elif name.endswith(".attn") and hasattr(m, "c_attn"):
            num_heads[m.c_attn] = config.num_attention_heads
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=torch.randint(1, 100, (1, 16)),
        importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"), global_pruning=False,
        output_transform=lambda out: out.logits, pruning_ratio=ratio, ignored_layers=[model.lm_head],
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4)
    for group in pruner.step(interactive=True):
        group.prune()
    config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn") and hasattr(m, "q_proj"):
            config.num_attention_heads = m.q_proj.out_features // m.head_dim
            config.num_key_value_heads = m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        elif name.endswith("mlp") and hasattr(m, "gate_proj"):
            config.intermediate_size = m.gate_proj.out_features
    return model


def _tp_child(model: nn.Module, target: int, out: str, progress: str) -> None:
    """In a forked process: bisect Torch-Pruning's ratio to the largest pruning with at most ``target`` parameters
    (the closest from below), save the model or the error."""
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    try:
        lo, hi, best = 0.0, 0.9, None
        for step in range(7):
            mid = (lo + hi) / 2
            Path(progress).write_text(f"MetaPruner at pruning_ratio {mid:.3f} (bisection step {step + 1})")
            pruned = _tp_prune(model, mid)
            if _params(pruned) <= target:
                best, hi = (mid, pruned), mid
            else:
                lo = mid
        if best is None:
            result = {"error": f"no pruning_ratio ≤ 0.9 reaches {target} parameters"}
        else:
            torch.save(best[1], out)
            result = {"ratio": best[0]}
    except Exception as error:  # the peer's own failure, reported in the table
        frame = traceback.extract_tb(error.__traceback__)[-1]
        result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''} "
                           f"(at {Path(frame.filename).name}:{frame.lineno})"}
    Path(out + ".json").write_text(json.dumps(result))


def _torch_pruning(model: nn.Module, target: int, folder: Path, timeout: float) -> tuple[nn.Module | None, dict]:
    """Torch-Pruning at ``target`` parameters in a child process with a time limit (on llama_tiny its dependency
    graph analysis may not finish): the model, or None and the error / where it stopped."""
    try:
        import torch_pruning as tp
    except ImportError as error:
        return None, {"error": f"not installed ({error})"}
    out, progress = str(folder / f"tp-{target}.pt"), str(folder / f"tp-{target}.txt")
    began = time.perf_counter()
    child = multiprocessing.get_context("fork").Process(target=_tp_child, args=(model, target, out, progress))
    child.start()
    child.join(timeout)
    seconds = time.perf_counter() - began
    info: dict[str, Any] = {"version": tp.__version__, "seconds": seconds}
    if child.is_alive():
        child.terminate()
        child.join()
        stage = Path(progress).read_text() if Path(progress).is_file() else "starting"
        return None, {**info, "error": f"did not finish within {timeout:.0f} s (stopped in: {stage})"}
    result = json.loads(Path(out + ".json").read_text()) if Path(out + ".json").is_file() else {
        "error": f"child process exited with code {child.exitcode}"}
    if "error" in result:
        return None, {**info, **result}
    pruned = torch.load(out, weights_only=False)  # our own child's file, written a moment ago
    return pruned.eval(), {**info, **result}


# --- ONNX Runtime latency -----------------------------------------------------------------------------------------

class _Prefill(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class _Decode(nn.Module):
    """One decode step with past keys/values, taking the *unpruned* model's cache shapes so that every candidate
    runs on the same inputs (``compare_latency`` feeds one input list to all): a pruned model reads the first
    layers and key/value heads of that cache (a slice; the copy it costs is counted against the pruned model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from slimkit.export import KVCacheLM

        self.lm = KVCacheLM(model)
        shape = self.lm.empty_past(1, 0)[0].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mine = [p[:, :self.kv_heads, :, :self.head_dim] for p in past[:2 * self.lm.layers]]
        return self.lm(input_ids, *mine)


def _onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    import contextlib
    import io
    import warnings

    names = ["input_ids"] + [f"past_{i}" for i in range(len(inputs) - 1)]
    logging.disable(logging.INFO)  # the exporter and its optimiser log every pass at INFO
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), inputs, dynamo=True, input_names=names).save(str(path))
    finally:
        logging.disable(logging.NOTSET)
    return path


def _latency_inputs(base: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    from slimkit.export import KVCacheLM

    generator = torch.Generator().manual_seed(0)
    vocab = base.config.vocab_size
    past = [torch.randn(p.shape[0], p.shape[1], PAST, p.shape[3], generator=generator)
            for p in KVCacheLM(base).empty_past(1, 0)]
    return {"prefill": (torch.randint(1, vocab, (1, PREFILL), generator=generator),),
            "decode": (torch.randint(1, vocab, (1, 1), generator=generator), *past)}


def _exports(model: nn.Module, inputs: dict[str, tuple], folder: Path, name: str) -> dict[str, Path]:
    model = copy.deepcopy(model).eval()
    return {"prefill": _onnx(_Prefill(model), inputs["prefill"], folder / f"{name}-prefill.onnx"),
            "decode": _onnx(_Decode(model), inputs["decode"], folder / f"{name}-decode.onnx")}


def _latency(base: dict[str, Path], cand: dict[str, Path], inputs: dict[str, tuple], quick: bool) -> dict[str, Any]:
    from slimkit.analysis import compare_latency

    return {phase: latency_record(compare_latency(base[phase], cand[phase], inputs[phase], backend="onnxruntime",
                                                  threads=LATENCY_THREADS, warmup=3 if quick else 10,
                                                  repeats=5 if quick else LATENCY_REPEATS))
            for phase in ("prefill", "decode")}


def _macs(model: nn.Module) -> int:
    from slimkit.analysis import profile

    return int(profile(model, torch.zeros(1, PREFILL, dtype=torch.long)).total.macs)


# --- one model ----------------------------------------------------------------------------------------------------

def _recovery_settings(quick: bool) -> list[dict[str, Any]]:
    """The recovery candidates tried on validation: fine-tuning at each learning rate, and KD at each learning rate
    and logit loss, then the best KD with a hint on the final norm's hidden states added (Minitron's logit +
    hidden-state loss; a learned linear map bridges a narrower student)."""
    lrs = RECOVERY_LRS[:1] if quick else RECOVERY_LRS
    losses = KD_LOSSES[:1] if quick else KD_LOSSES
    return ([{"method": "finetune", "lr": lr} for lr in lrs]
            + [{"method": "kd", "lr": lr, "losses": (loss,)} for lr in lrs for loss in losses])


def _recover(teacher: nn.Module, start: nn.Module, loader: Any, setting: dict[str, Any]) -> tuple[nn.Module, float]:
    from benchmarks.bench_lm import _recover

    extra = {} if setting["method"] == "finetune" else {"losses": tuple(setting["losses"]),
                                                        "pairs": tuple(setting.get("pairs", ()))}
    return _recover(teacher, start, loader, setting["method"], lr=setting["lr"], **extra)


def _tune_recovery(teacher: nn.Module, start: nn.Module, loader: Any, valid: Any, kind: str,
                   quick: bool) -> dict[str, Any]:
    """Choose each recovery method's settings by validation perplexity on one pruned model; returns the chosen
    settings, every trial, and the chosen runs' models (reused for that row)."""
    trials, models = [], []
    for setting in _recovery_settings(quick):
        model, seconds = _recover(teacher, start, loader, setting)
        trials.append({**setting, "valid_ppl": _ppl(model, valid), "seconds": seconds})
        models.append(model)
    if not quick:
        kd = min((t for t in trials if t["method"] == "kd"), key=lambda t: t["valid_ppl"])
        setting = {"method": "kd", "lr": kd["lr"], "losses": (*kd["losses"], f"hint:weight={HINT_WEIGHT:g}"),
                   "pairs": (f"{FINAL_NORM[kind]}={FINAL_NORM[kind]}",)}
        model, seconds = _recover(teacher, start, loader, setting)
        trials.append({**setting, "valid_ppl": _ppl(model, valid), "seconds": seconds})
        models.append(model)
    chosen, kept = {}, {}
    for method in ("kd", "finetune"):
        index = min((i for i, t in enumerate(trials) if t["method"] == method), key=lambda i: trials[i]["valid_ppl"])
        chosen[method] = {k: v for k, v in trials[index].items() if k not in ("valid_ppl", "seconds")}
        kept[method] = (models[index], trials[index]["seconds"])
    return {"chosen": chosen, "trials": trials, "models": kept}


def _lm(spec: str, data: Any, quick: bool, folder: Path) -> dict[str, Any]:
    from benchmarks._lm_baselines import LMTrainConfig, train_loader
    from benchmarks.bench_lm import RECOVERY_BLOCKS
    from benchmarks.bench_quantize_lm import _trained

    teacher, record = _trained(spec, data, quick)
    teacher.eval()
    kind = teacher.config.model_type
    config = LMTrainConfig(**record["config"])
    valid = _subset(data.valid, QUICK_BLOCKS if quick else VALID_BLOCKS)
    test = _subset(data.test, QUICK_BLOCKS) if quick else data.test
    loader = train_loader(data, config, blocks=16 if quick else RECOVERY_BLOCKS, seed=1)
    total = _params(teacher)
    inputs = _latency_inputs(teacher)
    base_files = _exports(teacher, inputs, folder, "base")
    base_macs = _macs(teacher)
    out: dict[str, Any] = {"params": total, "macs": base_macs, "valid_ppl": _ppl(teacher, valid),
                           "test_ppl": _ppl(teacher, test), "train_config": record["config"], "budgets": {}}
    # pass 1: every pruned model, its one-shot scores and the model recovery starts from (chosen on validation)
    models: dict[tuple[str, str], tuple[nn.Module, nn.Module]] = {}
    for budget in BUDGETS[:1] if quick else BUDGETS:
        target = math.floor((1 - budget) * total)
        rows: dict[str, dict[str, Any]] = {}
        began = time.perf_counter()
        width = _width(teacher, target, data, valid, quick)
        rows["slimkit width"] = {"model": width["model"], "reconstructed": width["reconstructed"],
                                 "choice": width["chosen"], "trials": width["trials"],
                                 "search_seconds": time.perf_counter() - began}
        depth, depth_info = _depth(teacher, budget, data, quick)
        rows["slimkit depth"] = {"model": depth, "choice": depth_info}
        shallow, shallow_info = _depth(teacher, budget / 2, data, quick)
        both = _width(shallow, target, data, valid, quick)
        rows["slimkit width+depth"] = {"model": both["model"], "reconstructed": both["reconstructed"],
                                       "choice": {**both["chosen"], "depth": shallow_info}, "trials": both["trials"]}
        tp_model, tp_info = _torch_pruning(teacher, target, folder, TP_QUICK_TIMEOUT if quick else TP_TIMEOUT)
        rows["Torch-Pruning"] = {"model": tp_model, "choice": tp_info}
        for name, row in rows.items():
            model = row.pop("model")
            reconstructed = row.pop("reconstructed", None)
            if model is None:
                row["error"] = row["choice"]["error"]
                continue
            row.update(params=_params(model), reduction=1 - _params(model) / total, valid_ppl=_ppl(model, valid),
                       test_ppl=_ppl(model, test), macs=_macs(model))
            start = model
            if reconstructed is not None:
                row["reconstructed_valid_ppl"] = _ppl(reconstructed, valid)
                row["reconstructed_test_ppl"] = _ppl(reconstructed, test)
                if row["reconstructed_valid_ppl"] < row["valid_ppl"]:
                    start = reconstructed
            row["recovery_from"] = "reconstructed" if start is not model else "pruned"
            models[str(budget), name] = (model, start)
        out["budgets"][str(budget)] = {"target_params": target, "rows": rows}
    # pass 2: recovery settings chosen on validation on the width-pruned model at the largest budget
    tuning_key = (str(BUDGETS[0] if quick else BUDGETS[-1]), "slimkit width")
    tuning = _tune_recovery(teacher, models[tuning_key][1], loader, valid, kind, quick)
    out["recovery_tuning"] = {"row": list(tuning_key), "chosen": tuning["chosen"], "trials": tuning["trials"]}
    # pass 3: recovery with the chosen settings (the tuning row's runs reused), latency
    for (budget, name), (model, start) in models.items():
        row = out["budgets"][budget]["rows"][name]
        for method, setting in tuning["chosen"].items():
            recovered, seconds = (tuning["models"][method] if (budget, name) == tuning_key
                                  else _recover(teacher, start, loader, setting))
            row[method] = {"test_ppl": _ppl(recovered, test), "valid_ppl": _ppl(recovered, valid),
                           "seconds": seconds}
        try:
            files = _exports(model, inputs, folder, f"{spec}-{budget}-{name.replace(' ', '_')}")
            row["latency"] = _latency(base_files, files, inputs, quick)
        except Exception as error:  # an export failure is a result too
            row["latency_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return out


# --- the section --------------------------------------------------------------------------------------------------

def _split(choice: dict[str, Any], kind: str) -> str:
    if "hidden_keep" not in choice:
        return ""
    heads = "GQA groups" if kind == "llama" else "heads"
    text = (f"hidden ×{choice['hidden_keep']:g}, {heads} −{choice['heads_removed']:.0%}, MLP {choice['mlp_keep']}, "
            f"`{choice['criterion']}`")
    if "depth" in choice:
        text = f"blocks {' '.join(map(str, choice['depth']['removed']))} removed; " + text
    return text


def _quality_rows(spec: str, result: dict[str, Any]) -> list[list[Any]]:
    kind = "llama" if spec.startswith("llama") else "gpt2"
    lines: list[list[Any]] = [[spec, "—", "unpruned", result["params"], "", result["test_ppl"], "", "", "", ""]]
    for budget, entry in result["budgets"].items():
        for name, r in entry["rows"].items():
            if "error" in r:
                lines.append([spec, f"{float(budget):.0%}", name, "", "", f"failed: {r['error']}", "", "", "", ""])
                continue
            choice = r["choice"]
            how = (_split(choice, kind) if "hidden_keep" in choice
                   else f"blocks {' '.join(map(str, choice['removed']))} removed (angular)" if "removed" in choice
                   else f"pruning_ratio {choice['ratio']:.3f}")
            recon = (r.get("reconstructed_test_ppl", "n/a"))
            lines.append([spec, f"{float(budget):.0%}", name, r["params"], f"{r['reduction']:.1%}", r["test_ppl"],
                          recon, r["kd"]["test_ppl"], r["finetune"]["test_ppl"], how])
    return lines


def _speed_rows(spec: str, result: dict[str, Any]) -> list[list[Any]]:
    lines = []
    for budget, entry in result["budgets"].items():
        for name, r in entry["rows"].items():
            if "error" in r:
                continue
            lat = r.get("latency", {})
            lines.append([spec, f"{float(budget):.0%}", name, f"{r['macs'] / result['macs']:.3f}",
                          latency_cell(lat.get("prefill")) if lat else r.get("latency_error", "–"),
                          latency_cell(lat.get("decode")) if lat else "–"])
    return lines


def _goals(results: dict[str, Any]) -> list[str]:
    """Whether slimkit's best pruning beats Torch-Pruning and KD beats fine-tuning, read from the numbers."""
    lines = []
    for spec, result in results.items():
        for budget, entry in result["budgets"].items():
            rows = entry["rows"]
            ours = {n: r for n, r in rows.items() if n.startswith("slimkit") and "error" not in r}
            peer = rows.get("Torch-Pruning", {})
            stage_best = {stage: min(ours, key=lambda n: ours[n][stage]["test_ppl"] if stage != "pruned"
                                     else ours[n]["test_ppl"]) for stage in ("pruned", "kd", "finetune")}
            head = f"- {spec} at {float(budget):.0%}: "
            if "error" in peer:
                vs = "Torch-Pruning produced no model (failed), so the comparison is not measured"
            else:
                parts = []
                for stage, label in (("pruned", "one-shot"), ("kd", "after KD"), ("finetune", "after fine-tune")):
                    n = stage_best[stage]
                    mine = ours[n]["test_ppl"] if stage == "pruned" else ours[n][stage]["test_ppl"]
                    theirs = peer["test_ppl"] if stage == "pruned" else peer[stage]["test_ppl"]
                    parts.append(f"{label} slimkit's best ({n}) {mine:.2f} vs Torch-Pruning {theirs:.2f} "
                                 f"({'met' if mine < theirs else 'not met'})")
                vs = "; ".join(parts)
            kd = [f"{n} {r['kd']['test_ppl']:.2f} vs {r['finetune']['test_ppl']:.2f}"
                  for n, r in {**ours, **({"Torch-Pruning": peer} if "kd" in peer else {})}.items()]
            wins = sum(r["kd"]["test_ppl"] < r["finetune"]["test_ppl"]
                       for r in {**ours, **({"Torch-Pruning": peer} if "kd" in peer else {})}.values())
            lines.append(head + vs + f". KD below fine-tune in {wins} of {len(kd)} rows ({'; '.join(kd)}).")
    return lines


def _tuning_rows(spec: str, result: dict[str, Any]) -> list[list[Any]]:
    kind = "llama" if spec.startswith("llama") else "gpt2"
    lines = []
    for budget, entry in result["budgets"].items():
        for name in ("slimkit width", "slimkit width+depth"):
            r = entry["rows"].get(name, {})
            for t in r.get("trials", []):
                lines.append([spec, f"{float(budget):.0%}", name, _split(t, kind), t["params"], t["valid_ppl"],
                              "chosen" if t == {k: v for k, v in r["choice"].items() if k != "depth"} else ""])
            if "reconstructed_valid_ppl" in r:
                lines.append([spec, f"{float(budget):.0%}", name, "chosen + reconstruct", r["params"],
                              r["reconstructed_valid_ppl"], f"recovery from {r['recovery_from']}"])
    return lines


def _recovery_rows(spec: str, result: dict[str, Any]) -> list[list[Any]]:
    tuning = result["recovery_tuning"]
    budget, name = tuning["row"]
    chosen = list(tuning["chosen"].values())  # each a trial's settings (the same tuples as the trials', in memory)
    return [[spec, f"{name} {float(budget):.0%}", t["method"], f"{t['lr']:g}",
             " + ".join(f"`{x}`" for x in t.get("losses", ())) or "next-token", t["valid_ppl"], f"{t['seconds']:.0f}",
             "chosen" if {k: v for k, v in t.items() if k not in ("valid_ppl", "seconds")} in chosen else ""]
            for t in tuning["trials"]]


def run(quick: bool) -> Section:
    from benchmarks._lm_baselines import lm_data
    from benchmarks.bench_lm import RECOVERY_BLOCKS

    data = lm_data()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-lmw-") as tmp:
        for spec in SPECS:
            folder = Path(tmp) / spec
            folder.mkdir()
            results[spec] = _lm(spec, data, quick, folder)
    quality = [line for spec, r in results.items() for line in _quality_rows(spec, r)]
    speed = [line for spec, r in results.items() for line in _speed_rows(spec, r)]
    tuning = [line for spec, r in results.items() for line in _tuning_rows(spec, r)]
    recovery = [line for spec, r in results.items() for line in _recovery_rows(spec, r)]
    goals = _goals(results)
    blocks = 16 if quick else RECOVERY_BLOCKS
    valid_blocks = QUICK_BLOCKS if quick else VALID_BLOCKS
    markdown = "\n\n".join([
        f"The tiny LMs of the language-model section (same training config and learning rate, read from "
        f"`results/lm.json`), pruned to at most {', '.join(f'{1 - b:.0%}' for b in BUDGETS)} of their parameters "
        "(tied embedding included). **slimkit width**: `prune_channels` with per-kind ratios — hidden (residual) "
        "width, attention heads (whole GQA key/value groups on llama_tiny) and MLP width; the hidden fraction kept "
        f"({', '.join(f'{k:g}' for k in HIDDEN_KEEP)}) and heads removed are a grid, the MLP width (a multiple of "
        f"{MLP_ROUND}) is solved for the target; the split is chosen by validation perplexity (first {valid_blocks} "
        f"validation blocks) with `l1`, then the criterion ({', '.join(CRITERIA)}) at that split. **slimkit depth**: "
        "`DepthPruneConfig(param_ratio, criterion=\"angular\")` + `remove_blocks`. **width+depth**: depth at half the "
        "budget, then width (chosen the same way) to the same parameter target. **Torch-Pruning**: its LLM example's "
        "settings (`MetaPruner`, `MagnitudeImportance(p=2, group_reduction=\"mean\")`, `num_heads` with "
        "`prune_num_heads=True, prune_head_dims=False`, `lm_head` ignored, `round_to=4`), its `pruning_ratio` "
        "bisected to the largest pruning at or under the parameter target, in a child process with a time limit.",
        f"Reconstruction: `PruneConfig(reconstruct=True)` refits, by least squares on calibration blocks, every "
        "`nn.Linear` that lost input channels (GPT-2's `Conv1D` layers are not `nn.Linear`; tied output layers are "
        "left alone); `n/a` where it does not apply (depth pruning, Torch-Pruning). Recovery (both from the "
        "reconstructed model when that has the lower validation perplexity, else from the one-shot model): "
        f"{blocks} training blocks once, AdamW, one-cycle cosine; KD from the unpruned model; fine-tune = "
        "next-token loss, same steps. Each method's settings are chosen per model by validation perplexity on the "
        "width-pruned model at the largest budget (table below) and used for every row of that model: learning rate "
        f"({', '.join(f'{lr:g}' for lr in RECOVERY_LRS)}) for both; for KD also the logit loss "
        f"({', '.join(f'`{k}`' for k in KD_LOSSES)}) and whether a FitNets hint on the final norm's hidden states "
        f"(`hint:weight={HINT_WEIGHT:g}`, a learned linear map when the student is narrower; Minitron's logit + "
        "hidden-state loss) helps. Test perplexity on the held-out files.",
        "**Quality (test perplexity)**\n\n" + markdown_table(
            ["model", "budget", "method", "params", "reduction", "ppl pruned", "ppl + reconstruct", "ppl + KD",
             "ppl + fine-tune", "what was removed"], quality),
        "**Goals (from the numbers above)**\n\n" + "\n".join(goals),
        f"**Speed**: MAC ratio of a {PREFILL}-token forward (`slimkit.analysis.profile`); latency ratio to the "
        f"unpruned model of a {PREFILL}-token prefill and of one decode step after {PAST} cached tokens, batch 1 "
        "(every decode graph takes the unpruned model's cache shapes and slices its own layers and heads from it, "
        f"so all run on one input list). {LATENCY_METHOD}.\n\n" + markdown_table(
            ["model", "budget", "method", "MAC ratio (prefill)", "prefill latency × unpruned, A/A",
             "decode latency × unpruned, A/A"], speed),
        "**Width split and criterion (validation perplexity, one-shot)**\n\n" + markdown_table(
            ["model", "budget", "method", "split", "params", "valid ppl", ""], tuning),
        "**Recovery settings (validation perplexity after recovery, on the row named)**\n\n" + markdown_table(
            ["model", "row", "method", "lr", "losses", "valid ppl", "seconds", ""], recovery),
    ])
    return Section("lm_width", TITLE, markdown, {"budgets": list(BUDGETS), "models": results, "goals": goals,
                                                 "recovery": {"blocks": blocks, "lrs": list(RECOVERY_LRS),
                                                              "kd_losses": list(KD_LOSSES)},
                                                 "valid_blocks": valid_blocks})


if __name__ == "__main__":
    print("run through benchmarks.run: python -m benchmarks.run --only lm_width")
