"""Running a plan's recipe stages in-process, exactly as ``slimkit compress`` runs them.

``slimkit.auto`` sits below ``slimkit.pipeline`` (the pipeline may use auto, not the reverse), so the stages a plan
needs are carried out here by the same library calls the pipeline's stages make, with the same arguments and the
same seeds (``seed_everything(recipe seed + stage index)`` before each stage, the fit's seed likewise, the
calibration split for data-driven steps, the example input of batch 1). The written recipe therefore reproduces
the candidate: ``slimkit auto`` runs it with ``slimkit compress`` and checks that the metrics agree.

Each stage's state dict is saved when it finishes; an interrupted candidate is resumed like a recipe run: finished
stages are replayed (their architecture change alone, on the previous stage's exact weights) and reloaded, and the
first unfinished training stage continues from its epoch checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._io import write_text_atomic

#: stages that change the architecture (replayed when a candidate is reloaded); the others only train or observe
STRUCTURAL = frozenset({"prune", "decompose", "quantize", "prune_unstructured", "cluster"})
DONE_FILE = "done.json"


def _prune(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.prune import PruneConfig, prune_channels

    options = {k: v for k, v in params.items() if k != "schedule"}
    if isinstance(options.get("skip"), list):
        options["skip"] = tuple(options["skip"])
    return prune_channels(model, ctx["example"], PruneConfig(**options), data=ctx["data"].calibration)


def _decompose(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.decompose import DecomposeConfig, decompose

    options = dict(params)
    for key in ("layers", "method"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    return decompose(model, ctx["example"], DecomposeConfig(**options))


def _quantize(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.quantize import QuantConfig, quantize

    options = {k: v for k, v in params.items() if k != "method"}
    if params.get("method", "ptq") != "ptq":
        raise ValueError(f"auto plans use post-training quantization, not {params['method']!r}")
    options["skip"] = tuple(options.get("skip", ()))
    return quantize(model, ctx["example"], QuantConfig(**options), data=ctx["data"].calibration)


def _prune_unstructured(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.prune import UnstructuredConfig, magnitude_prune

    return magnitude_prune(model, ctx["example"], UnstructuredConfig(**params))


def _cluster(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.share import ClusterConfig, cluster_weights

    return cluster_weights(model, ctx["example"], ClusterConfig(**params))


def _finetune(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    # as the pipeline's fit_in_stage: masks held by MaskCallback, a per-stage epoch checkpoint, validation loader
    from slimkit.prune import holding_masks
    from slimkit.train import CHECKPOINT_NAME, FitConfig, fit

    FIT_FIELDS = {f.name for f in dataclasses.fields(FitConfig)} - {"seed", "progress"}

    callbacks = holding_masks(model)
    fit_dir = ctx["stage_dir"] / "fit"
    if not ctx["resume"] and (fit_dir / CHECKPOINT_NAME).exists():
        (fit_dir / CHECKPOINT_NAME).unlink()
    settings = {"epochs": 2, "lr": 0.01, **{k: v for k, v in params.items() if k in FIT_FIELDS}}
    config = FitConfig(**settings, seed=ctx["seed"], progress=ctx["progress"])
    fit(model, ctx["data"].train, **config.fit_options(), checkpoint_dir=fit_dir, resume=ctx["resume"],
        val_loader=ctx["data"].valid, callbacks=callbacks)
    return model


def _distill(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    from slimkit.distill import DistillConfig, distill

    if params.get("teacher", "input") != "input" or params.get("student") is not None:
        raise ValueError("auto plans distil from the input model into the current one")
    options = {k: v for k, v in params.items() if k not in {"teacher", "student", "student_checkpoint"}}
    options["losses"] = tuple(options.get("losses", ("kd",)))
    config = DistillConfig(**options, checkpoint_dir=ctx["stage_dir"] / "distill", resume=ctx["resume"],
                           progress=ctx["progress"])
    return distill(ctx["input_model"], model, ctx["data"].train, config)


def _observe(model: nn.Module, params: dict[str, Any], ctx: dict[str, Any]) -> nn.Module:
    return model


RUNNERS: dict[str, Callable[[nn.Module, dict[str, Any], dict[str, Any]], nn.Module]] = {
    "prune": _prune, "decompose": _decompose, "quantize": _quantize, "prune_unstructured": _prune_unstructured,
    "cluster": _cluster, "finetune": _finetune, "distill": _distill, "export": _observe, "evaluate": _observe,
}


def _frozen(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def run_stages(model: nn.Module, stages: list[dict[str, Any]], *, data: Any, example: Any, seed: int,
               folder: Path | None, progress: bool = False,
               on_stage: Callable[[int, str], None] | None = None) -> nn.Module:
    """Run ``stages`` (recipe stage entries ``{name: params}``) on a copy of ``model``; ``folder`` keeps each
    stage's state dict and training checkpoints so an interrupted run continues where it stopped."""
    from slimkit.train import load_checkpoint, save_checkpoint, seed_everything

    input_model = _frozen(model)
    current = copy.deepcopy(model).eval()
    resume_next = True
    for index, entry in enumerate(stages, start=1):
        (name, params), = entry.items()
        label = f"{index:02d}-{name}"
        stage_dir = folder / label if folder is not None else None
        seed_everything(seed + index)
        ctx = {"data": data, "example": example, "input_model": input_model, "seed": seed + index,
               "progress": progress, "stage_dir": stage_dir or Path("."), "resume": False}
        done = _finished(stage_dir)
        if done is not None:  # replay the architecture change and load the stage's weights
            if name in STRUCTURAL:
                current = RUNNERS[name](current, params, ctx)
            current.load_state_dict(load_checkpoint(stage_dir / "model.pt"), strict=True)
            continue
        if on_stage is not None:
            on_stage(index, name)
        ctx["resume"] = resume_next and stage_dir is not None
        resume_next = False
        current = RUNNERS[name](current, params, ctx)
        if stage_dir is not None:
            save_checkpoint(current.state_dict(), stage_dir / "model.pt")
            write_text_atomic(stage_dir / DONE_FILE, json.dumps({"stage": label}) + "\n")
    return current.eval()


def rebuild_stages(model: nn.Module, stages: list[dict[str, Any]], *, data: Any, example: Any,
                   seed: int) -> nn.Module:
    """The architecture the stages make, without training (weights still to be loaded): structural stages only."""
    from slimkit.train import seed_everything

    current = copy.deepcopy(model).eval()
    input_model = _frozen(model)
    for index, entry in enumerate(stages, start=1):
        (name, params), = entry.items()
        if name not in STRUCTURAL:
            continue
        seed_everything(seed + index)
        ctx = {"data": data, "example": example, "input_model": input_model, "seed": seed + index,
               "progress": False, "stage_dir": Path("."), "resume": False}
        current = RUNNERS[name](current, params, ctx)
    return current.eval()


def _finished(stage_dir: Path | None) -> dict[str, Any] | None:
    if stage_dir is None or not (stage_dir / DONE_FILE).is_file() or not (stage_dir / "model.pt").is_file():
        return None
    try:
        return json.loads((stage_dir / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
