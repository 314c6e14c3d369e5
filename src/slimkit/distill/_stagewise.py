"""Feature reconstruction between matched stages: stage-wise (one stage at a time, then the task) and "mimic"
(task loss and reconstruction losses together).

Stage-wise follows FitNets' stage-wise training (Romero et al. 2015, §2.3: first train the student up to the
guided layer to predict the teacher's hint, then the whole network) generalised to several stages: stage k's own
parameters (those of the layers that run after stage k−1's output and up to stage k's output) learn to reconstruct
the teacher's stage-k features with everything else frozen, then the whole student trains on the task. This is
how a slimmed or rewritten network gets a good initialisation. A stage whose output shape matches the teacher's
is reconstructed directly (``mimic``); otherwise a 1×1-conv / linear regressor is learned (``hint``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.distill._distiller import DistillConfig, Distiller, _pairs
from slimkit.distill._hooks import FeatureHooks, resolve_layers
from slimkit.distill._losses import LossSpec
from slimkit.train import FitConfig, FitResult

log = logging.getLogger(__name__)

MODES = ("stagewise", "mimic")
RECONSTRUCTIONS = ("auto", "mimic", "hint")


@dataclass(frozen=True, kw_only=True)
class ReconstructConfig(FitConfig):
    """``stages``: matched ``(student_stage, teacher_stage)`` module names (or ``"s=t"``), in forward order.
    ``mode="stagewise"``: ``stage_epochs`` per stage, then ``epochs`` on ``task_losses``;
    ``mode="mimic"``: ``epochs`` on ``task_losses`` + ``weight`` × reconstruction at every stage.
    ``reconstruction``: "mimic" (equal shapes), "hint" (learned regressor) or "auto" (mimic where shapes match).
    Every phase trains with the :class:`~slimkit.train.FitConfig` fields (optimizer, lr, schedule, seed)."""

    stages: tuple[tuple[str, str] | str, ...]
    mode: str = "stagewise"
    reconstruction: str = "auto"
    stage_epochs: int = 1
    task_losses: tuple[str | LossSpec, ...] = ("ce",)
    weight: float = 1.0
    checkpoint_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ConfigError(f"reconstruction mode '{self.mode}' is unknown: use one of {', '.join(MODES)}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(
                f"reconstruction '{self.reconstruction}' is unknown: use one of {', '.join(RECONSTRUCTIONS)}")
        if not self.stages:
            raise ConfigError("reconstruction needs at least one stage pair, e.g. layer1=layer1")
        _pairs(self.stages)  # malformed pairs fail here
        if isinstance(self.stage_epochs, bool) or not isinstance(self.stage_epochs, int) or self.stage_epochs < 0:
            raise ConfigError(f"stage_epochs={self.stage_epochs!r}: use a whole number ≥ 0")
        if not isinstance(self.weight, int | float) or not 0 <= self.weight < float("inf"):
            raise ConfigError(f"weight={self.weight!r}: use a finite number ≥ 0")
        for item in self.task_losses:
            spec = item if isinstance(item, LossSpec) else LossSpec.parse(item)
            if spec.build().uses_features and not spec.pairs:
                raise ConfigError(f"task loss '{spec.name}' compares features, but task losses get no layer pairs "
                                  "(the stage pairs are reconstructed, stage by stage): use ce or kd as the task "
                                  "loss, or give this loss its own pairs (LossSpec(pairs=...))")


def stage_parameters(model: nn.Module, stages: list[str], example_inputs: torch.Tensor) -> list[list[str]]:
    """Parameter names owned by each stage, by execution order: stage k owns the parameters of every module that
    first runs after stage k−1's output and before stage k's output ends. A last list holds the rest (the head)."""
    modules = resolve_layers(model, stages, "student")
    events: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(lambda m, i, n=name: events.append(("run", n))))
    for name, module in modules.items():
        handles.append(module.register_forward_hook(lambda m, i, o, n=name: events.append(("end", n))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    owner: dict[str, int] = {}
    current = 0
    ends = [n for kind, n in events if kind == "end"]
    if ends != list(dict.fromkeys(stages)) or len(ends) != len(stages):
        raise ConfigError(f"stages {stages} must each run once and in forward order; they ran as {ends}")
    for kind, name in events:
        if kind == "end":
            current += 1
        else:
            owner.setdefault(name, current)
    groups: list[list[str]] = [[] for _ in range(len(stages) + 1)]
    for pname, _ in model.named_parameters():
        module_name = pname.rpartition(".")[0]
        groups[owner.get(module_name, len(stages))].append(pname)
    return groups


def _shapes(model: nn.Module, names: list[str], example: torch.Tensor, role: str) -> dict[str, tuple[int, ...]]:
    was_training = model.training
    model.eval()
    try:
        with FeatureHooks(model, names, role) as hooks, torch.no_grad():
            model(example)
            return {k: tuple(v.shape[1:]) for k, v in hooks.features.items()}
    finally:
        model.train(was_training)


HISTORY_ATTR = "slimkit_reconstruct_history"


def reconstruct_history(model: nn.Module) -> list[FitResult]:
    """The training history of each phase (each stage, then the task; or the one mimic phase) of a model returned by
    :func:`reconstruct`; empty for any other model."""
    return list(getattr(model, HISTORY_ATTR, None) or [])


def reconstruct(teacher: nn.Module, student: nn.Module, train_loader: Iterable,
                config: ReconstructConfig) -> nn.Module:
    """Train a copy of ``student`` by stage-wise feature reconstruction (then the task) or by mimic training and
    return it, like :func:`~slimkit.distill.distill`; :func:`reconstruct_history` reads each phase's history."""
    if config.mode not in MODES:
        raise ConfigError(f"reconstruction mode '{config.mode}' is unknown: use one of {', '.join(MODES)}")
    if config.reconstruction not in RECONSTRUCTIONS:
        raise ConfigError(
            f"reconstruction '{config.reconstruction}' is unknown: use one of {', '.join(RECONSTRUCTIONS)}")
    stages = _pairs(config.stages)
    if not stages:
        raise ConfigError("reconstruction needs at least one stage pair, e.g. layer1=layer1")
    student = copy.deepcopy(student)
    example, _ = next(iter(train_loader))
    example = example[:2]
    s_shapes = _shapes(student, [s for s, _ in stages], example, "student")
    t_shapes = _shapes(teacher, [t for _, t in stages], example, "teacher")

    def loss_for(pair: tuple[str, str], weight: float) -> LossSpec:
        kind = config.reconstruction
        if kind == "auto":
            kind = "mimic" if s_shapes[pair[0]] == t_shapes[pair[1]] else "hint"
        return LossSpec(kind, weight, pairs=(pair,))

    def phase_dir(name: str) -> str | None:
        return str(Path(config.checkpoint_dir) / name) if config.checkpoint_dir is not None else None

    # every phase trains with the config's FitConfig fields, each for its own epochs
    common = {f.name: getattr(config, f.name) for f in dataclasses.fields(FitConfig) if f.name != "epochs"}
    histories: list[FitResult] = []
    if config.mode == "mimic":
        losses = tuple(config.task_losses) + tuple(loss_for(p, config.weight) for p in stages)
        distiller = Distiller(teacher, student, DistillConfig(losses=losses, epochs=config.epochs,
                                                              checkpoint_dir=phase_dir("mimic"), **common))
        histories.append(distiller.fit(train_loader))
        setattr(student, HISTORY_ATTR, histories)
        return student.eval()

    groups = stage_parameters(student, [s for s, _ in stages], example)
    params = dict(student.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    try:
        for k, pair in enumerate(stages):
            trainable = set(groups[k])
            if not trainable:
                log.warning("stage %s owns no parameters: skipped", pair[0])
                continue
            for name, p in params.items():
                p.requires_grad_(flags[name] and name in trainable)
            distiller = Distiller(teacher, student, DistillConfig(
                losses=(loss_for(pair, 1.0),), epochs=config.stage_epochs, checkpoint_dir=phase_dir(f"stage{k + 1}"),
                **common), stop_after_features=True)
            histories.append(distiller.fit(train_loader))
            log.info("stage %d (%s=%s): reconstruction loss %.4g", k + 1, *pair,
                     histories[-1].final.get("train_loss", float("nan")))
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
    distiller = Distiller(teacher, student, DistillConfig(losses=tuple(config.task_losses), epochs=config.epochs,
                                                          checkpoint_dir=phase_dir("task"), **common))
    histories.append(distiller.fit(train_loader))
    setattr(student, HISTORY_ATTR, histories)
    return student.eval()
