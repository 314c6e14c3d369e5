"""``slimkit auto`` on MNIST: for latency and size budgets, the searched mix against the best hand-written recipe
in ``recipes/`` that meets the same budget and against single-family automation (uniform channel pruning to the
same MACs, int8 alone, mixed precision alone); against the Deep Compression recipes, the smallest file at which
auto reaches their validation accuracy.

Every choice is made on the validation split (MNIST's 10k held-out training images); the 10k test images are read
once, for the final table. Latency is re-measured for every row of the table in the same way (the deployed file
against the input's fp32 ONNX file, interleaved with an A/A control), so the rows are comparable; on a loaded
machine the cells say "too noisy", and the search itself could not confirm a latency budget either: re-run with
``python -m benchmarks.run --only auto`` on a quiet machine.

Two sections, each within one session's time on 2 cores: ``auto`` (LeNet-5, LeNet-300-100 and the comparison with
Deep Compression, 36 to 38 min from an empty cache on an AVX512-VNNI EPYC, about 1.5 h on slower CPUs) and
``auto_resnet20`` (ResNet-20, 1.3 to over 2 h by the CPU; ``bench_auto_resnet20``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks._baselines import CACHE, digest, trained, weights_digest
from benchmarks._common import (
    LATENCY_METHOD,
    LATENCY_THREADS,
    ROOT,
    Section,
    latency_cell,
    latency_record,
    markdown_table,
)
from slimkit._io import write_text_atomic
from slimkit.train import torch_threads

TITLE = "Automatic compression (slimkit auto): searched mixes vs hand-written recipes and single-family automation"

#: model → baseline epochs (benchmarks/_baselines.trained), auto settings that differ from the defaults
MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {"epochs": 10, "auto": {}},
    "lenet300": {"epochs": 10, "auto": {}},
    # ResNet-20's recovery (auto's, the uniform baseline's and the hand recipe's alike) uses the first 10k training
    # images, to keep the benchmark within a few hours on 2 cores
    "resnet20": {"epochs": 4, "train_samples": 10_000, "auto": {"calibration_samples": 256, "max_candidates": 3}},
}
BUDGETS = ("latency=0.5", "latency=0.3", "size=0.1", "size=0.03")
#: the deployment every latency is measured for: batch 64 (LeNet's batch-1 time is mostly per-node overhead)
BATCH = 64
MAX_DROP = 0.5
#: PyTorch threads for everything the run trains and analyses (both cores: the full run takes hours); every latency
#: is measured in ONNX Runtime on LATENCY_THREADS, while PyTorch's idle threads sleep (run.py sets OMP passive wait)
TRAIN_THREADS = 2
#: recovery of every auto plan and of the uniform-pruning baseline: as the shipped prune + KD recipe (2 epochs KD);
#: the container format prunes in 2 rounds of 2 epochs and fine-tunes its centroids 2 epochs
AUTO = {"max_drop": MAX_DROP, "recovery": "kd", "recovery_epochs": 2, "recovery_lr": 0.01, "prune_rounds": 2,
        "cluster_epochs": 2, "max_candidates": 4}
QUICK = {"recovery_epochs": 1, "cluster_epochs": 1, "prune_rounds": 1, "max_candidates": 2,
         "calibration_samples": 256}
DATA = {"name": "mnist", "batch_size": 128, "augment": False, "seed": 0, "calibration_size": 1024}


def _data(train_samples: int | None) -> tuple[Any, dict[str, Any]]:
    """MNIST and the recipe data section that builds the same bundle (recovery on the first ``train_samples``
    training images, as the recipe runner takes them)."""
    from slimkit.data import TensorLoader, create_data

    section = dict(DATA)
    data = create_data("mnist", batch_size=128, seed=0, calibration_size=1024)
    if train_samples:
        section["train_samples"] = train_samples
        data.train = TensorLoader(data.train.inputs[:train_samples], data.train.targets[:train_samples], 128,
                                  shuffle=True, seed=0)
    return data, section


def _checkpoint(tag: str, model: torch.nn.Module) -> Path:
    """``model``'s weights as a checkpoint file in the cache (written once per tag), for the recipes auto writes."""
    from slimkit.train import save_checkpoint

    path = CACHE / "auto" / f"{tag}.pt"
    if not path.is_file():
        save_checkpoint(model.state_dict(), path)
    return path


def _measure_file(baseline_onnx: Path, deployed_onnx: Path, example: torch.Tensor) -> dict[str, Any]:
    from slimkit.analysis import compare_latency

    cmp = compare_latency(baseline_onnx, deployed_onnx, example.expand(BATCH, *example.shape[1:]).contiguous(),
                          backend="onnxruntime", threads=LATENCY_THREADS, repeats=50)
    return latency_record(cmp)


