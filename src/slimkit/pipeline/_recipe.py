"""The recipe schema: a YAML file naming a model, data, and an ordered list of stages, validated before any work.

```yaml
version: 1
model: {spec: lenet5, checkpoint: lenet5.pt}   # checkpoint relative to the recipe file; omit to start untrained
data: {name: mnist, batch_size: 128}
stages:
  - prune: {ratio: 0.5, criterion: thinet}
  - finetune: {epochs: 2}
```

Every problem (unknown key, value out of range, unknown stage, missing checkpoint) becomes one
:class:`~slimkit.pipeline._yaml.RecipeError` naming the file, the line and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slimkit._errors import SlimkitError
from slimkit._runtimes import DEFAULT_RUNTIME, RUNTIMES
from slimkit.pipeline._stages import STAGES, Stage, StageParams, refuse_bool_for_int
from slimkit.pipeline._yaml import LocatedYaml, RecipeError, load_located_yaml

RECIPE_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, value: Any, info: Any) -> Any:
        return refuse_bool_for_int(cls, value, info.field_name)


class ModelSection(_Section):
    spec: str = Field(min_length=1, description="registered name (lenet5, resnet20:width=0.5) or file.py:factory")
    checkpoint: str | None = Field(None, min_length=1, description="weights of the input model")


class DataSection(_Section):
    name: str = "mnist"
    batch_size: int = Field(128, ge=1, le=65_536)
    augment: bool | str = Field(False, description="true (±2 px shifts) or augmentations like 'elastic+shift'")
    seed: int = Field(0, ge=0)
    calibration_size: int = Field(1024, ge=1)
    train_samples: int | None = Field(None, ge=1, description="train on the first N training samples only")
    eval_samples: int | None = Field(None, ge=1, description="evaluate on the first N samples of the split only")


class EvaluationSection(_Section):
    split: Literal["test", "valid"] = "test"
    latency: bool = True
    latency_batch: int = Field(1, ge=1, le=4096)
    repeats: int = Field(30, ge=1, le=10_000)
    warmup: int = Field(5, ge=0, le=10_000)
    threads: int = Field(1, ge=1, le=256, description="threads per runtime session for the latency ratio "
                         "(1: three sessions stay alive, and one thread each cannot oversubscribe a shared machine)")
    runtime: Literal[tuple(RUNTIMES)] = Field(  # type: ignore[valid-type]
        DEFAULT_RUNTIME, description="the runtime the latency ratios are measured in, and a prune stage's latency "
        "target unless it names its own: onnxruntime (slimkit's deployment runtime) or openvino (OpenVINO's CPU "
        "runtime, float layers in fp32; pip install openvino)")


class RecipeSchema(_Section):
    version: Literal[1]
    name: str | None = None
    description: str | None = None
    seed: int = Field(0, ge=0)
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="PyTorch threads for every stage (training, calibration, pruning). CPU "
        "kernels split their sums by thread count, so a run's weights depend on it; pinned, the recipe reproduces "
        "the same weights on any machine with the same CPU instruction set. Default: PyTorch's own (one per core)")
    model: ModelSection
    data: DataSection = DataSection()
    evaluation: EvaluationSection = EvaluationSection()
    stages: list[Any] = Field(min_length=1)


@dataclass(frozen=True)
class StageCall:
    """One validated stage of a recipe: its registered name, parameters and line in the file."""

    index: int
    name: str
    params: StageParams
    line: int

    def build(self) -> Stage:
        return STAGES.get(self.name)(self.params)

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.name}"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; ``checkpoint`` is resolved against the recipe's folder."""

    schema: RecipeSchema
    stages: tuple[StageCall, ...]
    source: str
    text: str
    checkpoint: Path | None
    #: whether ``file.py:factory`` specs in this recipe may be imported: True only for a recipe the user wrote or
    #: typed (a file they named, a command line); False for one read back from a run folder's metadata
    allow_code: bool = False

    @property
    def title(self) -> str:
        return self.schema.name or Path(self.source).stem

    def input_files(self) -> list[Path]:
        """Every file the run reads that the user owns: the model checkpoint, stage files such as
        ``student_checkpoint`` and the files of ``file.py:factory`` specs (resolved like the run resolves them)."""
        found: list[Any] = [self.checkpoint, _spec_file(self.schema.model.spec)]
        for call in self.stages:
            found += [getattr(call.params, key, None) for key in _PATH_PARAMS]
            found.append(_spec_file(getattr(call.params, "student", None)))
        return [Path(f).expanduser() for f in found if f]

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in (what the run actually used), but for settings added later at
        their defaults (:data:`_NEW_DEFAULTS`)."""
        payload = _without_new_defaults(self.schema.model_dump(mode="json"), _NEW_DEFAULTS["recipe"])
        payload["stages"] = [{s.name: _without_new_defaults(s.params.model_dump(mode="json"),
                                                            _NEW_DEFAULTS["stages"].get(s.name, {}))}
                             for s in self.stages]
        payload["model"]["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        return payload

    def run_folder_text(self) -> str:
        """The recipe a run folder keeps as ``recipe.yaml`` (what ``slimkit compress`` runs again): the text as
        written, unless it names a file by a relative path, which would then resolve against the run folder; then
        the resolved recipe with every file path absolute (its comments are not kept)."""
        import yaml

        if not any(not Path(path).expanduser().is_absolute() for path in _named_files(yaml.safe_load(self.text))):
            return self.text
        payload = self.to_dict()
        model = payload["model"]
        if model.get("checkpoint"):
            model["checkpoint"] = str(Path(model["checkpoint"]).expanduser().resolve())
        model["spec"] = _absolute_spec(model["spec"])
        for stage in payload["stages"]:
            params = next(iter(stage.values()))
            if params.get("student_checkpoint"):
                params["student_checkpoint"] = str(Path(params["student_checkpoint"]).expanduser().resolve())
            if isinstance(params.get("student"), str):
                params["student"] = _absolute_spec(params["student"])
        return (f"# {self.source}, its file paths made absolute\n"
                + yaml.safe_dump(payload, sort_keys=False, allow_unicode=True))

    def with_data(self, **overrides: Any) -> Recipe:
        """This recipe with its data section changed (e.g. ``train_samples=2000`` to try it on a subset); the text
        becomes the resolved recipe, so the run folder's recipe.yaml reproduces what ran."""
        import dataclasses

        import yaml

        data = DataSection(**{**self.schema.data.model_dump(), **overrides})
        schema = self.schema.model_copy(update={"data": data})
        changed = dataclasses.replace(self, schema=schema)
        note = ", ".join(f"data.{k}={v}" for k, v in overrides.items())
        text = f"# {self.source} with {note}\n" + yaml.safe_dump(changed.to_dict(), sort_keys=False, allow_unicode=True)
        return dataclasses.replace(changed, text=text)

    def code_specs(self) -> list[str]:
        """The ``file.py:factory`` model specs this recipe names (its model and any distillation student)."""
        from slimkit.models import is_code_spec

        specs = [self.schema.model.spec] + [s.params.student for s in self.stages
                                            if isinstance(getattr(s.params, "student", None), str)]
        return [spec for spec in specs if is_code_spec(spec)]

    def fingerprint(self) -> str:
        """A hash of the resolved recipe: a resumed run must have been started by the very same recipe."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


#: settings added after recipes were first run, with the default they leave out of a recipe's dictionary (nested
#: where the setting is a field of a field): a run folder's fingerprint is that dictionary's, so an older run (made
#: without the setting) still resumes
_NEW_DEFAULTS: dict[str, dict[str, Any]] = {
    "recipe": {"torch_threads": None, "evaluation": {"runtime": DEFAULT_RUNTIME}},
    "stages": {"cluster": {"centroid_gradient": "sum"}, "prune": {"target_latency": {"backend": None}}},
}


def _without_new_defaults(params: dict[str, Any], left_out: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        default = left_out.get(key, _ABSENT)
        if isinstance(default, dict) and isinstance(value, dict):
            value = _without_new_defaults(value, default)
        elif key in left_out and value == default:
            continue
        out[key] = value
    return out


_ABSENT = object()


_HINTS = {
    "extra_forbidden": "remove it or fix its spelling",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string (quote it if it looks like a number)",
    "list_type": "write a YAML list ('- item' lines)",
    "tuple_type": "write a YAML list ([a, b] or '- item' lines)",
    "dict_type": "write a mapping ('key: value' lines)",
    "model_type": "write a mapping ('key: value' lines)",
    "too_short": "add at least one entry",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "finite_number": "use a finite number",
}


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "recipe"


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields) or "(none)"


_UNION_TAG = re.compile(r"^(constrained-\w+|function-\w+.*|\w+\[.*\]|int|float|str|bool|none|list|dict|tuple|"
                        r"set|is-instance\[.*\])$")


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """The location without pydantic's union-member tags (``ratio.constrained-float`` → ``ratio``).

    ``data`` is the validated input: a part that is a real key of the data at that point is kept even when it looks
    like a tag (a user's key literally named ``none`` or ``int``)."""
    cleaned = []
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        if in_dict or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]
        elif isinstance(part, str) and _UNION_TAG.match(part):
            continue
        else:
            data = None
        cleaned.append(part)
    return tuple(cleaned)


