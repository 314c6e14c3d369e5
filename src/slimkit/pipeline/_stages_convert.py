"""The compact-architecture rewrite stage (slimkit.convert)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from slimkit._errors import SlimkitError
from slimkit.convert import CReLUConfig, DepthwiseSeparableConfig, GroupConvConfig, RewriteConfig
from slimkit.pipeline._stage_params import config_params
from slimkit.pipeline._stages import Stage, StageContext, register_stage

#: the stage's rewrite names → their config classes (convert dispatches on the class)
_REWRITES = {"depthwise_separable": DepthwiseSeparableConfig, "group_conv": GroupConvConfig, "crelu": CReLUConfig}

_ConvertBase = config_params(RewriteConfig, "_ConvertBase",
                             to=(Literal["depthwise_separable", "group_conv", "crelu"], ...),
                             options=(dict[str, Any], Field(default_factory=dict)))

class ConvertParams(_ConvertBase):  # type: ignore[misc, valid-type]
    """The shared rewrite options plus ``options``: the chosen rewrite's own config fields."""

    def rewrite_config(self) -> Any:
        config_cls = _REWRITES[self.to]
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
    compresses = True
    summary = "rewrite convs: depthwise_separable, group_conv, crelu (slimkit.convert)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.model_is_input:
            from slimkit.convert import layers_to_convert

            layers_to_convert(input_model, ctx.example_input, self.params.rewrite_config())

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.convert import convert

        return convert(model, ctx.example_input, self.params.rewrite_config(), data=ctx.data.calibration)

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return self.rebuild(model, ctx)