def _row(label: str, model: torch.nn.Module, *, data: Any, base: dict[str, Any], deployed: Path, timed: Path,
         baseline_onnx: Path, example: torch.Tensor, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table's measurements of one final model: test accuracy (read once, here), validation accuracy, MACs,
    deployed bytes, latency."""
    from slimkit.analysis import evaluate, profile

    model = model.eval()
    macs = profile(model, example).total.macs
    size = deployed.stat().st_size
    return {"label": label, "test_accuracy": evaluate(model, data.test).accuracy,
            "valid_accuracy": evaluate(model, data.valid).accuracy, "macs": macs, "bytes": size,
            "macs_ratio": macs / base["macs"], "size_ratio": size / base["onnx_bytes"],
            "latency": _measure_file(baseline_onnx, timed, example), **(extra or {})}


def _meets(row: dict[str, Any], budget: str) -> bool | None:
    key, _, value = budget.partition("=")
    if key == "size":
        return row["size_ratio"] <= float(value)
    ratio = row["latency"]["ratio"]
    return None if ratio is None else ratio <= float(value)


# --- hand-written recipes -------------------------------------------------------------------------------------------


def _hand_recipes(name: str) -> list[Path]:
    out = []
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        if yaml.safe_load(path.read_text())["model"]["spec"] == name:
            out.append(path)
    return out


def _from_checkpoint(recipe: dict[str, Any], checkpoint: Path, section: dict[str, Any]) -> dict[str, Any]:
    """The recipe starting from the trained baseline: its ``train`` stage dropped (a distillation teacher that was
    the trained model becomes the input), the benchmark's data, validation as the recipe's split."""
    stages = []
    for entry in recipe["stages"]:
        (stage, params), = entry.items()
        if stage == "train":
            continue
        params = dict(params or {})
        if stage == "distill" and params.get("teacher") == "01-train":
            params["teacher"] = "input"
        stages.append({stage: params})
    return {**recipe, "model": {"spec": recipe["model"]["spec"], "checkpoint": str(checkpoint)}, "data": section,
            "evaluation": {"split": "valid", "latency": False}, "stages": stages}


def _run_hand(path: Path, checkpoint: Path, section: dict[str, Any], folder: Path, **kw: Any) -> dict[str, Any]:
    from slimkit.pipeline import load_run, parse_recipe, run_recipe

    recipe = _from_checkpoint(yaml.safe_load(path.read_text()), checkpoint, section)
    began = time.perf_counter()
    result = run_recipe(parse_recipe(yaml.safe_dump(recipe), str(path)), folder, force=True, progress=False,
                        report=False)
    seconds = time.perf_counter() - began
    model = load_run(folder)[0]
    exports = [e for e in recipe["stages"] if "export" in e and e["export"].get("format") == "compressed"]
    deployed = folder / exports[-1]["export"]["file"] if exports else folder / "model.onnx"
    return {"model": model, "deployed": deployed, "timed": folder / "model.onnx", "seconds": seconds,
            "recipe": path.name, "final": result.stages[-1]}


# --- single-family automation -----------------------------------------------------------------------------------


def _uniform_prune(model: torch.nn.Module, budget: str, macs: int, data: Any, example: torch.Tensor, epochs: int,
                   folder: Path, onnx_bytes: int) -> tuple[torch.nn.Module, Path]:
    """Uniform L1 channel pruning (one ratio for every group), KD recovery, fp32 ONNX. For a latency budget the
    ratio reaches auto's MACs; for a size budget, the smallest ratio whose fp32 weights fit the budget's bytes."""
    from slimkit.analysis import profile
    from slimkit.distill import DistillConfig, distill
    from slimkit.export import export_onnx
    from slimkit.prune import PruneConfig, prune_channels

    if budget.startswith("size"):
        limit = float(budget.partition("=")[2]) * onnx_bytes
        lo, hi = 0.0, 0.99
        for _ in range(12):  # bisection on the one ratio: fp32 weights (4 bytes each) within the budget
            mid = (lo + hi) / 2
            candidate = prune_channels(model, example, PruneConfig(ratio=mid), data=data.calibration)
            lo, hi = (lo, mid) if 4 * profile(candidate, example).total.params <= limit else (mid, hi)
        config = PruneConfig(ratio=hi, criterion="l1")
    else:
        config = PruneConfig(target_macs=int(macs), criterion="l1")
    pruned = prune_channels(model, example, config, data=data.calibration)
    if epochs:
        pruned = distill(model, pruned, data.train, DistillConfig(losses=("kd:T=4,alpha=0.9",), epochs=epochs,
                                                                  lr=0.01))
    path = export_onnx(pruned, example, folder / "uniform.onnx")
    return pruned.eval(), path


def _int8_alone(model: torch.nn.Module, data: Any, example: torch.Tensor, folder: Path) -> tuple:
    from slimkit.export import export_qdq
    from slimkit.quantize import quantize

    quantized = quantize(model, example, data=data.calibration)
    return quantized, export_qdq(quantized, example, folder / "int8.onnx")


def _auto(model: torch.nn.Module, name: str, budget: str, data: Any, section: dict[str, Any], checkpoint: Path,
          folder: Path, settings: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """One auto run; returns its model (None if nothing met the budget), result and wall time."""
    from slimkit._errors import ConfigError
    from slimkit.auto import AutoConfig, BudgetNotMet, auto_compress, auto_report

    config = AutoConfig(budget=f"{budget},batch={BATCH},threads={LATENCY_THREADS}", **{**settings, **overrides})
    began = time.perf_counter()
    recipe = {"model": {"spec": name, "checkpoint": str(checkpoint)}, "data": section}
    try:
        compressed = auto_compress(model, data.example_input(1), config, data=data, out=folder, force=True,
                                   spec=name, recipe=recipe, analysis_dir=folder.parent / "analysis")
        return {"model": compressed, "result": auto_report(compressed), "seconds": time.perf_counter() - began}
    except BudgetNotMet as error:
        return {"model": None, "result": error.result, "seconds": time.perf_counter() - began,
                "error": str(error)}
    except ConfigError as error:  # the budget is beyond what this family reaches
        return {"model": None, "result": None, "seconds": time.perf_counter() - began, "error": str(error)}


def _reproduce(folder: Path, chosen: dict[str, Any]) -> dict[str, Any]:
    """``slimkit compress`` on the auto run's recipe.yaml: same validation accuracy, MACs and deployed bytes?"""
    from slimkit.pipeline import load_recipe, run_recipe

    recipe = load_recipe(folder / "recipe.yaml")
    result = run_recipe(recipe, folder / "final", force=True, progress=False, report=False)
    row = result.stages[-1]
    deployed = row["bytes"] if chosen["format"] == "container" else row.get("onnx_bytes")
    return {"accuracy": row["accuracy"] == chosen["accuracy"], "macs": row["macs"] == chosen["macs"],
            "bytes": deployed == chosen["bytes"]}


# --- the run -----------------------------------------------------------------------------------------------------


def _saved(path: Path, key: dict[str, Any], compute: Any) -> dict[str, Any]:
    """``compute()`` as plain JSON, saved at ``path`` with the digest of ``key`` (what the value depends on: weights,
    settings, recipe text, budget). With SLIMKIT_AUTO_BENCH_REUSE=1 the value an interrupted run saved there under
    the same key is returned instead (its latencies were measured then); changes to slimkit's code are not in the
    key: reuse only to finish a run."""
    if os.environ.get("SLIMKIT_AUTO_BENCH_REUSE") and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == digest(key):
            return saved["value"]
    value = _plain(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"key": digest(key), "value": value}, indent=1))
    return value


