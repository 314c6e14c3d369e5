"""Recipe stages: a registry of named steps, each with a pydantic model of its parameters.

A stage's parameters are those of the library function it calls, so a recipe says in YAML what Python would say.
Stages that change a model's architecture (pruning, decomposition, rewrites, quantization) are *structural*: their
:meth:`Stage.rebuild` replays the architecture change on a model holding the previous stage's weights, which is
how a run folder is loaded again (see :mod:`slimkit.pipeline._runner` for the design).
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from slimkit._registry import Registry
from slimkit._runtimes import DEFAULT_RUNTIME

if TYPE_CHECKING:
    from slimkit.train import FitConfig

log = logging.getLogger(__name__)

#: ``exporter(model, example_inputs, path) -> path``: how a stage's model becomes ONNX (fp32, or int8 QDQ)
Exporter = Callable[[nn.Module, torch.Tensor, Path], Path]


def refuse_bool_for_int(cls: type[BaseModel], value: Any, field_name: str | None) -> Any:
    """``true``/``false`` where a whole number belongs is a mistake pydantic would quietly take as 1/0."""
    if isinstance(value, bool) and field_name is not None:
        annotation = cls.model_fields[field_name].annotation
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
            else (annotation,)
        if int in options and bool not in options:
            raise ValueError(f"use a whole number, not {str(value).lower()}")
    return value


class StageParams(BaseModel):
    """Base of every stage's parameter model: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, value: Any, info: Any) -> Any:
        return refuse_bool_for_int(cls, value, info.field_name)


@dataclass
class StageContext:
    """What a stage may use besides the model: data, the recipe's input model, its folder, the seed."""

    data: Any
    input_model: nn.Module
    example_input: torch.Tensor
    run_dir: Path
    stage_dir: Path
    seed: int
    #: True only for the first unfinished stage of a ``--resume``d run (it may continue its own fit checkpoint)
    resume: bool = False
    progress: bool = True
    #: how the model is exported to ONNX at this point (set by an earlier stage, e.g. int8 QDQ after quantize)
    exporter: Exporter | None = None
    #: frozen copies of the model after each finished stage ("00-input", "01-train", ...), e.g. distillation teachers
    snapshots: dict[str, nn.Module] = field(default_factory=dict)
    #: in ``preflight``: True when the stage's input is the recipe's input model (no structural stage before it), so
    #: a layer selection can be checked against it
    model_is_input: bool = False
    #: in ``preflight``: True when the stage's input has the input model's layers, by name and type (no structural
    #: stage before it, or only ones that keep them: channel and unstructured pruning), so a selection by layer
    #: name or type — not one that depends on channel counts — can be checked against the input model
    layers_are_input: bool = False
    #: whether a ``file.py:factory`` spec in the stage's parameters may be imported (see ``Recipe.allow_code``)
    allow_code: bool = False
    #: facts a stage reports besides the standard metrics (files written, compressed bytes, ...); saved in result
    #: (and, when a finished stage is rebuilt, the notes it saved)
    notes: dict[str, Any] = field(default_factory=dict)
    #: the runtime the recipe measures latency in (``evaluation.runtime``), which a latency target naming none uses
    runtime: str = DEFAULT_RUNTIME


