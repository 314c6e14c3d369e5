"""Distillation stages: KD / AT / hints / mimic, and stage-wise reconstruction (slimkit.distill)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import nn

from slimkit.distill import DistillConfig, ReconstructConfig
from slimkit.pipeline._stage_params import config_params
from slimkit.pipeline._stages import Stage, StageContext, named_model, register_stage

#: who teaches whom: ``student`` a model spec trained from scratch (or from ``student_checkpoint``; default: the
#: current model), ``teacher`` "input", "previous" or an earlier stage's label such as "01-train"
_ROLES = {"student": (str | None, None), "student_checkpoint": (str | None, None),
          "teacher": (str, Field("input", pattern=r"^(input|previous|\d{2}-\w+)$"))}

def _check_roles(params: Any) -> Any:
    if params.student is None and params.teacher == "previous":
        raise ValueError("without 'student' the current model is the student, so the teacher must be "
                         "'input' (the recipe's input model): set teacher: input or name a student spec")
    if params.student_checkpoint is not None and params.student is None:
        raise ValueError("student_checkpoint gives a student spec's first weights: name the student spec too")
    return params

class _DistillRoles(Stage):
    structural = True  # a named student replaces the model

    def replaces_model(self) -> bool:
        return self.params.student is not None

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        if self.params.student is None:
            return model
        from slimkit.models import class_count_option, from_spec

        spec = self.params.student
        options = class_count_option(spec, ctx.data.num_classes)
        student = named_model(from_spec(spec, allow_code=ctx.allow_code, **options), spec, options)
        if self.params.student_checkpoint is not None:
            from slimkit.train import load_weights_

            load_weights_(student, self.params.student_checkpoint)
        return student

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        """With a student spec and the input model as teacher, the layer pairs, shapes and class counts are
        checked before any training (a student that replaces the current model cannot be checked earlier)."""
        if self.params.student is None or self.params.teacher != "input":
            return
        from slimkit.distill import DistillConfig, Distiller, parse_pair, resolve_layers

        student = self.rebuild(input_model, ctx)
        if hasattr(self.params, "stages"):  # stage-wise: the named stages must exist in both models
            pairs = [parse_pair(p) if isinstance(p, str) else tuple(p) for p in self.params.stages]
            resolve_layers(student, [s for s, _ in pairs], "student")
            resolve_layers(input_model, [t for _, t in pairs], "teacher")
            losses, pairs = ("ce",), ()
        else:
            losses, pairs = tuple(self.params.losses), tuple(self.params.pairs)
        Distiller(input_model, student, DistillConfig(losses=losses, pairs=pairs)).check(ctx.example_input)

    def _teacher(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        name = self.params.teacher
        if name == "input":
            return ctx.input_model
        if name == "previous":
            return model
        if name not in ctx.snapshots:
            from slimkit._errors import ConfigError

            raise ConfigError(f"distill teacher '{name}' is not an earlier stage: use input, previous or one of "
                              f"{', '.join(ctx.snapshots)}")
        return ctx.snapshots[name]

_DistillBase = config_params(DistillConfig, "_DistillBase", exclude=("checkpoint_dir", "resume", "progress"),
                             **_ROLES)

class DistillParams(_DistillBase):  # type: ignore[misc, valid-type]
    _roles = model_validator(mode="after")(_check_roles)

@register_stage("distill")
class DistillStage(_DistillRoles):
    """Knowledge distillation (Hinton KD, attention transfer, hints, mimic). ``student``: a model spec trained
    from scratch or from ``student_checkpoint`` (default: the current model, e.g. after a rewrite);
    ``teacher``: "input" (the recipe's input model), "previous" (the model before this stage) or an earlier
    stage's label such as "01-train"."""

    Params = DistillParams
    summary = "distil a teacher into a student (slimkit.distill: kd, at, hint, mimic)"

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.distill import distill

        teacher = self._teacher(model, ctx)
        student = self.rebuild(model, ctx)
        config = DistillConfig(**{k: getattr(self.params, k) for k in _DistillBase.config_fields},
                               checkpoint_dir=ctx.stage_dir / "distill", resume=ctx.resume,
                               progress=ctx.progress)
        return distill(teacher, student, ctx.data.train, config)

_StagewiseBase = config_params(ReconstructConfig, "_StagewiseBase", exclude=("checkpoint_dir", "progress"),
                               **_ROLES)

class StagewiseParams(_StagewiseBase):  # type: ignore[misc, valid-type]
    _roles = model_validator(mode="after")(_check_roles)

@register_stage("distill_stagewise")
class StagewiseStage(_DistillRoles):
    """Stage-wise feature reconstruction from a teacher, then the task (or mimic training): ``stages`` pairs
    student and teacher stages in forward order (FitNets-style hints where shapes differ)."""

    Params = StagewiseParams
    summary = "stage-wise reconstruction / mimic training from a teacher (slimkit.distill.reconstruct)"

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.distill import reconstruct, reconstruct_history

        teacher = self._teacher(model, ctx)
        student = self.rebuild(model, ctx)
        config = ReconstructConfig(**{k: getattr(self.params, k) for k in _StagewiseBase.config_fields},
                                   checkpoint_dir=ctx.stage_dir / "reconstruct", progress=ctx.progress)
        trained = reconstruct(teacher, student, ctx.data.train, config)
        ctx.notes["history"] = [h.history for h in reconstruct_history(trained)]
        return trained