def _budget_entry(name: str, budget: str, tag: str, base_model: torch.nn.Module, checkpoint: Path,
                  section: dict[str, Any], folder: Path, settings: dict[str, Any],
                  common: dict[str, Any]) -> dict[str, Any]:
    """One budget's rows: auto, uniform pruning to auto's MACs (or the budget's bytes), mixed precision alone."""
    data, base, example = common["data"], common["base"], common["example"]
    entry: dict[str, Any] = {}
    run = _auto(base_model, name, budget, data, section, checkpoint, folder / "runs" / tag, settings)
    if run["model"] is not None:
        result = run["result"]
        run_folder = folder / "runs" / tag
        chosen = result.chosen
        deployed = run_folder / chosen["file"]
        timed = deployed if chosen["format"] != "container" else run_folder / "candidates" / \
            f"{chosen['index']:02d}" / "decoded.onnx"
        entry["auto"] = _row("auto", run["model"], deployed=deployed, timed=timed, **common, extra={
            "status": result.status, "plan": result.plan.summary(), "format": result.plan.format,
            "seconds": run["seconds"], "analysis_seconds": result.analysis_seconds,
            "candidates": len(result.candidates),
            "search_latency": chosen.get("latency"), "reproduced": _reproduce(run_folder, chosen)})
        # single-family automation at the same budget
        uniform, uniform_file = _uniform_prune(base_model, budget, entry["auto"]["macs"], data, example,
                                               settings["recovery_epochs"], run_folder, base["onnx_bytes"])
        entry["uniform"] = _row("uniform pruning", uniform, deployed=uniform_file, timed=uniform_file, **common)
    else:
        entry["auto"] = {"label": "auto", "error": run.get("error"), "seconds": run["seconds"]}
    mixed = _auto(base_model, name, budget, data, section, checkpoint, folder / "runs" / f"{tag}-mixed",
                  settings, formats=("int8",), knobs=("int8",))
    if mixed["model"] is not None:
        mixed_folder = folder / "runs" / f"{tag}-mixed"
        mfile = mixed_folder / mixed["result"].chosen["file"]
        entry["mixed"] = _row("mixed precision alone", mixed["model"], deployed=mfile, timed=mfile, **common,
                              extra={"status": mixed["result"].status, "plan": mixed["result"].plan.summary()})
    else:
        entry["mixed"] = {"label": "mixed precision alone", "error": mixed.get("error")}
    return entry


def _model_rows(name: str, spec: dict[str, Any], data: Any, section: dict[str, Any], quick: bool,
                root: Path) -> dict[str, Any]:
    from slimkit.analysis import evaluate, profile
    from slimkit.export import export_onnx

    base_model = trained(name, spec["epochs"])
    checkpoint = _checkpoint(f"{name}-e{spec['epochs']}", base_model)
    example = data.example_input(1)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    baseline_onnx = export_onnx(base_model, example, folder / "baseline.onnx")
    base = {"macs": profile(base_model, example).total.macs, "onnx_bytes": baseline_onnx.stat().st_size,
            "test_accuracy": evaluate(base_model, data.test).accuracy,
            "valid_accuracy": evaluate(base_model, data.valid).accuracy}
    settings = {**AUTO, **spec["auto"], **(QUICK if quick else {})}
    common = {"data": data, "base": base, "baseline_onnx": baseline_onnx, "example": example}
    key = {"weights": weights_digest(base_model), "settings": settings, "data": section, "quick": quick}
    out: dict[str, Any] = {"base": base, "settings": settings, "budgets": {}, "hand": {}}
    # every hand-written recipe for this model, once (each is then checked against every budget)
    hand_rows = []
    for path in _hand_recipes(name):
        def hand_row(path: Path = path) -> dict[str, Any]:
            hand = _run_hand(path, checkpoint, section, folder / "hand" / path.stem)
            return _row(f"recipe {path.name}", hand["model"], deployed=hand["deployed"], timed=hand["timed"],
                        extra={"seconds": hand["seconds"]}, **common)

        row = _saved(folder / "hand" / f"{path.stem}.json", {**key, "recipe": path.read_text()}, hand_row)
        hand_rows.append(row)
        out["hand"][path.name] = row

    def int8_row() -> dict[str, Any]:
        int8_model, int8_file = _int8_alone(base_model, data, example, folder)
        return _row("int8 alone (PTQ)", int8_model, deployed=int8_file, timed=int8_file, **common)

    out["int8"] = _saved(folder / "int8.json", key, int8_row)
    budgets = BUDGETS[:1] + BUDGETS[2:3] if quick else BUDGETS
    dc_label = f"recipe {_dc_models()[name][0]}" if name in _dc_models() else None
    dc_training = _dc_schedule(_dc_recipe(name, quick)) if dc_label else {}
    for budget in budgets:
        tag = budget.replace("=", "")
        meeting = [r for r in hand_rows if _meets(r, budget)]
        best = max(meeting, key=lambda r: r["valid_accuracy"]) if meeting else None
        # equal training with the hand recipe the budget is compared against: where that is the Deep Compression
        # recipe, auto gets its schedule (elsewhere AUTO's, the prune + KD recipe's 2 epochs)
        budget_settings = {**settings, **dc_training} if best and best["label"] == dc_label else settings
        if best is not None:  # the accuracy to reach, as in the comparison with Deep Compression: auto backs off
            # until its candidate is as accurate on validation as the best hand recipe (or max_candidates)
            budget_settings = {**budget_settings, "min_accuracy": 100 * best["valid_accuracy"]}
        entry = _saved(folder / "runs" / f"{tag}.json", {**key, "budget": budget, "settings": budget_settings},
                       lambda budget=budget, tag=tag, budget_settings=budget_settings: _budget_entry(
                           name, budget, tag, base_model, checkpoint, section, folder, budget_settings, common))
        entry["settings"] = budget_settings
        entry["hand_best"] = best
        entry["hand_meeting"] = [r["label"] for r in meeting]
        entry["int8_meets"] = _meets(out["int8"], budget)
        out["budgets"][budget] = entry
    return out