def _explain(error: dict[str, Any], located: LocatedYaml, prefix: tuple[Any, ...], model: type[BaseModel],
             data: Any) -> str:
    error = {**error, "loc": _clean_loc(error["loc"], data)}
    loc = (*prefix, *error["loc"])
    blame = getattr(model, "blame", None)
    if error["type"] == "value_error" and not error["loc"] and blame is not None:
        culprit = blame(error.get("input"))  # a whole-config check failed: find the field that causes it
        loc = (*loc, culprit) if culprit else loc
    line = located.line_of(loc)
    # a library's own check (value_error) already says what to do
    hint = _HINTS.get(error["type"], "" if error["type"] == "value_error" else "fix the value")
    if error["type"] == "extra_forbidden":
        import difflib

        section = _model_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), list(section.model_fields), n=1)
        hint += f" (did you mean '{close[0]}'?)" if close else ""
        hint += f"; allowed keys here: {_allowed_keys(section)}"
    value = error.get("input")
    shown = "" if error["type"] in {"missing", "extra_forbidden"} or isinstance(value, dict | list) else \
        f" (got {value!r})"
    message = error["msg"]
    if error["type"] == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if error["type"] == "value_error":
        shown = ""
    return f"{located.source}, line {line}: {_loc_text(loc)}: {message}{shown}" + (f": {hint}" if hint else "")


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model of the section at ``loc`` (for listing its allowed keys)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model


