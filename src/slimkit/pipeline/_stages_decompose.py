"""The low-rank stage: SVD, Tucker-2, CP (slimkit.decompose)."""

from __future__ import annotations

from torch import nn

from slimkit.decompose import DecomposeConfig
from slimkit.pipeline._stage_params import config_params
from slimkit.pipeline._stages import Stage, StageContext, register_stage


@register_stage("decompose")
class DecomposeStage(Stage):
    """Factorise Conv2d/Linear layers: SVD for Linear, Tucker-2 / CP for Conv2d (tensorly)."""

    Params = config_params(DecomposeConfig, "DecomposeParams")
    structural = True
    compresses = True
    summary = "low-rank factorisation: svd, tucker2, cp (slimkit.decompose.decompose)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.layers_are_input:
            from slimkit.decompose import layers_to_decompose

            layers_to_decompose(input_model, self.params.config())  # a layer name that is not one fails here

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.decompose import decompose

        return decompose(model, ctx.example_input, self.params.config())

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return self.rebuild(model, ctx)