def _dc_models() -> dict[str, Any]:
    from benchmarks.bench_deep_compression import MODELS as DC_MODELS

    return DC_MODELS


def _dc_recipe(name: str, quick: bool) -> Any:
    """The shipped Deep Compression recipe of ``name`` (shortened for --quick, as the deep_compression section)."""
    from benchmarks.bench_deep_compression import RECIPES, _shortened
    from slimkit.pipeline import load_recipe

    shipped = load_recipe(RECIPES / _dc_models()[name][0])
    return _shortened(shipped) if quick else shipped


def _dc_schedule(recipe: Any) -> dict[str, Any]:
    """A Deep Compression recipe's training after its dense training, as auto's settings: pruning rounds, the epochs
    and learning rate of the fine-tune after each round, and those of the centroid fine-tune."""
    stages = [next(iter(s.items())) for s in recipe.to_dict()["stages"]] + [("end", {})]
    after: dict[str, list[tuple[int, float] | None]] = {"prune_unstructured": [], "cluster": []}
    for (name, _), (following, params) in itertools.pairwise(stages):
        if name in after:
            after[name].append((params["epochs"], params["lr"]) if following == "finetune" else None)
    rounds, cluster = after["prune_unstructured"], after["cluster"]
    if not rounds or None in rounds or len(set(rounds)) != 1 or len(cluster) != 1 or cluster[0] is None:
        raise RuntimeError(f"{recipe.source}: expected pruning rounds each followed by a fine-tune of equal epochs "
                           "and learning rate, and one clustering followed by a centroid fine-tune")
    (epochs, lr), (cluster_epochs, cluster_lr) = rounds[0], cluster[0]  # type: ignore[misc]
    return {"prune_rounds": len(rounds), "recovery_epochs": epochs, "recovery_lr": lr,
            "cluster_epochs": cluster_epochs, "cluster_lr": cluster_lr}


def _after_training_seconds(metrics: dict[str, Any]) -> float:
    """A recipe run's wall time after its dense ``train`` stage (auto's likewise starts from a trained model)."""
    stages = metrics["stages"]
    first = next(i for i, r in enumerate(stages) if r.get("name") == "train") + 1
    return sum(r["seconds"] for r in stages[first:])


#: auto's size budgets in the comparison with Deep Compression: DC's container bytes / factor, the smallest first
DC_FACTORS = (1.3, 1.15, 1.10, 1.05, 1.0)
#: the factors of runs before the result file recorded them
_EARLIER_DC_FACTORS = (1.15, 1.10, 1.05, 1.0)


def _dc_factors(results: dict[str, Any]) -> tuple[float, ...]:
    """The size budgets (DC's file / factor) a run's comparison with Deep Compression went through."""
    return tuple(results.get("dc_factors", _EARLIER_DC_FACTORS))


