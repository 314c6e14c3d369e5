"""Stages that call the compression techniques; each stage's parameters are its library config's fields.

The pydantic parameter model of a stage is generated from the technique's frozen config dataclass (names, types,
defaults), and validation ends by constructing that config, so the library's own range checks (a prune ratio of
1.5, an unknown criterion) become recipe errors with a line number before anything runs.
A technique whose package is not importable simply has no stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator
from torch import nn

from slimkit._errors import SlimkitError
from slimkit.pipeline._stages import Stage, StageContext, StageParams, TrainParams, fit_in_stage, register_stage

log = logging.getLogger(__name__)

#: a fraction of units removed: 0 keeps everything, 1 would remove the layer
_Fraction = Annotated[float, Field(ge=0, lt=1)]


def _available(module: str, *names: str) -> bool:
    try:
        package = importlib.import_module(module)
    except ImportError as error:
        log.info("%s is not available (%s): its stages are not registered", module, error)
        return False
    return all(hasattr(package, name) for name in names)


def config_params(config_cls: type, name: str, *, exclude: tuple[str, ...] = (), **extra: Any) -> type[StageParams]:
    """A :class:`StageParams` model with the fields of the frozen dataclass ``config_cls`` (plus ``extra``
    pydantic field definitions); validating it also constructs ``config_cls`` so its own checks apply."""
    hints = typing.get_type_hints(config_cls)
    fields: dict[str, Any] = {}
    config_fields = []
    for f in dataclasses.fields(config_cls):
        if f.name in exclude or not f.init:
            continue
        config_fields.append(f.name)
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (hints.get(f.name, Any), default)
    fields.update(extra)

    def build_config(self: Any) -> Any:
        return config_cls(**{k: getattr(self, k) for k in config_fields})

    def check(self: Any) -> Any:
        try:
            build_config(self)
        except (SlimkitError, ValueError, TypeError) as error:
            raise ValueError(str(error)) from None
        return self

    model = create_model(  # type: ignore[call-overload]
        name, __base__=StageParams, __validators__={"_check_config": model_validator(mode="after")(check)}, **fields
    )
    def error_of(values: dict[str, Any]) -> str | None:
        try:
            config_cls(**values)
        except (SlimkitError, ValueError, TypeError) as error:
            return str(error)
        return None

    def blame(data: Any) -> str | None:
        """The given field that makes the config invalid, so the error can point at its line: the one whose
        removal makes the config valid, else the one that alone fails with the same message; None if unclear."""
        if not isinstance(data, dict):
            return None
        given = {k: v for k, v in data.items() if k in config_fields}
        full = error_of(given)
        if full is None:
            return None
        for key in given:
            if error_of({k: v for k, v in given.items() if k != key}) is None:
                return key
        for key, value in given.items():
            if error_of({key: value}) == full:
                return key
        return None

    model.config = build_config
    model.config_fields = tuple(config_fields)
    model.blame = staticmethod(blame)
    return model


def _train_fields(epochs: int = 0, lr: float = 0.01) -> dict[str, Any]:
    """Optional fine-tuning inside a stage (QAT, distillation): the ``fit`` options of the train stage, with their
    range checks (an lr of NaN, -1 epochs or momentum 5 are recipe errors at their line, before any work)."""
    defaults = {"epochs": epochs, "lr": lr}
    return {name: (Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation,
                   defaults.get(name, field.default)) for name, field in TrainParams.model_fields.items()}


def _train_params(params: Any) -> TrainParams:
    return TrainParams(**{k: getattr(params, k) for k in TrainParams.model_fields})


# --- quantization -------------------------------------------------------------------------------------------------

if _available("slimkit.quantize", "QuantConfig", "quantize_ptq", "quantize_qat", "convert_qat"):
    from slimkit.quantize import QuantConfig

    QuantizeParams = config_params(
        QuantConfig, "QuantizeParams",
        method=(Literal["ptq", "qat"], "ptq"),
        **{k: (v[0], v[1]) for k, v in _train_fields(epochs=1, lr=0.001).items()},
    )

    @register_stage("quantize")
    class QuantizeStage(Stage):
        """Post-training quantization (calibrated on the data's calibration split) or QAT fine-tuning; int8 models
        are exported as QDQ ONNX so that ONNX Runtime runs integer kernels."""

        Params = QuantizeParams
        structural = True
        summary = "int8 PTQ / QAT (slimkit.quantize.quantize_ptq / quantize_qat), exported as QDQ ONNX"

        def _prepare(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.quantize import quantize_ptq, quantize_qat

            config = self.params.config()
            if self.params.method == "qat":
                return quantize_qat(model, ctx.example_input, ctx.data.calibration, config)
            return quantize_ptq(model, ctx.example_input, ctx.data.calibration, config)

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.quantize import convert_qat

            prepared = self._prepare(model, ctx)
            return convert_qat(prepared) if self.params.method == "qat" else prepared

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.quantize import convert_qat

            prepared = self._prepare(model, ctx)
            if self.params.method == "qat":
                fit_in_stage(prepared, ctx, _train_params(self.params))
                return convert_qat(prepared)
            return prepared

        def exporter(self) -> Callable | None:
            if self.params.activation_bits is None:
                return None  # weight-only models run as fp32 in ONNX Runtime
            from slimkit.export import export_qdq

            return lambda model, example, path: export_qdq(model, example, path)


# --- pruning ------------------------------------------------------------------------------------------------------

if _available("slimkit.prune", "PruneConfig", "prune_channels", "UnstructuredConfig", "magnitude_prune"):
    from slimkit.prune import PruneConfig, UnstructuredConfig

    # the ratio range and the criterion name are also checked here, so that they are recipe errors with a line
    _PruneBase = config_params(PruneConfig, "_PruneBase", ratio=(_Fraction | dict[str, _Fraction], 0.5))

    class PruneParams(_PruneBase):  # type: ignore[misc, valid-type]
        schedule: Literal["oneshot", "layerwise"] = "oneshot"

        @field_validator("criterion")
        @classmethod
        def _check_criterion(cls, value: str) -> str:
            from slimkit.prune import CRITERIA

            CRITERIA.get(value)  # ConfigError (a ValueError) listing the criteria
            return value

    @register_stage("prune")
    class PruneStage(Stage):
        """Structured pruning: whole channels/filters are removed, so the layers become physically smaller."""

        Params = PruneParams
        structural = True
        summary = "remove channels (slimkit.prune.prune_channels: l1, l2, taylor, fpgm, bn_scale, thinet, ...)"

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.prune import prune_channels, prune_layerwise

            prune = prune_layerwise if self.params.schedule == "layerwise" else prune_channels
            return prune(model, ctx.example_input, self.params.config(), data=ctx.data.calibration)

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.prune import pruning_info

            pruned = self.rebuild(model, ctx)
            latency = (pruning_info(pruned) or {}).get("latency")
            if latency:  # a latency target: what the table predicted and what was measured
                ctx.notes["latency_target"] = {k: latency[k] for k in ("target", "batch", "threads", "predicted",
                                                                       "measured", "rounds")}
            return pruned

    @register_stage("prune_unstructured")
    class PruneUnstructuredStage(Stage):
        """Magnitude pruning (Han et al. 2015): the smallest weights become zero and stay zero (masks) while later
        ``finetune`` stages train; saves bytes in sparse/compressed formats, not dense-kernel time."""

        Params = config_params(UnstructuredConfig, "PruneUnstructuredParams")
        structural = True  # the masks are not in the state dict: replaying the stage re-attaches them
        summary = "zero the smallest weights, kept zero by masks during fine-tuning (slimkit.prune.magnitude_prune)"

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.prune import magnitude_prune

            pruned, masks = magnitude_prune(model, self.params.config())
            ctx.notes["sparsity"] = {name: float(1 - m.float().mean()) for name, m in masks.items()}
            return pruned

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            return self.rebuild(model, ctx)


# --- low-rank decomposition ---------------------------------------------------------------------------------------

if _available("slimkit.decompose", "DecomposeConfig", "decompose"):
    from slimkit.decompose import DecomposeConfig

    @register_stage("decompose")
    class DecomposeStage(Stage):
        """Factorise Conv2d/Linear layers: SVD for Linear, Tucker-2 / CP for Conv2d (tensorly)."""

        Params = config_params(DecomposeConfig, "DecomposeParams")
        structural = True
        summary = "low-rank factorisation: svd, tucker2, cp (slimkit.decompose.decompose)"

        def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
            if ctx.model_is_input:
                from slimkit.decompose import layers_to_decompose

                layers_to_decompose(input_model, self.params.config())  # a layer name that is not one fails here

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.decompose import decompose

            return decompose(model, ctx.example_input, self.params.config())

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            return self.rebuild(model, ctx)


# --- weight sharing -----------------------------------------------------------------------------------------------

if _available("slimkit.share", "ClusterConfig", "cluster_weights", "save_compressed"):
    from slimkit.share import ClusterConfig

    @register_stage("cluster")
    class ClusterStage(Stage):
        """k-means weight sharing (Han et al. 2016). The runner measures a clustered model's bytes as the size of
        its Huffman-coded container (``model.slim`` in the stage folder), not the profile's pre-Huffman figure."""

        Params = config_params(ClusterConfig, "ClusterParams")
        structural = True
        summary = "k-means weight sharing + Huffman-coded container (slimkit.share)"

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            from slimkit.share import cluster_weights

            return cluster_weights(model, self.params.config())

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            return self.rebuild(model, ctx)


# --- compact-architecture rewrites --------------------------------------------------------------------------------

if _available("slimkit.convert", "RewriteConfig", "to_depthwise_separable", "to_group_conv", "to_crelu"):
    from slimkit.convert import CReLUConfig, DepthwiseSeparableConfig, GroupConvConfig, RewriteConfig

    _REWRITES = {"depthwise_separable": ("to_depthwise_separable", DepthwiseSeparableConfig),
                 "group_conv": ("to_group_conv", GroupConvConfig), "crelu": ("to_crelu", CReLUConfig)}
    #: the stage's rewrite names → the converters' registered names
    _CONVERTER = {"depthwise_separable": "depthwise-separable", "group_conv": "group", "crelu": "crelu"}

    _ConvertBase = config_params(RewriteConfig, "_ConvertBase",
                                 to=(Literal["depthwise_separable", "group_conv", "crelu"], ...),
                                 options=(dict[str, Any], Field(default_factory=dict)))

    class ConvertParams(_ConvertBase):  # type: ignore[misc, valid-type]
        """The shared rewrite options plus ``options``: the chosen rewrite's own config fields."""

        def rewrite_config(self) -> Any:
            config_cls = _REWRITES[self.to][1]
            shared = {k: getattr(self, k) for k in _ConvertBase.config_fields}
            return config_cls(**shared, **self.options)

        @model_validator(mode="after")
        def _check_rewrite(self) -> ConvertParams:
            try:
                self.rewrite_config()
            except (SlimkitError, ValueError, TypeError) as error:
                raise ValueError(f"options for '{self.to}': {error}") from None
            return self

    @register_stage("convert")
    class ConvertStage(Stage):
        """Rewrite convs into compact blocks (depthwise-separable, group conv + shuffle, CReLU), initialised by a
        least-squares fit to the old layers on calibration data."""

        Params = ConvertParams
        structural = True
        summary = "rewrite convs: depthwise_separable, group_conv, crelu (slimkit.convert)"

        def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
            if ctx.model_is_input:
                from slimkit.convert import layers_to_convert

                layers_to_convert(input_model, ctx.example_input, _CONVERTER[self.params.to],
                                  self.params.rewrite_config())

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            import slimkit.convert as convert

            function = getattr(convert, _REWRITES[self.params.to][0])
            return function(model, ctx.example_input, self.params.rewrite_config(), calibration=ctx.data.calibration)

        def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            return self.rebuild(model, ctx)


# --- distillation -------------------------------------------------------------------------------------------------

if _available("slimkit.distill", "DistillConfig", "distill", "ReconstructConfig", "reconstruct"):
    from slimkit.distill import DistillConfig, ReconstructConfig

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

        def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            if self.params.student is None:
                return model
            from slimkit.models import class_count_option, from_spec

            spec = self.params.student
            student = from_spec(spec, allow_code=ctx.allow_code, **class_count_option(spec, ctx.data.num_classes))
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
            from slimkit.distill import reconstruct

            teacher = self._teacher(model, ctx)
            student = self.rebuild(model, ctx)
            config = ReconstructConfig(**{k: getattr(self.params, k) for k in _StagewiseBase.config_fields},
                                       checkpoint_dir=ctx.stage_dir / "reconstruct", progress=ctx.progress)
            trained, histories = reconstruct(teacher, student, ctx.data.train, config)
            ctx.notes["history"] = [h.history for h in histories]
            return trained
