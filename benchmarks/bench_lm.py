"""Language models trained here, offline: llama_tiny and gpt2_tiny on the Python standard library's source, and
depth pruning (whole blocks) at 25% and 50% fewer parameters, recovered by KD from the unpruned model or by the
same-length plain fine-tune.

Everything tuned is tuned on the validation files: the base learning rate per model and the tokenizer's vocabulary
size, by short proxy runs (a quarter epoch) scored in bits per byte (per-token perplexity is not comparable across
vocabularies). The recovery recipe is fixed a priori (not tuned): AdamW at 1e-3, one pass over the same fixed
subset of training blocks, KD at T = 1 on the logits only (Minitron's finding for depth-pruned models). The test
files are read once, for the final tables.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from benchmarks._common import Section, markdown_table
from benchmarks._lm_baselines import LMTrainConfig, adamw, lm_data, train_loader, trained_lm
from slimkit.analysis import evaluate
from slimkit.data import TextDataBundle, create_data
from slimkit.distill import DistillConfig, Distiller
from slimkit.prune import DepthPruneConfig, block_importance, remove_blocks
from slimkit.train import fit

TITLE = "Language models: training on the stdlib corpus, depth pruning and recovery"
log = logging.getLogger(__name__)

SPECS = ("llama_tiny", "gpt2_tiny")
TUNE_LRS = (1e-3, 2e-3, 4e-3)
VOCABS = (2048, 4096, 8192)
PROXY_FRACTION = 0.25
RATIOS = (0.25, 0.5)
CRITERIA = ("angular", "loss")
RECOVERY_BLOCKS = 1024  # 64 steps of 16 × 256 tokens (~0.26M tokens, about a seventh of an epoch)
RECOVERY_LR = 1e-3
KD_LOSS = "kd:T=1,alpha=1"


def _ppl(model: nn.Module, data: TextDataBundle, split: str) -> dict[str, float]:
    result = evaluate(model, data.test if split == "test" else data.valid)
    return {"loss": result.loss, "ppl": result.perplexity, "bpb": data.bits_per_byte(split, result.loss),
            "acc": result.accuracy}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tune(base: LMTrainConfig, data: TextDataBundle, quick: bool) -> tuple[dict[str, float], list[list[Any]], dict]:
    """Best lr per model and the vocabulary comparison, on the validation split, from proxy runs."""
    if quick:
        return {spec: base.lr for spec in SPECS}, [], {}
    rows, raw, best = [], {"lr": {}, "vocab": {}}, {}
    for spec in SPECS:
        scores = {}
        for lr in TUNE_LRS:
            _, record = trained_lm(spec, replace(base, lr=lr, train_fraction=PROXY_FRACTION), data=data)
            scores[lr] = record["valid_bpb"]
            rows.append([spec, f"lr {lr:g}", f"{PROXY_FRACTION:g} epoch", record["valid_ppl"], record["valid_bpb"]])
        best[spec] = min(scores, key=scores.get)
        raw["lr"][spec] = {str(k): v for k, v in scores.items()}
    for vocab in VOCABS:
        data_v = data if vocab == data.num_classes else create_data("stdlib", batch_size=base.batch_size,
                                                                       block_size=base.block_size, vocab_size=vocab)
        proxy = replace(base, lr=best["llama_tiny"], train_fraction=PROXY_FRACTION)
        spec = "llama_tiny" if vocab == data.num_classes else f"llama_tiny:vocab_size={vocab}"  # reuse the lr run
        _, record = trained_lm(spec, proxy, data=data_v)
        raw["vocab"][vocab] = {"valid_bpb": record["valid_bpb"], "valid_ppl": record["valid_ppl"],
                               "params": record["params"]}
        rows.append([f"llama_tiny:vocab_size={vocab}", f"lr {best['llama_tiny']:g}", f"{PROXY_FRACTION:g} epoch",
                     record["valid_ppl"], record["valid_bpb"]])
    return best, rows, raw


def _recover(teacher: nn.Module, pruned: nn.Module, loader, method: str, lr: float = RECOVERY_LR,
             losses: tuple[str, ...] = (KD_LOSS,), pairs: tuple[str, ...] = ()) -> tuple[nn.Module, float]:
    """One pass over ``loader`` from a copy of ``pruned``: ``method`` "kd" distils from ``teacher`` with ``losses``
    (feature losses on ``pairs``), "finetune" trains on the next-token loss; AdamW, one-cycle cosine, clip 1."""
    student = copy.deepcopy(pruned).train()
    began = time.perf_counter()
    torch.manual_seed(0)
    if method == "kd":
        config = DistillConfig(losses=losses, pairs=pairs, epochs=1, lr=lr, weight_decay=0.0, optimizer="adamw",
                               grad_clip=1.0)
        Distiller(teacher, student, config).fit(loader)
    else:
        fit(student, loader, epochs=1, optimizer=lambda _: adamw(student, lr, 0.0), scheduler="cosine",
            grad_clip=1.0, progress=False)
    return student.eval(), time.perf_counter() - began


def run(quick: bool) -> Section:
    base = LMTrainConfig()
    if quick:  # a smoke run: a few steps, one budget, one calibration batch
        base = replace(base, train_fraction=0.005)
    data = lm_data(base)
    best, tune_rows, tune_raw = _tune(base, data, quick)
    corpus = data.corpus.summary() if data.corpus is not None else {}

    train_rows, depth_rows, raw_models = [], [], {}
    for spec in SPECS:
        config = replace(base, lr=best[spec])
        teacher, record = trained_lm(spec, config, data=data)
        test = _ppl(teacher, data, "test")
        train_rows.append([spec, record["params"], f"{config.lr:g}", record["train_tokens"],
                           round(record["train_seconds"]), record["valid_ppl"], test["ppl"], test["bpb"], test["acc"]])
        raw_models[spec] = {"train": record, "test": test, "depth": []}
        recovery = train_loader(data, config, blocks=16 if quick else RECOVERY_BLOCKS, seed=1)
        example = data.example_input(4)
        done: dict[tuple[int, ...], dict[str, Any]] = {}
        for ratio in RATIOS[:1] if quick else RATIOS:
            for criterion in CRITERIA:
                prune_config = DepthPruneConfig(param_ratio=ratio, criterion=criterion, batches=1 if quick else 8)
                importance = block_importance(teacher, example, prune_config, data=data.calibration)
                if importance.removed not in done:
                    pruned = remove_blocks(teacher, importance.removed).eval()
                    entry: dict[str, Any] = {"params": _params(pruned), "pruned": _ppl(pruned, data, "test")}
                    for method in ("kd", "finetune"):
                        recovered, seconds = _recover(teacher, pruned, recovery, method)
                        entry[method] = {**_ppl(recovered, data, "test"), "seconds": seconds}
                    done[importance.removed] = entry
                entry = done[importance.removed]
                raw_models[spec]["depth"].append({"ratio": ratio, "criterion": criterion,
                                                  "removed": list(importance.removed),
                                                  "scores": importance.scores, **entry})
                depth_rows.append([spec, f"{ratio:.0%}", criterion, " ".join(map(str, importance.removed)),
                                   entry["params"], f"{1 - entry['params'] / record['params']:.1%}",
                                   entry["pruned"]["ppl"], entry["kd"]["ppl"], entry["finetune"]["ppl"]])

    prune_batches = 1 if quick else DepthPruneConfig(n_blocks=1).batches
    calibration_blocks = min(len(data.calibration.inputs), prune_batches * data.calibration.batch_size)
    markdown = "\n\n".join(filter(None, [
        f"Corpus: the standard library of Python {corpus.get('python')} (`slimkit.data` \"stdlib\"), split by a hash "
        f"of each file's path: {corpus['splits']['train']['files']} train files "
        f"({corpus['splits']['train']['bytes']:,} bytes), {corpus['splits']['valid']['files']} validation, "
        f"{corpus['splits']['test']['files']} test ({corpus['splits']['test']['bytes']:,} bytes); fingerprint "
        f"`{corpus['fingerprint'][:16]}`. Byte-level BPE of {data.num_classes} tokens trained on the train files; "
        f"blocks of {base.block_size} tokens." if corpus else "",
        "**Tuning (validation files, proxy runs)**\n\n" + markdown_table(
            ["model", "setting", "budget", "valid ppl", "valid bits/byte"], tune_rows) if tune_rows else "",
        (f"Chosen: lr {', '.join(f'{s} {lr:g}' for s, lr in best.items())}; vocabulary "
         f"{min(tune_raw['vocab'], key=lambda v: tune_raw['vocab'][v]['valid_bpb'])} has the lowest validation "
         f"bits per byte (the dataset default is {data.num_classes}).") if tune_raw else "",
        "**Tiny LMs (test files)**\n\n" + markdown_table(
            ["model", "params", "lr", "train tokens", "train s", "valid ppl", "test ppl", "test bits/byte",
             "next-token acc"], train_rows),
        f"**Depth pruning (test perplexity)**: blocks chosen on {calibration_blocks} calibration "
        f"blocks by angular distance (Gromov et al. 2024) or by the rise in loss when skipped; the block count is "
        f"the one closest to the parameter target. Recovery: {RECOVERY_BLOCKS if not quick else 16} training "
        f"blocks once, AdamW lr {RECOVERY_LR:g}; KD = `{KD_LOSS}` from the unpruned model; fine-tune = "
        "next-token loss, same steps.\n\n" + markdown_table(
            ["model", "target", "criterion", "removed blocks", "params", "reduction", "ppl pruned", "ppl + KD",
             "ppl + fine-tune"], depth_rows),
    ]))
    data_out = {"corpus": corpus, "train_config": asdict(base), "tuning": tune_raw, "chosen_lr": best,
                "models": raw_models, "recovery": {"blocks": RECOVERY_BLOCKS, "lr": RECOVERY_LR, "kd": KD_LOSS}}
    return Section("lm", TITLE, markdown, data_out)