def _dc_comparison(name: str, data: Any, section: dict[str, Any], quick: bool, root: Path) -> dict[str, Any]:
    """Deep Compression (the shipped recipe's run, bench_deep_compression's cache) and auto, started from that
    run's trained dense model with the same training schedule (the recipe's rounds, epochs and learning rates), at
    the smallest size budget of ``DC_FACTORS`` (DC's file / factor) where auto's validation accuracy reaches DC's:
    the compression ratio at equal accuracy, decided on validation. auto is told DC's validation accuracy as its
    ``min_accuracy``, so within a budget it backs off and tries again until a candidate reaches it (up to
    ``max_candidates``). The test split is read for the row reported."""
    from benchmarks.bench_deep_compression import run_cached
    from slimkit.analysis import evaluate
    from slimkit.pipeline import load_run

    recipe = _dc_recipe(name, quick)
    with torch_threads(1):  # as the deep_compression section runs it: the wall times below are on one thread
        out, metrics = run_cached(recipe, f"{name}-shipped")  # the deep_compression section's run when cached
    model = load_run(out, "01-train")[0].eval()
    dc_valid = evaluate(load_run(out)[0].eval(), data.valid).accuracy
    dense_valid = evaluate(model, data.valid).accuracy
    checkpoint = _checkpoint(f"{name}-dc-{out.name}", model)
    folder = root / name / "dc"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_bytes = (root / name / "baseline.onnx").stat().st_size
    dense = 4 * sum(p.numel() for p in model.parameters())
    final = metrics["final"]
    epochs = _dc_schedule(recipe)
    settings = {**AUTO, **MODELS[name]["auto"], **(QUICK if quick else {}), **epochs, "formats": ("container",),
                "min_accuracy": 100 * dc_valid}
    out_row: dict[str, Any] = {
        "dc": {"bytes": final["bytes"], "ratio": dense / final["bytes"], "test_accuracy": final["accuracy"],
               "valid_accuracy": dc_valid, "dense_valid_accuracy": dense_valid, "split": final["split"],
               "samples": final["samples"], "run": out.name,
               "seconds": _after_training_seconds(metrics),
               "epochs": epochs["prune_rounds"] * epochs["recovery_epochs"] + epochs["cluster_epochs"]},
        "dense_bytes": dense, "tries": [], "min_accuracy": settings["min_accuracy"],
        "max_candidates": settings["max_candidates"]}
    reported = None
    for factor in DC_FACTORS:
        budget = final["bytes"] / factor / onnx_bytes
        run_folder = folder / f"auto-{factor:g}"
        # rounded down: at factor 1 the budget must not exceed DC's file
        run = _auto(model, name, f"size={math.floor(budget * 1e8) / 1e8:.8f}", data, section, checkpoint,
                    run_folder, settings)
        if run["model"] is None:
            out_row["tries"].append({"factor": factor, "budget": budget, "error": run.get("error"),
                                     "seconds": run["seconds"]})
            continue
        chosen = run["result"].chosen
        size = (run_folder / chosen["file"]).stat().st_size
        attempt = {"factor": factor, "budget": budget, "bytes": size, "ratio": dense / size,
                   "valid_accuracy": chosen["accuracy"], "plan": run["result"].plan.summary(),
                   "status": run["result"].status, "seconds": run["seconds"],
                   "candidates": len(run["result"].candidates)}
        out_row["tries"].append(attempt)
        # the first budget reaching DC's validation accuracy; until one does, the most accurate on validation (on a
        # tie the smaller budget): auto's accuracy is not monotone in the budget
        if reported is None or chosen["accuracy"] > reported[0]["valid_accuracy"]:
            reported = (attempt, run["model"])
        if chosen["accuracy"] >= dc_valid:
            break
    if reported is None:
        out_row["auto"] = {"error": out_row["tries"][-1].get("error"),
                           "seconds": sum(t["seconds"] for t in out_row["tries"])}
    else:
        attempt, chosen_model = reported
        out_row["auto"] = {**attempt, "test_accuracy": evaluate(chosen_model, data.test).accuracy,
                           "equal": attempt["valid_accuracy"] >= dc_valid}
    out_row["budget"] = out_row["auto"].get("budget")
    return out_row


def _cell_acc(row: dict[str, Any] | None, base: dict[str, Any]) -> str:
    if not row or "test_accuracy" not in row:
        return "–"
    return f"{100 * row['test_accuracy']:.2f}% ({100 * (row['test_accuracy'] - base['test_accuracy']):+.2f})"


def _table(results: dict[str, Any]) -> str:
    cols = ["model", "budget", "method", "test acc (Δ)", "valid acc", "latency × (batch 64)", "size ×", "MACs ×",
            "meets", "wall s", "what"]
    rows = []
    for name, model in results["models"].items():
        base = model["base"]
        for budget, entry in model["budgets"].items():
            candidates = [("auto", entry["auto"]), ("best hand recipe", entry["hand_best"]),
                          ("uniform pruning", entry.get("uniform")),
                          ("int8 alone", model["int8"]), ("mixed precision alone", entry["mixed"])]
            for method, row in candidates:
                if row is None:
                    rows.append([name, budget, method, "–", "–", "–", "–", "–", "–", "–",
                                 "no hand recipe for this model meets the budget"
                                 if method == "best hand recipe" else ""])
                    continue
                if "test_accuracy" not in row:
                    rows.append([name, budget, method, "–", "–", "–", "–", "–", "no", f"{row.get('seconds', 0):.0f}"
                                 if row.get("seconds") else "–", (row.get("error") or "")[:160]])
                    continue
                meets = _meets(row, budget)
                what = row.get("plan") or row["label"]
                if row.get("analysis_seconds") is not None:
                    what += f" ({row['candidates']} candidate(s); analysis {row['analysis_seconds']:.0f} s)"
                if method == "auto" and row.get("reproduced"):
                    what += "" if all(row["reproduced"].values()) else " (recipe did NOT reproduce)"
                rows.append([name, budget, method, _cell_acc(row, base), f"{100 * row['valid_accuracy']:.2f}%",
                             latency_cell(row["latency"]), f"{row['size_ratio']:.4f}", f"{row['macs_ratio']:.3f}",
                             {True: "yes", False: "no", None: "unverified"}[meets],
                             f"{row['seconds']:.0f}" if row.get("seconds") else "–", what])
    return markdown_table(cols, rows)


def _dc_table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results.get("deep_compression", {}).items():
        dc, auto = entry["dc"], entry["auto"]
        valid = f"{100 * dc['valid_accuracy']:.2f}%" if "valid_accuracy" in dc else "–"
        rows.append([name, "Deep Compression (the shipped recipe's run)", valid,
                     f"{100 * (1 - dc['test_accuracy']):.2f}%", f"{dc['bytes']:,}", f"{dc['ratio']:.1f}×",
                     f"{dc['seconds']:.0f}", f"{dc['epochs']} epochs"])
        tries = entry.get("tries") or []
        if "bytes" in auto:
            how = (f"auto, size ≤ {entry['budget']:.4f} of the ONNX file" + (
                f" (DC's file / {auto['factor']:g})" if "factor" in auto else ""))
            if tries and not auto.get("equal", True):
                how += ": the most accurate, DC's validation accuracy not reached at any budget tried"
            seconds = sum(t.get("seconds", 0.0) for t in tries) if tries else auto["seconds"]
            rows.append([name, how, f"{100 * auto['valid_accuracy']:.2f}%",
                         f"{100 * (1 - auto['test_accuracy']):.2f}%", f"{auto['bytes']:,}", f"{auto['ratio']:.1f}×",
                         f"{seconds:.0f}", auto["plan"] + (
                             "; budgets tried: " + ", ".join(
                                 f"/{t['factor']:g} → {100 * t['valid_accuracy']:.2f}%" if "valid_accuracy" in t
                                 else f"/{t['factor']:g} → none" for t in tries) if len(tries) > 1 else "")
                         + _candidates_text(tries)])
        else:
            seconds = f"{auto['seconds']:.0f}" if "seconds" in auto else "–"
            rows.append([name, "auto", "–", "–", "–", "–", seconds, (auto.get("error") or "")[:160]])
    return markdown_table(["model", "method", "valid acc", "test error", "container bytes", "ratio to dense fp32",
                           "wall s", "what"], rows)


