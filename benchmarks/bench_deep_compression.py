"""Deep Compression (Han et al. 2016) on MNIST: the table *is* the run of the shipped recipes
``recipes/deep-compression-lenet{300,5}.yaml`` (``slimkit.pipeline.load_recipe`` + ``run_recipe``).

The recipes' cluster bits and pruning learning rate were chosen on the validation split: every candidate is the
shipped recipe with those settings changed and its evaluation moved to the 10k validation images; the candidate
with the smallest container whose validation error stays within ``TOLERANCE`` of the dense model's is chosen. The
shipped recipe itself is then run once as it is (its every stage evaluated on the 10k test images), and that run
is the table. Should the shipped recipe differ from the validation choice, the section says so.

Recipe runs are cached in ``benchmarks/.cache/recipes/`` under the recipe's fingerprint and the training code's
version; an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks._baselines import CACHE, digest, source_hash
from benchmarks._common import ROOT, Section, latency_cell, markdown_table
from slimkit.pipeline import Recipe, load_recipe, load_run, parse_recipe, run_recipe
from slimkit.share import DeepCompressionResult, layer_rates, save_compressed

TITLE = "Deep Compression: pruning + weight sharing + Huffman coding (Han et al. 2016, Tables 2-3)"
log = logging.getLogger(__name__)

RECIPES = ROOT / "recipes"
#: model: (shipped recipe, the paper's row: Han et al. 2016 Table 1, errors in %, sizes in KB)
MODELS = {
    "lenet300": ("deep-compression-lenet300.yaml",
                 {"error_before": 1.64, "error_after": 1.58, "dense_kb": 1070, "compressed_kb": 27, "ratio": 40}),
    "lenet5": ("deep-compression-lenet5.yaml",
               {"error_before": 0.80, "error_after": 0.74, "dense_kb": 1720, "compressed_kb": 44, "ratio": 39}),
}
#: the validation grid: the cluster stage's settings (the paper's first) × the learning rate of the pruning rounds'
#: fine-tuning
CLUSTER_GRID = {
    "lenet300": ({"fc_bits": 6}, {"fc_bits": 5}, {"fc_bits": 4}),
    "lenet5": ({"conv_bits": 8, "fc_bits": 5}, {"conv_bits": 8, "fc_bits": 4},
               {"conv_bits": 8, "fc_bits": 4, "bits": {"fc1": 3}}),
}
PRUNE_LRS = (0.01, 0.05)
#: channel pruning before Deep Compression (one container holds the pruned layout): model → (shipped recipe, the
#: channel ratios of its validation grid); the rest of the recipe is the model's shipped Deep Compression recipe
HYBRIDS = {"lenet300": ("prune-deep-compression-lenet300.yaml", (0.2, 0.35, 0.5))}
#: a candidate qualifies when its validation error is at most the dense model's plus this (fraction of images)
TOLERANCE = 0.001


def _code_version() -> str:
    """The version of everything a recipe run's weights depend on: the loop, the runner and the stages used."""
    from slimkit.pipeline import _runner, _stages, _stages_prune, _stages_share
    from slimkit.prune import _unstructured
    from slimkit.share import _clustered, _container
    from slimkit.train import _fit

    return source_hash(_fit, _runner, _stages, _stages_prune, _stages_share, _unstructured, _clustered, _container)


def variant(recipe: Recipe, *, cluster: dict[str, Any] | None = None, prune_lr: float | None = None,
            split: str | None = None, latency: bool | None = None, channel_ratio: float | None = None) -> Recipe:
    """``recipe`` with the cluster stage's settings, the learning rate of every fine-tune that follows a pruning
    round, the ``prune`` stage's channel ratio, or the evaluation changed."""
    payload = recipe.to_dict()
    if split is not None:
        payload["evaluation"]["split"] = split
    if latency is not None:
        payload["evaluation"]["latency"] = latency
    previous = None
    for stage in payload["stages"]:
        (name, params), = stage.items()
        if name == "cluster" and cluster is not None:
            params.update({"bits": None, **cluster})
        if name == "finetune" and previous == "prune_unstructured" and prune_lr is not None:
            params["lr"] = prune_lr
        if name == "prune" and channel_ratio is not None:
            params["ratio"] = channel_ratio
        previous = name
    payload["model"].pop("checkpoint", None)
    return parse_recipe(json.dumps(payload), f"{recipe.source} (variant)", RECIPES)