class Stage:
    """One step of a recipe. Subclasses set ``Params`` and implement :meth:`run`.

    ``structural = True`` stages must also implement :meth:`rebuild`: the deterministic architecture change alone,
    without training, replayed when a run is resumed or exported.
    """

    Params: ClassVar[type[StageParams]] = StageParams
    structural: ClassVar[bool] = False
    #: True for structural stages after which every layer keeps its name and type (only channel counts change, or
    #: masks are attached), so later stages' layer selections can still be checked on the input model
    keeps_layers: ClassVar[bool] = False
    #: False for stages that only observe the model (evaluate, export): the previous measurements are kept
    changes_model: ClassVar[bool] = True
    #: True for stages whose job is a smaller model (pruning, sharing, quantization, decomposition, rewrites): one
    #: that leaves the parameters, MACs and bytes as they were is reported (its options selected nothing)
    compresses: ClassVar[bool] = False
    #: a one-line summary for ``slimkit compress --list-stages`` and the report
    summary: ClassVar[str] = ""

    def __init__(self, params: StageParams) -> None:
        self.params = params

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        raise NotImplementedError

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        """Checks run before the recipe starts (nothing trained yet; ``input_model`` is the recipe's input), so a
        mistake that needs no training is an error before any work. Default: none."""

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """The architecture after this stage, for a model holding the previous stage's weights."""
        if self.structural:
            raise NotImplementedError(f"structural stage {type(self).__name__} must implement rebuild()")
        return model

    def exporter(self) -> Exporter | None:
        """How models from this stage on are exported to ONNX (None: keep the previous stage's way)."""
        return None

    def replaces_model(self) -> bool:
        """Whether this stage's model is a new one (a distillation's named student) rather than the one it was
        given: the export way chosen for the earlier model (e.g. int8 QDQ after a quantize stage) no longer holds."""
        return False


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: make a :class:`Stage` available to recipes as ``name``."""

    def decorator(cls: type[Stage]) -> type[Stage]:
        cls.name = name  # type: ignore[attr-defined]
        return STAGES.register(name)(cls)

    return decorator


def stage_names(pattern: str = "*") -> list[str]:
    """The registered stage names matching a glob."""
    return STAGES.names(pattern)


# --- stages that need no compression technique -------------------------------------------------------------------


class TrainParams(StageParams):
    """A recipe's training options: the fields of :class:`slimkit.train.FitConfig` except ``seed`` and
    ``progress``, which come from the recipe and the command line (a test keeps the two in step)."""

    epochs: int = Field(ge=0, le=10_000)
    lr: float = Field(0.05, gt=0, le=10, allow_inf_nan=False)
    weight_decay: float = Field(5e-4, ge=0, lt=1, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    scheduler: Literal["cosine"] | None = "cosine"
    grad_clip: float | None = Field(None, gt=0, allow_inf_nan=False)

    def fit_config(self, *, seed: int, progress: bool) -> FitConfig:
        """These options as the library's :class:`~slimkit.train.FitConfig`."""
        from slimkit.train import FitConfig

        return FitConfig(**{k: getattr(self, k) for k in TrainParams.model_fields}, seed=seed, progress=progress)


def named_model(model: nn.Module, spec: str, options: dict[str, Any]) -> nn.Module:
    """``model`` marked with the spec that builds it (``slimkit_spec``, options included), so a compressed
    container written from it names its architecture (a file.py:factory model, or a registered one built with a
    class count, is found by no search over the registry)."""
    import inspect

    from slimkit.models import MODELS, parse_spec

    target = parse_spec(spec)[0]
    defaults = inspect.signature(MODELS.get(target)).parameters if target in MODELS else {}
    given = {k: v for k, v in options.items() if k not in defaults or defaults[k].default != v}  # the short spec
    if given:
        spec = f"{spec}{',' if ':' in spec else ':'}{','.join(f'{k}={v}' for k, v in given.items())}"
    model.slimkit_spec = spec
    return model


def fit_in_stage(model: nn.Module, ctx: StageContext, params: TrainParams, **extra: Any) -> None:
    """``fit`` with a per-stage checkpoint, so ``--resume`` continues an interrupted stage from its last epoch."""
    from slimkit.prune import holding_masks
    from slimkit.train import CHECKPOINT_NAME, fit

    callbacks = holding_masks(model, extra.pop("callbacks", ()))  # pruned weights stay zero while training
    fit_dir = ctx.stage_dir / "fit"
    if not ctx.resume and (fit_dir / CHECKPOINT_NAME).exists():
        (fit_dir / CHECKPOINT_NAME).unlink()  # a stale epoch checkpoint from an earlier run in this folder
    history = fit(
        model, ctx.data.train, **params.fit_config(seed=ctx.seed, progress=ctx.progress).fit_options(),
        checkpoint_dir=fit_dir, resume=ctx.resume, val_loader=ctx.data.valid, callbacks=callbacks, **extra,
    ).history
    ctx.notes["history"] = history