def _candidates_text(tries: list[dict[str, Any]]) -> str:
    """How many candidates auto trained at each budget (runs with a ``min_accuracy`` floor may try several)."""
    counts = [t["candidates"] for t in tries if "candidates" in t]
    if not counts or all(c == 1 for c in counts):
        return ""
    return "; candidates per budget: " + ", ".join(f"/{t['factor']:g} {t['candidates']}" for t in tries
                                                    if "candidates" in t)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: None if isinstance(v, torch.nn.Module) else str(v)))


def run(quick: bool) -> Section:
    """The LeNets and the comparison with Deep Compression (ResNet-20: ``bench_auto_resnet20``)."""
    return run_models(quick, ("lenet5", "lenet300"), deep_compression=True, topic="auto", title=TITLE)


def run_models(quick: bool, names: tuple[str, ...], *, deep_compression: bool, topic: str, title: str) -> Section:
    """The section for ``names`` (and, if ``deep_compression``, their comparison with the Deep Compression recipes).
    Set SLIMKIT_AUTO_BENCH_REUSE=1 to keep what an interrupted run saved: each model's entry, each hand recipe's,
    int8's and each budget's rows (their latencies were measured then, each against its own A/A control)."""
    torch.set_num_threads(TRAIN_THREADS)
    root = CACHE / "auto" / ("quick" if quick else "full")
    results: dict[str, Any] = {"models": {}, "deep_compression": {}, "batch": BATCH, "max_drop": MAX_DROP,
                               "train_threads": TRAIN_THREADS, "centroid_gradient": _container_centroid_gradient(),
                               "container_knobs": sorted(_container_knobs()), "dc_factors": list(DC_FACTORS)}
    centroids = results["centroid_gradient"]  # in the key: entries trained with the other gradient are not reused
    jobs = [("models", n) for n in names]
    if deep_compression:
        jobs += [("deep_compression", n) for n in names if n in _dc_models()]
    for kind, name in jobs:
        def entry(kind: str = kind, name: str = name) -> dict[str, Any]:
            data, section = _data(5000 if quick else MODELS[name].get("train_samples"))
            if kind == "deep_compression":
                return _dc_comparison(name, data, section, quick, root)
            return {**_model_rows(name, MODELS[name], data, section, quick, root),
                    "train_samples": section.get("train_samples")}

        recipes = {p.name: p.read_text() for p in _hand_recipes(name)}
        results[kind][name] = _saved(root / f"{kind}-{name}.json", {"model": MODELS[name], "auto": AUTO,
                                                                   "quick": quick, "recipes": recipes,
                                                                   "dc_factors": DC_FACTORS,
                                                                   "equal_training": "dc-best",
                                                                   "dc_floor": "min_accuracy",
                                                                   **({"hand_floor": "min_accuracy"}
                                                                      if kind == "models" else {}),
                                                                   "centroid_gradient": centroids,
                                                                   "container_knobs": results["container_knobs"]},
                                                           entry)
    clean = _plain(results)
    return Section(topic=topic, title=title, markdown=render(clean)[0], data=clean)


def _container_knobs() -> frozenset[str]:
    """The knobs auto's container format searches (channel pruning joined sparsity and k-means bits in b3ca44b)."""
    from slimkit.auto._formats import create_format

    return create_format("container").knobs


def _container_centroid_gradient() -> str:
    """How auto's container format fine-tunes centroids (its cluster stage's ``centroid_gradient``)."""
    from slimkit.auto import AutoConfig
    from slimkit.auto._formats import create_format
    from slimkit.auto._plan import Plan

    stages = create_format("container").stages(Plan(format="container", bits={"x": 4}), AutoConfig(budget="size=0.1"))
    return next(s["cluster"] for s in stages if "cluster" in s).get("centroid_gradient", "sum")


def _centroid_text(results: dict[str, Any]) -> str:
    if results.get("centroid_gradient") != "mean":
        return ""
    return ("auto's container fine-tunes each centroid by the mean of its weights' gradients "
            "(`centroid_gradient: mean`, stable at a few bits, where one centroid holds thousands of weights), the "
            "Deep Compression recipes by their sum (Han et al.'s Eq. 3), at the same learning rates. ")


def _floor_text(results: dict[str, Any]) -> str:
    """Which budgets told auto (and mixed precision alone) the best hand recipe's validation accuracy as its floor
    (``min_accuracy``; runs before it had none)."""
    parts = [f"{name} at {budget} ({entry['settings']['min_accuracy']:.2f}%)"
             for name, model in results["models"].items() for budget, entry in model["budgets"].items()
             if (entry.get("settings") or {}).get("min_accuracy") is not None]
    if not parts:
        return ""
    most = max(model["settings"]["max_candidates"] for model in results["models"].values())
    return ("Where a hand recipe meets the budget, auto and mixed precision alone are told the best one's validation "
            "accuracy as their floor (`min_accuracy`, as in the comparison with Deep Compression below): a candidate "
            f"under it backs off and the next is solved, up to {most} candidates — " + "; ".join(parts) + ". ")