def settings_of(recipe: Recipe) -> dict[str, Any]:
    """The tuned settings of a recipe: its cluster stage's bits and its pruning rounds' fine-tuning lr."""
    stages = recipe.to_dict()["stages"]
    cluster = next(params for s in stages for name, params in s.items() if name == "cluster")
    lrs = [next(iter(stages[i + 1].values()))["lr"] for i, s in enumerate(stages[:-1])
           if "prune_unstructured" in s and "finetune" in stages[i + 1]]
    return {"cluster": {k: cluster[k] for k in ("conv_bits", "fc_bits", "bits")}, "prune_lr": sorted(set(lrs))}


def run_cached(recipe: Recipe, tag: str) -> tuple[Path, dict[str, Any]]:
    """Run ``recipe`` (or reuse its finished run) in the cache; returns the run folder and its metrics."""
    out = CACHE / "recipes" / f"{tag}-{digest({'recipe': recipe.fingerprint(), 'code': _code_version()})}"
    metrics = out / "metrics.json"
    run_file = out / "run.json"
    if metrics.is_file() and json.loads(run_file.read_text()).get("status") == "finished":
        return out, json.loads(metrics.read_text())
    resume = run_file.is_file()
    log.info("%s recipe run %s in %s", "resuming" if resume else "starting", tag, out)
    run_recipe(recipe, out, resume=resume, progress=False, report=False)
    return out, json.loads(metrics.read_text())


def _error(row: dict[str, Any]) -> float:
    return 1.0 - row["accuracy"]


def _baseline_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The trained dense model's row (the recipe's ``train`` stage)."""
    return next(r for r in metrics["stages"] if r.get("name") == "train")


def candidates(name: str, shipped: Recipe, quick: bool) -> list[dict[str, Any]]:
    """Every grid point's run on the validation split: its settings, dense and final validation error, bytes."""
    rows = []
    grid = [(c, lr) for c in CLUSTER_GRID[name] for lr in PRUNE_LRS]
    for cluster, lr in grid[:1] if quick else grid:
        recipe = variant(shipped, cluster=cluster, prune_lr=lr, split="valid", latency=False)
        if quick:
            recipe = _shortened(recipe)
        _, metrics = run_cached(recipe, f"{name}-valid")
        base, final = _baseline_row(metrics), metrics["final"]
        rows.append({"cluster": settings_of(recipe)["cluster"], "prune_lr": lr, "fingerprint": recipe.fingerprint(),
                     "valid_error_dense": _error(base), "valid_error": _error(final), "bytes": final["bytes"],
                     "ratio": base["bytes"] / final["bytes"], "samples": final["samples"]})
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest container within TOLERANCE of the dense validation error (else the lowest error)."""
    ok = [r for r in rows if r["valid_error"] <= r["valid_error_dense"] + TOLERANCE]
    return min(ok, key=lambda r: (r["bytes"], r["valid_error"])) if ok else min(rows, key=lambda r: r["valid_error"])


def _shortened(recipe: Recipe) -> Recipe:
    """A smoke version of a recipe (--quick): one epoch per training stage on 5k images, 1k evaluation images."""
    payload = recipe.to_dict()
    for stage in payload["stages"]:
        (params,) = stage.values()
        if "epochs" in params:
            params["epochs"] = 1
    payload["data"].update(train_samples=5000, eval_samples=1000)
    payload["evaluation"].update(repeats=3, warmup=1)
    payload["model"].pop("checkpoint", None)
    return parse_recipe(json.dumps(payload), f"{recipe.source} (quick)", RECIPES)


def _result(out: Path, spec: str, metrics: dict[str, Any]) -> DeepCompressionResult:
    """The run's final model with its container summary and per-layer table (the container written again from the
    run's weights: the same bytes the run measured, checked)."""
    model, _, _ = load_run(out)
    with tempfile.TemporaryDirectory() as tmp:
        summary = save_compressed(model, Path(tmp) / "m.slim", spec)
    if summary.file_bytes != metrics["final"]["bytes"]:
        raise RuntimeError(f"re-writing the container of {out} gave {summary.file_bytes} bytes, the run measured "
                           f"{metrics['final']['bytes']}: the run folder is inconsistent; delete it and re-run")
    return DeepCompressionResult(model, metrics["stages"], layer_rates(summary), summary)


def _stage_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    base = _baseline_row(metrics)
    rows = []
    for r in metrics["stages"][1:]:
        latency = {"ratio": r.get("latency_ratio"), "status": r.get("latency_status"), "p10": r.get("latency_p10"),
                   "p90": r.get("latency_p90"), "aa": r.get("latency_aa_ratio")}
        rows.append([r["stage"], f"{100 * _error(r):.2f}", r["nonzero_params"], r["bytes"],
                     f"{base['bytes'] / r['bytes']:.1f}×",
                     latency_cell(latency) if latency["status"] and latency["aa"] is not None else "–"])
    return rows


