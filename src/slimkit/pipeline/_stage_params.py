"""A technique stage's parameters are its library config's fields: the pydantic model of a stage is generated from
the technique's frozen config dataclass (names, types, defaults), and validation ends by constructing that config,
so the library's own range checks (a prune ratio of 1.5, an unknown criterion) become recipe errors with a line
number before anything runs. The stages themselves live in ``_stages_<family>.py``, one file per technique family.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Annotated, Any

from pydantic import Field, create_model, model_validator

from slimkit._errors import SlimkitError
from slimkit.pipeline._stages import StageParams, TrainParams

log = logging.getLogger(__name__)

#: a fraction of units removed: 0 keeps everything, 1 would remove the layer
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


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


def train_fields(epochs: int = 0, lr: float = 0.01) -> dict[str, Any]:
    """Optional fine-tuning inside a stage (QAT, distillation): the ``fit`` options of the train stage, with their
    range checks (an lr of NaN, -1 epochs or momentum 5 are recipe errors at their line, before any work)."""
    defaults = {"epochs": epochs, "lr": lr}
    return {name: (Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation,
                   defaults.get(name, field.default)) for name, field in TrainParams.model_fields.items()}


def train_params(params: Any) -> TrainParams:
    return TrainParams(**{k: getattr(params, k) for k in TrainParams.model_fields})