def _equal_training_text(results: dict[str, Any]) -> str:
    """Which budgets ran auto (and the uniform-pruning row) with a Deep Compression recipe's schedule, from the
    settings each budget entry recorded (none in runs before it did)."""
    parts = []
    for name, model in results["models"].items():
        for budget, entry in model["budgets"].items():
            s = {k: v for k, v in (entry.get("settings") or {}).items() if k != "min_accuracy"}
            if s and s != model["settings"]:
                parts.append(f"{name} at {budget} ({s['prune_rounds']} rounds of {s['recovery_epochs']} epochs at lr "
                             f"{s['recovery_lr']:g}, {s['cluster_epochs']} centroid epochs at lr {s['cluster_lr']:g})")
    if not parts:
        return ""
    return ("Equal training with the recipe a budget is compared against: where the best hand recipe is a Deep "
            "Compression recipe, auto gets that recipe's schedule instead (its container format the rounds, epochs "
            "and learning rates; its other formats one round's epochs and learning rate of KD recovery), and the "
            "uniform-pruning row one round's epochs of KD — " + "; ".join(parts) + ". ")


def _dc_no_loss_lines(results: dict[str, Any]) -> list[str]:
    """Deep Compression's own claims are "without loss of accuracy" against the dense model: per model, the smallest
    of auto's files (among the budgets tried) whose validation accuracy is at least the dense model's, next to DC's,
    and how the search ended (it stops at the first budget reaching DC's accuracy, so larger ones may be untried)."""
    lines = []
    for name, entry in results.get("deep_compression", {}).items():
        dc, tries = entry["dc"], entry.get("tries") or []
        if "dense_valid_accuracy" not in dc or "valid_accuracy" not in dc:
            continue  # a run before these were recorded
        dense = dc["dense_valid_accuracy"]
        ran = [t for t in tries if "valid_accuracy" in t]
        kept = [t for t in ran if t["valid_accuracy"] >= dense]
        tried = ", ".join(f"/{t['factor']:g}" for t in tries)
        untried = [f for f in _dc_factors(results) if f not in {t["factor"] for t in tries}]
        if not ran:
            auto_text = f"auto found no model at the budgets tried (DC's file {tried})"
        elif kept:
            best = min(kept, key=lambda t: t["bytes"])
            auto_text = (f"of auto's files at the budgets tried (DC's file {tried}), the smallest that keeps it is "
                         f"{best['ratio']:.1f}× ({100 * best['valid_accuracy']:.2f}%, budget DC's / {best['factor']:g}"
                         + (", the smallest budget tried" if best["factor"] == _dc_factors(results)[0] else "")
                         + ")")
        else:
            auto_text = f"none of auto's files at the budgets tried (DC's file {tried}) keeps it"
        if untried:
            auto_text += (f"; the search stopped on reaching DC's validation accuracy, so DC's file "
                          f"{', '.join(f'/{f:g}' for f in untried)} were not tried")
        dc_kept = "keeps it" if dc["valid_accuracy"] >= dense else "does not keep it"
        lines.append(f"- {name}, against the dense model's validation accuracy ({100 * dense:.2f}%, the criterion of "
                     f"Deep Compression's own \"without loss of accuracy\"): DC {dc['ratio']:.1f}× "
                     f"({100 * dc['valid_accuracy']:.2f}%) {dc_kept}; {auto_text}.")
    return [*lines, ""] if lines else []


def _dc_floor_text(results: dict[str, Any]) -> str:
    """Whether auto was told Deep Compression's validation accuracy as its floor (``min_accuracy``; runs before it
    stopped at the first plan within max_drop)."""
    entries = list(results.get("deep_compression", {}).values())
    if not entries or not all("min_accuracy" in e for e in entries):
        return ""
    most = max(e["max_candidates"] for e in entries)
    channels = "channels" in results.get("container_knobs", ())
    return (" and at least Deep Compression's validation accuracy (`min_accuracy`): within a budget, a candidate "
            "under it backs off its most sensitive " + ("choice (a layer's or a channel group's; after the first "
                                                         "such miss of a plan that removed channels, the next "
                                                         "candidate is auto's uniform plan, as below)"
                                                         if channels else "layer's choice")
            + f" and the next is solved again, up to {most} candidates")


def _dc_searched(results: dict[str, Any]) -> bool:
    """Whether the comparison with Deep Compression searched the budget (runs before it had one budget, 15 % below
    DC's file)."""
    return any("tries" in entry for entry in results.get("deep_compression", {}).values())


def _dc_heading(results: dict[str, Any]) -> str:
    if _dc_searched(results):
        return "### Against Deep Compression: the smallest file at Deep Compression's validation accuracy"
    return "### Against Deep Compression: a 15 % smaller file, and the test error it costs"


def _dc_budget_text(results: dict[str, Any]) -> str:
    if _dc_searched(results):
        factors = ", ".join(f"{f:g}" for f in _dc_factors(results))
        return ("auto's size budget is Deep Compression's container bytes divided by " + factors + " in turn (in "
                "ONNX-file terms), the smallest first; the row reported is the first whose chosen model reaches Deep "
                "Compression's validation accuracy — the ratio at equal accuracy, decided on validation — or, when "
                "none does, the most accurate on validation, marked so ('what' lists each budget's validation "
                "accuracy). ")
    return ("auto gets a size budget 15 % below Deep Compression's file (in ONNX-file terms). Nothing holds the two "
            "errors equal: the table shows the test error each pays. ")