@register_stage("train")
class TrainStage(Stage):
    """Train the model with SGD (the input model may be untrained: a recipe can start from scratch)."""

    Params = TrainParams
    summary = "train with SGD + one-cycle cosine (slimkit.train.fit)"

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        fit_in_stage(model, ctx, self.params)
        return model


class FinetuneParams(TrainParams):
    epochs: int = Field(2, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)


@register_stage("finetune")
class FinetuneStage(TrainStage):
    """Recover accuracy after compression: a short, low learning-rate ``fit``."""

    Params = FinetuneParams
    summary = "fine-tune after compression (short, low learning rate)"


class EvaluateParams(StageParams):
    split: Literal["test", "valid", "calibration"] = "test"


@register_stage("evaluate")
class EvaluateStage(Stage):
    """Record the model's accuracy on a split (every stage is also evaluated on the recipe's split)."""

    Params = EvaluateParams
    changes_model = False
    summary = "evaluate on a data split"

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.analysis import evaluate

        loader = getattr(ctx.data, self.params.split)
        if loader is not None:
            ctx.notes[f"{self.params.split}_accuracy"] = evaluate(model, loader).accuracy
        return model


#: files and folders a run owns at the top of its folder (see ``_runner``): an export stage may not write over them
RUN_OWNED = frozenset({"run.json", "recipe.yaml", "metrics.json", "report.md", "report.html", "model.pt",
                       "model.onnx", "plots", "stages"})


#: the file an export stage writes when the recipe names none: ``export`` + this
_EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "compressed": ".slim"}


def export_files(stages: Any) -> set[str]:
    """The file names the export stages of a recipe's ``stages`` write, from their parsed parameters or from the
    plain ``[{name: params}]`` list a run folder's ``run.json`` records (anything malformed there names nothing)."""
    from pydantic import ValidationError

    names = set()
    for stage in stages if isinstance(stages, list | tuple) else ():
        params = getattr(stage, "params", None)
        if params is None and isinstance(stage, dict) and isinstance(stage.get("export"), dict):
            try:
                params = ExportParams.model_validate(stage["export"])
            except ValidationError:
                continue
        if isinstance(params, ExportParams):
            names.add(params.file_name())
    return names


class ExportParams(StageParams):
    format: Literal["onnx", "torchscript", "compressed"] = "onnx"
    file: str | None = Field(None, min_length=1, max_length=200, description="file name inside the run folder")
    atol: float = Field(1e-4, gt=0, allow_inf_nan=False)

    @field_validator("file")
    @classmethod
    def _plain_new_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "/" in value or "\\" in value or value in {".", ".."} or value.startswith(".") or "\0" in value:
            raise ValueError(f"export file '{value}' must be a plain file name written at the top of the run folder "
                             "(no folders, not hidden): e.g. model-int8.onnx")
        if value in RUN_OWNED:
            raise ValueError(f"export file '{value}' is one of the run's own files ({', '.join(sorted(RUN_OWNED))}): "
                             "choose another name")
        return value

    def file_name(self) -> str:
        """The name the stage writes at the top of the run folder."""
        return self.file or f"export{_EXPORT_SUFFIX[self.format]}"


@register_stage("export")
class ExportStage(Stage):
    """Write the model in a deployable format into the run folder (ONNX is checked in ONNX Runtime)."""

    Params = ExportParams
    changes_model = False
    summary = "export to ONNX (checked in ONNX Runtime), TorchScript or the compressed container"

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.pipeline._exporting import export_model

        name = self.params.file_name()
        target = (ctx.run_dir / name).resolve()
        if ctx.run_dir.resolve() not in target.parents:
            from slimkit._errors import ConfigError

            raise ConfigError(f"export file '{name}' is outside the run folder: give a plain file name")
        check = export_model(model, ctx.data, target, self.params.format, exporter=ctx.exporter,
                             atol=self.params.atol)
        ctx.notes["export"] = check
        return model