def _validate(model: type[BaseModel], data: Any, located: LocatedYaml, prefix: tuple[Any, ...]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        # A misspelt key also makes its intended key "missing": report the misspelling first.
        order = {"extra_forbidden": 0, "missing": 2}
        errors = sorted(error.errors(include_url=False), key=lambda e: order.get(e["type"], 1))
        problems = list(dict.fromkeys(_explain(e, located, prefix, model, data) for e in errors))
        # one problem per location: a union reports each alternative, the first is the one to fix
        seen: set[tuple[Any, ...]] = set()
        firsts = []
        for e, text in zip(errors, (_explain(e, located, prefix, model, data) for e in errors)):
            key = _clean_loc(e["loc"], data)
            if key not in seen:
                seen.add(key)
                firsts.append(text)
        problems = firsts or problems
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise RecipeError(problems[0] + more) from None
    except (SlimkitError, ValueError, TypeError, RecursionError) as error:
        line = located.line_of(prefix)
        raise RecipeError(f"{located.source}, line {line}: {_loc_text(prefix)}: {error}") from None


def _stage_call(index: int, item: Any, located: LocatedYaml) -> StageCall:
    path = ("stages", index)
    line = located.line_of(path)
    names = ", ".join(STAGES.names())
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(f"{located.source}, line {line}: stages[{index}]: each stage is one 'name: {{params}}' "
                          f"entry (e.g. '- finetune: {{epochs: 2}}'); stage names: {names}")
    (name, params), = item.items()
    if not isinstance(name, str) or name not in STAGES:
        raise RecipeError(f"{located.source}, line {line}: stages[{index}]: unknown stage '{name}': "
                          f"choose one of {names}")
    stage_cls = STAGES.get(name)
    validated = _validate(stage_cls.Params, {} if params is None else params, located, (*path, name))
    return StageCall(index=index + 1, name=name, params=validated, line=line)


def parse_recipe(text: str, source: str = "<recipe>", base_dir: str | os.PathLike | None = None,
                 *, check_files: bool = True, allow_code: bool = True) -> Recipe:
    """Validate recipe ``text``; every problem is a :class:`RecipeError` with ``source``, line and fix.

    ``base_dir`` resolves a relative checkpoint path (default: the current folder). With ``check_files`` the
    checkpoint must exist and the model and dataset names must be registered. ``allow_code`` says whether the
    text comes from the user (their recipe, a command line): only then may a ``file.py:factory`` spec in it be
    imported when the recipe runs. Pass False for text slimkit reads back from a file it did not get from the user.
    """
    import slimkit.pipeline  # noqa: F401  (every technique's stages register before names are checked)

    located = load_located_yaml(text, source)
    if not isinstance(located.data, dict):
        raise RecipeError(f"{source}, line 1: a recipe is a mapping with 'version: 1', 'model:' and 'stages:' "
                          f"(got a {type(located.data).__name__})")
    schema: RecipeSchema = _validate(RecipeSchema, located.data, located, ())
    stages = tuple(_stage_call(i, item, located) for i, item in enumerate(schema.stages))
    for stage in stages:
        if schema.data.augment and getattr(stage.params, "cache_teacher", False):
            raise RecipeError(f"{source}, line {stage.line}: stages[{stage.index - 1}].{stage.name}.cache_teacher: "
                              "the teacher's outputs cannot be cached when data.augment changes the images every "
                              "epoch: remove cache_teacher or data.augment")
    stages = tuple(_resolve_stage_paths(call, base_dir) for call in stages)
    _check_references(stages, located)
    _check_order(stages, located, schema.model.spec)
    checkpoint = None
    if schema.model.checkpoint is not None:
        checkpoint = Path(schema.model.checkpoint).expanduser()
        if not checkpoint.is_absolute():
            checkpoint = Path(base_dir or ".") / checkpoint
    schema = _resolve_model_file(schema, base_dir)
    if check_files:
        _check_names(schema, located, checkpoint)
        _check_stage_files(stages, located)
    return Recipe(schema=schema, stages=stages, source=source, text=text, checkpoint=checkpoint,
                  allow_code=allow_code)


#: stage parameters that name a file, resolved against the recipe's folder like the model checkpoint
_PATH_PARAMS = ("student_checkpoint",)


def _named_files(data: Any) -> list[str]:
    """The file paths a recipe's raw YAML names: the checkpoint, ``file.py:factory`` specs, student checkpoints."""
    if not isinstance(data, dict):
        return []
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    found = [model.get("checkpoint"), _spec_file(model.get("spec"))]
    for stage in data.get("stages") or []:
        for params in (stage.values() if isinstance(stage, dict) else ()):
            if isinstance(params, dict):
                found += [params.get(key) for key in _PATH_PARAMS] + [_spec_file(params.get("student"))]
    return [path for path in found if isinstance(path, str) and path]


def _spec_file(spec: Any) -> str | None:
    """The file of a ``file.py:factory`` spec (None for a registered name)."""
    if not isinstance(spec, str) or ".py:" not in spec:
        return None
    return spec.partition(".py:")[0] + ".py"


def _absolute_spec(spec: str) -> str:
    head, sep, tail = spec.partition(".py:")
    return f"{Path(head + '.py').expanduser().resolve()}:{tail}" if sep else spec


def _resolve_stage_paths(call: StageCall, base_dir: str | os.PathLike | None) -> StageCall:
    import dataclasses

    update = {}
    for key in _PATH_PARAMS:
        value = getattr(call.params, key, None)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            update[key] = str(Path(base_dir or ".") / Path(value).expanduser())
    student = getattr(call.params, "student", None)
    if isinstance(student, str):  # a student's file.py:factory, relative to the recipe's folder like the model's
        resolved = _spec_beside(student, base_dir)
        if resolved != student:
            update["student"] = resolved
    return dataclasses.replace(call, params=call.params.model_copy(update=update)) if update else call


def _where(located: LocatedYaml, call: StageCall, key: str) -> str:
    return f"{located.source}, line {located.line_of(('stages', call.index - 1, call.name, key))}: " \
           f"stages[{call.index - 1}].{call.name}.{key}"


def _check_references(stages: tuple[StageCall, ...], located: LocatedYaml) -> None:
    """References between stages: a teacher names an earlier stage; export files are distinct."""
    labels: list[str] = []
    files: dict[str, int] = {}
    for call in stages:
        teacher = getattr(call.params, "teacher", None)
        if isinstance(teacher, str) and teacher not in ("input", "previous") and teacher not in labels:
            earlier = ", ".join(["input", "previous", *labels])
            raise RecipeError(f"{_where(located, call, 'teacher')}: '{teacher}' is not an earlier stage of this "
                              f"recipe: use one of {earlier}")
        name = getattr(call.params, "file", None) if call.name == "export" else None
        if name is not None:
            if name in files:
                raise RecipeError(f"{_where(located, call, 'file')}: '{name}' is also written by stage {files[name]}: "
                                  "give each export its own file name")
            files[name] = call.index
        labels.append(call.label)


#: stages that cannot follow a stage which replaced the float layers they change (found by running every pair on
#: a small model: each either did nothing, or failed mid-run with a raw error), and why
_CANNOT_FOLLOW = {
    "quantize": ({"quantize", "cluster", "decompose", "convert", "prune"},
                 "quantize replaced the float layers it would change with quantized ones"),
    "cluster": ({"quantize", "cluster", "decompose", "convert", "prune", "prune_unstructured"},
                "cluster replaced the weights it would change with shared values"),
}


#: stages after which the model is no longer of a layout its spec builds (a compressed container rebuilds it from the
#: spec; channel pruning's layout it records)
_RESHAPING = ("prune_depth", "decompose", "convert", "quantize")


def _builds_hf_model(spec: str) -> bool:
    """Whether a registered ``spec`` builds a Hugging Face model (on the meta device, nothing allocated)."""
    import torch

    from slimkit.models import from_spec, is_code_spec
    from slimkit.prune import is_hf_model

    if is_code_spec(spec):
        return False
    try:
        with torch.device("meta"):
            return is_hf_model(from_spec(spec))
    except Exception:  # a spec that does not build is reported by the spec check
        return False


def _check_order(stages: tuple[StageCall, ...], located: LocatedYaml, spec: str) -> None:
    """A stage that changes float layers after one that replaced them is refused before the run starts, unless
    both name their layers (a distill stage with a named student starts again from a float model); a TorchScript
    export of clustered layers, and a compressed container of a model its spec no longer builds, too."""
    since: StageCall | None = None  # the last quantize or cluster stage the current model went through
    reshaped: StageCall | None = None  # the last stage that made the model other than its spec builds
    current_spec = spec  # the spec the current model is built from (a distillation's named student replaces it)
    pruned: StageCall | None = None  # the last channel pruning of the current model
    for call in stages:
        fmt = getattr(call.params, "format", None) if call.name == "export" else None
        line = located.line_of(("stages", call.index - 1, call.name))
        if fmt == "compressed" and reshaped is not None:
            raise RecipeError(f"{located.source}, line {line}: stages[{call.index - 1}]: a compressed container "
                              f"cannot follow stage {reshaped.label}: it rebuilds the model from its spec, and "
                              f"'{reshaped.name}' changed the architecture. Export to onnx, or drop that stage")
        if fmt == "compressed" and pruned is not None and _builds_hf_model(current_spec):
            raise RecipeError(f"{located.source}, line {line}: stages[{call.index - 1}]: a compressed container "
                              f"cannot follow stage {pruned.label}: a pruned Hugging Face model keeps its sizes in "
                              "its config too, which a container does not record. Export to onnx, or save it with "
                              "slimkit.prune.save_pruned")
        if since is not None:
            refused, reason = _CANNOT_FOLLOW[since.name]
            # two stages that each name their layers may touch different ones (4-bit here, 8-bit there): left to
            # run, where a stage that finds nothing to change says so
            both_named = bool(getattr(call.params, "layers", None)) and bool(getattr(since.params, "layers", None))
            if call.name in refused and not both_named:
                raise RecipeError(f"{located.source}, line {line}: stages[{call.index - 1}]: '{call.name}' cannot "
                                  f"follow stage {since.label}: {reason}. Put it before {since.label}")
            if since.name == "cluster" and fmt == "torchscript":
                raise RecipeError(f"{located.source}, line {line}: stages[{call.index - 1}]: a TorchScript export "
                                  f"cannot follow stage {since.label}: tracing cannot take a clustered layer's "
                                  "codebook lookup. Export to onnx or compressed")
        if call.name in _CANNOT_FOLLOW:
            since = call
        if call.name in _RESHAPING:
            reshaped = call
        elif call.name == "prune":
            pruned = call
        elif call.name in ("distill", "distill_stagewise") and getattr(call.params, "student", None) is not None:
            since = reshaped = pruned = None
            current_spec = call.params.student


def _check_spec(spec: str, where: str) -> None:
    """A model spec is a registered model whose options build (on the meta device: nothing allocated), or a
    ``file.py:factory`` whose file exists (not imported here)."""
    import torch

    from slimkit.models import from_spec, is_code_spec, parse_spec

    if is_code_spec(spec):
        path = parse_spec(spec)[0].rpartition(":")[0]
        if not Path(path).is_file():
            raise RecipeError(f"{where}: file '{path}' does not exist: fix the path (relative to the recipe)")
        return
    try:
        with torch.device("meta"):
            from_spec(spec)
    except SlimkitError as error:
        raise RecipeError(f"{where}: {error}") from None


#: a model with weights up to this many bytes is built on the CPU for the fit check: a forward pass on the meta
#: device runs PyTorch's Python decompositions, whose first use imports torch._dynamo (2 s of every command's start)
FIT_CHECK_CPU_BYTES = 64 * 2**20


def _check_fit(schema: RecipeSchema, where: str) -> None:
    """A registered model on a registered dataset whose input shape is known: the model must run on it and give
    one score per class, checked before any data is loaded: on the meta device when its weights exceed
    :data:`FIT_CHECK_CPU_BYTES` (nothing allocated), else built and run on the CPU as its factory makes it (not
    materialised from meta: buffers a factory computes, such as index tables, would hold garbage)."""
    import torch

    from slimkit.data import DATASETS
    from slimkit.models import check_fits, class_count_option, from_spec, is_code_spec, state_bytes

    spec, data = schema.model.spec, schema.data.name
    if is_code_spec(spec) or data not in DATASETS or "input_shape" not in DATASETS.meta(data):
        return
    meta = DATASETS.meta(data)
    try:
        options = class_count_option(spec, meta["num_classes"])
        with torch.device("meta"):
            model = from_spec(spec, **options)
        device = "cpu" if state_bytes(model) <= FIT_CHECK_CPU_BYTES else "meta"
        if device == "cpu":
            model = from_spec(spec, **options)
        with torch.device(device):
            check_fits(model, torch.zeros(1, *meta["input_shape"]), label=spec, data=data,
                       num_classes=meta["num_classes"], task=meta["task"])
    except SlimkitError as error:
        raise RecipeError(f"{where}: {error}") from None


def _check_stage_files(stages: tuple[StageCall, ...], located: LocatedYaml) -> None:
    for call in stages:
        student = getattr(call.params, "student", None)
        if isinstance(student, str):
            _check_spec(student, _where(located, call, "student"))
        path = getattr(call.params, "student_checkpoint", None)
        if isinstance(path, str) and not Path(path).is_file():
            raise RecipeError(f"{_where(located, call, 'student_checkpoint')}: '{path}' does not exist: fix the "
                              "path (relative paths start at the recipe's folder)")


def _spec_beside(spec: str, base_dir: str | os.PathLike | None) -> str:
    """A relative ``file.py:factory`` spec made absolute against ``base_dir`` when the file is there (else as
    given: a registered name, or a file the checks will name as missing)."""
    head, sep, tail = spec.partition(".py:")
    if not sep or Path(head + ".py").is_absolute() or base_dir is None:
        return spec
    candidate = Path(base_dir) / (head + ".py")
    return f"{candidate.resolve()}:{tail}" if candidate.is_file() else spec


def _resolve_model_file(schema: RecipeSchema, base_dir: str | os.PathLike | None) -> RecipeSchema:
    """A ``file.py:factory`` spec is relative to the recipe's folder, like the checkpoint."""
    spec = _spec_beside(schema.model.spec, base_dir)
    if spec == schema.model.spec:
        return schema
    return schema.model_copy(update={"model": schema.model.model_copy(update={"spec": spec})})


def _check_names(schema: RecipeSchema, located: LocatedYaml, checkpoint: Path | None) -> None:
    from slimkit.data import DATASETS, create_augment, is_folder_spec

    where = f"{located.source}, line {located.line_of(('model', 'spec'))}: model.spec"
    _check_spec(schema.model.spec, where)
    _check_fit(schema, where)
    if schema.data.name not in DATASETS and not is_folder_spec(schema.data.name):
        target = Path(schema.data.name.partition(":")[0])
        if target.is_file():
            raise RecipeError(f"{located.source}, line {located.line_of(('data', 'name'))}: data.name: '{target}' is "
                              "a file: an image dataset is a folder holding one sub-folder per class")
        raise RecipeError(f"{located.source}, line {located.line_of(('data', 'name'))}: data.name: unknown dataset "
                          f"'{schema.data.name}': choose one of {', '.join(DATASETS.names())}, or an image folder")
    try:
        create_augment(schema.data.augment)
    except SlimkitError as error:
        raise RecipeError(f"{located.source}, line {located.line_of(('data', 'augment'))}: data.augment: {error}") \
            from None
    if checkpoint is not None and not checkpoint.is_file():
        raise RecipeError(f"{located.source}, line {located.line_of(('model', 'checkpoint'))}: model.checkpoint: "
                          f"'{checkpoint}' does not exist: fix the path (relative paths start at the recipe's "
                          "folder), or remove 'checkpoint' and begin the stages with '- train: {epochs: N}'")


def _code_file_resolved(spec: str) -> str:
    """A ``file.py:factory`` spec with its file's path made absolute (a relative one from the current folder, as a
    recipe's unresolved spec is read), so the same file named two ways compares equal."""
    head, sep, tail = spec.partition(".py:")
    return f"{Path(head + '.py').expanduser().resolve()}:{tail}" if sep else spec


def trusting_only(recipe: Recipe, trusted_specs: Sequence[str], confirm: str) -> Recipe:
    """``recipe`` (parsed with ``allow_code=False``: read from a file the user did not name) allowed to import its
    ``file.py:factory`` specs only when each is one the user typed (``trusted_specs``); otherwise
    :class:`ModelSpecError` naming them, ending with ``confirm`` (``{spec}`` is the first untrusted spec)."""
    from slimkit._errors import ModelSpecError

    trusted = {_code_file_resolved(spec) for spec in trusted_specs}
    untrusted = [spec for spec in recipe.code_specs() if _code_file_resolved(spec) not in trusted]
    if untrusted:
        raise ModelSpecError(f"'{recipe.source}' names Python code to import as a model ({', '.join(untrusted)}); "
                             "slimkit never imports code named by a file it reads. "
                             f"{confirm.format(spec=untrusted[0])}")
    return dataclasses.replace(recipe, allow_code=bool(recipe.code_specs()))


def load_recipe(path: str | os.PathLike, *, check_files: bool = True, trusted_specs: Sequence[str] | None = None,
                confirm: str = "Type the spec to allow importing it: --trust-spec {spec}") -> Recipe:
    """Read and validate the recipe file at ``path`` (see :func:`parse_recipe`). With ``trusted_specs`` None (a
    Python caller naming the file) a ``file.py:factory`` model in it may be imported when it runs; given (the
    ``slimkit`` commands: the specs the user typed), only those may be, and a recipe naming other code is a
    :class:`ModelSpecError` ending with ``confirm`` (``{spec}``: the first untrusted spec)."""
    from slimkit.pipeline._yaml import MAX_RECIPE_BYTES

    source = Path(path)
    if source.is_dir():
        raise RecipeError(f"recipe '{source}' is a folder: give the recipe's .yaml file (shipped ones are in recipes/)")
    if source.exists() and not source.is_file():
        raise RecipeError(f"recipe '{source}' is not a regular file (a device or a pipe): give the recipe's .yaml file")
    if not source.is_file():
        raise RecipeError(f"recipe '{source}' does not exist: check the path (shipped recipes are in recipes/)")
    if source.stat().st_size > 4 * MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe '{source}' is {source.stat().st_size:,} bytes; a recipe is a short YAML file: "
                          "check that this is the file you meant")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"recipe '{source}' cannot be read ({error}): save it as UTF-8 text") from None
    recipe = parse_recipe(text, str(source), source.parent, check_files=check_files,
                          allow_code=trusted_specs is None)
    if trusted_specs is None:
        return recipe
    return trusting_only(recipe, trusted_specs, confirm)