def render(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The section's markdown from its results (``run``'s data, or ``results/auto.json`` for ``python -m
    benchmarks.run --rerender auto``)."""
    from slimkit.auto._run import MARGIN

    clean = {k: v for k, v in payload.items() if k not in ("machine", "quick")}
    settings = next(iter(clean["models"].values()))["settings"]
    markdown = "\n".join([
        _table(clean), "",
        f"Budgets are ratios to the input model's: latency in ONNX Runtime at batch {clean['batch']}, size as the "
        "deployed file's bytes over the input's fp32 ONNX file. `auto` searches channel pruning, low rank, int8 / "
        "mixed precision (int8 QDQ ONNX) and per-layer sparsity + k-means bits (Huffman-coded container"
        + ("; its plans may remove channels first, the file recording the pruned layout"
           if "channels" in clean.get("container_knobs", ()) else "") + ") with "
        f"max_drop {clean['max_drop']} points on validation; its recovery is {settings['recovery_epochs']} epochs of "
        f"KD from the input (the shipped prune + KD recipe's), the container format's {settings['prune_rounds']} "
        f"magnitude-pruning rounds of {settings['recovery_epochs']} epochs each"
        + (" (which also recover from its removed channels)" if "channels" in clean.get("container_knobs", ()) else "")
        + f" and {settings['cluster_epochs']} epochs of centroid fine-tuning. " + _sensitivity_text(settings)
        + _equal_training_text(clean) + _floor_text(clean) + _train_images_text(clean) +
        "Best hand recipe: every recipe in recipes/ for the model, started from the same trained baseline (its "
        "`train` stage dropped), measured once; the most accurate on validation among those that meet the budget. "
        "Uniform pruning: one L1 ratio for every channel group, searched to auto's MACs (latency budgets) or to the "
        "budget's bytes as fp32 weights (size budgets), same KD recovery, deployed as fp32 ONNX. "
        "Mixed precision alone: auto restricted to the int8 format and the per-layer int8/float knob. "
        "Under a latency budget auto prices a plan with per-layer ONNX Runtime tables measured on this machine "
        "(fp32 and int8 kernels, at the very widths the search chooses among; each layer's cost of staying float in "
        "the int8 network measured in context), times each plan's untrained architecture before training it (a "
        f"probe: over {MARGIN:g} of the budget, the search solves again — a mixed int8 plan's miss charged to its "
        "float layers, whose costs were timed one layer at a time and do not add up, any other miss by tightening "
        "the target; well under it, a milder plan is tried, and once one plan has missed and one is within, the "
        "next is solved between the two by regula falsi on their probes), and measures the trained candidate "
        "again. After a candidate misses max_drop, the next one is auto's uniform plan in the missed plan's format "
        + ("(after a plan that removed channels only) " if "channels" in clean.get("container_knobs", ()) else "")
        + "(every channel group at one keep fraction, the other knobs — low rank, or a container's sparsity and bits "
        "— searched with it under the same tables and probes; in runs from commit a6e4554 on, each group then stays "
        "at the keep fraction before that one as far as the budget allows, the other knobs held; not the 'uniform "
        "pruning' row, which is L1 pruning to auto's MACs without other knobs). "
        f"Training and analysis ran on {clean['train_threads']} PyTorch threads. "
        "'meets' is the measured budget (unverified: the latency comparison was too noisy). 'wall s' is the auto "
        "run's wall time; a model's analysis (sensitivities and costs) is made by its first budget's run and reused "
        "by the later ones (the 'what' cell gives the run's analysis seconds), a hand recipe's is its run. "
        "Test accuracy is read once per row, for this table; every decision used validation. "
        f"Latency: {LATENCY_METHOD}. 'recipe did NOT reproduce' would flag an auto row whose recipe.yaml, run with "
        "the recipe runner, gave a different validation accuracy, MACs or deployed bytes.",
    ])
    if clean.get("deep_compression"):
        markdown += "\n" + "\n".join([
        "", _dc_heading(clean), "",
        _dc_table(clean), "",
        *_dc_no_loss_lines(clean),
        "Deep Compression is the run of the shipped recipe `recipes/deep-compression-<model>.yaml` (the "
        "deep_compression section's run, shared through the benchmark cache, on 1 PyTorch thread; its wall time "
        "counts the stages after the dense training, not its 6-setting validation grid). auto starts from that run's "
        "trained dense model with the recipe's training schedule (its pruning rounds, the epochs and learning rate "
        "of the fine-tune after each, the centroid fine-tune's epochs and learning rate; the learning rates were "
        "chosen on validation for the recipe), and chooses every layer's sparsity and cluster bits itself"
        + (" (and how many units or channels each channel group keeps, removed before the first pruning round)"
           if "channels" in clean.get("container_knobs", ()) else "") + " under "
        f"max_drop {clean['max_drop']} points on validation" + _dc_floor_text(clean) + ". " + _centroid_text(clean) +
        _dc_budget_text(clean) +
        f"auto's wall time (on {clean['train_threads']} threads) includes its analysis and every candidate and "
        "budget it tried. Ratios are to dense float32 weights (4 bytes per parameter), as Deep Compression's table; "
        "test error read once per row.",
        ])
    return markdown, clean


def _sensitivity_text(settings: dict[str, Any]) -> str:
    """How the container's per-layer sparsity costs were read (one-shot unless the run set sensitivity_steps)."""
    steps = settings.get("sensitivity_steps", 0)
    if not steps:
        return "Container sparsity costs are read one-shot. "
    return (f"Each container sparsity's per-layer cost is read after {steps} masked fine-tuning steps at the "
            "recovery's learning rate, against the unpruned model after the same steps (`sensitivity_steps`). ")


def _train_images_text(results: dict[str, Any]) -> str:
    """Which training images each model's recovery used (every method's alike)."""
    parts = [f"the first {model['train_samples']:,} for {name}" if model.get("train_samples")
             else f"all 50,000 for {name}" for name, model in results["models"].items()]
    return "Recovery (every method's) trains on MNIST's training images: " + ", ".join(parts) + ". "