def _hybrid(name: str, dc: dict[str, Any], quick: bool) -> tuple[dict[str, Any], list[str]]:
    """The channel-pruning + Deep Compression recipe of ``name``: its validation grid over the channel ratio
    (chosen by :func:`choose`, as the Deep Compression recipes' settings), its shipped run on the test split, and
    the markdown comparing it with the Deep Compression recipe's run (``dc``, this section's record)."""
    file, ratios = HYBRIDS[name]
    shipped = load_recipe(RECIPES / file)
    shipped_ratio = next(s["prune"]["ratio"] for s in shipped.to_dict()["stages"] if "prune" in s)
    grid = []
    for ratio in ratios[:1] if quick else ratios:
        recipe = variant(shipped, channel_ratio=ratio, split="valid", latency=False)
        if quick:
            recipe = _shortened(recipe)
        _, metrics = run_cached(recipe, f"{name}-hybrid-valid")
        base, final = _baseline_row(metrics), metrics["final"]
        grid.append({"channel_ratio": ratio, "valid_error_dense": _error(base), "valid_error": _error(final),
                     "bytes": final["bytes"], "ratio": base["bytes"] / final["bytes"], "samples": final["samples"]})
    chosen = choose(grid)
    out, metrics = run_cached(_shortened(shipped) if quick else shipped, f"{name}-hybrid-shipped")
    base, final = _baseline_row(metrics), metrics["final"]
    _result(out, shipped.schema.model.spec, metrics)  # the container re-written from the run's weights: same bytes
    record = {"recipe": f"recipes/{file}", "grid": grid, "chosen": chosen, "channel_ratio": shipped_ratio,
              "shipped_is_chosen": chosen["channel_ratio"] == shipped_ratio, "metrics": metrics,
              "split": final["split"], "samples": final["samples"]}
    dc_metrics = dc["metrics"]
    dc_base, dc_final = _baseline_row(dc_metrics), dc_metrics["final"]
    grid_rows = [[r["channel_ratio"], f"{100 * r['valid_error_dense']:.2f}%", f"{100 * r['valid_error']:.2f}%",
                  r["bytes"], f"{r['ratio']:.1f}×", "**chosen**" if r is chosen else ""] for r in grid]
    rows = [[f"`{dc['recipe']}`", f"{100 * _error(dc_base):.2f}%", f"{100 * _error(dc_final):.2f}%",
             dc_final["bytes"], f"{dc_base['bytes'] / dc_final['bytes']:.1f}×"],
            [f"`recipes/{file}`", f"{100 * _error(base):.2f}%", f"{100 * _error(final):.2f}%", final["bytes"],
             f"{base['bytes'] / final['bytes']:.1f}×"]]
    verdict = ("The shipped recipe is the validation choice." if record["shipped_is_chosen"] else
               "**The shipped recipe differs from the validation choice** (update the recipe to the chosen row and "
               "re-run).")
    markdown = [
        f"### {name}: channel pruning, then Deep Compression (`recipes/{file}`)", "",
        "Whole hidden units removed first (L1 filter pruning at one ratio for every hidden layer), then the Deep "
        "Compression recipe above unchanged on the narrower model; the container holds the pruned layout. "
        f"Validation grid over the channel ratio ({grid[0]['samples']:,} validation images, the same rule as the "
        f"cluster settings above: the smallest container within {100 * TOLERANCE:.1f} points of the dense model's "
        "validation error):", "",
        markdown_table(["channel ratio", "dense valid error", "final valid error", "container bytes", "ratio", ""],
                       grid_rows), "", verdict, "",
        f"Both recipes' runs from scratch, on the {final['samples']:,} {final['split']} images (each trains its own "
        "dense model with the same seed):", "",
        markdown_table(["recipe", "dense error", "compressed error", "container bytes", "ratio to dense"], rows),
        "", "The hybrid's run, every stage:", "",
        markdown_table(["stage", f"{final['split']} error %", "non-zero params", "bytes", "ratio to dense",
                        "latency ratio"], _stage_rows(metrics)), ""]
    return record, markdown


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    summary_rows, parts, raw = [], [], {"tolerance": TOLERANCE, "models": {}}
    for name, (file, paper) in MODELS.items():
        shipped = load_recipe(RECIPES / file)
        grid = candidates(name, shipped, quick)
        chosen = choose(grid)
        as_candidate = variant(shipped, split="valid", latency=False)
        matches = (_shortened(as_candidate) if quick else as_candidate).fingerprint() == chosen["fingerprint"]
        final_recipe = _shortened(shipped) if quick else shipped
        out, metrics = run_cached(final_recipe, f"{name}-shipped")
        base, final = _baseline_row(metrics), metrics["final"]
        result = _result(out, shipped.schema.model.spec, metrics)
        record = {"recipe": f"recipes/{file}", "settings": settings_of(shipped), "paper": paper, "grid": grid,
                  "chosen": chosen, "shipped_is_chosen": matches, "metrics": metrics, "layers": result.layers,
                  "split": final["split"], "samples": final["samples"]}
        raw["models"][name] = record
        summary_rows.append([name, f"`recipes/{file}`", f"{100 * _error(base):.2f}%", f"{100 * _error(final):.2f}%",
                             f"{base['bytes'] / 1000:.1f} KB", f"{final['bytes'] / 1000:.1f} KB",
                             f"{base['bytes'] / final['bytes']:.1f}×",
                             f"{paper['error_before']:.2f}% → {paper['error_after']:.2f}%, {paper['dense_kb']} KB → "
                             f"{paper['compressed_kb']} KB ({paper['ratio']}×)"])
        grid_rows = [[", ".join(f"{k} {v}" for k, v in r["cluster"].items() if v is not None), r["prune_lr"],
                      f"{100 * r['valid_error_dense']:.2f}%", f"{100 * r['valid_error']:.2f}%", r["bytes"],
                      f"{r['ratio']:.1f}×", "**chosen**" if r is chosen else ""] for r in grid]
        verdict = ("The shipped recipe is the validation choice." if matches else
                   "**The shipped recipe differs from the validation choice** (update the recipe to the chosen row "
                   "and re-run).")
        parts += [f"### {name}: `recipes/{file}`", "",
                  f"Validation grid ({grid[0]['samples']:,} validation images; the shipped recipe with the cluster "
                  "settings and the pruning rounds' fine-tuning lr changed):", "",
                  markdown_table(["cluster", "prune fine-tune lr", "dense valid error", "final valid error",
                                  "container bytes", "ratio", ""], grid_rows), "", verdict, "",
                  f"The shipped recipe's run, every stage measured on the {final['samples']:,} {final['split']} "
                  "images (bytes: dense float32 until clustering, then the Huffman-coded container file; latency: "
                  "ONNX Runtime, the recipe's ratio to its input model, batch 1):", "",
                  markdown_table(["stage", f"{final['split']} error %", "non-zero params", "bytes",
                                  "ratio to dense", "latency ratio"], _stage_rows(metrics)), "",
                  "Per layer (weights only, as the paper's table; the file also holds biases and a header): P = "
                  "pruning, Q = quantization by weight sharing, H = Huffman coding.", "",
                  result.layer_markdown(), ""]
    raw["hybrids"] = {}
    for name in HYBRIDS:
        raw["hybrids"][name], markdown = _hybrid(name, raw["models"][name], quick)
        parts += markdown
    head = markdown_table(["model", "recipe", "dense error", "compressed error", "dense size", "container file",
                           "ratio", "paper (Han et al. 2016)"], summary_rows)
    notes = [
        "",
        "Each row is one run of the shipped recipe (`slimkit compress recipes/... --out DIR` gives the same): train "
        "the dense model on the 50k training images, prune to the paper's per-layer densities in three prune + "
        "fine-tune rounds, k-means weight sharing with linear centroid init, fine-tune the centroids, write the "
        "Huffman-coded container. Our ratio is measured from the whole container file, biases (float32) and header "
        "included, where the paper's table counts weights only. The cluster bits and the pruning rounds' learning "
        f"rate were chosen on the validation images (smallest container within {100 * TOLERANCE:.1f} percentage "
        "points of the dense model's validation error); the test images were read only by the shipped recipe's "
        "run. Our dense baselines are our own, so the errors to compare are ours before and after, not the paper's "
        "absolute numbers. Unstructured sparsity saves bytes, not dense-kernel time: the exported model runs the "
        "same dense GEMMs, so no latency gain is claimed (the recipe's latency column shows it).",
        "",
    ]
    markdown = head + "\n" + "\n".join(notes) + "\n" + "\n".join(parts)
    return Section(topic="deep_compression", title=TITLE, markdown=markdown, data=raw)


def main(argv: list[str] | None = None) -> int:
    """Run one share of the validation grid into the cache (no test-set run): ``MODEL i/n``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    args = argv if argv is not None else sys.argv[1:]
    name, shard = args[0], args[1] if len(args) > 1 else "0/1"
    index, count = (int(v) for v in shard.split("/"))
    shipped = load_recipe(RECIPES / MODELS[name][0])
    grid = [(c, lr) for c in CLUSTER_GRID[name] for lr in PRUNE_LRS]
    for number, (cluster, lr) in enumerate(grid):
        if number % count == index:
            run_cached(variant(shipped, cluster=cluster, prune_lr=lr, split="valid", latency=False), f"{name}-valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
